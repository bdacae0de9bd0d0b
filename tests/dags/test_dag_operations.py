"""What operators rely on in each contract DAG: trigger params (validated), failure alerts, tags, owner, docs,
and that the params reach the ledger's run_started trigger bounded and value-free."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from airflow.utils.types import DagRunType

from airflow_glue.builder import _pipeline, trigger_params
from tests.conftest import REPO

PROBE = r"""
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
out = {}
for d in bag.dags.values():
    params = {k: d.params.get_param(k).schema for k in d.params.keys()}
    defaults = {k: d.params[k] for k in d.params.keys()}  # before resolve(), which stores the value
    ok, bad = {}, {}
    for name, value in [("delivery_reference", "REQ-2026-0142"), ("reason", "monthly refresh")]:
        p = d.params.get_param(name)
        ok[name] = p.resolve(value) == value
    for name, value in [("delivery_reference", "bad ref; DROP"), ("delivery_reference", "x" * 65),
                        ("reason", "y" * 201), ("reason", "line\nbreak")]:
        try:
            d.params.get_param(name).resolve(value)
            bad[f"{name}={value[:10]}"] = "accepted"
        except Exception as exc:
            bad[f"{name}={value[:10]}"] = type(exc).__name__
    out[d.dag_id] = {
        "params": params, "ok": ok, "bad": bad,
        "defaults": defaults,
        "callbacks": {t.task_id: [getattr(c, "__name__", "?") for c in (t.on_failure_callback or [])]
                      for t in d.tasks},
        "doc": d.doc_md, "tags": sorted(d.tags), "owner": d.owner,
    }
print("@@" + json.dumps({"dags": out, "errors": bag.import_errors}))
"""


@pytest.fixture(scope="module")
def dags(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("dagops")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "CONTRACT_EXTRACTS"))}
    env.update(AIRFLOW_HOME=str(tmp / "airflow"), AIRFLOW__CORE__LOAD_EXAMPLES="False",
               CONTRACT_EXTRACTS_CONFIG_DIR=str(REPO / "configs"), GX_ANALYTICS_ENABLED="false")
    proc = subprocess.run([sys.executable, "-c", PROBE, str(REPO / "dags")], env=env, capture_output=True,
                          text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("@@"))[2:])
    assert result["errors"] == {}
    return result["dags"]


def test_manual_delivery_params_are_schema_validated(dags: dict) -> None:
    for dag_id, d in dags.items():
        assert set(d["params"]) == {"delivery_reference", "reason", "full_refresh"}, dag_id
        assert d["defaults"] == {"delivery_reference": None, "reason": None, "full_refresh": False}, \
            "scheduled runs need no params"
        assert d["params"]["delivery_reference"]["maxLength"] == 64 and d["params"]["reason"]["maxLength"] == 200
        assert all(d["ok"].values()), d["ok"]
        assert all(v != "accepted" for v in d["bad"].values()), d["bad"]


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
    assert trigger["delivery_reference"] == "REQ-9" and "reason" not in trigger
    assert trigger["worker"] == "worker-a"
