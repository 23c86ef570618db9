"""Typed conversion of values to their stored JSON form, and the pluggable text codec.

Two layers, each with one job:

* :class:`TypeConverter` turns a Python value into JSON-able data using its *annotated*
  type (dataclasses, pydantic models, enums, datetime, Decimal, UUID, primitives and
  containers of those) and back. It is built on pydantic's ``TypeAdapter``.
* :class:`Codec` turns that JSON-able data into the text stored in the database and back.
  The default :class:`JsonCodec` writes plain JSON; plug in your own to compress or encrypt.

Pickle is never used: stored data stays readable and survives code moves.
"""

from __future__ import annotations

import dataclasses
import datetime
import inspect
import logging
import math
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol, runtime_checkable

import pydantic
import pydantic_core

from stalwart.errors import ConfigurationError, EncodingError

logger = logging.getLogger("stalwart")

JSONValue = Any
"""JSON-able data: dict, list, str, int, float, bool or None (nested)."""


@runtime_checkable
class Codec(Protocol):
    """Turns JSON-able data into stored text and back (plug in compression or encryption)."""

    def dumps(self, data: JSONValue) -> str:
        """Encode JSON-able data as text."""
        ...

    def loads(self, text: str) -> JSONValue:
        """Decode text written by :meth:`dumps`."""
        ...


class JsonCodec:
    """The default codec: compact JSON text."""

    def dumps(self, data: JSONValue) -> str:
        """Encode JSON-able data as compact JSON."""
        try:
            return pydantic_core.to_json(data).decode()
        except pydantic_core.PydanticSerializationError as exc:
            raise EncodingError(str(exc)) from exc

    def loads(self, text: str) -> JSONValue:
        """Decode JSON text."""
        return pydantic_core.from_json(text)


@lru_cache(maxsize=4096)
def _adapter(tp: Any) -> pydantic.TypeAdapter[Any]:
    return pydantic.TypeAdapter(tp)


_PLAIN = (int, str, float, bool)
"""Types whose exact instances are their own JSON form."""


def _type_name(tp: Any) -> str:
    if tp is inspect.Parameter.empty or tp is Any:
        return "Any"
    return getattr(tp, "__qualname__", None) or repr(tp)


def _check_json_safe(value: Any, path: str, depth: int = 0) -> None:
    """Refuse floats JSON cannot represent (NaN, infinities) instead of storing null.

    Runs on the value *before* serialisation, because the serialiser turns them into
    ``null`` silently.
    """
    if isinstance(value, float):
        if not math.isfinite(value):
            raise EncodingError(f"{value!r} cannot be stored as JSON", path=path)
        return
    if isinstance(value, datetime.datetime) and value.tzinfo is None:
        raise EncodingError(
            f"naive datetime {value.isoformat()} is ambiguous once stored; give it a "
            "timezone (e.g. datetime.now(UTC))",
            path=path,
        )
    if depth > 64 or isinstance(value, str | bytes | int | bool) or value is None:
        return
    if isinstance(value, dict):
        for key, item in value.items():
            _check_json_safe(item, f"{path}.{key}", depth + 1)
    elif isinstance(value, list | tuple | set | frozenset):
        for index, item in enumerate(value):
            _check_json_safe(item, f"{path}[{index}]", depth + 1)
    elif isinstance(value, pydantic.BaseModel):
        for name in type(value).model_fields:
            _check_json_safe(getattr(value, name, None), f"{path}.{name}", depth + 1)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            _check_json_safe(getattr(value, f.name, None), f"{path}.{f.name}", depth + 1)


DEFAULT_MAX_PAYLOAD = 2 * 1024 * 1024
"""Largest encoded value (bytes of JSON) accepted by default."""
DEFAULT_WARN_PAYLOAD = 256 * 1024
"""Encoded values larger than this (bytes of JSON) log a warning by default."""


class TypeConverter:
    """Converts values to and from JSON-able data according to their annotated type.

    Encoded values larger than ``max_bytes`` are refused (:class:`EncodingError` at the
    call site); larger than ``warn_bytes`` log a warning. Big payloads slow every replay
    and every write: store them elsewhere and pass a reference.
    """

    def __init__(
        self, *, max_bytes: int = DEFAULT_MAX_PAYLOAD, warn_bytes: int = DEFAULT_WARN_PAYLOAD
    ) -> None:
        if max_bytes < 1 or warn_bytes < 1:
            raise ConfigurationError("payload limits must be positive")
        self.max_bytes = max_bytes
        self.warn_bytes = warn_bytes

    def to_data(self, value: Any, tp: Any, *, path: str = "value") -> JSONValue:
        """Encode ``value`` as JSON-able data, validating it against ``tp`` first."""
        if tp in _PLAIN and type(value) is tp and (tp is not float or math.isfinite(value)):
            if type(value) is str and len(value) > self.warn_bytes // 4:
                self._check_size(value, path)
            return value  # the common case, without a trip through pydantic
        if tp is inspect.Parameter.empty or tp is None or tp is type(None):
            tp = Any if tp is inspect.Parameter.empty else type(None)
        adapter = _adapter(tp)
        _check_json_safe(value, path)
        try:
            if tp is not Any:
                value = adapter.validate_python(value)
            data = adapter.dump_python(value, mode="json", warnings="error")
        except (
            pydantic.ValidationError,
            pydantic_core.PydanticSerializationError,
            ValueError,
        ) as exc:  # ValueError: e.g. bytes that are not UTF-8 text
            raise EncodingError(
                f"cannot encode {type(value).__qualname__} as {_type_name(tp)}: {_first_line(exc)}",
                path=path,
            ) from exc
        if isinstance(data, str | list | dict):
            self._check_size(data, path)
        return data

    def _check_size(self, data: JSONValue, path: str) -> None:
        size = len(pydantic_core.to_json(data))
        if size > self.max_bytes:
            raise EncodingError(
                f"encoded value is {size} bytes, over the limit of {self.max_bytes} bytes; "
                "store large data elsewhere and pass a reference",
                path=path,
            )
        if size > self.warn_bytes:
            logger.warning("%s: encoded value is %d bytes (large payloads slow replay)", path, size)

    def from_data(self, data: JSONValue, tp: Any, *, path: str = "value") -> Any:
        """Decode JSON-able data into an instance of ``tp``."""
        if tp is inspect.Parameter.empty or tp is Any:
            return data
        if tp in _PLAIN and type(data) is tp:
            return data
        try:
            return _adapter(tp).validate_python(data)
        except pydantic.ValidationError as exc:
            raise EncodingError(
                f"cannot decode stored data as {_type_name(tp)}: {_first_line(exc)}", path=path
            ) from exc


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return " ".join(line.strip() for line in text[:3])


@dataclass(frozen=True, slots=True)
class Parameter:
    """One parameter of a workflow or activity: its name, annotated type and default."""

    name: str
    annotation: Any
    default: Any


def _resolve_hints(fn: Callable[..., Any], *, skip: str | None, label: str) -> dict[str, Any]:
    """Type hints of ``fn``; the skipped (context) parameter need not be resolvable."""
    try:
        return typing.get_type_hints(fn, include_extras=True)
    except (NameError, TypeError) as exc:
        first_error: Exception = exc
    hints: dict[str, Any] = {}
    namespace = getattr(fn, "__globals__", {})
    for name, annotation in getattr(fn, "__annotations__", {}).items():
        if name == skip:
            continue
        try:
            hints[name] = eval(annotation, namespace) if isinstance(annotation, str) else annotation
        except Exception as exc:
            raise ConfigurationError(
                f"{label}: cannot resolve the type hint of {name!r} in {fn.__qualname__}: "
                f"{exc or first_error}"
            ) from exc
    return hints


class Signature:
    """The typed parameters and result of a workflow or activity function.

    Arguments are stored as a JSON list in parameter order, so callers may pass them
    positionally or by keyword; defaults fill in parameters that were added later.
    """

    def __init__(self, fn: Callable[..., Any], *, skip_first: bool, label: str) -> None:
        self.label = label
        sig = inspect.signature(fn)
        params = list(sig.parameters.values())
        hints = _resolve_hints(
            fn, skip=params[0].name if skip_first and params else None, label=label
        )
        if skip_first:
            if not params:
                raise ConfigurationError(
                    f"{label}: a workflow's first parameter must be the WorkflowContext"
                )
            params = params[1:]
        self._sig = sig.replace(parameters=params)
        self.params: list[Parameter] = []
        for p in params:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.KEYWORD_ONLY):
                raise ConfigurationError(
                    f"{label}: parameter {p.name!r} must be positional-or-keyword "
                    f"(*args, **kwargs and keyword-only parameters are not supported)"
                )
            self.params.append(Parameter(p.name, hints.get(p.name, p.annotation), p.default))
        self.returns: Any = hints.get("return", Any)

    def encode_args(
        self, converter: TypeConverter, args: Sequence[Any], kwargs: dict[str, Any]
    ) -> list[JSONValue]:
        """Bind and encode call arguments; the error names the offending parameter."""
        if kwargs or len(args) != len(self.params):
            try:
                bound = self._sig.bind(*args, **kwargs)
            except TypeError as exc:
                raise EncodingError(f"bad arguments: {exc}", path=self.label) from exc
            bound.apply_defaults()
            args = [bound.arguments[p.name] for p in self.params]
        return [
            converter.to_data(value, p.annotation, path=f"{self.label}({p.name})")
            for value, p in zip(args, self.params, strict=True)
        ]

    def decode_args(self, converter: TypeConverter, data: Sequence[JSONValue]) -> list[Any]:
        """Decode stored arguments, filling parameters added since with their defaults."""
        if len(data) > len(self.params):
            raise EncodingError(
                f"{len(data)} stored arguments but the function takes {len(self.params)}",
                path=self.label,
            )
        values: list[Any] = []
        for index, p in enumerate(self.params):
            if index < len(data):
                values.append(
                    converter.from_data(data[index], p.annotation, path=f"{self.label}({p.name})")
                )
            elif p.default is not inspect.Parameter.empty:
                values.append(p.default)
            else:
                raise EncodingError(f"missing stored argument {p.name!r}", path=self.label)
        return values

    def encode_result(self, converter: TypeConverter, value: Any) -> JSONValue:
        """Encode a return value with the annotated return type."""
        return converter.to_data(value, self.returns, path=f"{self.label} result")

    def decode_result(self, converter: TypeConverter, data: JSONValue) -> Any:
        """Decode a stored return value into the annotated return type."""
        return converter.from_data(data, self.returns, path=f"{self.label} result")
