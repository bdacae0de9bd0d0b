"""Failure alerts for contract DAGs: a log line always, an e-mail through Airflow's SMTP provider when set up.

An alert names the contract, the DAG run, the stage (task) and the reason, never a data value. The
reason comes from the ledger's ``blocked``/``stage_failed`` record of the delivery (those are written
value-free by the pipeline); failing that, only the exception's type name is used, never its message.

E-mail is configured with environment variables on the workers:

CONTRACT_EXTRACTS_ALERT_EMAIL       comma-separated addresses; unset = log only
CONTRACT_EXTRACTS_ALERT_SMTP_CONN   Airflow SMTP connection id (default ``smtp_default``), e.g.
                                    AIRFLOW_CONN_SMTP_DEFAULT='smtp://user:pw@mail.example:587?from_email=...'

A callback never raises: a failing alert is logged (by error type) and the task's own failure stands.
"""

from __future__ import annotations

import datetime as dt
import html
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from audit.ledger import Ledger
from core.errors import value_free
from core.settings import load_settings
from pipeline.stages import delivery_id_for

log = logging.getLogger(__name__)

ALERT_EMAIL_ENV = "CONTRACT_EXTRACTS_ALERT_EMAIL"
ALERT_SMTP_CONN_ENV = "CONTRACT_EXTRACTS_ALERT_SMTP_CONN"
_MAX_REASON = 500
_ADDRESS = re.compile(r"^[^@\s,;<>]+@[^@\s,;<>]+$")


@dataclass(frozen=True)
class Alert:
    contract: str
    dag_id: str
    run_id: str
    delivery: str | None
    stage: str
    reason: str
    try_number: int | None

    @property
    def subject(self) -> str:
        return f"[contract-extracts] {self.contract}: {self.stage} failed"

    def text(self) -> str:
        return (f"contract {self.contract} delivery {self.delivery or '?'} failed at stage {self.stage}: "
                f"{self.reason} (DAG {self.dag_id}, run {self.run_id}, try {self.try_number or '?'})")

    def html(self) -> str:
        rows = [("Contract", self.contract), ("Stage", self.stage), ("Reason", self.reason),
                ("Delivery", self.delivery or "?"), ("DAG", self.dag_id), ("Run", self.run_id),
                ("Try", str(self.try_number or "?"))]
        cells = "".join(f"<tr><th align='left'>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
        return ("<p>A contract delivery failed. Nothing further was delivered for this run; the audit ledger "
                f"records why.</p><table>{cells}</table>"
                "<p>See the Contract deliveries page and the task log in Airflow.</p>")


def _reason_from_ledger(delivery: str | None, contract: str, stage: str) -> str | None:
    """The value-free reason the pipeline recorded for this stage of this delivery, if any."""
    if not delivery:
        return None
    with Ledger(load_settings().ledger_url) as ledger:
        records = [r for r in ledger.records(delivery=delivery)
                   if r.contract == contract and r.action in ("blocked", "stage_failed")]
    for record in reversed(records):
        details = record.details_obj()
        if details.get("stage") in (stage, None):
            return str(details.get("reason") or "")[:_MAX_REASON] or None
    if records:
        return str(records[-1].details_obj().get("reason") or "")[:_MAX_REASON] or None
    return None


def build_alert(context: dict[str, Any], contract_id: str) -> Alert:
    """What went wrong, from the Airflow callback context and the ledger; never the exception's message."""
    dag_run = context.get("dag_run")
    ti = context.get("ti") or context.get("task_instance")
    dag_id = str(getattr(dag_run, "dag_id", "") or getattr(ti, "dag_id", "") or "?")
    run_id = str(getattr(dag_run, "run_id", "") or getattr(ti, "run_id", "") or "?")
    stage = str(getattr(ti, "task_id", "") or "?")
    delivery = None
    run_after = getattr(dag_run, "run_after", None) or getattr(dag_run, "start_date", None)
    if dag_run is not None and isinstance(run_after, dt.datetime):
        delivery = delivery_id_for(f"{dag_id}/{run_id}", run_after)
    reason = None
    try:
        reason = _reason_from_ledger(delivery, contract_id, stage)
    except Exception as exc:
        log.warning("alert: could not read the ledger for the reason (%s)", value_free(exc))
    if not reason:
        failure = context.get("exception")
        reason = (f"{value_free(failure)} (no ledger record; see the task log)" if isinstance(failure, BaseException)
                  else "the task failed without a ledger record (see the task log)")
    return Alert(contract=contract_id, dag_id=dag_id, run_id=run_id, delivery=delivery, stage=stage,
                 reason=reason, try_number=getattr(ti, "try_number", None))


def alert_recipients(env: dict[str, str] | None = None) -> list[str]:
    raw = (os.environ if env is None else env).get(ALERT_EMAIL_ENV, "")
    addresses = [a.strip() for a in raw.split(",") if a.strip()]
    bad = [a for a in addresses if not _ADDRESS.match(a)]
    if bad:
        log.error("alert: %s holds %d address(es) that are not e-mail addresses; ignoring them", ALERT_EMAIL_ENV,
                  len(bad))
    return [a for a in addresses if _ADDRESS.match(a)]


def send_alert_email(alert: Alert, to: list[str], conn_id: str) -> None:
    from airflow.providers.smtp.hooks.smtp import SmtpHook  # noqa: PLC0415 - deferred: mailing only, not DAG parse

    with SmtpHook(smtp_conn_id=conn_id) as hook:
        hook.send_email_smtp(to=to, subject=alert.subject, html_content=alert.html())


def notify_failure(context: dict[str, Any], contract_id: str) -> Alert | None:
    """Log the alert and e-mail it when configured. Never raises."""
    try:
        alert = build_alert(context, contract_id)
    except Exception as exc:
        log.error("ALERT contract %s: a task failed; the alert could not be built (%s)", contract_id,
                  value_free(exc))
        return None
    log.error("ALERT %s", alert.text())
    to = alert_recipients()
    if to:
        conn_id = os.environ.get(ALERT_SMTP_CONN_ENV) or "smtp_default"
        try:
            send_alert_email(alert, to, conn_id)
            log.info("alert e-mailed to %d recipient(s) through SMTP connection %s", len(to), conn_id)
        except Exception as exc:
            log.error("alert e-mail through SMTP connection %s failed (%s)", conn_id, value_free(exc))
    return alert


def failure_callback(contract_id: str) -> Callable[[dict[str, Any]], None]:
    """An ``on_failure_callback`` bound to one contract (Airflow calls it with the task context)."""

    def on_failure(context: dict[str, Any]) -> None:
        notify_failure(context, contract_id)

    on_failure.__name__ = f"alert_{re.sub(r'[^A-Za-z0-9]', '_', contract_id)}"
    return on_failure
