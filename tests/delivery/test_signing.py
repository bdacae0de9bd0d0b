"""The sender's Ed25519 signing key and the recipient's age identity files."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import pyrage
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from core.errors import KeyMaterialError, VerificationError
from delivery.recipients import (
    load_identities,
    new_identity_file,
    parse_recipients,
    recipient_fingerprint,
)
from delivery.signing import (
    SIGNING_KEY_FILE_ENV,
    fingerprint,
    load_public_key,
    load_signing_key,
    new_signing_key,
    public_pem,
    ssh_public_line,
    verify_signature,
)


def test_new_signing_key_files(tmp_path: Path) -> None:
    private, public, openssh = tmp_path / "s.pem", tmp_path / "s.pub", tmp_path / "s.ssh.pub"
    key = new_signing_key(private, public, openssh)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert public.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert public.read_bytes() == public_pem(key)
    assert openssh.read_text().startswith("ssh-ed25519 AAAA")
    loaded = load_signing_key(private)
    assert fingerprint(loaded.public_key()) == fingerprint(load_public_key(public)) == fingerprint(key)
    assert fingerprint(load_public_key(openssh)) == fingerprint(key)  # --sender-key takes either form
    assert re.fullmatch(r"SHA256:[A-Za-z0-9+/]{43}", fingerprint(key))
    with pytest.raises((FileExistsError, KeyMaterialError)):
        new_signing_key(private, tmp_path / "other.pub")


def test_fingerprint_is_what_ssh_keygen_prints(tmp_path: Path) -> None:
    """One fingerprint: the recipient reproduces ours with `ssh-keygen -lf` on the sender's OpenSSH key."""
    for n in range(3):
        openssh = tmp_path / f"s{n}.ssh.pub"
        key = new_signing_key(tmp_path / f"s{n}.pem", tmp_path / f"s{n}.pub", openssh)
        printed = subprocess.run(["ssh-keygen", "-lf", str(openssh)], capture_output=True, text=True, check=True,
                                 timeout=30).stdout.split()
        assert printed[0] == "256" and printed[-1] == "(ED25519)"
        assert printed[1] == fingerprint(key) == compare_fingerprint_line(tmp_path, key)


def compare_fingerprint_line(tmp_path: Path, key: Ed25519PublicKey) -> str:
    """The same through a trust store file of several lines (what `ssh-keygen -lf sender-keys` lists)."""
    store = tmp_path / "sender-keys"
    store.write_text("# senders\n" + ssh_public_line(key, "ours") + "\n")
    printed = subprocess.run(["ssh-keygen", "-lf", str(store)], capture_output=True, text=True, check=True,
                             timeout=30).stdout.split()
    return printed[1]


def test_signing_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    private = tmp_path / "s.pem"
    new_signing_key(private, tmp_path / "s.pub")
    os.chmod(private, 0o644)
    with pytest.raises(KeyMaterialError, match="chmod 600") as info:
        load_signing_key(private)
    assert "PRIVATE KEY" not in str(info.value)


def test_signing_key_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    private = tmp_path / "s.pem"
    new_signing_key(private, tmp_path / "s.pub")
    monkeypatch.setenv(SIGNING_KEY_FILE_ENV, str(private))
    assert isinstance(load_signing_key(), Ed25519PrivateKey)
    monkeypatch.delenv(SIGNING_KEY_FILE_ENV)
    with pytest.raises(KeyMaterialError, match=SIGNING_KEY_FILE_ENV):
        load_signing_key()


def _write_private(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    os.chmod(path, 0o600)
    return path


def test_signing_key_not_pem_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyMaterialError, match="not an unencrypted PEM"):
        load_signing_key(_write_private(tmp_path / "s.pem", b"not a key"))


def test_signing_key_of_wrong_type_is_refused(tmp_path: Path) -> None:
    pem = X25519PrivateKey.generate().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption())
    with pytest.raises(KeyMaterialError, match="not an Ed25519 key"):
        load_signing_key(_write_private(tmp_path / "s.pem", pem))


def test_public_key_of_wrong_type_is_refused(tmp_path: Path) -> None:
    pub = tmp_path / "x.pub"
    pub.write_bytes(X25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(VerificationError, match="not an Ed25519 public key"):
        load_public_key(pub)


def test_verify_signature() -> None:
    key = Ed25519PrivateKey.generate()
    public: Ed25519PublicKey = key.public_key()
    signature = key.sign(b"manifest")
    verify_signature(public, b"manifest", signature)
    with pytest.raises(VerificationError, match="signature"):
        verify_signature(public, b"manifest!", signature)
    with pytest.raises(VerificationError, match="signature"):
        verify_signature(public, b"manifest", b"\x00" * 64)


# ---- age identities -----------------------------------------------------------------------------


def test_new_identity_file_has_age_keygen_layout(tmp_path: Path) -> None:
    path = tmp_path / "id.txt"
    public = new_identity_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# created: ")
    assert lines[1] == f"# public key: {public}"
    assert lines[2].startswith("AGE-SECRET-KEY-1")
    [identity] = load_identities(path)
    assert str(identity.to_public()) == public
    assert re.fullmatch(r"age:[0-9a-f]{32}", recipient_fingerprint(public))
    assert parse_recipients([public])


def test_identity_file_with_bad_line_does_not_echo_it(tmp_path: Path) -> None:
    good = str(pyrage.x25519.Identity.generate())
    broken = good[:-6] + "QQQQQQ"
    path = tmp_path / "id.txt"
    path.write_text(f"# comment\n{broken}\n")
    with pytest.raises(VerificationError, match="not an age identity") as info:
        load_identities(path)
    assert broken not in str(info.value)
    assert good[:30] not in str(info.value)


@pytest.mark.parametrize("content", ["", "# only a comment\n", "\n\n"], ids=["empty", "comment-only", "blank"])
def test_identity_file_without_identity_is_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "id.txt"
    path.write_text(content)
    with pytest.raises(VerificationError, match="no age identity"):
        load_identities(path)


def test_missing_identity_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(VerificationError, match="cannot be read"):
        load_identities(tmp_path / "absent.txt")


def test_bad_recipient_is_refused() -> None:
    with pytest.raises(KeyMaterialError):
        parse_recipients(["age1notakey"])
