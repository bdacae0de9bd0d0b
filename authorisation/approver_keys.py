"""Approver keys and their OpenSSH signatures (SSHSIG; the framing lives in ``core.sshsig``).

An approval signature is an SSHSIG signature (OpenSSH ``PROTOCOL.sshsig``): exactly what
``ssh-keygen -Y sign -n contract-extracts-approval -f KEY FILE`` writes, and what
``ssh-keygen -Y verify`` checks. This module only *frames* the bytes (SSH wire strings, the armour);
signing and verifying are ``cryptography``'s Ed25519, hashing is ``hashlib``'s SHA-512.

Only Ed25519 keys are accepted (``ssh-ed25519``, or an Ed25519 PEM key): one algorithm, no
parameter choices, deterministic signatures.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from core import sshsig
from core.errors import KeyMaterialError
from core.keyfiles import check_private_file, write_private_file

__all__ = [
    "APPROVAL_NAMESPACE",
    "ApproverKey",
    "load_private_key",
    "new_approver_key",
    "parse_public_key",
    "sign",
    "verify",
]

APPROVAL_NAMESPACE = "contract-extracts-approval"


@dataclass(frozen=True)
class ApproverKey:
    """An approver's Ed25519 public key, with the forms people and OpenSSH use."""

    public: Ed25519PublicKey

    @property
    def raw(self) -> bytes:
        return self.public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    @property
    def blob(self) -> bytes:
        """SSH wire format: string "ssh-ed25519", string key (what SSHSIG embeds)."""
        return sshsig.key_blob(self.public)

    @property
    def openssh(self) -> str:
        """``ssh-ed25519 AAAA…`` without a comment (the form the registry hash covers)."""
        return sshsig.openssh_line(self.public)

    @property
    def fingerprint(self) -> str:
        """``SHA256:…`` exactly as ``ssh-keygen -lf key.pub`` prints it."""
        return "SHA256:" + base64.b64encode(hashlib.sha256(self.blob).digest()).decode("ascii").rstrip("=")

    def __repr__(self) -> str:
        return f"ApproverKey({self.fingerprint})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ApproverKey) and hmac.compare_digest(self.raw, other.raw)

    def __hash__(self) -> int:
        return hash(self.raw)


def parse_public_key(text: str, where: str) -> ApproverKey:
    """An Ed25519 public key from an OpenSSH line (``ssh-ed25519 AAAA… comment``) or a PEM block."""
    value = text.strip()
    try:
        if value.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(value.encode("ascii"))
        else:
            parts = value.split()
            if len(parts) < 2:
                raise ValueError
            key = serialization.load_ssh_public_key(f"{parts[0]} {parts[1]}".encode("ascii"))
    except (ValueError, UnicodeEncodeError, UnsupportedAlgorithm):
        raise KeyMaterialError(f"{where}: not an OpenSSH public key line ('ssh-ed25519 AAAA…') or a PEM public key. "
                               "Fix: paste the content of the approver's .pub file") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyMaterialError(f"{where}: only Ed25519 keys are accepted for approvals. Fix: the approver makes one "
                               "with 'ssh-keygen -t ed25519' (or 'contract-extracts approvers new-key')")
    return ApproverKey(key)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """An approver's private key file: OpenSSH (``ssh-keygen -t ed25519``) or PEM PKCS#8, mode 0600."""
    check_private_file(path, "approver key")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyMaterialError(f"approver key file {path} cannot be read ({exc.strerror})") from None
    key: PrivateKeyTypes
    try:
        if b"-----BEGIN OPENSSH PRIVATE KEY-----" in data:
            key = serialization.load_ssh_private_key(data, password=None)
        else:
            key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise KeyMaterialError(f"approver key file {path} is protected by a passphrase. Fix: sign with ssh-keygen "
                               "instead: 'contract-extracts approve … --print-statement > approval.txt', then "
                               f"'ssh-keygen -Y sign -n {APPROVAL_NAMESPACE} -f KEY approval.txt', then "
                               "'contract-extracts approve … --statement approval.txt --signature approval.txt.sig'"
                        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise KeyMaterialError(f"approver key file {path} is not an OpenSSH or PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyMaterialError(f"approver key file {path} is not an Ed25519 key. Fix: make one with "
                               "'ssh-keygen -t ed25519'")
    return key


def new_approver_key(private_path: Path, public_path: Path, comment: str) -> ApproverKey:
    """Write a new Ed25519 key pair in OpenSSH format: private 0600 (never overwritten), public ``.pub``."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                            serialization.NoEncryption())
    write_private_file(private_path, pem)
    public = ApproverKey(key.public_key())
    public_path.write_text(f"{public.openssh} {comment}\n", encoding="ascii")
    return public


def sign(private: Ed25519PrivateKey, message: bytes, namespace: str = APPROVAL_NAMESPACE) -> str:
    """An armoured SSHSIG signature of ``message``, byte-compatible with ``ssh-keygen -Y sign``."""
    return sshsig.sign(private, message, namespace)


def verify(signature_text: str, message: bytes, expected: ApproverKey,
           namespace: str = APPROVAL_NAMESPACE) -> None:
    """Check an armoured SSHSIG signature of ``message`` by ``expected`` in ``namespace``; raise if not."""
    sshsig.verify(signature_text, message, expected.public, namespace)
