"""Approver keys and OpenSSH signatures (SSHSIG), composed from ``cryptography``'s Ed25519 primitives.

An approval signature is an SSHSIG signature (OpenSSH ``PROTOCOL.sshsig``): exactly what
``ssh-keygen -Y sign -n contract-extracts-approval -f KEY FILE`` writes, and what
``ssh-keygen -Y verify`` checks. This module only *frames* the bytes (SSH wire strings, the armour);
signing and verifying are ``cryptography``'s Ed25519, hashing is ``hashlib``'s SHA-512.

Only Ed25519 keys are accepted (``ssh-ed25519``, or an Ed25519 PEM key): one algorithm, no
parameter choices, deterministic signatures.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from contract_extracts.core.errors import KeyError_, VerificationError
from contract_extracts.masking.keys import check_private_file, write_private_file

__all__ = [
    "APPROVAL_NAMESPACE",
    "ApproverKey",
    "armor",
    "load_private_key",
    "new_approver_key",
    "parse_public_key",
    "sign",
    "verify",
]

APPROVAL_NAMESPACE = "contract-extracts-approval"
_MAGIC = b"SSHSIG"
_VERSION = 1
_HASH = "sha512"
_KEY_TYPE = "ssh-ed25519"
_BEGIN = "-----BEGIN SSH SIGNATURE-----"
_END = "-----END SSH SIGNATURE-----"
_MAX_SIGNATURE_TEXT = 4096


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def raw(self, n: int) -> bytes:
        if self._pos + n > len(self._data):
            raise VerificationError("SSH signature is truncated")
        out = self._data[self._pos:self._pos + n]
        self._pos += n
        return out

    def uint32(self) -> int:
        return struct.unpack(">I", self.raw(4))[0]

    def string(self) -> bytes:
        return self.raw(self.uint32())

    def done(self) -> bool:
        return self._pos == len(self._data)


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
        return _string(_KEY_TYPE.encode()) + _string(self.raw)

    @property
    def openssh(self) -> str:
        """``ssh-ed25519 AAAA…`` without a comment (the form the registry hash covers)."""
        return f"{_KEY_TYPE} {base64.b64encode(self.blob).decode('ascii')}"

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
        raise KeyError_(f"{where}: not an OpenSSH public key line ('ssh-ed25519 AAAA…') or a PEM public key. "
                        "Fix: paste the content of the approver's .pub file") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyError_(f"{where}: only Ed25519 keys are accepted for approvals. Fix: the approver makes one "
                        "with 'ssh-keygen -t ed25519' (or 'contract-extracts approvers new-key')")
    return ApproverKey(key)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """An approver's private key file: OpenSSH (``ssh-keygen -t ed25519``) or PEM PKCS#8, mode 0600."""
    check_private_file(path, "approver key")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyError_(f"approver key file {path} cannot be read ({exc.strerror})") from None
    try:
        if b"-----BEGIN OPENSSH PRIVATE KEY-----" in data:
            key = serialization.load_ssh_private_key(data, password=None)
        else:
            key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise KeyError_(f"approver key file {path} is protected by a passphrase. Fix: sign with ssh-keygen "
                        "instead: 'contract-extracts approve … --print-statement > approval.txt', then "
                        f"'ssh-keygen -Y sign -n {APPROVAL_NAMESPACE} -f KEY approval.txt', then "
                        "'contract-extracts approve … --statement approval.txt --signature approval.txt.sig'"
                        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise KeyError_(f"approver key file {path} is not an OpenSSH or PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyError_(f"approver key file {path} is not an Ed25519 key. Fix: make one with "
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


def _signed_data(namespace: str, hash_alg: str, message: bytes) -> bytes:
    """What the key actually signs (PROTOCOL.sshsig): the namespace and a hash of the message."""
    digest = hashlib.new(hash_alg, message).digest()
    return (_MAGIC + _string(namespace.encode("utf-8")) + _string(b"") + _string(hash_alg.encode("ascii"))
            + _string(digest))


def armor(blob: bytes) -> str:
    """PEM-like armour as ssh-keygen writes it (70 base64 characters per line)."""
    b64 = base64.b64encode(blob).decode("ascii")
    lines = [b64[i:i + 70] for i in range(0, len(b64), 70)]
    return "\n".join([_BEGIN, *lines, _END]) + "\n"


def sign(private: Ed25519PrivateKey, message: bytes, namespace: str = APPROVAL_NAMESPACE) -> str:
    """An armoured SSHSIG signature of ``message``, byte-compatible with ``ssh-keygen -Y sign``."""
    public = ApproverKey(private.public_key())
    signature = private.sign(_signed_data(namespace, _HASH, message))
    blob = (_MAGIC + struct.pack(">I", _VERSION) + _string(public.blob) + _string(namespace.encode("utf-8"))
            + _string(b"") + _string(_HASH.encode()) + _string(_string(_KEY_TYPE.encode()) + _string(signature)))
    return armor(blob)


def _unarmor(text: str) -> bytes:
    if not isinstance(text, str) or len(text) > _MAX_SIGNATURE_TEXT:
        raise VerificationError("not an SSH signature (expected a short '-----BEGIN SSH SIGNATURE-----' block)")
    body = text.strip()
    if not body.startswith(_BEGIN) or not body.endswith(_END):
        raise VerificationError("not an SSH signature (expected a '-----BEGIN SSH SIGNATURE-----' block)")
    b64 = "".join(body[len(_BEGIN):-len(_END)].split())
    try:
        return base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise VerificationError("SSH signature armour is not valid base64") from None


def verify(signature_text: str, message: bytes, expected: ApproverKey,
           namespace: str = APPROVAL_NAMESPACE) -> None:
    """Check an armoured SSHSIG signature of ``message`` by ``expected`` in ``namespace``; raise if not."""
    r = _Reader(_unarmor(signature_text))
    if r.raw(6) != _MAGIC:
        raise VerificationError("not an SSHSIG signature (bad magic)")
    if r.uint32() != _VERSION:
        raise VerificationError("unsupported SSHSIG version")
    key_blob = r.string()
    sig_namespace = r.string()
    r.string()  # reserved
    hash_alg = r.string().decode("ascii", "replace")
    sig_blob = r.string()
    if not r.done():
        raise VerificationError("SSH signature has trailing bytes")
    if sig_namespace != namespace.encode("utf-8"):
        raise VerificationError(f"signature was made for another purpose (namespace is not {namespace!r})")
    if hash_alg not in ("sha512", "sha256"):
        raise VerificationError("SSH signature uses an unsupported hash")
    if not hmac.compare_digest(key_blob, expected.blob):
        raise VerificationError("signature was made with a different key than the registered one")
    s = _Reader(sig_blob)
    if s.string() != _KEY_TYPE.encode():
        raise VerificationError("signature is not an Ed25519 signature")
    raw_signature = s.string()
    if not s.done():
        raise VerificationError("SSH signature has trailing bytes")
    try:
        expected.public.verify(raw_signature, _signed_data(namespace, hash_alg, message))
    except InvalidSignature:
        raise VerificationError("signature does not verify: the statement was altered or signed by another "
                                "key") from None
