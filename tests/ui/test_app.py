"""The plugin's FastAPI app: Airflow login required, HTML escaped, contracts filtered by DAG permission."""

from __future__ import annotations

import importlib.util
import sys

import pytest
from airflow.api_fastapi.core_api.security import get_user
from fastapi import FastAPI
from fastapi.testclient import TestClient

from airflow_glue import overview as ov
from airflow_glue.ui import URL_PREFIX, create_app
from tests.conftest import REPO
from tests.ui.conftest import SHA, UiWorld


class FakeUser:
    def get_name(self) -> str:
        return "operator"


def mounted(authorize=lambda user, dag_id: True, *, logged_in: bool = True) -> TestClient:
    """The app mounted under the plugin prefix the way Airflow's API server mounts it."""
    sub = create_app(authorize=authorize, source=ov.LedgerSource())
    if logged_in:
        sub.dependency_overrides[get_user] = FakeUser
    root = FastAPI()
    root.mount(URL_PREFIX, sub)
    return TestClient(root)


def test_anonymous_requests_are_refused(ui_world: UiWorld) -> None:
    client = mounted(logged_in=False)
    for path in ("/", "/contracts/C-DEMO-001", "/dags/contract_c_demo_001", "/runs/contract_c_demo_001/x",
                 "/docs", "/openapi.json"):
        response = client.get(URL_PREFIX + path)
        assert response.status_code in (401, 404), path
        assert "C-DEMO" not in response.text and "acme" not in response.text.lower()
    assert client.get(URL_PREFIX + "/").status_code == 401


def test_overview_shows_contracts_deliveries_blocked_runs_and_ledger(ui_world: UiWorld) -> None:
    response = mounted().get(URL_PREFIX + "/")
    assert response.status_code == 200
    html = response.text
    for text in ("C-DEMO-001", "Acme Research Ltd", "C-DEMO-002", "Borealis Analytics LLP", "approved",
                 "no approval recorded", "0 2 * * *", "manual only", "1,244", "acme-analyst", SHA[:16], "sftp",
                 "/inbound/C-DEMO-001_", "shoe_size", "verified", " records"):
        assert text in html, text
    assert "<script>" not in html and "&lt;script&gt;" in html, "ledger text is escaped"
    assert f'href="{URL_PREFIX}/contracts/C-DEMO-001"' in html
    assert "http://" not in html and "https://" not in html, "nothing is loaded from outside"
    assert "frame-ancestors 'self'" in response.headers["content-security-policy"]


def test_contract_detail_shows_attributes_treatments_and_approvals(ui_world: UiWorld) -> None:
    html = mounted().get(URL_PREFIX + "/contracts/C-DEMO-001").text
    for text in ("Legal gateway", "BC-DEMO-4411", "SARA-DEMO-08", "pseudonymise", "entity &#39;person&#39;",
                 "generalise", "claim_start gte 2016-01-01", "test-iam", "contract_approved", ui_world.digest_001[:12],
                 "demo_claims", "acme-analyst"):
        assert text in html, text
    assert mounted().get(URL_PREFIX + "/dags/contract_c_demo_001").text == html


@pytest.mark.parametrize("path", ["/contracts/C-NOPE", "/contracts/..%2F..%2Fetc%2Fpasswd", "/contracts/c-demo-001"])
def test_unknown_contracts_are_404(ui_world: UiWorld, path: str) -> None:
    assert mounted().get(URL_PREFIX + path).status_code == 404


def test_dag_without_permission_is_hidden(ui_world: UiWorld) -> None:
    client = mounted(authorize=lambda user, dag_id: dag_id == "contract_c_demo_002")
    html = client.get(URL_PREFIX + "/").text
    assert "C-DEMO-002" in html and "Acme Research Ltd" not in html and SHA[:16] not in html
    assert client.get(URL_PREFIX + "/contracts/C-DEMO-001").status_code == 404
    assert client.get(URL_PREFIX + "/runs/contract_c_demo_001/manual__2026-11-25T01:05:55+00:00").status_code == 404


def test_run_view_lists_the_ledger_records_of_that_run(ui_world: UiWorld) -> None:
    html = mounted().get(URL_PREFIX + "/runs/contract_c_demo_001/manual__2026-11-25T01:05:55+00:00").text
    for text in ("delivered", "20261125T010555Z-60df7f14", "run_started", "extract_done", "REQ-7",
                 "monthly refresh"):
        assert text in html, text
    other = mounted().get(URL_PREFIX + "/runs/example_dag/scheduled__x").text
    assert "no ledger record" in other


def test_plugin_registers_the_app_and_the_views() -> None:
    spec = importlib.util.spec_from_file_location("contract_deliveries_plugin",
                                                  REPO / "plugins" / "contract_deliveries_plugin.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.pop("contract_deliveries_plugin", None)
    spec.loader.exec_module(module)
    plugin = module.ContractDeliveriesPlugin
    (app,) = plugin.fastapi_apps
    assert app["url_prefix"] == URL_PREFIX and isinstance(app["app"], FastAPI)
    views = {v["destination"]: v for v in plugin.external_views}
    assert views["nav"]["href"] == URL_PREFIX + "/" and views["nav"]["url_route"] == "contract-deliveries"
    assert "{RUN_ID}" in views["dag_run"]["href"] and "{DAG_ID}" in views["dag"]["href"]
    reserved = ("/api/v2", "/ui", "/execution", "/auth", "/pluginsv2")
    assert not URL_PREFIX.startswith(reserved)
