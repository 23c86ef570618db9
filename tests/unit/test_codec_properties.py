"""Property tests: every supported value round-trips through JSON text, or fails loudly.

Decisions made explicit here: ints of any size round-trip exactly (JSON numbers, no
53-bit cut); tuples and sets are stored as JSON lists and rebuilt from the annotation;
bytes are stored as UTF-8 text, so non-UTF-8 bytes are refused; NaN, infinities and naive
datetimes are refused.
"""

from __future__ import annotations

import enum
import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stalwart import EncodingError, JsonCodec
from stalwart.codec import TypeConverter

conv = TypeConverter()
codec = JsonCodec()


class Tier(enum.Enum):
    FREE = "free"
    PRO = "pro"


@dataclass(frozen=True)
class Line:
    sku: str
    qty: int
    price: Decimal
    tags: tuple[str, ...]


def round_trip(value: Any, tp: Any) -> Any:
    return conv.from_data(codec.loads(codec.dumps(conv.to_data(value, tp))), tp)


aware = st.datetimes(
    min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)
decimals = st.decimals(allow_nan=False, allow_infinity=False, places=6)
lines = st.builds(
    Line, st.text(), st.integers(), decimals, st.lists(st.text(), max_size=3).map(tuple)
)

CASES: list[tuple[Any, Any]] = [
    (st.integers(), int),
    (st.floats(allow_nan=False, allow_infinity=False), float),
    (st.text(), str),
    (st.booleans(), bool),
    (decimals, Decimal),
    (aware, datetime),
    (st.timedeltas(min_value=timedelta(days=-999), max_value=timedelta(days=999)), timedelta),
    (st.uuids(), uuid.UUID),
    (st.sampled_from(Tier), Tier),
    (lines, Line),
    (st.lists(st.integers()), list[int]),
    (st.dictionaries(st.text(), st.integers()), dict[str, int]),
    (st.tuples(st.integers(), st.text()), tuple[int, str]),
    (st.frozensets(st.integers()), frozenset[int]),
    (st.one_of(st.none(), st.integers()), int | None),
    (st.binary().filter(lambda b: _utf8(b)), bytes),
]


def _utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


@pytest.mark.parametrize(("strategy", "tp"), CASES, ids=[repr(tp) for _, tp in CASES])
def test_supported_values_round_trip(strategy: Any, tp: Any) -> None:
    @settings(max_examples=60, deadline=None)
    @given(strategy)
    def check(value: Any) -> None:
        back = round_trip(value, tp)
        assert back == value
        assert type(back) is type(value)

    check()


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("tp", [float, Any, list[float]])
def test_non_finite_floats_fail_loudly(value: float, tp: Any) -> None:
    with pytest.raises(EncodingError, match="cannot be stored as JSON"):
        conv.to_data([value] if tp == list[float] else value, tp)


@settings(max_examples=50, deadline=None)
@given(st.datetimes())
def test_naive_datetimes_fail_loudly(value: datetime) -> None:
    with pytest.raises(EncodingError, match="naive"):
        conv.to_data(value, datetime)


def test_non_utf8_bytes_fail_loudly() -> None:
    with pytest.raises(EncodingError):
        conv.to_data(b"\xff\xfe", bytes)


def test_huge_ints_round_trip_exactly() -> None:
    for value in (2**53 + 1, -(2**200), 10**40):
        assert round_trip(value, int) == value
