"""Master keys, key sources and contract key derivation (format v1, see docs/formats.md).

A master key (32 random bytes, stored as 64 hex characters) comes from a pluggable ``KeySource``:
an environment variable, files readable by their owner only, or (in ``airflow_glue.secrets``) an
Airflow Variable or Connection, so any configured secrets backend works. A source may hold several
keys, each known by its key id; a ``Keyring`` picks the contract's pinned key or the current one.
Keys are never logged: ``MasterKey.__repr__`` hides them and every error names the source, never
the key.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from core.errors import KeyMaterialError
from core.keyfiles import check_private_file, write_private_file

MASTER_KEY_ENV = "CONTRACT_EXTRACTS_MASTER_KEY"
MASTER_KEY_FILE_ENV = "CONTRACT_EXTRACTS_MASTER_KEY_FILE"
CURRENT_KEY_ID_ENV = "CONTRACT_EXTRACTS_MASTER_KEY_ID"
FORMAT = "contract-extracts/v1"
Purpose = Literal["pseudonym", "sample", "dateshift"]
PURPOSES: tuple[str, ...] = ("pseudonym", "sample", "dateshift", "order")


@dataclass(frozen=True)
class MasterKey:
    secret: bytes = field(repr=False)
    source: str

    def __post_init__(self) -> None:
        if len(self.secret) != 32:
            raise KeyMaterialError(f"master key from {self.source} must be 32 bytes")

    @property
    def key_id(self) -> str:
        return key_id(self.secret)


def key_id(master: bytes) -> str:
    """First 16 hex characters of HMAC-SHA256(master, "key-id")."""
    return hmac.new(master, b"key-id", hashlib.sha256).hexdigest()[:16]


def derive_key(master: bytes, purpose: str, contract_id: str, delivery_id: str | None = None) -> bytes:
    """HKDF-SHA256(ikm=master, salt=None, info="contract-extracts/v1/<purpose>/<contract>[/<delivery>]")."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown key purpose {purpose!r}")
    info = f"{FORMAT}/{purpose}/{contract_id}"
    if delivery_id is not None:
        info += f"/{delivery_id}"
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info.encode("utf-8")).derive(master)


def parse_master_key(text: str, source: str) -> MasterKey:
    """Exactly one master key (64 hex characters, surrounding white space ignored)."""
    value = text.strip()
    if len(value) != 64:
        raise KeyMaterialError(f"master key from {source} is malformed: expected 64 hex characters "
                               f"(32 bytes), got {len(value)} characters. Fix: generate one with "
                               "'contract-extracts keys new-master FILE'")
    try:
        secret = bytes.fromhex(value)
    except ValueError:
        raise KeyMaterialError(f"master key from {source} is malformed: not hexadecimal. Fix: generate one "
                               "with 'contract-extracts keys new-master FILE'") from None
    return MasterKey(secret=secret, source=source)


def parse_master_keys(text: str, source: str) -> list[MasterKey]:
    """One or more master keys: 64-hex tokens separated by white space or commas; '#' starts a comment.

    Errors name the source and the position of the bad key (1, 2, …), never its characters.
    """
    tokens: list[str] = []
    for line in text.splitlines():
        tokens += [t for t in re.split(r"[\s,]+", line.split("#", 1)[0]) if t]
    if not tokens:
        raise KeyMaterialError(f"{source} holds no master key. Fix: generate one with "
                               "'contract-extracts keys new-master FILE'")
    keys: list[MasterKey] = []
    for n, token in enumerate(tokens, 1):
        where = source if len(tokens) == 1 else f"{source} (key {n} of {len(tokens)})"
        key = parse_master_key(token, where)
        if all(k.secret != key.secret for k in keys):
            keys.append(key)
    return keys


def _read_key_file(path: Path) -> str:
    check_private_file(path, "master key")
    try:
        return path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        raise KeyMaterialError(f"master key file {path} cannot be read as text") from None


def load_master_key_file(path: Path) -> MasterKey:
    """The one master key of a 0600 file (``keys new-master`` writes such files)."""
    return parse_master_key(_read_key_file(path), f"file {path}")


# ---- keyrings and key sources ---------------------------------------------------------------


@dataclass(frozen=True)
class Keyring:
    """The master keys a process can use, each known by its key id, and which one is current.

    New deliveries use the contract's pinned ``key_id`` if it has one, else the current key. With one
    key, it is current; with several, the current one must be named (``CONTRACT_EXTRACTS_MASTER_KEY_ID``
    or the source's own setting), otherwise only pinned contracts can run.
    """

    keys: tuple[MasterKey, ...]
    source: str
    current_id: str | None = None

    def __post_init__(self) -> None:
        if not self.keys:
            raise KeyMaterialError(f"{self.source} holds no master key")
        if self.current_id is not None and self.current_id not in self.ids:
            raise KeyMaterialError(f"the current key id {self.current_id} is not among the master keys of "
                                   f"{self.source} (key ids: {', '.join(self.ids)}). Fix: set "
                                   f"{CURRENT_KEY_ID_ENV} to one of them, or add that key")

    @property
    def ids(self) -> list[str]:
        return [k.key_id for k in self.keys]

    def get(self, key_id: str) -> MasterKey:
        for key in self.keys:
            if key.key_id == key_id:
                return key
        raise KeyMaterialError(f"master key {key_id} is not available from {self.source} (key ids there: "
                               f"{', '.join(self.ids)}). Fix: add the key with that id to the key source, or "
                               "change the contract's key_id (pseudonyms then change, see docs/masking.md)")

    @property
    def current(self) -> MasterKey:
        if self.current_id is not None:
            return self.get(self.current_id)
        if len(self.keys) == 1:
            return self.keys[0]
        raise KeyMaterialError(f"{self.source} holds {len(self.keys)} master keys ({', '.join(self.ids)}) and none "
                               f"is named current. Fix: set {CURRENT_KEY_ID_ENV} to the key id new deliveries use, "
                               "or pin key_id in the contract")

    def select(self, pinned: str | None) -> MasterKey:
        """The key for a delivery: the contract's pinned key id, else the current key."""
        return self.get(pinned) if pinned else self.current


class KeySource(Protocol):
    """Where master keys come from. ``load`` raises KeyMaterialError naming the source, never a key."""

    @property
    def description(self) -> str:
        """What people are told the source is (a file, a variable): never a key."""
        ...

    def load(self) -> Keyring: ...


def current_key_id_from(env: Mapping[str, str]) -> str | None:
    value = (env.get(CURRENT_KEY_ID_ENV) or "").strip().lower()
    if value and not re.fullmatch(r"[0-9a-f]{16}", value):
        raise KeyMaterialError(f"{CURRENT_KEY_ID_ENV} is not a key id (16 hex characters, as printed by "
                               "'contract-extracts keys id')")
    return value or None


@dataclass(frozen=True)
class EnvKeySource:
    """Hex master key(s) in an environment variable (e.g. injected from a secrets store)."""

    env: Mapping[str, str] = field(default_factory=lambda: os.environ, repr=False)
    variable: str = MASTER_KEY_ENV

    @property
    def description(self) -> str:
        return f"environment variable {self.variable}"

    def load(self) -> Keyring:
        text = self.env.get(self.variable)
        if not text:
            raise KeyMaterialError(f"{self.description} is not set. Fix: set it to a master key (64 hex characters)")
        return Keyring(tuple(parse_master_keys(text, self.description)), self.description,
                       current_key_id_from(self.env))


@dataclass(frozen=True)
class FileKeySource:
    """One or more 0600 files, each holding one or more hex master keys (one per line)."""

    paths: tuple[Path, ...]
    env: Mapping[str, str] = field(default_factory=lambda: os.environ, repr=False)

    @property
    def description(self) -> str:
        return ("file " if len(self.paths) == 1 else "files ") + ", ".join(str(p) for p in self.paths)

    def load(self) -> Keyring:
        keys: list[MasterKey] = []
        for path in self.paths:
            for key in parse_master_keys(_read_key_file(path), f"file {path}"):
                if all(k.secret != key.secret for k in keys):
                    keys.append(key)
        return Keyring(tuple(keys), self.description, current_key_id_from(self.env))


@dataclass(frozen=True)
class FixedKeySource:
    """Keys already in memory (tests, tools)."""

    keys: tuple[MasterKey, ...]
    current_id: str | None = None
    description: str = "keys given in memory"

    def load(self) -> Keyring:
        return Keyring(self.keys, self.description, self.current_id)


@dataclass(frozen=True)
class MissingKeySource:
    description: str = "no key source"

    def load(self) -> Keyring:
        raise KeyMaterialError(f"no master key configured. Fix: set {MASTER_KEY_FILE_ENV} to a 0600 file made with "
                               f"'contract-extracts keys new-master FILE' (or {MASTER_KEY_ENV} from a secrets store; "
                               "under Airflow also a Variable or Connection, see docs/masking.md)")


def default_key_source(env: Mapping[str, str] | None = None) -> KeySource:
    """CONTRACT_EXTRACTS_MASTER_KEY if set, else CONTRACT_EXTRACTS_MASTER_KEY_FILE (paths joined by ':')."""
    env = os.environ if env is None else env
    if env.get(MASTER_KEY_ENV):
        return EnvKeySource(env)
    if env.get(MASTER_KEY_FILE_ENV):
        paths = tuple(Path(p) for p in env[MASTER_KEY_FILE_ENV].split(os.pathsep) if p)
        return FileKeySource(paths, env)
    return MissingKeySource()


def load_keyring(env: Mapping[str, str] | None = None) -> Keyring:
    return default_key_source(env).load()


def load_master_key(env: Mapping[str, str] | None = None) -> MasterKey:
    """The current master key from CONTRACT_EXTRACTS_MASTER_KEY (hex) or CONTRACT_EXTRACTS_MASTER_KEY_FILE."""
    return load_keyring(env).current


def resolve_master_key(source: KeySource | None, pinned: str | None = None) -> MasterKey:
    """The master key of a delivery: from ``source`` (default: the environment), pinned id or current."""
    return (source or default_key_source()).load().select(pinned)


def new_master_key_file(path: Path) -> MasterKey:
    secret = secrets.token_bytes(32)
    write_private_file(path, secret.hex().encode("ascii") + b"\n")
    return MasterKey(secret=secret, source=f"file {path}")


@dataclass(frozen=True)
class ContractKeys:
    """The per-purpose keys of one contract (and one delivery under ``linkage: delivery``)."""

    key_id: str
    pseudonym: bytes = field(repr=False)
    sample: bytes = field(repr=False)
    dateshift: bytes = field(repr=False)
    order: bytes = field(repr=False)  # the delivered row order (masking.row_order)

    @classmethod
    def derive(cls, master: MasterKey, contract_id: str, delivery_id: str | None) -> ContractKeys:
        return cls(
            key_id=master.key_id,
            pseudonym=derive_key(master.secret, "pseudonym", contract_id, delivery_id),
            sample=derive_key(master.secret, "sample", contract_id, delivery_id),
            dateshift=derive_key(master.secret, "dateshift", contract_id, delivery_id),
            order=derive_key(master.secret, "order", contract_id, delivery_id),
        )

    @classmethod
    def for_delivery(cls, master: MasterKey, contract_id: str, linkage: str, delivery_id: str) -> ContractKeys:
        """The keys one delivery masks with.

        ``linkage: contract``: every key is the contract's (stable pseudonyms, offsets and sample).
        ``linkage: delivery``: pseudonyms, date-shift offsets and the row order use the delivery's keys (fresh
        every delivery), but the sample keeps the contract's sample key, so that the contractor receives the
        same people every night (minimum data: fresh samples would reach ever more people over time).
        Both are v1 keys of design.md; which one the sample uses is documented in docs/masking.md.
        """
        if linkage == "contract":
            return cls.derive(master, contract_id, None)
        return cls(
            key_id=master.key_id,
            pseudonym=derive_key(master.secret, "pseudonym", contract_id, delivery_id),
            sample=derive_key(master.secret, "sample", contract_id, None),
            dateshift=derive_key(master.secret, "dateshift", contract_id, delivery_id),
            order=derive_key(master.secret, "order", contract_id, delivery_id),
        )
