"""Overlap the stages of a stream: a producer thread keeps a few items ready while the consumer works.

Extraction (libpq and pyarrow's parser), masking (hash worker processes) and Parquet writing all run
outside the GIL for most of their time, so running them in different threads overlaps them instead of
leaving the source idle while a batch is hashed. The queue is short, so memory stays bounded by a few
batches. ``rebatch`` evens out batch sizes between a reader and the stages after it.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import Generic, TypeVar

import pyarrow as pa

T = TypeVar("T")



class _Done:
    """The last entry of a channel: nothing follows."""


_DONE = _Done()
_POLL_SECONDS = 0.1


def prefetched(items: Iterator[T], depth: int = 2, *, name: str = "prefetch") -> Generator[T, None, None]:
    """Yield ``items`` in order while a thread runs ahead by up to ``depth`` items.

    The producer's exceptions are re-raised in the consumer, unchanged. When the consumer stops early
    (or fails), the producer stops and its iterator is closed in its own thread (so its ``finally``
    clauses, e.g. ending a child process or a transaction, run before this generator returns).
    """
    channel: queue.Queue[tuple[BaseException | None, T | _Done]] = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(entry: tuple[BaseException | None, T | _Done]) -> bool:
        while not stop.is_set():
            try:
                channel.put(entry, timeout=_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((None, item)):
                    return
            put((None, _DONE))
        except BaseException as exc:  # handed to the consumer as it is
            put((exc, _DONE))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while True:
            error, item = channel.get()
            if error is not None:
                raise error
            if isinstance(item, _Done):
                return
            yield item
    finally:
        stop.set()
        thread.join()


class Drain(Generic[T]):
    """Hand items to ``sink`` in a background thread, in order; errors surface on the next call or ``close``."""

    def __init__(self, sink: Callable[[T], None], depth: int = 2, *, name: str = "drain") -> None:
        self._sink = sink
        self._channel: queue.Queue[T | _Done] = queue.Queue(maxsize=max(1, depth))
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._channel.get()
            if isinstance(item, _Done):
                return
            if self._error is None:
                try:
                    self._sink(item)
                except BaseException as exc:  # kept for the caller; later items are dropped
                    self._error = exc

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def put(self, item: T) -> None:
        self._raise()
        self._channel.put(item)

    def close(self) -> None:
        """Wait until every item is written; re-raise the sink's error if there was one."""
        self._channel.put(_DONE)
        self._thread.join()
        self._raise()


def rebatch(batches: Iterable[pa.RecordBatch], batch_rows: int) -> Iterator[pa.RecordBatch]:
    """Batches of exactly ``batch_rows`` rows (the last one may be shorter) from batches of any size.

    Readers that parse in small pieces (a few thousand rows) would otherwise multiply the per-batch
    costs of every later stage, and each Parquet write would become a tiny row group.
    """
    pending: list[pa.RecordBatch] = []
    held = 0
    for batch in batches:
        if batch.num_rows == 0:
            continue
        pending.append(batch)
        held += batch.num_rows
        if held < batch_rows:
            continue
        merged = pending[0] if len(pending) == 1 else pa.concat_batches(pending)
        offset = 0
        while held - offset >= batch_rows:
            yield merged.slice(offset, batch_rows)
            offset += batch_rows
        pending = [merged.slice(offset)] if offset < held else []
        held -= offset
    if held:
        yield pending[0] if len(pending) == 1 else pa.concat_batches(pending)
