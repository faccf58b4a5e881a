"""Logging: structlog with JSON lines for journald, readable console lines on a terminal.

Everything, digitd's events and the standard-library records of watchdog or TensorFlow,
goes through one `logging` handler: one lock, one write per line, so lines from several
threads never interleave and the journal holds one format only.
"""

from __future__ import annotations

import logging
import sys

import structlog


def configure_logging(format: str = "auto", level: str = "info", **fields: object) -> None:
    """Set up logging once per process; `format` is "auto", "json" or "console"; `fields`
    go on every line (a worker process's `worker=1`)."""
    if format == "auto":
        format = "console" if sys.stdout.isatty() else "json"
    renderer = (
        structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
        if format == "console"
        else structlog.processors.JSONRenderer()
    )
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if fields:
        shared.append(_add_fields(fields))
    numeric_level = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric_level, logging.WARNING))  # libraries: warnings and worse
    logging.getLogger("digitd").setLevel(numeric_level)
    logging.getLogger("watchdog.observers.inotify").addFilter(_drop_benign_stop_race)


def _add_fields(fields: dict[str, object]):
    def add(logger, method, event_dict):
        for key, value in fields.items():
            event_dict.setdefault(key, value)
        return event_dict

    return add


def _drop_benign_stop_race(record: logging.LogRecord) -> bool:
    """watchdog logs an error when its emitter sees events while being stopped; harmless."""
    return "called when the thread is inactive" not in record.getMessage()
