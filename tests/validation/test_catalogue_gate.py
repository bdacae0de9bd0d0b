"""The release gate's catalogue-driven checks, proven by breaking the pipeline and leaking on purpose.

Each test runs a real delivery through ``Pipeline`` with one defence knocked out (the population semi-join,
the statistics switch, the identifier draw) or with the source itself corrupted (a raw identifier copied into
an attribute column), and expects the gate to block it: ``ValidationFailed``, a ``blocked`` ledger record at
``validate``, nothing in the drop folder, staging gone.
"""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml
from sqlalchemy.engine import make_url

import masking.engine
import pipeline.stages
import validation.source_facts
from audit.opening import open_ledger
from contracts.catalogue import Catalogue, load_catalogue, population_plan
from contracts.loading import load_contract
from core.errors import ValidationFailed
from core.settings import load_settings
from demo.synthetic import write_demo_source
from pipeline.stages import Pipeline, RunContext
from tests.authorisation.helpers import approve_for_tests, write_catalogue
from tests.conftest import Workspace
from validation.leakage import IdentifierSample
from validation.rules import delivery_rules

PEOPLE = 200


@pytest.fixture
def source(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'claims.sqlite'}"
    write_demo_source(url, n_people=PEOPLE)
    return url


def run(workspace: Workspace, contract: str, url: str) -> Pipeline:
    path = workspace.contracts_dir / f"{contract}.yaml"
    approve_for_tests(workspace.config_dir, workspace.home, [path])
    return Pipeline(RunContext(contract_path=path, settings=load_settings(), actor="pytest",
                               run_key=f"test/{uuid.uuid4()}", run_after=dt.datetime.now(dt.UTC),
                               resolve_connection=lambda _c: make_url(url), trigger={"system": "pytest"}))


def assert_blocked_at_validate(workspace: Workspace, pipeline: Pipeline, expectation: str) -> None:
    with pytest.raises(ValidationFailed) as raised:
        pipeline.run_all()
    assert expectation in str(raised.value), str(raised.value)
    with open_ledger() as ledger:
        records = [(r.action, r.details_obj()) for r in ledger.records(delivery=pipeline.delivery_id)]
    actions = [a for a, _ in records]
    assert "validation_failed" in actions and "delivered" not in actions
    blocked = [d for a, d in records if a == "blocked"]
    assert blocked and blocked[-1]["stage"] == "validate" and expectation in blocked[-1]["reason"]
    drop = workspace.home / "drop"
    assert not drop.exists() or not [p for p in drop.rglob("*") if p.is_file()]
    assert not pipeline.staging.exists()


def test_without_the_semi_join_the_gate_finds_rows_outside_the_population(
        workspace: Workspace, source: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(masking.engine, "population_clauses", lambda *_args: {})
    assert_blocked_at_validate(workspace, run(workspace, "C-DEMO-001", source),
                               "expect_column_values_to_be_in_population(claimant_id)")


def test_statistics_of_identifier_columns_block_the_delivery(workspace: Workspace, source: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline.stages, "statistics_columns", lambda *_args: True)
    assert_blocked_at_validate(workspace, run(workspace, "C-DEMO-002", source),
                               "expect_column_parquet_statistics_to_be_absent(nino)")


def test_a_leak_check_that_drew_nothing_does_not_pass(workspace: Workspace, source: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(validation.source_facts, "draw_identifiers",
                        lambda *_args, **_kwargs: IdentifierSample.from_values([]))
    assert_blocked_at_validate(workspace, run(workspace, "C-DEMO-002", source),
                               "expect_source_identifiers_to_be_drawn")


def test_an_undelivered_identifier_copied_into_an_attribute_is_found(workspace: Workspace, source: str) -> None:
    # C-DEMO-002 never delivers names, but the catalogue lists them: the gate searches for them anyway.
    engine = sa.create_engine(source)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE claimants SET region = last_name WHERE id % 50 = 0")
    engine.dispose()
    assert_blocked_at_validate(workspace, run(workspace, "C-DEMO-002", source),
                               "expect_column_values_to_not_contain_source_identifiers(region)")


def test_a_numeric_identifier_kept_in_a_number_column_is_found(workspace: Workspace, tmp_path: Path) -> None:
    # A source of its own: customer numbers (9 digits) are identifiers; one was copied into the score column.
    url = f"sqlite:///{tmp_path / 'crm.sqlite'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE customers (id INTEGER PRIMARY KEY, score INTEGER NOT NULL)")
        conn.exec_driver_sql("INSERT INTO customers VALUES " + ", ".join(
            f"({900_000_000 + i}, {i % 7})" for i in range(100)))
        conn.exec_driver_sql("UPDATE customers SET score = id WHERE id = 900000042")
    engine.dispose()
    write_catalogue(workspace.config_dir, {
        "source": "crm", "title": "Customers", "owner": "test-iam",
        "tables": {"customers": {"description": "Customers.", "columns": {
            "id": {"class": "identifier", "entity": "customer", "canonicaliser": "integer",
                   "description": "Customer number."},
            "score": {"class": "other", "description": "Satisfaction score."}}}}})
    data = yaml.safe_load((workspace.contracts_dir / "C-DEMO-002.yaml").read_text())
    data.update(contract="C-CRM-1", source={"connection": "crm"}, population={"entity": "customer",
                                                                               "dataset": "customers"},
                datasets=[{"name": "customers", "table": "customers", "columns": {
                    "id": {"treatment": "pseudonymise", "entity": "customer", "canonicalise": "integer"},
                    "score": {"treatment": "keep"}}}])
    (workspace.contracts_dir / "C-CRM-1.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    assert_blocked_at_validate(workspace, run(workspace, "C-CRM-1", url),
                               "expect_column_values_to_not_contain_source_identifiers(score)")


# ---- the rules, from the contract and the catalogue alone ------------------------------------------------


def test_rules_derived_from_the_catalogue(workspace: Workspace) -> None:
    contract = load_contract(workspace.contracts_dir / "C-DEMO-001.yaml")
    catalogue: Catalogue = load_catalogue(workspace.config_dir / "sources" / "demo_claims.yaml")
    state = {"datasets": [
        {"name": "claimants", "rows": 10, "columns": [
            {"name": n, "type": "string" if n in ("nino", "id", "sex", "region", "benefit_code") else "int32",
             "pseudonym": n in ("id", "nino")} for n in contract.dataset("claimants").columns]},
        {"name": "payments", "rows": 30, "columns": [
            {"name": n, "type": "string" if n == "claimant_id" else "date32[day]", "pseudonym": n == "claimant_id"}
            for n in contract.dataset("payments").columns]}]}
    rules = delivery_rules(contract, state, None, unique={}, run_year=2026, catalogue=catalogue,
                           population=population_plan(contract, catalogue))
    assert [(r.dataset, r.column, r.parent_dataset, r.parent_column) for r in rules.population] == [
        ("payments", "claimant_id", "claimants", "id")]
    assert [(s.dataset, s.column) for s in rules.statistics] == [("claimants", "id"), ("claimants", "nino"),
                                                                 ("payments", "claimant_id")]
    assert rules.leak_draw is not None and rules.leak_draw.identifier_columns == 7
    assert rules.leak_draw.delivered_rows == 40
    leaks = {(d.dataset, c.name): c.leak for d in rules.datasets for c in d.columns}
    assert leaks[("claimants", "date_of_birth")] == "exact" and leaks[("payments", "paid_on")] == "exact"
    assert leaks[("claimants", "region")] == "substring" and leaks[("claimants", "nino")] == "exact"


def test_only_identifiers_that_could_be_a_number_make_number_columns_searched() -> None:
    assert not IdentifierSample.from_values(["AB123456C", "Smith", "SW1A 1AA"]).could_be_rendered
    assert IdentifierSample.from_values(["900000042"]).could_be_rendered
    assert IdentifierSample.from_values(["None"]).could_be_rendered  # how pandas renders a missing object
    assert not IdentifierSample.from_values([]).could_be_rendered
