"""Parsing of ``postgresql://`` store URLs into connection settings."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import ParseResult, parse_qsl, urlencode, urlparse, urlunparse

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from stalwart.errors import ConfigurationError

DEFAULT_SCHEMA = "stalwart"
"""The schema a store uses when the URL names none."""
DEFAULT_POOL_SIZE = 10
"""The most connections a store's pool opens when the URL does not say."""
DEFAULT_POOL_TIMEOUT = 30.0
"""Seconds an operation waits for a pooled connection before failing with StoreError."""

SCHEMES = ("postgresql", "postgres")
"""URL schemes that name a PostgreSQL store."""

_SCHEMA = re.compile(r"^[a-z_][a-z0-9_]*$")
_MAX_SCHEMA = 63 - len("_queue")  # notification channels must be identifiers too
_OPTIONS = ("schema", "pool_size", "pool_timeout")


@dataclass(frozen=True, slots=True)
class PostgresConfig:
    """Connection settings taken from a store URL."""

    conninfo: str
    """libpq connection string (the URL without Stalwart's options, search_path set)."""
    schema: str
    """The schema holding this application's tables."""
    pool_size: int
    """Maximum connections in the pool."""
    pool_timeout: float
    """Seconds to wait for a pooled connection."""
    display: str
    """The URL without its password, for messages."""

    @property
    def channel(self) -> str:
        """The LISTEN/NOTIFY channel on which due instances are announced."""
        return f"{self.schema}_wake"

    @property
    def queue_channel(self) -> str:
        """The channel on which queues that may have claimable work are announced."""
        return f"{self.schema}_queue"


def parse_url(url: str) -> PostgresConfig:
    """Parse ``postgresql://user@host:port/db?schema=s&pool_size=n&pool_timeout=t``.

    Other query parameters are libpq's (``sslmode``, ``connect_timeout``, ``options``,
    ...) and are passed through. The schema must be a lower-case SQL identifier.
    """
    parsed = urlparse(url)
    if parsed.scheme not in SCHEMES:
        raise ConfigurationError(f"not a PostgreSQL URL: {url!r}")
    ours: dict[str, str] = {}
    passed: list[tuple[str, str]] = []
    for key, value in parse_qsl(parsed.query, keep_blank_values=True):
        if key in _OPTIONS:
            ours[key] = value
        else:
            passed.append((key, value))
    schema = ours.get("schema", DEFAULT_SCHEMA)
    if not _SCHEMA.match(schema) or len(schema) > _MAX_SCHEMA:
        raise ConfigurationError(
            f"schema must be a lower-case identifier ([a-z_][a-z0-9_]*) of at most "
            f"{_MAX_SCHEMA} characters, got {schema!r}"
        )
    pool_size = int(_positive(ours, "pool_size", DEFAULT_POOL_SIZE, integer=True))
    pool_timeout = _positive(ours, "pool_timeout", DEFAULT_POOL_TIMEOUT, integer=False)
    libpq_url = urlunparse(parsed._replace(query=urlencode(passed)))
    try:
        params = conninfo_to_dict(libpq_url)
    except psycopg.Error as exc:
        raise ConfigurationError(f"invalid PostgreSQL URL {_mask(parsed)!r}: {exc}") from exc
    options = str(params.get("options") or "")
    params["options"] = f"{options} -c search_path={schema}".strip()
    params.setdefault("application_name", "stalwart")
    return PostgresConfig(
        conninfo=make_conninfo("", **params),
        schema=schema,
        pool_size=pool_size,
        pool_timeout=pool_timeout,
        display=_mask(parsed),
    )


def _positive(options: dict[str, str], key: str, default: float, *, integer: bool) -> float:
    raw = options.get(key)
    if raw is None:
        return default
    try:
        value = float(int(raw)) if integer else float(raw)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        kind = "integer" if integer else "number"
        raise ConfigurationError(f"{key} must be a positive {kind}, got {raw!r}")
    return value


def _mask(parsed: ParseResult) -> str:
    """The URL with any password replaced by ``***``."""
    netloc = parsed.netloc
    if "@" in netloc:
        auth, host = netloc.rsplit("@", 1)
        if ":" in auth:
            netloc = f"{auth.split(':', 1)[0]}:***@{host}"
    return urlunparse(parsed._replace(netloc=netloc))
