"""Master key loading and contract key derivation (format v1, see docs/formats.md).

The master key (32 random bytes, stored as 64 hex characters) comes from an environment
variable or a file readable by its owner only. It is never logged: ``MasterKey.__repr__`` hides it
and every error names the source, never the key.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from contract_extracts.core.errors import KeyError_

MASTER_KEY_ENV = "CONTRACT_EXTRACTS_MASTER_KEY"
MASTER_KEY_FILE_ENV = "CONTRACT_EXTRACTS_MASTER_KEY_FILE"
FORMAT = "contract-extracts/v1"
Purpose = Literal["pseudonym", "sample", "dateshift"]
PURPOSES: tuple[str, ...] = ("pseudonym", "sample", "dateshift")


@dataclass(frozen=True)
class MasterKey:
    secret: bytes = field(repr=False)
    source: str

    def __post_init__(self) -> None:
        if len(self.secret) != 32:
            raise KeyError_(f"master key from {self.source} must be 32 bytes")

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
    value = text.strip()
    if len(value) != 64:
        raise KeyError_(f"master key from {source} is malformed: expected 64 hex characters "
                        f"(32 bytes), got {len(value)} characters. Fix: generate one with "
                        "'contract-extracts keys new-master FILE'")
    try:
        secret = bytes.fromhex(value)
    except ValueError:
        raise KeyError_(f"master key from {source} is malformed: not hexadecimal. Fix: generate one "
                        "with 'contract-extracts keys new-master FILE'") from None
    return MasterKey(secret=secret, source=source)


def check_private_file(path: Path, what: str) -> None:
    """Refuse key files that group or others can read or write."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise KeyError_(f"{what} file {path} does not exist") from None
    if not stat.S_ISREG(st.st_mode):
        raise KeyError_(f"{what} file {path} is not a regular file")
    if st.st_mode & 0o077:
        raise KeyError_(f"{what} file {path} has permissions {stat.S_IMODE(st.st_mode):04o}; "
                        f"it must be readable by its owner only. Fix: chmod 600 {path}")


def load_master_key_file(path: Path) -> MasterKey:
    check_private_file(path, "master key")
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        raise KeyError_(f"master key file {path} cannot be read as text") from None
    return parse_master_key(text, f"file {path}")


def load_master_key(env: dict[str, str] | None = None) -> MasterKey:
    """From CONTRACT_EXTRACTS_MASTER_KEY (hex) or CONTRACT_EXTRACTS_MASTER_KEY_FILE (0600 file)."""
    env = os.environ if env is None else env
    if env.get(MASTER_KEY_ENV):
        return parse_master_key(env[MASTER_KEY_ENV], f"environment variable {MASTER_KEY_ENV}")
    if env.get(MASTER_KEY_FILE_ENV):
        return load_master_key_file(Path(env[MASTER_KEY_FILE_ENV]))
    raise KeyError_(f"no master key configured. Fix: set {MASTER_KEY_FILE_ENV} to a 0600 file made with "
                    f"'contract-extracts keys new-master FILE' (or {MASTER_KEY_ENV} from a secrets store)")


def write_private_file(path: Path, content: bytes) -> None:
    """Create ``path`` with mode 0600 (never world-readable, not even briefly); refuse to overwrite."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyError_(f"{path} already exists; refusing to overwrite a key file. Fix: choose a new "
                        "file name or move the old file away deliberately") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(content)
        fh.flush()
        os.fsync(fh.fileno())


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

    @classmethod
    def derive(cls, master: MasterKey, contract_id: str, delivery_id: str | None) -> ContractKeys:
        return cls(
            key_id=master.key_id,
            pseudonym=derive_key(master.secret, "pseudonym", contract_id, delivery_id),
            sample=derive_key(master.secret, "sample", contract_id, delivery_id),
            dateshift=derive_key(master.secret, "dateshift", contract_id, delivery_id),
        )
