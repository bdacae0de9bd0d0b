"""Fixtures for the synthetic demo source tests: throwaway databases on the local servers.

Each fixture creates a database with a unique name, yields its SQLAlchemy URL and drops it
afterwards. An unreachable server is a test FAILURE (never a skip): the integration tests exist
to prove the loader works against the real servers on this machine.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
MARIADB_ADMIN_URL = "mysql+pymysql://root:@127.0.0.1:3306/"


def _unique_name() -> str:
    return f"ce_test_{uuid.uuid4().hex[:10]}"


def _admin_engine(url: str, what: str, **kwargs: object) -> sa.Engine:
    engine = sa.create_engine(url, **kwargs)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except Exception as exc:
        engine.dispose()
        pytest.fail(
            f"{what} is not reachable at {engine.url.render_as_string(hide_password=True)}: {exc}. "
            "The integration tests need the local server running.",
            pytrace=False,
        )
    return engine


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """URL of a fresh, empty PostgreSQL database (dropped after the test)."""
    admin = _admin_engine(PG_ADMIN_URL, "PostgreSQL", isolation_level="AUTOCOMMIT")
    name = _unique_name()
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture
def mariadb_url() -> Iterator[str]:
    """URL of a fresh, empty MariaDB database (dropped after the test)."""
    admin = _admin_engine(MARIADB_ADMIN_URL, "MariaDB")
    name = _unique_name()
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    try:
        yield f"mysql+pymysql://root:@127.0.0.1:3306/{name}?charset=utf8mb4"
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")
        admin.dispose()
