"""OpenSSH signatures (PROTOCOL.sshsig) over Ed25519, composed from ``cryptography`` and ``hashlib``.

Exactly what ``ssh-keygen -Y sign -n NAMESPACE`` writes and ``ssh-keygen -Y verify`` checks. This module
only *frames* the bytes (SSH wire strings, the armour); signing and verifying are ``cryptography``'s
Ed25519, hashing is ``hashlib``'s SHA-512 (SHA-256 accepted when verifying). Used for approvals
(authorisation) and for ``manifest.sshsig`` (delivery).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from core.errors import VerificationError

KEY_TYPE = "ssh-ed25519"
_MAGIC = b"SSHSIG"
_VERSION = 1
_HASH = "sha512"
_BEGIN = "-----BEGIN SSH SIGNATURE-----"
_END = "-----END SSH SIGNATURE-----"
_MAX_SIGNATURE_TEXT = 4096


def wire_string(data: bytes) -> bytes:
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
        (value,) = struct.unpack(">I", self.raw(4))
        return int(value)

    def string(self) -> bytes:
        return self.raw(self.uint32())

    def done(self) -> bool:
        return self._pos == len(self._data)


def key_blob(public: Ed25519PublicKey) -> bytes:
    """SSH wire format of the public key: string "ssh-ed25519", string key (what SSHSIG embeds)."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return wire_string(KEY_TYPE.encode()) + wire_string(raw)


def openssh_line(public: Ed25519PublicKey, comment: str = "") -> str:
    """``ssh-ed25519 AAAA… [comment]``."""
    return f"{KEY_TYPE} {base64.b64encode(key_blob(public)).decode('ascii')} {comment}".strip()


def fingerprint(public: Ed25519PublicKey) -> str:
    """``SHA256:<base64, no padding>`` of the key blob: exactly what ``ssh-keygen -lf key.pub`` prints."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(key_blob(public)).digest()).decode("ascii").rstrip("=")


def parse_openssh_line(line: str) -> Ed25519PublicKey:
    """The Ed25519 key of an ``ssh-ed25519 AAAA… [comment]`` line; VerificationError for anything else."""
    parts = line.split()
    if len(parts) < 2 or parts[0] != KEY_TYPE:
        raise VerificationError("not an OpenSSH Ed25519 public key line (expected 'ssh-ed25519 AAAA…')")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        raise VerificationError("OpenSSH public key is not valid base64") from None
    return _key_from_blob(blob)


def _key_from_blob(blob: bytes) -> Ed25519PublicKey:
    r = _Reader(blob)
    if r.string() != KEY_TYPE.encode():
        raise VerificationError("key is not an Ed25519 key")
    raw = r.string()
    if not r.done() or len(raw) != 32:
        raise VerificationError("Ed25519 key blob is malformed")
    return Ed25519PublicKey.from_public_bytes(raw)


def _signed_data(namespace: str, hash_alg: str, message: bytes) -> bytes:
    """What the key actually signs: the namespace and a hash of the message."""
    digest = hashlib.new(hash_alg, message).digest()
    return (_MAGIC + wire_string(namespace.encode("utf-8")) + wire_string(b"") + wire_string(hash_alg.encode("ascii"))
            + wire_string(digest))


def armor(blob: bytes) -> str:
    """PEM-like armour as ssh-keygen writes it (70 base64 characters per line)."""
    b64 = base64.b64encode(blob).decode("ascii")
    lines = [b64[i:i + 70] for i in range(0, len(b64), 70)]
    return "\n".join([_BEGIN, *lines, _END]) + "\n"


def sign(private: Ed25519PrivateKey, message: bytes, namespace: str) -> str:
    """An armoured SSHSIG signature of ``message``, byte-compatible with ``ssh-keygen -Y sign``."""
    signature = private.sign(_signed_data(namespace, _HASH, message))
    blob = (_MAGIC + struct.pack(">I", _VERSION) + wire_string(key_blob(private.public_key()))
            + wire_string(namespace.encode("utf-8")) + wire_string(b"") + wire_string(_HASH.encode())
            + wire_string(wire_string(KEY_TYPE.encode()) + wire_string(signature)))
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


def signer_public_key(signature_text: str) -> Ed25519PublicKey:
    """The public key an armoured SSHSIG signature names as its signer (not yet a proof of anything:
    ``verify`` with this key, and compare its fingerprint with the one you pinned)."""
    r = _Reader(_unarmor(signature_text))
    if r.raw(6) != _MAGIC or r.uint32() != _VERSION:
        raise VerificationError("not an SSHSIG signature (bad magic or version)")
    return _key_from_blob(r.string())


def verify(signature_text: str, message: bytes, expected: Ed25519PublicKey, namespace: str) -> None:
    """Check an armoured SSHSIG signature of ``message`` by ``expected`` in ``namespace``; raise if not."""
    r = _Reader(_unarmor(signature_text))
    if r.raw(6) != _MAGIC:
        raise VerificationError("not an SSHSIG signature (bad magic)")
    if r.uint32() != _VERSION:
        raise VerificationError("unsupported SSHSIG version")
    signer_blob = r.string()
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
    if not hmac.compare_digest(signer_blob, key_blob(expected)):
        raise VerificationError("signature was made with a different key than the registered one")
    s = _Reader(sig_blob)
    if s.string() != KEY_TYPE.encode():
        raise VerificationError("signature is not an Ed25519 signature")
    raw_signature = s.string()
    if not s.done():
        raise VerificationError("SSH signature has trailing bytes")
    try:
        expected.verify(raw_signature, _signed_data(namespace, hash_alg, message))
    except InvalidSignature:
        raise VerificationError("signature does not verify: the statement was altered or signed by another "
                                "key") from None
