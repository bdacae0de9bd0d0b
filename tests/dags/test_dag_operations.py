"""What operators rely on in each contract DAG: trigger params (validated), failure alerts, tags, owner, docs,
and that the params reach the ledger's run_started trigger bounded and value-free."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from airflow.utils.types import DagRunType

from airflow_glue.builder import _pipeline, trigger_params
from tests.conftest import REPO

PROBE = r"""
import json, sys
from airflow.dag_processing.dagbag import DagBag
from airflow.sdk.definitions._internal.types import NOTSET
bag = DagBag(dag_folder=sys.argv[1])
out = {}
for d in bag.dags.values():
    if not d.dag_id.startswith("contract_"):
        continue
    params = {k: d.params.get_param(k).schema for k in d.params.keys()}
    defaults = {k: ("<required>" if d.params.get_param(k).value is NOTSET else d.params.get_param(k).value)
                for k in d.params.keys()}
    ok, bad = {}, {}
    for name, value in [("delivery_reference", "REQ-2026-0142"), ("reason", "monthly refresh")]:
        p = d.params.get_param(name)
        ok[name] = p.resolve(value) == value
    for name, value in [("delivery_reference", "bad ref; DROP"), ("delivery_reference", "x" * 65),
                        ("delivery_reference", ""), ("delivery_reference", " REQ-1"), ("reason", "   "),
                        ("reason", "y" * 201), ("reason", "line\nbreak"), ("reason", "")]:
        try:
            d.params.get_param(name).resolve(value)
            bad[f"{name}={value[:10]!r}"] = "accepted"
        except Exception as exc:
            bad[f"{name}={value[:10]!r}"] = type(exc).__name__
    out[d.dag_id] = {
        "params": params, "ok": ok, "bad": bad,
        "defaults": defaults,
        "callbacks": {t.task_id: [getattr(c, "__name__", "?") for c in (t.on_failure_callback or [])]
                      for t in d.tasks},
        "doc": d.doc_md, "tags": sorted(d.tags), "owner": d.owner, "catchup": d.catchup,
        "max_active_runs": d.max_active_runs,
        "retry_delay": [t.retry_delay.total_seconds() for t in d.tasks if t.task_id == "extract"][0],
    }
print("@@" + json.dumps({"dags": out, "errors": bag.import_errors}))
"""


@pytest.fixture(scope="module")
def dags(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The repo's two demo contracts (nightly C-DEMO-001, manual-only C-DEMO-002) and an incremental copy of the
    nightly one (C-DEMO-009), parsed by Airflow's DagBag."""
    tmp = tmp_path_factory.mktemp("dagops")
    config_dir = tmp / "configs"
    shutil.copytree(REPO / "configs", config_dir)
    data = yaml.safe_load((config_dir / "contracts" / "C-DEMO-001.yaml").read_text())
    data["contract"], data["incremental"] = "C-DEMO-009", {"column": "claim_start"}
    (config_dir / "contracts" / "C-DEMO-009.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "CONTRACT_EXTRACTS"))}
    env.update(AIRFLOW_HOME=str(tmp / "airflow"), AIRFLOW__CORE__LOAD_EXAMPLES="False",
               CONTRACT_EXTRACTS_CONFIG_DIR=str(config_dir), GX_ANALYTICS_ENABLED="false",
               CONTRACT_EXTRACTS_RETRY_DELAY_SECONDS="7")
    proc = subprocess.run([sys.executable, "-c", PROBE, str(REPO / "dags")], env=env, capture_output=True,
                          text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("@@"))[2:])
    assert result["errors"] == {}
    assert set(result["dags"]) == {"contract_c_demo_001", "contract_c_demo_002", "contract_c_demo_009"}
    return result["dags"]


def test_manual_delivery_params_are_schema_validated(dags: dict) -> None:
    for dag_id, d in dags.items():
        assert d["params"]["delivery_reference"]["maxLength"] == 64 and d["params"]["reason"]["maxLength"] == 200
        assert all(d["ok"].values()), d["ok"]
        assert all(v != "accepted" for v in d["bad"].values()), (dag_id, d["bad"])


def test_the_form_asks_for_what_the_contract_can_use(dags: dict) -> None:
    """Reference and reason are required fields of a manual-only DAG's form; a nightly DAG's scheduled runs carry
    no params, so there they default to null (and a manual run without them is refused before anything is read:
    tests/airflow_glue/test_run_policy.py). ``full_refresh`` only where the contract is incremental."""
    manual, nightly, incremental = (dags[f"contract_c_demo_00{n}"] for n in (2, 1, 9))
    assert manual["defaults"] == {"delivery_reference": "<required>", "reason": "<required>"}
    assert manual["params"]["delivery_reference"]["type"] == "string" == manual["params"]["reason"]["type"]
    assert nightly["defaults"] == {"delivery_reference": None, "reason": None}
    assert nightly["params"]["delivery_reference"]["type"] == ["null", "string"]
    assert incremental["defaults"] == {"delivery_reference": None, "reason": None, "full_refresh": False}
    assert incremental["params"]["full_refresh"]["type"] == "boolean"
    for d in dags.values():
        assert "(required)" in d["params"]["delivery_reference"]["title"]


def test_runs_never_catch_up_and_one_runs_at_a_time(dags: dict) -> None:
    for d in dags.values():
        assert d["catchup"] is False and d["max_active_runs"] == 1
        assert d["retry_delay"] == 7.0  # CONTRACT_EXTRACTS_RETRY_DELAY_SECONDS


def test_every_task_raises_an_alert_on_failure(dags: dict) -> None:
    for dag_id, d in dags.items():
        contract = dag_id.removeprefix("contract_").upper().replace("_", "-")
        for task_id, callbacks in d["callbacks"].items():
            assert callbacks == [f"alert_{contract.replace('-', '_')}"], (dag_id, task_id)


def test_tags_owner_and_docs(dags: dict) -> None:
    for dag_id, d in dags.items():
        assert d["owner"] == "contract-extracts"
        assert "contract-extract" in d["tags"] and any(t.startswith("contractor:") for t in d["tags"])
        assert {"nightly", "manual"} & set(d["tags"]), dag_id
        assert "Contract deliveries" in d["doc"] and "delivery reference" in d["doc"]
        assert "docs/operators.md" in d["doc"]


def test_trigger_params_are_bounded_and_printable() -> None:
    assert trigger_params({"delivery_reference": "REQ-1", "reason": "  monthly \x07refresh "}) == {
        "delivery_reference": "REQ-1", "reason": "monthly refresh"}
    assert trigger_params({"delivery_reference": None, "reason": ""}) == {}
    assert len(trigger_params({"reason": "z" * 500})["reason"]) == 200
    assert trigger_params(None) == {} and trigger_params({"reason": 42}) == {}


def test_pipeline_trigger_records_params_worker_and_plain_run_type(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTRACT_EXTRACTS_HOME", str(tmp_path))
    dag_run = SimpleNamespace(dag_id="contract_c_demo_001", run_id="scheduled__x", run_type=DagRunType.SCHEDULED,
                              run_after=dt.datetime(2026, 11, 25, tzinfo=dt.UTC), triggering_user_name=None)
    ti = SimpleNamespace(max_tries=2, try_number=1, hostname="worker-a")
    pipeline = _pipeline(REPO / "configs" / "contracts" / "C-DEMO-001.yaml",
                         {"dag_run": dag_run, "ti": ti, "params": {"delivery_reference": "REQ-9", "reason": None}})
    trigger = pipeline.ctx.trigger
    assert trigger["run_type"] == "scheduled" and pipeline.ctx.actor == "scheduler"
    assert trigger["scheduled_for"] == "2026-11-25T00:00:00+00:00"  # what the already-delivered guard looks up
    assert trigger["delivery_reference"] == "REQ-9" and "reason" not in trigger
    assert trigger["worker"] == "worker-a"
