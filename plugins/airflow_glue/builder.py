"""Build one Airflow DAG per contract file.

Tasks are thin: each one builds a ``RunContext`` from the Airflow run and calls the matching
``Pipeline`` stage. Parsing only reads YAML (no database, no network). Our own errors are
deterministic, so they fail the task without retries (``AirflowFailException``); foreign errors
(network, database) are retried. Before anything is read, ``airflow_glue.run_policy`` decides whether the run
delivers at all (validated manual params, late or repeated scheduled runs, backfills); docs/operators.md.

One contract file that cannot be loaded or built never hides another: ``contract_dags`` builds every good
file's DAG and returns one message (file, key, fix) per bad one, which ``dags/contract_file_errors.py`` raises
as that DAG file's import error and the "Contract deliveries" page lists.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import logging
import os
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Connection, Param, task, teardown
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
from sqlalchemy.engine import URL

from airflow_glue.alerts import failure_callback
from airflow_glue.run_policy import (
    REASON_MAX,
    REFERENCE_MAX,
    RunFacts,
    decide,
    delivered_schedule_time,
    param_defaults,
    param_schemas,
)
from airflow_glue.secrets import airflow_key_source
from airflow_glue.transports import airflow_sftp_endpoint
from audit.opening import LEDGER_CONNECTION_ID
from contracts.loading import discover_contract_files, load_contract
from contracts.model import Contract
from core.connections import sqlalchemy_url
from core.errors import ConfigError, ContractExtractsError, StageFailed, value_free
from core.settings import Settings, load_settings
from pipeline.stages import Pipeline, RunContext

log = logging.getLogger(__name__)

# Retries wait 2 minutes, then longer; CONTRACT_EXTRACTS_RETRY_DELAY_SECONDS shortens that (tests, small sites).
RETRY_DELAY_ENV = "CONTRACT_EXTRACTS_RETRY_DELAY_SECONDS"


def _retry_delay() -> dt.timedelta:
    try:
        seconds = int(os.environ.get(RETRY_DELAY_ENV) or 120)
    except ValueError:
        seconds = 120
    return dt.timedelta(seconds=min(max(seconds, 1), 3600))


DEFAULT_ARGS: dict[str, Any] = {
    "owner": "contract-extracts",
    "retries": 2,
    "retry_delay": _retry_delay(),
    "retry_exponential_backoff": True,
}


def delivery_params(contract: Contract) -> dict[str, Param]:
    """The trigger form's fields (``run_policy.param_schemas``): required ones have no default."""
    defaults = param_defaults(contract)
    return {name: Param(defaults[name], **schema) if name in defaults else Param(**schema)
            for name, schema in param_schemas(contract).items()}


def trigger_params(params: Any) -> dict[str, Any]:
    """The manual-delivery params worth recording: printable, trimmed, bounded; unset ones are left out."""
    out: dict[str, Any] = {}
    for name, limit in (("delivery_reference", REFERENCE_MAX), ("reason", REASON_MAX)):
        try:
            value = params.get(name) if params is not None else None
        except Exception:
            value = None
        if isinstance(value, str):
            value = "".join(ch for ch in value if ch.isprintable()).strip()[:limit]
            if value:
                out[name] = value
    try:
        full_refresh = params.get("full_refresh") if params is not None else None
    except Exception:  # params without the key (older runs): not a full refresh
        full_refresh = None
    if full_refresh is True:
        out["full_refresh"] = True
    return out


def _airflow_connection_url(conn_id: str) -> URL:
    try:
        conn = Connection.get(conn_id)
    except Exception:
        raise ConfigError("is not defined in Airflow", key=f"connection {conn_id!r}",
                          fix=f"add the connection {conn_id!r} (UI, CLI, env AIRFLOW_CONN_..., or secrets "
                              "backend)") from None
    return sqlalchemy_url(conn.get_uri(), conn_id)


def _settings_with_ledger_connection(settings: Settings) -> Settings:
    """Deployments name the ledger database as the Airflow connection ``contract_extracts_ledger``.

    CONTRACT_EXTRACTS_LEDGER_URL, when set, wins; without either the local SQLite default is used
    (fine for one machine; a distributed deployment must configure one shared ledger).
    """
    if os.environ.get("CONTRACT_EXTRACTS_LEDGER_URL"):
        return settings
    try:
        conn = Connection.get(LEDGER_CONNECTION_ID)
    except Exception:
        return settings
    url = sqlalchemy_url(conn.get_uri(), LEDGER_CONNECTION_ID)
    return dataclasses.replace(settings, ledger_url=url.render_as_string(hide_password=False))


def _pipeline(contract_path: Path, context: dict[str, Any]) -> Pipeline:
    dag_run = context["dag_run"]
    ti = context["ti"]
    run_after = getattr(dag_run, "run_after", None) or getattr(dag_run, "start_date", None) \
        or dt.datetime.now(dt.UTC)
    raw_run_type = getattr(dag_run, "run_type", "") or ""
    run_type = str(getattr(raw_run_type, "value", raw_run_type))  # 'manual', not 'DagRunType.MANUAL'
    user = getattr(dag_run, "triggering_user_name", None)
    actor = user or ("scheduler" if "scheduled" in run_type else "airflow")
    max_tries = getattr(ti, "max_tries", None)
    try_number = getattr(ti, "try_number", 1) or 1
    final = max_tries is None or try_number > max_tries
    ctx = RunContext(
        contract_path=contract_path,
        settings=_settings_with_ledger_connection(load_settings()),
        actor=actor,
        run_key=f"{dag_run.dag_id}/{dag_run.run_id}",
        run_after=run_after,
        resolve_connection=_airflow_connection_url,
        resolve_sftp=airflow_sftp_endpoint,
        key_source=airflow_key_source(),  # masks the master keys before the stage logs
        trigger={"system": "airflow", "dag_id": dag_run.dag_id, "run_id": dag_run.run_id,
                 "run_type": run_type, "try_number": try_number,
                 **({"scheduled_for": _utc_iso(run_after)} if run_type == "scheduled" else {}),
                 **({"clear_number": int(dag_run.clear_number)} if getattr(dag_run, "clear_number", 0) else {}),
                 **trigger_params(context.get("params")),
                 **({"worker": str(ti.hostname)[:100]} if getattr(ti, "hostname", None) else {})},
        final_attempt=final,
    )
    return Pipeline(ctx)


def _utc_iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).isoformat()


def _call_stage(contract_path: Path, stage: str, context: dict[str, Any], *args: Any) -> dict[str, Any]:
    pipeline = _pipeline(contract_path, context)
    try:
        result: dict[str, Any] = getattr(pipeline, stage)(*args)
        return result
    except ContractExtractsError as exc:
        if isinstance(exc, StageFailed):
            raise  # foreign cause: let Airflow retry
        raise AirflowFailException(str(exc)) from None
    finally:
        pipeline.close()


def run_facts(context: dict[str, Any]) -> RunFacts:
    """What ``run_policy.decide`` needs from Airflow's run: its type, conf, schedule time, start and clears."""
    dag_run = context["dag_run"]
    raw_run_type = getattr(dag_run, "run_type", "") or ""
    run_type = str(getattr(raw_run_type, "value", raw_run_type))
    conf = getattr(dag_run, "conf", None)
    return RunFacts(run_type=run_type, conf=conf if isinstance(conf, dict) else {},
                    scheduled_for=getattr(dag_run, "run_after", None) if run_type == "scheduled" else None,
                    started_at=getattr(dag_run, "start_date", None),
                    clear_number=int(getattr(dag_run, "clear_number", 0) or 0))


def _authorise(contract_path: Path, context: dict[str, Any]) -> dict[str, Any]:
    """Decide whether this run delivers (``run_policy``), then authorise it; skipped runs skip every task after."""
    pipeline = _pipeline(contract_path, context)
    try:
        try:
            contract = load_contract(contract_path)
        except ContractExtractsError:
            contract = None  # authorise records the run and the reason the file does not load
        if contract is not None:
            decision = decide(contract, run_facts(context), delivered_for=lambda when: delivered_schedule_time(
                pipeline.ledger, contract.contract, when))
            if decision.action == "refuse":
                pipeline.refuse(decision.reason)
            elif decision.action == "skip":
                pipeline.skip(decision.reason)
                raise AirflowSkipException(decision.reason)
        result: dict[str, Any] = pipeline.authorise()
        return result
    except ContractExtractsError as exc:
        if isinstance(exc, StageFailed):
            raise
        raise AirflowFailException(str(exc)) from None
    finally:
        pipeline.close()


def render_doc(contract: Contract, contract_path: Path) -> str:
    lines = [
        f"# {contract.title}",
        "",
        f"**Contract** {contract.contract} · **Contractor** {contract.contractor} · "
        f"**Business case** {contract.business_case}",
        "",
        f"**Legal gateway:** {contract.legal_gateway}",
        "",
        f"**Security assurance:** {contract.security_assurance.framework} "
        f"{contract.security_assurance.reference}, expires {contract.security_assurance.expires}",
        "",
        f"**Valid** {contract.valid.from_} to {contract.valid.until} · **Schedule** "
        f"{contract.schedule or 'manual only'} · **Linkage** {contract.linkage}",
        "",
        "**Recipients:** " + ", ".join(r.name for r in contract.recipients),
        "",
        f"Contract file: `{contract_path.name}`. Deliveries, approvals, blocked runs and the audit ledger: "
        "[Contract deliveries](/plugin/contract-deliveries) in the navigation.",
        "",
        "Manual deliveries: give a *delivery reference* and a *reason* in the trigger form (both required, "
        "recorded in the audit ledger, never personal data)"
        + ("; *full refresh* sends the whole extract instead of the changes." if contract.incremental else ".")
        + (" Scheduled runs deliver only on time: a run created by unpausing for a past time delivers nothing "
           "and says so; backfills " + ("deliver the changes since the previous delivery." if contract.incremental
                                        else "are refused (the contract is not incremental).")
           if contract.schedule else "")
        + " See docs/operators.md.",
        "",
    ]
    for ds in contract.datasets:
        lines += [f"## Dataset `{ds.name}` from `{ds.table}`", "", "| Column | Treatment |", "| --- | --- |"]
        for name, t in ds.columns.items():
            extra = ""
            if t.treatment == "pseudonymise":
                extra = f" (entity `{t.entity}`, canonicalise `{t.canonicalise}`)"
            elif t.treatment == "generalise":
                extra = f" to {t.to}"
            lines.append(f"| `{name}` | {t.treatment}{extra} |")
        lines.append("")
    return "\n".join(lines)


def build_contract_dag(contract_path: Path, contract: Contract) -> DAG:
    contract_path = contract_path.absolute()
    start = dt.datetime.combine(contract.valid.from_, dt.time(), tzinfo=dt.UTC)
    tags = ["contract-extract", f"contractor:{contract.contractor_slug}",
            "nightly" if contract.schedule else "manual"]
    with DAG(
        dag_id=contract.dag_id,
        description=f"{contract.contract}: {contract.title} → {contract.contractor}",
        schedule=contract.schedule,
        start_date=start,
        catchup=False,
        max_active_runs=1,
        tags=tags,
        default_args={**DEFAULT_ARGS, "on_failure_callback": failure_callback(contract.contract)},
        params=delivery_params(contract),
        doc_md=render_doc(contract, contract_path),
        auto_register=False,  # dags/contract_deliveries.py exposes the DAGs it wants; checks build without effect
    ) as dag:

        @task(task_id="authorise", retries=0)
        def authorise(**context: Any) -> dict[str, Any]:
            return _authorise(contract_path, context)

        @task(task_id="extract")
        def extract(**context: Any) -> dict[str, Any]:
            return _call_stage(contract_path, "extract", context)

        @task(task_id="disclosure")
        def disclosure(**context: Any) -> dict[str, Any]:
            return _call_stage(contract_path, "disclosure", context)

        @task(task_id="validate")
        def validate(**context: Any) -> dict[str, Any]:
            return _call_stage(contract_path, "validate", context)

        @task(task_id="package")
        def package(**context: Any) -> dict[str, Any]:
            return _call_stage(contract_path, "package", context)

        @task(task_id="deliver")
        def deliver(**context: Any) -> dict[str, Any]:
            return _call_stage(contract_path, "deliver", context)

        @task(task_id="record")
        def record(**context: Any) -> dict[str, Any]:
            return _call_stage(contract_path, "record", context)

        @teardown
        def cleanup_staging(**context: Any) -> dict[str, Any]:
            pipeline = _pipeline(contract_path, context)
            return pipeline.cleanup()

        chain = [authorise(), extract(), disclosure(), validate(), package(), deliver(), record()]
        for upstream, downstream in itertools.pairwise(chain):
            upstream >> downstream
        if any(d.partition is not None for d in contract.datasets):
            # Key ranges read by mapped tasks (any worker) from one snapshot; extract merges the parts.
            @task(task_id="plan_partitions")
            def plan_partitions(**context: Any) -> list[dict[str, Any]]:
                parts: list[dict[str, Any]] = _call_stage(contract_path, "plan_partitions", context)["parts"]
                return parts

            @task(task_id="extract_partition")
            def extract_partition(part: dict[str, Any], **context: Any) -> dict[str, Any]:
                return _call_stage(contract_path, "extract_partition", context, part)

            planned = plan_partitions()
            parts = extract_partition.expand(part=planned)
            chain[0] >> planned
            parts >> dag.get_task("extract")
        chain[-1] >> cleanup_staging()
        chain[0] >> dag.get_task("cleanup_staging")
    return dag


def contract_dags(contracts_dir: Path) -> tuple[dict[str, DAG], list[str]]:
    """DAGs of every contract file that loads and builds, and one message (file, key, fix) per file that does not.

    Nothing one file holds can stop another's DAG: every failure, of any kind, is caught per file.
    """
    dags: dict[str, DAG] = {}
    files: dict[str, Path] = {}
    problems: list[str] = []
    for path in discover_contract_files(contracts_dir):
        try:
            contract = load_contract(path)
        except ContractExtractsError as exc:
            problems.append(str(exc))
            continue
        except Exception as exc:  # a defect, not the file's fault: still only this file is affected
            problems.append(str(ConfigError(f"the file could not be loaded ({value_free(exc)})", file=str(path),
                                            fix="run `contract-extracts check` on it and report the problem")))
            continue
        if contract.dag_id in dags:
            problems.append(str(ConfigError(f"contract {contract.contract} is also defined by {files[contract.dag_id]}",
                                            file=str(path), key="contract",
                                            fix="keep one file per contract; remove or rename the other")))
            continue
        try:
            dags[contract.dag_id] = build_contract_dag(path, contract)
            files[contract.dag_id] = path
        except Exception as exc:
            problems.append(str(ConfigError(f"no DAG could be built from it ({value_free(exc)})", file=str(path),
                                            fix="run `contract-extracts check` on it")))
    return dags, problems


def build_all(contracts_dir: Path) -> dict[str, DAG]:
    """DAGs for every valid contract file. Broken files are reported by ``broken_contracts``."""
    return contract_dags(contracts_dir)[0]


def broken_contracts(contracts_dir: Path) -> list[str]:
    """One message per contract file that does not load or build (file, key, fix)."""
    return contract_dags(contracts_dir)[1]


class InvalidContractFiles(Exception):
    """Raised at parse time by dags/contract_file_errors.py so Airflow shows an import error."""
