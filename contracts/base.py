"""Shared pieces of the contract model: the strict base class and the identifier patterns."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict

CONTRACT_ID = r"^[A-Z][A-Z0-9]*(-[A-Z0-9]+)*$"
NAME = r"^[a-z][a-z0-9_]{0,62}$"
COLUMN = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"
TABLE = r"^([A-Za-z_][A-Za-z0-9_]{0,62}\.)?[A-Za-z_][A-Za-z0-9_]{0,62}$"
CONN_ID = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,249}$"
SLUG = r"^[a-z0-9][a-z0-9._-]{0,62}$"
ENTITY = r"^[a-z][a-z0-9_]{0,62}$"


class Strict(BaseModel):
    """Unknown keys are errors; models are immutable once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# ---- statements in words -------------------------------------------------------------------------

_WORD = re.compile(r"[^\W\d_]{2,}")
MIN_STATEMENT_WORDS = 3
MIN_STATEMENT_LETTERS = 15


def real_words(value: str, what: str) -> str:
    """``value`` with its white space collapsed, refused unless it says something in words.

    A statement a person must write (a business requirement, why a dataset is needed) is at least three
    different words of two or more letters and fifteen letters in all: blanks, a run of one character or
    a bare code do not pass for a reason.
    """
    text = " ".join(value.split())
    words = {w.lower() for w in _WORD.findall(text)}
    letters = sum(len(w) for w in _WORD.findall(text))
    if len(words) < MIN_STATEMENT_WORDS or letters < MIN_STATEMENT_LETTERS:
        raise ValueError(f"{what} must say in words why (at least {MIN_STATEMENT_WORDS} different words and "
                         f"{MIN_STATEMENT_LETTERS} letters), e.g. 'the survey contractor must post "
                         "questionnaires to the sampled claimants'")
    return text


# ---- system tables ---------------------------------------------------------------------------------

#: Schemas (databases, on MySQL/MariaDB) that belong to the database system itself.
SYSTEM_SCHEMAS = frozenset({"pg_catalog", "information_schema", "pg_toast", "mysql", "performance_schema", "sys"})
#: Table name prefixes of system tables that resolve without a schema (PostgreSQL puts pg_catalog first
#: on every search path; SQLite keeps its own tables in every database).
SYSTEM_TABLE_PREFIXES = ("pg_", "sqlite_")


def is_system_table(table: str) -> bool:
    """Whether ``table`` (``name`` or ``schema.name``) names a table of the database system itself."""
    schema, _, name = table.lower().rpartition(".")
    return (schema in SYSTEM_SCHEMAS or schema.startswith(("pg_temp", "pg_toast"))
            or name.startswith(SYSTEM_TABLE_PREFIXES) or (not schema and name in SYSTEM_SCHEMAS))


def is_system_database(database: str | None) -> bool:
    """Whether a connection's database is one of the system's own (``mysql``, ``information_schema``, …)."""
    return database is not None and database.lower() in SYSTEM_SCHEMAS
