"""Celery configuration for Airflow's CeleryExecutor: Airflow's default, plus the release gate's preload.

``AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS=airflow_glue.celery_config.CELERY_CONFIG``. Importing this module
connects ``gate_preload.preload_gate`` to Celery's ``import_modules`` signal, which a Celery worker sends in
its main process before it forks its pool: the tasks start with Great Expectations imported
(``airflow_glue.gate_preload``). Other processes that read the configuration (the scheduler) never send it.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG
from celery.signals import import_modules

from airflow_glue.gate_preload import preload_gate

CELERY_CONFIG: dict[str, Any] = DEFAULT_CELERY_CONFIG


def _preload_in_celery_worker(*_args: Any, **_kwargs: Any) -> None:
    preload_gate()


import_modules.connect(_preload_in_celery_worker, weak=False)
