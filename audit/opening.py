"""Opening the configured ledger (``open_ledger``), keyed by default.

In keyed mode every record's hash is HMAC-SHA256 with the ledger key instead of SHA-256, so someone
who can write to the database but does not hold the key cannot rewrite history and recompute a chain
that verifies. The key is 32 random bytes stored as 64 hex characters, read like the master key, from
the first of:

- ``CONTRACT_EXTRACTS_LEDGER_KEY`` (hex, e.g. injected from a secrets backend),
- ``CONTRACT_EXTRACTS_LEDGER_KEY_FILE`` (``Settings.ledger_key_file``), a file readable by its owner only,
- ``$CONTRACT_EXTRACTS_HOME/keys/ledger.key`` when it exists (``make demo`` writes it).

Without a key, opening the ledger fails (fail closed) unless ``CONTRACT_EXTRACTS_INSECURE_UNKEYED_LEDGER=1``
says that an unkeyed ledger is wanted (tests, or a ledger created unkeyed before keyed became the default:
a chain cannot switch modes). Every writer of one ledger must use the same mode: ``Ledger.append`` refuses
to extend a head that does not verify with its own key, so a worker that lacks the key fails instead of
forking the chain. This module is framework-free.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from audit.ledger import Ledger
from core.errors import KeyMaterialError
from core.keyfiles import check_private_file, write_private_file
from core.settings import Settings, load_settings

LEDGER_KEY_ENV = "CONTRACT_EXTRACTS_LEDGER_KEY"
LEDGER_KEY_FILE_ENV = "CONTRACT_EXTRACTS_LEDGER_KEY_FILE"
UNKEYED_ENV = "CONTRACT_EXTRACTS_INSECURE_UNKEYED_LEDGER"
DEFAULT_KEY_FILE = Path("keys") / "ledger.key"
"""Relative to ``CONTRACT_EXTRACTS_HOME``: used when no key is configured and the file exists."""
log = logging.getLogger(__name__)

LEDGER_CONNECTION_ID = "contract_extracts_ledger"
"""Airflow connection id deployments use for the ledger database (the Airflow glue maps it to the URL)."""


def _parse(text: str, source: str) -> bytes:
    value = text.strip()
    try:
        key = bytes.fromhex(value)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise KeyMaterialError(f"ledger key from {source} is malformed: expected 64 hex characters (32 bytes). "
                               "Fix: make one with 'contract-extracts audit new-key FILE'")
    return key


def default_key_file(settings: Settings) -> Path:
    return settings.home / DEFAULT_KEY_FILE


def unkeyed_allowed(env: dict[str, str] | None = None) -> bool:
    value = (os.environ if env is None else env).get(UNKEYED_ENV, "")
    return value.strip().lower() in ("1", "true", "yes")


def load_ledger_key(settings: Settings | None = None, env: dict[str, str] | None = None) -> bytes | None:
    """The ledger key (environment, key file, default key file); None only when unkeyed is chosen explicitly."""
    env = dict(os.environ if env is None else env)
    if env.get(LEDGER_KEY_ENV):
        return _parse(env[LEDGER_KEY_ENV], f"environment variable {LEDGER_KEY_ENV}")
    settings = settings or load_settings(env)
    path = settings.ledger_key_file
    if path is None and default_key_file(settings).exists():
        path = default_key_file(settings)
    if path is None:
        if unkeyed_allowed(env):
            log.warning("the audit ledger is UNKEYED (%s is set): anyone who can write to its database can "
                        "rewrite it and recompute the chain; only signed receipts and checkpoints would show it",
                        UNKEYED_ENV)
            return None
        raise KeyMaterialError(
            "no ledger key is configured, and the audit ledger is keyed by default (HMAC-SHA256) so that "
            "someone who can write to its database cannot rewrite it unnoticed. Fix: make one with "
            f"'contract-extracts audit new-key {default_key_file(settings)}' (found there automatically), or set "
            f"{LEDGER_KEY_FILE_ENV} or {LEDGER_KEY_ENV} (every writer and verifier needs the same key); for a "
            f"ledger that is deliberately unkeyed set {UNKEYED_ENV}=1")
    check_private_file(path, "ledger key")
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        raise KeyMaterialError(f"ledger key file {path} cannot be read as text") from None
    return _parse(text, f"file {path}")


def ensure_ledger_key(settings: Settings, env: dict[str, str] | None = None) -> Path | None:
    """Make the default key file when no key is configured at all (``make demo``); return the file made."""
    env = dict(os.environ if env is None else env)
    if env.get(LEDGER_KEY_ENV) or settings.ledger_key_file is not None or default_key_file(settings).exists():
        return None
    path = default_key_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    new_ledger_key_file(path)
    return path


def new_ledger_key_file(path: Path) -> None:
    """Write a new random ledger key (64 hex characters) to ``path`` with mode 0600; never overwrite."""
    write_private_file(path, secrets.token_bytes(32).hex().encode("ascii") + b"\n")


def open_ledger(settings: Settings | None = None) -> Ledger:
    """The configured ledger: ``settings.ledger_url``, keyed when a ledger key is configured."""
    settings = settings or load_settings()
    return Ledger(settings.ledger_url, key=load_ledger_key(settings))
