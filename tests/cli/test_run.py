"""``contract-extracts run`` hides the release gate's GX import behind the stages before the gate (cli/run.py).

The overlap forks, so it is proven in a fresh ``contract-extracts`` process (the test process has threads and
captured streams, where the CLI runs the stages one after another): the stages before the gate must run in
another process than the gate, the delivery must be made, and a failure in the child must come back with its
message and leave no staging behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from audit.ledger import Ledger
from cli.run import GATE, overlap_possible
from core.settings import load_settings
from demo.synthetic import write_demo_source
from pipeline.stages import STAGES
from tests.authorisation.helpers import approve_for_tests
from tests.conftest import Workspace, airflow_uri

# The CLI as installed, with the two halves of cli.run noting which process ran them (pid per line).
SPIED_CLI = """
import os, sys
from pathlib import Path
import cli.run as run
marks = Path(sys.argv[1])
before, after = run.run_before_gate, run.run_from_gate
def spy(name, real):
    def wrapped(pipeline):
        with marks.open("a") as out:
            out.write(f"{name} {os.getpid()}\\n")
        return real(pipeline)
    return wrapped
run.run_before_gate, run.run_from_gate = spy("before", before), spy("gate", after)
if os.environ.get("KILL_CHILD_AFTER_AUTHORISE"):
    def killed(pipeline):
        pipeline.authorise()
        os.kill(os.getpid(), 9)  # SIGKILL: the child records nothing more
    run.run_before_gate = spy("before", killed)
from cli import main
sys.exit(main(["run", sys.argv[2]]))
"""


def _cli(workspace: Workspace, tmp_path: Path, contract: Path,
         extra: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    marks = tmp_path / "marks.txt"
    env = {**os.environ, **workspace.env, "AIRFLOW_CONN_DEMO_CLAIMS": airflow_uri(f"sqlite:///{tmp_path / 'src.db'}"),
           **(extra or {})}
    proc = subprocess.run([sys.executable, "-c", SPIED_CLI, str(marks), str(contract)], env=env, text=True,
                          capture_output=True, check=False, timeout=120)
    return proc, (marks.read_text().split("\n")[:-1] if marks.exists() else [])


def test_the_gate_is_the_first_stage_that_needs_gx() -> None:
    assert STAGES[GATE] == "validate"
    assert STAGES[:GATE] == ("authorise", "extract", "disclosure")


def test_no_overlap_with_a_second_thread_or_captured_streams(capsys: pytest.CaptureFixture[str]) -> None:
    assert not overlap_possible()  # pytest captures the streams here (and GX may be imported already)
    with capsys.disabled():
        stop = threading.Event()
        thread = threading.Thread(target=stop.wait)
        thread.start()
        try:
            assert not overlap_possible()  # forking a process with two threads is not safe
        finally:
            stop.set()
            thread.join()


def test_a_run_forks_the_stages_before_the_gate_and_delivers(workspace: Workspace, tmp_path: Path) -> None:
    write_demo_source(f"sqlite:///{tmp_path / 'src.db'}", n_people=300)
    contract = workspace.contracts_dir / "C-DEMO-001.yaml"
    approve_for_tests(workspace.config_dir, workspace.home, [contract])
    proc, marks = _cli(workspace, tmp_path, contract)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "delivered C-DEMO-001_" in proc.stdout
    (before, child), (gate, parent) = (m.split() for m in marks)
    assert (before, gate) == ("before", "gate")
    assert child != parent  # the stages before the gate ran in the forked child, the gate in the parent
    assert (workspace.home / "staging").is_dir()
    assert not list((workspace.home / "staging").glob("**/*.parquet"))  # cleanup removed the plaintext


def test_a_failure_before_the_gate_comes_back_with_its_message(workspace: Workspace, tmp_path: Path) -> None:
    """Not approved: authorise refuses in the child; the parent prints that message, exits 2, runs no gate."""
    write_demo_source(f"sqlite:///{tmp_path / 'src.db'}", n_people=50)
    contract = workspace.contracts_dir / "C-DEMO-001.yaml"
    proc, marks = _cli(workspace, tmp_path, contract)
    assert proc.returncode == 2
    error = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and "approv" in error[0], proc.stderr[-3000:]
    assert [m.split()[0] for m in marks] == ["before"]
    assert not list((workspace.home / "staging").glob("**/*.parquet"))


def test_a_child_killed_mid_run_is_recorded_as_blocked_and_nothing_is_left(workspace: Workspace,
                                                                            tmp_path: Path) -> None:
    """SIGKILL in the child after authorise: it records nothing more, so the parent records ``blocked`` at the
    stage it had reached (extract), removes the staging folder and exits 2; nothing is delivered."""
    write_demo_source(f"sqlite:///{tmp_path / 'src.db'}", n_people=100)
    contract = workspace.contracts_dir / "C-DEMO-001.yaml"
    approve_for_tests(workspace.config_dir, workspace.home, [contract])
    proc, marks = _cli(workspace, tmp_path, contract, {"KILL_CHILD_AFTER_AUTHORISE": "1"})
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "ended without a result (interrupted or killed); nothing was delivered" in proc.stderr
    assert [m.split()[0] for m in marks] == ["before"]
    with Ledger(load_settings(workspace.env).ledger_url) as ledger:
        actions = [(r.action, r.details_obj()) for r in ledger.records(contract="C-DEMO-001")]
    ran = [a for a, _ in actions if a not in ("contract_approved", "catalogue_approved", "approvers_changed")]
    assert ran == ["run_started", "authorised", "blocked", "staging_removed"], ran
    blocked = dict(actions)["blocked"]
    assert blocked["stage"] == "extract" and blocked["final"] is True
    assert not list((workspace.home / "staging").glob("**/*.parquet"))
    drop = workspace.home / "drop"
    assert not drop.exists() or not [p for p in drop.rglob("*") if p.is_file()]
