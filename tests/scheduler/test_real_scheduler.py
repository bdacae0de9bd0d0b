"""Contract deliveries under a real scheduler, driven the way operators and their tooling drive Airflow.

One Airflow per module (scheduler, dag-processor, api-server; LocalExecutor; throwaway PostgreSQL metadata
database) runs every scenario at once, through the public REST API only (world.py lists the contracts):

- a scheduled (nightly) run delivers on time; the run Airflow creates when the DAG is unpaused, for a past
  time, delivers nothing and says so (ledger ``skipped``);
- "unpause on trigger": a manual delivery plus unpausing gives one delivery, not two;
- a manual delivery with reference and reason; a REST trigger without them is refused by Airflow (400); a typo
  in the conf is refused before anything is read (ledger ``blocked`` says why); a backfill of a contract that is
  not incremental is refused;
- the task processes of a delivery are killed with SIGKILL (validate, then deliver): Airflow retries them and
  there is still exactly one delivery;
- a contract file that does not load is an import error naming it, a row on the UI page, and every other
  contract's DAG is there;
- no ERROR line in any task log of a delivery, every validate task finds Great Expectations imported by its worker,
  and the extract logs name the native keyed-hashing backend and
  its progress lines.

Then a real browser (Chromium) checks the operator's pages and takes the screenshots for docs/operators.md
(test-artifacts/scheduler/, or docs/images/ with CONTRACT_EXTRACTS_UPDATE_DOC_IMAGES=1).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from audit.ledger import Ledger, LedgerRecord
from tests.conftest import REPO
from tests.scheduler.cluster import PASSWORD, USER, Cluster, metadata_database, running_airflow
from tests.scheduler.world import World, make_world
from tests.ui import servers

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CLI = str(Path(sys.executable).parent / "contract-extracts")
DAG = {c: "contract_" + c.lower().replace("-", "_") for c in ("C-DEMO-002", "C-NIGHT-001", "C-NIGHT-002",
                                                             "C-KILL-001")}
GOOD_CONF = {"delivery_reference": "REQ-2026-0142", "reason": "Monthly refresh for the evaluation"}
ARTIFACTS = REPO / ("docs/images" if os.environ.get("CONTRACT_EXTRACTS_UPDATE_DOC_IMAGES") else
                    "test-artifacts/scheduler")


@pytest.fixture(scope="module")
def airflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, World, float]]:
    started = time.monotonic()
    root = tmp_path_factory.mktemp("scheduler")
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "CONTRACT_EXTRACTS"))}
    with metadata_database() as ledger_url:
        world = make_world(root, ledger_url, start_in=dt.timedelta(seconds=40))
        with running_airflow(root, {**base_env, **world.env}) as cluster:
            cluster.wait_for("the contract DAGs", lambda: all(
                cluster.api("GET", f"/dags/{d}")[0] == 200 for d in DAG.values()), timeout=60)
            yield cluster, world, started
    print(f"scheduler tier: {time.monotonic() - started:.0f}s from setup to teardown")


def _run(cluster: Cluster, dag: str, conf: dict[str, Any]) -> str:
    return str(cluster.ok("POST", f"/dags/{dag}/dagRuns", {"logical_date": None, "conf": conf})["dag_run_id"])


def _runs(cluster: Cluster, dag: str) -> list[dict[str, Any]]:
    return list(cluster.ok("GET", f"/dags/{dag}/dagRuns?order_by=run_after&limit=100")["dag_runs"])


def _ti(cluster: Cluster, dag: str, run: str, task: str) -> dict[str, Any]:
    status, body = cluster.api("GET", f"/dags/{dag}/dagRuns/{run}/taskInstances/{task}")
    return body if status == 200 and isinstance(body, dict) else {}


def _kill_when_running(cluster: Cluster, dag: str, run: str, task: str) -> int:
    """SIGKILL the task's process as soon as Airflow reports it running (its pid, on this machine)."""
    def running() -> int | None:
        ti = _ti(cluster, dag, run, task)
        if ti.get("state") == "running" and ti.get("try_number") == 1 and ti.get("pid"):
            return int(ti["pid"])
        return None
    pid = cluster.wait_for(f"{dag} {task} running", running, timeout=150, every=0.1)
    os.kill(pid, signal.SIGKILL)
    return int(pid)


def _finished(cluster: Cluster, dag: str, run: str) -> str | None:
    state = cluster.ok("GET", f"/dags/{dag}/dagRuns/{run}")["state"]
    return state if state in ("success", "failed") else None


def _ledger(world: World) -> list[LedgerRecord]:
    with Ledger(world.ledger_url) as ledger:
        assert ledger.verify().ok
        return ledger.records()


def _of_run(records: list[LedgerRecord], run_id: str) -> list[LedgerRecord]:
    delivery = next((r.delivery for r in records if r.action == "run_started"
                     and r.details_obj().get("trigger", {}).get("run_id") == run_id), None)
    assert delivery is not None, f"no run_started record for {run_id}"
    return [r for r in records if r.delivery == delivery]


@pytest.fixture(scope="module")
def scenarios(airflow: tuple[Cluster, World, float]) -> dict[str, Any]:
    """Start every scenario at once, then wait for all of them (shared by the tests below)."""
    cluster, world, started = airflow
    out: dict[str, Any] = {"unpaused_before_on_time": dt.datetime.now(dt.UTC) < world.on_time}
    # Nightly: unpausing creates the run for the most recent past time at once; the on-time run follows.
    cluster.ok("PATCH", f"/dags/{DAG['C-NIGHT-001']}", {"is_paused": False})
    # "Unpause on trigger", as the trigger form does it: a manual run, then the DAG unpaused.
    out["n2_manual"] = _run(cluster, DAG["C-NIGHT-002"], {**GOOD_CONF, "delivery_reference": "REQ-2026-0143"})
    cluster.ok("PATCH", f"/dags/{DAG['C-NIGHT-002']}", {"is_paused": False})
    for contract in ("C-DEMO-002", "C-KILL-001"):
        cluster.ok("PATCH", f"/dags/{DAG[contract]}", {"is_paused": False})
    out["manual"] = _run(cluster, DAG["C-DEMO-002"], GOOD_CONF)
    out["no_params"] = cluster.api("POST", f"/dags/{DAG['C-DEMO-002']}/dagRuns", {"logical_date": None, "conf": {}})
    out["typo"] = _run(cluster, DAG["C-DEMO-002"], {**GOOD_CONF, "delivery_refrence": "REQ-2026-0144"})
    out["kill"] = _run(cluster, DAG["C-KILL-001"], {"delivery_reference": "REQ-KILL-1", "reason": "killed twice"})
    day = world.past.replace(hour=0, minute=0)
    out["backfill"] = cluster.ok("POST", "/backfills", {
        "dag_id": DAG["C-NIGHT-002"], "from_date": (day - dt.timedelta(days=3)).isoformat(),
        "to_date": (day - dt.timedelta(days=2)).isoformat(), "max_active_runs": 1, "reprocess_behavior": "none",
        "run_backwards": False, "dag_run_conf": {}})
    out["killed"] = [_kill_when_running(cluster, DAG["C-KILL-001"], out["kill"], task)
                     for task in ("validate", "deliver")]
    # Every run reaches its end, and the nightly DAG its on-time run.
    on_time_run = f"scheduled__{world.on_time.isoformat()}"

    def all_done() -> bool:
        runs = {d: _runs(cluster, d) for d in DAG.values()}
        if not any(r["dag_run_id"] == on_time_run for r in runs[DAG["C-NIGHT-001"]]):
            return False
        if sum(r["run_type"] == "backfill" for r in runs[DAG["C-NIGHT-002"]]) < 1:
            return False
        return all(r["state"] in ("success", "failed") for rs in runs.values() for r in rs)
    cluster.wait_for("every run to finish", all_done, timeout=240, every=2)
    out["runs"] = {d: _runs(cluster, d) for d in DAG.values()}
    out["on_time_run"] = on_time_run
    out["records"] = _ledger(world)
    print(f"scheduler tier: every scenario finished {time.monotonic() - started:.0f}s after setup began")
    return out


def test_the_nightly_run_delivers_on_time_and_unpausing_delivers_nothing_by_itself(airflow, scenarios) -> None:
    cluster, _world, _ = airflow
    runs = scenarios["runs"][DAG["C-NIGHT-001"]]
    by_id = {r["dag_run_id"]: r for r in runs}
    on_time = by_id[scenarios["on_time_run"]]
    assert on_time["state"] == "success" and on_time["run_type"] == "scheduled"
    records = scenarios["records"]
    assert [r.action for r in _of_run(records, on_time["dag_run_id"])].count("delivered") == 1
    scheduled = [r for r in runs if r["run_type"] == "scheduled"]
    if scenarios["unpaused_before_on_time"]:
        # Unpausing created yesterday's run at once: it succeeded without delivering, and said why.
        assert len(scheduled) == 2, runs
        late = scheduled[0]
        late_records = _of_run(records, late["dag_run_id"])
        assert [r.action for r in late_records] == ["run_started", "skipped"]
        assert "min after its time (more than" in late_records[1].details_obj()["reason"]
        assert late["state"] == "success"
        for task in ("extract", "deliver"):
            assert _ti(cluster, DAG["C-NIGHT-001"], late["dag_run_id"], task)["state"] == "skipped"
    delivered = [r for r in records if r.contract == "C-NIGHT-001" and r.action == "delivered"]
    assert len(delivered) == 1, "one nightly delivery, whatever unpausing created"


def test_one_click_with_unpause_on_trigger_gives_one_delivery(airflow, scenarios) -> None:
    records = scenarios["records"]
    runs = scenarios["runs"][DAG["C-NIGHT-002"]]
    manual = next(r for r in runs if r["dag_run_id"] == scenarios["n2_manual"])
    scheduled = [r for r in runs if r["run_type"] == "scheduled"]
    assert manual["state"] == "success" and len(scheduled) == 1 and scheduled[0]["state"] == "success"
    skipped = _of_run(records, scheduled[0]["dag_run_id"])
    assert [r.action for r in skipped] == ["run_started", "skipped"]
    assert skipped[0].details_obj()["trigger"]["scheduled_for"] == scheduled[0]["run_after"].replace("Z", "+00:00")
    delivered = [r for r in records if r.contract == "C-NIGHT-002" and r.action == "delivered"]
    assert len(delivered) == 1 and delivered[0].delivery == _of_run(records, manual["dag_run_id"])[0].delivery


def test_backfill_of_a_contract_that_is_not_incremental_is_refused(airflow, scenarios) -> None:
    records = scenarios["records"]
    backfills = [r for r in scenarios["runs"][DAG["C-NIGHT-002"]] if r["run_type"] == "backfill"]
    assert backfills and all(r["state"] == "failed" for r in backfills)
    for run in backfills:
        mine = _of_run(records, run["dag_run_id"])
        assert [r.action for r in mine] == ["run_started", "blocked"]
        assert "backfill refused" in mine[1].details_obj()["reason"]


def test_manual_runs_need_reference_and_reason_and_known_keys(airflow, scenarios) -> None:
    records = scenarios["records"]
    status, body = scenarios["no_params"]
    assert status == 400 and "delivery_reference" in json.dumps(body)  # the manual-only DAG's form requires them
    good = _of_run(records, scenarios["manual"])
    assert next(r for r in scenarios["runs"][DAG["C-DEMO-002"]] if r["dag_run_id"] == scenarios["manual"])[
        "state"] == "success"
    actions = [r.action for r in good]
    assert actions.count("delivered") == 1 and "blocked" not in actions, actions
    # Plaintext gone: by the run's cleanup task, or by a run that started meanwhile (after run_completed).
    assert actions[actions.index("run_completed") + 1:] in (["staging_removed"], ["staging_swept"]), actions
    trigger = good[0].details_obj()["trigger"]
    assert trigger["delivery_reference"] == "REQ-2026-0142" and trigger["reason"] == GOOD_CONF["reason"]
    assert good[0].actor == USER and "delivered" in [r.action for r in good]
    typo = _of_run(records, scenarios["typo"])
    assert [r.action for r in typo] == ["run_started", "blocked"], "refused before anything was read"
    assert "unknown trigger parameter(s) 'delivery_refrence'" in typo[1].details_obj()["reason"]
    assert next(r for r in scenarios["runs"][DAG["C-DEMO-002"]] if r["dag_run_id"] == scenarios["typo"])[
        "state"] == "failed"


def test_killed_task_processes_are_retried_and_deliver_once(airflow, scenarios) -> None:
    cluster, world, _ = airflow
    dag, run = DAG["C-KILL-001"], scenarios["kill"]
    assert _finished(cluster, dag, run) == "success"
    for task in ("validate", "deliver"):
        ti = _ti(cluster, dag, run, task)
        assert ti["state"] == "success" and ti["try_number"] == 2, (task, ti)
    mine = _of_run(scenarios["records"], run)
    assert [r.action for r in mine].count("delivered") == 1
    packages = sorted((world.home / "drop" / "c-kill-001").iterdir())
    assert [p.name for p in packages] == [f"C-KILL-001_{mine[0].delivery}.tar.age"]
    delivered = next(r for r in mine if r.action == "delivered").details_obj()
    proc = subprocess.run([CLI, "decrypt", str(packages[0]), "--identity", str(world.identities /
                                                                                "borealis-analyst.txt"),
                           "--sender-key", str(world.keys["public"]), "--out", str(world.home / "received-kill")],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "signature: verified" in proc.stdout and delivered["sha256"][:16] not in proc.stderr
    staging = world.home / "staging" / "C-KILL-001"
    assert not staging.exists() or not any(staging.iterdir()), "plaintext staging removed after the run"


def test_a_broken_contract_file_is_its_own_import_error_and_hides_nothing(airflow, scenarios) -> None:
    cluster, _world, _ = airflow
    errors = cluster.ok("GET", "/importErrors")["import_errors"]
    assert len(errors) == 1 and errors[0]["filename"].endswith("contract_file_errors.py")
    text = errors[0]["stack_trace"]
    assert "C-BAD-001.yaml: valid.from" in text and "not a real calendar date" in text and "Fix:" in text
    assert "yaml/" not in text and "ValueError" not in text
    dags = {d["dag_id"] for d in cluster.ok("GET", "/dags?limit=100")["dags"]}
    assert set(DAG.values()) <= dags and "contract_c_bad_001" not in dags


def test_task_logs_hold_no_errors_and_name_the_hashing_backend(airflow, scenarios) -> None:
    cluster, _world, _ = airflow
    logs = cluster.airflow_home / "logs"
    delivered_runs = [r for rs in scenarios["runs"].values() for r in rs if r["state"] == "success"]
    assert len(delivered_runs) >= 5
    errors, backends, progress, gate_imports = [], [], [], []
    for run in delivered_runs:
        for path in logs.glob(f"dag_id=*/run_id={run['dag_run_id']}/task_id=*/attempt=*.log"):
            if DAG["C-KILL-001"] in str(path) and path.parent.name in ("task_id=validate", "task_id=deliver") \
                    and path.name == "attempt=1.log":
                continue  # the attempts killed on purpose
            for line in path.read_text(errors="replace").splitlines():
                event = json.loads(line) if line.startswith("{") else {"level": "?", "event": line}
                if event.get("level") in ("error", "critical") or "Traceback" in line:
                    errors.append(f"{path.relative_to(logs)}: {line[:300]}")
                if event.get("logger") == "masking.hashing":
                    backends.append(str(event.get("event")))
                if event.get("logger") == "masking.progress" and str(event.get("event", "")).endswith("done"):
                    progress.append(str(event["event"]))
                if event.get("logger") == "validation.release_gate" \
                        and str(event.get("event", "")).startswith("release gate: Great Expectations"):
                    gate_imports.append(str(event["event"]))
    assert not errors, "\n".join(errors[:20])
    assert backends and all(b.startswith("keyed hashing: native OpenSSL") and b.endswith("threads") for b in backends)
    assert not any("unavailable" in b or "BrokenProcessPool" in b for b in backends)
    assert progress and all("rows/s" in p and "elapsed" in p for p in progress), progress
    # Every validate task found GX imported by its worker (airflow_glue.gate_preload), none paid the import.
    # (Runs that deliver nothing, e.g. the one unpausing creates, have no gate; the killed attempts are skipped.)
    assert len(gate_imports) >= 3, gate_imports
    assert all(g.endswith("was already imported in this process") for g in gate_imports), gate_imports


def test_the_operator_sees_it_all_in_the_airflow_ui(airflow, scenarios) -> None:
    from playwright.sync_api import sync_playwright  # noqa: PLC0415 - deferred: a browser library, for this test

    cluster, world, _ = airflow
    base = cluster.base
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("XDG_CONFIG_HOME", str(world.home.parent / "xdg"))
    manual_delivery = _of_run(scenarios["records"], scenarios["manual"])[0].delivery
    outside: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=servers.CHROMIUM, args=servers.CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1440, "height": 1300})

            def only_this_machine(route: Any) -> None:  # the network is blocked: nothing leaves 127.0.0.1
                if route.request.url.startswith(base) or route.request.url.startswith(("data:", "about:")):
                    route.continue_()
                else:
                    outside.append(route.request.url)
                    route.abort()
            context.route("**/*", only_this_machine)
            page = context.new_page()
            page.goto(base + "/")
            page.get_by_label("Username").fill(USER)
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(f"{base}/", timeout=30_000)

            # The overview: deliveries with reference and reason, blocked and skipped runs linked to their runs,
            # and the file that does not load.
            page.goto(base + "/plugin/contract-deliveries")
            frame = page.frame_locator("iframe")
            frame.get_by_role("heading", name="Recent deliveries").wait_for(timeout=30_000)
            text = frame.locator("body").inner_text()
            for expected in ("REQ-2026-0142", GOOD_CONF["reason"], "C-BAD-001.yaml", "not a real calendar date",
                             "backfill refused", "unknown trigger parameter(s)", "min after its time (more than"):
                assert expected in text, expected
            links = frame.locator("a[href*='/runs/']").evaluate_all(
                "links => links.map(a => decodeURIComponent(a.getAttribute('href')))")
            for run in (scenarios["typo"], scenarios["manual"]):  # a blocked run and a delivery link to their runs
                assert f"/dags/{DAG['C-DEMO-002']}/runs/{run}" in links, (run, links)
            page.screenshot(path=str(ARTIFACTS / "operator-overview.png"), full_page=True)

            # The same page on its own, whole (the Airflow UI shows it in a frame of the window's height).
            page.goto(base + "/contract-deliveries/")
            page.get_by_role("heading", name="Runs that delivered nothing on purpose").wait_for(timeout=30_000)
            page.screenshot(path=str(ARTIFACTS / "operator-overview-full.png"), full_page=True)

            # The contract tab of the demo's nightly contract: every column's treatment in words.
            page.goto(f"{base}/dags/contract_c_demo_001/plugin/contract-of-dag")
            frame = page.frame_locator("iframe")
            frame.get_by_role("heading", name="Datasets and treatments").wait_for(timeout=30_000)
            tab = frame.locator("body").inner_text()
            for words in ("Pseudonym: 32 lower-case hex", "Year only", "Rounded to the nearest multiple of 5",
                          "Values above 1000 are delivered as 1000", "Shifted date", "Delivered as held"):
                assert words in tab, words
            assert "as recorded" not in tab
            frame.get_by_role("heading", name="Datasets and treatments").evaluate(
                "h => h.scrollIntoView({block: 'start'})")  # the treatments at the top of the frame
            page.screenshot(path=str(ARTIFACTS / "operator-contract-tab.png"))

            # The run's tab: reference, reason, the ledger records and the release-gate report.
            page.goto(f"{base}/dags/{DAG['C-DEMO-002']}/runs/{scenarios['manual']}/plugin/contract-delivery-run")
            frame = page.frame_locator("iframe")
            frame.get_by_role("heading", name="Ledger records").wait_for(timeout=30_000)
            run_text = frame.locator("body").inner_text()
            assert "REQ-2026-0142" in run_text and GOOD_CONF["reason"] in run_text and manual_delivery in run_text
            page.screenshot(path=str(ARTIFACTS / "operator-run-tab.png"), full_page=True)
            frame.locator("#release-gate-report").click()
            frame.get_by_role("heading", name="Release gate: C-DEMO-002").wait_for(timeout=30_000)
            frame.get_by_role("link", name="claimants").click()
            frame.get_by_text("Table-Level Expectations").wait_for(timeout=30_000)
            # The status column is drawn by the page's own stylesheet (no icon font to fetch): never empty.
            statuses = frame.locator(".fa-check-circle, .fa-times").evaluate_all(
                "icons => icons.map(i => getComputedStyle(i, '::before').content)")
            assert statuses and all("passed" in s for s in statuses), statuses
            page.screenshot(path=str(ARTIFACTS / "release-gate-report.png"), full_page=True)

            # The trigger form of a manual-only contract: reference and reason are required fields.
            page.goto(f"{base}/dags/{DAG['C-DEMO-002']}")
            page.get_by_role("button", name="Trigger").first.click()
            page.get_by_text("Delivery reference (required)").first.wait_for(timeout=30_000)
            page.screenshot(path=str(ARTIFACTS / "trigger-form.png"))
        finally:
            browser.close()
    assert not outside, f"pages asked for something outside this machine: {outside[:5]}"
    assert (ARTIFACTS / "operator-overview.png").stat().st_size > 10_000
