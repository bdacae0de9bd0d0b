"""Airflow connection URIs → SQLAlchemy URLs, without importing Airflow.

Outside Airflow (CLI, tests) a connection id ``foo`` is read from ``AIRFLOW_CONN_FOO`` exactly as
Airflow itself would (URI or JSON form); inside Airflow the glue asks Airflow's secrets backends.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from urllib.parse import quote, urlencode

from sqlalchemy.engine import URL, make_url

from core.errors import ConfigError

# Airflow conn_type → SQLAlchemy driver we ship (MySQL/MariaDB: see mysql_driver()).
_DRIVERS = {
    "postgres": "postgresql+psycopg",
    "postgresql": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mariadb": "mysql+pymysql",
    "sqlite": "sqlite",
}


def mysql_driver() -> str:
    """``mysql+mysqldb`` when mysqlclient (C, the extract's fast path) imports, else ``mysql+pymysql``."""
    try:
        import MySQLdb  # noqa: F401, PLC0415 - deferred: optional C driver, probed only to choose the dialect
    except ImportError:
        return "mysql+pymysql"
    return "mysql+mysqldb"


def sqlalchemy_url(uri: str, conn_id: str) -> URL:
    """Turn an Airflow connection URI (``postgres://…``, ``sqlite:////path``) into a SQLAlchemy URL."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        raise ConfigError("is not a connection URI", key=f"connection {conn_id!r}",
                          fix="use e.g. postgresql://user@host:5432/db or sqlite:////abs/path.db")
    base = scheme.split("+", 1)[0].replace("-", "_").lower()
    if base not in _DRIVERS:
        raise ConfigError(f"has unsupported type {base!r}", key=f"connection {conn_id!r}",
                          fix=f"use one of: {', '.join(sorted(_DRIVERS))}")
    dialect = _DRIVERS[base].split("+", 1)[0]
    default = mysql_driver() if dialect == "mysql" else _DRIVERS[base]
    driver = f"{dialect}+{scheme.split('+', 1)[1]}" if "+" in scheme else default
    try:
        return make_url(f"{driver}://{rest}")
    except Exception:
        raise ConfigError("cannot be parsed as a URL", key=f"connection {conn_id!r}",
                          fix="check the URI syntax (percent-encode special characters)") from None


def uri_from_json(text: str, conn_id: str) -> str:
    """Airflow's JSON connection form → URI."""
    try:
        data = json.loads(text)
        conn_type = data["conn_type"]
    except (ValueError, KeyError, TypeError):
        raise ConfigError("is neither a URI nor Airflow connection JSON", key=f"connection {conn_id!r}",
                          fix="give a URI or JSON with at least conn_type") from None
    if conn_type == "sqlite":
        return f"sqlite:///{data.get('host') or data.get('schema') or ''}"
    auth = ""
    if data.get("login"):
        auth = quote(str(data["login"]), safe="")
        if data.get("password"):
            auth += ":" + quote(str(data["password"]), safe="")
        auth += "@"
    host = data.get("host") or ""
    port = f":{data['port']}" if data.get("port") else ""
    schema = f"/{data['schema']}" if data.get("schema") else ""
    query = ""
    extra = data.get("extra")
    if isinstance(extra, dict) and extra:
        query = "?" + urlencode({k: v for k, v in extra.items() if isinstance(v, str | int)})
    return f"{conn_type}://{auth}{host}{port}{schema}{query}"


def env_connection_url(conn_id: str, env: Mapping[str, str] | None = None) -> URL:
    """Resolve a connection id from ``AIRFLOW_CONN_<ID>`` (for the CLI and tests)."""
    env = os.environ if env is None else env
    name = "AIRFLOW_CONN_" + conn_id.upper().replace("-", "_").replace(".", "_")
    value = env.get(name)
    if not value:
        raise ConfigError(f"is not defined (looked for environment variable {name})",
                          key=f"connection {conn_id!r}",
                          fix=f"define the Airflow connection {conn_id!r} or export {name}")
    uri = uri_from_json(value, conn_id) if value.lstrip().startswith("{") else value
    return sqlalchemy_url(uri, conn_id)


def safe_url(url: URL | str) -> str:
    """A URL for messages: password hidden."""
    return make_url(url).render_as_string(hide_password=True) if not isinstance(url, URL) \
        else url.render_as_string(hide_password=True)
