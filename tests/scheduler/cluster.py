"""A real Airflow for the scheduler tier: scheduler, dag-processor and api-server (LocalExecutor) on a throwaway
PostgreSQL metadata database, driven through the public REST API.

Each component runs in its own session (process group) and is stopped by that group's id, never by name; the
metadata database is dropped afterwards. Field notes: parallelism 4 on two cores, bytecode compiled and kept,
every component shares one JWT secret (tokens the scheduler signs for tasks must verify in the api-server).
"""

from __future__ import annotations

import compileall
import contextlib
import json
import os
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from tests.conftest import PG_ADMIN, REPO
from tests.ui import servers

USER, PASSWORD = "operator", "operator-scheduler-test"
COMPONENTS = ("scheduler", "dag-processor", "api-server")
OUR_PACKAGES = ("core", "contracts", "authorisation", "extract", "masking", "disclosure", "validation", "delivery",
                "audit", "pipeline", "demo", "cli", "plugins", "dags")


@dataclass
class Cluster:
    base: str
    env: dict[str, str]
    logs: Path
    airflow_home: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _token: str | None = None

    @property
    def token(self) -> str:
        if self._token is None:
            self._token = servers.token(self.base, USER, PASSWORD)
        return self._token

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        return servers.http(method, f"{self.base}/api/v2{path}", token=self.token, body=body)

    def ok(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        status, answer = self.api(method, path, body)
        assert status in (200, 201), (method, path, status, answer)
        return answer

    def alive(self) -> list[str]:
        return [name for name, proc in self.procs.items() if proc.poll() is None]

    def wait_for(self, what: str, check: Any, timeout: float, every: float = 0.5) -> Any:
        """Poll ``check()`` until it returns something truthy; fail with the components' log tails."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = check()
            if value:
                return value
            dead = [name for name, proc in self.procs.items() if proc.poll() is not None]
            assert not dead, f"{dead} exited while waiting for {what}\n{self.tails()}"
            time.sleep(every)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{self.tails()}")

    def tails(self, chars: int = 2500) -> str:
        out = []
        for name in COMPONENTS:
            log = self.logs / f"{name}.log"
            if log.exists():
                out.append(f"--- {name} ---\n{log.read_text(errors='replace')[-chars:]}")
        return "\n".join(out)


def compile_sources() -> None:
    """Bytecode for our packages (PYTHONDONTWRITEBYTECODE is set machine-wide): every task process imports them."""
    for package in OUR_PACKAGES:
        compileall.compile_dir(str(REPO / package), quiet=1, workers=1)


@contextlib.contextmanager
def metadata_database() -> Iterator[str]:
    """A throwaway PostgreSQL database for Airflow's metadata (and one for the ledger), dropped afterwards."""
    name = f"ce_sched_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_ADMIN.rsplit('/', 1)[0]}/{name}"
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def airflow_env(base_env: dict[str, str], *, airflow_home: Path, metadata_url: str, port: int,
                passwords: Path) -> dict[str, str]:
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in base_env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update({
        "PATH": str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""),
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__EXECUTOR": "airflow_glue.gate_preload.GateReadyLocalExecutor",  # GX once per worker
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_url,
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": metadata_url,  # psycopg 3 serves async too
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": base,
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base}/execution/",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
        "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "300",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "10",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "GX_ANALYTICS_ENABLED": "false",
    })
    return env


@contextlib.contextmanager
def running_airflow(root: Path, base_env: dict[str, str]) -> Iterator[Cluster]:
    """Migrate a fresh metadata database, start the three components, wait for health; stop and drop afterwards."""
    compile_sources()
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    passwords = root / "passwords.json"
    passwords.write_text(json.dumps({USER: PASSWORD}))
    port = servers.free_port()
    with metadata_database() as metadata_url:
        env = airflow_env(base_env, airflow_home=root / "airflow", metadata_url=metadata_url, port=port,
                          passwords=passwords)
        cluster = Cluster(base=f"http://127.0.0.1:{port}", env=env, logs=logs, airflow_home=root / "airflow")
        try:
            migrate = subprocess.run(["airflow", "db", "migrate"], env=env, capture_output=True, text=True,
                                     timeout=300, check=False)
            assert migrate.returncode == 0, migrate.stdout[-2000:] + migrate.stderr[-3000:]
            for name in COMPONENTS:
                cluster.procs[name] = servers.start(["airflow", name], env, logs / f"{name}.log")
            servers.wait_http(f"{cluster.base}/api/v2/monitor/health", timeout=120,
                              procs=list(cluster.procs.values()), log=logs / "api-server.log")
            yield cluster
        finally:
            for proc in cluster.procs.values():
                servers.stop(proc)
