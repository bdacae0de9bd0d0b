"""Recipients and identities: age X25519, OpenSSH keys (as age recipients, through pyrage.ssh), OpenPGP.

Fingerprints written to the manifest and the ledger:

- age:     ``age:`` + first 32 hex of SHA-256 of the ``age1…`` string (unchanged from v1);
- ssh:     ``ssh:SHA256:…``, the fingerprint ``ssh-keygen -lf key.pub`` prints;
- openpgp: ``openpgp:`` + the primary key's full fingerprint (what the contract pins).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyrage

from core.errors import ConfigError, KeyMaterialError, VerificationError
from core.keyfiles import write_private_file

if TYPE_CHECKING:  # types only: the recipient side (verify) loads no contract model
    from contracts.delivery import Recipient

_SSH_PRIVATE_HEADERS = ("-----BEGIN OPENSSH PRIVATE KEY-----", "-----BEGIN RSA PRIVATE KEY-----")


def recipient_fingerprint(public_key: str) -> str:
    """Fingerprint of an age X25519 public key (format v1)."""
    return "age:" + hashlib.sha256(public_key.encode("ascii")).hexdigest()[:32]


def ssh_fingerprint(public_line: str) -> str:
    """``ssh:SHA256:<base64>`` as ``ssh-keygen -l`` prints it (without padding)."""
    blob = base64.b64decode(public_line.split()[1])
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")
    return f"ssh:SHA256:{digest}"


def fingerprint_of(recipient: Recipient) -> str:
    """The fingerprint of a contract recipient, for the manifest and the ledger."""
    if recipient.kind == "age":
        return recipient_fingerprint(recipient.age or "")
    if recipient.kind == "ssh":
        return ssh_fingerprint(recipient.ssh or "")
    return f"openpgp:{recipient.fingerprint}"


def manifest_recipients(recipients: Iterable[Recipient]) -> list[dict[str, str]]:
    return [{"name": r.name, "fingerprint": fingerprint_of(r)} for r in recipients]


def package_format(recipients: Iterable[Recipient]) -> str:
    """``age`` or ``openpgp``: the one format every recipient of a contract can read."""
    formats = {r.format for r in recipients}
    if len(formats) != 1:
        raise ConfigError("mixes age/ssh recipients with OpenPGP recipients; one delivery is one package in "
                          "one format", key="recipients",
                          fix="give every recipient an age or ssh key, or every recipient an OpenPGP key "
                              "(split the contract if two formats are really needed)")
    return formats.pop()


def new_identity_file(path: Path) -> str:
    """Write an age identity file (same layout as age-keygen) with mode 0600; return the public key."""
    identity = pyrage.x25519.Identity.generate()
    public = str(identity.to_public())
    created = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    text = f"# created: {created}\n# public key: {public}\n{identity}\n"
    write_private_file(path, text.encode("ascii"))
    return public


def load_identities(path: Path) -> list[Any]:
    """Read an age identity file (age-keygen format) or an unencrypted OpenSSH private key (ed25519, rsa)."""
    try:
        raw = path.read_bytes()
        text = raw.decode("ascii")
    except (OSError, UnicodeDecodeError):
        raise VerificationError(f"identity file {path} cannot be read") from None
    if text.lstrip().startswith(_SSH_PRIVATE_HEADERS):
        try:
            return [pyrage.ssh.Identity.from_buffer(raw)]
        except Exception:
            raise VerificationError(f"identity file {path} is an SSH private key that age cannot use "
                                    "(passphrase-protected keys are not supported: decrypt with the age "
                                    "CLI, which asks for the passphrase)") from None
    identities: list[Any] = []
    for line in text.splitlines():
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


def parse_recipients(keys: list[str]) -> list[Any]:
    """age recipients from key strings: ``age1…`` (X25519) or OpenSSH public key lines."""
    out: list[Any] = []
    for key in keys:
        try:
            if key.startswith("ssh-"):
                out.append(pyrage.ssh.Recipient.from_str(key))
            else:
                out.append(pyrage.x25519.Recipient.from_str(key))
        except Exception:
            raise KeyMaterialError("a recipient key is not a valid age X25519 or OpenSSH public key") from None
    return out


def age_recipient_keys(recipients: Iterable[Recipient]) -> list[str]:
    return [(r.age if r.kind == "age" else r.ssh) or "" for r in recipients if r.format == "age"]
