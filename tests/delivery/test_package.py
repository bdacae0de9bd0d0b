"""Building the package: age file, tar layout, manifest bytes and signature, no plaintext left behind."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyrage
import pytest
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from core.errors import KeyMaterialError
from delivery.package import (
    PACKAGE_FORMAT,
    PackageFile,
    build_package,
    file_entries,
    manifest_bytes,
    package_name,
    sha256_file,
)
from delivery.recipients import load_identities, new_identity_file
from delivery.signing import load_signing_key

from .conftest import CONTRACT, CREATED_EPOCH, DELIVERY, Keys, Sent, build_demo_package, read_members


def test_package_name() -> None:
    assert package_name("C-2026-017", "20261125T020000Z-1a2b3c4d") == \
        "C-2026-017_20261125T020000Z-1a2b3c4d.tar.age"


def test_built_package_facts(sent: Sent) -> None:
    path = sent.path
    assert path.name == f"{CONTRACT}_{DELIVERY}.tar.age"
    data = path.read_bytes()
    assert data.startswith(b"age-encryption.org/v1\n")
    assert sent.built.sha256 == hashlib.sha256(data).hexdigest()
    assert sent.built.bytes == len(data)
    assert sent.built.manifest_sha256 == hashlib.sha256(manifest_bytes(sent.manifest)).hexdigest()
    # The plaintext tar is gone from staging.
    assert not list(path.parent.glob("*.plain"))
    assert sorted(p.name for p in path.parent.iterdir()) == sorted(["codebook.md", "data", path.name])


def test_tar_layout_and_normalised_metadata(sent: Sent) -> None:
    members = read_members(sent.path, sent.keys.identity)
    assert [m.name for m, _ in members] == ["manifest.json", "manifest.sig", "codebook.md",
                                            "data/claimants.parquet"]
    for info, data in members:
        assert info.isreg()
        assert (info.uid, info.gid, info.uname, info.gname) == (0, 0, "", "")
        assert info.mode == 0o644
        assert info.mtime == CREATED_EPOCH
        assert info.size == len(data)
    by_name = {m.name: d for m, d in members}
    assert by_name["manifest.json"] == manifest_bytes(sent.manifest)
    for arcname, data in sent.plaintext.items():
        assert by_name[arcname] == data


def test_manifest_is_signed_with_ed25519(sent: Sent) -> None:
    by_name = {m.name: d for m, d in read_members(sent.path, sent.keys.identity)}
    public = load_pem_public_key(sent.keys.signing_public.read_bytes())
    public.verify(by_name["manifest.sig"], by_name["manifest.json"])  # raises if invalid
    assert len(by_name["manifest.sig"]) == 64


def test_manifest_content(sent: Sent) -> None:
    by_name = {m.name: d for m, d in read_members(sent.path, sent.keys.identity)}
    manifest = json.loads(by_name["manifest.json"])
    assert manifest["format"] == PACKAGE_FORMAT == "contract-extracts/package/v2"
    assert manifest["contract"] == CONTRACT
    assert manifest["delivery"] == DELIVERY
    entries = {e["path"]: e for e in manifest["files"]}
    assert set(entries) == {"codebook.md", "data/claimants.parquet"}
    for path, entry in entries.items():
        assert entry["sha256"] == hashlib.sha256(by_name[path]).hexdigest()
        assert entry["bytes"] == len(by_name[path])
    assert entries["data/claimants.parquet"]["rows"] == 3
    assert [c["name"] for c in entries["data/claimants.parquet"]["schema"]] == ["nino", "date_of_birth", "region"]
    assert "rows" not in entries["codebook.md"]


def test_manifest_bytes_are_canonical() -> None:
    body = manifest_bytes({"b": 1, "a": "ë"})
    assert body == '{\n  "a": "ë",\n  "b": 1\n}\n'.encode()


def test_file_entries(tmp_path: Path) -> None:
    f = tmp_path / "x.bin"
    f.write_bytes(b"abc")
    [entry] = file_entries([PackageFile(arcname="codebook.md", path=f)])
    assert entry == {"path": "codebook.md", "bytes": 3, "sha256": hashlib.sha256(b"abc").hexdigest()}
    assert sha256_file(f) == (hashlib.sha256(b"abc").hexdigest(), 3)


def test_plaintext_is_identical_across_builds(tmp_path: Path, keys: Keys) -> None:
    one = build_demo_package(tmp_path / "one", keys)
    two = build_demo_package(tmp_path / "two", keys)
    plain_one = pyrage.decrypt(one.path.read_bytes(), load_identities(keys.identity))
    plain_two = pyrage.decrypt(two.path.read_bytes(), load_identities(keys.identity))
    assert plain_one == plain_two
    assert one.built.sha256 != two.built.sha256  # age uses a fresh file key every time


def test_every_recipient_can_decrypt(tmp_path: Path, sent: Sent) -> None:
    second_identity = tmp_path / "second.txt"
    second = new_identity_file(second_identity)
    staging = tmp_path / "multi"
    staging.mkdir()
    codebook = staging / "codebook.md"
    codebook.write_text("# Codebook\n")
    files = [PackageFile(arcname="codebook.md", path=codebook)]
    manifest = {"format": PACKAGE_FORMAT, "contract": CONTRACT, "delivery": DELIVERY, "files": file_entries(files)}
    built = build_package(staging_dir=staging, name="multi.tar.age", manifest=manifest, files=files,
                          signing_key=load_signing_key(sent.keys.signing_private),
                          recipients=[sent.keys.recipient, second], created_epoch=CREATED_EPOCH)
    for identity in (sent.keys.identity, second_identity):
        assert pyrage.decrypt(built.path.read_bytes(), load_identities(identity))


def test_invalid_recipient_leaves_nothing(tmp_path: Path, sent: Sent) -> None:
    staging = tmp_path / "bad"
    staging.mkdir()
    codebook = staging / "codebook.md"
    codebook.write_text("# Codebook\n")
    files = [PackageFile(arcname="codebook.md", path=codebook)]
    with pytest.raises(KeyMaterialError, match="recipient"):
        build_package(staging_dir=staging, name="bad.tar.age", manifest={"files": file_entries(files)},
                      files=files, signing_key=load_signing_key(sent.keys.signing_private),
                      recipients=["age1notakey"], created_epoch=CREATED_EPOCH)
    assert sorted(p.name for p in staging.iterdir()) == ["codebook.md"]
