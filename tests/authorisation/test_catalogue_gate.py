"""The source catalogue at the approval gate, through the real Pipeline (ledger on SQLite and PostgreSQL).

A catalogue is approved by its owner like a contract; a contract approval pins the catalogue content it was
approved against. A later catalogue change that loosens a class of the tables a contract reads voids that
approval (the ledger says why); tightening, descriptions and other tables do not; a contract that breaks the
current catalogue is refused whatever its approvals. Every refusal is fail-closed (``assert_refused``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest

from audit.opening import open_ledger
from authorisation import approver_keys
from authorisation.approvals import APPROVED, Statement
from authorisation.catalogue_approvals import (
    CATALOGUE_APPROVED,
    CatalogueStatement,
    approve_catalogue,
    pinned_classes,
    revoke_catalogue,
)
from authorisation.registry import IAM_ROLE, load_registry, registry_path
from contracts.catalogue import load_catalogue
from contracts.loading import content_hash, load_contract
from core.errors import AuthorisationError, VerificationError
from tests.authorisation.helpers import (
    approve_catalogue_for_tests,
    approve_for_tests,
    approver_key_file,
    catalogue_of,
    demo_catalogue,
    write_catalogue,
    write_registry,
)
from tests.authorisation.test_run_checks import CONTRACT, assert_refused, assert_runs, contract_path, edit
from tests.conftest import Workspace


def change_catalogue(ws: Workspace, change: Callable[[dict], Any], *, approve: bool = True) -> None:
    data = demo_catalogue()
    change(data)
    write_catalogue(ws.config_dir, data)
    if approve:
        approve_catalogue_for_tests(ws.config_dir, ws.home)


def claimants(d: dict) -> dict:
    return d["tables"]["claimants"]["columns"]


def test_an_unapproved_or_changed_catalogue_refuses_every_contract(gate_ws: Workspace, source_url: str) -> None:
    approve_for_tests(gate_ws.config_dir, gate_ws.home)
    assert_runs(gate_ws, source_url)
    change_catalogue(gate_ws, lambda d: d.update(title="Benefit claims (edited)"), approve=False)
    blocked = assert_refused(gate_ws, source_url, "the source catalogue demo_claims changed since approval")
    assert "its owner's approval" in blocked["reason"]
    approve_catalogue_for_tests(gate_ws.config_dir, gate_ws.home)
    assert_runs(gate_ws, source_url)  # a title is no class: the contract's approval still counts


LOOSENING = {
    "postcode-no-longer-an-identifier": (lambda d: claimants(d).update(postcode={"class": "other",
                                                                                 "description": "Postcode."}),
                                         "claimants.postcode: identifier/address/postcode → other"),
    "region-no-longer-a-quasi-identifier": (lambda d: claimants(d)["region"].update({"class": "other"}),
                                            "claimants.region: quasi_identifier → other"),
    "an-unread-identifier-dropped": (lambda d: claimants(d).pop("first_name"),
                                     "claimants.first_name (identifier/name/text) is no longer catalogued"),
}


@pytest.mark.parametrize(("change", "reason"), LOOSENING.values(), ids=LOOSENING.keys())
def test_a_loosened_class_needs_the_contract_approved_again(gate_ws: Workspace, source_url: str, change,
                                                            reason: str) -> None:
    approve_for_tests(gate_ws.config_dir, gate_ws.home)
    change_catalogue(gate_ws, change)
    blocked = assert_refused(gate_ws, source_url, reason)
    assert "loosened since this approval" in blocked["reason"] and "needs a new approval" in blocked["reason"]
    approve_for_tests(gate_ws.config_dir, gate_ws.home)  # the contract, against the new catalogue
    authorised = assert_runs(gate_ws, source_url)
    assert authorised["catalogue"]["sha256"] == catalogue_of(gate_ws.config_dir).content_sha256


NOT_LOOSENING = {
    "description": lambda d: claimants(d)["region"].update(description="Region where the claimant lives."),
    "labels": lambda d: claimants(d)["sex"].update(labels={"F": "Female", "M": "Male", "X": "Not recorded"}),
    "tightened": lambda d: claimants(d)["claim_end"].update({"class": "quasi_identifier"}),
    "another-table": lambda d: d["tables"]["payments"]["columns"]["amount"].update({"class": "other"}),
}


@pytest.mark.parametrize("change", NOT_LOOSENING.values(), ids=NOT_LOOSENING.keys())
def test_descriptions_tightening_and_unread_tables_keep_the_approval(gate_ws: Workspace, source_url: str,
                                                                     change) -> None:
    approve_for_tests(gate_ws.config_dir, gate_ws.home)
    change_catalogue(gate_ws, change)
    assert_runs(gate_ws, source_url)


def test_a_tightened_class_the_contract_breaks_is_refused(gate_ws: Workspace, source_url: str) -> None:
    approve_for_tests(gate_ws.config_dir, gate_ws.home)
    change_catalogue(gate_ws, lambda d: claimants(d).update(region={
        "class": "identifier", "entity": "area", "canonicaliser": "text", "description": "Region."}))
    blocked = assert_refused(gate_ws, source_url, "breaks its source catalogue")
    assert "datasets[0].columns.region" in blocked["reason"] and "Nothing was extracted" in blocked["reason"]


def test_a_contract_breaking_its_catalogue_is_refused_even_when_approved(gate_ws: Workspace,
                                                                         source_url: str) -> None:
    approve_for_tests(gate_ws.config_dir, gate_ws.home)
    edit(gate_ws, lambda d: d["datasets"][0]["columns"].update(postcode={"treatment": "keep"}))
    with pytest.raises(AuthorisationError, match="breaks its source catalogue"):
        approve_for_tests(gate_ws.config_dir, gate_ws.home)  # nobody can approve it …
    assert_refused(gate_ws, source_url, "column 'postcode' is an identifier")  # … and it never runs


def test_a_missing_or_broken_catalogue_refuses_every_run(gate_ws: Workspace, source_url: str) -> None:
    approve_for_tests(gate_ws.config_dir, gate_ws.home)
    path = gate_ws.config_dir / "sources" / "demo_claims.yaml"
    text = path.read_text()
    path.write_text(text.replace("class: quasi_identifier", "class: secret", 1))
    assert_refused(gate_ws, source_url, "its source catalogue is unusable")
    path.unlink()
    assert_refused(gate_ws, source_url, "source 'demo_claims' has no catalogue")


def test_a_withdrawn_catalogue_refuses_its_contracts(gate_ws: Workspace, source_url: str) -> None:
    approve_for_tests(gate_ws.config_dir, gate_ws.home)
    with open_ledger() as ledger:
        revoke_catalogue(source="demo_claims", ledger=ledger, actor="pytest", reason="under review",
                         catalogue=catalogue_of(gate_ws.config_dir),
                         registry=load_registry(registry_path(gate_ws.config_dir)))
    blocked = assert_refused(gate_ws, source_url, "withdrawn by record")
    assert "(under review)" in blocked["reason"]


def test_only_the_owner_as_iam_approves_a_catalogue(gate_ws: Workspace) -> None:
    write_registry(gate_ws.config_dir, gate_ws.home)
    registry = load_registry(registry_path(gate_ws.config_dir))
    catalogue = catalogue_of(gate_ws.config_dir)
    other = approver_keys.load_private_key(approver_key_file(gate_ws.home, "test-approver"))
    with open_ledger() as ledger, pytest.raises(AuthorisationError, match="only its owner approves it"):
        approve_catalogue(catalogue=catalogue, registry=registry, ledger=ledger, approver="test-approver",
                          role="approver", actor="t", private_key=other)
    write_registry(gate_ws.config_dir, gate_ws.home, {"test-iam": "approver"})
    registry = load_registry(registry_path(gate_ws.config_dir))
    own = approver_keys.load_private_key(approver_key_file(gate_ws.home, "test-iam"))
    with open_ledger() as ledger:
        with pytest.raises(AuthorisationError, match="approved by an Information Asset Manager"):
            approve_catalogue(catalogue=catalogue, registry=registry, ledger=ledger, approver="test-iam",
                              role="approver", actor="t", private_key=own)
        assert ledger.count() == 0


def test_a_contract_approved_before_catalogues_needs_a_new_approval(gate_ws: Workspace, source_url: str) -> None:
    """A v1 approval (no catalogue pin), validly signed, no longer counts."""
    approve_for_tests(gate_ws.config_dir, gate_ws.home, contracts=[])
    approve_catalogue_for_tests(gate_ws.config_dir, gate_ws.home)
    contract = load_contract(contract_path(gate_ws))
    registry = load_registry(registry_path(gate_ws.config_dir))
    entry = registry.get("test-iam")
    statement = Statement(contract=CONTRACT, content_sha256=content_hash(contract), approver="test-iam",
                          role=IAM_ROLE, signed_at=dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"))
    signature = approver_keys.sign(approver_keys.load_private_key(approver_key_file(gate_ws.home, "test-iam")),
                                   statement.message())
    with open_ledger() as ledger:
        ledger.append(actor="pytest", action=APPROVED, contract=CONTRACT, delivery=None, details={
            "approver": "test-iam", "role": IAM_ROLE, "content_sha256": statement.content_sha256,
            "signed_at": statement.signed_at, "fingerprint": entry.fingerprint, "signature": signature})
    assert_refused(gate_ws, source_url, "approved before source catalogues")


def test_a_forged_catalogue_record_cannot_stand_in_for_the_pinned_content(gate_ws: Workspace,
                                                                          source_url: str) -> None:
    """Someone with ledger access loosens postcode, then records 'the pinned content had postcode as other': the
    pinned content must hash to the pin, so the forgery is ignored and the loosening still voids the approval."""
    approve_for_tests(gate_ws.config_dir, gate_ws.home)
    pinned = catalogue_of(gate_ws.config_dir).content_sha256
    change_catalogue(gate_ws, lambda d: claimants(d).update(postcode={"class": "other", "description": "Postcode."}))
    loosened_content = load_catalogue(gate_ws.config_dir / "sources" / "demo_claims.yaml").canonical()
    with open_ledger() as ledger:
        ledger.append(actor="mallory", action=CATALOGUE_APPROVED, contract=None, delivery=None, details={
            "catalogue": "demo_claims", "content_sha256": pinned, "content": loosened_content})
        recorded = pinned_classes(ledger, "demo_claims", pinned)
    assert recorded is not None and recorded["claimants"]["postcode"] == "identifier/address/postcode"
    assert_refused(gate_ws, source_url, "claimants.postcode: identifier/address/postcode → other")


def test_a_catalogue_signature_is_no_contract_signature(gate_ws: Workspace, source_url: str) -> None:
    """The statements differ in their first line: a catalogue approval's signature cannot be replayed as a
    contract approval."""
    approve_for_tests(gate_ws.config_dir, gate_ws.home, contracts=[])
    approve_catalogue_for_tests(gate_ws.config_dir, gate_ws.home)
    with open_ledger() as ledger:
        record = ledger.records(action=CATALOGUE_APPROVED)[-1].details_obj()
        contract = load_contract(contract_path(gate_ws))
        ledger.append(actor="mallory", action=APPROVED, contract=CONTRACT, delivery=None, details={
            **{k: record[k] for k in ("approver", "role", "signed_at", "fingerprint", "signature")},
            "content_sha256": content_hash(contract),
            "catalogue": {"source": "demo_claims", "sha256": record["content_sha256"]}})
    blocked = assert_refused(gate_ws, source_url, "no valid approval")
    assert "does not verify" in blocked["reason"]
    assert CatalogueStatement.parse(CatalogueStatement(
        source="demo_claims", content_sha256=record["content_sha256"], approver=record["approver"],
        role=record["role"], signed_at=record["signed_at"]).text()).source == "demo_claims"


CATALOGUE_STATEMENT = CatalogueStatement(source="claims_db", content_sha256="ab" * 32, approver="jane.doe",
                                         role="information-asset-manager",
                                         signed_at="2026-11-25T09:12:03.123456+00:00")


def test_catalogue_statement_text_is_fixed() -> None:
    assert CATALOGUE_STATEMENT.text() == (
        "contract-extracts catalogue approval v1\n"
        "catalogue: claims_db\n"
        f"content-sha256: {'ab' * 32}\n"
        "approver: jane.doe\n"
        "role: information-asset-manager\n"
        "signed-at: 2026-11-25T09:12:03.123456+00:00\n")
    assert CatalogueStatement.parse(CATALOGUE_STATEMENT.text()) == CATALOGUE_STATEMENT


@pytest.mark.parametrize("text", [
    "",
    CATALOGUE_STATEMENT.text().replace("catalogue approval", "approval"),
    CATALOGUE_STATEMENT.text().rstrip("\n"),
    CATALOGUE_STATEMENT.text().replace("approver: ", "approver:  "),
    CATALOGUE_STATEMENT.text().replace("+00:00", "+01:00"),
    CATALOGUE_STATEMENT.text().replace("ab" * 32, "AB" * 32),
    CATALOGUE_STATEMENT.text().replace("claims_db", "claims db"),
    CATALOGUE_STATEMENT.text() + "extra: 1\n",
], ids=["empty", "contract-header", "no-final-newline", "spacing", "not-utc", "upper-case-hash", "bad-source",
        "extra-line"])
def test_catalogue_statement_must_be_canonical(text: str) -> None:
    with pytest.raises(VerificationError):
        CatalogueStatement.parse(text)


def test_approval_records_hold_the_same_signed_fields(gate_ws: Workspace) -> None:
    """Both kinds of approval record hold the statement's fields, the signature and what checks it, under the
    same names (docs/formats.md); each adds what its subject needs."""
    approve_for_tests(gate_ws.config_dir, gate_ws.home)
    with open_ledger() as ledger:
        contract_record = ledger.records(action=APPROVED)[-1].details_obj()
        catalogue_record = ledger.records(action=CATALOGUE_APPROVED)[-1].details_obj()
    signed = {"approver", "role", "content_sha256", "signed_at", "fingerprint", "namespace", "signature",
              "registry_sha256"}
    assert set(contract_record) == signed | {"parts", "recipients", "unmasked", "catalogue", "note", "contract_file"}
    assert set(catalogue_record) == signed | {"catalogue", "owner", "content", "note", "catalogue_file"}
    for record in (contract_record, catalogue_record):
        assert record["namespace"] == approver_keys.APPROVAL_NAMESPACE and record["approver"] == "test-iam"
    assert contract_record["catalogue"] == {"source": "demo_claims", "sha256": catalogue_record["content_sha256"]}
    assert catalogue_record["catalogue"] == "demo_claims"
