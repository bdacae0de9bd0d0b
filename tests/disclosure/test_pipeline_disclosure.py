"""Disclosure control end to end through the real Pipeline (SQLite source, no Airflow).

A contract whose raw output is not k-anonymous is treated and delivered with a report; one that
cannot be treated within its ceiling is blocked and nothing reaches the drop folder; a leaked
identifier blocks at the release gate; aggregate-only contracts deliver safe tables.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
import uuid
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
import yaml
from pydantic import model_serializer, model_validator
from sqlalchemy.engine import make_url

from audit.ledger import Ledger
from contracts.disclosure import Aggregate, check_disclosure
from contracts.model import Contract
from core.errors import ValidationFailed
from core.settings import load_settings
from delivery.verify import decrypt_package
from demo.synthetic import write_demo_source
from disclosure.report import codebook_lines, column_notes
from disclosure.result import DisclosureResult
from disclosure.risk import build_classes, measure
from disclosure.treatment import DisclosureBlocked
from pipeline.stages import STAGES, Pipeline, RunContext
from tests.authorisation.helpers import approve_for_tests, demo_catalogue, write_catalogue
from tests.conftest import Workspace

PEOPLE = 1500
CONTRACT = "C-DEMO-002"  # claimants: nino (pseudonym), date_of_birth (year), region, benefit_code


@pytest.fixture
def source(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'claims.sqlite'}"
    write_demo_source(url, n_people=PEOPLE)
    return url


def rewrite(workspace: Workspace, change) -> None:
    path = workspace.contracts_dir / f"{CONTRACT}.yaml"
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def pipeline(workspace: Workspace, source: str) -> Pipeline:
    path = workspace.contracts_dir / f"{CONTRACT}.yaml"
    approve_for_tests(workspace.config_dir, workspace.home, [path])
    ctx = RunContext(contract_path=path, settings=load_settings(), actor="pytest", run_key=f"test/{uuid.uuid4()}",
                     run_after=dt.datetime.now(dt.UTC), resolve_connection=lambda _c: make_url(source),
                     trigger={"system": "pytest"})
    return Pipeline(ctx)


def records(delivery: str) -> list[tuple[str, dict]]:
    ledger = Ledger(load_settings().ledger_url)
    try:
        return [(r.action, r.details_obj()) for r in ledger.records(delivery=delivery)]
    finally:
        ledger.close()


def drop_files(workspace: Workspace) -> list[Path]:
    drop = workspace.home / "drop"
    return [p for p in drop.rglob("*") if p.is_file()] if drop.exists() else []


def source_ninos(url: str) -> set[str]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        values = {row[0].replace(" ", "").upper() for row in conn.execute(sa.text("SELECT nino FROM claimants"))}
    engine.dispose()
    return values


DISCLOSURE = {"quasi_identifiers": ["date_of_birth", "region"], "k": 5, "sensitive": ["benefit_code"],
              "generalise": True, "hierarchies": {"date_of_birth": {"bands": [5, 10, 20]}}}


def test_stage_order() -> None:
    assert STAGES.index("disclosure") == STAGES.index("extract") + 1 == STAGES.index("validate") - 1


def test_not_k_anonymous_output_is_treated_and_delivered_with_a_report(workspace: Workspace, source: str,
                                                                       tmp_path: Path) -> None:
    rewrite(workspace, lambda d: d.update(disclosure=DISCLOSURE))
    run = pipeline(workspace, source)
    result = run.run_all()
    package = workspace.home / "drop" / "borealis-analytics" / result["package"]["package"]
    assert package.exists() and not run.staging.exists()

    out = tmp_path / "received"
    decrypt_package(package, identity=workspace.identities / "borealis-analyst.txt", out_dir=out,
                    sender_key=workspace.keys["public"])
    delivered = out / "data" / "claimants.parquet"
    after = measure(build_classes(delivered, ["date_of_birth", "region"]), 5)
    assert after.records == PEOPLE and after.k_anonymity >= 5 and after.records_below_k == 0
    years = pq.read_table(delivered).column("date_of_birth").drop_null().to_pylist()
    assert all(y % 5 == 0 for y in years), "date of birth was coarsened to 5-year bands (or more)"

    actions = records(run.delivery_id)
    assert [a for a, _ in actions] == ["run_started", "authorised", "extract_done", "disclosure_assessed",
                                       "validation_passed", "delivery_intent", "delivered", "run_completed",
                                       "staging_removed"]
    assessed = dict(actions)["disclosure_assessed"]
    (ds,) = assessed["datasets"]
    assert ds["k_anonymity_before"] < 5 <= ds["k_anonymity_after"]
    assert ds["records_below_k_before"] > 0 and ds["records_below_k_after"] == 0
    assert ds["generalised"] and ds["generalised"][0]["column"] == "date_of_birth"

    # The operator's report: outside staging, private, with the disclosure summary, and no data values.
    folder = workspace.home / "reports" / CONTRACT / run.delivery_id
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    assert {"index.html", "claimants.html", "validation.json", "disclosure.json"} <= {p.name for p in folder.iterdir()}
    doc = json.loads((folder / "disclosure.json").read_text())
    assert doc["datasets"][0]["after"]["records_below_k"] == 0
    validation = json.loads((folder / "validation.json").read_text())
    checked = {e["expectation"] for d in validation["datasets"] for e in d["expectations"]}
    assert {"expect_disclosure_threshold_to_hold", "expect_column_values_to_not_contain_source_identifiers",
            "expect_column_values_to_be_unique", "expect_column_values_to_be_multiples_of"} <= checked
    raw = source_ninos(source)
    for page in folder.iterdir():
        text = page.read_text().upper()
        assert not any(n in text for n in raw), page.name

    # What the codebook and manifest will say (render_codebook belongs to the package stage).
    lines = "\n".join(codebook_lines(DisclosureResult.from_dict(doc)))
    assert "coarsened to bands of width" in lines and "k" in lines
    notes = column_notes(DisclosureResult.from_dict(doc), "claimants")
    assert "date_of_birth" in notes


def test_without_a_disclosure_block_the_risk_report_names_the_unassessed_quasi_identifiers(
        workspace: Workspace, source: str, tmp_path: Path) -> None:
    """The demo catalogue classes date_of_birth and region quasi-identifiers; a contract without ``disclosure:``
    delivers them as it asks, and the manifest and the operator's report say they were not assessed."""
    rewrite(workspace, lambda d: d.pop("disclosure", None))
    run = pipeline(workspace, source)
    result = run.run_all()
    package = workspace.home / "drop" / "borealis-analytics" / result["package"]["package"]
    out = tmp_path / "received"
    decrypt_package(package, identity=workspace.identities / "borealis-analyst.txt", out_dir=out,
                    sender_key=workspace.keys["public"])
    disclosure = json.loads((out / "manifest.json").read_text())["disclosure"]
    (unassessed,) = disclosure["risk_report"]["not_assessed"]
    assert unassessed["name"] == "claimants"
    assert "no 'disclosure:' block" in unassessed["reason"]
    assert "date_of_birth" in unassessed["reason"] and "region" in unassessed["reason"]
    report = (workspace.home / "reports" / CONTRACT / run.delivery_id / "index.html").read_text()
    assert "Not assessed" in report and "without a risk assessment" in report


def test_untreatable_output_is_blocked_and_nothing_is_delivered(workspace: Workspace, source: str) -> None:
    rewrite(workspace, lambda d: d.update(disclosure={"quasi_identifiers": ["date_of_birth", "region"],
                                                      "contractor_holds": ["benefit_code"], "k": 10,
                                                      "max_suppressed": 0.05}))
    run = pipeline(workspace, source)
    with pytest.raises(DisclosureBlocked) as raised:
        run.run_all()
    message = str(raised.value)
    assert "claimants" in message and "ceiling" in message and "date_of_birth" in message
    assert not any(n in message.upper() for n in source_ninos(source))
    actions = records(run.delivery_id)
    names = [a for a, _ in actions]
    assert names[-3:] == ["disclosure_assessed", "blocked", "staging_removed"]
    blocked = dict(actions)["blocked"]
    assert blocked["stage"] == "disclosure" and "ceiling" in blocked["reason"]
    report = dict(actions)["disclosure_assessed"]["blocked"]
    assert report["suppression_needed_share"] > 0.05
    assert {d["column"] for d in report["drivers"]} == {"date_of_birth", "region", "benefit_code"}
    assert "delivered" not in names and "validation_passed" not in names
    assert drop_files(workspace) == []
    assert not run.staging.exists()
    assert (workspace.home / "reports" / CONTRACT / run.delivery_id / "disclosure.json").exists()


def test_a_leaked_identifier_blocks_at_the_release_gate(workspace: Workspace, source: str) -> None:
    # The data owner got postcode wrong ('other'), so the contract may keep it; the contract still names it as an
    # identifier to search for, and the gate finds the raw postcodes.
    catalogue = demo_catalogue()
    catalogue["tables"]["claimants"]["columns"]["postcode"] = {"class": "other", "description": "Postcode."}
    write_catalogue(workspace.config_dir, catalogue)

    def leak(d: dict) -> None:
        d["datasets"][0]["columns"]["postcode"] = {"treatment": "keep"}
        # Catalogued quasi-identifiers (date_of_birth, region) are key variables: the assessment must hold too.
        d["disclosure"] = {**DISCLOSURE, "source_identifiers": {"claimants": ["postcode"]}}

    rewrite(workspace, leak)
    run = pipeline(workspace, source)
    with pytest.raises(ValidationFailed) as raised:
        run.run_all()
    assert "expect_column_values_to_not_contain_source_identifiers(postcode)" in str(raised.value)
    names = [a for a, _ in records(run.delivery_id)]
    assert "validation_failed" in names and "blocked" in names and "delivered" not in names
    assert drop_files(workspace) == []


# ---- aggregates (the Contract field comes with the model diff; a subclass stands in for it here) --------


class ContractWithOutputs(Contract):
    aggregates: list[Aggregate] | None = None
    microdata: bool | None = None

    @model_validator(mode="after")
    def _outputs(self) -> ContractWithOutputs:
        check_disclosure(self)
        return self

    @model_serializer(mode="wrap")
    def _serialise(self, handler: Any) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if not (k in ("aggregates", "microdata") and v is None)}


@pytest.fixture
def outputs_model(monkeypatch: pytest.MonkeyPatch) -> None:
    if "aggregates" not in Contract.model_fields:
        monkeypatch.setattr("contracts.loading.Contract", ContractWithOutputs)


def test_aggregates_only(workspace: Workspace, source: str, outputs_model: None) -> None:
    rewrite(workspace, lambda d: d.update(microdata=False, aggregates=[
        {"name": "claimants_by_region", "dataset": "claimants", "by": ["region", "benefit_code"],
         "measures": ["count"], "threshold": 10, "rounding": 5}]))
    run = pipeline(workspace, source)
    try:
        for stage in ("authorise", "extract", "disclosure", "validate"):
            getattr(run, stage)()
        doc = json.loads((run.staging / "disclosure.json").read_text())
        assert doc["microdata"] is False and doc["microdata_removed"] == ["claimants"]
        assert not (run.staging / "data" / "claimants.parquet").exists()
        table = pq.read_table(run.staging / "data" / "claimants_by_region.parquet").to_pylist()
        assert table and all(r["count"] is None or (r["count"] % 5 == 0 and r["count"] >= 10) for r in table)
        (summary,) = doc["aggregates"]
        assert summary["file"] == "data/claimants_by_region.parquet" and summary["rows"] == len(table)
        validation = json.loads((run.staging / "validation.json").read_text())
        assert validation["success"] and [d["dataset"] for d in validation["datasets"]] == ["claimants_by_region"]
        checked = {e["expectation"] for e in validation["datasets"][0]["expectations"]}
        assert "expect_table_cells_not_recoverable" in checked
        assert "aggregate tables only" in "\n".join(codebook_lines(DisclosureResult.from_dict(doc)))
        names = [a for a, _ in records(run.delivery_id)]
        assert names[-2:] == ["disclosure_assessed", "validation_passed"]
    finally:
        run.cleanup()
