"""Typed one-dimensional arrays for the step calls, dumped without type inference.

psycopg adapts a Python list by first inspecting its elements to choose the array type
(``get_key``, ``upgrade``, dimension checks) and then dumping each element through its
own dumper. For the three event arrays of every ``stalwart_append`` call that was about
a third of psycopg's per-step work (cProfile of lone PostgreSQL writes). Their types are
fixed (``text[]`` and ``float8[]``, no NULLs, one dimension), so these list subclasses
carry the type with them and their dumpers write PostgreSQL's binary array format in one
pass. The dumpers are registered on psycopg's global adapters map at import; a
connection made without them (it cannot happen through the store) would still adapt the
values correctly as plain lists.
"""

from __future__ import annotations

import struct
from typing import Any

import psycopg
from psycopg.abc import AdaptContext
from psycopg.adapt import Dumper
from psycopg.postgres import types
from psycopg.pq import Format

_TEXT = types["text"]
_FLOAT8 = types["float8"]
_HEADER = struct.Struct(">iiiii")  # ndim, has-nulls flag, element oid, length, lower bound
_EMPTY = struct.Struct(">iii")  # ndim 0, no nulls, element oid
_LENGTH = struct.Struct(">i")
_FLOAT8_ITEM = struct.Struct(">id")  # each element: its length (8), then the value


class TextArray(list[str]):
    """A ``text[]`` argument: one dimension, no NULLs."""


class Float8Array(list[float]):
    """A ``float8[]`` argument: one dimension, no NULLs."""


class _TextArrayDumper(Dumper):
    format = Format.BINARY
    oid = _TEXT.array_oid

    def __init__(self, cls: type, context: AdaptContext | None = None) -> None:
        super().__init__(cls, context)
        # Binary text is sent in the client encoding, as psycopg's own str dumper does.
        self._encoding = self.connection.info.encoding if self.connection else "utf-8"

    def dump(self, obj: Any) -> bytes:
        if not obj:
            return _EMPTY.pack(0, 0, _TEXT.oid)
        parts = [_HEADER.pack(1, 0, _TEXT.oid, len(obj), 1)]
        pack = _LENGTH.pack
        encoding = self._encoding
        for item in obj:
            data = item.encode(encoding)
            parts.append(pack(len(data)))
            parts.append(data)
        return b"".join(parts)


class _Float8ArrayDumper(Dumper):
    format = Format.BINARY
    oid = _FLOAT8.array_oid

    def dump(self, obj: Any) -> bytes:
        if not obj:
            return _EMPTY.pack(0, 0, _FLOAT8.oid)
        pack = _FLOAT8_ITEM.pack
        return _HEADER.pack(1, 0, _FLOAT8.oid, len(obj), 1) + b"".join(
            pack(8, float(item)) for item in obj
        )


psycopg.adapters.register_dumper(TextArray, _TextArrayDumper)
psycopg.adapters.register_dumper(Float8Array, _Float8ArrayDumper)
