"""Kill -9 at every step boundary of a delivery, then run again: exactly once, and nothing left behind.

Each run is a real process (``Pipeline.run_all`` as the CLI runs it) that SIGKILLs itself at one boundary:
after each ledger record of its own delivery, inside extract and package, just before and just after the
package is published at its final name, inside cleanup, and in the middle of recovering an earlier run.
Every next run first reconciles and sweeps. At the end, for every delivery id: at most one package at the
destination, each one named by the ledger (``delivery_intent`` and ``delivered`` with its sha256); every
``run_started`` ended in ``delivered``, ``blocked`` or ``abandoned``; no ``.partial`` file, no staging folder.
The ledger is keyed (the default) and verifies.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from audit.ledger import Ledger
from audit.opening import ensure_ledger_key, load_ledger_key, open_ledger
from cli import main as cli_main
from core.settings import load_settings
from delivery.package import sha256_file
from demo.synthetic import write_demo_source
from pipeline import recovery
from tests.authorisation.helpers import approve_for_tests
from tests.conftest import REPO, Workspace

CONTRACT = "C-DEMO-001"

DRIVER = r"""
import datetime as dt, os, signal, sys, uuid
from pathlib import Path
from sqlalchemy.engine import make_url

point = os.environ.get("KILL_AT", "")
own = {}

def die(where):
    sys.stdout.write(f"killed at {where}\n")
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)

import audit.ledger as ledger_module
append = ledger_module.Ledger.append
def interposed_append(self, **kw):
    mine = kw.get("delivery") == own.get("delivery")
    if point == f"before:{kw['action']}" and mine:
        die(point)
    record = append(self, **kw)
    if (point == f"after:{kw['action']}" and mine) or (point == f"recovery-after:{kw['action']}" and not mine):
        die(point)
    return record
ledger_module.Ledger.append = interposed_append

import delivery.drop_folder as drop_folder
link = drop_folder.os.link
def interposed_link(src, dst, *args, **kwargs):  # the publish step: the hidden partial becomes the final name
    if point == "before:publish":
        die(point)
    link(src, dst, *args, **kwargs)
    if point == "after:publish":
        die(point)
class _Os:
    def __getattr__(self, name):
        return interposed_link if name == "link" else getattr(os, name)
drop_folder.os = _Os()

import pipeline.stages as stages
for name, where in (("build_package", "during:package"), ("remove_tree", "during:cleanup")):
    original = getattr(stages, name)
    def make(original, where):
        def interposed(*args, **kwargs):
            if where == "during:package":
                result = original(*args, **kwargs)  # the encrypted package exists in staging
                if point == where:
                    die(point)
                return result
            if point == where:
                die(point)
            return original(*args, **kwargs)
        return interposed
    setattr(stages, name, make(original, where))
write_masked = stages.masking_engine.write_masked
def interposed_write(*args, **kwargs):  # one dataset written to staging, the next not yet
    rows = write_masked(*args, **kwargs)
    if point == "during:extract":
        die(point)
    return rows
stages.masking_engine.write_masked = interposed_write

from core.settings import load_settings
from delivery.sftp import RetryPolicy
retry_of = os.environ.get("RUN_KEY")  # an Airflow task's retry: same run, same delivery id, its own process
ctx = stages.RunContext(contract_path=Path(sys.argv[1]), settings=load_settings(), actor="cli:killtest",
                        run_key=retry_of or f"cli/{uuid.uuid4()}",
                        run_after=dt.datetime(2026, 11, 25, 2, tzinfo=dt.UTC) if retry_of else dt.datetime.now(dt.UTC),
                        resolve_connection=lambda _conn: make_url(sys.argv[2]),
                        trigger={"system": "airflow" if retry_of else "cli"},
                        sftp_retry=RetryPolicy(attempts=2, base_delay=0.01, max_delay=0.02))
pipeline = stages.Pipeline(ctx)
own["delivery"] = pipeline.delivery_id
print(f"delivery {pipeline.delivery_id}", flush=True)
if os.environ.get("STAGES"):
    for stage in os.environ["STAGES"].split(","):
        getattr(pipeline, stage)()
    pipeline.close()
else:
    pipeline.run_all()
print("done", flush=True)
"""

KILL_POINTS = [
    "after:run_started", "after:authorised", "during:extract", "after:extract_done", "after:validation_passed",
    "during:package", "after:delivery_intent", "before:publish", "after:publish",
    "recovery-after:delivered",     # the next run dies right after reconciling the previous one as delivered
    "after:delivered", "after:run_completed", "during:cleanup",
    "recovery-after:staging_swept",  # ... and right after sweeping a dead run's staging
    "after:staging_removed",
]


def run(workspace: Workspace, source: str, kill_at: str | None, *, contract: str = CONTRACT,
        prelude: str = "", run_key: str | None = None, stages: str | None = None) -> tuple[int, str, str]:
    """Run one delivery in a new process that kills itself at ``kill_at``; (exit code, delivery id, output).

    With ``run_key`` and ``stages``: those stages of that (Airflow) run, as a task and its retries would.
    """
    env = {**os.environ, "KILL_AT": kill_at or "", "RUN_KEY": run_key or "", "STAGES": stages or ""}
    proc = subprocess.run([sys.executable, "-c", prelude + DRIVER, str(workspace.contracts_dir / f"{contract}.yaml"),
                           source],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    delivery = next(line.split()[1] for line in proc.stdout.splitlines() if line.startswith("delivery "))
    return proc.returncode, delivery, proc.stdout + proc.stderr[-3000:]


def packages(workspace: Workspace) -> list[Path]:
    drop = workspace.home / "drop"
    return sorted(p for p in drop.rglob("*") if p.is_file()) if drop.exists() else []


@pytest.fixture
def keyed_workspace(workspace: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Workspace, str]:
    monkeypatch.delenv("CONTRACT_EXTRACTS_INSECURE_UNKEYED_LEDGER", raising=False)  # keyed, the default
    ensure_ledger_key(load_settings())
    approve_for_tests(workspace.config_dir, workspace.home, [workspace.contracts_dir / f"{CONTRACT}.yaml"])
    source = f"sqlite:///{tmp_path / 'claims.sqlite'}"
    write_demo_source(source, n_people=300)
    return workspace, source


def test_kill_at_every_step_boundary_then_run_again(keyed_workspace: tuple[Workspace, str]) -> None:
    workspace, source = keyed_workspace
    killed: dict[str, str] = {}
    for point in KILL_POINTS:
        code, delivery, output = run(workspace, source, point)
        assert code == -signal.SIGKILL and f"killed at {point}" in output, (point, output)
        killed[point] = delivery
    code, final, output = run(workspace, source, None)
    assert code == 0 and "done" in output, output
    # And the operator's command finds nothing left to do.
    assert cli_main(["audit", "reconcile"]) == 0

    with open_ledger() as ledger:
        assert ledger.keyed and ledger.verify().ok
        records = ledger.records(contract=CONTRACT)
    by = defaultdict(list)
    for r in records:
        by[r.delivery].append(r)

    # Every run ended: delivered, blocked or abandoned. (A run killed while recovering others died before it
    # recorded its own start; its staging folder is swept below.)
    started = {r.delivery for r in records if r.action == "run_started"}
    recovering = {killed[p] for p in killed if p.startswith("recovery-")}
    assert started == (set(killed.values()) - recovering) | {final}
    assert not [r for r in records if r.delivery in recovering and r.action != "staging_swept"]
    for delivery in started:
        actions = [r.action for r in by[delivery]]
        assert {"delivered", "blocked", "abandoned"} & set(actions), (delivery, actions)

    # Exactly one package per delivery id at the destination, each named in the ledger with its sha256.
    on_disk = packages(workspace)
    assert not [p for p in on_disk if ".partial" in p.name], on_disk
    per_delivery: dict[str, list[Path]] = defaultdict(list)
    for package in on_disk:
        per_delivery[package.name.removeprefix(f"{CONTRACT}_").removesuffix(".tar.age")].append(package)
    for delivery, files in per_delivery.items():
        assert len(files) == 1, files
        named = [r.details_obj() for r in by[delivery] if r.action in ("delivery_intent", "delivered")]
        sha = sha256_file(files[0])[0]
        assert any(d.get("sha256") == sha and d.get("path") == str(files[0]) for d in named
                   if "path" in d), (delivery, named)
        assert any(r.action == "delivered" and r.details_obj()["sha256"] == sha for r in by[delivery])
    # Every delivered record points at a package that is there.
    for r in records:
        if r.action == "delivered":
            assert Path(r.details_obj()["path"]).is_file()
            assert sha256_file(Path(r.details_obj()["path"]))[0] == r.details_obj()["sha256"]

    # Killed before the publish: abandoned, nothing delivered. Killed at or after it: delivered once.
    for point in ("after:run_started", "during:extract", "after:delivery_intent", "before:publish"):
        actions = [r.action for r in by[killed[point]]]
        assert "abandoned" in actions and "delivered" not in actions, (point, actions)
        assert killed[point] not in per_delivery
    published = by[killed["after:publish"]]
    reconciled = [r.details_obj() for r in published if r.action == "delivered"]
    assert len(reconciled) == 1 and reconciled[0]["reconciled"] is True
    assert reconciled[0]["intent_seq"] == next(r.seq for r in published if r.action == "delivery_intent")
    for point in ("after:delivered", "after:run_completed", "during:cleanup", "after:staging_removed"):
        assert len(per_delivery[killed[point]]) == 1
    assert len([r for r in by[killed["before:publish"]] if r.action == "intent_settled"]) == 1
    assert [r.details_obj()["partials_removed"] for r in by[killed["before:publish"]]
            if r.action == "intent_settled"] == [1]

    # Nothing left behind: no staging folder; the ones killed runs left were swept and recorded.
    staging_root = workspace.home / "staging"
    assert [p for p in staging_root.rglob("*")] == [staging_root / CONTRACT]
    assert stat.S_IMODE(staging_root.stat().st_mode) == 0o700
    assert stat.S_IMODE((staging_root / CONTRACT).stat().st_mode) == 0o700
    swept = {r.delivery: r.details_obj() for r in records if r.action == "staging_swept"}
    for point in ("during:extract", "after:extract_done", "during:package", "before:publish", "during:cleanup",
                  "recovery-after:delivered", "recovery-after:staging_swept"):
        assert killed[point] in swept, point
    assert swept[killed["during:extract"]]["files"] >= 1 and swept[killed["during:package"]]["bytes"] > 0


def test_staging_of_a_live_run_is_never_swept(keyed_workspace: tuple[Workspace, str], tmp_path: Path) -> None:
    """A run holding its staging lock (here: this process) is neither swept nor abandoned by another run."""
    _workspace, _source = keyed_workspace
    settings = load_settings()
    with open_ledger() as ledger:
        ledger.append(actor="x", action="run_started", contract=CONTRACT, delivery="20261125T020000Z-0000live",
                      details={"trigger": {"system": "cli"}})
    staging = recovery.private_tree(settings.staging_dir, settings.staging_dir / CONTRACT / "20261125T020000Z-0000live")
    (staging / "data").mkdir()
    (staging / "data" / "claimants.parquet").write_bytes(b"PAR1")
    held = recovery.claim(staging, contract=CONTRACT, delivery="20261125T020000Z-0000live", mode="process")
    try:
        with Ledger(settings.ledger_url, key=load_ledger_key()) as ledger:
            report = recovery.recover(ledger, staging_root=settings.staging_dir, actor="x", resolve_sftp=None)
        assert report.abandoned == [] and report.swept == [] and staging.exists()
    finally:
        held.release()
    with Ledger(settings.ledger_url, key=load_ledger_key()) as ledger:
        report = recovery.recover(ledger, staging_root=settings.staging_dir, actor="x", resolve_sftp=None)
    assert report.abandoned == [(CONTRACT, "20261125T020000Z-0000live")]
    assert [s["staging"] for s in report.swept] == [str(staging)] and not staging.exists()


def test_airflow_runs_are_abandoned_only_after_the_idle_bound(keyed_workspace: tuple[Workspace, str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Between two Airflow tasks nobody holds the lock: such a run is left alone until it has been idle long."""
    _workspace, _source = keyed_workspace
    settings = load_settings()
    delivery = "20261125T020000Z-00airflo"
    with open_ledger() as ledger:
        ledger.append(actor="scheduler", action="run_started", contract=CONTRACT, delivery=delivery,
                      details={"trigger": {"system": "airflow", "dag_id": "contract_c_demo_001"}})
    staging = recovery.private_tree(settings.staging_dir, settings.staging_dir / CONTRACT / delivery)
    with open_ledger() as ledger:
        report = recovery.recover(ledger, staging_root=settings.staging_dir, actor="x", resolve_sftp=None)
    assert report.abandoned == [] and report.swept == [] and staging.exists()
    monkeypatch.setenv(recovery.STALE_AFTER_ENV, "0.0001")  # 0.36 seconds
    os.utime(staging, (0, 0))
    time.sleep(0.5)
    with open_ledger() as ledger:
        report = recovery.recover(ledger, staging_root=settings.staging_dir, actor="x", resolve_sftp=None)
        abandoned = ledger.records(delivery=delivery, action="abandoned")
    assert report.abandoned == [(CONTRACT, delivery)] and not staging.exists()
    assert "no activity since" in abandoned[0].details_obj()["reason"]


def test_staging_folders_and_their_parents_are_private(keyed_workspace: tuple[Workspace, str]) -> None:
    workspace, source = keyed_workspace
    settings = load_settings()
    settings.staging_dir.mkdir(parents=True, mode=0o755)
    os.chmod(settings.staging_dir, 0o755)
    (settings.staging_dir / CONTRACT).mkdir(mode=0o755)
    os.chmod(settings.staging_dir / CONTRACT, 0o755)
    code, delivery, output = run(workspace, source, "after:extract_done")
    assert code == -signal.SIGKILL, output
    folder = settings.staging_dir / CONTRACT / delivery
    for level in (settings.staging_dir, settings.staging_dir / CONTRACT, folder, folder / "data"):
        assert stat.S_IMODE(level.stat().st_mode) == 0o700, level
    owner = json.loads((folder / recovery.OWNER_FILE).read_text())
    assert owner["mode"] == "process" and owner["delivery"] == delivery


BEFORE_DELIVER = "authorise,extract,disclosure,validate,package"


def test_a_retried_airflow_task_never_sends_a_second_package(keyed_workspace: tuple[Workspace, str]) -> None:
    """deliver dies after publishing; its retry (same delivery id) records that package and sends nothing."""
    workspace, source = keyed_workspace
    run_key = "contract_c_demo_001/manual__retry"
    code, delivery, output = run(workspace, source, None, run_key=run_key, stages=BEFORE_DELIVER)
    assert code == 0, output
    code, again, output = run(workspace, source, "after:publish", run_key=run_key, stages="deliver")
    assert code == -signal.SIGKILL and again == delivery, output
    [published, partial] = sorted(packages(workspace), key=lambda p: p.name.startswith("."))
    assert partial.name.startswith(f".{published.name}.partial-"), "killed between the link and the unlink"
    code, _same, output = run(workspace, source, None, run_key=run_key, stages="deliver,record,cleanup")
    assert code == 0, output
    assert packages(workspace) == [published]
    with open_ledger() as ledger:
        records = ledger.records(delivery=delivery)
    delivered = [r.details_obj() for r in records if r.action == "delivered"]
    assert len(delivered) == 1 and delivered[0]["reconciled_by"] == "retry"
    assert delivered[0]["sha256"] == sha256_file(published)[0]
    assert [r.action for r in records].count("run_completed") == 1


def test_a_repackaged_retry_is_refused_and_the_first_package_stays(keyed_workspace: tuple[Workspace, str]) -> None:
    """After a publish that was not recorded, even a rebuilt (different) package is never sent."""
    workspace, source = keyed_workspace
    run_key = "contract_c_demo_001/manual__repackaged"
    assert run(workspace, source, None, run_key=run_key, stages=BEFORE_DELIVER)[0] == 0
    code, delivery, output = run(workspace, source, "after:publish", run_key=run_key, stages="deliver")
    assert code == -signal.SIGKILL, output
    [published] = [p for p in packages(workspace) if not p.name.startswith(".")]
    first = sha256_file(published)[0]
    code, _same, output = run(workspace, source, None, run_key=run_key, stages="package,deliver")
    assert code != 0 and "refusing a second copy" in output, output
    assert packages(workspace) == [published] and sha256_file(published)[0] == first
    with open_ledger() as ledger:
        actions = [r.action for r in ledger.records(delivery=delivery)]
    assert actions.count("delivered") == 1 and actions[-1] == "blocked"
