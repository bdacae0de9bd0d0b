"""A real distributed run: CeleryExecutor, Redis broker, PostgreSQL metadata/results/ledger, two workers.

deploy/celery-local.sh starts an api-server, a scheduler, a dag-processor and two Celery workers
(worker-a, worker-b) on loopback, with this test's own PostgreSQL database and Redis db number. Both
demo contracts are triggered at once (with a delivery reference and reason); every task instance must
succeed, the task instances together must have run on both workers (per task instance, so the check
holds unchanged when extraction becomes mapped tasks), the ledger (in PostgreSQL) must verify and
record the worker and the trigger params, and every package must decrypt and verify. The script's
`stop` ends every process it started, which the fixture checks, and the database and Redis db are
removed afterwards.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
import yaml
from sqlalchemy.pool import NullPool

from audit.ledger import Ledger
from demo.runner import ensure_keys, render_demo_contracts
from demo.synthetic import write_demo_source
from tests.authorisation.helpers import approve_for_tests, write_catalogues
from tests.conftest import PG_ADMIN, REPO
from tests.ui import servers

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SCRIPT = REPO / "deploy" / "celery-local.sh"
CLI = str(Path(sys.executable).parent / "contract-extracts")
WORKERS = ("worker-a", "worker-b")
DAGS = ("contract_c_demo_001", "contract_c_demo_002")
USER, PASSWORD = "admin", "admin-celery-test"


def _free_redis_db(client_for) -> int:
    for n in random.sample(range(1, 16), 15):
        if client_for(n).dbsize() == 0:
            return n
    pytest.fail("no empty Redis database (1-15) for this test")


@pytest.fixture
def celery_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    started = time.monotonic()
    home = tmp_path / "state"
    config_dir = tmp_path / "configs"
    keys = ensure_keys(home)
    identities = home / "demo" / "identities"
    contracts = render_demo_contracts(REPO / "configs" / "contracts", config_dir / "contracts", identities)
    for path in contracts:  # manual deliveries only, so exactly the runs this test triggers take place
        data = yaml.safe_load(path.read_text())
        data["schedule"] = None
        if data["contract"] == "C-DEMO-001":  # a partitioned delivery: mapped partition tasks on both workers
            for dataset, column in (("claimants", "id"), ("payments", "claimant_id")):
                next(d for d in data["datasets"] if d["name"] == dataset)["partition"] = {"column": column,
                                                                                        "parts": 3}
        path.write_text(yaml.safe_dump(data, sort_keys=False))
    source = home / "demo" / "claims.sqlite"
    write_demo_source(f"sqlite:///{source}", n_people=1500)

    db = f"ce_celery_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{db}"')
    pg_server = PG_ADMIN.rsplit("/", 1)[0]
    ledger_url = f"{pg_server}/{db}"
    redis_client = lambda n: redis.Redis(host="127.0.0.1", port=6379, db=n)  # noqa: E731
    redis_db = _free_redis_db(redis_client)

    base_env = {k: v for k, v in os.environ.items()
                if not k.startswith(("AIRFLOW", "CONTRACT_EXTRACTS", "CELERY_LOCAL"))}
    project = {
        "CONTRACT_EXTRACTS_HOME": str(home),
        "CONTRACT_EXTRACTS_CONFIG_DIR": str(config_dir),
        "CONTRACT_EXTRACTS_MASTER_KEY_FILE": str(keys["master"]),
        "CONTRACT_EXTRACTS_SIGNING_KEY_FILE": str(keys["signing"]),
        "CONTRACT_EXTRACTS_LEDGER_URL": ledger_url,
        "CONTRACT_EXTRACTS_INSECURE_UNKEYED_LEDGER": "1",  # verified below with a plain Ledger(url)
    }
    for name, value in project.items():
        monkeypatch.setenv(name, value)
    write_catalogues(config_dir)  # the demo source's catalogue, approved below before the contracts
    approve_for_tests(config_dir, home, ledger_url=ledger_url)  # signed approvals, in the PostgreSQL ledger

    port = servers.free_port(also=(100, 101))  # the script gives worker log servers port+100, +101
    passwords = tmp_path / "passwords.json"
    passwords.write_text(json.dumps({USER: PASSWORD}))
    env = {**base_env, **project,
           "AIRFLOW_CONN_DEMO_CLAIMS": f"sqlite:///{source}",
           "CELERY_LOCAL_STATE": str(tmp_path / "celery"),
           "CELERY_LOCAL_DB": db,
           "CELERY_LOCAL_PG": pg_server,
           "CELERY_LOCAL_REDIS_DB": str(redis_db),
           "CELERY_LOCAL_PORT": str(port),
           "CELERY_LOCAL_WORKERS": " ".join(WORKERS),
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin",
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
           "VENV_BIN": str(Path(sys.executable).parent)}
    pid_dir = tmp_path / "celery" / "pids"
    pids: dict[str, int] = {}
    try:
        proc = subprocess.run(["bash", str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=180,
                              check=False)
        pids = {p.stem: int(p.read_text()) for p in pid_dir.glob("*.pid")}
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        assert set(pids) == {"api-server", "scheduler", "dag-processor", *(f"celery-{w}" for w in WORKERS)}
        yield {"base": f"http://127.0.0.1:{port}", "home": home, "identities": identities, "keys": keys,
               "ledger_url": ledger_url, "logs": tmp_path / "celery" / "logs", "started": started}
    finally:
        pids = pids or {p.stem: int(p.read_text()) for p in pid_dir.glob("*.pid")}
        stop = subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True, text=True, timeout=120,
                              check=False)
        alive = [name for name, pid in pids.items() if servers._group_alive(pid)]
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        admin.dispose()
        redis_client(redis_db).flushdb()
        print(f"celery test: {time.monotonic() - started:.0f}s in total, including start and stop")
        assert stop.returncode == 0, stop.stderr
        assert not alive, f"still running after stop: {alive}"


def _wait_for_runs(base: str, token: str, runs: dict[str, str], timeout: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        for dag, run in runs.items():
            status, body = servers.http("GET", f"{base}/api/v2/dags/{dag}/dagRuns/{run}", token=token)
            assert status == 200, body
            states[dag] = body["state"]
        if all(s in ("success", "failed") for s in states.values()):
            return states
        time.sleep(2)
    return states


def test_one_delivery_per_contract_spread_over_two_celery_workers(celery_cluster, tmp_path: Path) -> None:
    base = celery_cluster["base"]
    token = servers.token(base, USER, PASSWORD)
    deadline = time.monotonic() + 60
    while any(servers.http("GET", f"{base}/api/v2/dags/{d}", token=token)[0] != 200 for d in DAGS):
        assert time.monotonic() < deadline, "the dag-processor did not register the contract DAGs"
        time.sleep(1)
    runs = {}
    for n, dag in enumerate(DAGS):
        assert servers.http("PATCH", f"{base}/api/v2/dags/{dag}", token=token, body={"is_paused": False})[0] == 200
        status, body = servers.http("POST", f"{base}/api/v2/dags/{dag}/dagRuns", token=token, body={
            "logical_date": None, "conf": {"delivery_reference": f"REQ-CELERY-{n}", "reason": "distributed test"}})
        assert status == 200, body
        runs[dag] = body["dag_run_id"]
    states = _wait_for_runs(base, token, runs, timeout=150)

    hosts_by_dag: dict[str, dict[str, str]] = {}
    for dag, run in runs.items():
        status, body = servers.http("GET", f"{base}/api/v2/dags/{dag}/dagRuns/{run}/taskInstances?limit=1000",
                                    token=token)
        assert status == 200, body
        tis = body["task_instances"]
        hosts_by_dag[dag] = {f"{t['task_id']}[{t['map_index']}]": t["hostname"] for t in tis}
        bad = [(t["task_id"], t["map_index"], t["state"]) for t in tis if t["state"] != "success"]
        assert not bad, f"{dag}: {bad}; logs under {celery_cluster['logs']}"
    print("task instances by worker:", json.dumps(hosts_by_dag, indent=1))
    # Each worker imported the release gate's GX before forking its pool (airflow_glue.celery_config): no
    # validate task paid the import.
    task_logs = tmp_path / "celery" / "airflow" / "logs"
    gate = [line for path in task_logs.glob("dag_id=*/run_id=*/task_id=validate/attempt=*.log")
            for line in path.read_text(errors="replace").splitlines() if "release gate: Great Expectations" in line]
    assert len(gate) == len(DAGS), f"{gate}; task logs under {task_logs}"
    assert all("was already imported in this process" in line for line in gate), gate
    assert states == dict.fromkeys(DAGS, "success")
    all_hosts = {h for hosts in hosts_by_dag.values() for h in hosts.values()}
    assert all_hosts == set(WORKERS), f"tasks ran on {all_hosts}, expected both workers"
    partition_hosts = [h for key, h in hosts_by_dag["contract_c_demo_001"].items()
                       if key.startswith("extract_partition[")]
    assert len(partition_hosts) == 6, "3 ranges of claimants and 3 of payments, as mapped task instances"
    print("partition tasks by worker:", sorted(partition_hosts))
    assert set(hosts_by_dag["contract_c_demo_001"].values()) == set(WORKERS), \
        "the partitioned delivery itself must have run on both workers"

    with Ledger(celery_cluster["ledger_url"]) as ledger:
        verified = ledger.verify()
        assert verified.ok, verified.reason
        for n, (dag, run) in enumerate(runs.items()):
            started = [r for r in ledger.records(action="run_started")
                       if r.details_obj()["trigger"].get("run_id") == run]
            assert len(started) == 1
            trigger = started[0].details_obj()["trigger"]
            assert trigger["delivery_reference"] == f"REQ-CELERY-{n}" and trigger["reason"] == "distributed test"
            assert trigger["worker"] == hosts_by_dag[dag]["authorise[-1]"]
            assert started[0].actor == USER
            (delivered,) = ledger.records(delivery=started[0].delivery, action="delivered")
            package = delivered.details_obj()["path"]
            recipient = delivered.details_obj()["recipients"][0]["name"]
            out = tmp_path / f"out-{n}"
            proc = subprocess.run([CLI, "decrypt", package, "--identity",
                                   str(celery_cluster["identities"] / f"{recipient}.txt"),
                                   "--sender-key", str(celery_cluster["keys"]["public"]), "--out", str(out)],
                                  capture_output=True, text=True, check=False)
            assert proc.returncode == 0, proc.stderr
            assert "signature: verified" in proc.stdout
            assert (out / "manifest.json").exists()
    print(f"celery test: deliveries verified {time.monotonic() - celery_cluster['started']:.0f}s after setup began")
