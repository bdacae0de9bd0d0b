"""Partitioned extraction: key ranges, and one consistent snapshot shared by every partition.

PostgreSQL: a coordinator transaction (REPEATABLE READ) exports its snapshot with
``pg_export_snapshot()`` and stays open while the partitions run; each partition opens its own
REPEATABLE READ transaction and imports it (``SET TRANSACTION SNAPSHOT``), so all partitions see the
database exactly as the coordinator did, whatever is written meanwhile (the pg_dump --jobs method).

MariaDB/MySQL cannot share a snapshot between sessions. The planner records a high-water mark (the
maximum of the partition column when the plan was made) and every partition reads inside its own
``START TRANSACTION WITH CONSISTENT SNAPSHOT`` bounded by that mark. Guarantee, stated honestly: rows
inserted after planning are excluded; each partition is internally consistent; but a row updated or
deleted between two partitions' starts may be seen in its old state by one partition and its new state
by another. Use PostgreSQL (or a quiescent source / a replica paused for the extract) where that
matters.

Other dialects: ranges only, no snapshot guarantee (documented in docs/extraction.md).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa

from core.errors import SourceError

SNAPSHOT_ID = re.compile(r"^[0-9A-F]{8}-[0-9A-F]{8}-[0-9]+$")


def exports_snapshots(engine: sa.Engine) -> bool:
    """Whether other sessions can import this database's snapshots (PostgreSQL)."""
    return engine.dialect.name == "postgresql"


def shares_one_transaction(engine: sa.Engine) -> bool:
    """Whether a consistent read of this database means one transaction shared by every read (MariaDB/MySQL)."""
    return engine.dialect.name in ("mysql", "mariadb")


@dataclass(frozen=True)
class PartitionRange:
    """Rows with ``lower <= column < upper`` (None: unbounded); the last range also takes ``upper``."""

    dataset: str
    index: int
    count: int
    column: str
    lower: int | None
    upper: int | None
    high_water: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PartitionRange:
        return cls(**data)

    @property
    def label(self) -> str:
        return f"{self.dataset}-part{self.index:04d}"


def _as_int(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        raise SourceError("timestamp partition columns are not supported; partition on an integer or date")
    if isinstance(value, dt.date):
        return value.toordinal()
    return int(value)


def partition_column(table: sa.Table, dataset: str, column: str | None) -> str:
    """The contract's partition column, or else the table's single-column primary key."""
    if column is not None:
        return column
    key = list(table.primary_key.columns)
    if len(key) != 1:
        raise SourceError(f"dataset {dataset!r}: 'partition' names no column and table {table.name!r} has "
                          f"{'a composite' if key else 'no'} primary key. Fix: set partition.column to an "
                          "integer or date column")
    return key[0].name


def estimated_rows(engine: sa.Engine, table: sa.Table) -> int:
    """The table's row count from its statistics (no scan); an exact count where there are none."""
    estimate = None
    with engine.connect() as conn:
        if exports_snapshots(engine):
            estimate = conn.execute(sa.text(
                "SELECT c.reltuples FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.relname = :name AND n.nspname = coalesce(:schema, current_schema())"),
                {"name": table.name, "schema": table.schema}).scalar()
        elif shares_one_transaction(engine):
            estimate = conn.execute(sa.text(
                "SELECT TABLE_ROWS FROM information_schema.TABLES "
                "WHERE TABLE_NAME = :name AND TABLE_SCHEMA = coalesce(:schema, DATABASE())"),
                {"name": table.name, "schema": table.schema}).scalar()
        if estimate is None or estimate <= 0:  # never analysed (PostgreSQL: -1; InnoDB may say 0), or none
            estimate = conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
    return int(estimate)


def planned_parts(engine: sa.Engine, table: sa.Table, parts: int | str, rows_per_part: int,
                  max_parts: int = 256) -> int:
    """``parts`` as declared, or (``auto``) one part per ``rows_per_part`` rows of the table."""
    if parts != "auto":
        return int(parts)
    return max(1, min(max_parts, -(-estimated_rows(engine, table) // rows_per_part)))


def plan_ranges(engine: sa.Engine, table: sa.Table, dataset: str, column: str, parts: int,
                where: sa.ColumnElement[bool] | None = None) -> list[PartitionRange]:
    """Split [min, max] of an integer (or date) column into ``parts`` equal ranges."""
    if column not in table.c:
        raise SourceError(f"dataset {dataset!r}: partition column {column!r} does not exist in the table")
    col = table.c[column]
    stmt = sa.select(sa.func.min(col), sa.func.max(col))
    if where is not None:
        stmt = stmt.where(where)
    with engine.connect() as conn:
        low, high = conn.execute(stmt).one()
    low_i, high_i = _as_int(low), _as_int(high)
    if low_i is None or high_i is None:  # empty table: one partition that reads nothing extra
        return [PartitionRange(dataset, 0, 1, column, None, None, high_water=None)]
    parts = max(1, min(parts, high_i - low_i + 1))
    width = (high_i - low_i + 1) / parts
    bounds = [low_i + round(width * i) for i in range(parts)] + [high_i + 1]
    ranges = []
    for i in range(parts):
        lower = None if i == 0 else bounds[i]
        upper = None if i == parts - 1 else bounds[i + 1]
        ranges.append(PartitionRange(dataset, i, parts, column, lower, upper, high_water=high_i))
    return ranges


def range_clause(table: sa.Table, rng: PartitionRange) -> sa.ColumnElement[bool] | None:
    """The WHERE clause of one range (bound parameters) bounded by the high-water mark.

    Rows whose key is NULL belong to the first range, so none is lost between ranges.
    """
    col = table.c[rng.column]
    is_date = isinstance(col.type, sa.Date) and not isinstance(col.type, sa.DateTime)

    def literal(value: int) -> int | dt.date:
        return dt.date.fromordinal(value) if is_date else value

    clauses = []
    if rng.lower is not None:
        clauses.append(col >= literal(rng.lower))
    if rng.upper is not None:
        clauses.append(col < literal(rng.upper))
    if rng.high_water is not None:
        clauses.append(col <= literal(rng.high_water))
    if not clauses:
        return None
    bounded = sa.and_(*clauses)
    return sa.or_(bounded, col.is_(None)) if rng.index == 0 else bounded


@contextmanager
def exported_snapshot(engine: sa.Engine) -> Iterator[str | None]:
    """Hold a REPEATABLE READ transaction and yield its exported snapshot id (PostgreSQL), else None.

    The snapshot stays importable exactly as long as this context is open.
    """
    if not exports_snapshots(engine):
        yield None
        return
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            snapshot = conn.execute(sa.text("SELECT pg_export_snapshot()")).scalar_one()
            yield snapshot


@contextmanager
def snapshot_connection(engine: sa.Engine, snapshot: str | None) -> Iterator[sa.Connection]:
    """A connection inside a transaction that sees the shared snapshot (or a consistent one of its own)."""
    with engine.connect() as conn:
        if exports_snapshots(engine):
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                if snapshot is not None:
                    if not SNAPSHOT_ID.match(snapshot):
                        raise SourceError("snapshot id has an unexpected form; refusing to use it")
                    try:
                        # SET TRANSACTION SNAPSHOT takes no bind parameters; the id was checked above.
                        conn.exec_driver_sql(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
                    except sa.exc.DBAPIError:
                        raise SourceError("the delivery's source snapshot is no longer available (its "
                                          "coordinator ended); the partition cannot be read consistently") from None
                yield conn
        elif shares_one_transaction(engine):
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
            conn.exec_driver_sql("START TRANSACTION WITH CONSISTENT SNAPSHOT")
            try:
                yield conn
            finally:
                conn.exec_driver_sql("COMMIT")
        else:
            with conn.begin():
                yield conn
