"""PostgreSQL fast paths: ``COPY (<allow-listed SELECT>) TO STDOUT`` as CSV, parsed by pyarrow with exact types.

The SELECT is the same SQLAlchemy statement the generic path runs (identifiers quoted by the dialect).
COPY takes no bind parameters, so filter values are merged into the statement by psycopg's own literal
quoting (``ClientCursor.mogrify``, what psycopg's ``copy()`` does internally), never by string pasting.
CSV keeps NULL and the empty string apart on its own: NULL is an unquoted empty field, an empty string
is ``""``. pyarrow is told that only an unquoted empty field is null, so strings like 'NULL', 'NA' or
'N/A' stay strings. Types come from the reflected table, never from inference. The session is pinned
to UTC, ISO dates and shortest-exact float output so every value parses back exactly.

Two routes carry the bytes, with identical output (a test compares them column by column):

* ``psql`` (preferred when the client binary is installed): a ``psql`` child process runs the COPY
  inside a transaction that imports the caller's exported snapshot (``SET TRANSACTION SNAPSHOT``), so
  it reads exactly what the caller's transaction sees, and writes CSV into a pipe that pyarrow reads
  in large blocks. libpq in C moves the data; Python never touches a row. Connection parameters travel
  in the child's environment (never its command line); the statement travels on its stdin. Errors
  are reported by SQLSTATE only (``VERBOSITY sqlstate``): server messages may quote data values.
* ``copy`` (in-process): psycopg's ``copy()``. psycopg hands COPY data over one row at a time, which
  costs about a third of the throughput (measured in ``bench/bench_extract.py``).

Memory is bounded by the block size, not the table.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from typing import IO, TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.csv as pcsv
import sqlalchemy as sa

from core.errors import SourceError
from extract.partitioning import SNAPSHOT_ID

if TYPE_CHECKING:
    import psycopg

BLOCK_BYTES = 1 << 20  # measured: 1 MiB pieces beat 4-16 MiB on speed and memory
_PARSE_BLOCK_BYTES = 256 << 10  # pyarrow parses a piece's blocks in parallel
PSQL_ENV = "CONTRACT_EXTRACTS_PSQL"  # path of the psql binary, or "off"; default: psql on PATH

# libpq connection parameters and the environment variables libpq reads them from
# (https://www.postgresql.org/docs/current/libpq-envars.html). A connection using a parameter
# without one stays on the in-process route rather than connecting differently.
_LIBPQ_ENV = {
    "host": "PGHOST", "hostaddr": "PGHOSTADDR", "port": "PGPORT", "dbname": "PGDATABASE", "user": "PGUSER",
    "password": "PGPASSWORD", "passfile": "PGPASSFILE", "channel_binding": "PGCHANNELBINDING",
    "service": "PGSERVICE", "servicefile": "PGSERVICEFILE", "options": "PGOPTIONS",
    "application_name": "PGAPPNAME", "sslmode": "PGSSLMODE", "requiressl": "PGREQUIRESSL",
    "sslnegotiation": "PGSSLNEGOTIATION", "sslcompression": "PGSSLCOMPRESSION", "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY", "sslcertmode": "PGSSLCERTMODE", "sslrootcert": "PGSSLROOTCERT", "sslcrl": "PGSSLCRL",
    "sslcrldir": "PGSSLCRLDIR", "sslsni": "PGSSLSNI", "requirepeer": "PGREQUIREPEER",
    "require_auth": "PGREQUIREAUTH", "ssl_min_protocol_version": "PGSSLMINPROTOCOLVERSION",
    "ssl_max_protocol_version": "PGSSLMAXPROTOCOLVERSION", "gssencmode": "PGGSSENCMODE",
    "krbsrvname": "PGKRBSRVNAME", "gsslib": "PGGSSLIB", "gssdelegation": "PGGSSDELEGATION",
    "connect_timeout": "PGCONNECT_TIMEOUT", "target_session_attrs": "PGTARGETSESSIONATTRS",
    "load_balance_hosts": "PGLOADBALANCEHOSTS",
}
_SQLSTATE_LINE = re.compile(r"^(?:psql:[^:]*:\d+: )?(?:ERROR|FATAL):\s+([0-9A-Z]{5})\s*$")


def supports(schema: pa.Schema) -> bool:
    """Types the CSV route reproduces exactly; anything else goes through the generic path."""
    ok = (pa.types.is_integer, pa.types.is_floating, pa.types.is_decimal, pa.types.is_string,
          pa.types.is_boolean, pa.types.is_date32, pa.types.is_timestamp, pa.types.is_time64)
    return all(any(check(field.type) for check in ok) for field in schema)


def copy_sql(statement: sa.Select[Any], dialect: sa.Dialect) -> tuple[str, dict[str, Any]]:
    compiled = statement.compile(dialect=dialect, compile_kwargs={"render_postcompile": True})
    return f"COPY ({compiled}) TO STDOUT WITH (FORMAT csv, HEADER false)", dict(compiled.params)


_SESSION = ("SET LOCAL TimeZone TO 'UTC'", "SET LOCAL DateStyle TO 'ISO, YMD'",
            "SET LOCAL extra_float_digits TO 1")  # 1: shortest exact float text (PostgreSQL 12+)


def csv_pieces(read: Callable[[int], bytes], block_bytes: int) -> Iterator[bytes]:
    """Cut a CSV byte stream into pieces of about ``block_bytes`` that end exactly on a row boundary.

    A newline ends a row only outside quotes; in PostgreSQL's CSV a quote character appears only around a
    quoted field or doubled inside one, so a newline is outside quotes exactly when the count of quote
    characters before it is even.
    """
    carry = b""  # starts on a row boundary; holds no complete row outside quotes
    odd = False  # whether ``carry`` ends inside quotes (its quote count is odd)
    while True:
        data = read(block_bytes)
        if not data:
            if carry:
                yield carry  # PostgreSQL ends every row with a newline; a torn row fails to parse
            return
        inside = odd ^ bool(data.count(b'"') & 1)  # at the end of ``data``
        end = len(data)
        # Walk back over newlines until one sits outside quotes (usually the very last one).
        newline = data.rfind(b"\n")
        while newline >= 0:
            inside ^= bool(data.count(b'"', newline + 1, end) & 1)  # now: at this newline
            if not inside:
                break
            end = newline
            newline = data.rfind(b"\n", 0, end)
        if newline < 0:
            carry, odd = carry + data, odd ^ bool(data.count(b'"') & 1)
            continue
        yield carry + data[:newline + 1]
        carry = data[newline + 1:]
        odd = bool(carry.count(b'"') & 1)


def _batches(pieces: Iterator[bytes], schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """Parse each piece with pyarrow's native reader on an in-memory buffer.

    pyarrow never calls back into Python for input (no Python file object in its I/O threads): such
    callbacks can abort the interpreter at exit (apache/arrow#34314, seen here with a pipe).
    """
    read_options = pcsv.ReadOptions(column_names=schema.names, block_size=_PARSE_BLOCK_BYTES)
    parse_options = pcsv.ParseOptions(newlines_in_values=True)
    convert_options = pcsv.ConvertOptions(
        column_types=schema, null_values=[""], strings_can_be_null=True,
        quoted_strings_can_be_null=False, true_values=["t"], false_values=["f"])
    for piece in pieces:
        table = pcsv.read_csv(pa.BufferReader(piece), read_options=read_options, parse_options=parse_options,
                              convert_options=convert_options)
        for batch in table.to_batches():
            yield batch.cast(schema) if batch.schema != schema else batch


# ------------------------------------------------------------------------------- in-process route


class _CopyStream:
    """``read(n)`` over psycopg's COPY chunks: psycopg hands COPY data over a row at a time; this
    gathers rows into the large reads ``csv_pieces`` asks for."""

    closed = False

    def __init__(self, chunks: Iterator[Any]) -> None:
        self._chunks = chunks
        self._parts: list[bytes] = []
        self._size = 0
        self._done = False

    def readable(self) -> bool:
        return True

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


def stream_copy(connection: psycopg.Connection[Any], statement: sa.Select[Any], schema: pa.Schema, dialect: sa.Dialect,
                block_bytes: int = BLOCK_BYTES) -> Iterator[pa.RecordBatch]:
    """Stream ``statement`` through psycopg's COPY on a connection already inside a transaction."""
    sql, params = copy_sql(statement, dialect)
    with connection.cursor() as cur:
        for setting in _SESSION:
            cur.execute(setting)
        with cur.copy(sql, params or None) as copy:
            yield from _batches(csv_pieces(_CopyStream(iter(copy)).read, block_bytes), schema)


# ------------------------------------------------------------------------------------- psql route


def psql_binary() -> str | None:
    """The psql client to use: ``$CONTRACT_EXTRACTS_PSQL`` (a path, or ``off``), else psql on PATH."""
    configured = os.environ.get(PSQL_ENV, "").strip()
    if configured.lower() in ("off", "none", "0", "false"):
        return None
    if configured:
        found = shutil.which(configured)
        if found is None:
            raise SourceError(f"{PSQL_ENV}={configured!r} is not an executable psql. "
                              f"Fix: point it at the psql binary, or set it to 'off' to read in-process")
        return found
    return shutil.which("psql")


def psql_environment(connection: psycopg.Connection[Any]) -> dict[str, str] | None:
    """The child environment that makes psql connect exactly as ``connection`` did, or None if it cannot.

    Every libpq variable of the parent is dropped first, so only the connection's own parameters
    (which already include anything libpq took from the environment) reach psql.
    """
    params = dict(connection.info.get_parameters())
    password = connection.info.password
    if password:
        params["password"] = password
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    for key, value in params.items():
        if key == "client_encoding":
            continue  # pinned to UTF8 below
        variable = _LIBPQ_ENV.get(key)
        if variable is None:
            return None
        env[variable] = str(value)
    env["PGCLIENTENCODING"] = "UTF8"
    env.setdefault("PGAPPNAME", "contract-extracts")
    return env


def psql_usable(connection: psycopg.Connection[Any], binary: str | None) -> bool:
    """psql can read for this connection: the binary exists, parameters map, a snapshot can be shared."""
    if binary is None or psql_environment(connection) is None:
        return False
    with connection.cursor() as cur:
        cur.execute("SELECT pg_is_in_recovery()")  # no snapshot export from a standby before PostgreSQL 10
        row = cur.fetchone()
        return row is not None and not row[0]


def _psql_script(connection: psycopg.Connection[Any], statement: sa.Select[Any], dialect: sa.Dialect,
                 snapshot: str) -> bytes:
    import psycopg  # noqa: PLC0415 - deferred: the PostgreSQL driver, loaded only when PostgreSQL is read

    sql, params = copy_sql(statement, dialect)
    if params:
        sql = psycopg.ClientCursor(connection).mogrify(sql, params)
    if not SNAPSHOT_ID.match(snapshot):
        raise SourceError("exported snapshot id has an unexpected form; refusing to use it")
    lines = ["BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;",
             f"SET TRANSACTION SNAPSHOT '{snapshot}';",  # checked above; SET takes no parameters
             "SET LOCAL client_min_messages TO error;",
             *(f"{s};" for s in _SESSION), f"{sql};", "COMMIT;"]
    return ("\n".join(lines) + "\n").encode("utf-8")


class _Stderr(threading.Thread):
    """Drains psql's stderr (so it never blocks) keeping only the last few lines."""

    def __init__(self, stream: IO[bytes]) -> None:
        super().__init__(daemon=True)
        self._stream = stream
        self.lines: list[str] = []

    def run(self) -> None:
        for raw in self._stream:
            self.lines = [*self.lines[-4:], raw.decode("utf-8", "replace").rstrip()]

    def sqlstate(self) -> str | None:
        for line in reversed(self.lines):
            match = _SQLSTATE_LINE.match(line)
            if match:
                return match.group(1)
        return None


def stream_psql(connection: psycopg.Connection[Any], statement: sa.Select[Any], schema: pa.Schema,
                dialect: sa.Dialect, binary: str, block_bytes: int = BLOCK_BYTES) -> Iterator[pa.RecordBatch]:
    """Stream ``statement`` through a psql child reading the snapshot of ``connection``'s open transaction."""
    env = psql_environment(connection)
    if env is None:
        raise SourceError("this connection's parameters cannot be handed to psql")
    with connection.cursor() as cur:
        cur.execute("SELECT pg_export_snapshot()")
        row = cur.fetchone()
    if row is None:
        raise SourceError("the source exported no snapshot for psql to read in")
    snapshot = str(row[0])
    script = _psql_script(connection, statement, dialect, snapshot)
    proc = subprocess.Popen(
        [binary, "--no-psqlrc", "--quiet", "--no-align", "--set", "ON_ERROR_STOP=1",
         "--set", "VERBOSITY=sqlstate", "--file", "-"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        bufsize=block_bytes, close_fds=True)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None  # all three are pipes
    errors = _Stderr(proc.stderr)
    errors.start()
    finished = False
    try:
        try:
            proc.stdin.write(script)
            proc.stdin.close()
        except BrokenPipeError:
            pass  # psql exited early (e.g. cannot connect): its exit code says so below
        yield from _batches(csv_pieces(proc.stdout.read, block_bytes), schema)
        finished = True
    finally:
        if not finished and proc.poll() is None:
            proc.kill()  # the consumer stopped early or parsing failed: do not leave psql running
        proc.stdout.close()
        code = proc.wait()
        errors.join(timeout=5)
    if code != 0:
        state = errors.sqlstate()
        raise SourceError(f"psql exited with code {code} while reading the source"
                          + (f" (SQLSTATE {state})" if state else "")
                          + "; server messages are withheld because they may quote data values")


def stream(connection: psycopg.Connection[Any], statement: sa.Select[Any], schema: pa.Schema, dialect: sa.Dialect, *,
           route: str = "auto", block_bytes: int = BLOCK_BYTES) -> Iterator[pa.RecordBatch]:
    """Stream ``statement`` on a psycopg ``connection`` inside a transaction, by the fastest exact route.

    ``route``: ``auto`` (psql when installed and usable, else in-process), ``psql`` or ``copy``.
    """
    if route not in ("auto", "psql", "copy"):
        raise ValueError(f"unknown COPY route {route!r}")
    binary = psql_binary() if route != "copy" else None
    if route == "psql" and binary is None:
        raise SourceError("the psql route was asked for but no psql client is installed. "
                          f"Fix: install the PostgreSQL client or unset {PSQL_ENV}")
    if route != "copy" and binary is not None and psql_usable(connection, binary):
        yield from stream_psql(connection, statement, schema, dialect, binary, block_bytes)
    elif route == "psql":
        raise SourceError("the psql route cannot reproduce this connection (unmapped connection parameters "
                          "or a standby server)")
    else:
        yield from stream_copy(connection, statement, schema, dialect, block_bytes)
