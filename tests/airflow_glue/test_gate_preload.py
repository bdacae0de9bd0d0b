"""The release gate's Great Expectations, imported once per Airflow worker (airflow_glue/gate_preload.py).

Each case runs in a fresh interpreter (the test process may have imported GX already): the LocalExecutor's
workers must be forked with GX in them, the Celery configuration must preload on the signal a Celery worker
sends before forking its pool, and the preload must leave a single thread (the forks that follow are safe).
The real scheduler tier (tests/scheduler) checks the validate tasks' own logs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

_EXECUTOR = """
import json, multiprocessing, sys, threading
from airflow_glue.gate_preload import GateReadyLocalExecutor
before = "great_expectations" in sys.modules
executor = GateReadyLocalExecutor(parallelism=1)
executor.start()
try:
    workers = len(executor.workers)
    # A process forked from here (as the executor forks its workers) finds GX without importing it.
    ctx = multiprocessing.get_context("fork")
    queue = ctx.SimpleQueue()
    child = ctx.Process(target=lambda q: q.put("great_expectations" in sys.modules
                                               and "validation.expectations" in sys.modules), args=(queue,))
    child.start()
    in_fork = queue.get()
    child.join()
finally:
    executor.end()
print(json.dumps({"before": before, "after": "great_expectations" in sys.modules, "workers": workers,
                  "in_fork": in_fork, "threads_after_preload": threading.active_count()}))
"""

_CELERY = """
import json, sys
import airflow_glue.celery_config as config
from celery.signals import import_modules
imported_with_config = "great_expectations" in sys.modules
import_modules.send(sender=None)
print(json.dumps({"imported_with_config": imported_with_config, "after_signal": "great_expectations" in sys.modules,
                  "config_is_airflows": "broker_url" in config.CELERY_CONFIG}))
"""


def _run(code: str, tmp_path: Path) -> dict[str, object]:
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path / "airflow"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__CORE__EXECUTOR": "airflow_glue.gate_preload.GateReadyLocalExecutor"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=180,
                         cwd=REPO, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_local_executor_workers_start_with_gx_imported(tmp_path: Path) -> None:
    seen = _run(_EXECUTOR, tmp_path)
    assert seen == {"before": False, "after": True, "workers": 1, "in_fork": True, "threads_after_preload": 1}


def test_celery_configuration_preloads_on_the_workers_signal_only(tmp_path: Path) -> None:
    seen = _run(_CELERY, tmp_path)
    assert seen == {"imported_with_config": False, "after_signal": True, "config_is_airflows": True}
