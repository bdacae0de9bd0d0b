"""Whole-file comparisons of one column's values in bounded memory: a 64-bit hash, spilled partitions.

Uniqueness (``duplicate_rows``, ``DuplicateCounter``) and referential integrity (``references``)
compare every value of a column, over the whole file. Values are compared as GX's pandas semantics
see them (``string_keys``: nulls and NaN set aside, ``-0.0`` equal to ``0.0``, the rest as strings).
Each value gets a 64-bit hash, which only picks a partition and the duplicate candidates; candidates
are then compared exactly, so a weak hash costs time, never correctness. Beyond ``_PARTITION_ROWS``
values the (value, hash) pairs are split by hash into spill files in a private (0700) folder next to
the staged file (they hold masked values, like the file), one partition in memory at a time, and the
folder is removed afterwards.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from validation.metrics import null_mask

_PARTITION_ROWS = 2_000_000  # values held at once by a uniqueness or reference check (about 100 MB)
READ_BUFFER_BYTES = 1 << 20  # Parquet read buffer of a streaming pass (with pre_buffer=False)


def partition_count(rows: int) -> int:
    """Partitions (a power of two) that keep each one within ``_PARTITION_ROWS`` values."""
    parts = 1
    while parts * _PARTITION_ROWS < rows:
        parts *= 2
    return parts


def string_keys(values: Any) -> tuple[int, Any]:
    """(GX null count, the other values as strings): what uniqueness and references compare."""
    nulls = null_mask(values)
    null_count = int(pc.sum(nulls).as_py() or 0)
    if pa.types.is_floating(values.type):
        values = pc.add(values, 0.0)  # -0.0 → 0.0: pandas' duplicated() takes them as equal
    if null_count:
        values = pc.filter(values, pc.invert(nulls))
    return null_count, pc.cast(values, pa.string())


_MIX = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 0xD6E8FEB86659FD93)


def _words(keys: Any) -> tuple[Any, Any, Any, Any]:
    """(byte lengths, first, middle and last 8 bytes of each string as uint64; bytes outside a value are 0)."""
    n = len(keys)
    buffers = keys.buffers()
    offsets = np.frombuffer(buffers[1], dtype=np.int32, count=n + 1, offset=keys.offset * 4).astype(np.int64)
    starts, ends = offsets[:-1], offsets[1:]
    lengths = ends - starts
    data = np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] is not None and buffers[2].size else None
    if data is None or not n or not lengths.any():
        zero = np.zeros(n, dtype=np.uint64)
        return lengths.astype(np.uint64), zero, zero, zero
    width = int(lengths[0])
    if width >= 8 and (lengths == width).all():  # fixed width (pseudonyms): plain slices, no gather
        block = data[starts[0]:starts[0] + n * width].reshape(n, width)
        middle = width // 2 - 4
        return (lengths.astype(np.uint64), np.ascontiguousarray(block[:, :8]).view("<u8").ravel(),
                np.ascontiguousarray(block[:, middle:middle + 8]).view("<u8").ravel(),
                np.ascontiguousarray(block[:, width - 8:]).view("<u8").ravel())

    def word(at: Any) -> Any:
        index = at[:, None] + np.arange(8)
        inside = (index >= starts[:, None]) & (index < ends[:, None])
        picked = np.where(inside, data[np.clip(index, 0, len(data) - 1)], 0).astype(np.uint8)
        return np.ascontiguousarray(picked).view("<u8").ravel()

    return lengths.astype(np.uint64), word(starts), word(starts + lengths // 2 - 4), word(ends - 8)


def _hash64(keys: Any) -> Any:
    """A 64-bit hash of each string (its length and first, middle and last 8 bytes; whole up to 24 bytes).

    Equal strings hash equal; the hash only picks partitions and duplicate candidates, which are then
    compared exactly, so a weak spot costs time, never correctness.
    """
    lengths, first, middle, last = _words(keys)
    k1, k2, k3, k4 = (np.uint64(m) for m in _MIX)
    with np.errstate(over="ignore"):
        h = lengths * k1
        h ^= first * k2
        h = (h << np.uint64(29)) | (h >> np.uint64(35))
        h ^= middle * k3
        h = (h << np.uint64(31)) | (h >> np.uint64(33))
        h ^= last * k4
        h ^= h >> np.uint64(30)  # splitmix64's finaliser: every input bit reaches the top bits
        h *= k2
        h ^= h >> np.uint64(27)
        h *= k3
        h ^= h >> np.uint64(31)
    return h


def _partition_ids(hashes: Any, parts: int) -> Any:
    if parts == 1:
        return np.zeros(len(hashes), dtype=np.int64)
    return (hashes >> np.uint64(65 - parts.bit_length())).astype(np.int64)  # the top log2(parts) bits


class HashPartitions:
    """String values (and their hashes) fed batch by batch, split by hash into ``parts`` partitions.

    One partition is held in memory; more are spilled to Arrow IPC files in a private (0700) folder
    next to the staged file (it holds masked values, like the file) and removed on close.
    """

    def __init__(self, parts: int, spill_parent: Path) -> None:
        self.parts = parts
        self._spill_parent = spill_parent
        self._held: list[Any] = []
        self._folder: Path | None = None
        self._writers: list[Any] = []

    def __enter__(self) -> HashPartitions:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add_keys(self, keys: Any) -> None:
        """Add string values (no nulls)."""
        if not len(keys):
            return
        hashes = _hash64(keys)
        batch = pa.record_batch([keys, pa.array(hashes)], names=["value", "hash"])
        if self.parts == 1:
            self._held.append(batch)
            return
        if not self._writers:
            self._open(batch.schema)
        ids = _partition_ids(hashes, self.parts)
        order = np.argsort(ids, kind="stable")
        bounds = np.searchsorted(ids[order], np.arange(self.parts + 1))
        ordered = batch.take(pa.array(order))
        for part, writer in enumerate(self._writers):
            if bounds[part + 1] > bounds[part]:
                writer.write_batch(ordered.slice(bounds[part], bounds[part + 1] - bounds[part]))

    def chunks(self, part: int) -> Iterator[Any]:
        """The (value, hash) record batches of one partition, in the order they were added."""
        if self.parts == 1:
            yield from self._held
            return
        if not self._writers or self._folder is None:
            return
        self._writers[part].close()
        with pa.memory_map(str(self._folder / f"{part}.arrow")) as source:
            yield from pa.ipc.open_stream(source)

    def partition(self, part: int) -> Any:
        """One partition as a table (value, hash)."""
        schema = pa.schema([("value", pa.string()), ("hash", pa.uint64())])
        return pa.Table.from_batches(list(self.chunks(part)), schema=schema)

    def _open(self, schema: Any) -> None:
        self._folder = Path(tempfile.mkdtemp(prefix=".gate-spill-", dir=self._spill_parent))
        for part in range(self.parts):
            self._writers.append(pa.ipc.new_stream(pa.OSFile(str(self._folder / f"{part}.arrow"), "wb"), schema))

    def close(self) -> None:
        for writer in self._writers:
            with contextlib.suppress(Exception):
                writer.close()
        self._writers = []
        self._held = []
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None


class DuplicateCounter(HashPartitions):
    """(null count, rows whose value occurs more than once) over arrays fed one by one."""

    def __init__(self, rows: int, spill_parent: Path) -> None:
        super().__init__(partition_count(rows), spill_parent)
        self.nulls = 0

    def __enter__(self) -> DuplicateCounter:
        return self

    def add(self, values: Any) -> None:
        nulls, keys = string_keys(values)
        self.nulls += nulls
        self.add_keys(keys)

    def result(self) -> tuple[int, int]:
        return self.nulls, sum(_duplicated(self.partition(part)) for part in range(self.parts))


def _duplicated(table: Any) -> int:
    """Rows whose value occurs more than once: rows sharing a hash are candidates, compared exactly."""
    if table.num_rows < 2:
        return 0
    hashes = table.column("hash").to_numpy()
    ordered = np.sort(hashes)
    repeated = ordered[1:][ordered[1:] == ordered[:-1]]
    if not len(repeated):
        return 0
    candidates = np.flatnonzero(np.isin(hashes, np.unique(repeated)))
    values = table.column("value").take(pa.array(candidates))
    counts = pc.value_counts(values).field("counts")
    return int(pc.sum(pc.filter(counts, pc.greater(counts, 1))).as_py() or 0)


def column_batches(path: Path, column: str, batch_rows: int) -> Iterator[Any]:
    """One column of a Parquet file, as Arrow arrays of at most ``batch_rows`` values."""
    parquet = pq.ParquetFile(path, pre_buffer=False, buffer_size=READ_BUFFER_BYTES)
    try:
        for batch in parquet.iter_batches(batch_size=batch_rows, columns=[column], use_pandas_metadata=False):
            yield batch.column(0)
    finally:
        parquet.close()


def duplicate_rows(path: Path, column: str, *, batch_rows: int = 250_000) -> tuple[int, int]:
    """(null count, rows whose value occurs more than once) of one column, in one pass and bounded memory."""
    path = Path(path)
    rows = int(pq.ParquetFile(path).metadata.num_rows)
    with DuplicateCounter(rows, path.parent) as counter:
        for values in column_batches(path, column, batch_rows):
            counter.add(values)
        return counter.result()
