"""Fixtures of the conformance run: the PostgreSQL session database."""

from __future__ import annotations

from tests.postgres_support import postgres_database

__all__ = ["postgres_database"]
