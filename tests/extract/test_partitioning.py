"""Partitioned reads: ranges cover every row exactly once; all partitions see one snapshot on PostgreSQL,
even while the source is written to; MariaDB partitions are bounded by the planned high-water mark."""

from __future__ import annotations

import datetime as dt
import os
import signal
import time

import pyarrow as pa
import pytest
import sqlalchemy as sa

from audit.ledger import Ledger
from contracts.model import Contract
from core.errors import SourceError
from extract import snapshot_holder
from extract.partitioning import (
    PartitionRange,
    estimated_rows,
    exported_snapshot,
    partition_column,
    plan_ranges,
    planned_parts,
    range_clause,
    snapshot_connection,
)
from extract.sources import plan_query, reflect_table, stream_batches
from tests.conftest import temporary_database

pytestmark = pytest.mark.integration


def make_table(engine: sa.Engine, n: int, null_keys: int = 0) -> sa.Table:
    metadata = sa.MetaData()
    table = sa.Table("people", metadata, sa.Column("id", sa.Integer, primary_key=True),
                     sa.Column("key", sa.Integer, nullable=True), sa.Column("born", sa.Date),
                     sa.Column("note", sa.String(40)))
    metadata.create_all(engine)
    rows = [{"id": i, "key": None if i <= null_keys else i * 3, "born": dt.date(1950, 1, 1) + dt.timedelta(days=i),
             "note": f"n{i}"} for i in range(1, n + 1)]
    if rows:  # an empty executemany would insert one row of defaults
        with engine.begin() as conn:
            conn.execute(table.insert(), rows)
    return table


def contract() -> Contract:
    return Contract.model_validate({
        "contract": "C-TEST-2", "title": "t", "contractor": "c", "legal_gateway": "g", "business_case": "b",
        "security_assurance": {"framework": "SARA", "reference": "r", "expires": "2099-01-01"},
        "valid": {"from": "2020-01-01", "until": "2099-01-01"}, "source": {"connection": "src"},
        "datasets": [{"name": "people", "table": "people",
                      "columns": {c: {"treatment": "keep"}
                                  for c in ("id", "key", "born", "note")}}],
        "recipients": [{"name": "r", "age": "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"}],
    })


def read_partitions(engine: sa.Engine, ranges: list[PartitionRange], snapshot: str | None = None) -> pa.Table:
    c = contract()
    table = reflect_table(engine, c.datasets[0], c)
    query = plan_query(table, c.datasets[0], c)
    batches = []
    for rng in ranges:
        with snapshot_connection(engine, snapshot) as conn:
            batches += list(stream_batches(engine, query, 100, connection=conn, where=range_clause(table, rng)))
    return pa.Table.from_batches(batches, schema=query.schema).sort_by("id")


@pytest.fixture(params=["postgresql", "mariadb"])
def source(request: pytest.FixtureRequest):
    with temporary_database(request.param) as url:
        engine = sa.create_engine(url)
        yield engine
        engine.dispose()


@pytest.mark.parametrize("column", ["key", "born"])
@pytest.mark.parametrize("parts", [1, 3, 7])
def test_ranges_cover_every_row_exactly_once(source: sa.Engine, column: str, parts: int) -> None:
    table = make_table(source, 500, null_keys=5 if column == "key" else 0)
    ranges = plan_ranges(source, table, "people", column, parts)
    assert len(ranges) == parts
    got = read_partitions(source, ranges)
    assert got.column("id").to_pylist() == list(range(1, 501))


def test_empty_table_plans_one_partition(source: sa.Engine) -> None:
    table = make_table(source, 0)
    ranges = plan_ranges(source, table, "people", "key", 4)
    assert len(ranges) == 1
    assert read_partitions(source, ranges).num_rows == 0


def test_postgres_partitions_share_the_coordinators_snapshot_while_the_source_changes() -> None:
    with temporary_database("postgresql") as url:
        engine = sa.create_engine(url)
        table = make_table(engine, 1000)
        ranges = plan_ranges(engine, table, "people", "key", 4)
        with exported_snapshot(engine) as snapshot:
            assert snapshot
            # Writes after the snapshot: inserts, updates, deletes — committed before any partition reads.
            with engine.begin() as conn:
                conn.execute(table.insert(), [{"id": 5000 + i, "key": i, "born": dt.date(2000, 1, 1),
                                               "note": "late"} for i in range(50)])
                conn.execute(table.update().where(table.c.id <= 100).values(note="changed"))
                conn.execute(table.delete().where(table.c.id > 900))
            got = read_partitions(engine, ranges, snapshot)
        assert got.column("id").to_pylist() == list(range(1, 1001))
        assert set(got.column("note").to_pylist()) == {f"n{i}" for i in range(1, 1001)}
        # Without the shared snapshot the same partitions see the changes: the guarantee is the snapshot's.
        now = read_partitions(engine, ranges)
        assert now.num_rows != 1000 or "changed" in now.column("note").to_pylist()
        engine.dispose()


def test_importing_an_ended_snapshot_fails_closed() -> None:
    with temporary_database("postgresql") as url:
        engine = sa.create_engine(url)
        table = make_table(engine, 10)
        ranges = plan_ranges(engine, table, "people", "key", 2)
        with exported_snapshot(engine) as snapshot:
            pass
        with pytest.raises(SourceError, match="no longer available"):
            read_partitions(engine, ranges, snapshot)
        with pytest.raises(SourceError, match="unexpected form"):
            read_partitions(engine, ranges, "'; DROP TABLE people; --")
        engine.dispose()


def test_mariadb_partitions_exclude_rows_inserted_after_planning() -> None:
    with temporary_database("mariadb") as url:
        engine = sa.create_engine(url)
        table = make_table(engine, 300)
        ranges = plan_ranges(engine, table, "people", "id", 3)
        with engine.begin() as conn:
            conn.execute(table.insert(), [{"id": 1000 + i, "key": 1, "born": dt.date(2000, 1, 1), "note": "late"}
                                          for i in range(20)])
        got = read_partitions(engine, ranges)
        assert got.column("id").to_pylist() == list(range(1, 301))
        engine.dispose()


def _wait_exit(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done, _status = os.waitpid(pid, os.WNOHANG)
        if done:
            return True
        time.sleep(0.1)
    return False


def test_detached_holder_keeps_the_snapshot_until_the_ledger_releases_it(tmp_path) -> None:
    ledger_url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    with temporary_database("postgresql") as url:
        engine = sa.create_engine(url)
        table = make_table(engine, 400)
        ranges = plan_ranges(engine, table, "people", "id", 4)
        snapshot, pid = snapshot_holder.start(engine.url, ledger_url=ledger_url, contract="C-TEST-2",
                                              delivery="d1", max_seconds=60, poll_seconds=0.2)
        try:
            with engine.begin() as conn:
                conn.execute(table.delete())
            # Partitions read one after another (as under `airflow dags test`), all from the held snapshot.
            assert read_partitions(engine, ranges[:2], snapshot).num_rows == 200
            assert read_partitions(engine, ranges[2:], snapshot).num_rows == 200
            ledger = Ledger(ledger_url)
            ledger.append(actor="pytest", action=snapshot_holder.RELEASED, contract="C-TEST-2", delivery="d1",
                          details={})
            ledger.close()
            assert _wait_exit(pid, 10), "the holder must end once the ledger releases the snapshot"
        finally:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        with pytest.raises(SourceError, match="no longer available"):
            read_partitions(engine, ranges[:1], snapshot)
        engine.dispose()


def test_holder_gives_up_after_its_maximum_lifetime(tmp_path) -> None:
    with temporary_database("postgresql") as url:
        engine = sa.create_engine(url)
        make_table(engine, 5)
        _snapshot, pid = snapshot_holder.start(engine.url, ledger_url=f"sqlite:///{tmp_path / 'l.sqlite'}",
                                               contract="C-TEST-2", delivery="d2", max_seconds=1, poll_seconds=0.2)
        assert _wait_exit(pid, 15)
        engine.dispose()


def test_automatic_partitioning_uses_the_primary_key_and_table_statistics(source: sa.Engine) -> None:
    make_table(source, 3000)
    with source.begin() as conn:  # statistics as a production table has them
        conn.exec_driver_sql("ANALYZE people" if source.dialect.name == "postgresql" else "ANALYZE TABLE people")
    table = sa.Table("people", sa.MetaData(), autoload_with=source)
    assert partition_column(table, "people", None) == "id"
    assert partition_column(table, "people", "born") == "born"
    assert 2000 <= estimated_rows(source, table) <= 4000  # an estimate, not a count
    assert planned_parts(source, table, "auto", 1000) in (2, 3, 4)
    assert planned_parts(source, table, "auto", 10**6) == 1
    assert planned_parts(source, table, 5, 1000) == 5
    ranges = plan_ranges(source, table, "people", "id", planned_parts(source, table, "auto", 1000))
    assert read_partitions(source, ranges).num_rows == 3000


def test_without_statistics_the_rows_are_counted(tmp_path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'p.sqlite'}")
    make_table(engine, 250)
    table = sa.Table("people", sa.MetaData(), autoload_with=engine)
    assert estimated_rows(engine, table) == 250
    assert planned_parts(engine, table, "auto", 100) == 3


@pytest.mark.parametrize("key", ["composite", "none"])
def test_automatic_partitioning_needs_a_single_column_key(tmp_path, key: str) -> None:
    metadata = sa.MetaData()
    columns = ([sa.Column("a", sa.Integer, primary_key=True), sa.Column("b", sa.Integer, primary_key=True)]
               if key == "composite" else [sa.Column("a", sa.Integer)])
    table = sa.Table("t", metadata, *columns)
    with pytest.raises(SourceError, match=r"Fix: set partition\.column"):
        partition_column(table, "people", None)
