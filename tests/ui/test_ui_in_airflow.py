"""The "Contract deliveries" page inside a real Airflow UI, driven by Chromium through Playwright.

The demo runs first into a throwaway state folder (real deliveries through `airflow dags test`); then
`airflow standalone` starts on a free loopback port with the same environment and our plugins folder.
An anonymous request to the page is refused; a logged-in operator sees the demo contracts and the
latest delivery (from the ledger) on the page in the navigation and on the DAG run's tab. Screenshots
are saved under test-artifacts/ui/ (git-ignored). Every process started here is stopped afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from audit.ledger import Ledger
from demo.runner import airflow_environment
from tests.conftest import REPO
from tests.ui import servers

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CLI = str(Path(sys.executable).parent / "contract-extracts")
ARTIFACTS = REPO / "test-artifacts" / "ui"
USER, PASSWORD = "admin", "admin-ui-test"


def _clean_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "CONTRACT_EXTRACTS"))}
    env.update(CONTRACT_EXTRACTS_HOME=str(home), CONTRACT_EXTRACTS_REPO=str(REPO))
    return env


@pytest.fixture(scope="module")
def airflow_ui(tmp_path_factory: pytest.TempPathFactory):
    started = time.monotonic()
    root = tmp_path_factory.mktemp("ui")
    home = root / "state"
    demo = subprocess.run([CLI, "demo", "--people", "1500"], env=_clean_env(home), capture_output=True, text=True,
                          timeout=300, check=False, cwd=REPO)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]

    port = servers.free_port()
    base = f"http://127.0.0.1:{port}"
    passwords = root / "passwords.json"
    passwords.write_text(json.dumps({USER: PASSWORD}))
    keys = {"master": home / "keys" / "master.key", "signing": home / "keys" / "sender-signing.key"}
    env = airflow_environment(home=home, dags_dir=REPO / "dags", config_dir=home / "demo" / "configs", keys=keys,
                              connections={"demo_claims": f"sqlite:///{home / 'demo' / 'claims.sqlite'}"},
                              base=_clean_env(home))
    env.update({
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": base,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
    })
    log = root / "standalone.log"
    proc = servers.start(["airflow", "standalone"], env, log)
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
    from playwright.sync_api import sync_playwright

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
