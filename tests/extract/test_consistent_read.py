"""extract.consistent_read chooses the route per database, so callers never branch on the dialect: every
read through one ``SourceRead`` sees the source as it was when the read began, whatever is written meanwhile."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from extract.consistent_read import SourceRead, consistent_read, partition_snapshot
from extract.partitioning import SNAPSHOT_ID
from tests.conftest import temporary_database


def people(engine: sa.Engine, n: int) -> sa.Table:
    metadata = sa.MetaData()
    table = sa.Table("people", metadata, sa.Column("id", sa.Integer, primary_key=True))
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(table.insert(), [{"id": i} for i in range(1, n + 1)])
    return table


def count(read: SourceRead, table: sa.Table) -> int:
    with read.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


@pytest.fixture(params=[pytest.param("postgresql", marks=pytest.mark.integration),
                        pytest.param("mariadb", marks=pytest.mark.integration)])
def server(request: pytest.FixtureRequest) -> Iterator[sa.Engine]:
    with temporary_database(request.param) as url:
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        yield engine
        engine.dispose()


def test_reads_see_the_source_as_it_was_when_the_read_began(server: sa.Engine) -> None:
    table = people(server, 10)
    with consistent_read(server) as read:
        assert count(read, table) == 10
        with server.begin() as conn:  # committed by another session while the delivery reads
            conn.execute(table.delete().where(table.c.id > 4))
        assert count(read, table) == 10
        assert count(read, table) == 10  # every later read too (MariaDB: one shared transaction, in turn)
        if server.dialect.name == "postgresql":
            assert read.snapshot is not None and SNAPSHOT_ID.match(read.snapshot) and read.connection is None
        else:
            assert read.snapshot is None and read.connection is not None
    with consistent_read(server) as read:
        assert count(read, table) == 4


def test_other_databases_read_without_a_shared_view(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'source.sqlite'}", poolclass=sa.pool.NullPool)
    table = people(engine, 3)
    with consistent_read(engine) as read:
        assert read == SourceRead(engine)  # no snapshot, no shared connection: each read opens its own
        assert count(read, table) == 3
    # Partitions of such a delivery each read in their own transaction (bounded by the plan's high-water mark).
    assert partition_snapshot(engine, engine.url, ledger_url=f"sqlite:///{tmp_path / 'l.sqlite'}",
                              contract="C-TEST", delivery="d") is None
    engine.dispose()
