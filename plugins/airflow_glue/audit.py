"""The nightly ``ledger_checkpoint`` DAG: a signed checkpoint of the ledger written to a second store.

The store is an absolute folder (another disk or host than the ledger) or ``sftp://<connection id>/<folder>``
(an Airflow SFTP connection, pinned host key, atomic no-overwrite upload), read when the task runs from
the Airflow Variable ``contract_extracts_checkpoint_store`` or the environment variable
``CONTRACT_EXTRACTS_CHECKPOINT_STORE``. Without one the task fails, naming the fix: a witness that
silently writes nothing is no witness. Each checkpoint covers its own ``checkpoint_written`` record
(``audit.checkpoint``); ``contract-extracts audit verify --checkpoint FILE`` checks the ledger against it.
"""

from __future__ import annotations

import datetime as dt
import os
from typing import Any

from airflow.sdk import DAG, Variable, task

from airflow_glue.builder import DEFAULT_ARGS, _settings_with_ledger_connection
from airflow_glue.transports import airflow_sftp_endpoint
from audit.checkpoint import STORE_ENV, parse_store, sink_for, write_checkpoint_to
from audit.opening import open_ledger
from core.errors import ConfigError
from core.settings import load_settings
from delivery.signing import load_signing_key

DAG_ID = "ledger_checkpoint"
STORE_VARIABLE = "contract_extracts_checkpoint_store"
SCHEDULE_ENV = "CONTRACT_EXTRACTS_CHECKPOINT_SCHEDULE"
DEFAULT_SCHEDULE = "30 3 * * *"  # nightly, after the usual 02:00 deliveries


def store_setting() -> tuple[str, str]:
    """(value, where it came from): the Airflow Variable first, then the environment."""
    try:
        value = Variable.get(STORE_VARIABLE, default=None)
    except Exception:  # no metadata database reachable (e.g. outside a task): the environment decides
        value = None
    if value:
        return str(value), f"Airflow Variable {STORE_VARIABLE}"
    if os.environ.get(STORE_ENV):
        return os.environ[STORE_ENV], STORE_ENV
    raise ConfigError("no second store for ledger checkpoints is configured", key=STORE_VARIABLE,
                      fix=f"set the Airflow Variable {STORE_VARIABLE} (or {STORE_ENV}) to an absolute folder on "
                          "another disk or host, or to sftp://<connection id>/<folder>")


def write_nightly_checkpoint(actor: str = "scheduler") -> dict[str, Any]:
    """Append the ``checkpoint_written`` record and write its signed checkpoint to the second store."""
    value, where = store_setting()
    spec = parse_store(value, key=where)
    key = load_signing_key()
    settings = _settings_with_ledger_connection(load_settings())
    sink = sink_for(spec, resolve_sftp=airflow_sftp_endpoint)
    with open_ledger(settings) as ledger:
        record = write_checkpoint_to(ledger, key, sink, actor=actor)
    return {"seq": record.seq, "hash": record.hash, "destination": sink.destination}


def build_checkpoint_dag() -> DAG:
    with DAG(
        dag_id=DAG_ID,
        schedule=os.environ.get(SCHEDULE_ENV) or DEFAULT_SCHEDULE,
        start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        catchup=False,
        max_active_runs=1,
        default_args=DEFAULT_ARGS,
        tags=["contract-extracts", "audit"],
        doc_md=__doc__,
    ) as dag:
        @task(task_id="write_checkpoint")
        def write_checkpoint(**context: Any) -> dict[str, Any]:
            dag_run = context.get("dag_run")
            user = getattr(dag_run, "triggering_user_name", None)
            return write_nightly_checkpoint(actor=user or "scheduler")

        write_checkpoint()
    return dag
