"""What one Airflow run of a contract DAG may do, decided before anything is read (docs/operators.md).

One operator action gives at most one delivery:

- **manual** runs deliver, once their trigger parameters pass: a delivery reference and a reason, both
  required and non-blank; ``full_refresh`` only for incremental contracts; any other key is refused.
- **scheduled** runs deliver only when they start on time (within ``schedule_grace`` of the time the schedule
  fired) and that time was not delivered already. Unpausing a DAG makes Airflow create a run for the most recent
  past schedule time at once (``catchup=False`` still does this); such a run, like one delayed by a scheduler
  outage, is *skipped*: it records why in the ledger and delivers nothing. A run an operator cleared on purpose
  (``clear_number`` > 0) runs again, unless its time was delivered.
- **backfill** runs are refused for contracts that are not incremental (every run would deliver the whole
  extract again); for incremental contracts each delivers the rows changed since the previous delivery.
- any other run type (asset-triggered, …) is refused.

Plain Python (no Airflow import): the builder turns Airflow's run into ``RunFacts`` and acts on the ``Decision``.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from croniter import croniter

from audit.ledger import Ledger
from contracts.model import Contract

REFERENCE_MAX, REASON_MAX = 64, 200
# A ticket or request id: starts with a letter or digit, then letters, digits and . _ / : -
# (``(?!\n)``: Python's ``$`` also matches before a final newline; JavaScript's, in the form, never does.)
REFERENCE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._/:-]*$(?!\n)"
# Printable text on one line with at least one character that is not a space.
REASON_PATTERN = r"^[^\x00-\x1f\x7f]*[^\x00-\x20\x7f][^\x00-\x1f\x7f]*$(?!\n)"
MIN_GRACE, MAX_GRACE = dt.timedelta(minutes=2), dt.timedelta(minutes=30)

RUN_TYPES = ("manual", "scheduled", "backfill")


def param_schemas(contract: Contract) -> dict[str, dict[str, Any]]:
    """The JSON schema of every trigger-form field of this contract's DAG (Airflow ``Param``s), in form order.

    A DAG with a schedule must accept runs without parameters (Airflow validates every run's params, the
    scheduler's too), so there the reference and reason also accept null and ``decide`` refuses a manual run
    without them; a manual-only DAG requires them in the form itself.
    """
    text = "string" if contract.schedule is None else ["null", "string"]
    schemas: dict[str, dict[str, Any]] = {
        "delivery_reference": {
            "type": text, "minLength": 1, "maxLength": REFERENCE_MAX, "pattern": REFERENCE_PATTERN,
            "title": "Delivery reference (required)",
            "description": "Ticket or request id of this delivery, e.g. REQ-2026-0142: a letter or digit, then "
                           f"letters, digits and . _ / : - (at most {REFERENCE_MAX}). Recorded in the audit ledger.",
        },
        "reason": {
            "type": text, "minLength": 1, "maxLength": REASON_MAX, "pattern": REASON_PATTERN,
            "title": "Reason (required)",
            "description": f"Why this delivery is made, one line of at most {REASON_MAX} characters. Recorded in "
                           "the audit ledger: never write personal data here.",
        },
    }
    if contract.incremental is not None:
        schemas["full_refresh"] = {
            "type": "boolean",
            "title": "Full refresh",
            "description": "Send the whole current extract instead of the rows changed since the last delivery. "
                           "Recorded in the audit ledger.",
        }
    return schemas


def param_defaults(contract: Contract) -> dict[str, Any]:
    """Defaults of the fields: none for a manual-only DAG's required fields (the form insists on them)."""
    defaults: dict[str, Any] = {}
    if contract.schedule is not None:
        defaults.update(delivery_reference=None, reason=None)
    if contract.incremental is not None:
        defaults["full_refresh"] = False
    return defaults


def schedule_grace(schedule: str | None, *, now: dt.datetime | None = None) -> dt.timedelta:
    """How late a scheduled run may start and still deliver: a quarter of the schedule's period, 2 to 30 minutes."""
    if not schedule:
        return MIN_GRACE
    base = now or dt.datetime.now(dt.UTC)
    it = croniter(schedule, base)
    first = it.get_next(dt.datetime)
    period: dt.timedelta = it.get_next(dt.datetime) - first
    return min(MAX_GRACE, max(MIN_GRACE, period / 4))


@dataclass(frozen=True)
class RunFacts:
    """What Airflow says about the run (values from the trigger form or the REST call, untrusted)."""

    run_type: str
    conf: Mapping[str, Any]
    scheduled_for: dt.datetime | None = None  # scheduled runs: the time the schedule fired for (run_after)
    started_at: dt.datetime | None = None  # when the DAG run started
    clear_number: int = 0  # how often an operator cleared the run


@dataclass(frozen=True)
class Decision:
    action: Literal["run", "skip", "refuse"]
    reason: str = ""


def _problems_of_manual(conf: Mapping[str, Any], contract: Contract) -> list[str]:
    problems = []
    for name, pattern, limit, what in (
            ("delivery_reference", REFERENCE_PATTERN, REFERENCE_MAX, "a ticket or request id such as REQ-2026-0142"),
            ("reason", REASON_PATTERN, REASON_MAX, "one line saying why")):
        value = conf.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            problems.append(f"'{name}' is required for a manual delivery ({what})")
        elif not isinstance(value, str) or len(value) > limit or not re.fullmatch(pattern, value):
            problems.append(f"'{name}' is not valid: {what}, at most {limit} characters"
                            + (", letters, digits and . _ / : -" if name == "delivery_reference" else ""))
    full = conf.get("full_refresh")
    if contract.incremental is not None and full is not None and not isinstance(full, bool):
        problems.append("'full_refresh' must be true or false")
    return problems


def decide(contract: Contract, facts: RunFacts, *, delivered_for: Callable[[str], str | None],
           now: dt.datetime | None = None) -> Decision:
    """Run, skip (deliver nothing, say why) or refuse (blocked, say why) this run of ``contract``.

    ``delivered_for(scheduled_for_iso)`` names the delivery that already delivered that schedule time, if any.
    """
    allowed = set(param_schemas(contract))
    unknown = sorted(str(k) for k in facts.conf if k not in allowed)
    if unknown:
        shown = ", ".join(repr(k[:40]) for k in unknown[:5])
        return Decision("refuse", f"unknown trigger parameter(s) {shown}; this contract's DAG takes only "
                                  f"{', '.join(sorted(allowed))}. Nothing was read or delivered. Fix: correct the "
                                  "name(s) and trigger again")
    if facts.run_type == "manual":
        problems = _problems_of_manual(facts.conf, contract)
        if problems:
            return Decision("refuse", "; ".join(problems) + ". Nothing was read or delivered. Fix: trigger again "
                                                             "with a delivery reference and a reason")
        return Decision("run")
    if facts.run_type == "backfill":
        if contract.incremental is None:
            return Decision("refuse", f"backfill refused: contract {contract.contract} is not incremental, so every "
                                      "backfill run would deliver the whole current extract again. Nothing was read "
                                      "or delivered. Fix: trigger one manual delivery instead")
        return Decision("run")
    if facts.run_type != "scheduled":
        return Decision("refuse", f"runs of type {facts.run_type[:40]!r} are not supported for contract deliveries; "
                                  "nothing was read or delivered. Fix: trigger a manual delivery")
    if facts.scheduled_for is None:
        return Decision("refuse", "a scheduled run without its schedule time; nothing was read or delivered")
    when = facts.scheduled_for.astimezone(dt.UTC)
    earlier = delivered_for(when.isoformat())
    if earlier is not None:
        return Decision("skip", f"the schedule time {when.isoformat()} was already delivered (delivery {earlier}); "
                                "nothing is delivered twice. Trigger a manual delivery if another one is wanted")
    grace = schedule_grace(contract.schedule, now=when)
    started = (facts.started_at or now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    late = started - when
    if facts.clear_number == 0 and late > grace:
        hours, minutes = divmod(int(late.total_seconds() // 60), 60)
        lateness = f"{hours} h {minutes:02d} min" if hours else f"{minutes} min"
        return Decision("skip", f"this scheduled run for {when.isoformat()} started {lateness} after its "
                                f"time (more than the {int(grace.total_seconds() // 60)} minutes allowed): Airflow "
                                "creates such a run when a DAG is unpaused or after a scheduler outage, and it "
                                "delivers nothing. Trigger a manual delivery if the data is wanted now")
    return Decision("run")


def delivered_schedule_time(ledger: Ledger, contract: str, scheduled_for: str) -> str | None:
    """The delivery that already delivered this contract's schedule time ``scheduled_for`` (UTC ISO), if any.

    Scheduled runs record the time they ran for as ``trigger.scheduled_for`` in their ``run_started`` record.
    """
    for started in ledger.records(contract=contract, action="run_started"):
        trigger = started.details_obj().get("trigger")
        if not (isinstance(trigger, dict) and trigger.get("scheduled_for") == scheduled_for and started.delivery):
            continue
        if any(r.contract == contract for r in ledger.records(delivery=started.delivery, action="delivered")):
            return started.delivery
    return None
