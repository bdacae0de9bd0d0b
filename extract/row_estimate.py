"""The source's own estimate of a table's row count, for progress lines (share done, ETA). Never exact, never needed.

PostgreSQL keeps ``pg_class.reltuples`` (kept by VACUUM/ANALYZE and autovacuum; -1 before the first), MariaDB and
MySQL keep ``information_schema.TABLES.TABLE_ROWS`` (InnoDB samples it). Both are metadata reads that cost
nothing and read no row. Other sources (SQLite) and any failure give ``None``: progress then shows rows, rate
and elapsed time only.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa

log = logging.getLogger(__name__)

_POSTGRES = sa.text(
    "SELECT c.reltuples FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    "WHERE c.relname = :name AND n.nspname = COALESCE(:schema, current_schema())")
_MYSQL = sa.text(
    "SELECT TABLE_ROWS FROM information_schema.TABLES "
    "WHERE TABLE_NAME = :name AND TABLE_SCHEMA = COALESCE(:schema, DATABASE())")


def estimated_rows(engine: sa.Engine, table: sa.Table) -> int | None:
    """The source's estimate of ``table``'s rows, or None (unknown, not offered by the source, or not positive)."""
    dialect = engine.dialect.name
    if dialect == "postgresql":
        statement = _POSTGRES
    elif dialect in ("mysql", "mariadb"):
        statement = _MYSQL
    else:
        return None
    try:
        with engine.connect() as conn:
            value = conn.execute(statement, {"name": table.name, "schema": table.schema}).scalar()
    except Exception as exc:  # an estimate is a nicety: any failure means "no estimate"
        log.debug("no row estimate for %s (%s)", table.name, type(exc).__name__)
        return None
    if value is None:
        return None
    try:
        rows = int(float(value))
    except (TypeError, ValueError):
        return None
    return rows if rows > 0 else None
