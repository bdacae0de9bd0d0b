"""Master keys from Airflow (airflow_glue/secrets.py): Variables, Connections, masking, clear errors."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from airflow.sdk._shared.secrets_masker import redact
from airflow.sdk.log import mask_secret  # noqa: F401 - the Airflow 3.3 SDK location used by secrets.py

from airflow_glue import secrets
from airflow_glue.secrets import (
    CONNECTION_ENV,
    DEFAULT_VARIABLE,
    VARIABLE_ENV,
    AirflowConnectionKeySource,
    AirflowVariableKeySource,
    MaskedKeySource,
    airflow_key_source,
    configured_key_source,
)
from core.errors import KeyMaterialError
from masking.keys import (
    CURRENT_KEY_ID_ENV,
    MASTER_KEY_ENV,
    MASTER_KEY_FILE_ENV,
    EnvKeySource,
    FileKeySource,
    key_id,
)

KEY_A = "5f" * 16 + "a3" * 16
KEY_B = "c4" * 32


class NotFound(Exception):
    """Shaped like airflow.sdk.exceptions.AirflowRuntimeError(VARIABLE_NOT_FOUND)."""

    def __init__(self) -> None:
        super().__init__("not found")
        self.error = SimpleNamespace(error=SimpleNamespace(value="VARIABLE_NOT_FOUND"))


def variables(mapping: dict[str, str]):
    def get(name: str) -> str:
        if name not in mapping:
            raise NotFound()
        return mapping[name]
    return get


def no_secret_in(error: BaseException, *secrets: str) -> None:
    text = str(error) + repr(error.args)
    for secret in secrets:
        assert secret not in text and secret.upper() not in text and secret[:16] not in text


def test_variable_holds_one_or_more_keys() -> None:
    source = AirflowVariableKeySource("ce_keys", {CURRENT_KEY_ID_ENV: key_id(bytes.fromhex(KEY_B))},
                                      getter=variables({"ce_keys": f"{KEY_A}\n{KEY_B}\n"}))
    keyring = source.load()
    assert keyring.current.secret == bytes.fromhex(KEY_B)
    assert "Airflow Variable 'ce_keys'" in keyring.source


def test_missing_variable_names_it_and_the_fix() -> None:
    source = AirflowVariableKeySource(DEFAULT_VARIABLE, {}, getter=variables({}))
    with pytest.raises(KeyMaterialError) as info:
        source.load()
    assert f"Airflow Variable '{DEFAULT_VARIABLE}' is not defined" in str(info.value)
    assert "secrets backends" in str(info.value)


def test_malformed_variable_names_it_never_the_value() -> None:
    source = AirflowVariableKeySource("ce_keys", {}, getter=variables({"ce_keys": KEY_A[:-1]}))
    with pytest.raises(KeyMaterialError) as info:
        source.load()
    assert "Airflow Variable 'ce_keys'" in str(info.value) and "malformed" in str(info.value)
    no_secret_in(info.value, KEY_A)


def test_backend_failure_reports_the_type_only() -> None:
    def broken(name: str) -> str:
        raise RuntimeError(f"vault said no for token {KEY_A}")
    with pytest.raises(KeyMaterialError) as info:
        AirflowVariableKeySource("ce_keys", {}, getter=broken).load()
    assert "could not be read (RuntimeError)" in str(info.value)
    no_secret_in(info.value, KEY_A)


def test_connection_password_and_current_key_in_extra() -> None:
    conn = SimpleNamespace(password=f"{KEY_A},{KEY_B}",
                           extra_dejson={"current_key_id": key_id(bytes.fromhex(KEY_A))})
    keyring = AirflowConnectionKeySource("ce_master", {}, getter=lambda _: conn).load()
    assert keyring.current.secret == bytes.fromhex(KEY_A)
    assert len(keyring.keys) == 2


def test_connection_without_password_is_refused() -> None:
    conn = SimpleNamespace(password=None, extra_dejson={})
    with pytest.raises(KeyMaterialError, match="Airflow Connection 'ce_master' has no password"):
        AirflowConnectionKeySource("ce_master", {}, getter=lambda _: conn).load()


def test_real_airflow_variable_and_connection_through_environment_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_VAR_CE_TEST_MASTER_KEY", KEY_A)
    monkeypatch.setenv("AIRFLOW_CONN_CE_TEST_MASTER", json.dumps({"conn_type": "generic", "password": KEY_B}))
    assert AirflowVariableKeySource("ce_test_master_key", {}).load().current.secret == bytes.fromhex(KEY_A)
    assert AirflowConnectionKeySource("ce_test_master", {}).load().current.secret == bytes.fromhex(KEY_B)
    with pytest.raises(KeyMaterialError, match="is not defined"):
        AirflowVariableKeySource("ce_test_no_such_variable", {}).load()
    with pytest.raises(KeyMaterialError, match="is not defined"):
        AirflowConnectionKeySource("ce_test_no_such_connection", {}).load()


def test_keys_are_masked_before_the_keyring_is_handed_out() -> None:
    masked: list[str] = []
    inner = EnvKeySource({MASTER_KEY_ENV: f"{KEY_A} {KEY_B}", CURRENT_KEY_ID_ENV: key_id(bytes.fromhex(KEY_A))})
    source = MaskedKeySource(inner, masker=masked.append)
    keyring = source.load()
    assert masked == [KEY_A, KEY_B]
    assert source.load() is keyring and masked == [KEY_A, KEY_B]  # read and masked once


def test_the_airflow_secret_masker_redacts_the_key(tmp_path: Path) -> None:
    secrets._mask(KEY_A)
    assert KEY_A not in str(redact(f"key={KEY_A}")) and KEY_A.upper() not in str(redact(f"key={KEY_A.upper()}"))


def test_which_source_a_task_uses(tmp_path: Path) -> None:
    path = tmp_path / "m.key"
    path.write_text(KEY_A)
    os.chmod(path, 0o600)
    assert configured_key_source({VARIABLE_ENV: "v", MASTER_KEY_FILE_ENV: str(path)}).description == \
        "Airflow Variable 'v'"
    assert configured_key_source({CONNECTION_ENV: "c"}).description == "Airflow Connection 'c'"
    assert isinstance(configured_key_source({MASTER_KEY_FILE_ENV: str(path)}), FileKeySource)
    assert isinstance(configured_key_source({MASTER_KEY_ENV: KEY_A}), EnvKeySource)
    assert configured_key_source({}).description == f"Airflow Variable '{DEFAULT_VARIABLE}'"


def test_task_source_primes_and_masks_at_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "m.key"
    path.write_text(KEY_A)
    os.chmod(path, 0o600)
    masked: list[str] = []
    monkeypatch.setattr("airflow_glue.secrets._mask", masked.append)
    source = airflow_key_source({MASTER_KEY_FILE_ENV: str(path)})
    assert masked == [KEY_A]  # before any stage ran
    assert source.load().current.secret == bytes.fromhex(KEY_A)


def test_task_source_failure_is_raised_when_a_key_is_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("airflow_glue.secrets._variable_get", variables({}))
    source = airflow_key_source({})  # priming swallows the error; cleanup tasks need no key
    with pytest.raises(KeyMaterialError, match="is not defined"):
        source.load()
