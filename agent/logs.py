"""Structured JSON logs on stdout for the agent and for the libraries it uses."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, TextIO

import structlog

# Libraries that are chatty at INFO; their warnings still come through as JSON.
_QUIET = ("pysyncobj", "aiohttp.access", "mqtt", "paho", "asyncio")
# syslog priorities understood by journald when a line starts with "<N>".
_JOURNAL_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}


def _journal_prefix(_: Any, __: str, event_dict: structlog.typing.EventDict) -> str | bytes:
    rendered = structlog.processors.JSONRenderer(sort_keys=False)(_, __, event_dict)
    level = str(event_dict.get("level", "info"))
    return f"<{_JOURNAL_PRIORITY.get(level, 6)}>{rendered!s}"


def configure_logging(server: str, level: str = "info", stream: TextIO | None = None) -> None:
    """Route structlog and stdlib logging to one JSON line per event on `stream` (stdout)."""
    under_journal = bool(os.environ.get("JOURNAL_STREAM"))
    renderer: Any = (
        _journal_prefix if under_journal else structlog.processors.JSONRenderer(sort_keys=False)
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
    structlog.contextvars.bind_contextvars(server=server)
