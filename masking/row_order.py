"""Keyed row order: a delivered row's position says nothing about the source (design.md, Rows and populations).

Rows leave the masking stage in source order (primary key, partition ranges, insertion order), and two
contracts over the same people would line up row by row although their pseudonyms differ. So every delivered
file is written in the order of a keyed, per-contract permutation instead (purpose key ``order``; per delivery
with ``linkage: delivery``):

- ``stream = AES-256-CTR(key = order key, initial counter block = HMAC-SHA256(order key, "row-order" 0x00 d)[:16])``
  for dataset name ``d`` (UTF-8), the keystream of encrypting zero bytes;
- ``rank(n) =`` the big-endian unsigned 64-bit integer in bytes ``[8n, 8n + 8)`` of that stream, where ``n`` counts
  the dataset's rows (from 0) in the order they leave masking;
- rows are written in ascending rank (ties, which need a 64-bit collision, keep arrival order).

Without the key the ranks are indistinguishable from random, so the delivered order is a uniformly random
permutation of the arrival order, independent between contracts. Row groups hold rows of every part of the
source alike, so neither they nor their Parquet statistics reveal source order either.

Memory stays bounded whatever the table size: rows are held in memory up to ``spill_bytes``; beyond that they
are scattered (``SCATTER_BYTES`` at a time) by the top 8 bits of their rank into 256 Arrow IPC files in the
(private) spill folder, and each bucket is sorted on its own at the end; a bucket still larger than
``spill_bytes`` is split again by the next 8 bits. The spill files hold masked rows only and are removed when
the writer finishes or fails.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from core.streams import prefetched

RANK_COLUMN = "__row_order_rank"
BUCKET_BITS = 8
BUCKETS = 1 << BUCKET_BITS
# Rows per Parquet row group written (sorted buckets are gathered until there are this many).
ROW_GROUP_ROWS = 131_072
DEFAULT_SPILL_BYTES = 64 * 1024 * 1024
# Once spilling, rows are scattered into the bucket files this many bytes at a time: one scatter of ~16 MiB
# instead of one per record batch (each scatter writes a slice to every bucket: 256 small writes per batch).
SCATTER_BYTES = 16 * 1024 * 1024
# A bucket over the byte limit is split again only when it has at least this many rows (a file's own overhead
# must not make tiny buckets split down to single rows).
MIN_SPLIT_ROWS = 4096
_RANK_BITS = 64


def initial_counter_block(order_key: bytes, dataset: str) -> bytes:
    """The CTR initial counter block of a dataset's rank stream (see the module docstring)."""
    return hmac.new(order_key, b"row-order\x00" + dataset.encode("utf-8"), hashlib.sha256).digest()[:16]


class RankStream:
    """The ranks of a dataset's rows, in arrival order: one AES-256-CTR keystream read 8 bytes a row."""

    def __init__(self, order_key: bytes, dataset: str) -> None:
        if len(order_key) != 32:
            raise ValueError("the order key must be 32 bytes")
        cipher = Cipher(algorithms.AES(order_key), modes.CTR(initial_counter_block(order_key, dataset)))
        self._keystream = cipher.encryptor()

    def next(self, rows: int) -> np.ndarray[Any, np.dtype[np.uint64]]:
        """Ranks of the next ``rows`` rows."""
        block = self._keystream.update(bytes(8 * rows))
        return np.frombuffer(block, dtype=">u8").astype(np.uint64)


class KeyedOrderWriter:
    """Writes record batches to one Parquet file in keyed random order, memory bounded by ``spill_bytes``."""

    def __init__(self, path: Path, schema: pa.Schema, *, order_key: bytes, dataset: str, spill_dir: Path,
                 spill_bytes: int = DEFAULT_SPILL_BYTES, parquet_options: dict[str, Any] | None = None) -> None:
        self.path = path
        self.schema = schema
        self.rows = 0
        self._ranks = RankStream(order_key, dataset)
        self._spill_dir = spill_dir
        self._spill_bytes = spill_bytes
        self._parquet_options = {"compression": "zstd", **(parquet_options or {})}
        self._ranked_schema = schema.append(pa.field(RANK_COLUMN, pa.uint64(), nullable=False))
        self._held: list[pa.RecordBatch] = []
        self._held_bytes = 0
        self._buckets: _BucketFiles | None = None
        self._done = False

    def write(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        if not batch.schema.equals(self.schema):
            raise ValueError("record batch schema differs from the writer's schema")
        ranked = pa.RecordBatch.from_arrays([*batch.columns, pa.array(self._ranks.next(batch.num_rows))],
                                            schema=self._ranked_schema)
        self.rows += batch.num_rows
        self._held.append(ranked)
        self._held_bytes += ranked.nbytes
        if self._buckets is not None:
            if self._held_bytes > min(SCATTER_BYTES, self._spill_bytes):
                self._scatter_held()
        elif self._held_bytes > self._spill_bytes:
            self._buckets = _BucketFiles(self._spill_dir, self._ranked_schema, depth=0)
            self._scatter_held()

    def _scatter_held(self) -> None:
        """Scatter the rows held so far into the buckets in one go (arrival order kept within each bucket)."""
        if self._buckets is not None and self._held:
            self._buckets.scatter(pa.Table.from_batches(self._held, schema=self._ranked_schema).combine_chunks())
        self._held, self._held_bytes = [], 0

    def close(self) -> int:
        """Write the Parquet file in rank order; returns the number of rows. Removes the spill files."""
        if self._done:
            return self.rows
        self._done = True
        try:
            with pq.ParquetWriter(self.path, self.schema, **self._parquet_options) as writer:
                gathered = _Gatherer(writer, self.schema)
                if self._buckets is None:
                    if self._held:
                        gathered.add(_sorted(pa.Table.from_batches(self._held, schema=self._ranked_schema)))
                    self._held = []
                else:
                    self._scatter_held()
                    # The next bucket is read and sorted on another thread while this one is written (both
                    # release the GIL): a few buckets in memory at most, each a 256th of the spill.
                    with contextlib.closing(prefetched(self._buckets.sorted_tables(self._spill_bytes), depth=1,
                                                       name="row-order")) as tables:
                        for table in tables:
                            gathered.add(table)
                gathered.flush()
                if self.rows == 0:
                    writer.write_table(self.schema.empty_table())
        finally:
            self.abort()
        return self.rows

    def abort(self) -> None:
        """Drop everything held or spilled (also on failure); the Parquet file, if any, is the caller's."""
        self._done = True
        self._held = []
        if self._buckets is not None:
            self._buckets.remove()
            self._buckets = None

    def __enter__(self) -> KeyedOrderWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _sorted(table: pa.Table) -> pa.Table:
    order = pc.sort_indices(table, sort_keys=[(RANK_COLUMN, "ascending")])
    return table.take(order)


class _Gatherer:
    """Collects sorted tables (already in global rank order) into row groups of ROW_GROUP_ROWS rows (the last
    one smaller), whether they come from one table held in memory or from many buckets."""

    def __init__(self, writer: pq.ParquetWriter, schema: pa.Schema) -> None:
        self._writer = writer
        self._schema = schema
        self._tables: list[pa.Table] = []
        self._rows = 0

    def add(self, table: pa.Table) -> None:
        self._tables.append(table.drop_columns([RANK_COLUMN]))
        self._rows += table.num_rows
        size = ROW_GROUP_ROWS
        if self._rows >= size:
            gathered = pa.concat_tables(self._tables)
            whole = self._rows // size * size
            self._writer.write_table(gathered.slice(0, whole).cast(self._schema), row_group_size=size)
            self._tables, self._rows = [gathered.slice(whole)], self._rows - whole

    def flush(self) -> None:
        if self._rows:
            self._writer.write_table(pa.concat_tables(self._tables).cast(self._schema),
                                     row_group_size=max(self._rows, 1))
        self._tables, self._rows = [], 0


class _BucketFiles:
    """256 Arrow IPC files, one per value of the rank's bits [56 - 8·depth, 64 - 8·depth)."""

    def __init__(self, folder: Path, schema: pa.Schema, *, depth: int) -> None:
        if (depth + 1) * BUCKET_BITS > _RANK_BITS:
            raise RuntimeError("row order buckets cannot be split further")
        self._folder = folder
        self._schema = schema
        self._depth = depth
        self._shift = np.uint64(_RANK_BITS - (depth + 1) * BUCKET_BITS)
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._writers: dict[int, ipc.RecordBatchFileWriter] = {}
        self._rows: dict[int, int] = {}

    def _path(self, bucket: int) -> Path:
        return self._folder / f"{bucket:02x}.arrow"

    def scatter(self, batch: pa.RecordBatch | pa.Table) -> None:
        ranks = batch.column(RANK_COLUMN).to_numpy()
        buckets = ((ranks >> self._shift) & np.uint64(BUCKETS - 1)).astype(np.int64)
        order = np.argsort(buckets, kind="stable")
        counts = np.bincount(buckets, minlength=BUCKETS)
        grouped = batch.take(pa.array(order))
        start = 0
        for bucket in np.flatnonzero(counts):
            count = int(counts[bucket])
            writer = self._writers.get(int(bucket))
            if writer is None:
                writer = ipc.new_file(str(self._path(int(bucket))), self._schema)
                self._writers[int(bucket)] = writer
            writer.write(grouped.slice(start, count))
            self._rows[int(bucket)] = self._rows.get(int(bucket), 0) + count
            start += count

    def sorted_tables(self, limit_bytes: int) -> Iterator[pa.Table]:
        """Each bucket's rows sorted by rank, buckets in ascending order (so: every row in rank order)."""
        for writer in self._writers.values():
            writer.close()
        for bucket in sorted(self._writers):
            path = self._path(bucket)
            if (path.stat().st_size > limit_bytes and self._rows[bucket] >= MIN_SPLIT_ROWS
                    and (self._depth + 2) * BUCKET_BITS <= _RANK_BITS):
                inner = _BucketFiles(self._folder / f"{bucket:02x}", self._schema, depth=self._depth + 1)
                with ipc.open_file(str(path)) as reader:
                    for index in range(reader.num_record_batches):
                        inner.scatter(reader.get_batch(index))
                path.unlink()
                yield from inner.sorted_tables(limit_bytes)
                inner.remove()
                continue
            with ipc.open_file(str(path)) as reader:
                table = reader.read_all()
            path.unlink()
            yield _sorted(table)
        self._writers = {}

    def remove(self) -> None:
        for writer in self._writers.values():
            with contextlib.suppress(OSError, pa.ArrowException):  # removing the files is what matters
                writer.close()
        self._writers = {}
        shutil.rmtree(self._folder, ignore_errors=True)
