"""PostgreSQL fast path: ``COPY (<allow-listed SELECT>) TO STDOUT`` as CSV, parsed by pyarrow with exact types.

The SELECT is the same SQLAlchemy statement the generic path runs (identifiers quoted by the dialect,
filter values bound by psycopg, never pasted into SQL text). Every non-null value is quoted
(``FORCE_QUOTE *``), so an empty string and NULL stay distinct; pyarrow is told that only an unquoted
empty field is null, so strings like 'NULL', 'NA' or 'N/A' stay strings. Types come from the reflected
table, never from inference. The session is pinned to UTC and ISO dates so timestamps parse exactly.

Rows stream from psycopg's ``copy()`` through a small file adapter into pyarrow's streaming CSV reader:
memory is bounded by the block size, not the table. (A ``psql`` subprocess pipe
was measured to abort at exit now and then, apache/arrow#34314; this stays in-process.)
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pyarrow.csv as pcsv
import sqlalchemy as sa

BLOCK_BYTES = 4 << 20


def supports(schema: pa.Schema) -> bool:
    """Types the CSV route reproduces exactly; anything else goes through the generic path."""
    ok = (pa.types.is_integer, pa.types.is_floating, pa.types.is_decimal, pa.types.is_string,
          pa.types.is_boolean, pa.types.is_date32, pa.types.is_timestamp, pa.types.is_time64)
    return all(any(check(field.type) for check in ok) for field in schema)


class _CopyStream:
    """A minimal readable file over psycopg's COPY chunks for pyarrow.

    psycopg hands COPY data over a row at a time; this gathers rows into the large reads pyarrow asks
    for (a plain ``read(n)`` object is about twice as fast here as an ``io.RawIOBase`` adapter).
    """

    closed = False

    def __init__(self, chunks: Iterator) -> None:
        self._chunks = chunks
        self._parts: list[bytes] = []
        self._size = 0
        self._done = False

    def readable(self) -> bool:
        return True

    def peek_empty(self) -> bool:
        self._fill(1)
        return self._size == 0

    def _fill(self, n: int) -> None:
        while not self._done and self._size < n:
            try:
                part = bytes(next(self._chunks))
            except StopIteration:
                self._done = True
                return
            self._parts.append(part)
            self._size += len(part)

    def read(self, n: int = -1) -> bytes:
        self._fill(n if n >= 0 else 1 << 62)
        data = b"".join(self._parts)
        if 0 <= n < len(data):
            self._parts, self._size = [data[n:]], len(data) - n
            return data[:n]
        self._parts, self._size = [], 0
        return data

    def close(self) -> None:
        self.closed = True


def copy_sql(statement: sa.Select, dialect: sa.Dialect) -> tuple[str, dict]:
    compiled = statement.compile(dialect=dialect, compile_kwargs={"render_postcompile": True})
    return f"COPY ({compiled}) TO STDOUT WITH (FORMAT csv, HEADER false, FORCE_QUOTE *)", dict(compiled.params)


def stream_copy(connection, statement: sa.Select, schema: pa.Schema, dialect: sa.Dialect,
                block_bytes: int = BLOCK_BYTES) -> Iterator[pa.RecordBatch]:
    """Stream ``statement`` through COPY on a psycopg connection already inside a transaction."""
    sql, params = copy_sql(statement, dialect)
    with connection.cursor() as cur:
        cur.execute("SET LOCAL TimeZone TO 'UTC'")
        cur.execute("SET LOCAL DateStyle TO 'ISO, YMD'")
        with cur.copy(sql, params or None) as copy:
            reader = _CopyStream(iter(copy))
            if reader.peek_empty():
                return  # pyarrow refuses an empty CSV: an empty result is simply no batches
            csv = pcsv.open_csv(
                reader,
                read_options=pcsv.ReadOptions(column_names=schema.names, block_size=block_bytes),
                parse_options=pcsv.ParseOptions(newlines_in_values=True),
                convert_options=pcsv.ConvertOptions(
                    column_types=schema, null_values=[""], strings_can_be_null=True,
                    quoted_strings_can_be_null=False, true_values=["t"], false_values=["f"]),
            )
            for batch in csv:
                yield batch.cast(schema) if batch.schema != schema else batch
