"""Approver signatures are OpenSSH SSHSIG: interoperable with ssh-keygen both ways, and strict."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from authorisation import approver_keys
from core.errors import KeyMaterialError, VerificationError
from core.keyfiles import write_private_file

MESSAGE = b"contract-extracts approval v1\ncontract: C-1\n"
needs_ssh_keygen = pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs OpenSSH ssh-keygen")


@pytest.fixture
def key(tmp_path: Path) -> tuple[Path, approver_keys.ApproverKey]:
    private = tmp_path / "approver"
    return private, approver_keys.new_approver_key(private, tmp_path / "approver.pub", "jane")


def test_new_key_is_private_openssh_and_fingerprint_matches_ssh_keygen(key, tmp_path: Path) -> None:
    private, public = key
    assert private.stat().st_mode & 0o777 == 0o600
    assert private.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert (tmp_path / "approver.pub").read_text() == f"{public.openssh} jane\n"
    if shutil.which("ssh-keygen"):
        out = subprocess.run(["ssh-keygen", "-lf", str(tmp_path / "approver.pub")], capture_output=True, text=True,
                             check=True).stdout
        assert public.fingerprint in out
    with pytest.raises(KeyMaterialError, match="already exists"):
        approver_keys.new_approver_key(private, tmp_path / "x.pub", "jane")


def test_sign_and_verify_round_trip(key) -> None:
    private, public = key
    signature = approver_keys.sign(approver_keys.load_private_key(private), MESSAGE)
    assert signature.startswith("-----BEGIN SSH SIGNATURE-----\n")
    approver_keys.verify(signature, MESSAGE, public)


@needs_ssh_keygen
def test_ssh_keygen_verifies_our_signature(key, tmp_path: Path) -> None:
    private, public = key
    (tmp_path / "msg.sig").write_text(approver_keys.sign(approver_keys.load_private_key(private), MESSAGE))
    (tmp_path / "allowed").write_text(f"jane {public.openssh}\n")
    proc = subprocess.run(["ssh-keygen", "-Y", "verify", "-f", str(tmp_path / "allowed"), "-I", "jane", "-n",
                           approver_keys.APPROVAL_NAMESPACE, "-s", str(tmp_path / "msg.sig")], input=MESSAGE,
                          capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr


@needs_ssh_keygen
def test_we_verify_ssh_keygen_signature_byte_for_byte(key, tmp_path: Path) -> None:
    private, public = key
    message = tmp_path / "statement.txt"
    message.write_bytes(MESSAGE)
    subprocess.run(["ssh-keygen", "-Y", "sign", "-n", approver_keys.APPROVAL_NAMESPACE, "-f", str(private),
                    str(message)], capture_output=True, check=True)
    theirs = (tmp_path / "statement.txt.sig").read_text()
    approver_keys.verify(theirs, MESSAGE, public)
    assert theirs == approver_keys.sign(approver_keys.load_private_key(private), MESSAGE), "Ed25519 is deterministic"


@needs_ssh_keygen
def test_key_made_by_ssh_keygen_is_accepted(tmp_path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "sam", "-f", str(tmp_path / "k")],
                   check=True)
    private = approver_keys.load_private_key(tmp_path / "k")
    public = approver_keys.parse_public_key((tmp_path / "k.pub").read_text(), "k.pub")
    approver_keys.verify(approver_keys.sign(private, MESSAGE), MESSAGE, public)


def test_pem_keys_are_accepted(tmp_path: Path) -> None:
    private = Ed25519PrivateKey.generate()
    path = tmp_path / "k.pem"
    write_private_file(path, private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
    pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    public = approver_keys.parse_public_key(pem, "inline")
    approver_keys.verify(approver_keys.sign(approver_keys.load_private_key(path), MESSAGE), MESSAGE, public)


@pytest.mark.parametrize(("change", "fragment"), [
    pytest.param(lambda sig, msg, pub, other: (sig, msg + b"x", pub), "does not verify", id="message-altered"),
    pytest.param(lambda sig, msg, pub, other: (sig, msg, other), "different key", id="other-key"),
    pytest.param(lambda sig, msg, pub, other: (sig.replace("SSH SIGNATURE", "PGP SIGNATURE"), msg, pub),
                 "not an SSH signature", id="not-armoured"),
    pytest.param(lambda sig, msg, pub, other: (sig[:60] + "!" + sig[61:], msg, pub), "base64", id="bad-base64"),
    pytest.param(lambda sig, msg, pub, other: ("x" * 5000, msg, pub), "not an SSH signature", id="too-long"),
])
def test_verify_refuses(key, tmp_path: Path, change, fragment: str) -> None:
    private, public = key
    other = approver_keys.new_approver_key(tmp_path / "other", tmp_path / "other.pub", "mallory")
    signature = approver_keys.sign(approver_keys.load_private_key(private), MESSAGE)
    sig, msg, pub = change(signature, MESSAGE, public, other)
    with pytest.raises(VerificationError, match=fragment):
        approver_keys.verify(sig, msg, pub)


def test_signature_for_another_namespace_is_refused(key) -> None:
    private, public = key
    signature = approver_keys.sign(approver_keys.load_private_key(private), MESSAGE, namespace="file")
    with pytest.raises(VerificationError, match="another purpose"):
        approver_keys.verify(signature, MESSAGE, public)


def test_non_ed25519_and_garbage_public_keys_are_refused(tmp_path: Path) -> None:
    ecdsa = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    with pytest.raises(KeyMaterialError, match="only Ed25519"):
        approver_keys.parse_public_key(ecdsa, "reg")
    for text in ("", "ssh-ed25519", "ssh-ed25519 !!!", "hello world"):
        with pytest.raises(KeyMaterialError, match="not an OpenSSH public key line"):
            approver_keys.parse_public_key(text, "reg")


def test_private_key_checks(tmp_path: Path) -> None:
    loose = tmp_path / "loose"
    approver_keys.new_approver_key(loose, tmp_path / "loose.pub", "x")
    loose.chmod(0o644)
    with pytest.raises(KeyMaterialError, match="chmod 600"):
        approver_keys.load_private_key(loose)
    if shutil.which("ssh-keygen"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "secret-passphrase", "-f", str(tmp_path / "enc")],
                       check=True)
        with pytest.raises(KeyMaterialError, match="ssh-keygen -Y sign"):
            approver_keys.load_private_key(tmp_path / "enc")
    junk = tmp_path / "junk"
    write_private_file(junk, b"not a key")
    with pytest.raises(KeyMaterialError, match="not an OpenSSH or PEM private key"):
        approver_keys.load_private_key(junk)
