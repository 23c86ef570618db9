"""Logging of the ``stalwart worker`` process: text lines, or JSON lines with --json."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from stalwart.cli.errors import CliError

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
"""Accepted ``--log-level`` values."""


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message (and exception text)."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as a single line of JSON."""
        data = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False, default=str)


def configure_logging(level: str, *, as_json: bool) -> None:
    """Send log records at ``level`` and above to stderr, as text or JSON lines."""
    name = level.strip().upper()
    if name not in LEVELS:
        raise CliError(f"unknown log level {level!r}; expected one of {', '.join(LEVELS)}")
    handler = logging.StreamHandler(sys.stderr)
    if as_json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(name)
