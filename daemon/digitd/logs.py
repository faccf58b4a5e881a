"""Logging: structlog with JSON lines for journald, readable console lines on a terminal."""

from __future__ import annotations

import logging
import sys

import structlog


def configure_logging(format: str = "auto", level: str = "info") -> None:
    """Set up structlog once per process; `format` is "auto", "json" or "console"."""
    if format == "auto":
        format = "console" if sys.stdout.isatty() else "json"
    renderer = (
        structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
        if format == "console"
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
