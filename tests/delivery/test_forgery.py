"""The recipient's checks against an attacker, through the command a recipient runs (`contract-extracts`).

The forger holds only public keys: the recipient's age key (to encrypt to) and the sender's public key.
They build a package from scratch with changed data, recompute SHA256SUMS and the manifest, sign it as
best they can, and encrypt it with the Debian `age -r` CLI. Every forgery must be refused by default,
without `--sender-key`, and with nothing written. Also: a genuine package of another contract
re-encrypted to this recipient, a renamed package, a damaged age header, a killed `decrypt`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import stat
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cli import main
from core.errors import VerificationError
from delivery.package import manifest_bytes, sha256_file
from delivery.recipients import new_identity_file
from delivery.signing import fingerprint, load_public_key, new_signing_key, ssh_sign
from delivery.trust import identity_store
from delivery.verify import Expected, decrypt_package, verify_package

from .conftest import CONTRACT, DELIVERY, Keys, Sent, build_demo_package, read_members

REPO = Path(__file__).resolve().parents[2]


def age_cli_encrypt(plain: bytes, recipient: str, dest: Path) -> Path:
    """Encrypt with the age CLI, as a forger without any of our software would."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["age", "-r", recipient, "-o", str(dest)], input=plain, check=True, timeout=60)
    return dest


def tar_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def forged_members(template: dict, sign: Callable[[bytes], dict[str, bytes]]) -> dict[str, bytes]:
    """A complete, self-consistent package with the forger's data: only the signature cannot be right."""
    table = pa.table({"nino": ["ffffffffffffffffffffffffffffffff"], "date_of_birth": pa.array([1900], pa.int32()),
                      "region": ["Forged"]})
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    parquet = sink.getvalue()
    codebook = b"# Codebook (forged)\n"
    sums = (f"{hashlib.sha256(codebook).hexdigest()}  codebook.md\n"
            f"{hashlib.sha256(parquet).hexdigest()}  data/claimants.parquet\n").encode()
    files = [{"path": "codebook.md", "bytes": len(codebook), "sha256": hashlib.sha256(codebook).hexdigest()},
             {"path": "data/claimants.parquet", "bytes": len(parquet), "sha256": hashlib.sha256(parquet).hexdigest(),
              "rows": 1, "schema": template["files"][1]["schema"]},
             {"path": "SHA256SUMS", "bytes": len(sums), "sha256": hashlib.sha256(sums).hexdigest()}]
    manifest = dict(template, files=files)
    body = manifest_bytes(manifest)
    return {"manifest.json": body, **sign(body), "codebook.md": codebook, "data/claimants.parquet": parquet,
            "SHA256SUMS": sums}


def _attacker_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def _garbage(body: bytes) -> dict[str, bytes]:
    return {"manifest.sig": os.urandom(64)}


def _attacker_signs_as_himself(body: bytes) -> dict[str, bytes]:
    key = _attacker_key()
    return {"manifest.sig": key.sign(body), "manifest.sshsig": ssh_sign(key, body)}


def _no_signature(body: bytes) -> dict[str, bytes]:
    return {}


FORGERIES: dict[str, tuple[Callable[[Sent], dict], Callable[[bytes], dict[str, bytes]]]] = {
    # (manifest template, how the forger signs)
    "garbage-signature": (lambda sent: sent.manifest, _garbage),
    "signed-by-forger-claiming-the-sender": (lambda sent: sent.manifest, _attacker_signs_as_himself),
    "signed-by-forger-naming-himself": (
        lambda sent: dict(sent.manifest, sender={"signature": "ed25519",
                                                 "fingerprint": fingerprint(_attacker_key().public_key())}),
        _attacker_signs_as_himself),
    # A signature the sender really made (e.g. leaked by another recipient), over another manifest.
    "genuine-signature-of-the-old-manifest": (lambda sent: sent.manifest, _no_signature),
    "no-signature-file": (lambda sent: sent.manifest, _no_signature),
}


def forge(sent: Sent, kind: str, dest: Path) -> Path:
    template_of, sign = FORGERIES[kind]
    members = forged_members(template_of(sent), sign)
    if kind == "genuine-signature-of-the-old-manifest":
        members["manifest.sig"] = dict(read_members_by_name(sent))["manifest.sig"]
    return age_cli_encrypt(tar_bytes(members), sent.keys.recipient, dest)


def read_members_by_name(sent: Sent) -> list[tuple[str, bytes]]:
    return [(info.name, data) for info, data in read_members(sent.path, sent.keys.identity)]


def nothing_written(parent: Path) -> bool:
    return not parent.exists() or list(parent.iterdir()) == []


@pytest.fixture
def genuine(tmp_path: Path, keys: Keys) -> Sent:
    return build_demo_package(tmp_path / "staging", keys, ssh_signature=True)


# ---- forgeries, refused by default --------------------------------------------------------------


@pytest.mark.parametrize("kind", FORGERIES)
def test_forgery_is_refused_by_default(tmp_path: Path, genuine: Sent, kind: str,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    forged = forge(genuine, kind, tmp_path / "inbox" / genuine.path.name)
    received = tmp_path / "received"
    # No --sender-key and no trust store: refused before anything is decrypted.
    assert main(["decrypt", str(forged), "--identity", str(genuine.keys.identity), "--out",
                 str(received / "a")]) == 2
    captured = capsys.readouterr()
    assert "no trusted sender key" in captured.err and "  ok  " not in captured.out
    assert nothing_written(received)
    # With the sender's key in the trust store beside the identity (what the docs tell recipients to do).
    identity_store(genuine.keys.identity).write_text(genuine.keys.signing_openssh.read_text())
    assert main(["decrypt", str(forged), "--identity", str(genuine.keys.identity), "--out",
                 str(received / "b")]) == 2
    captured = capsys.readouterr()
    assert ("does not verify" in captured.err or "no manifest.sig" in captured.err), captured.err
    assert "  ok  " not in captured.out
    assert nothing_written(received)
    # And `verify` with the sender key given explicitly.
    assert main(["verify", str(forged), "--identity", str(genuine.keys.identity), "--sender-key",
                 str(genuine.keys.signing_public)]) == 2
    # The same genuine package passes the same default check: the refusals are not vacuous.
    assert main(["decrypt", str(genuine.path), "--identity", str(genuine.keys.identity), "--out",
                 str(received / "genuine")]) == 0
    assert "signature: verified" in capsys.readouterr().out


def test_forgery_passes_only_with_the_loud_opt_out(tmp_path: Path, genuine: Sent,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    forged = forge(genuine, "signed-by-forger-claiming-the-sender", tmp_path / genuine.path.name)
    out = tmp_path / "received" / "unverified"
    assert main(["decrypt", str(forged), "--identity", str(genuine.keys.identity), "--out", str(out),
                 "--insecure-skip-signature-check"]) == 0
    captured = capsys.readouterr()
    assert "WARNING" in captured.err and "NOT checked" in captured.err
    assert "signature: verified" not in captured.out
    assert (out / "codebook.md").read_bytes() == b"# Codebook (forged)\n"


def test_user_trust_store_is_used(tmp_path: Path, genuine: Sent, no_user_trust_store: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    forged = forge(genuine, "garbage-signature", tmp_path / genuine.path.name)
    assert main(["sender-key", str(genuine.keys.signing_public), "--trust"]) == 0
    assert no_user_trust_store.read_text().startswith("ssh-ed25519 ")
    capsys.readouterr()
    assert main(["verify", str(forged), "--identity", str(genuine.keys.identity)]) == 2
    assert "does not verify with any trusted sender key" in capsys.readouterr().err
    assert main(["verify", str(genuine.path), "--identity", str(genuine.keys.identity)]) == 0
    assert f"from trust store {no_user_trust_store}" in capsys.readouterr().out


def test_trust_store_others_can_write_is_refused(tmp_path: Path, genuine: Sent) -> None:
    store = identity_store(genuine.keys.identity)
    store.write_text(genuine.keys.signing_openssh.read_text())
    os.chmod(store, 0o666)
    with pytest.raises(VerificationError, match="chmod 644"):
        verify_package(genuine.path, identity=genuine.keys.identity)
    os.chmod(store, 0o644)
    assert verify_package(genuine.path, identity=genuine.keys.identity).signature_verified


def test_trust_store_with_a_bad_line_names_it(tmp_path: Path, genuine: Sent) -> None:
    store = identity_store(genuine.keys.identity)
    store.write_text("# senders\n" + genuine.keys.signing_openssh.read_text() + "ssh-rsa AAAAB3Nza not-ed25519\n")
    with pytest.raises(VerificationError, match=r"line 3"):
        verify_package(genuine.path, identity=genuine.keys.identity)


def test_one_of_several_trusted_keys_verifies(tmp_path: Path, genuine: Sent) -> None:
    other = tmp_path / "other.ssh.pub"
    new_signing_key(tmp_path / "other.pem", tmp_path / "other.pub", other)
    store = identity_store(genuine.keys.identity)
    store.write_text(other.read_text() + genuine.keys.signing_openssh.read_text())
    result = verify_package(genuine.path, identity=genuine.keys.identity)
    assert result.sender_fingerprint == genuine.manifest["sender"]["fingerprint"]


# ---- genuine packages used against the recipient ------------------------------------------------


def test_another_contracts_genuine_package_reencrypted_to_me_is_refused(tmp_path: Path, keys: Keys,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    other_identity = tmp_path / "other-contractor.txt"
    other_recipient = new_identity_file(other_identity)
    theirs = build_demo_package(tmp_path / "other-staging", keys, contract="C-OTHER-002",
                                recipients={"other-analyst": other_recipient})
    # The other contractor decrypts their genuine package and re-encrypts the same tar to me.
    plain = subprocess.run(["age", "-d", "-i", str(other_identity), str(theirs.path)], capture_output=True,
                           check=True, timeout=60).stdout
    reencrypted = age_cli_encrypt(plain, keys.recipient, tmp_path / "inbox" / theirs.path.name)
    with pytest.raises(VerificationError, match="not made for you"):
        verify_package(reencrypted, identity=keys.identity, sender_key=keys.signing_public)
    out = tmp_path / "received" / "theirs"
    assert main(["decrypt", str(reencrypted), "--identity", str(keys.identity), "--sender-key",
                 str(keys.signing_public), "--out", str(out)]) == 2
    assert "not made for you" in capsys.readouterr().err
    assert nothing_written(out.parent)
    # Renamed to look like one of mine: still refused.
    disguised = tmp_path / "inbox" / f"{CONTRACT}_{DELIVERY}.tar.age"
    disguised.write_bytes(reencrypted.read_bytes())
    with pytest.raises(VerificationError, match="not made for you"):
        verify_package(disguised, identity=keys.identity, sender_key=keys.signing_public)


def test_renamed_package_is_still_checked_against_the_manifest(tmp_path: Path, genuine: Sent) -> None:
    keys = genuine.keys
    for name in ("package.tar.age", "download (1).tar.age", "C-DEMO-001.tar.age"):
        renamed = tmp_path / name
        renamed.write_bytes(genuine.path.read_bytes())
        with pytest.raises(VerificationError, match="nothing says which delivery"):
            verify_package(renamed, identity=keys.identity, sender_key=keys.signing_public)
        with pytest.raises(VerificationError, match="not the expected"):
            verify_package(renamed, identity=keys.identity, sender_key=keys.signing_public,
                           expect=Expected(CONTRACT, "20270101T000000Z-00000000"))
        assert verify_package(renamed, identity=keys.identity, sender_key=keys.signing_public,
                              expect=Expected(CONTRACT, DELIVERY)).signature_verified
    # An old genuine delivery under a newer delivery's name.
    swapped = tmp_path / f"{CONTRACT}_20270101T000000Z-00000000.tar.age"
    swapped.write_bytes(genuine.path.read_bytes())
    with pytest.raises(VerificationError, match="renamed or swapped"):
        verify_package(swapped, identity=keys.identity, sender_key=keys.signing_public)


def test_cli_expect_options(tmp_path: Path, genuine: Sent, capsys: pytest.CaptureFixture[str]) -> None:
    renamed = tmp_path / "package.tar.age"
    renamed.write_bytes(genuine.path.read_bytes())
    base = ["verify", str(renamed), "--identity", str(genuine.keys.identity), "--sender-key",
            str(genuine.keys.signing_public)]
    assert main(base) == 2
    assert "--contract and --delivery" in capsys.readouterr().err
    assert main([*base, "--contract", CONTRACT]) == 2
    assert main([*base, "--contract", CONTRACT, "--delivery", DELIVERY]) == 0


# ---- age and gpg errors are what they are -------------------------------------------------------


def _flip(data: bytes, index: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 0x01
    return bytes(out)


def test_damaged_age_header_is_an_age_error(tmp_path: Path, genuine: Sent) -> None:
    data = genuine.path.read_bytes()
    header_end = data.index(b"\n---")
    positions = {"magic line": 3, "magic version": 19, "stanza type": 5 + len("age-encryption.org/v1\n"),
                 "header MAC": header_end + 8}
    for label, index in positions.items():
        damaged = tmp_path / label.replace(" ", "-") / genuine.path.name
        damaged.parent.mkdir()
        damaged.write_bytes(_flip(data, index))
        with pytest.raises(VerificationError) as info:
            verify_package(damaged, identity=genuine.keys.identity, sender_key=genuine.keys.signing_public)
        message = str(info.value)
        assert message.startswith("age decryption failed"), (label, message)
        assert "header" in message and "gpg" not in message.lower(), (label, message)


def test_damaged_payload_is_an_age_error(tmp_path: Path, genuine: Sent) -> None:
    data = genuine.path.read_bytes()
    damaged = tmp_path / genuine.path.name
    damaged.write_bytes(_flip(data, len(data) - 40))
    with pytest.raises(VerificationError, match="age decryption failed: the encrypted content is damaged"):
        verify_package(damaged, identity=genuine.keys.identity, sender_key=genuine.keys.signing_public)


def test_unknown_file_is_neither_age_nor_gpg(tmp_path: Path, genuine: Sent) -> None:
    junk = tmp_path / "notes.bin"
    junk.write_bytes(b"hello, this is not a package\n")
    with pytest.raises(VerificationError, match="neither an age file"):
        verify_package(junk, identity=genuine.keys.identity, sender_key=genuine.keys.signing_public)


# ---- a killed decrypt leaves nothing for long ---------------------------------------------------


KILLED_DECRYPT = """
import os, signal, sys
from pathlib import Path
import delivery.verify as verify
def killed(files_dir, out_dir):  # every file unpacked into the private incoming folder; then SIGKILL
    os.kill(os.getpid(), signal.SIGKILL)
verify._place = killed
verify.decrypt_package(Path(sys.argv[1]), identity=Path(sys.argv[2]), out_dir=Path(sys.argv[3]),
                       sender_key=Path(sys.argv[4]))
"""


def test_leftovers_of_a_killed_decrypt_are_removed_by_the_next(tmp_path: Path, genuine: Sent,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    received = tmp_path / "received"
    proc = subprocess.run([sys.executable, "-c", KILLED_DECRYPT, str(genuine.path), str(genuine.keys.identity),
                           str(received / "first"), str(genuine.keys.signing_public)],
                          cwd=REPO, capture_output=True, timeout=120, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    [left] = list(received.iterdir())
    assert left.name.startswith(".first.incoming-")
    assert stat.S_IMODE(left.stat().st_mode) == 0o700  # unverified plaintext, but private
    assert (left / "files" / "data" / "claimants.parquet").exists()
    assert stat.S_IMODE((left / "files" / "data" / "claimants.parquet").stat().st_mode) == 0o600
    assert main(["decrypt", str(genuine.path), "--identity", str(genuine.keys.identity), "--sender-key",
                 str(genuine.keys.signing_public), "--out", str(received / "second")]) == 0
    assert f"removed {left.name}" in capsys.readouterr().out
    assert sorted(p.name for p in received.iterdir()) == ["second"]


def test_a_running_decrypts_folder_is_not_swept(tmp_path: Path, genuine: Sent) -> None:
    received = tmp_path / "received"
    received.mkdir()
    mine = received / f".other.incoming-{os.getpid()}-0123abcd"  # a live process (this one)
    mine.mkdir()
    legacy_fresh = received / ".old.incoming-89abcdef"  # old naming, recent: may still be running
    legacy_fresh.mkdir()
    decrypt_package(genuine.path, identity=genuine.keys.identity, out_dir=received / "out",
                    sender_key=genuine.keys.signing_public)
    assert mine.exists() and legacy_fresh.exists()
    os.utime(legacy_fresh, (0, 0))  # old naming, a day old: gone
    decrypt_package(genuine.path, identity=genuine.keys.identity, out_dir=received / "out2",
                    sender_key=genuine.keys.signing_public)
    assert mine.exists() and not legacy_fresh.exists()


def test_verify_reports_sender_recipient_and_hashes(tmp_path: Path, genuine: Sent) -> None:
    result = verify_package(genuine.path, identity=genuine.keys.identity, sender_key=genuine.keys.signing_openssh)
    assert result.sender_fingerprint == fingerprint(load_public_key(genuine.keys.signing_public))
    assert result.recipient == {"name": "acme-analyst", "fingerprint": genuine.manifest["recipients"][0]["fingerprint"]}
    assert result.package_sha256 == sha256_file(genuine.path)[0]
    assert json.loads(manifest_bytes(genuine.manifest)) == result.manifest
