"""Instance id rules, checked before anything is stored."""

from __future__ import annotations

from stalwart.errors import ConfigurationError

MAX_ID_LENGTH = 255
"""The longest workflow id accepted."""


def validate_instance_id(instance_id: str) -> str:
    """Refuse empty, overlong or control-character ids before anything is stored."""
    if not isinstance(instance_id, str):
        raise ConfigurationError(f"workflow id must be a string, got {instance_id!r}")
    if not instance_id or not instance_id.strip():
        raise ConfigurationError("workflow id must not be empty")
    if len(instance_id) > MAX_ID_LENGTH:
        raise ConfigurationError(f"workflow id is longer than {MAX_ID_LENGTH} characters")
    if not instance_id.isprintable():
        raise ConfigurationError(f"workflow id {instance_id!r} contains control characters")
    return instance_id
