"""Keyed row order: the documented formula, a true permutation, bounded memory, nothing left behind."""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from masking import row_order
from masking.row_order import KeyedOrderWriter, RankStream

SCHEMA = pa.schema([("source_id", pa.int64()), ("name", pa.string())])


def _batches(rows: int, batch_rows: int) -> list[pa.RecordBatch]:
    ids = np.arange(rows, dtype=np.int64)
    return [pa.RecordBatch.from_arrays([pa.array(ids[i:i + batch_rows]),
                                        pa.array([f"row {n}" for n in ids[i:i + batch_rows]])], schema=SCHEMA)
            for i in range(0, rows, batch_rows)]


def _write(tmp_path: Path, key: bytes, rows: int, *, batch_rows: int = 1000, spill_bytes: int = 1 << 30,
           dataset: str = "claimants", name: str = "out.parquet") -> pa.Table:
    path = tmp_path / name
    spill = tmp_path / f"spill-{name}"
    writer = KeyedOrderWriter(path, SCHEMA, order_key=key, dataset=dataset, spill_dir=spill,
                              spill_bytes=spill_bytes)
    for batch in _batches(rows, batch_rows):
        writer.write(batch)
    assert writer.close() == rows
    assert not spill.exists()
    return pq.read_table(path)


def _documented_ranks(key: bytes, dataset: str, rows: int) -> np.ndarray:
    """docs: rank(n) = bytes [8n, 8n+8) of AES-256-CTR(key, HMAC-SHA256(key, "row-order\\0" + d)[:16]) keystream."""
    icb = hmac.new(key, b"row-order\x00" + dataset.encode(), hashlib.sha256).digest()[:16]
    stream = Cipher(algorithms.AES(key), modes.CTR(icb)).encryptor().update(b"\x00" * (8 * rows))
    return np.array([int.from_bytes(stream[8 * n:8 * n + 8], "big") for n in range(rows)], dtype=np.uint64)


def test_rank_stream_follows_the_documented_formula_across_batches() -> None:
    key = os.urandom(32)
    stream = RankStream(key, "payments")
    got = np.concatenate([stream.next(n) for n in (1, 7, 0, 300)])
    assert np.array_equal(got, _documented_ranks(key, "payments", 308))


def test_rows_come_out_in_ascending_documented_rank(tmp_path: Path) -> None:
    key = os.urandom(32)
    table = _write(tmp_path, key, 5000)
    ranks = _documented_ranks(key, "claimants", 5000)
    assert table.column("source_id").to_pylist() == np.argsort(ranks, kind="stable").tolist()
    assert table.schema.equals(SCHEMA)


@pytest.mark.parametrize("spill_bytes", [1 << 30, 100_000, 2_000], ids=["in-memory", "spilled", "split-again"])
def test_spilling_gives_the_same_file_content(tmp_path: Path, spill_bytes: int,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # Four buckets a level and splits down to 1000 rows keep the split-again case small and fast.
    monkeypatch.setattr(row_order, "BUCKET_BITS", 2)
    monkeypatch.setattr(row_order, "BUCKETS", 4)
    monkeypatch.setattr(row_order, "MIN_SPLIT_ROWS", 1000)
    depths: list[int] = []
    real_init = row_order._BucketFiles.__init__

    def recording_init(self: object, folder: Path, schema: pa.Schema, *, depth: int) -> None:
        depths.append(depth)
        real_init(self, folder, schema, depth=depth)

    monkeypatch.setattr(row_order._BucketFiles, "__init__", recording_init)
    key = os.urandom(32)
    expected = _write(tmp_path, key, 20_000, name="memory.parquet")
    table = _write(tmp_path, key, 20_000, batch_rows=777, spill_bytes=spill_bytes, name="spilled.parquet")
    assert table.equals(expected)
    deepest = max(depths, default=-1)  # -1: never spilled; 0: one level of buckets; more: buckets split again
    assert (deepest == -1) if spill_bytes == 1 << 30 else (deepest >= 2) if spill_bytes == 2_000 else (deepest >= 0)
    assert sorted(table.column("source_id").to_pylist()) == list(range(20_000))


def test_position_carries_no_source_order_and_two_contracts_do_not_align(tmp_path: Path) -> None:
    rows = 50_000
    a = _write(tmp_path, os.urandom(32), rows, name="a.parquet").column("source_id").to_numpy()
    b = _write(tmp_path, os.urandom(32), rows, name="b.parquet").column("source_id").to_numpy()
    # Spearman's rank correlation of delivered position and source key: 0 ± 3/sqrt(n) by chance.
    position = np.arange(rows)
    assert abs(np.corrcoef(position, a)[0, 1]) < 4 / np.sqrt(rows)
    # Aligning two contracts' files by position pairs the same source row by chance only (expected 1).
    assert int(np.sum(a == b)) <= 10


def test_same_key_same_order_and_each_dataset_its_own(tmp_path: Path) -> None:
    key = os.urandom(32)
    one = _write(tmp_path, key, 3000, name="one.parquet")
    two = _write(tmp_path, key, 3000, name="two.parquet")
    other = _write(tmp_path, key, 3000, dataset="payments", name="other.parquet")
    assert one.equals(two)
    assert one.column("source_id").to_pylist() != other.column("source_id").to_pylist()


def test_empty_input_writes_an_empty_file_with_the_schema(tmp_path: Path) -> None:
    table = _write(tmp_path, os.urandom(32), 0)
    assert table.num_rows == 0 and table.schema.equals(SCHEMA)


def test_a_failure_removes_the_spill_files(tmp_path: Path) -> None:
    spill = tmp_path / "spill"
    with pytest.raises(RuntimeError), KeyedOrderWriter(tmp_path / "x.parquet", SCHEMA, order_key=os.urandom(32),
                                                       dataset="d", spill_dir=spill, spill_bytes=1000) as writer:
        for batch in _batches(5000, 500):
            writer.write(batch)
        assert spill.exists() and any(spill.iterdir())
        raise RuntimeError("the masking stage failed")
    assert not spill.exists()


def test_spill_folder_is_private(tmp_path: Path) -> None:
    spill = tmp_path / "spill"
    writer = KeyedOrderWriter(tmp_path / "x.parquet", SCHEMA, order_key=os.urandom(32), dataset="d",
                              spill_dir=spill, spill_bytes=1000)
    for batch in _batches(3000, 500):
        writer.write(batch)
    assert spill.stat().st_mode & 0o777 == 0o700
    writer.abort()
    assert not spill.exists()


def test_a_batch_of_another_schema_is_refused(tmp_path: Path) -> None:
    writer = KeyedOrderWriter(tmp_path / "x.parquet", SCHEMA, order_key=os.urandom(32), dataset="d",
                              spill_dir=tmp_path / "spill")
    with pytest.raises(ValueError, match="schema"):
        writer.write(pa.RecordBatch.from_pydict({"other": [1]}))
    writer.abort()
