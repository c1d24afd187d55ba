"""Worker logs: what a spawned process logs reaches the parent's handlers, formatted, at the parent's level."""

from __future__ import annotations

import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

from adheat_app.progress import PACKAGE_LOGGER
from adheat_app.worker_logs import call_logged, parent_level, replay


class Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_spawned_workers_records_are_written_by_the_parents_handlers(monkeypatch):
    logger = logging.getLogger(PACKAGE_LOGGER)
    keep = Keep()
    monkeypatch.setattr(logger, "handlers", [keep])
    monkeypatch.setattr(logger, "level", logging.INFO)
    monkeypatch.setattr(logger, "propagate", False)
    worker = logging.getLogger(f"{PACKAGE_LOGGER}.report.subject")
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        result, records = pool.submit(call_logged, parent_level(), worker.warning, "page %s: %d layers", "sub-01",
                                      3).result()
        _, quiet = pool.submit(call_logged, parent_level(), worker.debug, "below the level").result()
    assert result is None and quiet == []  # DEBUG is below the parent's INFO: not collected
    assert keep.records == []  # nothing reached the parent before the replay
    replay(records)
    assert [(r.name, r.levelname, r.getMessage()) for r in keep.records] == [
        (f"{PACKAGE_LOGGER}.report.subject", "WARNING", "page sub-01: 3 layers")]


def test_a_traceback_comes_back_as_text_and_the_workers_logger_is_restored():
    logger = logging.getLogger(PACKAGE_LOGGER)
    before = (logger.level, logger.propagate, list(logger.handlers))

    def fails() -> int:
        try:
            raise ValueError("no such layer")
        except ValueError:
            logging.getLogger(f"{PACKAGE_LOGGER}.x").exception("viewer failed")
        return 7

    result, records = call_logged(logging.INFO, fails)
    assert result == 7 and len(records) == 1
    assert records[0].exc_info is None and "ValueError: no such layer" in records[0].exc_text
    assert (logger.level, logger.propagate, list(logger.handlers)) == before
