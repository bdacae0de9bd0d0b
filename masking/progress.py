"""Progress of one pass over one dataset: rows read, rows/s, elapsed and, with a row estimate, share done and ETA.

The masking engine feeds a ``RowProgress`` per dataset as record batches arrive. Every ``every`` seconds (and once
at the end) it logs one line, e.g.::

    dataset claimants: 1,250,000 of ~5,000,000 rows (25%), 412,000 rows/s, 3.0 s elapsed, about 9 s left

An estimate comes from the source's statistics (``extract.row_estimate``: PostgreSQL ``reltuples``, MariaDB/MySQL
``information_schema.TABLES.TABLE_ROWS``); without one (SQLite, a filtered or partial read) the line says rows,
rate and elapsed only. Listeners (the CLI's progress bar, ``listening``) get every update, not only the logged
ones. Only counts and names: never a value.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

log = logging.getLogger(__name__)

LOG_EVERY_SECONDS = 15.0


@dataclass(frozen=True)
class ProgressUpdate:
    """One moment of one dataset's pass (``phase``: ``extract`` or ``sample``)."""

    dataset: str
    phase: str
    rows: int
    elapsed: float
    estimate: int | None
    done: bool = False

    @property
    def rate(self) -> float | None:
        return self.rows / self.elapsed if self.elapsed > 0 else None

    @property
    def share(self) -> float | None:
        """Rows read as a share of the estimate (capped at 1: the estimate is only an estimate)."""
        if not self.estimate or self.estimate <= 0:
            return None
        return min(1.0, self.rows / self.estimate)

    @property
    def eta(self) -> float | None:
        """Seconds left at the current rate, while the estimate says rows remain."""
        rate, share = self.rate, self.share
        if self.done or rate is None or rate <= 0 or share is None or self.estimate is None or share >= 1.0:
            return None
        return (self.estimate - self.rows) / rate

    def line(self) -> str:
        what = f"dataset {self.dataset}" + (" (sample pass)" if self.phase == "sample" else "")
        share = self.share
        rows = f"{self.rows:,} rows"
        if self.estimate and share is not None:
            rows = f"{self.rows:,} of ~{self.estimate:,} rows ({share:.0%})"
        parts = [rows]
        if self.rate is not None:
            parts.append(f"{self.rate:,.0f} rows/s")
        parts.append(f"{_duration(self.elapsed)} elapsed")
        eta = self.eta
        if eta is not None:
            parts.append(f"about {_duration(eta)} left")
        if self.done:
            parts.append("done")
        return f"{what}: " + ", ".join(parts)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds + 0.5), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


Listener = Callable[[ProgressUpdate], None]
_listeners: list[Listener] = []
_lock = threading.Lock()


@contextlib.contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Call ``listener`` with every update of every pass while the block runs (e.g. a progress bar)."""
    with _lock:
        _listeners.append(listener)
    try:
        yield
    finally:
        with _lock:
            _listeners.remove(listener)


class RowProgress:
    """Counts the rows of one pass; logs a line every ``every`` seconds and at ``finish``."""

    def __init__(self, dataset: str, *, estimate: int | None = None, phase: str = "extract",
                 every: float = LOG_EVERY_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.dataset, self.phase, self.estimate, self.every, self._clock = dataset, phase, estimate, every, clock
        self.rows = 0
        self._started = clock()
        self._next_log = self._started + every
        self._notify(self._update())

    def _update(self, done: bool = False) -> ProgressUpdate:
        return ProgressUpdate(self.dataset, self.phase, self.rows, self._clock() - self._started, self.estimate, done)

    def add(self, rows: int) -> None:
        self.rows += rows
        update = self._update()
        if self._clock() >= self._next_log:
            log.info("%s", update.line())
            self._next_log = self._clock() + self.every
        self._notify(update)

    def finish(self) -> ProgressUpdate:
        update = self._update(done=True)
        log.info("%s", update.line())
        self._notify(update)
        return update

    @staticmethod
    def _notify(update: ProgressUpdate) -> None:
        with _lock:
            listeners = list(_listeners)
        for listener in listeners:
            try:
                listener(update)
            except Exception as exc:  # a display problem never stops an extract
                log.debug("progress listener failed: %s", type(exc).__name__)
