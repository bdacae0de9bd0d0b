"""Airflow connection URIs → SQLAlchemy URLs (without Airflow)."""

from __future__ import annotations

import json
import sys
import types

import pytest

from core.connections import env_connection_url, mysql_driver, safe_url, sqlalchemy_url, uri_from_json
from core.errors import ConfigError

URIS = {
    "postgres": ("postgres://u:p@db.example:5432/claims", "postgresql+psycopg", "db.example", 5432, "claims"),
    "postgresql": ("postgresql://u@db.example/claims", "postgresql+psycopg", "db.example", None, "claims"),
    "mysql": ("mysql://u:p@maria:3306/claims", mysql_driver(), "maria", 3306, "claims"),
    "mariadb": ("mariadb://u@maria/claims", mysql_driver(), "maria", None, "claims"),
    "sqlite-absolute": ("sqlite:////abs/path/claims.db", "sqlite", None, None, "/abs/path/claims.db"),
    "explicit-driver": ("postgresql+psycopg2://u@h/db", "postgresql+psycopg2", "h", None, "db"),
    "upper-case-scheme": ("Postgres://u@h/db", "postgresql+psycopg", "h", None, "db"),
}


@pytest.mark.parametrize(("uri", "driver", "host", "port", "database"), URIS.values(), ids=URIS.keys())
def test_sqlalchemy_url_maps_drivers(uri: str, driver: str, host: str | None, port: int | None,
                                     database: str) -> None:
    url = sqlalchemy_url(uri, "claims_db")
    assert url.drivername == driver
    assert (url.host, url.port, url.database) == (host, port, database)
    url.get_dialect()  # the dialect and driver are importable


def test_percent_encoded_password_is_decoded() -> None:
    url = sqlalchemy_url("postgres://u:p%40ss%2Fw@h/db", "x")
    assert url.password == "p@ss/w"
    assert "p@ss" not in safe_url(url)
    assert "p%40ss" not in safe_url(url)


def test_airflow_scheme_with_explicit_driver() -> None:
    url = sqlalchemy_url("postgres+psycopg://u@h/db", "x")
    assert url.drivername == "postgresql+psycopg"


@pytest.mark.parametrize("uri", ["oracle://u@h/db", "mssql://u@h/db", "http://h/x"], ids=["oracle", "mssql", "http"])
def test_unsupported_type_is_refused(uri: str) -> None:
    with pytest.raises(ConfigError, match="unsupported type") as info:
        sqlalchemy_url(uri, "claims_db")
    assert "claims_db" in str(info.value)
    assert "Fix:" in str(info.value)


def test_not_a_uri_is_refused() -> None:
    with pytest.raises(ConfigError, match="not a connection URI"):
        sqlalchemy_url("just-a-name", "x")


def test_env_connection_url_missing_names_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        env_connection_url("x", {})
    assert "AIRFLOW_CONN_X" in str(info.value)
    assert "Fix:" in str(info.value)


@pytest.mark.parametrize(("conn_id", "var"), [("demo_claims", "AIRFLOW_CONN_DEMO_CLAIMS"),
                                              ("acme-sftp", "AIRFLOW_CONN_ACME_SFTP"),
                                              ("a.b", "AIRFLOW_CONN_A_B")],
                         ids=["underscore", "dash", "dot"])
def test_env_connection_url_variable_names(conn_id: str, var: str) -> None:
    url = env_connection_url(conn_id, {var: "sqlite:////tmp/x.db"})
    assert (url.drivername, url.database) == ("sqlite", "/tmp/x.db")


def test_env_connection_url_empty_value_is_missing() -> None:
    with pytest.raises(ConfigError, match="AIRFLOW_CONN_X"):
        env_connection_url("x", {"AIRFLOW_CONN_X": ""})


def test_env_connection_url_json_form() -> None:
    value = json.dumps({"conn_type": "postgres", "host": "db.example", "login": "svc user",
                        "password": "p@ss/w:rd", "port": 5432, "schema": "claims",
                        "extra": {"sslmode": "require"}})
    url = env_connection_url("claims_db", {"AIRFLOW_CONN_CLAIMS_DB": value})
    assert url.drivername == "postgresql+psycopg"
    assert (url.username, url.password, url.host, url.port, url.database) == \
        ("svc user", "p@ss/w:rd", "db.example", 5432, "claims")
    assert url.query == {"sslmode": "require"}
    assert "p@ss" not in safe_url(url)


def test_json_form_sqlite() -> None:
    assert uri_from_json(json.dumps({"conn_type": "sqlite", "host": "/tmp/a.db"}), "x") == "sqlite:////tmp/a.db"
    url = env_connection_url("s", {"AIRFLOW_CONN_S": ' {"conn_type": "sqlite", "host": "/tmp/a.db"}'})
    assert url.database == "/tmp/a.db"


def test_json_form_mysql_without_password() -> None:
    url = env_connection_url("m", {"AIRFLOW_CONN_M": json.dumps({"conn_type": "mysql", "host": "h",
                                                                  "login": "u", "schema": "db"})})
    assert (url.drivername, url.username, url.password, url.database) == (mysql_driver(), "u", None, "db")


@pytest.mark.parametrize(("installed", "driver"), [(True, "mysql+mysqldb"), (False, "mysql+pymysql")],
                         ids=["mysqlclient", "no-mysqlclient"])
def test_mysql_driver_is_mysqlclient_when_it_imports(monkeypatch: pytest.MonkeyPatch, installed: bool,
                                                    driver: str) -> None:
    # None in sys.modules makes `import MySQLdb` raise ImportError; a stand-in module makes it succeed.
    monkeypatch.setitem(sys.modules, "MySQLdb", types.ModuleType("MySQLdb") if installed else None)
    assert mysql_driver() == driver
    assert sqlalchemy_url("mysql://u@maria/claims", "x").drivername == driver
    assert sqlalchemy_url("mariadb://u@maria/claims", "x").drivername == driver
    assert sqlalchemy_url("mysql+pymysql://u@maria/claims", "x").drivername == "mysql+pymysql"  # explicit wins
    assert sqlalchemy_url("postgres://u@h/db", "x").drivername == "postgresql+psycopg"


@pytest.mark.parametrize("value", ['{"host": "h"}', "{not json", '{"conn_type": null}'],
                         ids=["no-conn-type", "broken-json", "null-type"])
def test_bad_json_is_refused(value: str) -> None:
    with pytest.raises(ConfigError):
        env_connection_url("x", {"AIRFLOW_CONN_X": value})


def test_error_never_shows_the_password() -> None:
    with pytest.raises(ConfigError) as info:
        env_connection_url("x", {"AIRFLOW_CONN_X": "oracle://u:sup3rsecret@h/db"})
    assert "sup3rsecret" not in str(info.value)
