"""The "Contract deliveries" page inside a real Airflow UI, driven by Chromium through Playwright.

The UI runs on a copy of the session's demo state (`demo_state`, tests/conftest.py: real deliveries through
`airflow dags test`): `airflow api-server`, the process that serves Airflow's UI and its plugins, starts on a free
loopback port with the demo's environment and our plugins folder. Nothing here needs a scheduler, DAG processor or
triggerer, so none is started. An anonymous request to the page is refused; a logged-in operator sees the demo
contracts and the latest delivery (from the ledger) on the page in the navigation and on the DAG run's tab.
Screenshots are saved under test-artifacts/ui/ (git-ignored). Every process started here is stopped afterwards.
"""

from __future__ import annotations

import json
import os
import time

import pytest

from audit.ledger import Ledger
from demo.runner import airflow_environment
from tests.conftest import REPO
from tests.e2e.demo_state import DemoState, copy_state, demo_env
from tests.ui import servers

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ARTIFACTS = REPO / "test-artifacts" / "ui"
USER, PASSWORD = "admin", "admin-ui-test"


@pytest.fixture(scope="module")
def airflow_ui(demo_state: DemoState, tmp_path_factory: pytest.TempPathFactory):
    started = time.monotonic()
    root = tmp_path_factory.mktemp("ui")
    home = copy_state(demo_state.home, root / "state")

    port = servers.free_port()
    base = f"http://127.0.0.1:{port}"
    passwords = root / "passwords.json"
    passwords.write_text(json.dumps({USER: PASSWORD}))
    keys = {"master": home / "keys" / "master.key", "signing": home / "keys" / "sender-signing.key"}
    env = airflow_environment(home=home, dags_dir=REPO / "dags", config_dir=home / "demo" / "configs", keys=keys,
                              connections={"demo_claims": f"sqlite:///{home / 'demo' / 'claims.sqlite'}"},
                              base=demo_env(home))
    env.update({
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": base,
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
    })
    log = root / "api-server.log"
    proc = servers.start(["airflow", "api-server"], env, log)
    try:
        servers.wait_http(f"{base}/api/v2/monitor/health", timeout=90, procs=[proc], log=log)
        with Ledger(f"sqlite:///{home / 'ledger.sqlite'}") as ledger:
            latest = ledger.records(contract="C-DEMO-001", action="delivered")[-1]
            started_rec = next(r for r in ledger.records(delivery=latest.delivery, action="run_started"))
        yield {"base": base, "home": home, "latest": latest, "run_id": started_rec.details_obj()["trigger"]["run_id"],
               "started": started}
    finally:
        servers.stop(proc)


def test_anonymous_request_to_the_page_is_refused(airflow_ui) -> None:
    for path in ("/contract-deliveries/", "/contract-deliveries/contracts/C-DEMO-001"):
        status, body = servers.http("GET", airflow_ui["base"] + path)
        assert status == 401, (path, status)
        assert "C-DEMO-001" not in str(body)
    status, _ = servers.http("GET", airflow_ui["base"] + "/contract-deliveries/",
                             token="eyJhbGciOiJIUzUxMiJ9.eyJzdWIiOiIxIn0.forged")
    assert status in (401, 403)


def test_operator_sees_contracts_and_the_latest_delivery_in_the_airflow_ui(airflow_ui) -> None:
    from playwright.sync_api import sync_playwright  # noqa: PLC0415 - deferred: a browser library, for this test alone

    base, latest = airflow_ui["base"], airflow_ui["latest"]
    details = latest.details_obj()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("XDG_CONFIG_HOME", str(airflow_ui["home"].parent / "xdg"))
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=servers.CHROMIUM, args=servers.CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.goto(base + "/")
            page.get_by_label("Username").fill(USER)
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(f"{base}/", timeout=30_000)

            # The nav entry (Browse menu) opens the plugin page.
            page.get_by_role("button", name="Browse").click()
            page.get_by_role("menuitem", name="Contract deliveries").click()
            page.wait_for_url("**/plugin/contract-deliveries**", timeout=30_000)
            frame = page.frame_locator("iframe")
            frame.get_by_role("heading", name="Recent deliveries").wait_for(timeout=30_000)
            text = frame.locator("body").inner_text()
            for expected in ("C-DEMO-001", "Acme Research Ltd", "C-DEMO-002", "Borealis Analytics LLP",
                             latest.delivery, details["sha256"][:16], "acme-analyst", "verified"):
                assert expected in text, expected
            page.screenshot(path=str(ARTIFACTS / "contract-deliveries.png"))

            # The contract's detail page, reached through its link inside the frame.
            frame.get_by_role("link", name="C-DEMO-001").first.click()
            frame.get_by_role("heading", name="Datasets and treatments").wait_for(timeout=30_000)
            assert "pseudonymise" in frame.locator("body").inner_text()
            page.screenshot(path=str(ARTIFACTS / "contract-detail.png"), full_page=True)

            # The per-run tab of the Airflow run that made the latest delivery.
            run_url = f"{base}/dags/contract_c_demo_001/runs/{airflow_ui['run_id']}/plugin/contract-delivery-run"
            page.goto(run_url)
            run_frame = page.frame_locator("iframe")
            run_frame.get_by_role("heading", name="Ledger records").wait_for(timeout=30_000)
            run_text = run_frame.locator("body").inner_text()
            assert latest.delivery in run_text and "run_completed" in run_text
            page.screenshot(path=str(ARTIFACTS / "delivery-record-tab.png"))
        finally:
            browser.close()
    assert (ARTIFACTS / "contract-deliveries.png").stat().st_size > 10_000
    print(f"UI test: {time.monotonic() - airflow_ui['started']:.0f}s since the fixture started")
