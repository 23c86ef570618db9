"""Opaque paging cursors for instance listings (newest first by creation time, then id)."""

from __future__ import annotations

import base64
import json

from stalwart.errors import ConfigurationError


def encode_cursor(created_at: float, instance_id: str) -> str:
    """The cursor that resumes a listing after this instance."""
    raw = json.dumps([created_at, instance_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> tuple[float, str] | None:
    """Decode a cursor from :func:`encode_cursor`; a malformed one is a clear error."""
    if cursor is None:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created_at, instance_id = json.loads(base64.urlsafe_b64decode(padded))
        return float(created_at), str(instance_id)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"invalid listing cursor {cursor!r}") from exc
