"""Read the allow-listed columns of one dataset from a source as a stream of Arrow record batches.

The SELECT is built with SQLAlchemy Core from the contract only: identifiers come from the contract's
restricted names and are quoted by the dialect; filter values are bound parameters. Rows stream
through a server-side cursor (``stream_results``), so memory is bounded by the batch size.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.engine import URL

from contracts.model import Contract, Dataset
from core.connections import safe_url
from core.errors import SourceError
from core.streams import rebatch
from extract import mysql, postgres
from extract.types import arrow_type

_OPERATORS = {
    "eq": lambda c, v: c == v,
    "ne": lambda c, v: c != v,
    "lt": lambda c, v: c < v,
    "lte": lambda c, v: c <= v,
    "gt": lambda c, v: c > v,
    "gte": lambda c, v: c >= v,
    "in": lambda c, v: c.in_(v),
    "not_in": lambda c, v: c.not_in(v),
    "is_null": lambda c, v: c.is_(None) if v else c.is_not(None),
}


@dataclass(frozen=True)
class SourceColumn:
    name: str
    arrow_type: pa.DataType
    not_null: bool


@dataclass(frozen=True)
class DatasetQuery:
    dataset: str
    statement: sa.Select[Any]
    columns: tuple[SourceColumn, ...]

    @property
    def schema(self) -> pa.Schema:
        return pa.schema([pa.field(c.name, c.arrow_type) for c in self.columns])


def create_source_engine(url: URL) -> sa.Engine:
    return sa.create_engine(url, pool_pre_ping=True, poolclass=sa.pool.NullPool)


def reflect_table(engine: sa.Engine, dataset: Dataset, contract: Contract) -> sa.Table:
    where = f"contract {contract.contract}, dataset {dataset.name!r}"
    inspector = sa.inspect(engine)
    if not inspector.has_table(dataset.table_name, schema=dataset.schema_name):
        raise SourceError(f"{where}: table {dataset.table!r} does not exist in source "
                          f"{contract.source.connection!r}. Fix: correct datasets[].table in the contract")
    return sa.Table(dataset.table_name, sa.MetaData(), schema=dataset.schema_name, autoload_with=engine)


def plan_query(table: sa.Table, dataset: Dataset, contract: Contract) -> DatasetQuery:
    """SELECT <listed columns, in contract order> FROM <table> WHERE <structured filter>."""
    where = f"contract {contract.contract}, dataset {dataset.name!r}"
    missing = [c for c in dataset.columns if c not in table.c]
    if missing:
        raise SourceError(f"{where}: column(s) {', '.join(missing)} do not exist in table {dataset.table!r}. "
                          "Fix: correct the column names in the contract or remove them")
    missing_filter = [c for c in dataset.filter if c not in table.c]
    if missing_filter:
        raise SourceError(f"{where}: filter column(s) {', '.join(missing_filter)} do not exist in table "
                          f"{dataset.table!r}. Fix: correct the filter")
    columns = tuple(
        SourceColumn(name=name, arrow_type=arrow_type(table.c[name], f"{where}, column {name!r}"),
                     not_null=not table.c[name].nullable)
        for name in dataset.columns
    )
    statement = sa.select(*[_selected(table.c[c.name], c.arrow_type) for c in columns])
    for column_name, condition in dataset.filter.items():
        for op, value in condition.operators():
            statement = statement.where(_OPERATORS[op](table.c[column_name], value))
    return DatasetQuery(dataset=dataset.name, statement=statement, columns=columns)


def _selected(column: sa.Column[Any], arrow: pa.DataType) -> sa.ColumnElement[Any]:
    # Some dialects (MySQL/MariaDB DOUBLE) hand floats back as Decimal quantised to 10 places:
    # read binary floats as floats, exactly as stored.
    if pa.types.is_floating(arrow):
        return sa.type_coerce(column, sa.Double(asdecimal=False)).label(column.name)
    return column


def stream_batches(engine: sa.Engine, query: DatasetQuery, batch_rows: int, *, method: str = "auto",
                   connection: sa.Connection | None = None,
                   where: sa.ColumnElement[bool] | None = None) -> Iterator[pa.RecordBatch]:
    """Stream the query's rows as Arrow record batches of at most ``batch_rows`` rows.

    ``method``: ``auto`` takes the fastest exact path the source offers (PostgreSQL: COPY parsed by
    pyarrow, through a ``psql`` child when the client is installed, else in-process; MySQL/MariaDB read
    with mysqlclient: an unbuffered cursor fetching raw text, converted by pyarrow casts); ``psql`` and
    ``copy`` force one of those two PostgreSQL routes, ``mysql`` the MySQL/MariaDB one; ``generic``
    forces the SQLAlchemy server-side cursor path (any dialect). Callers never
    branch on the database: the choice is made here. ``connection``: an open connection already inside
    the transaction to read in (a partition's imported snapshot); ``where``: an extra condition (a range).
    """
    schema = query.schema
    statement = query.statement if where is None else query.statement.where(where)
    if method not in ("auto", "psql", "copy", "mysql", "generic"):
        raise ValueError(f"unknown extraction method {method!r}")
    fast = _fast_path(engine.dialect, schema, statement) if method != "generic" else None
    if method in ("psql", "copy") and fast != "postgresql":
        raise SourceError(f"extraction method {method!r} needs a PostgreSQL source read with psycopg "
                          "and column types the COPY route reproduces exactly")
    if method == "mysql" and fast != "mysql":
        raise SourceError("extraction method 'mysql' needs a MySQL/MariaDB source read with mysqlclient "
                          "(mysql+mysqldb) and column types the raw-text route reproduces exactly")
    try:
        if connection is not None:
            yield from _read(connection, statement, schema, fast, batch_rows, method, query.dataset)
            return
        with engine.connect() as conn:
            if fast:
                with conn.begin():
                    yield from _read(conn, statement, schema, fast, batch_rows, method, query.dataset)
            else:
                yield from _read(conn, statement, schema, fast, batch_rows, method, query.dataset)
    except sa.exc.OperationalError:
        raise SourceError(f"source {safe_url(engine.url)} failed while reading dataset "
                          f"{query.dataset!r} (connection or query error)") from None


def _fast_path(dialect: sa.Dialect, schema: pa.Schema, statement: sa.Select[Any]) -> str | None:
    """The fast path this source and these column types allow: ``postgresql``, ``mysql`` or None."""
    if dialect.name == "postgresql" and dialect.driver == "psycopg" and postgres.supports(schema):
        return "postgresql"
    if dialect.name in ("mysql", "mariadb") and dialect.driver == "mysqldb" and mysql.supports(schema, statement):
        return "mysql"
    return None


def _driver_connection(conn: sa.Connection) -> Any:
    """The driver's own connection under ``conn``: the fast paths talk to psycopg and mysqlclient directly."""
    driver = conn.connection.driver_connection
    if driver is None:
        raise SourceError("the source connection was closed before the read started")
    return driver


def _read(conn: sa.Connection, statement: sa.Select[Any], schema: pa.Schema, fast: str | None,
          batch_rows: int, route: str = "auto", dataset: str = "") -> Iterator[pa.RecordBatch]:
    if fast == "postgresql":
        yield from rebatch(postgres.stream(_driver_connection(conn), statement, schema,
                                           conn.engine.dialect, route=route), batch_rows)
        return
    if fast == "mysql":
        driver = _driver_connection(conn)
        if mysql.usable(driver):
            yield from mysql.stream(driver, statement, schema, conn.engine.dialect, batch_rows, dataset=dataset)
            return
        if route == "mysql":
            raise SourceError("extraction method 'mysql' needs the session to return text as utf8/utf8mb4. "
                              "Fix: add ?charset=utf8mb4 to the connection")
    result = conn.execution_options(stream_results=True, max_row_buffer=batch_rows,
                                    yield_per=batch_rows).execute(statement)
    for rows in result.partitions(batch_rows):
        columns: Sequence[Sequence[Any]] = list(zip(*rows, strict=True)) if rows else [[] for _ in schema]
        arrays = [pa.array(col, type=field.type) for col, field in zip(columns, schema, strict=True)]
        yield pa.RecordBatch.from_arrays(arrays, schema=schema)
