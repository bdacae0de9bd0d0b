"""The ledger key (keyed mode) and opening the configured ledger.

In keyed mode every record's hash is HMAC-SHA256 with the ledger key instead of SHA-256, so someone
who can write to the database but does not hold the key cannot rewrite history and recompute a chain
that verifies. The key is 32 random bytes stored as 64 hex characters, read like the master key:

- ``CONTRACT_EXTRACTS_LEDGER_KEY`` (hex, e.g. injected from a secrets backend), or
- ``CONTRACT_EXTRACTS_LEDGER_KEY_FILE`` (``Settings.ledger_key_file``), a file readable by its owner only.

Neither set means unkeyed mode. Every writer of one ledger must use the same mode: ``Ledger.append``
refuses to extend a head that does not verify with its own key, so a worker that lacks the key fails
instead of forking the chain. This module is framework-free.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from audit.ledger import Ledger
from core.errors import KeyError_
from core.keyfiles import check_private_file, write_private_file
from core.settings import Settings, load_settings

LEDGER_KEY_ENV = "CONTRACT_EXTRACTS_LEDGER_KEY"
LEDGER_KEY_FILE_ENV = "CONTRACT_EXTRACTS_LEDGER_KEY_FILE"
LEDGER_CONNECTION_ID = "contract_extracts_ledger"
"""Airflow connection id deployments use for the ledger database (the Airflow glue maps it to the URL)."""


def _parse(text: str, source: str) -> bytes:
    value = text.strip()
    try:
        key = bytes.fromhex(value)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise KeyError_(f"ledger key from {source} is malformed: expected 64 hex characters (32 bytes). Fix: make "
                        "one with 'contract-extracts audit new-key FILE'")
    return key


def load_ledger_key(settings: Settings | None = None, env: dict[str, str] | None = None) -> bytes | None:
    """The ledger key from the environment or the settings' key file, or None (unkeyed mode)."""
    env = dict(os.environ if env is None else env)
    if env.get(LEDGER_KEY_ENV):
        return _parse(env[LEDGER_KEY_ENV], f"environment variable {LEDGER_KEY_ENV}")
    settings = settings or load_settings(env)
    path = settings.ledger_key_file
    if path is None:
        return None
    check_private_file(path, "ledger key")
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        raise KeyError_(f"ledger key file {path} cannot be read as text") from None
    return _parse(text, f"file {path}")


def new_ledger_key_file(path: Path) -> None:
    """Write a new random ledger key (64 hex characters) to ``path`` with mode 0600; never overwrite."""
    write_private_file(path, secrets.token_bytes(32).hex().encode("ascii") + b"\n")


def open_ledger(settings: Settings | None = None) -> Ledger:
    """The configured ledger: ``settings.ledger_url``, keyed when a ledger key is configured."""
    settings = settings or load_settings()
    return Ledger(settings.ledger_url, key=load_ledger_key(settings))
