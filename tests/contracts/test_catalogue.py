"""The source catalogue: its own rules, and what it forbids contracts (issue 13's bad inputs, one by one).

Every refusal names the file (where there is one), the key and the fix. The catalogue is the repository's
demo catalogue (``configs/sources/demo_claims.yaml``), varied per test.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from contracts.catalogue import (
    Catalogue,
    catalogue_file_problems,
    catalogue_key_variables,
    catalogue_problems,
    load_catalogue,
    load_catalogue_for,
    loosened,
    population_plan,
    statistics_columns,
    with_catalogue_keys,
)
from contracts.loading import contract_from_mapping
from core.errors import ConfigError
from tests.conftest import REPO

CATALOGUE_FILE = REPO / "configs" / "sources" / "demo_claims.yaml"
CATALOGUE = load_catalogue(CATALOGUE_FILE)
DEMO_1 = yaml.safe_load((REPO / "configs" / "contracts" / "C-DEMO-001.yaml").read_text())
DEMO_2 = yaml.safe_load((REPO / "configs" / "contracts" / "C-DEMO-002.yaml").read_text())


def contract(change: Callable[[dict], Any] | None = None, base: dict = DEMO_1) -> Any:
    data = copy.deepcopy(base)
    if change is not None:
        change(data)
    return contract_from_mapping(data, "C-DEMO-001.yaml")


def claimants(d: dict) -> dict:
    return d["datasets"][0]["columns"]


def catalogue(change: Callable[[dict], Any]) -> Catalogue:
    data = yaml.safe_load(CATALOGUE_FILE.read_text())
    change(data)
    return Catalogue.model_validate(data)


def problems(c: Any, cat: Catalogue = CATALOGUE) -> list[tuple[str, str, str]]:
    return [tuple(p) for p in catalogue_problems(c, cat)]


def test_the_demo_contracts_pass_their_catalogue() -> None:
    for data in (DEMO_1, DEMO_2):
        c = contract(base=data)
        assert problems(c) == []
    plan = population_plan(contract(), CATALOGUE)
    assert plan is not None and plan.to_dict() == {"entity": "claimant", "dataset": "claimants", "column": "id",
                                                   "restricted": {"payments": "claimant_id"}}


# ---- the bad inputs of issue 13: each refused with its key and its fix --------------------------------

BAD = {
    "nino-kept": (lambda d: claimants(d).update(nino={"treatment": "keep"}), "datasets[0].columns.nino",
                  "is an identifier", "pseudonymise it (entity: person, canonicalise: nino)"),
    "postcode-kept": (lambda d: claimants(d).update(postcode={"treatment": "keep"}),
                      "datasets[0].columns.postcode", "is an identifier", "unmasked"),
    "postcode-generalised": (lambda d: claimants(d).update(postcode={"treatment": "generalise", "to": "district"}),
                             "datasets[0].columns.postcode", "cannot be given treatment 'generalise'", "suppress"),
    "name-kept": (lambda d: claimants(d).update(last_name={"treatment": "keep"}), "datasets[0].columns.last_name",
                  "is an identifier", "two approvers"),
    "filter-on-undelivered-name": (lambda d: d["datasets"][0]["filter"].update(last_name={"in": ["Smith", "Jones"]}),
                                   "datasets[0].filter.last_name", "select named people", "non-identifying"),
    "filter-on-uncatalogued-column": (lambda d: d["datasets"][0]["filter"].update(shoe_size={"gt": 40}),
                                      "datasets[0].filter.shoe_size", "not in the source catalogue",
                                      "filter only on catalogued columns"),
    "uncatalogued-column": (lambda d: claimants(d).update(shoe_size={"treatment": "keep"}),
                            "datasets[0].columns.shoe_size", "not in the source catalogue", "demo-approver"),
    "uncatalogued-table": (lambda d: d["datasets"][1].update(table="benefit_history"), "datasets[1].table",
                           "not in the source catalogue", "read only catalogued tables"),
    "pseudonym-with-other-entity": (lambda d: claimants(d)["nino"].update(entity="citizen"),
                                    "datasets[0].columns.nino", "catalogued as an identifier of entity 'person'",
                                    "use entity: person, canonicalise: nino"),
    "pseudonym-with-other-canonicaliser": (lambda d: claimants(d)["nino"].update(canonicalise="text"),
                                           "datasets[0].columns.nino", "canonicaliser 'nino'", "canonicalise: nino"),
    "incremental-on-identifier": (lambda d: d.update(incremental={"column": "id"}), "incremental.column",
                                  "marks are recorded in the ledger", "not an identifier"),
    "no-population": (lambda d: d.pop("population"), "population", "names no population",
                      "entities in the catalogue of these tables: address, claimant, name, payment, person"),
    "dataset-outside-the-population": (lambda d: d.update(population={"entity": "person", "dataset": "claimants"}),
                                       "datasets[1].without_population", "does not carry entity 'person'",
                                       "without_population"),
    "exempting-a-carrier": (lambda d: d["datasets"][1].update(
        without_population="the payments of everyone are needed for the totals"),
        "datasets[1].without_population", "it cannot be exempted", "remove without_population"),
    "carrier-not-delivered": (lambda d: (d["datasets"][1]["columns"].pop("claimant_id"),
                                         d["datasets"][1]["columns"].pop("paid_on")),
                              "datasets[1].columns.claimant_id", "the release gate cannot check",
                              "pseudonymise, entity: claimant"),
    "qi-made-sensitive": (lambda d: d.update(disclosure={"quasi_identifiers": ["date_of_birth"], "k": 5,
                                                         "sensitive": ["region"]}),
                          "disclosure.sensitive", "'region' is a quasi-identifier", "remove region"),
    "table-by-identifier": (lambda d: (claimants(d).update(postcode={"treatment": "unmasked"}), d.update(
        unmasked=[{"dataset": "claimants", "column": "postcode",
                   "business_requirement": "the survey samples addresses by postcode"}],
        aggregates=[{"name": "by_postcode", "dataset": "claimants", "by": ["postcode"], "measures": ["count"]}])),
        "aggregates[0]", "cannot be grouped by it", "non-identifying"),
}


@pytest.mark.parametrize(("change", "key", "message", "fix"), BAD.values(), ids=BAD.keys())
def test_the_catalogue_refuses(change, key: str, message: str, fix: str) -> None:
    found = problems(contract(change))
    assert any(k == key and message in m and fix in f for k, m, f in found), found


def test_free_text_only_suppressed_or_unmasked() -> None:
    notes = catalogue(lambda d: d["tables"]["claimants"]["columns"].update(
        case_notes={"class": "free_text", "description": "Case worker's notes."}))
    for treatment in ({"treatment": "keep"}, {"treatment": "pseudonymise", "entity": "person"},
                      {"treatment": "generalise", "to": "mapping", "mapping": {"a": "b"}}):
        found = problems(contract(lambda d, t=treatment: claimants(d).update(case_notes=t)), notes)
        assert [(k, "free text" in m) for k, m, _ in found] == [("datasets[0].columns.case_notes", True)], found
    assert problems(contract(lambda d: claimants(d).update(case_notes={"treatment": "suppress"})), notes) == []
    unmasked = contract(lambda d: (claimants(d).update(case_notes={"treatment": "unmasked"}), d.update(unmasked=[
        {"dataset": "claimants", "column": "case_notes", "business_requirement": "the caseworker study reads them"}])))
    assert problems(unmasked, notes) == []


def test_identifiers_may_be_pseudonymised_suppressed_or_unmasked_only() -> None:
    allowed = [{"treatment": "suppress"}, {"treatment": "pseudonymise", "entity": "address",
                                           "canonicalise": "postcode"}]
    for treatment in allowed:
        assert problems(contract(lambda d, t=treatment: claimants(d).update(postcode=t))) == []
    # keep is for other, sensitive and quasi-identifiers
    assert problems(contract(lambda d: claimants(d).update(claim_end={"treatment": "keep"},
                                                           date_of_birth={"treatment": "keep"}))) == []


def test_check_lists_every_problem_not_only_the_first() -> None:
    found = problems(contract(lambda d: (claimants(d).update(nino={"treatment": "keep"},
                                                             postcode={"treatment": "keep"}),
                                         d["datasets"][0]["filter"].update(last_name={"eq": "Smith"}))))
    assert {k for k, _, _ in found} == {"datasets[0].columns.nino", "datasets[0].columns.postcode",
                                        "datasets[0].filter.last_name"}


def test_another_sources_catalogue_is_refused() -> None:
    found = problems(contract(lambda d: d["source"].update(connection="other_db")))
    assert found and found[0][0] == "source.connection"


def test_a_contract_without_a_catalogue_cannot_be_read(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_catalogue_for(contract(), tmp_path)
    text = str(info.value)
    assert str(tmp_path / "sources" / "demo_claims.yaml") in text and "source.connection" in text
    assert "has no catalogue" in text and "Fix:" in text


# ---- disclosure keys and statistics from the catalogue -------------------------------------------------


def test_every_delivered_quasi_identifier_is_a_key_variable() -> None:
    c = contract(lambda d: d.update(disclosure={"quasi_identifiers": ["sex"], "contractor_holds": ["benefit_code"],
                                                "k": 5}))
    assert catalogue_key_variables(c, CATALOGUE) == ["date_of_birth", "sex", "region"]
    widened = with_catalogue_keys(c, CATALOGUE)
    assert widened.disclosure is not None
    assert widened.disclosure.key_columns == ["sex", "date_of_birth", "region", "benefit_code"]
    assert with_catalogue_keys(contract(), CATALOGUE) == contract()  # no assessment: unchanged (check says so)
    # A suppressed quasi-identifier delivers nothing to key on.
    suppressed = contract(lambda d: (claimants(d).update(sex={"treatment": "suppress"}),
                                     d.update(disclosure={"k": 5})))
    assert catalogue_key_variables(suppressed, CATALOGUE) == ["date_of_birth", "region"]


def test_statistics_never_for_identifiers_or_free_text() -> None:
    c = contract(lambda d: claimants(d).update(postcode={"treatment": "suppress"}))
    assert statistics_columns(c.datasets[0], CATALOGUE) == ["date_of_birth", "sex", "region", "benefit_code",
                                                            "weekly_amount", "claim_start"]
    assert statistics_columns(c.datasets[1], CATALOGUE) == ["paid_on", "amount"]
    assert statistics_columns(c.datasets[0], None) is False


# ---- the catalogue's own rules ------------------------------------------------------------------------


def write_catalogue(tmp_path: Path, change: Callable[[dict], Any], name: str = "demo_claims.yaml") -> Path:
    data = yaml.safe_load(CATALOGUE_FILE.read_text())
    change(data)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_a_catalogue_lists_every_problem_with_key_and_fix(tmp_path: Path) -> None:
    def break_it(d: dict) -> None:
        columns = d["tables"]["claimants"]["columns"]
        columns["nino"].pop("entity")  # an identifier without its entity
        columns["sex"]["class"] = "secret"  # no such class
        columns["region"]["entity"] = "person"  # entity on a quasi-identifier
        columns["first_name"]["labels"] = {"A": "Anne"}  # value labels on an identifier
        columns["claim_end"]["description"] = "   "
        d["tables"]["pg_catalog.pg_authid"] = {"description": "roles", "columns": {
            "rolname": {"class": "other", "description": "role"}}}
        d["tables"]["sqlite_master"] = {"description": "schema", "columns": {
            "sql": {"class": "other", "description": "schema"}}}
        d["colour"] = "blue"
    catalogue, found = catalogue_file_problems(write_catalogue(tmp_path, break_it))
    assert catalogue is None
    text = "\n".join(str(p) for p in found)
    for fragment in ("tables.claimants.columns.nino", "'entity'", "tables.claimants.columns.sex.class",
                     "tables.claimants.columns.region", "tables.claimants.columns.first_name", "value labels",
                     "tables.claimants.columns.claim_end.description", "colour"):
        assert fragment in text, (fragment, text)
    assert all("Fix:" in str(p) and "demo_claims.yaml" in str(p) for p in found)
    # System tables are refused once the structure is valid.
    catalogue, found = catalogue_file_problems(write_catalogue(tmp_path, lambda d: (
        d["tables"].update({"pg_catalog.pg_authid": {"description": "roles", "columns": {
            "rolname": {"class": "other", "description": "role"}}}}),
        d["tables"].update({"sqlite_master": {"description": "x", "columns": {"sql": {"class": "other",
                                                                                      "description": "x"}}}}),
        d["tables"].update({"mysql.user": {"description": "x", "columns": {"user": {"class": "other",
                                                                                   "description": "x"}}}}))))
    keys = sorted(p.key or "" for p in found)
    assert keys == ["tables.mysql.user", "tables.pg_catalog.pg_authid", "tables.sqlite_master"], found
    with pytest.raises(ConfigError, match="more problem"):
        load_catalogue(tmp_path / "demo_claims.yaml")


def test_file_name_is_the_connection(tmp_path: Path) -> None:
    _, found = catalogue_file_problems(write_catalogue(tmp_path, lambda d: None, "claims.yaml"))
    assert [p.key for p in found] == ["source"] and "demo_claims.yaml" in str(found[0])


def test_content_hash_ignores_layout_and_covers_content(tmp_path: Path) -> None:
    reordered = write_catalogue(tmp_path, lambda d: d["tables"].update(
        dict(reversed(list(d["tables"].items())))))
    assert load_catalogue(reordered).content_sha256 == CATALOGUE.content_sha256
    relabelled = catalogue(lambda d: d["tables"]["claimants"]["columns"]["sex"].update(labels={"F": "Woman"}))
    assert relabelled.content_sha256 != CATALOGUE.content_sha256
    assert Catalogue.from_canonical(CATALOGUE.canonical()) == CATALOGUE


def test_what_loosens_a_class() -> None:
    before = CATALOGUE.classes()

    def reclass(column: str, value: dict) -> dict[str, dict[str, str]]:
        return catalogue(lambda d: d["tables"]["claimants"]["columns"][column].update(value)).classes()

    def only(column: str, **changes: Any) -> dict[str, dict[str, str]]:
        def change(d: dict) -> None:
            entry = d["tables"]["claimants"]["columns"][column]
            for key, value in changes.items():
                if value is None:
                    entry.pop(key, None)
                else:
                    entry[key] = value
        return catalogue(change).classes()

    assert loosened(before, only("nino", **{"class": "other", "entity": None, "canonicaliser": None}),
                    ["claimants"]) == ["claimants.nino: identifier/person/nino → other"]
    assert loosened(before, only("nino", entity="citizen"), ["claimants"]) == [
        "claimants.nino: identifier/person/nino → identifier/citizen/nino"]
    assert loosened(before, only("sex", **{"class": "sensitive"}), ["claimants"]) == [
        "claimants.sex: quasi_identifier → sensitive"]
    assert loosened(before, only("first_name", **{"class": "free_text", "entity": None, "canonicaliser": None}),
                    ["claimants"]) == ["claimants.first_name: identifier/name/text → free_text"]
    dropped = catalogue(lambda d: d["tables"]["claimants"]["columns"].pop("postcode")).classes()
    assert loosened(before, dropped, ["claimants"]) == ["claimants.postcode (identifier/address/postcode) is no "
                                                        "longer catalogued"]
    # Tightening, other tables and descriptions do not loosen.
    assert loosened(before, only("claim_end", **{"class": "quasi_identifier"}), ["claimants"]) == []
    assert loosened(before, reclass("region", {"description": "Where they live."}), ["claimants"]) == []
    assert loosened(before, catalogue(lambda d: d["tables"]["payments"]["columns"]["amount"].update(
        {"class": "other"})).classes(), ["claimants"]) == []


def test_a_table_carrying_the_entity_twice_names_its_column() -> None:
    twice = catalogue(lambda d: d["tables"]["payments"]["columns"].update(payee_id={
        "class": "identifier", "entity": "claimant", "canonicaliser": "integer", "description": "Paid to."}))
    found = problems(contract(), twice)
    assert [k for k, _, _ in found] == ["datasets[1].population_by"], found
    assert "carries entity 'claimant' in 2 columns (claimant_id, payee_id)" in found[0][1]
    named = contract(lambda d: d["datasets"][1].update(population_by="claimant_id"))
    assert problems(named, twice) == []
    plan = population_plan(named, twice)
    assert plan is not None and dict(plan.restricted) == {"payments": "claimant_id"}
    wrong = contract(lambda d: d["datasets"][1].update(population_by="amount"))
    assert "is not an identifier of entity 'claimant'" in problems(wrong, twice)[0][1]
    with pytest.raises(ConfigError, match="names no population"):
        contract(lambda d: (d.pop("population"), d["datasets"][1].update(population_by="claimant_id")))


def test_reference_data_without_the_entity_says_why_it_is_needed() -> None:
    rates = catalogue(lambda d: d["tables"].update(benefit_rates={"description": "Weekly rates.", "columns": {
        "benefit_code": {"class": "other", "description": "Benefit."},
        "rate": {"class": "other", "description": "Weekly rate.", "unit": "GBP per week"}}}))
    dataset = {"name": "rates", "table": "benefit_rates",
               "columns": {"benefit_code": {"treatment": "keep"}, "rate": {"treatment": "keep"}}}
    found = problems(contract(lambda d: d["datasets"].append(dataset)), rates)
    assert [k for k, _, _ in found] == ["datasets[2].without_population"], found
    stated = contract(lambda d: d["datasets"].append({
        **dataset, "without_population": "the weekly rates explain the amounts paid to each claimant"}))
    assert problems(stated, rates) == []
    plan = population_plan(stated, rates)
    assert plan is not None and "rates" not in plan.restricted
