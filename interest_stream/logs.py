"""Logging set-up for the entry points; library modules only call ``getLogger(__name__)``.

:func:`configure_logging` sends log records to stderr, as plain lines or as JSON
lines (``{"ts", "level", "logger", "msg", "exc"?}``, ``INTEREST_LOG_JSON``); the
project's loggers log at ``INTEREST_LOG_LEVEL``, other libraries at WARNING.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

__all__ = ["configure_logging"]

_CONFIGURED = False
_ROOTS = ("interest_stream",)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure_logging(level: str = "INFO", *, json_lines: bool = False) -> None:
    """Send the project's logs to stderr once per process (later calls only set the level).

    Args:
        level: ``DEBUG``, ``INFO``, ``WARNING`` or ``ERROR`` for the project's loggers
            (unknown names mean ``INFO``).
        json_lines: Format records as JSON lines (first call only).
    """
    global _CONFIGURED
    lvl = getattr(logging, level.upper(), logging.INFO)
    if not _CONFIGURED:
        handler = logging.StreamHandler(sys.stderr)
        if json_lines:
            handler.setFormatter(_JsonFormatter())
        else:
            handler.setFormatter(
                logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
            )
        root = logging.getLogger()
        if not root.handlers:
            root.addHandler(handler)
        root.setLevel(logging.WARNING)
        _CONFIGURED = True
    for name in _ROOTS:
        logging.getLogger(name).setLevel(lvl)
