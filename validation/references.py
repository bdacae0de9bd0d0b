"""Referential integrity between two staged files, in bounded memory (``hash_partitions``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from validation.hash_partitions import HashPartitions, column_batches, partition_count, string_keys


def missing_references(child: Path, child_column: str, parent: Path, parent_column: str, *,
                       batch_rows: int = 250_000) -> tuple[int, int, int]:
    """(child rows, child nulls, non-null child values absent from the parent column), bounded memory.

    One pass over each file: the parent's keys and the child's values are split by the same hash, then
    compared partition by partition (one ``is_in`` per partition: it hashes its value set on every call).
    """
    child, parent = Path(child), Path(parent)
    rows = int(pq.ParquetFile(child).metadata.num_rows)
    parent_rows = int(pq.ParquetFile(parent).metadata.num_rows)
    parts = partition_count(rows + parent_rows)  # both sides of a partition are held at once
    nulls = 0
    missing = 0
    with HashPartitions(parts, parent.parent) as keys, HashPartitions(parts, child.parent) as values:
        for batch in column_batches(parent, parent_column, batch_rows):
            keys.add_keys(string_keys(batch)[1])
        for batch in column_batches(child, child_column, batch_rows):
            batch_nulls, batch_keys = string_keys(batch)
            nulls += batch_nulls
            values.add_keys(batch_keys)
        for part in range(parts):
            wanted = values.partition(part).column("value")
            if len(wanted):
                missing += _absent(wanted, pc.unique(keys.partition(part).column("value")))
    return rows, nulls, missing


def _absent(values: Any, key_set: Any) -> int:
    return int(pc.sum(pc.invert(pc.is_in(values, value_set=key_set))).as_py() or 0)
