"""The sender's Ed25519 signing key: private PEM (0600) for us, public PEM for recipients.

A recipient can check ``manifest.sig`` with our CLI or with OpenSSL alone:
``openssl pkeyutl -verify -pubin -inkey sender.pub -rawin -in manifest.json -sigfile manifest.sig``.

The same Ed25519 key also makes ``manifest.sshsig``, an OpenSSH signature (SSHSIG, namespace
``contract-extracts-manifest``, SHA-512) over the same bytes, for recipients who prefer
``ssh-keygen -Y verify -f allowed_signers -I <sender> -n contract-extracts-manifest -s manifest.sshsig
< manifest.json``. The format is PROTOCOL.sshsig of OpenSSH; ``ssh_allowed_signers_line`` gives the
line for the ``allowed_signers`` file.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from contract_extracts.core.errors import KeyError_, VerificationError
from contract_extracts.masking.keys import check_private_file, write_private_file

SIGNING_KEY_FILE_ENV = "CONTRACT_EXTRACTS_SIGNING_KEY_FILE"


def new_signing_key(private_path: Path, public_path: Path) -> Ed25519PublicKey:
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    write_private_file(private_path, pem)
    public = key.public_key()
    public_path.write_bytes(public_pem(public))
    return public


def public_pem(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def fingerprint(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:32]


def load_signing_key(path: Path | None = None) -> Ed25519PrivateKey:
    if path is None:
        value = os.environ.get(SIGNING_KEY_FILE_ENV)
        if not value:
            raise KeyError_(f"no signing key configured. Fix: set {SIGNING_KEY_FILE_ENV} to a 0600 PEM file "
                            "made with 'contract-extracts keys new-signing PRIVATE PUBLIC'")
        path = Path(value)
    check_private_file(path, "signing key")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, OSError):
        raise KeyError_(f"signing key file {path} is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyError_(f"signing key file {path} is not an Ed25519 key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (ValueError, OSError):
        raise VerificationError(f"sender key {path} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise VerificationError(f"sender key {path} is not an Ed25519 public key")
    return key


def verify_signature(public: Ed25519PublicKey, message: bytes, signature: bytes) -> None:
    try:
        public.verify(signature, message)
    except InvalidSignature:
        raise VerificationError("manifest signature does not verify with the sender key: the package was "
                                "altered or not signed by this sender") from None


# ---- OpenSSH signatures (PROTOCOL.sshsig) -------------------------------------------------------

SSHSIG_NAMESPACE = "contract-extracts-manifest"
_SSHSIG_MAGIC = b"SSHSIG"
_SSHSIG_HASH = "sha512"
_ARMOR_BEGIN = "-----BEGIN SSH SIGNATURE-----"
_ARMOR_END = "-----END SSH SIGNATURE-----"


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _read_string(data: bytes, offset: int) -> tuple[bytes, int]:
    if offset + 4 > len(data):
        raise ValueError("truncated")
    (length,) = struct.unpack(">I", data[offset:offset + 4])
    end = offset + 4 + length
    if end > len(data):
        raise ValueError("truncated")
    return data[offset + 4:end], end


def _ssh_public_blob(public: Ed25519PublicKey) -> bytes:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return _string(b"ssh-ed25519") + _string(raw)


def ssh_public_line(public: Ed25519PublicKey, comment: str = "contract-extracts-sender") -> str:
    """The sender key as an OpenSSH public key line (``ssh-ed25519 AAAA… comment``)."""
    return f"ssh-ed25519 {base64.b64encode(_ssh_public_blob(public)).decode('ascii')} {comment}".strip()


def ssh_allowed_signers_line(public: Ed25519PublicKey, identity: str = "sender@contract-extracts") -> str:
    """One ``allowed_signers`` line limiting the key to manifest signatures."""
    line = ssh_public_line(public, "").strip()
    return f'{identity} namespaces="{SSHSIG_NAMESPACE}" {line}'


def _sshsig_signed_data(message: bytes, namespace: str) -> bytes:
    return (_SSHSIG_MAGIC + _string(namespace.encode("ascii")) + _string(b"") + _string(_SSHSIG_HASH.encode())
            + _string(hashlib.sha512(message).digest()))


def ssh_sign(key: Ed25519PrivateKey, message: bytes, namespace: str = SSHSIG_NAMESPACE) -> bytes:
    """An armored SSHSIG signature of ``message`` (what ``ssh-keygen -Y sign`` writes)."""
    signature = key.sign(_sshsig_signed_data(message, namespace))
    blob = (_SSHSIG_MAGIC + struct.pack(">I", 1) + _string(_ssh_public_blob(key.public_key()))
            + _string(namespace.encode("ascii")) + _string(b"") + _string(_SSHSIG_HASH.encode())
            + _string(_string(b"ssh-ed25519") + _string(signature)))
    encoded = base64.b64encode(blob).decode("ascii")
    lines = [encoded[i:i + 70] for i in range(0, len(encoded), 70)]
    return ("\n".join([_ARMOR_BEGIN, *lines, _ARMOR_END]) + "\n").encode("ascii")


def ssh_verify(public: Ed25519PublicKey, message: bytes, armored: bytes,
               namespace: str = SSHSIG_NAMESPACE) -> None:
    """Check an armored SSHSIG signature made by ``public`` in ``namespace``; raise VerificationError."""
    bad = VerificationError("manifest.sshsig does not verify with the sender key: the package was altered "
                            "or not signed by this sender")
    try:
        text = armored.decode("ascii").strip().splitlines()
        if not text or text[0].strip() != _ARMOR_BEGIN or text[-1].strip() != _ARMOR_END:
            raise ValueError("armor")
        blob = base64.b64decode("".join(line.strip() for line in text[1:-1]), validate=True)
        if not blob.startswith(_SSHSIG_MAGIC) or blob[6:10] != struct.pack(">I", 1):
            raise ValueError("magic")
        offset = 10
        key_blob, offset = _read_string(blob, offset)
        ns, offset = _read_string(blob, offset)
        _reserved, offset = _read_string(blob, offset)
        hash_alg, offset = _read_string(blob, offset)
        sig_blob, offset = _read_string(blob, offset)
        sig_type, inner = _read_string(sig_blob, 0)
        sig, _ = _read_string(sig_blob, inner)
    except (ValueError, UnicodeDecodeError):
        raise bad from None
    if key_blob != _ssh_public_blob(public) or ns != namespace.encode("ascii") or sig_type != b"ssh-ed25519":
        raise bad
    if hash_alg == b"sha512":
        digest = hashlib.sha512(message).digest()
    elif hash_alg == b"sha256":
        digest = hashlib.sha256(message).digest()
    else:
        raise bad
    signed = (_SSHSIG_MAGIC + _string(ns) + _string(_reserved) + _string(hash_alg) + _string(digest))
    try:
        public.verify(sig, signed)
    except InvalidSignature:
        raise bad from None
