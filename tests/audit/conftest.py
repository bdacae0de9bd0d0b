"""Back ends for the audit tests: a SQLite file per test, or a fresh PostgreSQL database per test.

PostgreSQL is the production back end, so an unreachable server FAILS the test (it never skips):
start it with ``bash scripts/ensure-services.sh``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from audit.ledger import Ledger
from core.errors import value_free

# Superuser connection to the maintenance database (trust auth on this machine, no password).
PG_ADMIN_URL = os.environ.get("CONTRACT_EXTRACTS_TEST_PG_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def _admin_engine() -> Engine:
    return create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool,
                         connect_args={"connect_timeout": 5})


@contextmanager
def temporary_pg_database() -> Iterator[str]:
    """Create a uniquely named database, yield its URL, drop it (even with open connections)."""
    name = f"ce_test_{uuid.uuid4().hex[:10]}"
    admin = _admin_engine()
    shown = make_url(PG_ADMIN_URL).render_as_string(hide_password=True)
    problem = None
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except SQLAlchemyError as exc:
        problem = value_free(getattr(exc, "orig", None) or exc)
    if problem is not None:  # fail outside the except block: no chained driver traceback
        admin.dispose()
        pytest.fail(f"PostgreSQL test server is not usable at {shown} ({problem}); these integration "
                    "tests need it: start it with `bash scripts/ensure-services.sh`", pytrace=False)
    try:
        yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """URL of a fresh, empty PostgreSQL database that is dropped after the test."""
    with temporary_pg_database() as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def backend_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """An empty ledger database on each back end (test ids ``[sqlite]`` and ``[postgresql]``)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def make_ledger(backend_url: str) -> Iterator[Callable[..., Ledger]]:
    """Factory for ledgers on ``backend_url``; every ledger made is closed after the test."""
    made: list[Ledger] = []

    def factory(*, key: bytes | None = None, table: str = "audit_ledger") -> Ledger:
        ledger = Ledger(backend_url, key=key, table=table)
        made.append(ledger)
        return ledger

    yield factory
    for ledger in made:
        ledger.close()
