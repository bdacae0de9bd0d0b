"""Master keys from Airflow (a Variable or a Connection, through whatever secrets backend is configured),
registered with Airflow's secret masker before any task logs.

Which source a task uses (first match):

1. ``CONTRACT_EXTRACTS_MASTER_KEY_VARIABLE=<name>``: the Airflow Variable ``<name>`` holds the hex key(s);
2. ``CONTRACT_EXTRACTS_MASTER_KEY_CONNECTION=<conn id>``: the Connection's password holds the hex key(s),
   its extra may name the current key id (``{"current_key_id": "…"}``);
3. ``CONTRACT_EXTRACTS_MASTER_KEY`` or ``CONTRACT_EXTRACTS_MASTER_KEY_FILE`` (as outside Airflow);
4. otherwise the Airflow Variable ``contract_extracts_master_key``.

Variables and Connections are read with ``airflow.sdk.Variable.get`` / ``Connection.get``, so
environment variables (``AIRFLOW_VAR_…``, ``AIRFLOW_CONN_…``), the metadata database and every
secrets backend (Vault, AWS/GCP/Azure secret managers, …) work unchanged. Several keys may be given
(white space or commas between them); ``CONTRACT_EXTRACTS_MASTER_KEY_ID`` names the current one.

Every key is handed to ``airflow.sdk.log.mask_secret`` (the Airflow 3 SDK location) as soon as it is
read, in lower and upper case, so it is redacted from task logs even if something printed it.
``airflow_key_source()`` reads the keys when the task starts, before the stage logs anything.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from airflow.sdk import Connection, Variable
from airflow.sdk.log import mask_secret  # Airflow 3 task SDK; masks in the task and its supervisor

from core.errors import KeyMaterialError, value_free
from masking.keys import (
    CURRENT_KEY_ID_ENV,
    MASTER_KEY_ENV,
    MASTER_KEY_FILE_ENV,
    Keyring,
    KeySource,
    current_key_id_from,
    default_key_source,
    parse_master_keys,
)

log = logging.getLogger(__name__)

VARIABLE_ENV = "CONTRACT_EXTRACTS_MASTER_KEY_VARIABLE"
CONNECTION_ENV = "CONTRACT_EXTRACTS_MASTER_KEY_CONNECTION"
DEFAULT_VARIABLE = "contract_extracts_master_key"


def _variable_get(name: str) -> Any:
    return Variable.get(name)


def _connection_get(conn_id: str) -> Any:  # the SDK declares Any (a Connection)
    return Connection.get(conn_id)


def _not_found(exc: Exception) -> bool:
    error = getattr(getattr(exc, "error", None), "error", None)
    return "NOT_FOUND" in str(getattr(error, "value", error) or "") or type(exc).__name__ == "AirflowNotFoundException"


@dataclass(frozen=True)
class AirflowVariableKeySource:
    """Hex master key(s) in an Airflow Variable."""

    name: str = DEFAULT_VARIABLE
    env: Mapping[str, str] = field(default_factory=lambda: os.environ, repr=False)
    getter: Callable[[str], Any] = field(default=_variable_get, repr=False)

    @property
    def description(self) -> str:
        return f"Airflow Variable {self.name!r}"

    def load(self) -> Keyring:
        try:
            value = self.getter(self.name)
        except Exception as exc:
            if _not_found(exc):
                raise KeyMaterialError(f"{self.description} is not defined (looked up through Airflow's configured "
                                       "secrets backends, environment variables and metadata database). Fix: define it "
                                       "with the hex master key, or point "
                                       f"{VARIABLE_ENV}/{CONNECTION_ENV}/{MASTER_KEY_FILE_ENV} elsewhere") from None
            raise KeyMaterialError(f"{self.description} could not be read ({value_free(exc)})") from None
        if not isinstance(value, str) or not value.strip():
            raise KeyMaterialError(f"{self.description} is empty or not text. Fix: set it to the hex master key")
        return Keyring(tuple(parse_master_keys(value, self.description)), self.description,
                       current_key_id_from(self.env))


@dataclass(frozen=True)
class AirflowConnectionKeySource:
    """Hex master key(s) in an Airflow Connection's password; extra ``current_key_id`` names the current."""

    conn_id: str
    env: Mapping[str, str] = field(default_factory=lambda: os.environ, repr=False)
    getter: Callable[[str], Any] = field(default=_connection_get, repr=False)

    @property
    def description(self) -> str:
        return f"Airflow Connection {self.conn_id!r}"

    def load(self) -> Keyring:
        try:
            conn = self.getter(self.conn_id)
        except Exception as exc:
            if _not_found(exc):
                raise KeyMaterialError(f"{self.description} is not defined (looked up through Airflow's configured "
                                       "secrets backends, environment variables and metadata database). Fix: define it "
                                       "with the hex master key as its password") from None
            raise KeyMaterialError(f"{self.description} could not be read ({value_free(exc)})") from None
        password = getattr(conn, "password", None)
        if not isinstance(password, str) or not password.strip():
            raise KeyMaterialError(f"{self.description} has no password. Fix: put the hex master key in its password")
        try:
            extra = conn.extra_dejson or {}
        except Exception:
            extra = {}
        current = extra.get("current_key_id") if isinstance(extra, dict) else None
        env = dict(self.env)
        if isinstance(current, str) and current:
            env[CURRENT_KEY_ID_ENV] = current
        return Keyring(tuple(parse_master_keys(password, self.description)), self.description,
                       current_key_id_from(env))


def _mask(secret_hex: str) -> None:
    for form in (secret_hex, secret_hex.upper()):
        mask_secret(form)


@dataclass
class MaskedKeySource:
    """Loads ``inner`` once, registers every key with Airflow's secret masker, then hands out the keyring."""

    inner: KeySource
    masker: Callable[[str], None] | None = field(default=None, repr=False)  # default: Airflow's mask_secret
    _keyring: Keyring | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @property
    def description(self) -> str:
        return self.inner.description

    def load(self) -> Keyring:
        with self._lock:
            if self._keyring is None:
                keyring = self.inner.load()
                mask = self.masker or _mask
                for key in keyring.keys:
                    mask(key.secret.hex())
                self._keyring = keyring
            return self._keyring

    def prime(self) -> None:
        """Read and mask the keys now; a failure is raised again, clearly, when a stage needs a key."""
        try:
            self.load()
        except Exception as exc:
            log.debug("master keys not loaded at task start (%s)", value_free(exc))


def configured_key_source(env: Mapping[str, str] | None = None) -> KeySource:
    """The key source chosen by the environment (see the module doc), not yet masked."""
    env = os.environ if env is None else env
    if env.get(VARIABLE_ENV):
        return AirflowVariableKeySource(env[VARIABLE_ENV], env)
    if env.get(CONNECTION_ENV):
        return AirflowConnectionKeySource(env[CONNECTION_ENV], env)
    if env.get(MASTER_KEY_ENV) or env.get(MASTER_KEY_FILE_ENV):
        return default_key_source(env)
    return AirflowVariableKeySource(DEFAULT_VARIABLE, env)


def airflow_key_source(env: Mapping[str, str] | None = None, *, prime: bool = True) -> MaskedKeySource:
    """The key source of an Airflow task: configured, masked, and (by default) read right away."""
    source = MaskedKeySource(configured_key_source(env))
    if prime:
        source.prime()
    return source
