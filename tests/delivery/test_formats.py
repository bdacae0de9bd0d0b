"""Package formats beyond age X25519: SSH and OpenPGP recipients, SHA256SUMS, the OpenSSH signature, and
verification with standard tools only (age, gpg, tar, sha256sum, ssh-keygen, openssl) or `verify`."""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pyrage
import pytest

from cli import main as cli_main
from cli.delivery import register
from contracts.delivery import Recipient
from core.errors import ConfigError, KeyMaterialError, VerificationError
from delivery.openpgp import encrypt_openpgp
from delivery.package import (
    PACKAGE_FORMAT,
    PackageFile,
    build_package,
    checksums_file,
    file_entries,
    manifest_bytes,
    package_name,
)
from delivery.recipients import load_identities, manifest_recipients
from delivery.signing import (
    fingerprint,
    load_public_key,
    load_signing_key,
    ssh_allowed_signers_line,
    ssh_sign,
    ssh_verify,
)
from delivery.verify import decrypt_package, verify_package

from .conftest import CONTRACT, CREATED_EPOCH, DELIVERY, Keys, regular
from .keyhelpers import OpenPGPRecipient, gpg_decrypt, make_openpgp_recipient, make_ssh_key, stop_gpg_agent


def build_full(staging: Path, keys: Keys, recipients: list[Recipient], *, key_dir: Path | None = None,
               listed: list[Recipient] | None = None) -> Path:
    """What the package stage builds: data, codebook, SHA256SUMS, manifest.sig and manifest.sshsig."""
    staging.mkdir(parents=True, exist_ok=True, mode=0o700)
    (staging / "data").mkdir(exist_ok=True)
    table = pa.table({"nino": ["7de50191d49ba4bba05a61eb3893daeb", None], "year": pa.array([1980, 1991], pa.int32())})
    pq.write_table(table, staging / "data" / "claimants.parquet", compression="zstd")
    (staging / "codebook.md").write_text("# Codebook\n")
    files = [PackageFile("codebook.md", staging / "codebook.md"),
             PackageFile("data/claimants.parquet", staging / "data" / "claimants.parquet", rows=2,
                         schema=({"name": "nino", "type": "string", "treatment": "pseudonymise"},))]
    files.append(checksums_file(staging, files))
    fmt = recipients[0].format
    signing_key = load_signing_key(keys.signing_private)
    manifest = {"format": PACKAGE_FORMAT, "contract": CONTRACT, "delivery": DELIVERY, "files": file_entries(files),
                "recipients": manifest_recipients(recipients if listed is None else listed),
                "sender": {"signature": "ed25519", "fingerprint": fingerprint(signing_key.public_key())}}
    encrypt = None
    if fmt == "openpgp":
        def encrypt(plain: Path, out: Path) -> None:
            encrypt_openpgp(plain, out, recipients, key_dir=key_dir or staging, work_dir=staging)
    built = build_package(staging_dir=staging, name=package_name(CONTRACT, DELIVERY, fmt), manifest=manifest,
                          files=files, signing_key=signing_key,
                          recipients=[r.age or r.ssh for r in recipients] if fmt == "age" else None,
                          encrypt=encrypt, ssh_signature=True, created_epoch=CREATED_EPOCH)
    return built.path


def untar(plain: bytes, dest: Path) -> Path:
    dest.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=plain, check=True, timeout=60)
    return dest


def assert_standard_tools_verify(folder: Path, keys: Keys, tmp_path: Path) -> None:
    sums = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=folder, capture_output=True, text=True, timeout=60)
    assert sums.returncode == 0, sums.stdout + sums.stderr
    assert "codebook.md: OK" in sums.stdout and "data/claimants.parquet: OK" in sums.stdout
    if shutil.which("openssl"):
        ssl = subprocess.run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(keys.signing_public),
                              "-rawin", "-in", "manifest.json", "-sigfile", "manifest.sig"], cwd=folder,
                             capture_output=True, text=True, timeout=60)
        assert ssl.returncode == 0, ssl.stderr
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(ssh_allowed_signers_line(load_public_key(keys.signing_public)) + "\n")
    with (folder / "manifest.json").open("rb") as manifest:
        ssh = subprocess.run(["ssh-keygen", "-Y", "verify", "-f", str(allowed), "-I", "sender@contract-extracts",
                              "-n", "contract-extracts-manifest", "-s", str(folder / "manifest.sshsig")],
                             stdin=manifest, capture_output=True, text=True, timeout=60)
    assert ssh.returncode == 0, ssh.stdout + ssh.stderr
    listed = {f["path"] for f in json.loads((folder / "manifest.json").read_bytes())["files"]}
    assert listed == {"codebook.md", "data/claimants.parquet", "SHA256SUMS"}


# ---- SSH recipients (age's ssh-ed25519 / ssh-rsa) ---------------------------------------------------


def test_age_and_ssh_recipients_share_one_file(tmp_path: Path, keys: Keys) -> None:
    (tmp_path / "ssh").mkdir()
    ed = make_ssh_key(tmp_path / "ssh" / "id_ed25519")
    rsa = make_ssh_key(tmp_path / "ssh" / "id_rsa", "rsa", 3072)
    recipients = [Recipient(name="x25519", age=keys.recipient), Recipient(name="ed", ssh=ed),
                  Recipient(name="rsa", ssh=rsa)]
    package = build_full(tmp_path / "staging", keys, recipients)
    assert package.name.endswith(".tar.age")
    header = package.read_bytes().split(b"\n---", 1)[0].decode()
    stanzas = [line.split()[1] for line in header.splitlines() if line.startswith("-> ")]
    assert [s for s in stanzas if not s.endswith("-grease")] == ["X25519", "ssh-ed25519", "ssh-rsa"]
    for n, identity in enumerate([tmp_path / "ssh" / "id_ed25519", tmp_path / "ssh" / "id_rsa", keys.identity]):
        plain = subprocess.run(["age", "-d", "-i", str(identity), str(package)], capture_output=True, check=True,
                               timeout=60).stdout
        folder = untar(plain, tmp_path / f"by-age-{n}")
        assert_standard_tools_verify(folder, keys, tmp_path)
    ours = decrypt_package(package, identity=tmp_path / "ssh" / "id_ed25519", out_dir=tmp_path / "ours",
                           sender_key=keys.signing_public)
    assert ours.signature_verified and ours.ssh_signature_verified and ours.checksums_file
    assert ours.files == ("SHA256SUMS", "codebook.md", "data/claimants.parquet", "manifest.json", "manifest.sig",
                          "manifest.sshsig")


def test_ssh_identity_loading(tmp_path: Path) -> None:
    make_ssh_key(tmp_path / "id_ed25519")
    assert len(load_identities(tmp_path / "id_ed25519")) == 1
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "secret", "-f", str(tmp_path / "locked")],
                   check=True, timeout=60)
    with pytest.raises(VerificationError, match="passphrase"):
        load_identities(tmp_path / "locked")


# ---- OpenPGP recipients (gpg, .tar.gpg) -------------------------------------------------------------


@pytest.fixture
def analyst(tmp_path: Path):
    recipient = make_openpgp_recipient(tmp_path / "analyst-gnupg")
    yield recipient
    stop_gpg_agent(recipient.home)


@pytest.fixture
def second_analyst(tmp_path: Path):
    recipient = make_openpgp_recipient(tmp_path / "second-gnupg", "Second <second@example.org>")
    yield recipient
    stop_gpg_agent(recipient.home)


def test_openpgp_round_trip_with_gpg(tmp_path: Path, keys: Keys, analyst: OpenPGPRecipient,
                                     second_analyst: OpenPGPRecipient) -> None:
    key_dir = tmp_path / "configs" / "recipients"
    (key_dir / "acme").mkdir(parents=True)
    (key_dir / "acme" / "second.asc").write_text(second_analyst.armored)
    recipients = [Recipient(name="analyst", openpgp=analyst.armored, fingerprint=analyst.fingerprint),
                  Recipient(name="second", openpgp="acme/second.asc", fingerprint=second_analyst.fingerprint)]
    staging = tmp_path / "staging"
    package = build_full(staging, keys, recipients, key_dir=key_dir)
    assert package.name == f"{CONTRACT}_{DELIVERY}.tar.gpg"
    assert not [p for p in staging.iterdir() if p.name.startswith(".gnupg-")], "the temporary keyring is removed"
    for n, who in enumerate([analyst, second_analyst]):
        folder = untar(gpg_decrypt(who.home, package), tmp_path / f"by-gpg-{n}")
        assert_standard_tools_verify(folder, keys, tmp_path)
    # Our verify, streaming through the recipient's own keyring.
    result = verify_package(package, identity=None, sender_key=keys.signing_public, gnupg_home=analyst.home)
    assert (result.encryption, result.signature_verified, result.ssh_signature_verified) == ("openpgp", True, True)
    # Uncompressed (-z 0): the encrypted size is close to the tar size.
    assert package.stat().st_size < 40_000


def test_openpgp_key_that_is_not_the_pinned_one_is_refused(tmp_path: Path, keys: Keys, analyst: OpenPGPRecipient,
                                                          second_analyst: OpenPGPRecipient) -> None:
    key_dir = tmp_path / "recipients"
    key_dir.mkdir()
    (key_dir / "analyst.asc").write_text(second_analyst.armored)  # the file was swapped
    recipients = [Recipient(name="analyst", openpgp="analyst.asc", fingerprint=analyst.fingerprint)]
    with pytest.raises(KeyMaterialError, match="does not hold the pinned fingerprint"):
        build_full(tmp_path / "staging", keys, recipients, key_dir=key_dir)
    assert not list((tmp_path / "staging").glob("*.tar.gpg"))
    assert not list((tmp_path / "staging").glob(".*.plain"))


def test_openpgp_key_file_must_exist_under_the_key_folder(tmp_path: Path, keys: Keys,
                                                          analyst: OpenPGPRecipient) -> None:
    recipients = [Recipient(name="analyst", openpgp="missing.asc", fingerprint=analyst.fingerprint)]
    with pytest.raises(ConfigError, match="cannot be read"):
        build_full(tmp_path / "staging", keys, recipients, key_dir=tmp_path / "recipients")


def test_gpg_package_for_someone_else_is_refused(tmp_path: Path, keys: Keys, analyst: OpenPGPRecipient,
                                                 second_analyst: OpenPGPRecipient) -> None:
    recipients = [Recipient(name="analyst", openpgp=analyst.armored, fingerprint=analyst.fingerprint)]
    package = build_full(tmp_path / "staging", keys, recipients)
    with pytest.raises(VerificationError, match="decryption failed"):
        verify_package(package, identity=None, sender_key=keys.signing_public, gnupg_home=second_analyst.home)
    data = bytearray(package.read_bytes())
    data[len(data) // 2] ^= 0x01
    damaged = tmp_path / "damaged.tar.gpg"
    damaged.write_bytes(bytes(data))
    out = tmp_path / "received" / "delivery"
    with pytest.raises(VerificationError, match="decryption failed"):
        decrypt_package(damaged, identity=None, out_dir=out, sender_key=keys.signing_public,
                        gnupg_home=analyst.home)
    assert not out.exists() and [p.name for p in out.parent.iterdir()] == []


def test_gpg_package_not_listing_my_key_is_refused(tmp_path: Path, keys: Keys, analyst: OpenPGPRecipient,
                                                  second_analyst: OpenPGPRecipient) -> None:
    """Genuinely signed, decryptable by me, but its manifest is for someone else: not for me."""
    recipients = [Recipient(name="analyst", openpgp=analyst.armored, fingerprint=analyst.fingerprint),
                  Recipient(name="second", openpgp=second_analyst.armored, fingerprint=second_analyst.fingerprint)]
    package = build_full(tmp_path / "staging", keys, recipients, listed=recipients[1:])
    with pytest.raises(VerificationError, match="not made for you") as info:
        verify_package(package, identity=None, sender_key=keys.signing_public, gnupg_home=analyst.home)
    assert f"openpgp:{analyst.fingerprint}" in str(info.value)
    result = verify_package(package, identity=None, sender_key=keys.signing_public, gnupg_home=second_analyst.home)
    assert result.recipient == {"name": "second", "fingerprint": f"openpgp:{second_analyst.fingerprint}"}


def test_damaged_gpg_package_is_a_gpg_error(tmp_path: Path, keys: Keys, analyst: OpenPGPRecipient) -> None:
    package = build_full(tmp_path / "staging", keys,
                         [Recipient(name="analyst", openpgp=analyst.armored, fingerprint=analyst.fingerprint)])
    data = bytearray(package.read_bytes())
    data[len(data) - 30] ^= 0x01
    damaged = tmp_path / "inbox" / package.name
    damaged.parent.mkdir()
    damaged.write_bytes(bytes(data))
    with pytest.raises(VerificationError, match=r"^gpg decryption failed: the encrypted content is damaged"):
        verify_package(damaged, identity=None, sender_key=keys.signing_public, gnupg_home=analyst.home)


# ---- checksums, signatures, verify-only -------------------------------------------------------------


def test_verify_writes_nothing(tmp_path: Path, keys: Keys) -> None:
    package = build_full(tmp_path / "staging", keys, [Recipient(name="a", age=keys.recipient)])
    before = sorted(p for p in tmp_path.rglob("*"))
    result = verify_package(package, identity=keys.identity, sender_key=keys.signing_public)
    assert result.out_dir is None and result.checksums_file and result.ssh_signature_verified
    assert sorted(p for p in tmp_path.rglob("*")) == before


def _forge(package: Path, keys: Keys, dest: Path, change) -> Path:
    plain = pyrage.decrypt(package.read_bytes(), load_identities(keys.identity))
    members = []
    with tarfile.open(fileobj=io.BytesIO(plain)) as tar:
        for member in tar:
            members.append((member.name, tar.extractfile(member).read()))
    members = change(members)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members:
            info, data = regular(name, data)
            tar.addfile(info, io.BytesIO(data))
    dest.write_bytes(pyrage.encrypt(buffer.getvalue(), [pyrage.x25519.Recipient.from_str(keys.recipient)]))
    return dest


def test_sha256sums_disagreeing_with_the_manifest_is_refused(tmp_path: Path, keys: Keys) -> None:
    package = build_full(tmp_path / "staging", keys, [Recipient(name="a", age=keys.recipient)])

    def change(members):
        out = []
        for name, data in members:
            if name == "SHA256SUMS":
                data = data.replace(data[:8], b"00000000", 1)
            out.append((name, data))
        return out
    forged = _forge(package, keys, tmp_path / package.name, change)
    with pytest.raises(VerificationError, match="SHA256SUMS"):  # also without the signature check
        verify_package(forged, identity=keys.identity, skip_signature_check=True)


def test_sha256sums_consistent_but_unsigned_manifest_is_refused(tmp_path: Path, keys: Keys) -> None:
    package = build_full(tmp_path / "staging", keys, [Recipient(name="a", age=keys.recipient)])

    def change(members):
        by = dict(members)
        manifest = json.loads(by["manifest.json"])
        manifest["files"] = [f for f in manifest["files"] if f["path"] != "SHA256SUMS"]
        by["manifest.json"] = manifest_bytes(manifest)
        return [(n, by[n]) for n, _ in members if n != "SHA256SUMS"]
    forged = _forge(package, keys, tmp_path / package.name, change)
    with pytest.raises(VerificationError, match="signature"):
        verify_package(forged, identity=keys.identity, sender_key=keys.signing_public)


def test_altered_sshsig_is_refused(tmp_path: Path, keys: Keys) -> None:
    package = build_full(tmp_path / "staging", keys, [Recipient(name="a", age=keys.recipient)])
    other = ssh_sign(load_signing_key(keys.signing_private), b"another manifest")

    def change(members):
        return [(n, other if n == "manifest.sshsig" else d) for n, d in members]
    forged = _forge(package, keys, tmp_path / package.name, change)
    with pytest.raises(VerificationError, match="sshsig"):
        verify_package(forged, identity=keys.identity, sender_key=keys.signing_public)


def test_sshsig_is_namespaced(keys: Keys) -> None:
    key = load_signing_key(keys.signing_private)
    sig = ssh_sign(key, b"m", "another-namespace")
    with pytest.raises(VerificationError):
        ssh_verify(key.public_key(), b"m", sig)
    ssh_verify(key.public_key(), b"m", sig, "another-namespace")


def test_renamed_package_is_refused(tmp_path: Path, keys: Keys) -> None:
    package = build_full(tmp_path / "staging", keys, [Recipient(name="a", age=keys.recipient)])
    renamed = tmp_path / f"{CONTRACT}_20270101T000000Z-00000000.tar.age"
    renamed.write_bytes(package.read_bytes())
    with pytest.raises(VerificationError, match="renamed or swapped"):
        verify_package(renamed, identity=keys.identity, sender_key=keys.signing_public)


# ---- the CLI ------------------------------------------------------------------------------------------


def test_cli_verify_and_sender_key(tmp_path: Path, keys: Keys, capsys: pytest.CaptureFixture[str]) -> None:
    package = build_full(tmp_path / "staging", keys, [Recipient(name="a", age=keys.recipient)])
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(["verify", str(package), "--identity", str(keys.identity), "--sender-key",
                              str(keys.signing_public)])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "verified C-DEMO-001" in out and "ssh signature: verified" in out and "SHA256SUMS: agrees" in out
    allowed = tmp_path / "allowed_signers"
    args = parser.parse_args(["sender-key", str(keys.signing_public), "--allowed-signers", str(allowed)])
    assert args.func(args) == 0
    assert allowed.read_text().startswith('sender@contract-extracts namespaces="contract-extracts-manifest" '
                                          "ssh-ed25519 ")
    args = parser.parse_args(["verify", str(package), "--identity", str(keys.identity), "--sender-key",
                              str(keys.signing_public), "--out", str(tmp_path / "out")])
    assert args.func(args) == 0
    assert (tmp_path / "out" / "SHA256SUMS").exists()


def test_cli_main_reports_a_bad_package(tmp_path: Path, keys: Keys, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    junk = tmp_path / "junk.tar.age"
    junk.write_bytes(b"age-encryption.org/v1\n-> X25519 nonsense\n--- x\n")
    assert cli_main(["verify", str(junk), "--identity", str(keys.identity), "--sender-key",
                     str(keys.signing_public)]) == 2
    assert "decryption failed" in capsys.readouterr().err
