"""An Airflow delivery between its ``deliver`` and ``record`` tasks is alive: another run's sweep leaves it alone.

Found by the scheduler tier (tests/scheduler): with several contracts running at once, a run starting while another
contract's run sat between ``deliver`` (ledger: ``delivered``) and ``record`` took ``delivered`` for the end of that
run and swept its staging; the ``record`` task then failed after the package had been delivered.
"""

from __future__ import annotations

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
