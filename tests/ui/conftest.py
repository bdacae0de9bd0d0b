"""A workspace with a ledger that looks like a few real runs (written through the real Ledger)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from audit.ledger import Ledger
from contracts import content_hash, load_contract
from core.settings import load_settings
from tests.authorisation.helpers import approve_for_tests
from tests.conftest import Workspace

SHA = "ab" * 32


@dataclass
class UiWorld:
    workspace: Workspace
    ledger_url: str
    digest_001: str


def record_delivery(ledger: Ledger, contract: str, delivery: str, *, run_id: str, rows: int = 1234,
                    trigger: dict | None = None) -> None:
    dag_id = "contract_" + contract.lower().replace("-", "_")
    trig = {"system": "airflow", "dag_id": dag_id, "run_id": run_id, "run_type": "manual", "try_number": 1,
            **(trigger or {})}
    ledger.append(actor="airflow", action="run_started", contract=contract, delivery=delivery,
                  details={"contract_file": f"/x/{contract}.yaml", "contract_hash": "0" * 64, "trigger": trig})
    ledger.append(actor="airflow", action="extract_done", contract=contract, delivery=delivery,
                  details={"key_id": "k" * 16, "datasets": [
                      {"name": "claimants", "rows": rows, "columns": ["id", "nino"]},
                      {"name": "payments", "rows": 10, "columns": ["claimant_id"]}]})
    ledger.append(actor="airflow", action="validation_passed", contract=contract, delivery=delivery,
                  details={"datasets": [{"name": "claimants", "rows": rows, "expectations": 7}]})
    ledger.append(actor="airflow", action="delivered", contract=contract, delivery=delivery, details={
        "transport": "sftp", "path": f"/inbound/{contract}_{delivery}.tar.age",
        "package": f"{contract}_{delivery}.tar.age",
        "sha256": SHA, "bytes": 999, "manifest_sha256": "cd" * 32,
        "recipients": [{"name": "acme-analyst", "fingerprint": "f" * 16}]})
    ledger.append(actor="airflow", action="run_completed", contract=contract, delivery=delivery, details={})


def record_blocked(ledger: Ledger, contract: str, delivery: str, *, run_id: str, reason: str) -> None:
    dag_id = "contract_" + contract.lower().replace("-", "_")
    ledger.append(actor="airflow", action="run_started", contract=contract, delivery=delivery,
                  details={"contract_file": "x", "contract_hash": None,
                           "trigger": {"system": "airflow", "dag_id": dag_id, "run_id": run_id}})
    ledger.append(actor="airflow", action="blocked", contract=contract, delivery=delivery,
                  details={"stage": "extract", "reason": reason, "final": True})


@pytest.fixture
def ui_world(workspace: Workspace) -> UiWorld:
    settings = load_settings()
    digest = content_hash(load_contract(workspace.contracts_dir / "C-DEMO-001.yaml"))
    with Ledger(settings.ledger_url) as ledger:
        record_delivery(ledger, "C-DEMO-001", "20261125T010555Z-60df7f14", run_id="manual__2026-11-25T01:05:55+00:00",
                        trigger={"delivery_reference": "REQ-7", "reason": "monthly refresh"})
        record_blocked(ledger, "C-DEMO-002", "20261125T020000Z-11111111", run_id="manual__2",
                       reason="dataset claimants: column 'shoe_size' is not in the source table <script>")
    # A real signed approval of C-DEMO-001 (C-DEMO-002 stays unapproved).
    approve_for_tests(workspace.config_dir, workspace.home, [workspace.contracts_dir / "C-DEMO-001.yaml"])
    return UiWorld(workspace=workspace, ledger_url=settings.ledger_url, digest_001=digest)
