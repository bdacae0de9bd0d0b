"""Row estimates from the source's statistics (PostgreSQL reltuples, MariaDB TABLE_ROWS), none from SQLite."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from extract.row_estimate import estimated_rows
from tests.conftest import temporary_database

ROWS = 5_000


def _table(url: str) -> tuple[sa.Engine, sa.Table]:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    meta = sa.MetaData()
    table = sa.Table("people", meta, sa.Column("id", sa.Integer, primary_key=True), sa.Column("x", sa.String(20)))
    meta.create_all(engine)
    with engine.begin() as conn:
        conn.execute(table.insert(), [{"id": i, "x": "v"} for i in range(1, ROWS + 1)])
    return engine, table


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["postgresql", "mariadb"])
def test_the_source_estimates_an_analysed_table(kind: str) -> None:
    with temporary_database(kind) as url:
        engine, table = _table(url)
        try:
            with engine.begin() as conn:
                conn.exec_driver_sql("ANALYZE people" if kind == "postgresql" else "ANALYZE TABLE people")
            estimate = estimated_rows(engine, table)
            assert estimate is not None and 0.5 * ROWS <= estimate <= 1.5 * ROWS, estimate
            missing = sa.Table("no_such_table", sa.MetaData(), sa.Column("id", sa.Integer))
            assert estimated_rows(engine, missing) is None
        finally:
            engine.dispose()


@pytest.mark.integration
def test_a_never_analysed_postgresql_table_has_no_estimate() -> None:
    with temporary_database("postgresql") as url:
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        try:
            meta = sa.MetaData()
            table = sa.Table("fresh", meta, sa.Column("id", sa.Integer))
            meta.create_all(engine)
            assert estimated_rows(engine, table) is None  # reltuples is -1 until VACUUM/ANALYZE
        finally:
            engine.dispose()


def test_sqlite_offers_no_estimate(tmp_path: Path) -> None:
    engine, table = _table(f"sqlite:///{tmp_path / 'x.sqlite'}")
    assert estimated_rows(engine, table) is None
