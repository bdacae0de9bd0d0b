"""The operator's pages (airflow_glue.ui): truthful treatments, runs linked, reference and reason shown, skipped runs,
contract files that do not load listed without taking the page down, and the release-gate report served as it is:
self-contained, only from the report folder, only to people who may read the contract's DAG.

The same pages inside a real Airflow, in Chromium with the network blocked: tests/scheduler/test_real_scheduler.py.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from urllib.parse import unquote

import pytest
from airflow.api_fastapi.core_api.security import get_user
from fastapi import FastAPI
from fastapi.testclient import TestClient

from airflow_glue import overview as ov
from airflow_glue.ui import URL_PREFIX, create_app
from audit.ledger import Ledger
from contracts import load_contract
from core.settings import load_settings
from tests.conftest import Workspace
from tests.ui.conftest import record_blocked, record_delivery

DELIVERY = "20261125T010555Z-60df7f14"
RUN = "manual__2026-11-25T01:05:55+00:00"


class FakeUser:
    def get_name(self) -> str:
        return "operator"


def client(authorize=lambda user, dag_id: True) -> TestClient:
    sub = create_app(authorize=authorize, source=ov.LedgerSource())
    sub.dependency_overrides[get_user] = FakeUser
    root = FastAPI()
    root.mount(URL_PREFIX, sub)
    return TestClient(root)


@pytest.fixture
def ledger(workspace: Workspace) -> Ledger:
    with Ledger(load_settings().ledger_url) as ledger:
        record_delivery(ledger, "C-DEMO-001", DELIVERY, run_id=RUN,
                        trigger={"delivery_reference": "REQ-2026-0142", "reason": "monthly <b>refresh</b>"})
        record_blocked(ledger, "C-DEMO-002", "20261125T020000Z-11111111", run_id="manual__2",
                       reason="unknown trigger parameter(s) 'delivery_refrence'")
        ledger.append(actor="scheduler", action="run_started", contract="C-DEMO-001", delivery="20261124T020000Z-2",
                      details={"contract_hash": None, "trigger": {
                          "system": "airflow", "dag_id": "contract_c_demo_001", "run_type": "scheduled",
                          "run_id": "scheduled__2026-11-24T02:00:00+00:00",
                          "scheduled_for": "2026-11-24T02:00:00+00:00"}})
        ledger.append(actor="scheduler", action="skipped", contract="C-DEMO-001", delivery="20261124T020000Z-2",
                      details={"reason": "this scheduled run started 13 h 00 min after its time"})
        yield ledger


def _hrefs(page: str) -> list[str]:
    return [unquote(html.unescape(h)) for h in re.findall(r'href="([^"]+)"', page)]


def test_every_treatment_is_named_truthfully(ledger: Ledger, workspace: Workspace) -> None:
    page = client().get(URL_PREFIX + "/contracts/C-DEMO-001").text
    assert "as recorded" not in page
    contract = load_contract(workspace.contracts_dir / "C-DEMO-001.yaml")
    rows = re.findall(r'<td class="mono">([^<]+)</td><td class="nowrap">([^<]+)</td>\s*<td class="treatment">([^<]+)',
                      page)
    described = {name: (treatment, html.unescape(text)) for name, treatment, text in rows}
    expected = {name for ds in contract.datasets for name in ds.columns}
    assert set(described) == expected
    assert described["weekly_amount"][1] == ("Rounded to the nearest multiple of 5 (halves away from zero). Values "
                                             "above 1000 are delivered as 1000.")
    assert described["amount"][1].startswith("Rounded to the nearest multiple of 10")
    assert described["claim_start"][1].startswith("Shifted date: every date of the same claimant is moved by the "
                                                  "same secret number of days (between -30 and +30, never 0)")
    assert described["date_of_birth"][1].startswith("Year only")
    assert described["nino"][1].startswith("Pseudonym: 32 lower-case hex characters")
    for name, (treatment, text) in described.items():
        held = text == "Delivered as held in the source."
        assert held == (treatment == "keep"), (name, treatment, text)


def test_deliveries_blocked_and_skipped_runs_link_to_their_runs_with_reference_and_reason(ledger: Ledger) -> None:
    page = client().get(URL_PREFIX + "/").text
    hrefs = _hrefs(page)
    assert f"/dags/contract_c_demo_001/runs/{RUN}" in hrefs  # the delivery
    assert "/dags/contract_c_demo_002/runs/manual__2" in hrefs  # the blocked run
    assert "/dags/contract_c_demo_001/runs/scheduled__2026-11-24T02:00:00+00:00" in hrefs  # the skipped run
    assert "REQ-2026-0142" in page and "monthly &lt;b&gt;refresh&lt;/b&gt;" in page
    assert "Runs that delivered nothing on purpose" in page and "13 h 00 min after its time" in page
    run = client().get(f"{URL_PREFIX}/runs/contract_c_demo_001/scheduled__2026-11-24T02:00:00+00:00").text
    assert "skipped" in run and "13 h 00 min after its time" in run and "2026-11-24T02:00:00+00:00" in run


def test_files_that_do_not_load_are_listed_and_the_others_shown(ledger: Ledger, workspace: Workspace) -> None:
    contracts = workspace.contracts_dir
    (contracts / "C-BAD-001.yaml").write_text("contract: C-BAD-001\nvalid: {from: 2026-13-01}\n")
    (contracts / "C-BAD-002.yaml").write_text("contract: C-BAD-002\ntitle: " + "[" * 20_000 + "]" * 20_000 + "\n")
    (contracts / "C-BAD-003.yaml").write_text("contract: C-BAD-003\nvalid: {until: 2030-02-31}\n")
    response = client().get(URL_PREFIX + "/")
    assert response.status_code == 200
    box = re.findall(r'<td class="mono broken-file">([^<]+)</td>', response.text)
    assert len(box) == 3
    assert any("C-BAD-001.yaml: valid.from" in row and "not a real calendar date" in row for row in box)
    assert any("C-BAD-002.yaml" in row and "nested more than 32 levels" in row for row in box)
    assert any("C-BAD-003.yaml: valid.until" in row for row in box)
    assert 'href="/contract-deliveries/contracts/C-DEMO-001"' in response.text  # the good contracts are there


def _report(home: Path, contract: str = "C-DEMO-001", delivery: str = DELIVERY) -> Path:
    folder = home / "reports" / contract / delivery
    folder.mkdir(parents=True)
    (folder / "index.html").write_text("<!doctype html><title>r</title><h1>Release gate: C-DEMO-001</h1>")
    (folder / "claimants.html").write_text("<p>page</p>")
    (folder / "validation.json").write_text("{}")
    return folder


def test_the_run_tab_links_the_release_gate_report_and_serves_it_locked_down(ledger: Ledger,
                                                                            workspace: Workspace) -> None:
    _report(workspace.home)
    run = client().get(f"{URL_PREFIX}/runs/contract_c_demo_001/{RUN}").text
    link = f"{URL_PREFIX}/reports/C-DEMO-001/{DELIVERY}/index.html"
    assert link in _hrefs(run)
    response = client().get(link)
    assert response.status_code == 200 and "Release gate: C-DEMO-001" in response.text
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src" not in policy and "frame-ancestors 'self'" in policy
    assert client().get(f"{URL_PREFIX}/reports/C-DEMO-001/{DELIVERY}/validation.json").headers[
        "content-type"] == "application/json"


@pytest.mark.parametrize("path", [
    f"/reports/C-DEMO-001/{DELIVERY}/missing.html",
    f"/reports/C-DEMO-001/{DELIVERY}/..%2F..%2F..%2Fkeys%2Fmaster.key",
    "/reports/C-DEMO-001/..%2F..%2Fkeys/master.key",
    f"/reports/C-DEMO-001/{DELIVERY}/.owner.json",
    f"/reports/c-demo-001/{DELIVERY}/index.html",
    "/reports/C-DEMO-001/20261125T999999Z-00000000/index.html",
])
def test_report_files_come_only_from_the_report_folder(ledger: Ledger, workspace: Workspace, path: str) -> None:
    _report(workspace.home)
    (workspace.home / "reports" / "C-DEMO-001" / DELIVERY / ".owner.json").write_text("{}")
    response = client().get(URL_PREFIX + path)
    assert response.status_code == 404 and "master" not in response.text


def test_a_report_is_hidden_from_people_who_may_not_read_the_dag(ledger: Ledger, workspace: Workspace) -> None:
    _report(workspace.home)
    only_002 = client(authorize=lambda user, dag_id: dag_id == "contract_c_demo_002")
    response = only_002.get(f"{URL_PREFIX}/reports/C-DEMO-001/{DELIVERY}/index.html")
    assert response.status_code == 404 and "Release gate" not in response.text
