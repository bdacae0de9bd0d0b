"""Acknowledgements: a recipient's signed statement that they received and verified one delivery.

``contract-extracts verify PACKAGE --acknowledge`` writes, after every check has passed, a short text
statement and its OpenSSH signature (SSHSIG, namespace ``contract-extracts-acknowledgement``: what
``ssh-keygen -Y sign -n contract-extracts-acknowledgement -f KEY FILE`` writes to ``FILE.sig``), made
with the recipient's SSH key, the one pinned as a recipient in the contract (and so listed in the
manifest as ``ssh:SHA256:…``). The data owner imports it with ``contract-extracts audit acknowledge
FILE`` (``audit.acknowledgements``), which checks the signature against that pinned key and records it
in the ledger against the delivery.

The statement (UTF-8, ``\\n`` line ends, a final newline, fields in this order)::

    contract-extracts acknowledgement v1
    contract: C-2026-017
    delivery: 20261125T020000Z-1a2b3c4d
    package: C-2026-017_20261125T020000Z-1a2b3c4d.tar.age
    package-sha256: <64 hex: the encrypted file as received>
    manifest-sha256: <64 hex: manifest.json inside it>
    recipient: acme-lead
    recipient-key: ssh:SHA256:<base64>
    sender-key: SHA256:<base64: the key that signed the manifest>
    verified-at: 2026-11-25T09:12:03+00:00

It holds no data value: names, hashes, fingerprints and a time.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from core import sshsig
from core.errors import KeyMaterialError, VerificationError

NAMESPACE = "contract-extracts-acknowledgement"
HEADER = "contract-extracts acknowledgement v1"
MAX_STATEMENT_BYTES = 4096
_FIELDS = ("contract", "delivery", "package", "package-sha256", "manifest-sha256", "recipient", "recipient-key",
           "sender-key", "verified-at")
_HEX64 = r"[0-9a-f]{64}"
_FINGERPRINT = r"SHA256:[A-Za-z0-9+/]{43}"
_PATTERNS = {
    "contract": r"[A-Z][A-Z0-9-]{0,63}",
    "delivery": r"[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}",
    "package": r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}",
    "package-sha256": _HEX64,
    "manifest-sha256": _HEX64,
    "recipient": r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}",
    "recipient-key": "ssh:" + _FINGERPRINT,
    "sender-key": _FINGERPRINT,
    "verified-at": r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\+00:00",
}


@dataclass(frozen=True)
class Acknowledgement:
    contract: str
    delivery: str
    package: str
    package_sha256: str
    manifest_sha256: str
    recipient: str
    recipient_key: str
    sender_key: str
    verified_at: str

    def values(self) -> dict[str, str]:
        return {"contract": self.contract, "delivery": self.delivery, "package": self.package,
                "package-sha256": self.package_sha256, "manifest-sha256": self.manifest_sha256,
                "recipient": self.recipient, "recipient-key": self.recipient_key, "sender-key": self.sender_key,
                "verified-at": self.verified_at}

    def statement(self) -> str:
        """The exact text that is signed."""
        values = self.values()
        for name in _FIELDS:
            if not re.fullmatch(_PATTERNS[name], values[name]):
                raise VerificationError(f"acknowledgement field {name} is malformed")
        return HEADER + "\n" + "".join(f"{name}: {values[name]}\n" for name in _FIELDS)

    def verified_time(self) -> dt.datetime:
        return dt.datetime.fromisoformat(self.verified_at)


def parse_statement(text: str) -> Acknowledgement:
    """Read a statement; anything but the exact canonical form is refused (what is signed is what is read)."""
    if len(text.encode("utf-8")) > MAX_STATEMENT_BYTES:
        raise VerificationError("not an acknowledgement: too long")
    lines = text.split("\n")
    if len(lines) != len(_FIELDS) + 2 or lines[0] != HEADER or lines[-1] != "":
        raise VerificationError(f"not an acknowledgement: expected '{HEADER}' and {len(_FIELDS)} fields, one per "
                                "line, ending with a newline")
    values: dict[str, str] = {}
    for name, line in zip(_FIELDS, lines[1:-1], strict=True):
        prefix = f"{name}: "
        if not line.startswith(prefix):
            raise VerificationError(f"not an acknowledgement: expected the field {name!r} here")
        value = line[len(prefix):]
        if not re.fullmatch(_PATTERNS[name], value):
            raise VerificationError(f"acknowledgement field {name} is malformed")
        values[name] = value
    ack = Acknowledgement(contract=values["contract"], delivery=values["delivery"], package=values["package"],
                          package_sha256=values["package-sha256"], manifest_sha256=values["manifest-sha256"],
                          recipient=values["recipient"], recipient_key=values["recipient-key"],
                          sender_key=values["sender-key"], verified_at=values["verified-at"])
    try:
        ack.verified_time()
    except ValueError:
        raise VerificationError("acknowledgement field verified-at is not a valid time") from None
    return ack


def recipient_key_fingerprint(public: Ed25519PublicKey) -> str:
    """How the manifest and the ledger name an SSH recipient key: ``ssh:SHA256:…``."""
    return "ssh:" + sshsig.fingerprint(public)


def load_ack_key(path: Path) -> Ed25519PrivateKey:
    """The recipient's unencrypted Ed25519 SSH private key (OpenSSH or PEM) that signs acknowledgements."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise KeyMaterialError(f"key file {path} cannot be read ({exc.strerror})") from None
    loader = serialization.load_ssh_private_key if b"OPENSSH PRIVATE KEY" in raw \
        else serialization.load_pem_private_key
    try:
        key = loader(raw, password=None)
    except TypeError:
        raise KeyMaterialError(f"key file {path} is passphrase-protected. Fix: write the statement with "
                               f"--ack-unsigned and sign it with 'ssh-keygen -Y sign -n {NAMESPACE} -f {path} "
                               "FILE' (it writes FILE.sig)") from None
    except (ValueError, OSError):
        raise KeyMaterialError(f"key file {path} is not an SSH or PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyMaterialError(f"key file {path} is not an Ed25519 key; acknowledgements are signed with "
                               "Ed25519 SSH keys (ssh-keygen -t ed25519)")
    return key


def sign(ack: Acknowledgement, key: Ed25519PrivateKey) -> str:
    """The armoured SSHSIG signature of the statement (byte-compatible with ``ssh-keygen -Y sign``)."""
    return sshsig.sign(key, ack.statement().encode("utf-8"), NAMESPACE)


def _create(path: Path, text: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise VerificationError(f"{path} already exists; an acknowledgement never overwrites a file. Fix: "
                                "choose another name with --ack-out") from None
    except OSError as exc:
        raise VerificationError(f"cannot create {path} ({exc.strerror})") from None
    with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def write_acknowledgement(ack: Acknowledgement, out: Path, key: Ed25519PrivateKey | None) -> Path | None:
    """Write the statement to ``out`` and, with ``key``, its signature to ``out.sig``; return the latter."""
    signature = sign(ack, key) if key is not None else None
    _create(out, ack.statement())
    if signature is None:
        return None
    sig_path = out.with_name(out.name + ".sig")
    try:
        _create(sig_path, signature)
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    return sig_path


def verify_acknowledgement(statement: str, signature: str) -> tuple[Acknowledgement, Ed25519PublicKey]:
    """Parse the statement and check its signature by the key it names; return both.

    The signature carries its signer's public key; its fingerprint must be the statement's
    ``recipient-key``. Whether that key is a recipient of the delivery is the caller's check (the ledger).
    """
    ack = parse_statement(statement)
    signer = sshsig.signer_public_key(signature)
    named = recipient_key_fingerprint(signer)
    if named != ack.recipient_key:
        raise VerificationError(f"the acknowledgement was signed by key {named}, not by the recipient key it "
                                f"names ({ack.recipient_key})")
    sshsig.verify(signature, statement.encode("utf-8"), signer, NAMESPACE)
    return ack, signer
