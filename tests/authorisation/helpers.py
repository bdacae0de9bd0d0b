"""Approvals for tests: throwaway approver keys, a registry, and signed approvals of contracts.

Kept under tests/, out of the shipped packages.

``approve_for_tests(config_dir, home)`` registers two test approvers in ``<config_dir>/approvers.yaml``
(``test-iam``, an Information Asset Manager, and ``test-approver``; their private keys are generated
into ``<home>/keys/``), approves each contract's source catalogue (``<config_dir>/sources/``) as its owner,
and approves every contract in ``<config_dir>/contracts`` as ``test-iam`` against it, through the real code
path (signature, registry record, ledger record). Call it again after changing a contract or a catalogue
to approve the new content; approvals that already count are not repeated.

``write_catalogues(config_dir)`` copies the repository's source catalogues (``configs/sources/``, the demo
source's) into ``<config_dir>/sources`` with ``test-iam`` as their owner; ``write_catalogue(config_dir, data)``
writes one catalogue given as a mapping (for tests with sources of their own).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from audit.opening import open_ledger
from authorisation.approvals import approve, assess
from authorisation.approver_keys import ApproverKey, load_private_key, new_approver_key
from authorisation.catalogue_approvals import approve_catalogue, assess_catalogue
from authorisation.registry import IAM_ROLE, load_registry, registry_path, sync_registry
from contracts.catalogue import SOURCES_DIR, load_catalogue, load_catalogue_for
from contracts.loading import discover_contract_files, load_contract
from core.settings import load_settings

TEST_APPROVERS: dict[str, str] = {"test-iam": IAM_ROLE, "test-approver": "approver"}
REPO = Path(__file__).resolve().parents[2]
CATALOGUE_OWNER = "test-iam"


def write_catalogue(config_dir: Path, data: Mapping[str, Any]) -> Path:
    """Write ``<config_dir>/sources/<source>.yaml`` from a mapping (checked by loading it back)."""
    path = config_dir / SOURCES_DIR / f"{data['source']}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(dict(data), sort_keys=False, allow_unicode=True), encoding="utf-8")
    load_catalogue(path)
    return path


def write_catalogues(config_dir: Path, owner: str = CATALOGUE_OWNER) -> list[Path]:
    """Copy the repository's catalogues into ``<config_dir>/sources`` with ``owner`` as their owner."""
    written = []
    for template in sorted((REPO / "configs" / SOURCES_DIR).glob("*.yaml")):
        data = yaml.safe_load(template.read_text(encoding="utf-8"))
        data["owner"] = owner
        written.append(write_catalogue(config_dir, data))
    return written


def demo_catalogue(owner: str = CATALOGUE_OWNER) -> dict[str, Any]:
    """The demo source's catalogue as a mapping (to change it in a test)."""
    data: dict[str, Any] = yaml.safe_load((REPO / "configs" / SOURCES_DIR / "demo_claims.yaml").read_text())
    data["owner"] = owner
    return data


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
    lines = ["# Test approvers, written by tests.authorisation.helpers. Public keys only.", "approvers:"]
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
    """Approve ``contracts`` (default: all in ``config_dir/contracts``) as each of ``approvers``, after their source
    catalogues as their owner, registering the test approvers first when there is no registry yet. Returns the seqs
    of the contract approval records written."""
    if not registry_path(config_dir).exists():
        write_registry(config_dir, home)
    registry = load_registry(registry_path(config_dir))
    paths = list(contracts) if contracts is not None else discover_contract_files(config_dir / "contracts")
    settings = load_settings()
    if ledger_url is not None:
        settings = replace(settings, ledger_url=ledger_url)
    written: list[int] = []
    with open_ledger(settings) as ledger:
        sync_registry(ledger, registry, "pytest")
        for path in paths:
            contract = load_contract(path)
            catalogue, catalogue_file = load_catalogue_for(contract, config_dir)
            if not assess_catalogue(catalogue, registry, ledger).counting:
                owner = registry.get(catalogue.owner)
                approve_catalogue(catalogue=catalogue, registry=registry, ledger=ledger, approver=catalogue.owner,
                                  role=owner.role if owner is not None else IAM_ROLE, actor="pytest", note=note,
                                  private_key=load_private_key(approver_key_file(home, catalogue.owner)),
                                  catalogue_file=catalogue_file)
            counting = {v.approver for v in assess(contract, registry, ledger, catalogue).counting}
            for name in approvers:
                if name in counting:
                    continue
                registered = registry.get(name)
                role = registered.role if registered is not None else TEST_APPROVERS[name]
                record = approve(contract=contract, catalogue=catalogue, registry=registry, ledger=ledger,
                                 approver=name, role=role, actor="pytest", note=note,
                                 private_key=load_private_key(approver_key_file(home, name)), contract_file=path)
                written.append(record.seq)
    return written


def catalogue_of(config_dir: Path, source: str = "demo_claims") -> Any:
    """The catalogue ``<config_dir>/sources/<source>.yaml``."""
    return load_catalogue(config_dir / SOURCES_DIR / f"{source}.yaml")


def approve_catalogue_for_tests(config_dir: Path, home: Path, source: str = "demo_claims", *,
                                ledger_url: str | None = None, note: str = "approved by the test suite") -> int | None:
    """Approve the current content of ``<config_dir>/sources/<source>.yaml`` as its owner; the record's seq
    (None when an approval of this content already counts)."""
    if not registry_path(config_dir).exists():
        write_registry(config_dir, home)
    registry = load_registry(registry_path(config_dir))
    path = config_dir / SOURCES_DIR / f"{source}.yaml"
    catalogue = load_catalogue(path)
    settings = load_settings()
    if ledger_url is not None:
        settings = replace(settings, ledger_url=ledger_url)
    with open_ledger(settings) as ledger:
        if assess_catalogue(catalogue, registry, ledger).counting:
            return None
        owner = registry.get(catalogue.owner)
        record = approve_catalogue(catalogue=catalogue, registry=registry, ledger=ledger, approver=catalogue.owner,
                                   role=owner.role if owner is not None else IAM_ROLE, actor="pytest", note=note,
                                   private_key=load_private_key(approver_key_file(home, catalogue.owner)),
                                   catalogue_file=path)
    return record.seq
