"""What a run may do before anything is read: validated manual params, late and repeated scheduled runs, backfills.

The decisions are unit-tested on ``run_policy.decide``; the builder's authorise task is then driven with Airflow-shaped
run objects against a real workspace (ledger, contract files) to prove what the ledger says and that nothing is
staged. The same behaviour through a real scheduler: tests/scheduler/test_real_scheduler.py.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
from airflow.utils.types import DagRunType

from airflow_glue import builder
from airflow_glue.run_policy import (
    REASON_PATTERN,
    REFERENCE_PATTERN,
    RunFacts,
    decide,
    delivered_schedule_time,
    param_schemas,
    schedule_grace,
)
from audit.ledger import Ledger
from contracts import load_contract
from core.settings import load_settings
from tests.conftest import REPO, Workspace

NIGHTLY = load_contract(REPO / "configs" / "contracts" / "C-DEMO-001.yaml")  # "0 2 * * *", not incremental
MANUAL_ONLY = load_contract(REPO / "configs" / "contracts" / "C-DEMO-002.yaml")
AT_2 = dt.datetime(2026, 12, 4, 2, 0, tzinfo=dt.UTC)
GOOD = {"delivery_reference": "REQ-2026-0142", "reason": "monthly refresh for the evaluation"}


def _incremental(tmp_path: Path) -> Any:
    data = yaml.safe_load((REPO / "configs" / "contracts" / "C-DEMO-001.yaml").read_text())
    data["incremental"] = {"column": "claim_start"}
    path = tmp_path / "C-DEMO-001.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_contract(path)


def never(_when: str) -> str | None:
    return None


# ---- manual runs ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("conf", [GOOD, {**GOOD, "delivery_reference": "a/b:c.d_e-1"}])
def test_a_manual_run_with_reference_and_reason_runs(conf: dict) -> None:
    for contract in (NIGHTLY, MANUAL_ONLY):
        assert decide(contract, RunFacts("manual", conf), delivered_for=never).action == "run"


@pytest.mark.parametrize(("conf", "fragment"), [
    ({}, "'delivery_reference' is required"),
    ({"delivery_reference": None, "reason": None}, "'reason' is required"),
    ({**GOOD, "delivery_reference": "   "}, "'delivery_reference' is required"),
    ({**GOOD, "reason": " \t "}, "'reason' is required"),
    ({**GOOD, "delivery_reference": "REQ 1; DROP"}, "'delivery_reference' is not valid"),
    ({**GOOD, "delivery_reference": "-REQ"}, "'delivery_reference' is not valid"),
    ({**GOOD, "delivery_reference": "R" * 65}, "at most 64"),
    ({**GOOD, "reason": "two\nlines"}, "'reason' is not valid"),
    ({**GOOD, "reason": "x" * 201}, "at most 200"),
    ({**GOOD, "reason": 42}, "'reason' is not valid"),
], ids=["nothing", "nulls", "blank-reference", "blank-reason", "bad-characters", "leading-dash", "too-long",
        "newline", "reason-too-long", "not-text"])
def test_a_manual_run_without_valid_reference_and_reason_is_refused(conf: dict, fragment: str) -> None:
    decision = decide(NIGHTLY, RunFacts("manual", conf), delivered_for=never)
    assert decision.action == "refuse" and fragment in decision.reason, decision
    assert "Nothing was read or delivered" in decision.reason and "Fix:" in decision.reason


def test_unknown_conf_keys_are_refused_for_every_run_type() -> None:
    """The typo `delivery_refrence` used to be dropped silently, and the run delivered."""
    conf = {"delivery_refrence": "REQ-1", "reason": "typo in the key"}
    for run_type in ("manual", "scheduled", "backfill"):
        decision = decide(NIGHTLY, RunFacts(run_type, conf, scheduled_for=AT_2, started_at=AT_2),
                          delivered_for=never)
        assert decision.action == "refuse", run_type
        assert "'delivery_refrence'" in decision.reason and "delivery_reference, reason" in decision.reason


def test_full_refresh_only_for_incremental_contracts(tmp_path: Path) -> None:
    conf = {**GOOD, "full_refresh": True}
    refused = decide(NIGHTLY, RunFacts("manual", conf), delivered_for=never)
    assert refused.action == "refuse" and "'full_refresh'" in refused.reason
    incremental = _incremental(tmp_path)
    assert "full_refresh" in param_schemas(incremental) and "full_refresh" not in param_schemas(NIGHTLY)
    assert decide(incremental, RunFacts("manual", conf), delivered_for=never).action == "run"
    bad = decide(incremental, RunFacts("manual", {**GOOD, "full_refresh": "yes"}), delivered_for=never)
    assert bad.action == "refuse" and "true or false" in bad.reason


def test_the_form_patterns_agree_with_the_policy() -> None:
    """The JSON schema the form validates with and ``decide`` accept and refuse the same strings."""
    samples = ["REQ-1", "a", "9/x:y.z_w-", "", " ", "-x", "REQ 1", "x;y", "é", "monthly refresh", "  padded  ",
               "tab\tinside", "bell\x07", "line\nbreak", "REQ-1\n", "reason\n"]
    for value in samples:
        as_reference = re.search(REFERENCE_PATTERN, value) is not None
        as_reason = re.search(REASON_PATTERN, value) is not None
        ref_ok = decide(NIGHTLY, RunFacts("manual", {**GOOD, "delivery_reference": value}), delivered_for=never)
        reason_ok = decide(NIGHTLY, RunFacts("manual", {**GOOD, "reason": value}), delivered_for=never)
        assert as_reference == (ref_ok.action == "run"), value
        assert as_reason == (reason_ok.action == "run"), value


# ---- scheduled runs ------------------------------------------------------------------------------------------


def test_an_on_time_scheduled_run_delivers() -> None:
    facts = RunFacts("scheduled", {}, scheduled_for=AT_2, started_at=AT_2 + dt.timedelta(seconds=20))
    assert decide(NIGHTLY, facts, delivered_for=never).action == "run"


def test_a_run_created_by_unpausing_for_a_past_time_is_skipped() -> None:
    """Unpausing at 15:00 makes Airflow create the 02:00 run at once: it delivers nothing and says why."""
    facts = RunFacts("scheduled", {}, scheduled_for=AT_2, started_at=AT_2 + dt.timedelta(hours=13))
    decision = decide(NIGHTLY, facts, delivered_for=never)
    assert decision.action == "skip"
    assert "started 13 h 00 min after its time" in decision.reason and "unpaused" in decision.reason


def test_a_cleared_run_runs_again_unless_its_time_was_delivered() -> None:
    cleared = RunFacts("scheduled", {}, scheduled_for=AT_2, started_at=AT_2 + dt.timedelta(hours=13), clear_number=1)
    assert decide(NIGHTLY, cleared, delivered_for=never).action == "run"
    done = decide(NIGHTLY, cleared, delivered_for=lambda when: "20261204T020000Z-0badf00d")
    assert done.action == "skip" and "already delivered (delivery 20261204T020000Z-0badf00d)" in done.reason


def test_the_grace_is_a_quarter_period_between_2_and_30_minutes() -> None:
    assert schedule_grace("0 2 * * *") == dt.timedelta(minutes=30)
    assert schedule_grace("0 * * * *") == dt.timedelta(minutes=15)
    assert schedule_grace("*/5 * * * *") == dt.timedelta(minutes=2)
    on_edge = RunFacts("scheduled", {}, scheduled_for=AT_2, started_at=AT_2 + dt.timedelta(minutes=29))
    assert decide(NIGHTLY, on_edge, delivered_for=never).action == "run"


def test_backfills_of_contracts_that_are_not_incremental_are_refused(tmp_path: Path) -> None:
    facts = RunFacts("backfill", {}, scheduled_for=None, started_at=AT_2)
    refused = decide(NIGHTLY, facts, delivered_for=never)
    assert refused.action == "refuse" and "backfill refused" in refused.reason and "not incremental" in refused.reason
    assert decide(_incremental(tmp_path), facts, delivered_for=never).action == "run"
    other = decide(NIGHTLY, RunFacts("asset_triggered", {}), delivered_for=never)
    assert other.action == "refuse" and "not supported" in other.reason


# ---- the builder's authorise task, against a real ledger ------------------------------------------------------


def _context(run_type: DagRunType, *, conf: dict | None = None, run_after: dt.datetime = AT_2,
             start: dt.datetime | None = None, clear_number: int = 0, run_id: str = "r1") -> dict:
    dag_run = SimpleNamespace(dag_id="contract_c_demo_001", run_id=run_id, run_type=run_type, run_after=run_after,
                              start_date=start or run_after, conf=conf or {}, clear_number=clear_number,
                              triggering_user_name="operator" if run_type == DagRunType.MANUAL else None)
    ti = SimpleNamespace(max_tries=0, try_number=1, hostname="worker-a")
    return {"dag_run": dag_run, "ti": ti, "params": conf or {}}


def _records(delivery_of_run: str) -> list:
    with Ledger(load_settings().ledger_url) as ledger:
        return [r for r in ledger.records() if r.delivery == delivery_of_run]


def test_a_refused_run_records_why_and_stages_nothing(workspace: Workspace) -> None:
    path = workspace.contracts_dir / "C-DEMO-001.yaml"
    context = _context(DagRunType.MANUAL, conf={"delivery_refrence": "REQ-7", "reason": "typo"}, run_id="manual__t")
    with pytest.raises(AirflowFailException, match="delivery_refrence"):
        builder._authorise(path, context)
    delivery = builder._pipeline(path, context).delivery_id
    records = _records(delivery)
    assert [r.action for r in records] == ["run_started", "blocked"]
    blocked = records[1].details_obj()
    assert blocked["stage"] == "authorise" and "unknown trigger parameter(s) 'delivery_refrence'" in blocked["reason"]
    assert not (load_settings().staging_dir / "C-DEMO-001" / delivery).exists()


def test_a_skipped_run_records_why_and_skips_the_rest(workspace: Workspace) -> None:
    path = workspace.contracts_dir / "C-DEMO-001.yaml"
    context = _context(DagRunType.SCHEDULED, start=AT_2 + dt.timedelta(hours=5), run_id="scheduled__t")
    with pytest.raises(AirflowSkipException, match="after its time"):
        builder._authorise(path, context)
    delivery = builder._pipeline(path, context).delivery_id
    records = _records(delivery)
    assert [r.action for r in records] == ["run_started", "skipped"]
    assert records[0].details_obj()["trigger"]["scheduled_for"] == AT_2.isoformat()
    assert "unpaused" in records[1].details_obj()["reason"]
    assert not (load_settings().staging_dir / "C-DEMO-001" / delivery).exists()


def test_a_delivered_schedule_time_is_found_in_the_ledger(workspace: Workspace) -> None:
    with Ledger(load_settings().ledger_url) as ledger:
        for delivery, when, delivered in (("d-1", AT_2, True), ("d-2", AT_2 + dt.timedelta(days=1), False)):
            ledger.append(actor="scheduler", action="run_started", contract="C-DEMO-001", delivery=delivery,
                          details={"trigger": {"run_type": "scheduled", "scheduled_for": when.isoformat()}})
            if delivered:
                ledger.append(actor="scheduler", action="delivered", contract="C-DEMO-001", delivery=delivery,
                              details={"sha256": "0" * 64})
        assert delivered_schedule_time(ledger, "C-DEMO-001", AT_2.isoformat()) == "d-1"
        assert delivered_schedule_time(ledger, "C-DEMO-001", (AT_2 + dt.timedelta(days=1)).isoformat()) is None
        assert delivered_schedule_time(ledger, "C-DEMO-002", AT_2.isoformat()) is None
    # A cleared run of that time: skipped, and the ledger says which delivery it was.
    path = workspace.contracts_dir / "C-DEMO-001.yaml"
    context = _context(DagRunType.SCHEDULED, start=AT_2 + dt.timedelta(hours=5), clear_number=1, run_id="scheduled__c")
    with pytest.raises(AirflowSkipException, match="already delivered"):
        builder._authorise(path, context)


def test_the_trigger_form_fields_match_docs_operators(tmp_path: Path) -> None:
    """docs/operators.md's field table names exactly the params each kind of contract gets, with their titles and
    limits."""
    text = (REPO / "docs" / "operators.md").read_text()
    table = text.split("| Field | Param | Shown for | Required | Accepted values |", 1)[1].split("\n\n", 1)[0]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table.strip().splitlines()[1:]]
    documented = {row[1].strip("`"): row for row in rows}
    incremental = _incremental(tmp_path)
    assert set(documented) == set(param_schemas(incremental))
    for contract in (NIGHTLY, MANUAL_ONLY, incremental):
        schemas = param_schemas(contract)
        for name, (title, _param, shown_for, _required, accepted) in documented.items():
            assert (name in schemas) == (shown_for == "every contract" or contract.incremental is not None), name
            if name in schemas:
                assert schemas[name]["title"] == title
                if "maxLength" in schemas[name]:
                    assert f"at most {schemas[name]['maxLength']} characters" in accepted
