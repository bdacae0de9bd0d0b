"""Approvals for tests: throwaway approver keys, a registry, and signed approvals of contracts.

``approve_for_tests(config_dir, home)`` registers two test approvers in ``<config_dir>/approvers.yaml``
(``test-iam``, an Information Asset Manager, and ``test-approver``; their private keys are generated
into ``<home>/keys/``) and approves every contract in ``<config_dir>/contracts`` as ``test-iam`` through
the real code path (signature, registry record, ledger record). Call it again after changing a
contract to approve the new content; approvals that already count are not repeated.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from audit.keys import open_ledger
from authorisation.approvals import approve, assess
from authorisation.registry import IAM_ROLE, load_registry, registry_path, sync_registry
from authorisation.sshsig import ApproverKey, load_private_key, new_approver_key
from contracts.loading import discover_contract_files, load_contract
from core.settings import load_settings

TEST_APPROVERS: dict[str, str] = {"test-iam": IAM_ROLE, "test-approver": "approver"}


def approver_key_file(home: Path, name: str) -> Path:
    """The private key file of test approver ``name`` (created on first use, mode 0600)."""
    private = home / "keys" / f"approver-{name}"
    if not private.exists():
        private.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        new_approver_key(private, private.with_name(private.name + ".pub"), name)
    return private


def write_registry(config_dir: Path, home: Path, approvers: dict[str, str] | None = None) -> Path:
    """Write ``<config_dir>/approvers.yaml`` listing the test approvers (rewritten only when it differs)."""
    approvers = approvers or TEST_APPROVERS
    lines = ["# Test approvers, written by authorisation.testing. Public keys only.", "approvers:"]
    for name, role in approvers.items():
        key = ApproverKey(load_private_key(approver_key_file(home, name)).public_key())
        lines += [f"  - name: {name}", f"    role: {role}", f'    key: "{key.openssh} {name}"']
    text = "\n".join(lines) + "\n"
    path = registry_path(config_dir)
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return path


def approve_for_tests(config_dir: Path, home: Path, contracts: Iterable[Path] | None = None,
                      approvers: Sequence[str] = ("test-iam",), *, ledger_url: str | None = None,
                      note: str = "approved by the test suite") -> list[int]:
    """Approve ``contracts`` (default: all in ``config_dir/contracts``) as each of ``approvers``, registering the
    test approvers first when there is no registry yet. Returns the seqs of the approval records written."""
    if not registry_path(config_dir).exists():
        write_registry(config_dir, home)
    registry = load_registry(registry_path(config_dir))
    paths = list(contracts) if contracts is not None else discover_contract_files(config_dir / "contracts")
    settings = load_settings()
    if ledger_url is not None:
        from dataclasses import replace

        settings = replace(settings, ledger_url=ledger_url)
    written: list[int] = []
    with open_ledger(settings) as ledger:
        sync_registry(ledger, registry, "pytest")
        for path in paths:
            contract = load_contract(path)
            counting = {v.approver for v in assess(contract, registry, ledger).counting}
            for name in approvers:
                if name in counting:
                    continue
                role = registry.get(name).role if registry.get(name) else TEST_APPROVERS[name]
                record = approve(contract=contract, registry=registry, ledger=ledger, approver=name, role=role,
                                 actor="pytest", note=note, private_key=load_private_key(approver_key_file(home, name)),
                                 contract_file=path)
                written.append(record.seq)
    return written
