"""Progress: a tqdm bar on a terminal with the log lines above it, plain log lines elsewhere."""

from __future__ import annotations

import io
import logging
import sys

import pytest

from adheat_app.progress import PACKAGE_LOGGER, tracked


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("terminal", [True, False])
def test_bar_on_a_terminal_log_lines_always(terminal, monkeypatch):
    stream = Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    logger = logging.getLogger(PACKAGE_LOGGER)
    console = logging.StreamHandler(sys.stderr)
    monkeypatch.setattr(logger, "handlers", [console])
    monkeypatch.setattr(logger, "level", logging.INFO)
    seen = []
    for item in tracked(["a", "b", "c"], "epochs", "epoch"):
        logging.getLogger(f"{PACKAGE_LOGGER}.training").info("item %s done", item)
        seen.append(item)
    text = stream.getvalue()
    assert seen == ["a", "b", "c"]
    assert all(f"item {x} done\n" in text for x in seen)  # every log line, whole, on its own line
    assert ("epochs:   0%|" in text) is terminal and ("0/3" in text) is terminal
    assert console.stream is stream  # the console handler writes to standard error again after the loop
