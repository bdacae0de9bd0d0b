"""DagBag integrity: every contract DAG imports cleanly; one DAG per contract file; a broken contract
shows up as an import error naming that file only, and the other DAGs still load.

DagBag runs in a subprocess with a throwaway AIRFLOW_HOME, so Airflow's configuration never leaks
between tests.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from contracts import dag_id_for, discover_contract_files
from tests.conftest import REPO

PROBE = r"""
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
print("@@" + json.dumps({
    "dags": {d.dag_id: {"tags": sorted(d.tags), "retries": [t.retries for t in d.tasks if t.task_id != "authorise"],
                        "owner": d.owner, "doc": bool(d.doc_md), "schedule": type(d.timetable).__name__,
                        "tasks": sorted(t.task_id for t in d.tasks)}
             for d in bag.dags.values()},
    "errors": bag.import_errors,
}))
"""


def dagbag(tmp_path: Path, config_dir: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "CONTRACT_EXTRACTS"))}
    env.update(AIRFLOW_HOME=str(tmp_path / "airflow"), AIRFLOW__CORE__LOAD_EXAMPLES="False",
               CONTRACT_EXTRACTS_CONFIG_DIR=str(config_dir), GX_ANALYTICS_ENABLED="false")
    proc = subprocess.run([sys.executable, "-c", PROBE, str(REPO / "dags")], env=env, capture_output=True,
                          text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("@@"))
    return json.loads(line[2:])


def test_every_contract_file_gives_one_dag_without_import_errors(tmp_path: Path) -> None:
    config_dir = REPO / "configs"
    result = dagbag(tmp_path, config_dir)
    assert result["errors"] == {}
    expected = {dag_id_for(p.stem) for p in discover_contract_files(config_dir / "contracts")}
    assert expected, "the repo ships demo contracts"
    assert set(result["dags"]) == expected | {"ledger_checkpoint"}  # the nightly ledger witness (airflow_glue.audit)
    for dag_id, dag in result["dags"].items():
        if dag_id == "ledger_checkpoint":
            assert dag["tasks"] == ["write_checkpoint"] and dag["doc"] and "audit" in dag["tags"]
            continue
        assert dag["owner"] == "contract-extracts", dag_id
        assert dag["doc"], dag_id
        assert "contract-extract" in dag["tags"] and any(t.startswith("contractor:") for t in dag["tags"])
        assert all(r >= 1 for r in dag["retries"]), f"{dag_id}: every task after authorise retries"
        assert dag["tasks"] == sorted(["authorise", "extract", "disclosure", "validate", "package", "deliver", "record",
                                       "cleanup_staging"])


@pytest.mark.parametrize("breakage", [
    pytest.param("shoe_size: 44\n", id="unknown-key"),
    pytest.param("datasets: not-a-list\n", id="wrong-type"),
    pytest.param("recipients: [\n", id="yaml-syntax"),
])
def test_a_broken_contract_is_an_import_error_for_that_file_only(tmp_path: Path, breakage: str) -> None:
    config_dir = tmp_path / "configs"
    shutil.copytree(REPO / "configs", config_dir)
    broken = config_dir / "contracts" / "C-DEMO-002.yaml"
    broken.write_text(broken.read_text() + breakage)
    result = dagbag(tmp_path, config_dir)
    assert set(result["dags"]) == {"contract_c_demo_001", "ledger_checkpoint"}, "the other contract's DAG still loads"
    assert len(result["errors"]) == 1
    (path, message), = result["errors"].items()
    assert path.endswith("contract_file_errors.py")
    assert "C-DEMO-002.yaml" in message and "Fix:" in message
    assert "C-DEMO-001" not in message


def test_every_kind_of_broken_file_is_its_own_import_error_and_the_good_dags_still_build(tmp_path: Path) -> None:
    """Dates out of range, nesting 20,000 deep, a file of 2 MiB, a duplicate id and a YAML tag, all at once, beside
    the two good demo contracts: each bad file is one line of the import error (file, key, fix), and the good
    contracts' DAGs are built. Before, any one of these made the DAG file raise and every DAG disappear."""
    config_dir = tmp_path / "configs"
    shutil.copytree(REPO / "configs", config_dir)
    contracts = config_dir / "contracts"
    good = (contracts / "C-DEMO-002.yaml").read_text()
    broken = {
        "C-BAD-001.yaml": good.replace("C-DEMO-002", "C-BAD-001").replace("valid: {from: 2026-01-01",
                                                                            "valid: {from: 2026-13-01"),
        "C-BAD-002.yaml": "contract: C-BAD-002\nvalid: {until: 2030-02-31}\n",
        "C-BAD-003.yaml": "contract: C-BAD-003\ntitle: " + "[" * 20_000 + "]" * 20_000 + "\n",
        "C-BAD-004.yaml": "contract: C-BAD-004\n" + "#" * (2 << 20) + "\n",
        "C-BAD-005.yaml": "contract: C-BAD-005\ntitle: !!set [1]\n",
        "C-DEMO-002.yml": good,  # a second file for the same contract id
    }
    assert "2026-13-01" in broken["C-BAD-001.yaml"]
    for name, text in broken.items():
        (contracts / name).write_text(text)
    result = dagbag(tmp_path, config_dir)
    assert set(result["dags"]) == {"contract_c_demo_001", "contract_c_demo_002", "ledger_checkpoint"}
    (path, message), = result["errors"].items()
    assert path.endswith("contract_file_errors.py")
    lines = [line for line in message.splitlines() if "Fix:" in line]
    assert len(lines) == len(broken), message
    for name, fragment in (("C-BAD-001.yaml", "valid.from"), ("C-BAD-002.yaml", "valid.until"),
                           ("C-BAD-003.yaml", "nested more than"), ("C-BAD-004.yaml", "larger than 1 MiB"),
                           ("C-BAD-005.yaml", "title"), ("C-DEMO-002.yml", "also defined by")):
        line = next(x for x in lines if name in x)
        assert fragment in line, line
    # Airflow prefixes the import error with the frames of the raise in contract_file_errors.py; nothing else.
    assert "yaml" not in message.split("InvalidContractFiles")[0].lower() and "RecursionError" not in message


def test_parsing_touches_no_database_or_network(tmp_path: Path) -> None:
    # No source connection, no keys, no ledger configured: parsing must still succeed.
    result = dagbag(tmp_path, REPO / "configs")
    assert result["errors"] == {}
    assert not (tmp_path / "state").exists()


def test_a_partitioned_contract_gets_mapped_partition_tasks(tmp_path: Path) -> None:
    config_dir = tmp_path / "configs"
    shutil.copytree(REPO / "configs", config_dir)
    path = config_dir / "contracts" / "C-DEMO-002.yaml"
    data = yaml.safe_load(path.read_text())
    data["datasets"][0]["partition"] = {"column": "id", "parts": 4}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    result = dagbag(tmp_path, config_dir)
    assert result["errors"] == {}
    tasks = result["dags"]["contract_c_demo_002"]["tasks"]
    assert {"plan_partitions", "extract_partition", "extract"} <= set(tasks)
    assert "plan_partitions" not in result["dags"]["contract_c_demo_001"]["tasks"]
