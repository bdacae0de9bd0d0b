"""Extraction paths give identical Arrow data: PostgreSQL COPY fast path vs the generic SQLAlchemy path,
over a table designed to break CSV; MariaDB and SQLite through the generic path with the same values."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pyarrow as pa
import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from contracts.model import Contract
from extract import postgres
from extract.sources import plan_query, reflect_table, stream_batches
from tests.conftest import temporary_database

pytestmark = pytest.mark.integration

NASTY_STRINGS = [
    "", " ", "NULL", "null", "NA", "N/A", "nan", "\\N", "a,b", 'say "hi"', '""', "line1\nline2", "cr\r\nlf",
    "tab\there", "ünïcödé — ✓", "日本語", "emoji 🙂", "trailing space ", "'single'", "\\", ",", "\n",
]


def nasty_table(metadata: sa.MetaData) -> sa.Table:
    return sa.Table(
        "nasty", metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("label", sa.Text, nullable=True),
        sa.Column("code", sa.String(20), nullable=True),
        sa.Column("amount", sa.Numeric(12, 2), nullable=True),
        sa.Column("ratio", sa.Double, nullable=True),
        sa.Column("big", sa.BigInteger, nullable=True),
        sa.Column("flag", sa.Boolean, nullable=True),
        sa.Column("born", sa.Date, nullable=True),
        sa.Column("seen_at", sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb"),
                  nullable=True),
        sa.Column("local_at", sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb"),
                  nullable=True),
    )


def rows(n: int = 300) -> list[dict]:
    out = []
    for i in range(n):
        text = NASTY_STRINGS[i % len(NASTY_STRINGS)]
        out.append({
            "id": i + 1,
            "label": None if i % 7 == 0 else text,
            "code": None if i % 5 == 0 else text[:20],
            "amount": None if i % 11 == 0 else Decimal(i * 37 - 5000) / 100,
            "ratio": None if i % 13 == 0 else [0.1, -1e-300, 1e300, 2.5, 1 / 3][i % 5],
            "big": None if i % 17 == 0 else (2**62 - i) * (-1) ** i,
            "flag": None if i % 3 == 0 else bool(i % 2),
            "born": None if i % 4 == 0 else dt.date(1900, 1, 1) + dt.timedelta(days=i * 97),
            "seen_at": None if i % 6 == 0 else dt.datetime(2020, 2, 29, 23, 59, 59, 999999, tzinfo=dt.UTC)
            + dt.timedelta(hours=i * 13, microseconds=i),
            "local_at": None if i % 8 == 0 else dt.datetime(1999, 12, 31, 23, 0) + dt.timedelta(minutes=i),
        })
    return out


def contract_for(filter_: dict | None = None) -> Contract:
    columns = {c: {"treatment": "keep"} for c in
               ("id", "label", "code", "amount", "ratio", "big", "flag", "born", "seen_at", "local_at")}
    return Contract.model_validate({
        "contract": "C-TEST-1", "title": "t", "contractor": "c", "legal_gateway": "g", "business_case": "b",
        "security_assurance": {"framework": "SARA", "reference": "r", "expires": "2099-01-01"},
        "valid": {"from": "2020-01-01", "until": "2099-01-01"}, "source": {"connection": "src"},
        "datasets": [{"name": "nasty", "table": "nasty", "columns": columns, "filter": filter_ or {}}],
        "recipients": [{"name": "r", "age": "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"}],
    })


def read_all(engine: sa.Engine, contract: Contract, method: str, batch_rows: int = 64) -> pa.Table:
    dataset = contract.datasets[0]
    query = plan_query(reflect_table(engine, dataset, contract), dataset, contract)
    batches = list(stream_batches(engine, query, batch_rows, method=method))
    assert all(b.num_rows <= batch_rows for b in batches)
    return pa.Table.from_batches(batches, schema=query.schema).sort_by("id")


@pytest.fixture(params=["postgresql", "mariadb", "sqlite"])
def nasty_source(request: pytest.FixtureRequest, tmp_path) -> sa.Engine:
    def load(url: str) -> sa.Engine:
        engine = sa.create_engine(url)
        metadata = sa.MetaData()
        table = nasty_table(metadata)
        metadata.create_all(engine)
        data = rows()
        if request.param == "mariadb":  # MariaDB stores no time zone and no emoji in utf8mb3 defaults
            for row in data:
                if row["seen_at"] is not None:
                    row["seen_at"] = row["seen_at"].replace(tzinfo=None)
        with engine.begin() as conn:
            conn.execute(table.insert(), data)
        return engine

    if request.param == "sqlite":
        engine = load(f"sqlite:///{tmp_path / 'nasty.sqlite'}")
        yield engine
        engine.dispose()
        return
    with temporary_database(request.param) as url:
        if request.param == "mariadb":
            url += "?charset=utf8mb4"
            admin = sa.create_engine(url)
            with admin.begin() as conn:
                conn.exec_driver_sql(f"ALTER DATABASE `{sa.engine.make_url(url).database}` "
                                     "CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
            admin.dispose()
        engine = load(url)
        yield engine
        engine.dispose()


def test_every_value_survives_extraction(nasty_source: sa.Engine) -> None:
    table = read_all(nasty_source, contract_for(), "auto")
    expected = rows()
    assert table.num_rows == len(expected)
    assert table.column("label").to_pylist() == [r["label"] for r in expected]
    assert table.column("code").to_pylist() == [r["code"] for r in expected]
    assert table.column("amount").to_pylist() == [r["amount"] for r in expected]
    assert table.column("big").to_pylist() == [r["big"] for r in expected]
    assert table.column("born").to_pylist() == [r["born"] for r in expected]
    assert table.column("local_at").to_pylist() == [r["local_at"] for r in expected]
    assert table.column("ratio").to_pylist() == [r["ratio"] for r in expected]
    assert table.column("flag").to_pylist() == [r["flag"] for r in expected]
    expected_seen = [r["seen_at"] for r in expected]
    if nasty_source.dialect.name != "postgresql":  # no time zone stored: compare wall-clock values
        expected_seen = [v.replace(tzinfo=None) if v else None for v in expected_seen]
    assert [v.replace(tzinfo=None) if v and nasty_source.dialect.name != "postgresql" else v
            for v in table.column("seen_at").to_pylist()] == expected_seen


def test_postgres_fast_path_equals_generic_path_column_by_column() -> None:
    with temporary_database("postgresql") as url:
        engine = sa.create_engine(url)
        metadata = sa.MetaData()
        table = nasty_table(metadata)
        metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(table.insert(), rows(5000))
        contract = contract_for()
        query = plan_query(reflect_table(engine, contract.datasets[0], contract), contract.datasets[0], contract)
        assert postgres.supports(query.schema), "this table must exercise the COPY path"
        generic = read_all(engine, contract, "generic", batch_rows=1000)
        filtered = contract_for({"code": {"in": ["NA", "a,b", 'say "hi"', "it's", "a\\b", ":x"]}, "id": {"gt": 10}})
        filtered_generic = read_all(engine, filtered, "generic")
        assert filtered_generic.num_rows > 0
        empty = contract_for({"id": {"lt": 0}})
        for method in ("psql", "copy"):  # both COPY routes, the child process and in-process
            fast = read_all(engine, contract, method, batch_rows=1000)
            assert fast.schema == generic.schema
            for name in fast.column_names:
                assert fast.column(name).equals(generic.column(name)), (method, name)
            # Filter values are quoted by psycopg on every path, including expanding IN lists.
            assert read_all(engine, filtered, method).equals(filtered_generic), method
            assert read_all(engine, empty, method).num_rows == 0
        engine.dispose()
