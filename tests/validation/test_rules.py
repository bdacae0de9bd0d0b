"""The release gate's rules are derived from the contract and the hand-over files, never from the data."""

from __future__ import annotations

from pathlib import Path

import pytest

from contracts import load_contract
from contracts.column_treatments import Generalise, Keep, Round, TopCode
from contracts.disclosure import Disclosure
from validation.model import Domain
from validation.rules import delivery_rules, source_unique_columns, treatment_domains

REPO = Path(__file__).resolve().parents[2]


def contract_1():
    return load_contract(REPO / "configs" / "contracts" / "C-DEMO-001.yaml")


def state_for(contract, **overrides) -> dict:
    datasets = []
    for ds in contract.datasets:
        columns = []
        for name, t in ds.columns.items():
            pseudonym = t.treatment == "pseudonymise"
            type_ = "string" if pseudonym else ("int32" if t.treatment == "generalise" else "string")
            columns.append({"name": name, "type": type_, "pseudonym": pseudonym, "source_not_null": True,
                            "treatment": t.treatment})
        datasets.append({"name": ds.name, "file": f"data/{ds.name}.parquet", "rows": 10, "columns": columns})
    return {"key_id": "k", "datasets": datasets, "sample": None, **overrides}


@pytest.mark.parametrize(("treatment", "type_", "expected"), [
    (Generalise(treatment="generalise", to="year"), "int32", [Domain("between", min_value=1850, max_value=2027)]),
    (Generalise(treatment="generalise", to="quarter"), "string", [Domain("regex", regex=r"^[0-9]{4}-Q[1-4]\Z")]),
    (Generalise(treatment="generalise", to="district"), "string",
     [Domain("regex", regex=r"^[A-Z]{1,2}[0-9][0-9A-Z]?\Z")]),
    (Generalise(treatment="generalise", to="mapping", mapping={"UC": "new", "JSA": "old"}, other="other"), "string",
     [Domain("in_set", values=("new", "old", "other"))]),
    (Round(treatment="round", base=100, top_code=100000), "decimal128(8, 2)",
     [Domain("multiple_of", base=100.0), Domain("between", max_value=100000.0)]),
    (TopCode(treatment="top_code", threshold=500, value=600), "int64", [Domain("between", max_value=600.0)]),
    (Keep(treatment="keep"), "string", []),
])
def test_treatment_domains(treatment, type_: str, expected: list[Domain]) -> None:
    assert treatment_domains(treatment, type_, 2026) == expected


def test_age_bands_use_the_masking_labels() -> None:
    (domain,) = treatment_domains(Generalise(treatment="generalise", to="age_band", width=10, top=90), "string", 2026)
    assert domain.kind == "in_set" and "30-39" in domain.values and "90+" in domain.values


def test_keys_references_and_leak_rules_for_the_demo_contract() -> None:
    contract = contract_1()
    state = state_for(contract)
    unique = source_unique_columns(contract, state, {"claimants": {"id", "nino"}, "payments": {"id"}})
    assert unique == {"claimants": {"id", "nino"}, "payments": set()}
    rules = delivery_rules(contract, state, None, unique=unique, run_year=2026)
    claimants, payments = rules.datasets
    by_name = {c.name: c for c in claimants.columns}
    assert by_name["id"].unique and by_name["nino"].unique and by_name["id"].leak == "exact"
    assert by_name["region"].leak == "substring" and not by_name["region"].unique
    assert by_name["date_of_birth"].domains == (Domain("between", min_value=1850, max_value=2027),)
    assert claimants.expected_rows == 10 and claimants.typed
    # claimants (the parent of entity 'claimant') is filtered: payments may legitimately reference others.
    assert rules.references == ()
    assert rules.notes and "filtered" in rules.notes[0]
    assert not {c.name: c for c in payments.columns}["claimant_id"].unique


def test_unfiltered_parent_is_referenced_and_extract_records_win() -> None:
    contract = contract_1()
    claimants = contract.datasets[0].model_copy(update={"filter": {}})
    contract = contract.model_copy(update={"datasets": [claimants, contract.datasets[1]]})
    state = state_for(contract)
    state["datasets"][0]["columns"][1]["source_unique"] = False  # nino: the extract says not unique
    unique = source_unique_columns(contract, state, {"claimants": {"id", "nino"}})
    assert unique["claimants"] == {"id"}
    rules = delivery_rules(contract, state, None, unique=unique, run_year=2026)
    (ref,) = rules.references
    assert (ref.dataset, ref.column, ref.parent_dataset, ref.parent_column) == ("payments", "claimant_id",
                                                                                 "claimants", "id")


def test_disclosure_results_change_the_rules() -> None:
    contract = contract_1().model_copy(update={"disclosure": Disclosure.model_validate({
        "quasi_identifiers": ["date_of_birth", "region"], "k": 5, "generalise": True,
        "hierarchies": {"date_of_birth": {"bands": [5, 10]}, "region": {"levels": [{"North East": "North"}]}}})})
    state = state_for(contract)
    doc = {"microdata": True, "settings": {"k": 5, "l": None},
           "datasets": [{"name": "claimants", "key": ["date_of_birth", "region"], "sensitive": [],
                         "after": {"k": 5},
                         "treatment": {"generalised": [{"column": "date_of_birth", "level": 2},
                                                       {"column": "region", "level": 1}],
                                       "suppressed_values": {"date_of_birth": 0, "region": 3}}}],
           "aggregates": []}
    rules = delivery_rules(contract, state, doc, unique={}, run_year=2026)
    by_name = {c.name: c for c in rules.datasets[0].columns}
    assert by_name["date_of_birth"].domains == (Domain("multiple_of", base=10.0),
                                                Domain("between", min_value=1850, max_value=2027))
    assert by_name["region"].domains == (Domain("in_set", values=("North",)),)
    assert by_name["date_of_birth"].not_null and not by_name["region"].not_null  # region lost 3 values
    (check,) = rules.disclosure
    assert (check.dataset, check.key, check.k) == ("claimants", ("date_of_birth", "region"), 5)


def test_aggregate_rules() -> None:
    contract = contract_1()
    doc = {"microdata": False, "datasets": [], "aggregates": [{
        "name": "t", "by": ["region"], "rows": 4, "rounding": 5, "threshold": 10, "margins": True,
        "grossed": {"by": "inverse sampling fraction", "factor": 4.0},
        "schema": [{"name": "region", "type": "string"}, {"name": "total_over", "type": "string"},
                   {"name": "count", "type": "int64"}, {"name": "suppressed", "type": "bool"}]}]}
    rules = delivery_rules(contract, state_for(contract), doc, unique={}, run_year=2026)
    (table,) = rules.datasets  # microdata: false → no microdata rules
    count = {c.name: c for c in table.columns}["count"]
    assert count.domains == (Domain("multiple_of", base=5.0), Domain("between", min_value=40))
    assert [t.dataset for t in rules.tables] == ["t"] and rules.references == ()
