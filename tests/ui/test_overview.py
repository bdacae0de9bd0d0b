"""The page's data: contract status from dates and approvals, deliveries and blocked runs from the ledger."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from airflow_glue import overview as ov
from audit.ledger import Ledger, LedgerRecord
from contracts import load_contract
from core.settings import load_settings
from tests.ui.conftest import SHA, UiWorld


def _record(action: str, details: str, seq: int = 1, actor: str = "iam:bob") -> LedgerRecord:
    return LedgerRecord(seq=seq, at="2026-11-20T10:00:00.000000+00:00", actor=actor, action=action,
                        contract="C-DEMO-001", delivery=None, details=details, prev_hash="0" * 64, hash="1" * 64)


def test_approval_state_from_records() -> None:
    assert ov.approval_from_records([], "h1").state == "none"
    approved = _record("contract_approved", '{"content_sha256":"h1","role":"IAM"}')
    assert ov.approval_from_records([approved], "h1").state == "approved"
    changed = ov.approval_from_records([approved], "h2")
    assert changed.state == "changed" and "changed after" in changed.label
    # Unknown detail layout: never crash, and never call it approved.
    odd = _record("contract_approved", '{"something":"else"}')
    assert ov.approval_from_records([odd], "h1").state == "changed"
    revoked = _record("approval_revoked", '{"reason":"left"}', seq=2)
    assert ov.approval_from_records([approved, revoked], "h1").state == "none"


def test_approval_follows_the_gate(ui_world: UiWorld) -> None:
    settings = load_settings()
    with Ledger(settings.ledger_url) as ledger:
        for cid, state in (("C-DEMO-001", "approved"), ("C-DEMO-002", "none")):
            contract = load_contract(settings.contracts_dir / f"{cid}.yaml")
            approval = ov.approval_from_authorisation(contract, ledger, settings.config_dir)
            assert approval is not None and approval.state == state, (cid, approval)
        assert "test-iam" in ov.approval_from_authorisation(
            load_contract(settings.contracts_dir / "C-DEMO-001.yaml"), ledger, settings.config_dir).label


def test_a_contract_edited_after_approval_shows_changed(ui_world: UiWorld) -> None:
    settings = load_settings()
    path = settings.contracts_dir / "C-DEMO-001.yaml"
    path.write_text(path.read_text().replace("Benefit uptake evaluation (demo)", "Benefit uptake evaluation v2"))
    with Ledger(settings.ledger_url) as ledger:
        approval = ov.approval_from_authorisation(load_contract(path), ledger, settings.config_dir)
    assert approval.state == "changed" and "title" in approval.label


def test_badges_for_expiry_and_assurance(ui_world: UiWorld) -> None:
    contract = load_contract(ui_world.workspace.contracts_dir / "C-DEMO-001.yaml")
    none = ov.Approval("none", "no approval recorded")
    ok = ov.Approval("approved", "approved")
    sa_expires = contract.security_assurance.expires
    labels = lambda bs: [b.label for b in bs]  # noqa: E731
    assert labels(ov.contract_badges(contract, ok, sa_expires - dt.timedelta(days=90))) == ["approved"]
    soon = ov.contract_badges(contract, ok, sa_expires - dt.timedelta(days=10))
    assert labels(soon) == ["assurance expires in 10 days", "approved"] and soon[0].level == "warn"
    gone = ov.contract_badges(contract, none, contract.valid.until + dt.timedelta(days=1))
    assert labels(gone)[:2] == ["expired", "assurance expired"] and gone[0].level == "bad"
    early = ov.contract_badges(contract, none, contract.valid.from_ - dt.timedelta(days=1))
    assert "not yet valid" in labels(early) and "no approval recorded" in labels(early)


def test_overview_reads_contracts_and_ledger(ui_world: UiWorld) -> None:
    settings = load_settings()
    source = ov.LedgerSource()
    try:
        o = ov.build_overview(settings.contracts_dir, settings.ledger_url, source, today=dt.date(2027, 1, 1))
    finally:
        source.close()
    by_id = {c.contract.contract: c for c in o.contracts}
    assert set(by_id) == {"C-DEMO-001", "C-DEMO-002"}
    assert by_id["C-DEMO-001"].approval.state == "approved"
    assert by_id["C-DEMO-002"].approval.state == "none"
    assert by_id["C-DEMO-001"].last_delivery.rows == 1244
    (d,) = o.deliveries
    assert (d.contract, d.sha256, d.transport, d.recipients) == ("C-DEMO-001", SHA, "sftp", ["acme-analyst"])
    assert d.trigger["delivery_reference"] == "REQ-7" and d.dag_id == "contract_c_demo_001"
    (b,) = o.blocked
    assert b.stage == "extract" and "shoe_size" in b.reason
    with Ledger(settings.ledger_url) as ledger:
        total = ledger.count()
    assert o.ledger.ok and o.ledger.records == total and o.ledger.head_seq == total


def test_overview_hides_contracts_the_user_may_not_read(ui_world: UiWorld) -> None:
    settings = load_settings()
    source = ov.LedgerSource()
    try:
        o = ov.build_overview(settings.contracts_dir, settings.ledger_url, source,
                              visible=lambda c: c.contract == "C-DEMO-002")
    finally:
        source.close()
    assert [c.contract.contract for c in o.contracts] == ["C-DEMO-002"]
    assert o.deliveries == [] and [b.contract for b in o.blocked] == ["C-DEMO-002"]


def test_a_broken_chain_is_reported(ui_world: UiWorld) -> None:
    settings = load_settings()
    engine = sa.create_engine(settings.ledger_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE audit_ledger SET actor = 'mallory' WHERE seq = 4")
    engine.dispose()
    source = ov.LedgerSource()
    try:
        status = source.status(settings.ledger_url, source.open(settings.ledger_url))
    finally:
        source.close()
    assert status.ok is False and status.first_broken_seq == 4


def test_the_ui_never_creates_a_missing_sqlite_ledger(workspace) -> None:
    settings = load_settings()
    source = ov.LedgerSource()
    o = ov.build_overview(settings.contracts_dir, settings.ledger_url, source)
    assert not o.ledger.available and not (workspace.home / "ledger.sqlite").exists()
    assert len(o.contracts) == 2 and all(c.last_delivery is None for c in o.contracts)


def test_run_detail_finds_the_delivery_of_a_dag_run(ui_world: UiWorld) -> None:
    settings = load_settings()
    source = ov.LedgerSource()
    try:
        run = ov.build_run_detail("contract_c_demo_001", "manual__2026-11-25T01:05:55+00:00", settings.ledger_url,
                                  source)
        blocked = ov.build_run_detail("contract_c_demo_002", "manual__2", settings.ledger_url, source)
        unknown = ov.build_run_detail("contract_c_demo_002", "nope", settings.ledger_url, source)
    finally:
        source.close()
    assert run.delivery == "20261125T010555Z-60df7f14" and run.outcome.label == "delivered"
    assert [r.action for r in run.records][:2] == ["run_started", "extract_done"]
    assert blocked.outcome.label == "blocked" and "shoe_size" in blocked.outcome.title
    assert unknown.delivery is None and unknown.records == []


def test_summaries_are_one_line_per_action(ui_world: UiWorld) -> None:
    with Ledger(load_settings().ledger_url) as ledger:
        text = {r.action: ov.summarise_details(r) for r in reversed(ledger.records())}
    assert text["extract_done"] == "claimants: 1234 rows × 2 columns, payments: 10 rows × 1 columns"
    assert "REQ-7" in text["run_started"] and "monthly refresh" in text["run_started"]
    assert text["delivered"].startswith("sftp → /inbound/")
