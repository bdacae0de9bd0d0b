"""The psql child-process route of the PostgreSQL fast path: snapshot, errors, clean-up, fallbacks."""

from __future__ import annotations

import os
import subprocess
from types import SimpleNamespace

import pyarrow as pa
import pytest
import sqlalchemy as sa

from core.errors import SourceError
from extract import postgres
from tests.conftest import temporary_database

pytestmark = pytest.mark.integration

SCHEMA = pa.schema([pa.field("id", pa.int64()), pa.field("label", pa.string())])


@pytest.fixture
def source() -> sa.Engine:
    with temporary_database("postgresql") as url:
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE t (id bigint PRIMARY KEY, label text)")
            conn.exec_driver_sql("INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 50000) g")
        yield engine
        engine.dispose()


def select_all(engine: sa.Engine) -> sa.Select:
    table = sa.Table("t", sa.MetaData(), autoload_with=engine)
    return sa.select(table.c.id, table.c.label).order_by(table.c.id)


def read(engine: sa.Engine, statement: sa.Select, route: str) -> pa.Table:
    with engine.connect() as conn, conn.begin():
        batches = list(postgres.stream(conn.connection.driver_connection, statement, SCHEMA, engine.dialect,
                                       route=route, block_bytes=1 << 16))
    return pa.Table.from_batches(batches, schema=SCHEMA)


def test_psql_reads_the_snapshot_of_the_callers_transaction(source: sa.Engine) -> None:
    statement = select_all(source)
    writer = sa.create_engine(source.url, isolation_level="AUTOCOMMIT")
    with source.connect() as conn:
        conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            conn.exec_driver_sql("SELECT 1")  # the transaction's snapshot is taken here
            with writer.connect() as w:  # committed after the snapshot: must not be seen
                w.exec_driver_sql("DELETE FROM t WHERE id <= 10")
                w.exec_driver_sql("INSERT INTO t VALUES (100001, 'late')")
            batches = list(postgres.stream(conn.connection.driver_connection, statement, SCHEMA,
                                           source.dialect, route="psql"))
    writer.dispose()
    table = pa.Table.from_batches(batches, schema=SCHEMA)
    assert table.num_rows == 50000
    assert table.column("id").to_pylist() == list(range(1, 50001))


def test_psql_and_in_process_routes_agree(source: sa.Engine) -> None:
    statement = select_all(source)
    assert read(source, statement, "psql").equals(read(source, statement, "copy"))


def test_a_server_error_names_its_sqlstate_and_never_the_value(source: sa.Engine) -> None:
    # The server's message would quote the offending value: only the SQLSTATE may come back.
    statement = sa.select(sa.cast(sa.literal_column("'secret-value-42'"), sa.Integer).label("id"),
                          sa.literal_column("'x'").label("label"))
    with pytest.raises(SourceError) as raised:
        read(source, statement, "psql")
    message = str(raised.value)
    assert "SQLSTATE 22P02" in message
    assert "secret" not in message
    assert raised.value.__cause__ is None


def test_stopping_early_leaves_no_psql_behind(source: sa.Engine) -> None:
    before = _psql_children()
    with source.connect() as conn, conn.begin():
        stream = postgres.stream(conn.connection.driver_connection, select_all(source), SCHEMA, source.dialect,
                                 route="psql", block_bytes=1 << 12)
        first = next(stream)
        assert first.num_rows > 0
        assert _psql_children() - before, "psql should be running mid-stream"
        stream.close()
    assert _psql_children() - before == set()


def _psql_children() -> set[int]:
    out = subprocess.run(["ps", "-o", "pid=,comm=", "--ppid", str(os.getpid())], capture_output=True, text=True)
    return {int(line.split()[0]) for line in out.stdout.splitlines() if line.split()[1:] == ["psql"]}


def test_psql_off_reads_in_process(source: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(postgres.PSQL_ENV, "off")
    called = []
    monkeypatch.setattr(postgres, "stream_psql", lambda *a, **k: called.append(1) or iter(()))
    assert read(source, select_all(source), "auto").num_rows == 50000
    assert not called
    with pytest.raises(SourceError, match="no psql client"):
        read(source, select_all(source), "psql")


def test_a_wrong_psql_setting_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(postgres.PSQL_ENV, "/nowhere/psql")
    with pytest.raises(SourceError, match=r"CONTRACT_EXTRACTS_PSQL.*Fix"):
        postgres.psql_binary()


def _fake_connection(params: dict, password: str | None) -> SimpleNamespace:
    return SimpleNamespace(info=SimpleNamespace(get_parameters=lambda: params, password=password))


def test_connection_parameters_travel_in_the_environment_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGSERVICE", "someone-elses")  # the parent's libpq variables never leak through
    env = postgres.psql_environment(_fake_connection(
        {"host": "db.example", "port": "6432", "dbname": "src", "user": "reader", "sslmode": "verify-full",
         "client_encoding": "LATIN1"}, "s3cret"))
    assert env is not None
    assert (env["PGHOST"], env["PGPORT"], env["PGDATABASE"], env["PGUSER"]) == ("db.example", "6432", "src", "reader")
    assert env["PGPASSWORD"] == "s3cret" and env["PGSSLMODE"] == "verify-full"
    assert env["PGCLIENTENCODING"] == "UTF8"
    assert "PGSERVICE" not in env


def test_an_unmappable_parameter_keeps_the_in_process_route() -> None:
    assert postgres.psql_environment(_fake_connection({"host": "h", "keepalives_idle": "30"}, None)) is None


@pytest.mark.parametrize("value", [
    "x\n\\! touch {marker}\n", "x'; \\! touch {marker}; --", ":'marker' :marker :{{marker}}", "\\gexec \\\\ \\q",
    "line\r\nbreak \\copy t to '{marker}'",
], ids=["meta-command-after-newline", "quote-break-attempt", "psql-variables", "backslashes", "copy-meta-command"])
def test_psql_route_treats_filter_values_as_data_never_as_psql_commands(source: sa.Engine, tmp_path,
                                                                        value: str) -> None:
    # The statement reaches psql on its stdin: a filter value must stay inside its SQL literal, so psql's
    # backslash commands and :variables in it are never run or substituted.
    marker = tmp_path / "pwned"
    value = value.format(marker=marker)
    writer = sa.create_engine(source.url, isolation_level="AUTOCOMMIT")
    with writer.connect() as w:
        w.execute(sa.text("INSERT INTO t VALUES (200000, :v)"), {"v": value})
    writer.dispose()
    table = sa.Table("t", sa.MetaData(), autoload_with=source)
    statement = sa.select(table.c.id, table.c.label).where(table.c.label == value)
    by_psql = read(source, statement, "psql")
    assert by_psql.to_pylist() == [{"id": 200000, "label": value}]
    assert by_psql.equals(read(source, statement, "copy"))
    assert not marker.exists()
