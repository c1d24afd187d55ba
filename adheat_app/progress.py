"""Progress of long loops: a tqdm bar on a terminal, plain log lines otherwise.

:func:`progress` (and :func:`tracked`, its loop form) wraps the participant
pool, the training epochs and the heatmap batches. When standard error is a terminal it draws a tqdm bar there
and, while the bar is open, prints the console's log records above it (through
``tqdm.write``) so the two do not overwrite each other. Otherwise (a batch job,
a pipe, a log file) no bar is drawn and the loop's own log lines are the
progress. The per-item log lines are written either way, so the run's log file
(``logs/adheat-<run>.log``) is the same with or without a terminal.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

#: The logger whose console handlers the bar shares the terminal with (``adheat_app.cli.run`` sets them up).
PACKAGE_LOGGER = "adheat_app"
T = TypeVar("T")


class _AboveBars(io.TextIOBase):
    """A text stream that writes through ``tqdm.write``: open bars are cleared, the text printed, the bars redrawn."""

    def __init__(self, stream) -> None:
        super().__init__()
        self.stream = stream

    def write(self, text: str) -> int:
        tqdm.write(text, file=self.stream, end="")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def on_terminal() -> bool:
    """Whether standard error is an interactive terminal (where a bar is drawn)."""
    return sys.stderr.isatty()


@contextlib.contextmanager
def progress(total: int, desc: str, unit: str) -> Iterator[tqdm]:
    """A progress bar of ``total`` items on the terminal; a disabled bar (no output) elsewhere.

    Parameters
    ----------
    total : int
        Number of items (scans, epochs, maps).
    desc : str
        Text before the bar.
    unit : str
        Name of one item.

    Yields
    ------
    tqdm.tqdm
        Call ``update(n)`` after ``n`` items. On a terminal the console log handlers of
        :data:`PACKAGE_LOGGER` write above the bar until the block ends.
    """
    terminal = on_terminal()
    bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=not terminal, leave=False,
               dynamic_ncols=True)
    consoles = [h for h in logging.getLogger(PACKAGE_LOGGER).handlers
                if terminal and type(h) is logging.StreamHandler and h.stream is sys.stderr]
    for handler in consoles:
        handler.setStream(_AboveBars(sys.stderr))
    try:
        yield bar
    finally:
        for handler in consoles:
            handler.setStream(sys.stderr)
        bar.close()


def tracked(items: Iterable[T], desc: str, unit: str, total: int | None = None) -> Iterator[T]:
    """The items of ``items`` in order, advancing a :func:`progress` bar after each one (the bar closes on exit).

    ``total`` is the number of items where ``items`` has no length (e.g. ``as_completed`` of futures).
    """
    with progress(len(items) if total is None else total, desc, unit) as bar:
        for item in items:
            yield item
            bar.update(1)
