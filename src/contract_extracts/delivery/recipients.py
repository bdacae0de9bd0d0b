"""age recipients and identities (X25519), through pyrage."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import pyrage

from contract_extracts.core.errors import KeyError_, VerificationError
from contract_extracts.masking.keys import write_private_file


def recipient_fingerprint(public_key: str) -> str:
    return "age:" + hashlib.sha256(public_key.encode("ascii")).hexdigest()[:32]


def new_identity_file(path: Path) -> str:
    """Write an age identity file (same layout as age-keygen) with mode 0600; return the public key."""
    identity = pyrage.x25519.Identity.generate()
    public = str(identity.to_public())
    created = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    text = f"# created: {created}\n# public key: {public}\n{identity}\n"
    write_private_file(path, text.encode("ascii"))
    return public


def load_identities(path: Path) -> list:
    """Read an age identity file (age-keygen format: comments and AGE-SECRET-KEY-1… lines)."""
    try:
        lines = path.read_text(encoding="ascii").splitlines()
    except (OSError, UnicodeDecodeError):
        raise VerificationError(f"identity file {path} cannot be read") from None
    identities = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            identities.append(pyrage.x25519.Identity.from_str(line))
        except Exception:
            raise VerificationError(f"identity file {path} holds a line that is not an age identity") from None
    if not identities:
        raise VerificationError(f"identity file {path} holds no age identity")
    return identities


def parse_recipients(keys: list[str]) -> list:
    try:
        return [pyrage.x25519.Recipient.from_str(k) for k in keys]
    except Exception:
        raise KeyError_("a recipient key is not a valid age X25519 public key") from None
