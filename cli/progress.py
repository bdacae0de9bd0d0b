"""Progress of ``contract-extracts run`` on the terminal: a bar per dataset (tqdm), or plain lines when not a terminal.

The masking engine reports every pass over a dataset (``masking.progress``); this shows it. On a terminal each
pass gets a tqdm bar with rows, rows/s, elapsed and, where the source estimates the table's rows, share done and
ETA. Otherwise (a pipe, a log file, cron) the same facts are printed as one plain line per dataset every
``every`` seconds and when it is done, so a log stays readable.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from tqdm import tqdm

from masking.progress import ProgressUpdate, listening


class TerminalProgress:
    """Shows ``ProgressUpdate``s on ``stream``: bars on a terminal, plain lines otherwise."""

    def __init__(self, stream: TextIO, *, bars: bool | None = None, every: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.bars = stream.isatty() if bars is None else bars
        self.every, self._clock = every, clock
        self._bars: dict[tuple[str, str], Any] = {}
        self._printed: dict[tuple[str, str], float] = {}

    def __call__(self, update: ProgressUpdate) -> None:
        if self.bars:
            self._bar(update)
        else:
            self._line(update)

    def _bar(self, update: ProgressUpdate) -> None:
        key = (update.dataset, update.phase)
        bar = self._bars.get(key)
        if bar is None:
            label = update.dataset + (" (sample)" if update.phase == "sample" else "")
            bar = tqdm(total=update.estimate, desc=label, unit=" rows", unit_scale=True, file=self.stream,
                       dynamic_ncols=True, mininterval=0.5, leave=True)
            self._bars[key] = bar
        if bar.total is not None and update.rows > bar.total:
            bar.total = update.rows  # the estimate was low: never show more than 100 %
        bar.update(update.rows - bar.n)
        if update.done:
            bar.close()
            del self._bars[key]

    def _line(self, update: ProgressUpdate) -> None:
        key = (update.dataset, update.phase)
        now = self._clock()
        if update.done or (update.rows and now - self._printed.get(key, -self.every) >= self.every):
            print(update.line(), file=self.stream, flush=True)
            self._printed[key] = now

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()


@contextlib.contextmanager
def shown_on(stream: TextIO) -> Iterator[TerminalProgress]:
    """Show the progress of every pass on ``stream`` while the block runs."""
    display = TerminalProgress(stream)
    try:
        with listening(display):
            yield display
    finally:
        display.close()
