"""An Airflow delivery between its ``deliver`` and ``record`` tasks is alive: another run's sweep leaves it alone.

Found by the scheduler tier (tests/scheduler): with several contracts running at once, a run starting while another
contract's run sat between ``deliver`` (ledger: ``delivered``) and ``record`` took ``delivered`` for the end of that
run and swept its staging; the ``record`` task then failed after the package had been delivered.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from audit.ledger import Ledger
from pipeline import recovery


def _airflow_delivery(ledger: Ledger, staging_root: Path, delivery: str) -> Path:
    ledger.append(actor="airflow", action="run_started", contract="C-DEMO-002", delivery=delivery,
                  details={"trigger": {"system": "airflow", "dag_id": "contract_c_demo_002", "run_id": "manual__1"}})
    folder = recovery.private_tree(staging_root, staging_root / "C-DEMO-002" / delivery)
    recovery.claim(folder, contract="C-DEMO-002", delivery=delivery, mode="task").release()  # the task ended
    (folder / "extract.json").write_text("{}")
    ledger.append(actor="airflow", action="delivered", contract="C-DEMO-002", delivery=delivery,
                  details={"sha256": "0" * 64})
    return folder


def test_a_delivered_airflow_run_keeps_its_staging_until_it_is_recorded(tmp_path: Path) -> None:
    staging_root = tmp_path / "staging"
    with Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}") as ledger:
        folder = _airflow_delivery(ledger, staging_root, "20261204T180837Z-5f02e596")
        report = recovery.sweep_staging(ledger, staging_root=staging_root, actor="another run")
        assert report.swept == [] and (folder / "extract.json").exists(), "the record task still needs it"
        ledger.append(actor="airflow", action="run_completed", contract="C-DEMO-002",
                      delivery="20261204T180837Z-5f02e596", details={})
        report = recovery.sweep_staging(ledger, staging_root=staging_root, actor="another run")
        assert [e["staging"] for e in report.swept] == [str(folder)] and not folder.exists()


def test_a_skipped_run_has_ended_and_is_never_called_abandoned(tmp_path: Path) -> None:
    """A scheduled run skipped on purpose (late, or its time delivered) ends with ``skipped``: reconciliation, even
    long after, adds nothing to it."""
    with Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}") as ledger:
        ledger.append(actor="scheduler", action="run_started", contract="C-DEMO-001", delivery="d-skip",
                      details={"trigger": {"system": "airflow", "run_type": "scheduled"}})
        ledger.append(actor="scheduler", action="skipped", contract="C-DEMO-001", delivery="d-skip",
                      details={"reason": "late"})
        later = dt.datetime.now(dt.UTC) + dt.timedelta(days=3)
        report = recovery.reconcile(ledger, staging_root=tmp_path / "staging", actor="audit", resolve_sftp=None,
                                    now=later)
        assert report.abandoned == [] and [r.action for r in ledger.records()] == ["run_started", "skipped"]
