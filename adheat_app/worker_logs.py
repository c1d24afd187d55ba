"""Log records of spawned worker processes, handed back to the parent and written by the run's handlers.

A process started with ``spawn`` has none of the parent's handlers (the console
and ``logs/adheat-<run>.log``, :func:`adheat_app.cli.run.setup_logging`): its
warnings would reach standard error only, and its INFO lines nowhere.
:func:`call_logged` runs a function in the worker while collecting the records
of the package's loggers at the parent's level, each made picklable (message
formatted, traceback as text); :func:`replay` hands them to the parent's
loggers of the same names, so they are written as if the parent had logged them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TypeVar

from adheat_app.progress import PACKAGE_LOGGER

T = TypeVar("T")


class _Collector(logging.Handler):
    """Keeps every record it is given, in a form that can be pickled back to the parent."""

    def __init__(self, level: int) -> None:
        super().__init__(level)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        record.msg, record.args = record.getMessage(), None
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        self.records.append(record)


def parent_level() -> int:
    """The level the parent's package logger lets through (what workers should collect)."""
    return logging.getLogger(PACKAGE_LOGGER).getEffectiveLevel()


def call_logged(level: int, function: Callable[..., T], *args) -> tuple[T, list[logging.LogRecord]]:
    """``function(*args)`` and the records the package's loggers emitted meanwhile at ``level`` or above."""
    logger = logging.getLogger(PACKAGE_LOGGER)
    collector, before, propagate = _Collector(level), logger.level, logger.propagate
    logger.addHandler(collector)
    logger.setLevel(level)
    logger.propagate = False  # not also to the worker's standard error
    try:
        return function(*args), collector.records
    finally:
        logger.removeHandler(collector)
        logger.setLevel(before)
        logger.propagate = propagate


def replay(records: Iterable[logging.LogRecord]) -> None:
    """Hand a worker's records to this process's loggers of the same names (and so to the run's handlers)."""
    for record in records:
        logger = logging.getLogger(record.name)
        if logger.isEnabledFor(record.levelno):
            logger.handle(record)
