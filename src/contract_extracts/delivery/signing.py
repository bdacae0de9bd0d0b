"""The sender's Ed25519 signing key: private PEM (0600) for us, public PEM for recipients.

A recipient can check ``manifest.sig`` with our CLI or with OpenSSL alone:
``openssl pkeyutl -verify -pubin -inkey sender.pub -rawin -in manifest.json -sigfile manifest.sig``.
"""

from __future__ import annotations

import hashlib
import os
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
