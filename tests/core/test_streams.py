"""Producer/consumer overlap helpers: order kept, errors surfaced, sources closed, nothing left running."""

from __future__ import annotations

import threading
import time

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.streams import Drain, prefetched, rebatch


def numbers(n: int, closed: list[str], fail_at: int | None = None):
    try:
        for i in range(n):
            if i == fail_at:
                raise ValueError("boom")
            yield i
    finally:
        closed.append(threading.current_thread().name)


@pytest.mark.parametrize("depth", [1, 2, 8], ids=lambda d: f"depth-{d}")
def test_prefetched_keeps_order_and_closes_the_source(depth: int) -> None:
    closed: list[str] = []
    assert list(prefetched(numbers(100, closed), depth, name="producer")) == list(range(100))
    assert closed == ["producer"]


def test_a_producer_error_reaches_the_consumer_unchanged() -> None:
    closed: list[str] = []
    seen = []
    with pytest.raises(ValueError, match="boom"):
        for item in prefetched(numbers(10, closed, fail_at=5)):
            seen.append(item)
    assert seen == [0, 1, 2, 3, 4]
    assert closed


def test_stopping_early_stops_and_closes_the_producer() -> None:
    closed: list[str] = []
    before = threading.active_count()
    stream = prefetched(numbers(10**9, closed), 2)
    assert next(stream) == 0
    stream.close()
    assert closed, "the source's finally clause ran before close() returned"
    assert threading.active_count() == before


def test_a_consumer_error_stops_the_producer() -> None:
    closed: list[str] = []
    with pytest.raises(KeyError):
        for item in prefetched(numbers(10**9, closed)):
            if item == 3:
                raise KeyError("consumer")
    assert closed


def test_drain_writes_everything_in_order() -> None:
    written = []

    def slow(item: int) -> None:
        time.sleep(0.001)
        written.append(item)

    drain = Drain(slow, 2)
    for i in range(50):
        drain.put(i)
    drain.close()
    assert written == list(range(50))


def test_drain_surfaces_the_sink_error() -> None:
    def sink(item: int) -> None:
        if item == 3:
            raise OSError("disk full")

    drain = Drain(sink, 1)
    with pytest.raises(OSError, match="disk full"):
        try:
            for i in range(100):
                drain.put(i)
        finally:
            drain.close()


@settings(max_examples=100, deadline=None)
@given(sizes=st.lists(st.integers(min_value=0, max_value=30), max_size=20),
       batch_rows=st.integers(min_value=1, max_value=25))
def test_rebatch_gives_full_batches_in_order(sizes: list[int], batch_rows: int) -> None:
    start = 0
    batches = []
    for size in sizes:
        batches.append(pa.record_batch({"n": pa.array(range(start, start + size), pa.int64())}))
        start += size
    out = list(rebatch(iter(batches), batch_rows))
    assert [v for b in out for v in b.column(0).to_pylist()] == list(range(start))
    assert all(b.num_rows == batch_rows for b in out[:-1])
    assert not out or 0 < out[-1].num_rows <= batch_rows
