"""Recipient side: decrypt, verify signature and checksums, place files only when every check passes.

Also checks the promise that a contractor needs none of our software: the Debian ``age`` CLI and ``tar``
unpack the same files, and ``openssl`` verifies ``manifest.sig``.
"""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pyrage
import pytest

from core.errors import VerificationError
from delivery.package import manifest_bytes
from delivery.recipients import new_identity_file
from delivery.signing import new_signing_key
from delivery.verify import decrypt_package

from .conftest import Sent, read_members, regular, write_forged


def receive_dir(tmp_path: Path) -> Path:
    """A fresh parent folder for the output folder, so leftovers beside it are easy to see."""
    parent = tmp_path / "received"
    parent.mkdir(exist_ok=True)
    return parent / "delivery"


def assert_nothing_placed(out_dir: Path) -> None:
    assert not out_dir.exists() or not any(out_dir.iterdir()), sorted(out_dir.rglob("*"))
    leftovers = [p.name for p in out_dir.parent.iterdir() if ".incoming-" in p.name]
    assert leftovers == []


def refuse(package: Path, sent: Sent, out_dir: Path, match: str, *, sender_key: Path | None = None,
           identity: Path | None = None) -> VerificationError:
    with pytest.raises(VerificationError, match=match) as info:
        decrypt_package(package, identity=identity or sent.keys.identity, out_dir=out_dir,
                        sender_key=sender_key if sender_key is not None else sent.keys.signing_public)
    assert_nothing_placed(out_dir)
    return info.value


# ---- the good path ------------------------------------------------------------------------------


def test_round_trip_with_signature(tmp_path: Path, sent: Sent) -> None:
    out = receive_dir(tmp_path)
    result = decrypt_package(sent.path, identity=sent.keys.identity, out_dir=out,
                             sender_key=sent.keys.signing_public)
    assert result.signature_verified is True
    assert result.out_dir == out
    assert result.files == ("codebook.md", "data/claimants.parquet", "manifest.json", "manifest.sig")
    assert result.manifest == sent.manifest
    assert (out / "manifest.json").read_bytes() == manifest_bytes(sent.manifest)
    for arcname, data in sent.plaintext.items():
        assert (out / arcname).read_bytes() == data
    assert len((out / "manifest.sig").read_bytes()) == 64
    assert [p.name for p in out.parent.iterdir()] == ["delivery"]  # no .incoming- folder left beside it


def test_round_trip_into_existing_empty_folder(tmp_path: Path, sent: Sent) -> None:
    out = receive_dir(tmp_path)
    out.mkdir()
    decrypt_package(sent.path, identity=sent.keys.identity, out_dir=out, sender_key=sent.keys.signing_public)
    assert sorted(p.name for p in out.iterdir()) == ["codebook.md", "data", "manifest.json", "manifest.sig"]


def test_without_a_trusted_sender_key_nothing_is_decrypted(tmp_path: Path, sent: Sent) -> None:
    out = receive_dir(tmp_path)
    with pytest.raises(VerificationError, match="no trusted sender key"):
        decrypt_package(sent.path, identity=sent.keys.identity, out_dir=out)
    assert not out.exists() and list(out.parent.iterdir()) == []


def test_explicit_skip_places_an_unverified_package(tmp_path: Path, sent: Sent) -> None:
    result = decrypt_package(sent.path, identity=sent.keys.identity, out_dir=receive_dir(tmp_path),
                             skip_signature_check=True)
    assert result.signature_verified is False and result.sender_fingerprint is None


def test_outputs_are_private(tmp_path: Path, sent: Sent) -> None:
    out = receive_dir(tmp_path)
    decrypt_package(sent.path, identity=sent.keys.identity, out_dir=out, sender_key=sent.keys.signing_public)
    modes = {str(p.relative_to(out)): stat.S_IMODE(p.stat().st_mode) for p in [out, *out.rglob("*")]}
    assert modes == {".": 0o700, "data": 0o700, "codebook.md": 0o600, "data/claimants.parquet": 0o600,
                     "manifest.json": 0o600, "manifest.sig": 0o600}
    existing = tmp_path / "existing-empty-folder"
    existing.mkdir(mode=0o755)
    decrypt_package(sent.path, identity=sent.keys.identity, out_dir=existing, sender_key=sent.keys.signing_public)
    assert stat.S_IMODE(existing.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in existing.rglob("*") if p.is_file()} == {0o600}


def test_age_cli_decrypts_the_same_files(tmp_path: Path, sent: Sent) -> None:
    age = shutil.which("age")
    assert age, "the Debian `age` CLI must be installed (apt-get install age): recipients rely on it"
    out = tmp_path / "by-age-cli"
    out.mkdir()
    plain = subprocess.run([age, "-d", "-i", str(sent.keys.identity), str(sent.path)],
                           capture_output=True, check=True, timeout=30).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=plain, check=True, timeout=30)
    ours = decrypt_package(sent.path, identity=sent.keys.identity, out_dir=tmp_path / "by-us",
                           sender_key=sent.keys.signing_public)
    cli_files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert cli_files == list(ours.files)
    for name in ours.files:
        assert (out / name).read_bytes() == (ours.out_dir / name).read_bytes()


def test_openssl_verifies_the_signature(tmp_path: Path, sent: Sent) -> None:
    openssl = shutil.which("openssl")
    if not openssl:
        pytest.skip("openssl is not installed")
    out = receive_dir(tmp_path)
    decrypt_package(sent.path, identity=sent.keys.identity, out_dir=out, sender_key=sent.keys.signing_public)
    cmd = [openssl, "pkeyutl", "-verify", "-pubin", "-inkey", str(sent.keys.signing_public), "-rawin",
           "-in", str(out / "manifest.json"), "-sigfile", str(out / "manifest.sig")]
    ok = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    assert "Signature Verified Successfully" in ok.stdout
    # And it rejects an altered manifest.
    altered = tmp_path / "altered.json"
    altered.write_bytes((out / "manifest.json").read_bytes().replace(b"C-DEMO-001", b"C-DEMO-009"))
    cmd[cmd.index(str(out / "manifest.json"))] = str(altered)
    bad = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert bad.returncode != 0


# ---- refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize("where", [0.5, 0.25, 0.9], ids=["middle", "first-quarter", "near-end"])
def test_flipped_byte_is_refused(tmp_path: Path, sent: Sent, where: float) -> None:
    data = bytearray(sent.path.read_bytes())
    index = int(len(data) * where)
    data[index] ^= 0x01
    damaged = tmp_path / "damaged.tar.age"
    damaged.write_bytes(bytes(data))
    refuse(damaged, sent, receive_dir(tmp_path), "decryption failed")


def test_truncated_package_is_refused(tmp_path: Path, sent: Sent) -> None:
    data = sent.path.read_bytes()
    damaged = tmp_path / "truncated.tar.age"
    damaged.write_bytes(data[: len(data) - 100])
    refuse(damaged, sent, receive_dir(tmp_path), "decryption failed")


def test_wrong_identity_is_refused(tmp_path: Path, sent: Sent) -> None:
    other = tmp_path / "other-identity.txt"
    new_identity_file(other)
    refuse(sent.path, sent, receive_dir(tmp_path), "decryption failed", identity=other)


def test_altered_manifest_fails_signature(tmp_path: Path, sent: Sent) -> None:
    members = read_members(sent.path, sent.keys.identity)
    forged = []
    for info, data in members:
        if info.name == "manifest.json":
            manifest = json.loads(data)
            manifest["contract"] = "C-DEMO-002"
            data = manifest_bytes(manifest)
        forged.append((info, data))
    package = write_forged(tmp_path / "forged.tar.age", sent.keys.recipient, forged)
    error = refuse(package, sent, receive_dir(tmp_path), "signature")
    assert "C-DEMO-002" not in str(error)


def test_manifest_signed_by_another_sender_fails_signature(tmp_path: Path, sent: Sent) -> None:
    other_public = tmp_path / "other.pub"
    new_signing_key(tmp_path / "other.pem", other_public)
    refuse(sent.path, sent, receive_dir(tmp_path), "signature", sender_key=other_public)


def test_altered_data_with_unchanged_manifest_fails_checksum(tmp_path: Path, sent: Sent) -> None:
    forged = []
    for info, data in read_members(sent.path, sent.keys.identity):
        if info.name == "data/claimants.parquet":
            data = data[:-20] + bytes(b ^ 0xFF for b in data[-20:-10]) + data[-10:]
        forged.append((info, data))
    package = write_forged(tmp_path / "forged.tar.age", sent.keys.recipient, forged)
    refuse(package, sent, receive_dir(tmp_path), "checksum")


def test_swapped_codebook_fails_checksum(tmp_path: Path, sent: Sent) -> None:
    forged = [(info, b"# a different codebook\n" if info.name == "codebook.md" else data)
              for info, data in read_members(sent.path, sent.keys.identity)]
    package = write_forged(tmp_path / "forged.tar.age", sent.keys.recipient, forged)
    refuse(package, sent, receive_dir(tmp_path), "checksum")


def test_missing_listed_file_is_refused(tmp_path: Path, sent: Sent) -> None:
    forged = [(i, d) for i, d in read_members(sent.path, sent.keys.identity) if i.name != "codebook.md"]
    package = write_forged(tmp_path / "forged.tar.age", sent.keys.recipient, forged)
    refuse(package, sent, receive_dir(tmp_path), "missing")


@pytest.mark.parametrize("dropped", ["manifest.json", "manifest.sig"])
def test_missing_manifest_or_signature_is_refused(tmp_path: Path, sent: Sent, dropped: str) -> None:
    forged = [(i, d) for i, d in read_members(sent.path, sent.keys.identity) if i.name != dropped]
    package = write_forged(tmp_path / "forged.tar.age", sent.keys.recipient, forged)
    refuse(package, sent, receive_dir(tmp_path), f"no {dropped}")


def _symlink(name: str, target: str) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info, b""


def _hardlink(name: str, target: str) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE
    info.linkname = target
    return info, b""


def _directory(name: str) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    return info, b""


EXTRA_MEMBERS = {
    "unlisted-data-file": (regular("data/extra.parquet", b"PAR1 extra"), "does not list"),
    "unlisted-other-name": (regular("notes.txt", b"hello"), "unexpected entry"),
    "dot-dot-evil": (regular("../evil", b"#!/bin/sh\n"), "unexpected entry"),
    "nested-dot-dot": (regular("data/../../evil.parquet", b"x"), "unexpected entry"),
    "absolute-path": (regular("/tmp/evil", b"x"), "unexpected entry"),
    "symlink-to-etc": (_symlink("data/link.parquet", "/etc/passwd"), "unexpected entry"),
    "symlink-over-codebook": (_symlink("codebook.md", "/etc/passwd"), "unexpected entry"),
    "hardlink": (_hardlink("data/hard.parquet", "manifest.json"), "unexpected entry"),
    "directory-entry": (_directory("data"), "unexpected entry"),
    "duplicate-manifest": (regular("manifest.json", b"{}"), "unexpected entry"),
}


@pytest.mark.parametrize(("member", "match"), EXTRA_MEMBERS.values(), ids=EXTRA_MEMBERS.keys())
def test_unexpected_member_is_refused(tmp_path: Path, sent: Sent, member: tuple[tarfile.TarInfo, bytes],
                                      match: str) -> None:
    members = read_members(sent.path, sent.keys.identity)
    package = write_forged(tmp_path / "forged.tar.age", sent.keys.recipient, [*members, member])
    refuse(package, sent, receive_dir(tmp_path), match)
    assert not (tmp_path / "evil").exists()
    assert not (tmp_path / "received" / "evil").exists()


def test_not_a_tar_inside_is_refused(tmp_path: Path, sent: Sent) -> None:
    package = tmp_path / "garbage.tar.age"
    package.write_bytes(pyrage.encrypt(b"this is not a tar archive" * 100,
                                       [pyrage.x25519.Recipient.from_str(sent.keys.recipient)]))
    refuse(package, sent, receive_dir(tmp_path), "not a valid tar|no manifest")


def test_wrong_manifest_format_is_refused(tmp_path: Path, sent: Sent) -> None:
    manifest = dict(sent.manifest, format="contract-extracts/package/v0")
    body = manifest_bytes(manifest)
    members = [(i, d) for i, d in read_members(sent.path, sent.keys.identity)
               if i.name not in ("manifest.json", "manifest.sig")]
    package = write_forged(tmp_path / "forged.tar.age", sent.keys.recipient,
                           [regular("manifest.json", body), regular("manifest.sig", b"\x00" * 64), *members])
    # Without the signature check the format check is what refuses it.
    with pytest.raises(VerificationError, match="format"):
        decrypt_package(package, identity=sent.keys.identity, out_dir=receive_dir(tmp_path),
                        skip_signature_check=True)
    assert_nothing_placed(receive_dir(tmp_path))


def test_non_empty_out_dir_is_refused(tmp_path: Path, sent: Sent) -> None:
    out = receive_dir(tmp_path)
    out.mkdir()
    (out / "previous.txt").write_text("keep me")
    with pytest.raises(VerificationError, match="not empty"):
        decrypt_package(sent.path, identity=sent.keys.identity, out_dir=out, sender_key=sent.keys.signing_public)
    assert [p.name for p in out.iterdir()] == ["previous.txt"]
    assert (out / "previous.txt").read_text() == "keep me"
    assert [p.name for p in out.parent.iterdir() if ".incoming-" in p.name] == []


def test_out_dir_that_is_a_file_is_refused(tmp_path: Path, sent: Sent) -> None:
    out = receive_dir(tmp_path)
    out.write_text("a file")
    with pytest.raises(VerificationError):
        decrypt_package(sent.path, identity=sent.keys.identity, out_dir=out, sender_key=sent.keys.signing_public)
    assert out.read_text() == "a file"


def test_missing_package_is_refused(tmp_path: Path, sent: Sent) -> None:
    refuse(tmp_path / "absent.tar.age", sent, receive_dir(tmp_path), "does not exist")


def test_bad_sender_key_file_is_refused(tmp_path: Path, sent: Sent) -> None:
    not_a_key = tmp_path / "not-a-key.pub"
    not_a_key.write_text("hello")
    refuse(sent.path, sent, receive_dir(tmp_path), "not a PEM public key", sender_key=not_a_key)


def test_malformed_manifest_entry_is_a_verification_error(tmp_path: Path, sent: Sent) -> None:
    manifest = dict(sent.manifest, files=[{"sha256": "0" * 64, "bytes": 1}])
    members = [(i, d) for i, d in read_members(sent.path, sent.keys.identity)
               if i.name in ("codebook.md",)]
    package = write_forged(tmp_path / "forged.tar.age", sent.keys.recipient,
                           [regular("manifest.json", manifest_bytes(manifest)),
                            regular("manifest.sig", b"\x00" * 64), *members])
    with pytest.raises(VerificationError):
        decrypt_package(package, identity=sent.keys.identity, out_dir=receive_dir(tmp_path),
                        skip_signature_check=True)
