"""Great Expectations imported once per Airflow worker, not once per release-gate task.

Importing GX costs a fresh process 2-3 s, and every ``validate`` task would pay it. Airflow 3 runs each task
in a process forked from its worker, and a module imported before that fork costs the task nothing:

* **LocalExecutor**: its worker processes are forked from the scheduler when the executor starts.
  ``GateReadyLocalExecutor`` imports GX first, then starts them::

      AIRFLOW__CORE__EXECUTOR=airflow_glue.gate_preload.GateReadyLocalExecutor

* **CeleryExecutor**: a Celery worker forks its pool from its main process, after Celery's
  ``import_modules`` signal (Airflow preloads its own modules there the same way).
  ``airflow_glue.celery_config.CELERY_CONFIG`` is Airflow's default Celery configuration, and importing it
  connects the preload to that signal::

      AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS=airflow_glue.celery_config.CELERY_CONFIG

Nothing else changes: the gate is the same code with the same suite; a failed preload is only a warning
(the gate imports GX itself, and records a failure there). The preload leaves one thread (checked by the
tests), so the forks that follow are as safe as Airflow's own. It costs the scheduler (or the Celery main
process) the import once at start and the memory of GX, shared copy-on-write with the forked workers.
"""

from __future__ import annotations

import logging
import time

from airflow.executors.local_executor import LocalExecutor

from core.errors import value_free
from validation.gx_adapter import import_gx

log = logging.getLogger(__name__)


def preload_gate() -> bool:
    """Import GX and the gate's expectations into this process; False (with a warning) when that failed."""
    started = time.monotonic()
    try:
        import_gx()
    except Exception as exc:
        log.warning("release gate: preloading Great Expectations failed (%s); each validate task imports it",
                    value_free(exc))
        return False
    log.info("release gate: Great Expectations preloaded for the tasks forked from here in %.1f s",
             time.monotonic() - started)
    return True


class GateReadyLocalExecutor(LocalExecutor):
    """Airflow's LocalExecutor, whose forked workers (and so their tasks) start with GX imported."""

    def start(self) -> None:
        if self.is_mp_using_fork:  # with spawn, nothing imported here would reach the workers
            preload_gate()
        super().start()
