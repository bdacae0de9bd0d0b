"""The approval gate through the real Pipeline, with the ledger on SQLite and on PostgreSQL.

Every refusal must be fail-closed: the run raises, the ledger gets a ``blocked`` record from the
``authorise`` stage naming the reason, nothing is extracted or delivered, and staging is gone. And
the way out is real: after re-approval the same change runs through.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from pathlib import Path

import pyrage
import pytest
import yaml
from sqlalchemy.engine import make_url

from audit.opening import new_ledger_key_file, open_ledger
from authorisation import approver_keys
from authorisation.approvals import APPROVED, Statement, approve, assess, refusal, revoke
from authorisation.registry import IAM_ROLE, REGISTRY_ACTION, load_registry, registry_path
from contracts.loading import content_hash, load_contract
from core.errors import AuthorisationError
from core.settings import load_settings
from pipeline.stages import Pipeline, RunContext
from tests.authorisation.helpers import (
    TEST_APPROVERS,
    approve_catalogue_for_tests,
    approve_for_tests,
    approver_key_file,
    catalogue_of,
    write_registry,
)
from tests.conftest import Workspace

CONTRACT = "C-DEMO-002"


def contract_path(ws: Workspace, contract: str = CONTRACT) -> Path:
    return ws.contracts_dir / f"{contract}.yaml"


def make_pipeline(ws: Workspace, source_url: str, contract: str = CONTRACT, **overrides) -> Pipeline:
    ctx = RunContext(contract_path=contract_path(ws, contract), settings=load_settings(), actor="pytest",
                     run_key=f"test/{uuid.uuid4()}", run_after=dt.datetime.now(dt.UTC),
                     resolve_connection=lambda _conn_id: make_url(source_url),
                     trigger={"system": "pytest"}, **overrides)
    return Pipeline(ctx)


def edit(ws: Workspace, change: Callable[[dict], None], contract: str = CONTRACT) -> None:
    path = contract_path(ws, contract)
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def delivery_records(delivery: str) -> list[tuple[str, dict]]:
    with open_ledger() as ledger:
        return [(r.action, r.details_obj()) for r in ledger.records(delivery=delivery)]


def drop_files(ws: Workspace) -> list[Path]:
    drop = ws.home / "drop"
    return [p for p in drop.rglob("*") if p.is_file()] if drop.exists() else []


def assert_refused(ws: Workspace, source_url: str, reason: str, contract: str = CONTRACT, **overrides) -> dict:
    """Run ``contract``; it must be refused at authorise for ``reason``, fail-closed. Returns the blocked record."""
    before = drop_files(ws)
    pipeline = make_pipeline(ws, source_url, contract, **overrides)
    with pytest.raises(AuthorisationError) as excinfo:
        pipeline.run_all()
    assert reason in str(excinfo.value)
    records = delivery_records(pipeline.delivery_id)
    actions = [a for a, _ in records]
    assert actions[0] == "run_started"
    blocked = [d for a, d in records if a == "blocked"]
    assert len(blocked) == 1 and blocked[0]["stage"] == "authorise", actions
    assert reason in blocked[0]["reason"]
    assert not {"authorised", "extract_done", "delivered", "run_completed"} & set(actions), actions
    assert drop_files(ws) == before, "nothing may be delivered"
    assert not pipeline.staging.exists()
    return blocked[0]


def assert_runs(ws: Workspace, source_url: str, contract: str = CONTRACT) -> dict:
    """Run ``contract`` to delivery; return its ``authorised`` record."""
    pipeline = make_pipeline(ws, source_url, contract)
    result = pipeline.run_all()
    assert result["package"]["sha256"]
    records = delivery_records(pipeline.delivery_id)
    actions = [a for a, _ in records]
    assert actions[:2] == ["run_started", "authorised"] and "delivered" in actions, actions
    return records[1][1]


def approve_as(ws: Workspace, name: str, contract: str = CONTRACT, note: str | None = None) -> int:
    """Approve ``contract`` as ``name`` (its catalogue must be approved already)."""
    path = contract_path(ws, contract)
    registry = load_registry(registry_path(ws.config_dir))
    with open_ledger() as ledger:
        return approve(contract=load_contract(path), catalogue=catalogue_of(ws.config_dir), registry=registry,
                       ledger=ledger, approver=name, role=registry.get(name).role, actor="pytest", note=note,
                       private_key=approver_keys.load_private_key(approver_key_file(ws.home, name))).seq


# --------------------------------------------------------------------------------------------------
# No approval, and the way in
# --------------------------------------------------------------------------------------------------


def test_unapproved_contract_is_refused_then_approval_lets_it_run(gate_ws: Workspace, source_url: str) -> None:
    write_registry(gate_ws.config_dir, gate_ws.home)
    assert_refused(gate_ws, source_url, "the source catalogue demo_claims has no approval of its current content")
    approve_catalogue_for_tests(gate_ws.config_dir, gate_ws.home)
    assert_refused(gate_ws, source_url, "has no approval for its current content")
    seq = approve_as(gate_ws, "test-iam")
    authorised = assert_runs(gate_ws, source_url)
    assert authorised["contract_hash"] == content_hash(load_contract(contract_path(gate_ws)))
    assert authorised["approvals"] == [{"seq": seq, "approver": "test-iam", "role": IAM_ROLE,
                                        "fingerprint": load_registry(registry_path(gate_ws.config_dir))
                                        .get("test-iam").fingerprint}]
    assert authorised["registry_sha256"] == load_registry(registry_path(gate_ws.config_dir)).sha256
    catalogue = catalogue_of(gate_ws.config_dir)
    assert authorised["catalogue"]["source"] == "demo_claims"
    assert authorised["catalogue"]["sha256"] == catalogue.content_sha256
    assert [a["approver"] for a in authorised["catalogue"]["approvals"]] == ["test-iam"]


def test_missing_registry_refuses_every_run(gate_ws: Workspace, source_url: str) -> None:
    approve_for_tests(gate_ws.config_dir, gate_ws.home)
    registry_path(gate_ws.config_dir).unlink()
    assert_refused(gate_ws, source_url, "approver registry")


# --------------------------------------------------------------------------------------------------
# Dates and assurance (checked before approvals: even an approved contract is refused)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("change", "reason"), [
    pytest.param(lambda d: d.update(valid={"from": dt.date(2020, 1, 1), "until": dt.date(2021, 1, 1)}),
                 "expired on 2021-01-01", id="contract-expired"),
    pytest.param(lambda d: d.update(valid={"from": dt.date(2099, 1, 1), "until": dt.date(2099, 12, 31)}),
                 "not valid before 2099-01-01", id="not-yet-valid"),
    pytest.param(lambda d: d["security_assurance"].update(expires=dt.date(2021, 1, 1)),
                 "security assurance SARA-DEMO-11", id="assurance-expired"),
])
def test_dates_and_assurance_refuse_even_approved_contracts(gate_ws: Workspace, source_url: str, change,
                                                             reason: str) -> None:
    edit(gate_ws, change)
    approve_for_tests(gate_ws.config_dir, gate_ws.home)
    assert_refused(gate_ws, source_url, reason)


def test_today_is_taken_from_the_run_context(gate_ws: Workspace, source_url: str) -> None:
    approve_for_tests(gate_ws.config_dir, gate_ws.home)
    assert_refused(gate_ws, source_url, "expired on 2030-12-31", today=dt.date(2031, 1, 1))


# --------------------------------------------------------------------------------------------------
# Any change needs re-approval; the refusal says what changed; re-approval lets the run through
# --------------------------------------------------------------------------------------------------


def _new_recipient(d: dict) -> None:
    d["recipients"].append({"name": "eve-analyst", "age": str(pyrage.x25519.Identity.generate().to_public())})


def _rekey_recipient(d: dict) -> None:
    d["recipients"][0]["age"] = str(pyrage.x25519.Identity.generate().to_public())


CHANGES = [
    pytest.param(lambda d: d["datasets"][0]["columns"].update(sex={"treatment": "keep"}),
                 "dataset claimants: column sex added", id="attribute-added"),
    pytest.param(lambda d: d["datasets"][0]["columns"].pop("region"),
                 "dataset claimants: column region removed", id="attribute-removed"),
    pytest.param(lambda d: d["datasets"][0]["columns"].update(date_of_birth={"treatment": "keep"}),
                 "dataset claimants: treatment of column date_of_birth changed", id="treatment"),
    pytest.param(lambda d: d["datasets"][0].update(filter={"claim_start": {"gte": dt.date(2018, 1, 1)}}),
                 "dataset claimants: filters changed", id="filter"),
    pytest.param(_new_recipient, "the recipient list changed since approval", id="recipient-added"),
    pytest.param(_rekey_recipient, "new key for borealis-analyst", id="recipient-rekeyed"),
    pytest.param(lambda d: d.update(business_case="BC-DEMO-9999"), "the business case", id="business-case"),
]


@pytest.mark.parametrize(("change", "reason"), CHANGES)
def test_change_since_approval_is_refused_until_reapproved(gate_ws: Workspace, source_url: str, change,
                                                           reason: str) -> None:
    approve_for_tests(gate_ws.config_dir, gate_ws.home)
    edit(gate_ws, change)
    blocked = assert_refused(gate_ws, source_url, reason)
    assert "changed since approval" in blocked["reason"] or "recipient list changed" in blocked["reason"]
    approve_for_tests(gate_ws.config_dir, gate_ws.home)
    assert_runs(gate_ws, source_url)


def test_recipient_change_names_who(gate_ws: Workspace, source_url: str) -> None:
    approve_for_tests(gate_ws.config_dir, gate_ws.home)
    edit(gate_ws, _new_recipient)
    blocked = assert_refused(gate_ws, source_url, "recipient list changed")
    assert "added eve-analyst" in blocked["reason"]


def test_sample_change_needs_reapproval(gate_ws: Workspace, source_url: str) -> None:
    approve_for_tests(gate_ws.config_dir, gate_ws.home)
    edit(gate_ws, lambda d: d.update(sample={"fraction": 0.5, "max_records": 50}))
    assert_refused(gate_ws, source_url, "the sample")
    approve_for_tests(gate_ws.config_dir, gate_ws.home)
    # Past the approval gate now; whether sampling itself runs is another stage's business.
    registry = load_registry(registry_path(gate_ws.config_dir))
    with open_ledger() as ledger:
        assert refusal(load_contract(contract_path(gate_ws)), assess(load_contract(contract_path(gate_ws)),
                                                                     registry, ledger)) is None


def test_yaml_layout_and_comments_do_not_need_reapproval(gate_ws: Workspace, source_url: str) -> None:
    approve_for_tests(gate_ws.config_dir, gate_ws.home)
    path = contract_path(gate_ws)
    data = yaml.safe_load(path.read_text())
    path.write_text("# reformatted, same content\n" + yaml.safe_dump(data, sort_keys=False, default_flow_style=True))
    assert_runs(gate_ws, source_url)


# --------------------------------------------------------------------------------------------------
# Unmasked columns: two approvers, one an Information Asset Manager
# --------------------------------------------------------------------------------------------------


def _unmask_region(d: dict) -> None:
    d["unmasked"] = [{"dataset": "claimants", "column": "region",
                      "business_requirement": "survey fieldwork is planned by region"}]


def test_unmasked_needs_two_approvers_one_an_iam(gate_ws: Workspace, source_url: str) -> None:
    edit(gate_ws, _unmask_region)
    approve_for_tests(gate_ws.config_dir, gate_ws.home, approvers=("test-iam",))
    assert_refused(gate_ws, source_url, "unmasked columns (claimants.region)")
    approve_as(gate_ws, "test-iam")  # the same person approving twice is still one approver
    assert_refused(gate_ws, source_url, "two different approvers")
    approve_for_tests(gate_ws.config_dir, gate_ws.home, approvers=("test-approver",))
    authorised = assert_runs(gate_ws, source_url)
    assert sorted(a["approver"] for a in authorised["approvals"]) == ["test-approver", "test-iam"]


def test_unmasked_with_two_approvers_but_no_iam_is_refused(gate_ws: Workspace, source_url: str) -> None:
    registry = {"test-iam": IAM_ROLE, "test-approver": "approver", "test-dpo": "data-protection-officer"}
    write_registry(gate_ws.config_dir, gate_ws.home, registry)
    approve_catalogue_for_tests(gate_ws.config_dir, gate_ws.home)  # by its owner; the contract is not
    edit(gate_ws, _unmask_region)
    approve_as(gate_ws, "test-approver")
    approve_as(gate_ws, "test-dpo")
    blocked = assert_refused(gate_ws, source_url, "one of them an Information Asset Manager")
    assert "test-approver (approver)" in blocked["reason"] and "test-dpo (data-protection-officer)" in blocked["reason"]


def test_unmasked_change_after_two_approvals_needs_both_again(gate_ws: Workspace, source_url: str) -> None:
    edit(gate_ws, _unmask_region)
    approve_for_tests(gate_ws.config_dir, gate_ws.home, approvers=("test-iam", "test-approver"))
    assert_runs(gate_ws, source_url)
    edit(gate_ws, lambda d: d["unmasked"].append({"dataset": "claimants", "column": "benefit_code",
                                                   "business_requirement": "survey routing by benefit"}))
    assert_refused(gate_ws, source_url, "the unmasked columns")
    approve_for_tests(gate_ws.config_dir, gate_ws.home, approvers=("test-iam",))
    assert_refused(gate_ws, source_url, "two different approvers")


# --------------------------------------------------------------------------------------------------
# Withdrawal, signatures, the registry
# --------------------------------------------------------------------------------------------------


def test_revoked_approval_no_longer_counts_until_approved_again(gate_ws: Workspace, source_url: str) -> None:
    approve_for_tests(gate_ws.config_dir, gate_ws.home)
    with open_ledger() as ledger:
        revoke(contract=load_contract(contract_path(gate_ws)), contract_id=CONTRACT, ledger=ledger, actor="pytest",
               reason="assurance under review", registry=load_registry(registry_path(gate_ws.config_dir)))
    assert_refused(gate_ws, source_url, "withdrawn by record")
    approve_for_tests(gate_ws.config_dir, gate_ws.home)
    assert_runs(gate_ws, source_url)


def test_replayed_signature_after_withdrawal_does_not_count(gate_ws: Workspace, source_url: str) -> None:
    approve_for_tests(gate_ws.config_dir, gate_ws.home)
    with open_ledger() as ledger:
        original = ledger.records(contract=CONTRACT, action=APPROVED)[-1]
        revoke(contract=None, contract_id=CONTRACT, ledger=ledger, actor="pytest", approver="test-iam")
        # Someone with ledger access copies the old, validly signed approval back in.
        ledger.append(actor="mallory", action=APPROVED, contract=CONTRACT, delivery=None,
                      details=original.details_obj())
    blocked = assert_refused(gate_ws, source_url, "no valid approval")
    assert "withdrawn by record" in blocked["reason"]


def _forged_approval(ws: Workspace, signer: str, claimed: str) -> dict:
    """An approval record claiming ``claimed`` but signed with ``signer``'s key."""
    contract = load_contract(contract_path(ws))
    registry = load_registry(registry_path(ws.config_dir))
    entry = registry.get(claimed)
    statement = Statement(contract=CONTRACT, content_sha256=content_hash(contract), approver=claimed,
                          role=entry.role, signed_at=dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"))
    key = approver_keys.load_private_key(approver_key_file(ws.home, signer))
    signature = approver_keys.sign(key, statement.message())
    return {"approver": claimed, "role": entry.role, "content_sha256": statement.content_sha256,
            "signed_at": statement.signed_at, "fingerprint": entry.fingerprint, "signature": signature}


def test_approval_with_a_forged_signature_does_not_count(gate_ws: Workspace, source_url: str) -> None:
    approve_for_tests(gate_ws.config_dir, gate_ws.home, contracts=[])  # registers and records the approvers
    approve_catalogue_for_tests(gate_ws.config_dir, gate_ws.home)
    with open_ledger() as ledger:
        ledger.append(actor="mallory", action=APPROVED, contract=CONTRACT, delivery=None,
                      details=_forged_approval(gate_ws, signer="test-approver", claimed="test-iam"))
    blocked = assert_refused(gate_ws, source_url, "no valid approval for its current content")
    assert "signature was made with a different key" in blocked["reason"]


def test_typed_name_without_signature_does_not_count(gate_ws: Workspace, source_url: str) -> None:
    approve_for_tests(gate_ws.config_dir, gate_ws.home, contracts=[])
    approve_catalogue_for_tests(gate_ws.config_dir, gate_ws.home)
    details = _forged_approval(gate_ws, signer="test-iam", claimed="test-iam")
    details["signature"] = "approved, honest"
    with open_ledger() as ledger:
        ledger.append(actor="mallory", action=APPROVED, contract=CONTRACT, delivery=None, details=details)
    assert_refused(gate_ws, source_url, "not an SSH signature")


def test_approver_removed_from_registry_no_longer_counts(gate_ws: Workspace, source_url: str) -> None:
    approve_for_tests(gate_ws.config_dir, gate_ws.home)
    write_registry(gate_ws.config_dir, gate_ws.home, {"test-approver": "approver"})
    assert_refused(gate_ws, source_url, "test-iam is not in the approver registry")
    with open_ledger() as ledger:
        change = ledger.records(action=REGISTRY_ACTION)[-1].details_obj()
    assert change["removed"] == ["test-iam"] and change["added"] == []


def test_role_changed_in_registry_no_longer_counts(gate_ws: Workspace, source_url: str) -> None:
    approve_for_tests(gate_ws.config_dir, gate_ws.home)
    write_registry(gate_ws.config_dir, gate_ws.home, {"test-iam": "approver", "test-approver": "approver"})
    assert_refused(gate_ws, source_url, "registered as approver, but approved as information-asset-manager")


def test_reordered_columns_need_reapproval(gate_ws: Workspace, source_url: str) -> None:
    approve_for_tests(gate_ws.config_dir, gate_ws.home)
    edit(gate_ws, lambda d: d["datasets"][0].update(columns=dict(reversed(d["datasets"][0]["columns"].items()))))
    assert_refused(gate_ws, source_url, "dataset claimants: column order changed")


def test_approval_from_a_key_registered_after_it_does_not_count(gate_ws: Workspace, source_url: str) -> None:
    # An approval written straight into the ledger by a key nobody had registered, and the key added later.
    write_registry(gate_ws.config_dir, gate_ws.home, {"test-approver": "approver"})
    approve_for_tests(gate_ws.config_dir, gate_ws.home, contracts=[])
    approver_key_file(gate_ws.home, "test-iam")
    write_registry(gate_ws.config_dir, gate_ws.home)  # adds test-iam, not yet recorded in the ledger
    with open_ledger() as ledger:
        ledger.append(actor="mallory", action=APPROVED, contract=CONTRACT, delivery=None,
                      details=_forged_approval(gate_ws, signer="test-iam", claimed="test-iam"))
    approve_catalogue_for_tests(gate_ws.config_dir, gate_ws.home)  # records test-iam, after the forged record
    blocked = assert_refused(gate_ws, source_url, "registered later")
    with open_ledger() as ledger:  # the registry change was recorded (when the catalogue was approved)
        assert ledger.records(action=REGISTRY_ACTION)[-1].details_obj()["added"] == ["test-iam"]
    approve_for_tests(gate_ws.config_dir, gate_ws.home)  # a real approval after registration counts
    assert_runs(gate_ws, source_url)
    assert "mallory" not in blocked["reason"]


def test_registry_is_recorded_once_per_change(gate_ws: Workspace, source_url: str) -> None:
    approve_for_tests(gate_ws.config_dir, gate_ws.home)
    assert_runs(gate_ws, source_url)
    assert_runs(gate_ws, source_url)
    with open_ledger() as ledger:
        states = ledger.records(action=REGISTRY_ACTION)
    assert len(states) == 1
    first = states[0].details_obj()
    assert first["added"] == sorted(TEST_APPROVERS) and first["previous_sha256"] is None
    assert {a["name"] for a in first["approvers"]} == set(TEST_APPROVERS)
    assert first["registry_sha256"] == load_registry(registry_path(gate_ws.config_dir)).sha256


def test_other_contracts_approval_does_not_count(gate_ws: Workspace, source_url: str) -> None:
    approve_for_tests(gate_ws.config_dir, gate_ws.home, contracts=[contract_path(gate_ws, "C-DEMO-001")])
    assert_refused(gate_ws, source_url, "has no approval")
    assert_runs(gate_ws, source_url, "C-DEMO-001")


# --------------------------------------------------------------------------------------------------
# Keyed ledger: the gate and the run write one HMAC chain
# --------------------------------------------------------------------------------------------------


def test_keyed_ledger_end_to_end(gate_ws: Workspace, source_url: str, monkeypatch: pytest.MonkeyPatch,
                                 tmp_path: Path) -> None:
    key_file = tmp_path / "ledger.key"
    new_ledger_key_file(key_file)
    monkeypatch.setenv("CONTRACT_EXTRACTS_LEDGER_KEY_FILE", str(key_file))
    # Pipeline.ledger opened through open_ledger (the one-line change to Pipeline.ledger proposed with #4;
    # harmless once applied).
    monkeypatch.setattr(Pipeline, "ledger", property(
        lambda self: self.__dict__.setdefault("_keyed_ledger", open_ledger(self.ctx.settings))))
    approve_for_tests(gate_ws.config_dir, gate_ws.home)
    assert_runs(gate_ws, source_url)
    edit(gate_ws, _new_recipient)
    assert_refused(gate_ws, source_url, "recipient list changed")
    with open_ledger() as ledger:
        assert ledger.keyed and ledger.verify().ok
    monkeypatch.delenv("CONTRACT_EXTRACTS_LEDGER_KEY_FILE")
    with open_ledger() as ledger:  # without the key the chain does not verify, and nobody can extend it
        assert ledger.verify().first_broken_seq == 1
