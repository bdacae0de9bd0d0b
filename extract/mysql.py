"""MySQL/MariaDB fast path: the SELECT on an unbuffered mysqlclient cursor, every value fetched as raw text.

The SELECT is the same SQLAlchemy statement the generic path runs, compiled for the source's own dialect
(identifiers quoted by it); filter values are bound parameters handed to the driver's ``execute``, which
escapes them exactly as it does for the generic path. The statement runs on an unbuffered cursor
(``SSCursor``, ``mysql_use_result``) of the caller's own connection, so it reads inside the caller's
transaction (a partition's ``START TRANSACTION WITH CONSISTENT SNAPSHOT``) and memory is bounded by the
batch size.

mysqlclient converts each value to a Python object in C, but its default converters for decimals, dates
and times are Python functions called once per value. Here the connection's decoder map is emptied
while the statement starts (``Connection.converter``: the result object copies the decoders it needs
when it is created, and the map is restored right after), so every value arrives as the server's text
(``bytes``, ``None`` for NULL). Each batch of rows is flattened into one Arrow binary array, cut into
columns with ``take``, and every column is converted by a pyarrow cast to the exact Arrow type of the
reflected table: strings are validated as UTF-8, integers, decimals (string to decimal128, exact),
dates and ``DATETIME(fsp)`` are parsed in C. MariaDB prints ``DOUBLE`` as the shortest text that
round-trips and pyarrow parses it correctly rounded, so floats are identical to the generic path (a
test compares every column, including 0.1, 1/3, 1e300 and -1e-300). ``TIME`` is read as a time of day:
values outside 00:00:00-23:59:59.999999 (MySQL allows -838:59:59 to 838:59:59) are refused rather than
wrapped around midnight as the generic path does.

A value the Arrow type cannot hold (a zero date ``0000-00-00`` stored under a relaxed ``sql_mode``, an
out-of-range ``TIME``, invalid UTF-8) fails with a ``SourceError`` naming the dataset, the column and
the kind of failure, never the value. Server errors are reported by number only: their messages may
quote data values.

Requires a utf8/utf8mb4 result character set (``?charset=utf8mb4``); other sessions stay on the generic
path, which decodes with the connection's encoding.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from sqlalchemy.dialects import mysql as mysql_types

from core.errors import SourceError, value_free

if TYPE_CHECKING:
    from MySQLdb.connections import Connection as DriverConnection  # untyped driver: Any to mypy

_TEXT = pa.large_string()  # the server's text, viewed without copying or validation for parsing casts
_UTF8_RESULTS = ("utf8mb4", "utf8mb3", "utf8")
_MIDNIGHT = pa.scalar("1970-01-01 ", _TEXT)
_EMPTY = pa.scalar("", _TEXT)


def supports(schema: pa.Schema, statement: sa.Select[Any] | None = None) -> bool:
    """Types the raw-text route reproduces exactly; anything else goes through the generic path.

    ``SET`` columns (a Python set on the generic path) and custom SQLAlchemy types (whose result
    processing the raw route would skip) stay on the generic path too.
    """
    ok = (pa.types.is_integer, pa.types.is_floating, pa.types.is_decimal128, pa.types.is_string,
          pa.types.is_binary, pa.types.is_boolean, pa.types.is_date32,
          lambda t: pa.types.is_timestamp(t) and t.unit == "us" and t.tz in (None, "UTC"),
          lambda t: pa.types.is_time64(t) and t.unit == "us")
    if not all(any(check(field.type) for check in ok) for field in schema):
        return False
    if statement is not None:
        for column in statement.selected_columns:
            if isinstance(column.type, sa.types.TypeDecorator | mysql_types.SET):
                return False
    return True


def select_sql(statement: sa.Select[Any], dialect: sa.Dialect) -> tuple[str, tuple[Any, ...] | dict[str, Any]]:
    """The statement's SQL for the driver and its parameters (a tuple, even when empty: the driver
    only turns ``%%`` back into ``%`` when it formats parameters in)."""
    compiled = statement.compile(dialect=dialect, compile_kwargs={"render_postcompile": True})
    params = compiled.params
    if compiled.positional:
        return str(compiled), tuple(params[name] for name in compiled.positiontup or ())
    return str(compiled), dict(params)


def usable(connection: DriverConnection) -> bool:
    """The session returns text as UTF-8 (what the string casts validate)."""
    from MySQLdb import Error as DriverError  # noqa: PLC0415 - deferred: the MySQL driver, loaded only when MySQL is read

    failed = None
    try:
        with connection.cursor() as cur:
            cur.execute("SELECT @@character_set_results")
            charset = cur.fetchone()[0]
    except DriverError as exc:
        failed = _errno(exc)
    if failed is not None:
        raise SourceError(f"the source failed before reading ({failed})") from None
    if isinstance(charset, bytes):
        charset = charset.decode("ascii", "replace")
    return (charset or "").lower() in _UTF8_RESULTS


def _time_of_day(column: pa.Array) -> pa.Array:
    text = pc.binary_join_element_wise(_MIDNIGHT, column.view(_TEXT), _EMPTY)  # NULL stays NULL
    return text.cast(pa.timestamp("us")).cast(pa.int64()).cast(pa.time64("us"))


def converter(arrow: pa.DataType) -> Callable[[pa.Array], pa.Array]:
    """Server text (a large_binary array) → ``arrow``, by pyarrow casts only."""
    if pa.types.is_string(arrow) or pa.types.is_binary(arrow):
        return lambda column: column.cast(arrow)  # large_binary → string validates UTF-8
    if pa.types.is_boolean(arrow):  # TINYINT(1): any non-zero is true, as SQLAlchemy's Boolean reads it
        return lambda column: pc.not_equal(column.view(_TEXT).cast(pa.int64()), 0)
    if pa.types.is_time64(arrow):
        return _time_of_day
    if pa.types.is_timestamp(arrow) and arrow.tz is not None:  # naive text, read as UTC like the generic path
        return lambda column: column.view(_TEXT).cast(pa.timestamp(arrow.unit)).cast(arrow)
    return lambda column: column.view(_TEXT).cast(arrow)


def _columns(rows: list[tuple[bytes | None, ...]], width: int) -> list[pa.Array]:
    """Rows of bytes/None → one large_binary array per column (no Python loop over values)."""
    flat = pa.array(list(itertools.chain.from_iterable(rows)), type=pa.large_binary())
    if width == 1:
        return [flat]
    stop = len(rows) * width
    return [flat.take(pa.array(np.arange(i, stop, width))) for i in range(width)]


def _batch(rows: list[tuple[bytes | None, ...]], schema: pa.Schema, converters: list[Callable[[pa.Array], pa.Array]],
           where: str) -> pa.RecordBatch:
    arrays = []
    for field, convert, column in zip(schema, converters, _columns(rows, len(schema)), strict=True):
        try:
            arrays.append(convert(column))
        except (pa.ArrowException, ValueError, TypeError, OverflowError) as exc:
            problem = value_free(exc)  # its message may quote the value
        else:
            continue
        raise SourceError(f"{where}, column {field.name!r}: a source value cannot be read as {field.type} "
                          f"({problem}); the value is withheld from this message") from None
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _execute_raw(connection: DriverConnection, cursor: Any, sql: str,
                 params: tuple[Any, ...] | dict[str, Any]) -> None:
    """Run ``sql`` with the connection's decoder map emptied: the result copies the (now empty) map when
    it is created, so every value of this statement arrives as bytes; other statements are unaffected."""
    decoders = connection.converter
    connection.converter = {}
    try:
        cursor.execute(sql, params)
    finally:
        connection.converter = decoders


def stream(connection: DriverConnection, statement: sa.Select[Any], schema: pa.Schema, dialect: sa.Dialect,
           batch_rows: int, *, dataset: str = "") -> Iterator[pa.RecordBatch]:
    """Stream ``statement`` on a mysqlclient ``connection`` (inside the caller's transaction, if any) as
    batches of at most ``batch_rows`` rows with exactly ``schema``."""
    from MySQLdb import Error as DriverError  # noqa: PLC0415 - deferred: the MySQL driver, loaded only when MySQL is read
    from MySQLdb.cursors import SSCursor  # noqa: PLC0415 - deferred: as above

    where = f"dataset {dataset!r}" if dataset else "the dataset"
    sql, params = select_sql(statement, dialect)
    converters = [converter(field.type) for field in schema]
    failed: str | None = None
    cursor = connection.cursor(SSCursor)
    try:
        try:
            _execute_raw(connection, cursor, sql, params)
            width = len(cursor.description or ())
            if width != len(schema):
                raise SourceError(f"{where}: the source returned {width} columns, expected {len(schema)}")
            while rows := cursor.fetchmany(batch_rows):
                batch = _batch(rows, schema, converters, where)
                del rows  # memory: one batch of Python rows at a time
                yield batch
        except DriverError as exc:
            failed = _errno(exc)  # server messages may quote data values: keep the error number only
    finally:
        # Reads and discards any rows left, so the caller's connection stays usable. A close error follows
        # a read error reported below, or leaves a broken connection that fails its next statement.
        with contextlib.suppress(DriverError):
            cursor.close()
    if failed is not None:
        raise SourceError(f"{where}: the source failed while reading ({failed}); server messages are "
                          "withheld because they may quote data values") from None


def _errno(exc: Exception) -> str:
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
    return f"{value_free(exc)} {code}" if code is not None else value_free(exc)
