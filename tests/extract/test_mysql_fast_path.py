"""The MySQL/MariaDB fast path (mysqlclient, raw text, pyarrow casts) against both generic paths (mysqlclient
and PyMySQL through SQLAlchemy), over the table built to break CSV and drivers plus MariaDB's own types;
errors that never carry values; reading inside the caller's snapshot transaction."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pyarrow as pa
import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql as mysql_types

from contracts.model import Contract
from core.errors import SourceError
from extract import mysql
from extract.partitioning import plan_ranges, range_clause, snapshot_connection
from extract.sources import DatasetQuery, SourceColumn, plan_query, reflect_table, stream_batches
from tests.conftest import temporary_database
from tests.extract.test_sources import nasty_table, rows

pytest.importorskip("MySQLdb")
pytestmark = pytest.mark.integration

COLUMNS = ("id", "label", "code", "amount", "ratio", "big", "flag", "born", "seen_at", "local_at",
           "alarm", "single", "payload", "choice")
TIMES = [dt.time(0, 0), dt.time(23, 59, 59, 999999), dt.time(12, 30, 0, 500000), dt.time(7, 5, 3, 1)]
SINGLES = [0.1, -2.5, 3.4028234663852886e38, 1e-38, 1 / 3]
PAYLOADS = [b"", b"\x00", b"\xff\xfe", b"NULL", b"a,b\n\"c\""]


def maria_table(metadata: sa.MetaData) -> sa.Table:
    table = nasty_table(metadata)
    table.append_column(sa.Column("alarm", mysql_types.TIME(fsp=6), nullable=True))
    table.append_column(sa.Column("single", mysql_types.FLOAT(), nullable=True))
    table.append_column(sa.Column("payload", mysql_types.BLOB(), nullable=True))
    table.append_column(sa.Column("choice", mysql_types.ENUM("a", "NULL", "b c"), nullable=True))
    return table


def maria_rows(n: int) -> list[dict]:
    out = rows(n)
    for i, row in enumerate(out):
        if row["seen_at"] is not None:  # MariaDB stores no time zone
            row["seen_at"] = row["seen_at"].replace(tzinfo=None)
        row["alarm"] = None if i % 9 == 0 else TIMES[i % len(TIMES)]
        row["single"] = None if i % 10 == 0 else SINGLES[i % len(SINGLES)]
        row["payload"] = None if i % 12 == 0 else PAYLOADS[i % len(PAYLOADS)]
        row["choice"] = None if i % 14 == 0 else ("a", "NULL", "b c")[i % 3]
    return out


def contract_for(filter_: dict | None = None, columns: tuple[str, ...] = COLUMNS) -> Contract:
    return Contract.model_validate({
        "contract": "C-TEST-1", "title": "t", "contractor": "c", "legal_gateway": "g", "business_case": "b",
        "security_assurance": {"framework": "SARA", "reference": "r", "expires": "2099-01-01"},
        "valid": {"from": "2020-01-01", "until": "2099-01-01"}, "source": {"connection": "src"},
        "datasets": [{"name": "nasty", "table": "nasty", "columns": {c: {"treatment": "keep"} for c in columns},
                      "filter": filter_ or {}}],
        "recipients": [{"name": "r", "age": "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"}],
    })


def with_driver(url: str, driver: str, charset: str = "utf8mb4") -> str:
    return sa.engine.make_url(url).set(drivername=f"mysql+{driver}", query={"charset": charset}).render_as_string(
        hide_password=False)


@pytest.fixture(scope="module")
def maria_url() -> Iterator[str]:
    with temporary_database("mariadb") as url:
        url = with_driver(url, "mysqldb")
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.exec_driver_sql(f"ALTER DATABASE `{engine.url.database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
        metadata = sa.MetaData()
        table = maria_table(metadata)
        metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(table.insert(), maria_rows(5000))
        engine.dispose()
        yield url


@pytest.fixture(scope="module")
def engines(maria_url: str) -> Iterator[dict[str, sa.Engine]]:
    made = {driver: sa.create_engine(with_driver(maria_url, driver)) for driver in ("mysqldb", "pymysql")}
    yield made
    for engine in made.values():
        engine.dispose()


def query_for(engine: sa.Engine, contract: Contract, table: sa.Table | None = None) -> DatasetQuery:
    dataset = contract.datasets[0]
    return plan_query(table if table is not None else reflect_table(engine, dataset, contract), dataset, contract)


def read_all(engine: sa.Engine, contract: Contract, method: str, batch_rows: int = 64,
             table: sa.Table | None = None) -> pa.Table:
    query = query_for(engine, contract, table)
    batches = list(stream_batches(engine, query, batch_rows, method=method))
    assert all(b.num_rows <= batch_rows for b in batches)
    assert all(b.schema == query.schema for b in batches)
    return pa.Table.from_batches(batches, schema=query.schema).sort_by("id")


def assert_same(fast: pa.Table, other: pa.Table, label: str) -> None:
    assert fast.schema == other.schema, label
    for name in fast.column_names:
        assert fast.column(name).equals(other.column(name)), (label, name)


def test_fast_path_equals_both_generic_paths_column_by_column(engines: dict[str, sa.Engine]) -> None:
    mysqldb, pymysql = engines["mysqldb"], engines["pymysql"]
    contract = contract_for()
    assert mysql.supports(query_for(mysqldb, contract).schema, query_for(mysqldb, contract).statement)
    fast = read_all(mysqldb, contract, "mysql", batch_rows=1000)
    assert fast.num_rows == 5000
    assert_same(fast, read_all(mysqldb, contract, "generic", batch_rows=1000), "mysqldb generic")
    assert_same(fast, read_all(pymysql, contract, "generic", batch_rows=1000), "pymysql generic")
    expected = maria_rows(5000)
    for name in ("label", "code", "amount", "ratio", "big", "born", "seen_at", "local_at", "alarm", "payload",
                 "choice"):  # (FLOAT is single precision: only compared with the generic paths)
        assert fast.column(name).to_pylist() == [r[name] for r in expected], name


def test_declared_types_booleans_and_utc_timestamps_match_too(engines: dict[str, sa.Engine]) -> None:
    # Reflection gives TINYINT(1) → int64 and naive DATETIME; a declared table gives bool and UTC timestamps.
    table = maria_table(sa.MetaData())
    contract = contract_for()
    schema = query_for(engines["mysqldb"], contract, table).schema
    assert schema.field("flag").type == pa.bool_()
    assert schema.field("seen_at").type == pa.timestamp("us", tz="UTC")
    fast = read_all(engines["mysqldb"], contract, "mysql", table=table)
    assert_same(fast, read_all(engines["mysqldb"], contract, "generic", table=table), "mysqldb generic")
    assert_same(fast, read_all(engines["pymysql"], contract, "generic", table=table), "pymysql generic")


@pytest.mark.parametrize("filter_", [
    {"code": {"in": ["NA", "a,b", 'say "hi"', "it's", "a\\b", ":x", "50%", "%s", "%%", "line1\nline2", "日本語",
                     "emoji 🙂", "\\N", "NULL"]}, "id": {"gt": 10}},
    {"label": {"not_in": ["", " ", "NULL"]}, "amount": {"lte": -1.5}},
    {"born": {"gte": "1950-01-01", "lt": "2000-06-30"}, "big": {"ne": 0}},
    {"local_at": {"gt": "2000-01-01T00:00:00"}, "ratio": {"is_null": False}},
    {"code": {"eq": "'; DROP TABLE nasty; --"}},
], ids=["in-odd-strings", "not-in-and-decimal", "date-range", "datetime-and-null", "injection-is-a-value"])
def test_filters_match_on_every_path(engines: dict[str, sa.Engine], filter_: dict) -> None:
    contract = contract_for(filter_)
    fast = read_all(engines["mysqldb"], contract, "mysql", batch_rows=7)
    assert_same(fast, read_all(engines["mysqldb"], contract, "generic", batch_rows=7), "mysqldb generic")
    assert_same(fast, read_all(engines["pymysql"], contract, "generic", batch_rows=7), "pymysql generic")
    if "in" in filter_.get("code", {}):
        assert fast.num_rows > 0


def test_empty_result(engines: dict[str, sa.Engine]) -> None:
    contract = contract_for({"id": {"lt": 0}})
    query = query_for(engines["mysqldb"], contract)
    assert list(stream_batches(engines["mysqldb"], query, 100, method="mysql")) == []
    assert read_all(engines["pymysql"], contract, "generic").num_rows == 0


@pytest.mark.parametrize("batch_rows", [1, 999, 5000, 65536])
def test_batches_never_exceed_batch_rows(engines: dict[str, sa.Engine], batch_rows: int) -> None:
    query = query_for(engines["mysqldb"], contract_for(columns=("id", "label")))
    sizes = [b.num_rows for b in stream_batches(engines["mysqldb"], query, batch_rows, method="mysql")]
    assert sum(sizes) == 5000
    assert all(0 < size <= batch_rows for size in sizes)
    assert all(size == batch_rows for size in sizes[:-1])


def test_auto_takes_the_fast_path_for_mysqlclient_only(engines: dict[str, sa.Engine],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = mysql.stream
    monkeypatch.setattr(mysql, "stream", lambda *a, **k: calls.append(1) or real(*a, **k))
    contract = contract_for(columns=("id", "label"))
    assert read_all(engines["mysqldb"], contract, "auto").num_rows == 5000
    assert calls == [1]
    assert read_all(engines["pymysql"], contract, "auto").num_rows == 5000
    assert calls == [1]
    with pytest.raises(SourceError, match="needs a MySQL/MariaDB source read with mysqlclient"):
        read_all(engines["pymysql"], contract, "mysql")


def test_unsupported_types_stay_on_the_generic_path() -> None:
    assert not mysql.supports(pa.schema([pa.field("d", pa.duration("us"))]))
    assert not mysql.supports(pa.schema([pa.field("t", pa.timestamp("ms"))]))
    assert not mysql.supports(pa.schema([pa.field("t", pa.timestamp("us", tz="Europe/London"))]))
    table = sa.Table("t", sa.MetaData(), sa.Column("s", mysql_types.SET("a", "b")), sa.Column("v", sa.String(5)))
    schema = pa.schema([pa.field("s", pa.string())])
    assert mysql.supports(schema, sa.select(table.c.v))
    assert not mysql.supports(schema, sa.select(table.c.s))  # a Python set on the generic path


def test_a_latin1_session_reads_through_the_generic_path(maria_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = sa.create_engine(with_driver(maria_url, "mysqldb", charset="latin1"))
    monkeypatch.setattr(mysql, "stream", lambda *a, **k: pytest.fail("latin1 text is not UTF-8"))
    contract = contract_for({"id": {"lte": 100}}, columns=("id", "amount"))
    assert read_all(engine, contract, "auto").num_rows == 100
    with pytest.raises(SourceError, match="utf8"):
        read_all(engine, contract, "mysql")
    engine.dispose()


# ------------------------------------------------------------------------------ values never in errors


@pytest.fixture
def broken(maria_url: str) -> Iterator[sa.Engine]:
    """A table holding values no Arrow type can hold, written under a relaxed sql_mode."""
    engine = sa.create_engine(maria_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE broken (id INT PRIMARY KEY, born DATE, alarm TIME, label TEXT)")
        conn.exec_driver_sql("SET SESSION sql_mode = ''")
        conn.exec_driver_sql("INSERT INTO broken VALUES (1, '2001-02-03', '01:02:03', 'fine'), "
                             "(2, '0000-00-00', '12:00:00', 'secret-A'), (3, '2001-02-03', '-07:06:05', 'secret-B'), "
                             "(4, '2001-02-03', '807:06:05', 'secret-C')")
    yield engine
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE broken")
    engine.dispose()


def broken_query(engine: sa.Engine, where: sa.ColumnElement | None = None) -> DatasetQuery:
    table = sa.Table("broken", sa.MetaData(), autoload_with=engine)
    statement = sa.select(table.c.id, table.c.born, table.c.alarm)
    if where is not None:
        statement = statement.where(where(table))
    columns = (SourceColumn("id", pa.int64(), True), SourceColumn("born", pa.date32(), False),
               SourceColumn("alarm", pa.time64("us"), False))
    return DatasetQuery(dataset="people", statement=statement, columns=columns)


@pytest.mark.parametrize(("ids", "column", "raw"), [
    ((1, 2), "born", "0000-00-00"), ((1, 3), "alarm", "-07:06:05"), ((1, 4), "alarm", "807:06:05")],
    ids=["zero-date", "negative-time", "time-past-24h"])
def test_an_unreadable_value_fails_naming_the_column_never_the_value(broken: sa.Engine, ids: tuple, column: str,
                                                                     raw: str) -> None:
    query = broken_query(broken, lambda t: t.c.id.in_(ids))
    with pytest.raises(SourceError) as raised:
        list(stream_batches(broken, query, 10, method="mysql"))
    message = str(raised.value)
    assert f"dataset 'people', column '{column}'" in message
    assert "ArrowInvalid" in message
    assert raw not in message and raw.lstrip("-") not in message
    assert raised.value.__cause__ is None
    assert raised.value.__context__ is None or raised.value.__suppress_context__
    chained = raised.value.__context__
    while chained is not None:  # nothing carrying the value may ride along
        assert raw not in str(chained)
        chained = chained.__context__


def test_the_readable_rows_of_the_broken_table_read(broken: sa.Engine) -> None:
    query = broken_query(broken, lambda t: t.c.id == 1)
    (batch,) = stream_batches(broken, query, 10, method="mysql")
    assert batch.to_pylist() == [{"id": 1, "born": dt.date(2001, 2, 3), "alarm": dt.time(1, 2, 3)}]


def test_invalid_text_fails_without_the_value() -> None:
    rows_ = [(b"1", b"ok"), (b"2", b"secret \xff value")]
    schema = pa.schema([pa.field("id", pa.int64()), pa.field("label", pa.string())])
    converters = [mysql.converter(field.type) for field in schema]
    with pytest.raises(SourceError) as raised:
        mysql._batch(rows_, schema, converters, "dataset 'people'")
    assert "column 'label'" in str(raised.value)
    assert "secret" not in str(raised.value)
    assert raised.value.__context__ is None and raised.value.__cause__ is None


def test_a_server_error_is_reported_by_number_only(engines: dict[str, sa.Engine]) -> None:
    engine = engines["mysqldb"]
    statement = sa.select(sa.literal_column("secret_value_42").label("id"))
    query = DatasetQuery(dataset="people", statement=statement, columns=(SourceColumn("id", pa.int64(), True),))
    with pytest.raises(SourceError) as raised:
        list(stream_batches(engine, query, 10, method="mysql"))
    message = str(raised.value)
    assert "1054" in message  # unknown column: the server's message would quote it
    assert "secret" not in message
    assert raised.value.__cause__ is None and raised.value.__context__ is None


# ----------------------------------------------------------------------------- the caller's transaction


def test_partitions_read_inside_their_own_consistent_snapshot(engines: dict[str, sa.Engine],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    engine = engines["mysqldb"]
    writer = sa.create_engine(engine.url, isolation_level="AUTOCOMMIT")
    contract = contract_for()
    dataset = contract.datasets[0]
    table = reflect_table(engine, dataset, contract)
    query = plan_query(table, dataset, contract)
    ranges = plan_ranges(engine, table, "nasty", "id", 3)
    calls = []
    real = mysql.stream
    monkeypatch.setattr(mysql, "stream", lambda *a, **k: calls.append(1) or real(*a, **k))
    original = {i: maria_rows(5000)[i - 1]["label"] for i in (1, 2500, 4999)}
    update = sa.text("UPDATE nasty SET label = :label WHERE id = :id")
    parts = []
    try:
        for rng in ranges:
            with snapshot_connection(engine, None) as conn:
                # Committed after this partition's snapshot started: invisible to it (it reads in its session).
                with writer.connect() as w:
                    w.execute(update, [{"id": i, "label": "changed"} for i in original])
                batches = list(stream_batches(engine, query, 333, connection=conn, where=range_clause(table, rng)))
                assert conn.exec_driver_sql("SELECT 1").scalar_one() == 1  # the session is usable afterwards
                parts += batches
                with writer.connect() as w:
                    w.execute(update, [{"id": i, "label": label} for i, label in original.items()])
    finally:
        writer.dispose()
    assert calls == [1, 1, 1]
    got = pa.Table.from_batches(parts, schema=query.schema).sort_by("id")
    assert_same(got, read_all(engine, contract, "generic", batch_rows=1000), "unpartitioned generic")
    assert "changed" not in got.column("label").to_pylist()


def test_stopping_early_leaves_the_connection_usable(engines: dict[str, sa.Engine]) -> None:
    engine = engines["mysqldb"]
    query = query_for(engine, contract_for())
    with engine.connect() as conn, conn.begin():
        stream = stream_batches(engine, query, 100, connection=conn, method="mysql")
        assert next(stream).num_rows == 100
        stream.close()
        assert conn.exec_driver_sql("SELECT COUNT(*) FROM nasty").scalar_one() == 5000
        # and the connection decodes values normally again (the raw decoders were for the stream only)
        born = conn.exec_driver_sql("SELECT born FROM nasty WHERE id = 2").scalar_one()
        assert born == dt.date(1900, 1, 1) + dt.timedelta(days=97)
