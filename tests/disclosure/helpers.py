"""Brute-force reference computations for the disclosure tests (quadratic; small tables only)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def compatible(r: tuple, s: tuple) -> bool:
    """Null is a wildcard: agree wherever both are non-null."""
    return all(a is None or b is None or a == b for a, b in zip(r, s, strict=True))


def true_key_count(real: tuple, published: list[tuple]) -> int:
    """Published records an intruder who knows a target's real values cannot rule out: each value equal or null.

    A real value that is missing (None) matches only a published null.
    """
    return sum(all(p is None or (r is not None and p == r) for r, p in zip(real, s, strict=True)) for s in published)


def brute_force(keys: list[tuple], sensitive: list | None = None) -> tuple[list[int], list[int]]:
    """(f per record, distinct non-null sensitive values among compatible records, per record)."""
    f = [sum(compatible(r, s) for s in keys) for r in keys]
    if sensitive is None:
        return f, []
    ls = [len({v for s, v in zip(keys, sensitive, strict=True) if compatible(r, s) and v is not None})
          for r in keys]
    return f, ls


def write(tmp: Path, columns: dict[str, list], types: dict[str, pa.DataType] | None = None,
          name: str = "data.parquet", row_group_size: int | None = None) -> Path:
    types = types or {}
    table = pa.table({c: pa.array(v, types.get(c)) for c, v in columns.items()})
    path = tmp / name
    pq.write_table(table, path, row_group_size=row_group_size)
    return path
