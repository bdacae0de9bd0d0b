"""The sender's Ed25519 signing key: private PEM (0600) for us; for recipients the public key as PEM
(``sender-signing.pub``, for OpenSSL) and as an OpenSSH line (for ``ssh-keygen`` and our sender trust store).

The key has one fingerprint everywhere (CLI, manifest, ledger, UI, docs): the OpenSSH form
``SHA256:<base64>``, which a recipient reproduces with ``ssh-keygen -lf sender-signing.ssh.pub`` (or
``ssh-keygen -lf`` on their trust store file, one line per trusted sender).

A recipient can check ``manifest.sig`` with our CLI or with OpenSSL alone:
``openssl pkeyutl -verify -pubin -inkey sender.pub -rawin -in manifest.json -sigfile manifest.sig``.

The same Ed25519 key also makes ``manifest.sshsig``, an OpenSSH signature (SSHSIG, namespace
``contract-extracts-manifest``, SHA-512) over the same bytes, for recipients who prefer
``ssh-keygen -Y verify -f allowed_signers -I <sender> -n contract-extracts-manifest -s manifest.sshsig
< manifest.json``. The format is PROTOCOL.sshsig of OpenSSH; ``ssh_allowed_signers_line`` gives the
line for the ``allowed_signers`` file.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from core import sshsig
from core.errors import KeyMaterialError, VerificationError
from core.keyfiles import check_private_file, write_private_file

SIGNING_KEY_FILE_ENV = "CONTRACT_EXTRACTS_SIGNING_KEY_FILE"


def new_signing_key(private_path: Path, public_path: Path, openssh_path: Path | None = None) -> Ed25519PublicKey:
    """Write a new key pair: private PEM (0600), public PEM, and optionally the public OpenSSH line."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    write_private_file(private_path, pem)
    public = key.public_key()
    public_path.write_bytes(public_pem(public))
    if openssh_path is not None:
        openssh_path.write_text(ssh_public_line(public) + "\n", encoding="ascii")
    return public


def public_pem(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def fingerprint(public: Ed25519PublicKey) -> str:
    """``SHA256:…``, exactly what ``ssh-keygen -lf`` prints for the key's OpenSSH form."""
    return sshsig.fingerprint(public)


def compare_command(openssh_file: str = "sender-signing.ssh.pub") -> str:
    """The command a recipient runs to print the fingerprint they compare (docs, CLI output)."""
    return f"ssh-keygen -lf {openssh_file}"


def load_signing_key(path: Path | None = None) -> Ed25519PrivateKey:
    if path is None:
        value = os.environ.get(SIGNING_KEY_FILE_ENV)
        if not value:
            raise KeyMaterialError(f"no signing key configured. Fix: set {SIGNING_KEY_FILE_ENV} to a 0600 PEM file "
                                   "made with 'contract-extracts keys new-signing PRIVATE PUBLIC'")
        path = Path(value)
    check_private_file(path, "signing key")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, OSError):
        raise KeyMaterialError(f"signing key file {path} is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyMaterialError(f"signing key file {path} is not an Ed25519 key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """A sender's Ed25519 public key from a PEM file or a file holding one OpenSSH ``ssh-ed25519`` line."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise VerificationError(f"sender key {path} cannot be read ({exc.strerror})") from None
    if raw.lstrip().startswith(b"ssh-"):
        lines = [line for line in raw.decode("ascii", "replace").splitlines() if line.strip()]
        try:
            if len(lines) != 1:
                raise VerificationError("more than one line")
            return sshsig.parse_openssh_line(lines[0])
        except VerificationError:
            raise VerificationError(f"sender key {path} is not one OpenSSH Ed25519 public key line "
                                    "('ssh-ed25519 AAAA…')") from None
    try:
        key = serialization.load_pem_public_key(raw)
    except ValueError:
        raise VerificationError(f"sender key {path} is not a PEM public key or an OpenSSH "
                                "'ssh-ed25519 AAAA…' line") from None
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


def ssh_public_line(public: Ed25519PublicKey, comment: str = "contract-extracts-sender") -> str:
    """The sender key as an OpenSSH public key line (``ssh-ed25519 AAAA… comment``)."""
    return sshsig.openssh_line(public, comment)


def ssh_allowed_signers_line(public: Ed25519PublicKey, identity: str = "sender@contract-extracts") -> str:
    """One ``allowed_signers`` line limiting the key to manifest signatures."""
    return f'{identity} namespaces="{SSHSIG_NAMESPACE}" {sshsig.openssh_line(public)}'


def ssh_sign(key: Ed25519PrivateKey, message: bytes, namespace: str = SSHSIG_NAMESPACE) -> bytes:
    """An armored SSHSIG signature of ``message`` (what ``ssh-keygen -Y sign`` writes)."""
    return sshsig.sign(key, message, namespace).encode("ascii")


def ssh_verify(public: Ed25519PublicKey, message: bytes, armored: bytes,
               namespace: str = SSHSIG_NAMESPACE) -> None:
    """Check an armored SSHSIG signature made by ``public`` in ``namespace``; raise VerificationError."""
    try:
        sshsig.verify(armored.decode("ascii"), message, public, namespace)
    except (VerificationError, UnicodeDecodeError):
        raise VerificationError("manifest.sshsig does not verify with the sender key: the package was altered "
                                "or not signed by this sender") from None
