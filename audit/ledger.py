"""Append-only, hash-chained audit ledger in a SQL database (SQLite by default, PostgreSQL in production).

The record and hash formats are a promise to auditors (design.md, "Audit ledger"): anyone can
recompute the chain from the table alone with ``json``, ``hashlib`` and ``hmac``::

    body = json.dumps({"seq", "at", "actor", "action", "contract", "delivery", "details"},
                      sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    hash = hex(SHA-256(prev_hash + "\\n" + body))        # UTF-8; HMAC-SHA256 with the key in keyed mode

The first record's ``prev_hash`` is 64 zeros. ``at`` and ``details`` are stored as the exact text that
went into ``body``. Appends are serialised (``BEGIN IMMEDIATE`` on SQLite, a transaction-scoped advisory
lock on PostgreSQL) so concurrent writers in many processes produce one chain without gaps or forks.

This module is framework-free: it must never import Airflow.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import random
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    func,
    select,
    text,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from core.errors import LedgerError, value_free

__all__ = [
    "GENESIS",
    "Anchor",
    "Ledger",
    "LedgerRecord",
    "VerifyResult",
    "canonical_json",
    "chain_hash",
    "record_body",
]

GENESIS = "0" * 64
"""``prev_hash`` of the first record."""

_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,47}$")
_SENSITIVE_QUERY_KEYS = re.compile(r"pass|secret|token|key|cred", re.IGNORECASE)
_SQLITE_BUSY_TIMEOUT_S = 30.0
_PG_LOCK_TIMEOUT = "30s"
_APPEND_ATTEMPTS = 6
_VERIFY_PAGE = 1000
_MAX_DEPTH = 64
# SQLSTATEs / MySQL error numbers that mean "someone else holds the lock; try again".
_TRANSIENT_SQLSTATES = {"40001", "40P01", "55P03"}
_TRANSIENT_MYSQL_ERRNOS = {1205, 1213}


# --------------------------------------------------------------------------------------------------
# Record format (pure functions: an auditor's reimplementation must agree with these byte for byte)
# --------------------------------------------------------------------------------------------------


def canonical_json(obj: Any) -> str:
    """Serialise ``obj`` the one way the chain accepts, so equal content always hashes equally."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def record_body(seq: int, at: str, actor: str, action: str, contract: str | None, delivery: str | None,
                details_text: str) -> str:
    """Return the exact text that is hashed for one record (design.md "Audit ledger").

    ``details_text`` is parsed so the body embeds the details *object*; callers that need the stored
    text to be canonical (``verify``) check that separately.
    """
    try:
        details = json.loads(details_text)
    except (TypeError, ValueError):
        raise LedgerError(f"record {seq}: details is not valid JSON text") from None
    return canonical_json({
        "seq": seq,
        "at": at,
        "actor": actor,
        "action": action,
        "contract": contract,
        "delivery": delivery,
        "details": details,
    })


def chain_hash(prev_hash: str, body: str, key: bytes | None) -> str:
    """Link ``body`` to its predecessor: hex SHA-256, or HMAC-SHA256 with ``key`` in keyed mode."""
    message = (prev_hash + "\n" + body).encode("utf-8")
    if key is None:
        return hashlib.sha256(message).hexdigest()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


# --------------------------------------------------------------------------------------------------
# Public value types
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LedgerRecord:
    """One row of the ledger exactly as stored (``details`` is the canonical JSON text)."""

    seq: int
    at: str
    actor: str
    action: str
    contract: str | None
    delivery: str | None
    details: str
    prev_hash: str
    hash: str

    def details_obj(self) -> dict[str, Any]:
        """Parse ``details``; kept as text in the record because the text is what was hashed."""
        details: dict[str, Any] = json.loads(self.details)  # always a JSON object: ``append`` checks it
        return details


@dataclass(frozen=True)
class Anchor:
    """A (seq, hash) the ledger must still contain, e.g. a signed checkpoint of an earlier head.

    ``label`` names it in reasons (the checkpoint file, say). An anchor beyond the last record means the
    ledger was truncated; a different stored hash at its seq means it was rewritten up to there.
    """

    seq: int
    hash: str
    label: str = "checkpoint"


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of ``Ledger.verify``.

    ``records``/``head_seq``/``head_hash`` describe the rows found (``head_hash`` is the stored hash of
    the last row, or ``GENESIS`` when empty). When the chain is broken, ``first_broken_seq`` is the seq
    of the first bad (or missing) record and ``reason`` says what is wrong with it.
    """

    ok: bool
    records: int
    head_seq: int
    head_hash: str
    first_broken_seq: int | None
    reason: str | None


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def _utc_now_text() -> str:
    """Timestamp for ``at``; a module function so tests can pin it for known-answer checks."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _safe_url(url: URL) -> str:
    """Render a URL for messages: password hidden, secret-looking query parameters masked."""
    query = {k: ("***" if _SENSITIVE_QUERY_KEYS.search(k) else v) for k, v in url.query.items()}
    return url.set(query=query).render_as_string(hide_password=True)


def _check_details_value(value: Any, depth: int, seen: set[int]) -> None:
    """Refuse anything that would not round-trip through JSON unchanged (names types, never values)."""
    if depth > _MAX_DEPTH:
        raise LedgerError(f"details is nested deeper than {_MAX_DEPTH} levels")
    if value is None or isinstance(value, (str, bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise LedgerError("details contains a non-finite number (NaN or infinity); JSON cannot hold it")
        return
    if isinstance(value, (dict, list, tuple)):
        if id(value) in seen:
            raise LedgerError("details contains a circular reference")
        seen.add(id(value))
        if isinstance(value, dict):
            for k, v in value.items():
                if not isinstance(k, str):
                    raise LedgerError(
                        f"details has a key of type {type(k).__name__}; JSON object keys must be strings")
                _check_details_value(v, depth + 1, seen)
        else:
            for v in value:
                _check_details_value(v, depth + 1, seen)
        seen.discard(id(value))
        return
    raise LedgerError(
        f"details contains a value of type {type(value).__name__}; allowed are dict (str keys), list, "
        "str, int, float, bool and None")


def _details_text(details: Any) -> str:
    if not isinstance(details, dict):
        raise LedgerError(f"details must be a dict (a JSON object), not {type(details).__name__}")
    _check_details_value(details, 0, set())
    text_ = canonical_json(details)
    try:
        text_.encode("utf-8")
    except UnicodeEncodeError:
        raise LedgerError("details contains text that is not valid Unicode (a lone surrogate)") from None
    return text_


def _check_text(name: str, value: Any, *, optional: bool) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or not value:
        kind = "a non-empty string or None" if optional else "a non-empty string"
        got = "an empty string" if isinstance(value, str) else f"a {type(value).__name__}"
        raise LedgerError(f"{name} must be {kind}, not {got}")
    if "\x00" in value:
        raise LedgerError(f"{name} contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise LedgerError(f"{name} is not valid Unicode (a lone surrogate)") from None


def _normalise_since(since: str) -> str:
    """Turn any ISO 8601 timestamp into the stored ``at`` form so text comparison orders by time."""
    try:
        moment = datetime.fromisoformat(since)
    except (TypeError, ValueError):
        raise LedgerError("since must be an ISO 8601 timestamp, e.g. 2026-11-24T00:00:00+00:00") from None
    if moment.tzinfo is None:  # naive means UTC, the ledger's only time zone
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _is_transient(exc: DBAPIError) -> bool:
    """True for lock contention that a fresh transaction will get past."""
    if isinstance(exc, IntegrityError):
        return True  # another writer took the same seq (dialects without a dedicated append lock)
    orig = exc.orig
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if sqlstate in _TRANSIENT_SQLSTATES:
        return True
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int) and args[0] in _TRANSIENT_MYSQL_ERRNOS:
        return True
    message = str(orig).lower() if orig is not None else ""
    return "database is locked" in message or "database table is locked" in message


def _lock_key(table: str) -> int:
    """Fixed signed 64-bit advisory lock id for one ledger table (same in every process)."""
    digest = hashlib.sha256(f"audit.ledger:{table}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _build_table(name: str) -> tuple[MetaData, Table]:
    metadata = MetaData()
    table = Table(
        name,
        metadata,
        Column("seq", Integer, primary_key=True, autoincrement=False),
        Column("at", Text, nullable=False),
        Column("actor", Text, nullable=False),
        Column("action", Text, nullable=False),
        Column("contract", Text, nullable=True),
        Column("delivery", Text, nullable=True),
        Column("details", Text, nullable=False),
        Column("prev_hash", String(64), nullable=False),
        Column("hash", String(64), nullable=False),
    )
    # MySQL/MariaDB can only index a prefix of a TEXT column.
    prefix: dict[str, Any] = {"mysql_length": 191, "mariadb_length": 191}
    Index(f"ix_{name}_contract", table.c.contract, **prefix)
    Index(f"ix_{name}_delivery", table.c.delivery, **prefix)
    return metadata, table


# --------------------------------------------------------------------------------------------------
# Ledger
# --------------------------------------------------------------------------------------------------


class Ledger:
    """Hash-chained, append-only audit log. Create one per process; ``close`` when done.

    There is deliberately no update or delete: corrections are new records.
    """

    def __init__(self, url: str, *, key: bytes | None = None, table: str = "audit_ledger") -> None:
        try:
            parsed = make_url(url)
        except (ArgumentError, TypeError, ValueError):
            # The raw text may hold a password, so it is not echoed.
            raise LedgerError("the audit ledger URL is not a valid SQLAlchemy URL "
                              "(expected e.g. sqlite:///path/ledger.sqlite)") from None
        self._url = parsed
        self._safe = _safe_url(parsed)
        if key is not None and (not isinstance(key, bytes) or not key):
            raise LedgerError(f"audit ledger at {self._safe}: the ledger key must be non-empty bytes")
        if not isinstance(table, str) or not _TABLE_NAME.match(table):
            raise LedgerError(f"audit ledger at {self._safe}: table name must be a plain identifier "
                              "(letters, digits, '_', at most 48 characters)")
        self._key = key
        self._table_name = table
        self._metadata, self._table = _build_table(table)
        self._lock_key = _lock_key(table)
        self._backend = parsed.get_backend_name()
        self._in_memory = self._backend == "sqlite" and parsed.database in (None, "", ":memory:")
        # One in-process lock for appends (cheap, avoids pointless DB lock contention); reads share the
        # single connection of an in-memory SQLite ledger, so they take it too in that case.
        self._append_lock = threading.RLock()
        self._closed = False
        self._engine = self._make_engine()
        self._create_table()

    # -- plumbing -----------------------------------------------------------------------------------

    def _make_engine(self) -> Engine:
        kwargs: dict[str, Any] = {}
        connect_args: dict[str, Any] = {}
        if self._backend == "sqlite":
            connect_args["timeout"] = _SQLITE_BUSY_TIMEOUT_S
            if self._in_memory:
                kwargs["poolclass"] = StaticPool
                connect_args["check_same_thread"] = False
            else:
                database = self._url.database or ""
                if not database.startswith("file:"):
                    try:
                        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
                    except OSError:
                        raise LedgerError(f"audit ledger at {self._safe}: cannot create the folder "
                                          "for the SQLite file") from None
        else:
            kwargs["pool_pre_ping"] = True
            if self._backend == "postgresql" and "connect_timeout" not in self._url.query:
                connect_args["connect_timeout"] = 10
        try:
            engine = create_engine(self._url, connect_args=connect_args, **kwargs)
        except (NoSuchModuleError, ArgumentError, ImportError) as exc:
            raise LedgerError(f"audit ledger at {self._safe}: unsupported database URL or missing driver "
                              f"({value_free(exc)})") from None
        if self._backend == "sqlite":
            self._install_sqlite_transactions(engine)
        return engine

    @staticmethod
    def _install_sqlite_transactions(engine: Engine) -> None:
        """SQLAlchemy's "SQLite serializable" recipe, with BEGIN IMMEDIATE for writers.

        pysqlite's own (legacy) transaction handling is switched off so SQLAlchemy emits BEGIN itself:
        plain BEGIN for readers, BEGIN IMMEDIATE for appends, which takes the write lock *before* the
        head is read, so two processes can never both extend the same head.
        """

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute(f"PRAGMA busy_timeout = {int(_SQLITE_BUSY_TIMEOUT_S * 1000)}")
            finally:
                cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            if conn.get_execution_options().get("ledger_write"):
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                conn.exec_driver_sql("BEGIN")

    def _fail(self, what: str, exc: BaseException) -> LedgerError:
        """A LedgerError naming the database (password hidden) and the error type, never row data."""
        orig = getattr(exc, "orig", None)
        detail = value_free(orig if isinstance(orig, BaseException) else exc)
        sqlstate = getattr(orig, "sqlstate", None)
        if sqlstate:
            detail += f", SQLSTATE {sqlstate}"
        return LedgerError(f"audit ledger at {self._safe}: {what} failed ({detail})")

    def _reading(self) -> AbstractContextManager[Any]:
        return self._append_lock if self._in_memory else nullcontext()

    def _check_open(self) -> None:
        if self._closed:
            raise LedgerError(f"audit ledger at {self._safe}: the ledger is closed")

    def _lock_for_append(self, conn: Connection) -> None:
        """Serialise appenders inside the current transaction (SQLite already has BEGIN IMMEDIATE)."""
        if self._backend == "postgresql":
            conn.execute(text(f"SET LOCAL lock_timeout = '{_PG_LOCK_TIMEOUT}'"))
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": self._lock_key})

    def _create_table(self) -> None:
        try:
            conn = self._engine.connect()
        except SQLAlchemyError as exc:
            self._engine.dispose()
            raise self._fail("connecting", exc) from None
        try:
            with conn:
                try:
                    conn.execution_options(ledger_write=True)
                    with conn.begin():
                        # Many workers may start at once on a fresh database: take the append lock so
                        # only one runs CREATE TABLE (DDL is transactional on SQLite and PostgreSQL).
                        self._lock_for_append(conn)
                        self._metadata.create_all(conn, checkfirst=True)
                except DBAPIError as exc:
                    if exc.connection_invalidated:
                        raise
                    # Dialects without transactional DDL may still race; a second look settles it.
                    with conn.begin():
                        self._metadata.create_all(conn, checkfirst=True)
        except SQLAlchemyError as exc:
            self._engine.dispose()
            raise self._fail("creating the ledger table", exc) from None

    def _head_row(self, conn: Connection, *, for_update: bool = False) -> Any:
        t = self._table
        stmt = select(t).order_by(t.c.seq.desc()).limit(1)
        if for_update:
            stmt = stmt.with_for_update()
        return conn.execute(stmt).first()

    def _check_head(self, head: Any) -> None:
        """Refuse to extend a head whose hash this ledger's mode cannot reproduce.

        This catches a writer configured without the ledger key (or with another one) before it forks a
        keyed chain into an unverifiable one, and a forged head record. Costs one hash per append.
        """
        try:
            body = record_body(int(head.seq), head.at, head.actor, head.action, head.contract, head.delivery,
                               head.details)
            ok = isinstance(head.hash, str) and hmac.compare_digest(head.hash, chain_hash(head.prev_hash, body,
                                                                                          self._key))
        except (LedgerError, UnicodeEncodeError, TypeError, AttributeError):
            ok = False
        if not ok:
            mode = "keyed (HMAC with this ledger key)" if self._key is not None else "unkeyed (SHA-256)"
            raise LedgerError(f"audit ledger at {self._safe}: refusing to append: the head record {int(head.seq)} "
                              f"does not verify in {mode} mode. Either this process has the wrong ledger key "
                              "setting (every writer must use the same key, or none), or the head was altered; "
                              "run 'contract-extracts audit verify'")

    # -- writing ------------------------------------------------------------------------------------

    def append(self, *, actor: str, action: str, contract: str | None, delivery: str | None,
               details: dict[str, Any]) -> LedgerRecord:
        """Add one record at the head of the chain; concurrent callers anywhere get distinct seqs."""
        self._check_open()
        _check_text("actor", actor, optional=False)
        _check_text("action", action, optional=False)
        _check_text("contract", contract, optional=True)
        _check_text("delivery", delivery, optional=True)
        details_text = _details_text(details)

        last_exc: BaseException | None = None
        with self._append_lock:
            for attempt in range(_APPEND_ATTEMPTS):
                try:
                    return self._append_once(actor, action, contract, delivery, details_text)
                except DBAPIError as exc:
                    if not _is_transient(exc):
                        raise self._fail("append", exc) from None
                    last_exc = exc
                except SQLAlchemyError as exc:
                    raise self._fail("append", exc) from None
                time.sleep(min(0.05 * 2 ** attempt, 1.0) * (0.5 + random.random()))  # noqa: S311 - jitter
        assert last_exc is not None
        raise self._fail(f"append (still locked after {_APPEND_ATTEMPTS} attempts)", last_exc) from None

    def _append_once(self, actor: str, action: str, contract: str | None, delivery: str | None,
                     details_text: str) -> LedgerRecord:
        with self._engine.connect() as conn:
            conn.execution_options(ledger_write=True)
            if self._backend == "postgresql":
                # Each statement must see what the previous lock holder committed.
                conn.execution_options(isolation_level="READ COMMITTED")
            with conn.begin():
                self._lock_for_append(conn)
                head = self._head_row(conn, for_update=self._backend not in ("sqlite", "postgresql"))
                if head is not None:
                    self._check_head(head)
                seq = 1 if head is None else int(head.seq) + 1
                prev_hash = GENESIS if head is None else head.hash
                at = _utc_now_text()
                body = record_body(seq, at, actor, action, contract, delivery, details_text)
                record = LedgerRecord(seq=seq, at=at, actor=actor, action=action, contract=contract,
                                      delivery=delivery, details=details_text, prev_hash=prev_hash,
                                      hash=chain_hash(prev_hash, body, self._key))
                conn.execute(self._table.insert().values(**asdict(record)))
        return record

    # -- reading ------------------------------------------------------------------------------------

    def records(self, *, contract: str | None = None, delivery: str | None = None,
                action: str | None = None, since: str | None = None) -> list[LedgerRecord]:
        """Records matching every given filter, in seq order (``since``: ``at`` at or after it)."""
        self._check_open()
        t = self._table
        stmt = select(t).order_by(t.c.seq)
        if contract is not None:
            stmt = stmt.where(t.c.contract == contract)
        if delivery is not None:
            stmt = stmt.where(t.c.delivery == delivery)
        if action is not None:
            stmt = stmt.where(t.c.action == action)
        if since is not None:
            at_col = t.c.at.collate("C") if self._backend == "postgresql" else t.c.at
            stmt = stmt.where(at_col >= _normalise_since(since))
        try:
            with self._reading(), self._engine.connect() as conn:
                return [LedgerRecord(**row._mapping) for row in conn.execute(stmt)]
        except SQLAlchemyError as exc:
            raise self._fail("reading records", exc) from None

    def head(self) -> LedgerRecord | None:
        """The last record (highest seq), or None for an empty ledger."""
        self._check_open()
        t = self._table
        try:
            with self._reading(), self._engine.connect() as conn:
                row = conn.execute(select(t).order_by(t.c.seq.desc()).limit(1)).first()
        except SQLAlchemyError as exc:
            raise self._fail("reading the head", exc) from None
        return None if row is None else LedgerRecord(**row._mapping)

    def count(self) -> int:
        """Number of records in the table."""
        self._check_open()
        try:
            with self._reading(), self._engine.connect() as conn:
                return int(conn.execute(select(func.count()).select_from(self._table)).scalar_one())
        except SQLAlchemyError as exc:
            raise self._fail("counting records", exc) from None

    def _iter_rows(self) -> Iterator[Any]:
        """All rows present when called, in seq order, one short read transaction per page.

        Pages keep memory bounded and never hold a read lock long enough to stall writers (SQLite).
        Rows are only ever appended, so reading page by page still sees one consistent chain.
        """
        t = self._table
        with self._reading(), self._engine.connect() as conn:
            bound = conn.execute(select(func.max(t.c.seq))).scalar()
        if bound is None:
            return
        last: int | None = None
        while True:
            stmt = select(t).where(t.c.seq <= bound).order_by(t.c.seq).limit(_VERIFY_PAGE)
            if last is not None:
                stmt = stmt.where(t.c.seq > last)
            with self._reading(), self._engine.connect() as conn:
                rows = conn.execute(stmt).all()
            yield from rows
            if len(rows) < _VERIFY_PAGE:
                return
            last = rows[-1].seq

    @property
    def location(self) -> str:
        """The database URL with the password hidden (safe for messages and checkpoint files)."""
        return self._safe

    @property
    def table(self) -> str:
        return self._table_name

    @property
    def keyed(self) -> bool:
        """True when hashes are HMAC-SHA256 with a ledger key."""
        return self._key is not None

    def verify(self, *, anchors: Sequence[Anchor] = ()) -> VerifyResult:
        """Recompute the whole chain from the table alone and name the first broken record.

        Detects edited fields (hash mismatch), deleted records (seq gaps, or a first seq other than 1),
        inserted or reordered records (prev_hash mismatch) and non-canonical details text. Removing
        records from the *end*, or rewriting the whole table with a recomputed chain (unkeyed mode), is
        not detectable from the table alone: ``anchors`` (signed checkpoints of earlier heads, kept
        elsewhere) catch both.
        """
        self._check_open()
        by_seq: dict[int, list[Anchor]] = {}
        for anchor in anchors:
            by_seq.setdefault(int(anchor.seq), []).append(anchor)
        count = 0
        head_seq, head_hash = 0, GENESIS
        expected_seq, expected_prev = 1, GENESIS
        broken: int | None = None
        reason: str | None = None
        try:
            for row in self._iter_rows():
                count += 1
                head_seq, head_hash = int(row.seq), row.hash
                if broken is not None:
                    continue  # past the first break only count and track the head
                broken, reason = self._check_row(row, expected_seq, expected_prev)
                if broken is None:
                    for anchor in by_seq.get(int(row.seq), ()):
                        if not hmac.compare_digest(str(row.hash), str(anchor.hash)):
                            broken = int(row.seq)
                            reason = (f"record {broken}: hash differs from {anchor.label} (this record or an "
                                      "earlier one was rewritten)")
                            break
                expected_seq, expected_prev = int(row.seq) + 1, row.hash
        except SQLAlchemyError as exc:
            raise self._fail("reading records for verification", exc) from None
        beyond = sorted((a for a in anchors if int(a.seq) > head_seq), key=lambda a: int(a.seq))
        if broken is None and beyond:
            last = beyond[-1]
            broken = head_seq + 1
            missing = (f"record {broken} is missing" if int(last.seq) == broken
                       else f"records {broken} to {int(last.seq)} are missing")
            reason = (f"{missing}: the ledger ends at record {head_seq}, but {last.label} recorded head "
                      f"{int(last.seq)} (the ledger was truncated)")
        return VerifyResult(ok=broken is None, records=count, head_seq=head_seq, head_hash=head_hash,
                            first_broken_seq=broken, reason=reason)

    def _check_row(self, row: Any, expected_seq: int, expected_prev: str) -> tuple[int | None, str | None]:
        """(seq, reason) of the problem with ``row`` given its expected position, or (None, None)."""
        seq = int(row.seq)
        if seq != expected_seq:
            if seq < expected_seq:
                return seq, f"record {seq}: unexpected seq (expected {expected_seq})"
            if seq - expected_seq == 1:
                missing = f"record {expected_seq} is missing"
            else:
                missing = f"records {expected_seq} to {seq - 1} are missing"
            if expected_seq == 1:
                return expected_seq, f"{missing} (the ledger starts at seq {seq})"
            return expected_seq, f"{missing} (sequence jumps from {expected_seq - 1} to {seq})"
        if not isinstance(row.prev_hash, str) or not hmac.compare_digest(row.prev_hash, expected_prev):
            if seq == 1:
                return seq, f"record {seq}: prev_hash is not the genesis value (64 zeros)"
            return seq, f"record {seq}: prev_hash does not match record {seq - 1}'s hash"
        try:
            details = json.loads(row.details)
        except (TypeError, ValueError):
            return seq, f"record {seq}: details is not valid JSON"
        if not isinstance(details, dict):
            return seq, f"record {seq}: details is not a JSON object"
        if canonical_json(details) != row.details:
            return seq, f"record {seq}: details is not canonical JSON"
        try:
            body = record_body(seq, row.at, row.actor, row.action, row.contract, row.delivery, row.details)
            expected_hash = chain_hash(row.prev_hash, body, self._key)
        except (LedgerError, UnicodeEncodeError, TypeError):
            return seq, f"record {seq}: content cannot be encoded for hashing"
        if not isinstance(row.hash, str) or not hmac.compare_digest(row.hash, expected_hash):
            return seq, f"record {seq}: hash does not match its content"
        return None, None

    # -- lifecycle ----------------------------------------------------------------------------------

    def close(self) -> None:
        """Release pooled connections (idempotent)."""
        if not self._closed:
            self._closed = True
            self._engine.dispose()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "keyed" if self._key is not None else "unkeyed"
        return f"Ledger({self._safe!r}, table={self._table_name!r}, {mode})"
