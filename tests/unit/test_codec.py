"""Typed conversion: every supported type round-trips; bad values fail loudly."""

from __future__ import annotations

import enum
import math
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pydantic
import pytest

from stalwart import EncodingError, JsonCodec
from stalwart.codec import Signature, TypeConverter

conv = TypeConverter()


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


@dataclass
class Point:
    x: int
    y: float
    label: str | None = None


class Model(pydantic.BaseModel):
    when: datetime
    amount: Decimal
    points: list[Point]


CASES: list[tuple[Any, Any]] = [
    (3, int),
    (2.5, float),
    ("héllo ✓", str),
    (True, bool),
    (None, type(None)),
    (Decimal("10.000001"), Decimal),
    (uuid.UUID(int=42), uuid.UUID),
    (datetime(2026, 5, 1, 12, 0, tzinfo=UTC), datetime),
    (date(2026, 5, 1), date),
    (timedelta(hours=2, seconds=3), timedelta),
    (Level.HIGH, Level),
    (Point(1, 2.5, "p"), Point),
    ([Point(1, 1.0)], list[Point]),
    ({"a": [1, 2]}, dict[str, list[int]]),
    ((1, "a"), tuple[int, str]),
    (None, Point | None),
    (
        Model(when=datetime(2026, 1, 1, tzinfo=UTC), amount=Decimal("1.5"), points=[Point(0, 0)]),
        Model,
    ),
]


@pytest.mark.parametrize(("value", "tp"), CASES)
def test_round_trip_through_json_text(value: Any, tp: Any) -> None:
    codec = JsonCodec()
    data = conv.to_data(value, tp)
    text = codec.dumps(data)
    back = conv.from_data(codec.loads(text), tp)
    assert back == value
    assert type(back) is type(value)


def test_unencodable_value_names_the_path() -> None:
    with pytest.raises(EncodingError, match=r"order\.total") as info:
        conv.to_data(object(), Decimal, path="order.total")
    assert info.value.path == "order.total"


def test_wrong_type_is_refused() -> None:
    with pytest.raises(EncodingError, match="Point"):
        conv.to_data("not a point", Point)


def test_non_finite_floats_are_refused() -> None:
    with pytest.raises(EncodingError, match="nan"):
        conv.to_data(math.nan, float)
    with pytest.raises(EncodingError, match="inf"):
        conv.to_data({"x": math.inf}, dict[str, float])


def test_untyped_values_must_still_be_json() -> None:
    assert conv.to_data({"a": [1, "b"]}, Any) == {"a": [1, "b"]}
    with pytest.raises(EncodingError):
        conv.to_data(object(), Any)


def test_decoding_bad_data_is_clear() -> None:
    with pytest.raises(EncodingError, match="cannot decode stored data as Point"):
        conv.from_data({"x": "nope"}, Point)


def _fn(a: int, b: str = "dflt", c: list[int] | None = None) -> Point:
    raise NotImplementedError


def test_signature_binds_keywords_and_defaults() -> None:
    sig = Signature(_fn, skip_first=False, label="fn")
    assert sig.encode_args(conv, (1,), {"c": [3]}) == [1, "dflt", [3]]
    assert sig.decode_args(conv, [1]) == [1, "dflt", None]  # parameters added later
    with pytest.raises(EncodingError, match="bad arguments"):
        sig.encode_args(conv, (), {"zzz": 1})
    with pytest.raises(EncodingError, match=r"fn\(a\)"):
        sig.encode_args(conv, ("x",), {})
    assert sig.decode_result(conv, {"x": 1, "y": 2}) == Point(1, 2.0)


class Base64Codec:
    """A stand-in for an encrypting codec: stored text is not readable JSON."""

    def dumps(self, data: Any) -> str:
        import base64

        return "b64:" + base64.b64encode(JsonCodec().dumps(data).encode()).decode()

    def loads(self, text: str) -> Any:
        import base64

        assert text.startswith("b64:")
        return JsonCodec().loads(base64.b64decode(text[4:]).decode())


async def test_pluggable_codec_is_used_for_everything_stored(tmp_path: Any) -> None:
    import sqlite3

    from stalwart import Engine, WorkflowContext, activity, workflow

    @activity(name="codec_secret")
    async def secret(word: str) -> str:
        return word.upper()

    @workflow(name="codec_wf")
    async def codec_wf(ctx: WorkflowContext, word: str) -> str:
        return await secret(word)

    db = tmp_path / "enc.db"
    async with Engine(
        f"sqlite:///{db}", workflows=[codec_wf], activities=[secret], codec=Base64Codec()
    ) as engine:
        assert await codec_wf.run(engine, "hush", id="c1", timeout=10) == "HUSH"
    raw = sqlite3.connect(db).execute("SELECT group_concat(data) FROM events").fetchone()[0]
    assert "hush" not in raw.lower() and raw.startswith("b64:")


def test_non_finite_floats_are_refused_even_untyped() -> None:
    for value in (math.nan, {"a": math.inf}, [1.0, -math.inf], Point(1, math.nan)):
        with pytest.raises(EncodingError, match="cannot be stored as JSON"):
            conv.to_data(value, Any)


def test_naive_datetimes_are_refused() -> None:
    from datetime import datetime as dt

    with pytest.raises(EncodingError, match="naive datetime"):
        conv.to_data(dt(2026, 1, 1), dt)
    with pytest.raises(EncodingError, match=r"when.*naive"):
        conv.to_data({"when": dt(2026, 1, 1)}, Any, path="when")
