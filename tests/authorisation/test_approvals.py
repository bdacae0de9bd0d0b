"""Approvals as data: the signed statement, what counts, and refusals of bad approve calls."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import yaml

from audit.opening import open_ledger
from authorisation import approver_keys
from authorisation.approvals import (
    APPROVED,
    Statement,
    approve,
    assess,
    make_statement,
    refusal,
    revoke,
)
from authorisation.content import content_parts, describe_changes
from authorisation.registry import load_registry, registry_path
from contracts.loading import content_hash, load_contract
from core.errors import AuthorisationError, KeyMaterialError, VerificationError
from tests.authorisation.helpers import (
    approve_catalogue_for_tests,
    approve_for_tests,
    approver_key_file,
    catalogue_of,
    write_registry,
)
from tests.conftest import Workspace

STATEMENT = Statement(contract="C-2026-017", content_sha256="ab" * 32, approver="jane.doe",
                      role="information-asset-manager", signed_at="2026-11-25T09:12:03.123456+00:00")
PINNED = Statement(**{**STATEMENT.__dict__, "catalogue_sha256": "cd" * 32})


def test_statement_text_is_fixed() -> None:
    assert PINNED.text() == (
        "contract-extracts approval v2\n"
        "contract: C-2026-017\n"
        f"content-sha256: {'ab' * 32}\n"
        f"catalogue-sha256: {'cd' * 32}\n"
        "approver: jane.doe\n"
        "role: information-asset-manager\n"
        "signed-at: 2026-11-25T09:12:03.123456+00:00\n")
    assert Statement.parse(PINNED.text()) == PINNED
    # v1 (before source catalogues) still reads and verifies as it was signed; it pins no catalogue.
    assert STATEMENT.text().startswith("contract-extracts approval v1\ncontract: C-2026-017\n")
    assert Statement.parse(STATEMENT.text()) == STATEMENT and STATEMENT.catalogue_sha256 is None


@pytest.mark.parametrize("text", [
    "",
    STATEMENT.text().replace("v1", "v2"),
    STATEMENT.text().rstrip("\n"),
    STATEMENT.text().replace("approver: ", "approver:  "),
    STATEMENT.text().replace("+00:00", "+01:00"),
    STATEMENT.text().replace("09:12:03.123456", "09:12:03"),
    STATEMENT.text().replace("\n", "\r\n"),
    STATEMENT.text() + "extra: 1\n",
    PINNED.text().replace("v2", "v1"),
    PINNED.text().replace("cd" * 32, "CD" * 32),
    PINNED.text().replace(f"catalogue-sha256: {'cd' * 32}\n", ""),
    PINNED.text().replace("cd" * 32, ""),
], ids=["empty", "version", "no-final-newline", "spacing", "not-utc", "no-micros", "crlf", "extra-line",
        "v1-with-catalogue", "catalogue-upper-case", "v2-without-catalogue", "v2-empty-catalogue"])
def test_statement_must_be_canonical(text: str) -> None:
    with pytest.raises(VerificationError):
        Statement.parse(text)


def _contract(ws: Workspace, change=None):
    path = ws.contracts_dir / "C-DEMO-001.yaml"
    if change is not None:
        data = yaml.safe_load(path.read_text())
        change(data)
        path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_contract(path)


def test_describe_changes_in_words(gate_ws: Workspace) -> None:
    before = content_parts(_contract(gate_ws))
    after = content_parts(_contract(gate_ws, lambda d: (
        d["datasets"][0]["columns"].pop("sex"),
        d["datasets"][0]["columns"].update(postcode={"treatment": "keep"}),
        d["datasets"][1].update(filter={"amount": {"gt": 0}}),
        d.update(sample={"fraction": 0.1, "max_records": 10}),
        d["datasets"].append({"name": "extra", "table": "payments", "columns": {"amount": {"treatment": "keep"}}}),
    )))
    assert describe_changes(before, after) == [
        "the sample",
        "dataset claimants: column postcode added, column sex removed",
        "dataset extra added",
        "dataset payments: filters changed",
    ]
    assert describe_changes(before, before) == []


def test_approve_refuses_wrong_key_unknown_approver_and_wrong_role(gate_ws: Workspace) -> None:
    write_registry(gate_ws.config_dir, gate_ws.home)
    registry = load_registry(registry_path(gate_ws.config_dir))
    contract = _contract(gate_ws)
    catalogue = catalogue_of(gate_ws.config_dir)
    other = approver_keys.load_private_key(approver_key_file(gate_ws.home, "test-approver"))
    own = approver_keys.load_private_key(approver_key_file(gate_ws.home, "test-iam"))
    with open_ledger() as ledger:
        with pytest.raises(AuthorisationError, match="cannot be approved against an unapproved catalogue"):
            approve(contract=contract, catalogue=catalogue, registry=registry, ledger=ledger, approver="test-iam",
                    role="information-asset-manager", actor="t", private_key=own)
        assert ledger.count() == 0, "a refused approval writes nothing"
    approve_catalogue_for_tests(gate_ws.config_dir, gate_ws.home)
    with open_ledger() as ledger:
        before = ledger.count()
        with pytest.raises(KeyMaterialError, match="is not test-iam's registered key"):
            approve(contract=contract, catalogue=catalogue, registry=registry, ledger=ledger, approver="test-iam",
                    role="information-asset-manager", actor="t", private_key=other)
        with pytest.raises(AuthorisationError, match="not in the approver registry"):
            approve(contract=contract, catalogue=catalogue, registry=registry, ledger=ledger, approver="nobody",
                    role="approver", actor="t", private_key=other)
        with pytest.raises(AuthorisationError, match="--role approver"):
            approve(contract=contract, catalogue=catalogue, registry=registry, ledger=ledger,
                    approver="test-approver", role="information-asset-manager", actor="t", private_key=other)
        assert ledger.count() == before, "a refused approval writes nothing"


def test_approve_with_statement_checks_content_date_and_withdrawals(gate_ws: Workspace) -> None:
    write_registry(gate_ws.config_dir, gate_ws.home)
    registry = load_registry(registry_path(gate_ws.config_dir))
    key = approver_keys.load_private_key(approver_key_file(gate_ws.home, "test-iam"))
    contract = _contract(gate_ws)
    catalogue = catalogue_of(gate_ws.config_dir)
    approve_catalogue_for_tests(gate_ws.config_dir, gate_ws.home)
    old = make_statement(contract, registry, "test-iam", "information-asset-manager", catalogue=catalogue)
    old_sig = approver_keys.sign(key, old.message())
    kwargs = {"registry": registry, "approver": "test-iam", "role": "information-asset-manager", "actor": "t",
              "catalogue": catalogue}
    with open_ledger() as ledger:
        revoke(contract=None, contract_id="C-DEMO-001", ledger=ledger, actor="t")
        with pytest.raises(AuthorisationError, match="signed before approvals were withdrawn"):
            approve(contract=contract, ledger=ledger, statement=old, signature=old_sig, **kwargs)
        future = Statement(**{**old.__dict__, "signed_at": "2099-01-01T00:00:00.000000+00:00"})
        with pytest.raises(AuthorisationError, match="dated in the future"):
            approve(contract=contract, ledger=ledger, statement=future,
                    signature=approver_keys.sign(key, future.message()), **kwargs)
        fresh = make_statement(contract, registry, "test-iam", "information-asset-manager", catalogue=catalogue)
        unpinned = Statement(**{**fresh.__dict__, "catalogue_sha256": None})
        with pytest.raises(AuthorisationError, match="pins no source catalogue"):
            approve(contract=contract, ledger=ledger, statement=unpinned,
                    signature=approver_keys.sign(key, unpinned.message()), **kwargs)
        with pytest.raises(AuthorisationError, match="does not verify"):
            approve(contract=contract, ledger=ledger, statement=fresh, signature=old_sig, **kwargs)
        changed = _contract(gate_ws, lambda d: d.update(title="Another title"))
        with pytest.raises(AuthorisationError, match="changed after the statement was made"):
            approve(contract=changed, ledger=ledger, statement=fresh,
                    signature=approver_keys.sign(key, fresh.message()), **kwargs)
        record = approve(contract=contract, ledger=ledger, statement=fresh,
                         signature=approver_keys.sign(key, fresh.message()), **kwargs)
        assert record.action == APPROVED and record.details_obj()["signed_at"] == fresh.signed_at
        assert record.details_obj()["catalogue"] == {"source": "demo_claims", "sha256": catalogue.content_sha256}
        assert refusal(contract, assess(contract, registry, ledger, catalogue)) is None


def test_withdrawal_by_one_approver_leaves_the_others(gate_ws: Workspace) -> None:
    approve_for_tests(gate_ws.config_dir, gate_ws.home, approvers=("test-iam", "test-approver"))
    registry = load_registry(registry_path(gate_ws.config_dir))
    contract = _contract(gate_ws)
    with open_ledger() as ledger:
        record = revoke(contract=contract, contract_id=contract.contract, ledger=ledger, actor="cli:bob",
                        approver="test-approver", reason="left the team", registry=registry)
        assessment = assess(contract, registry, ledger)
    assert [v.approver for v in assessment.counting] == ["test-iam"]
    withdrawn = [v for v in assessment.approvals if not v.counts]
    assert len(withdrawn) == 1 and withdrawn[0].approver == "test-approver"
    assert withdrawn[0].problem == f"withdrawn by record #{record.seq} (left the team)"
    assert record.details_obj()["withdrawn"] == [withdrawn[0].seq]


def test_approval_record_holds_no_secrets_and_what_an_auditor_needs(gate_ws: Workspace) -> None:
    approve_for_tests(gate_ws.config_dir, gate_ws.home)
    contract = _contract(gate_ws)
    with open_ledger() as ledger:
        record = ledger.records(contract="C-DEMO-001", action=APPROVED)[-1]
    details = record.details_obj()
    assert details["content_sha256"] == content_hash(contract)
    assert details["approver"] == "test-iam" and details["namespace"] == "contract-extracts-approval"
    assert details["signature"].startswith("-----BEGIN SSH SIGNATURE-----")
    assert "PRIVATE" not in record.details
    statement = Statement(contract=record.contract, content_sha256=details["content_sha256"],
                          approver=details["approver"], role=details["role"], signed_at=details["signed_at"],
                          catalogue_sha256=details["catalogue"]["sha256"])
    registry = load_registry(registry_path(gate_ws.config_dir))
    approver_keys.verify(details["signature"], statement.message(), registry.get("test-iam").key)
    assert dt.datetime.fromisoformat(details["signed_at"]) <= dt.datetime.fromisoformat(record.at)


def test_approvals_of_different_contract_ids_are_independent(gate_ws: Workspace, tmp_path: Path) -> None:
    approve_for_tests(gate_ws.config_dir, gate_ws.home)
    registry = load_registry(registry_path(gate_ws.config_dir))
    c1, c2 = (load_contract(gate_ws.contracts_dir / f"C-DEMO-00{n}.yaml") for n in (1, 2))
    with open_ledger() as ledger:
        revoke(contract=None, contract_id="C-DEMO-001", ledger=ledger, actor="t")
        assert refusal(c1, assess(c1, registry, ledger)) is not None
        assert refusal(c2, assess(c2, registry, ledger)) is None
