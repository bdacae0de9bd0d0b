"""The local drop-folder transport: atomic, exactly once, never overwriting, never escaping its root."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from core.errors import ConfigError, DeliveryError
from delivery.drop_folder import deliver_local

NAME = "C-DEMO-001_20261125T020000Z-1a2b3c4d.tar.age"


def make_package(tmp_path: Path, content: bytes = b"age-encryption.org/v1\n" + bytes(range(256)) * 50,
                 name: str = NAME) -> tuple[Path, str]:
    folder = tmp_path / "staging"
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_bytes(content)
    return path, hashlib.sha256(content).hexdigest()


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".partial-" in p.name] if folder.exists() else []


def test_delivers_atomically(tmp_path: Path) -> None:
    package, sha = make_package(tmp_path)
    drop = tmp_path / "drop"
    receipt = deliver_local(package, drop_root=drop, folder="acme-research", expected_sha256=sha)
    final = drop / "acme-research" / NAME
    assert Path(receipt.path).resolve() == final.resolve()
    assert final.read_bytes() == package.read_bytes()
    assert (receipt.transport, receipt.sha256, receipt.bytes, receipt.already_delivered) == \
        ("local", sha, package.stat().st_size, False)
    assert leftovers(drop / "acme-research") == []
    assert [p.name for p in (drop / "acme-research").iterdir()] == [NAME]
    assert package.exists()  # the staged package is the caller's to clean


def test_nested_folder(tmp_path: Path) -> None:
    package, sha = make_package(tmp_path)
    receipt = deliver_local(package, drop_root=tmp_path / "drop", folder="acme/inbound", expected_sha256=sha)
    assert Path(receipt.path).parent == (tmp_path / "drop" / "acme" / "inbound").resolve()


def test_second_delivery_with_same_sha_is_already_delivered(tmp_path: Path) -> None:
    package, sha = make_package(tmp_path)
    drop = tmp_path / "drop"
    first = deliver_local(package, drop_root=drop, folder="acme", expected_sha256=sha)
    second = deliver_local(package, drop_root=drop, folder="acme", expected_sha256=sha)
    assert second.already_delivered is True
    assert (second.path, second.sha256, second.bytes) == (first.path, first.sha256, first.bytes)
    assert leftovers(drop / "acme") == []


def test_different_content_at_final_name_is_refused(tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    (drop / "acme").mkdir(parents=True)
    (drop / "acme" / NAME).write_bytes(b"someone else's package")
    package, sha = make_package(tmp_path)
    with pytest.raises(DeliveryError, match="different content"):
        deliver_local(package, drop_root=drop, folder="acme", expected_sha256=sha)
    assert (drop / "acme" / NAME).read_bytes() == b"someone else's package"
    assert leftovers(drop / "acme") == []


def test_wrong_expected_sha_leaves_nothing(tmp_path: Path) -> None:
    package, sha = make_package(tmp_path)
    drop = tmp_path / "drop"
    with pytest.raises(DeliveryError, match="sha256"):
        deliver_local(package, drop_root=drop, folder="acme", expected_sha256="0" * 64)
    assert not (drop / "acme" / NAME).exists()
    assert leftovers(drop / "acme") == []
    # A correct retry afterwards succeeds.
    assert deliver_local(package, drop_root=drop, folder="acme", expected_sha256=sha).already_delivered is False


@pytest.mark.parametrize("folder", ["../x", "/abs", "acme/../../x", "..", "acme/..", "a b", "acme;rm", ".hidden"],
                         ids=["dot-dot", "absolute", "nested-dot-dot", "parent", "trailing-dot-dot", "space",
                              "semicolon", "hidden"])
def test_unsafe_folder_is_refused(tmp_path: Path, folder: str) -> None:
    package, sha = make_package(tmp_path)
    drop = tmp_path / "drop"
    with pytest.raises(ConfigError):
        deliver_local(package, drop_root=drop, folder=folder, expected_sha256=sha)
    assert not (tmp_path / "x").exists()
    assert not Path("/abs").exists()
    assert [p for p in tmp_path.rglob(NAME) if p != package] == []


def test_symlinked_folder_escaping_the_root_is_refused(tmp_path: Path) -> None:
    package, sha = make_package(tmp_path)
    drop = tmp_path / "drop"
    drop.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (drop / "acme").symlink_to(outside)
    with pytest.raises(ConfigError, match="escapes"):
        deliver_local(package, drop_root=drop, folder="acme", expected_sha256=sha)
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("name", [".hidden.tar.age", "a b.tar.age", "café.tar.age"],
                         ids=["hidden", "space", "non-ascii"])
def test_unsafe_package_name_is_refused(tmp_path: Path, name: str) -> None:
    package, sha = make_package(tmp_path, name=name)
    with pytest.raises(ConfigError):
        deliver_local(package, drop_root=tmp_path / "drop", folder="acme", expected_sha256=sha)
    assert not (tmp_path / "drop" / "acme").exists()
