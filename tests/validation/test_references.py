"""Referential integrity between two files, in memory and split by hash into spill files."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from validation import hash_partitions
from validation.references import missing_references


@pytest.mark.parametrize("partition_rows", [None, 50], ids=["in-memory", "spilled"])
def test_references_between_integer_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         partition_rows: int | None) -> None:
    if partition_rows:
        monkeypatch.setattr(hash_partitions, "_PARTITION_ROWS", partition_rows)
    parent = tmp_path / "parent.parquet"
    child = tmp_path / "child.parquet"
    pq.write_table(pa.table({"id": pa.array(range(0, 1_000, 2), pa.int64())}), parent)
    pq.write_table(pa.table({"pid": pa.array([*range(0, 1_000, 4), 1, 3, None, 2**62], pa.int64())}), child)
    assert missing_references(child, "pid", parent, "id", batch_rows=64) == (254, 1, 3)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".gate-spill-")]
