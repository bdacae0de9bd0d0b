"""The approver registry file: strict loading, a hash over content (not layout), recorded when it changes."""

from __future__ import annotations

from pathlib import Path

import pytest

from audit.ledger import Ledger
from authorisation import approver_keys
from authorisation.registry import (
    REGISTRY_ACTION,
    load_registry,
    registry_history,
    state_before,
    sync_registry,
)
from core.errors import ConfigError
from tests.conftest import REPO


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, approver_keys.ApproverKey]:
    return {name: approver_keys.new_approver_key(tmp_path / f"{name}.key", tmp_path / f"{name}.pub", name)
            for name in ("jane", "sam")}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "approvers.yaml"
    path.write_text(text)
    return path


def test_repo_registry_loads_and_holds_public_keys_only() -> None:
    registry = load_registry(REPO / "configs" / "approvers.yaml")
    assert [a.name for a in registry.approvers] == ["demo-approver"]
    assert registry.approvers[0].role == "information-asset-manager"
    for path in [REPO / "configs" / "approvers.yaml", *(REPO / "configs" / "approvers").iterdir()]:
        assert "PRIVATE KEY" not in path.read_text()


def test_inline_and_file_keys_and_a_layout_independent_hash(tmp_path: Path, keys) -> None:
    (tmp_path / "approvers").mkdir()
    (tmp_path / "approvers" / "sam.pub").write_text(f"{keys['sam'].openssh} sam@laptop\n")
    first = load_registry(write(tmp_path, f"""
approvers:
  - {{name: jane, role: information-asset-manager, key: "{keys['jane'].openssh} jane@laptop"}}
  - {{name: sam, role: approver, key_file: approvers/sam.pub}}
"""))
    assert first.get("sam").key == keys["sam"] and first.get("jane").fingerprint == keys["jane"].fingerprint
    # Reordered, commented, other key comments, key inlined instead of a file: the same registry.
    second = load_registry(write(tmp_path, f"""# who may approve
approvers:
  - name: sam
    role: approver
    key: "{keys['sam'].openssh} another-comment"
  - name: jane
    role: information-asset-manager
    key: "{keys['jane'].openssh}"
"""))
    assert second.sha256 == first.sha256
    third = load_registry(write(tmp_path, f"""
approvers:
  - {{name: jane, role: approver, key: "{keys['jane'].openssh}"}}
  - {{name: sam, role: approver, key: "{keys['sam'].openssh}"}}
"""))
    assert third.sha256 != first.sha256, "a role change is a registry change"
    assert "jane namespaces=\"contract-extracts-approval\" ssh-ed25519 " in first.allowed_signers()


@pytest.mark.parametrize(("text", "fragment"), [
    ("approvers: {}\n", "one key, 'approvers'"),
    ("approvers: []\nextra: 1\n", "one key, 'approvers'"),
    ("approvers:\n  - {name: jane, role: approver}\n", "exactly one of 'key' and 'key_file'"),
    ("approvers:\n  - {name: jane, role: boss, key: x}\n", "unknown role 'boss'"),
    ("approvers:\n  - {name: 'jane doe', role: approver, key: x}\n", "name is missing"),
    ("approvers:\n  - {name: jane, role: approver, key: x, email: j@x}\n", "unknown key 'email'"),
    ("approvers:\n  - {name: jane, role: approver, key: 'ssh-ed25519 AAAA'}\n", "not an OpenSSH public key"),
    ("approvers:\n  - {name: jane, role: approver, key_file: ../etc/passwd}\n", "relative path inside"),
    ("approvers:\n  - {name: jane, role: approver, key_file: missing.pub}\n", "cannot read the public key file"),
    ("approvers: [&a {name: jane}, *a]\n", "aliases"),
])
def test_bad_registries_name_the_file_and_the_fix(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment) as info:
        load_registry(write(tmp_path, text))
    assert "approvers.yaml" in str(info.value)


def test_duplicate_names_and_shared_keys_are_refused(tmp_path: Path, keys) -> None:
    with pytest.raises(ConfigError, match="listed twice"):
        load_registry(write(tmp_path, f"""approvers:
  - {{name: jane, role: approver, key: "{keys['jane'].openssh}"}}
  - {{name: jane, role: approver, key: "{keys['sam'].openssh}"}}
"""))
    with pytest.raises(ConfigError, match="share one key"):
        load_registry(write(tmp_path, f"""approvers:
  - {{name: jane, role: approver, key: "{keys['jane'].openssh}"}}
  - {{name: jane2, role: information-asset-manager, key: "{keys['jane'].openssh} other"}}
"""))


def test_missing_registry(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_registry(tmp_path / "approvers.yaml")


def test_sync_records_each_change_once(tmp_path: Path, keys) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    try:
        one = load_registry(write(tmp_path, f"approvers:\n  - {{name: jane, role: approver, "
                                            f"key: \"{keys['jane'].openssh}\"}}\n"))
        first = sync_registry(ledger, one, "cli:alice")
        assert first is not None and sync_registry(ledger, one, "cli:alice") is None
        two = load_registry(write(tmp_path, f"""approvers:
  - {{name: jane, role: information-asset-manager, key: "{keys['jane'].openssh}"}}
  - {{name: sam, role: approver, key: "{keys['sam'].openssh}"}}
"""))
        second = sync_registry(ledger, two, "scheduler")
        details = second.details_obj()
        assert (details["added"], details["removed"], details["changed"]) == (["sam"], [], ["jane"])
        assert details["previous_sha256"] == one.sha256 and details["registry_sha256"] == two.sha256
        assert "PRIVATE" not in second.details and keys["jane"].openssh not in second.details
        assert [r.action for r in ledger.records()] == [REGISTRY_ACTION, REGISTRY_ACTION]
        history = registry_history(ledger)
        assert state_before(history, first.seq) is None
        assert state_before(history, second.seq).sha256 == one.sha256
        assert state_before(history, second.seq + 1).approvers["sam"] == ("approver", keys["sam"].fingerprint)
    finally:
        ledger.close()
