"""`make ui`: Airflow standalone on the demo state, for a newcomer to look at in a browser.

The Makefile's `ui` target runs `python -m airflow_glue.local_ui`; here that command runs on a copy of the session's
demo state (tests/conftest.py `demo_state`, what `make demo` leaves): it prints where to go and how to sign in, the
UI answers on 127.0.0.1, the demo contracts' DAGs and the "Contract deliveries" page (with the demo deliveries)
are there, and stopping it stops every component it started.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.e2e.demo_state import DemoState, copy_state, demo_env
from tests.ui import servers

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_the_make_target_runs_the_launcher() -> None:
    makefile = (REPO / "Makefile").read_text()
    recipe = re.search(r"^ui: venv\n\t(.+)$", makefile, re.MULTILINE)
    assert recipe is not None and recipe[1] == "$(VENV)/bin/python -m airflow_glue.local_ui"


def test_without_a_demo_state_it_says_to_run_make_demo_first(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "airflow_glue.local_ui"], env=demo_env(tmp_path / "empty"),
                          capture_output=True, text=True, timeout=60, check=False, cwd=REPO)
    assert proc.returncode == 1 and "run `make demo` first" in proc.stderr and "Traceback" not in proc.stderr


def test_airflow_starts_on_the_demo_state_and_shows_the_deliveries(demo_state: DemoState, tmp_path: Path) -> None:
    started = time.monotonic()
    home = copy_state(demo_state.home, tmp_path / "state")
    port = servers.free_port()
    env = {**demo_env(home), "AIRFLOW_UI_PORT": str(port)}
    log = tmp_path / "make-ui.log"
    proc = servers.start([sys.executable, "-m", "airflow_glue.local_ui"], env, log)
    base = f"http://127.0.0.1:{port}"
    try:
        servers.wait_http(f"{base}/api/v2/monitor/health", timeout=120, procs=[proc], log=log)
        printed = log.read_text()
        login = re.search(rf"open {re.escape(base)}/ and sign in as admin / (\S+)", printed)
        assert login is not None, printed
        password_file = home / "airflow" / "ui-passwords.json"
        assert oct(password_file.stat().st_mode & 0o777) == "0o600"
        token = servers.token(base, "admin", login[1])
        deadline = time.monotonic() + 60
        while True:
            status, body = servers.http("GET", f"{base}/api/v2/dags", token=token)
            dags = {d["dag_id"] for d in body.get("dags", [])} if status == 200 else set()
            if {"contract_c_demo_001", "contract_c_demo_002"} <= dags or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert {"contract_c_demo_001", "contract_c_demo_002"} <= dags, dags
        status, page = servers.http("GET", f"{base}/contract-deliveries/", token=token)
        assert status == 200
        delivered = [line.removeprefix("package: ") for line in demo_state.second.stdout.splitlines()
                     if line.startswith("package: ")]
        assert "C-DEMO-001" in page and Path(delivered[0]).name.split("_", 1)[1].removesuffix(".tar.age") in page
        assert servers.http("GET", f"{base}/contract-deliveries/")[0] == 401, "the page needs a login"
    finally:
        servers.stop(proc, grace=20)
    assert not servers._group_alive(proc.pid), "every component stopped"
    assert os.environ.get("AIRFLOW_HOME") != str(home / "airflow")
    print(f"make ui: up, checked and stopped in {time.monotonic() - started:.0f}s")
