"""Contract validation of treatments: nonsense is refused with the file, the key and the fix.

Options that do not fit together are refused when the file loads (the strict model); problems across
columns (entities, unmasked, sample) by ``check_contract``, which the extract stage runs (and the contract
model runs too: ``contracts.column_treatments.check_treatments``); problems that need the source's types
when the extract is planned. What a column's class allows (free text, identifiers) is the source
catalogue's: tests/contracts/test_catalogue.py.
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Callable

import pyarrow as pa
import pytest

from contracts.column_treatments import (
    Generalise,
    Keep,
    Pseudonymise,
    Sample,
    Unmasked,
    check_treatments,
    treatment_problems,
)
from contracts.loading import contract_from_mapping, parse_yaml
from core.errors import ContractError
from masking.column_plans import check_contract, plan_contract
from tests.conftest import REPO

FILE = "configs/contracts/C-DEMO-001.yaml"
DEMO = parse_yaml((REPO / FILE).read_text(encoding="utf-8"), FILE)


def demo(change: Callable[[dict], None] | None = None) -> dict:
    data = copy.deepcopy(DEMO)
    if change:
        change(data)
    return data


def claimants(data: dict) -> dict:
    return data["datasets"][0]["columns"]


def payments(data: dict) -> dict:
    return data["datasets"][1]["columns"]


def test_demo_contracts_have_no_treatment_problems() -> None:
    for path in sorted((REPO / "configs" / "contracts").glob("C-DEMO-*.yaml")):
        contract = contract_from_mapping(parse_yaml(path.read_text(encoding="utf-8"), str(path)), str(path))
        assert treatment_problems(contract) == []
        check_contract(contract, str(path))


# ---- refused when the file loads ---------------------------------------------------------------

MODEL_ERRORS = {
    "unknown-level": (lambda d: claimants(d)["date_of_birth"].update(to="decade"),
                      "datasets[0].columns.date_of_birth.to"),
    "missing-entity": (lambda d: claimants(d)["nino"].pop("entity"), "required key is missing"),
    "date-shift-without-entity": (lambda d: claimants(d).update(claim_start={"treatment": "date_shift"}),
                                  "datasets[0].columns.claim_start.entity"),
    "band-without-edges": (lambda d: claimants(d).update(weekly_amount={"treatment": "generalise", "to": "band"}),
                           "needs 'edges'"),
    "edges-not-increasing": (lambda d: claimants(d).update(weekly_amount={"treatment": "generalise", "to": "band",
                                                                          "edges": [0, 100, 50]}),
                             "strictly increasing"),
    "mapping-without-table": (lambda d: claimants(d).update(benefit_code={"treatment": "generalise",
                                                                          "to": "mapping"}), "needs 'mapping'"),
    "edges-on-year": (lambda d: claimants(d)["date_of_birth"].update(edges=[1, 2]), "takes no 'edges'"),
    "age-band-edges-and-width": (lambda d: claimants(d).update(date_of_birth={
        "treatment": "generalise", "to": "age_band", "edges": [16, 65], "width": 5}), "not both"),
    "round-without-base": (lambda d: claimants(d).update(weekly_amount={"treatment": "round"}),
                           "datasets[0].columns.weekly_amount.base"),
    "round-negative-base": (lambda d: claimants(d).update(weekly_amount={"treatment": "round", "base": -5}),
                            "datasets[0].columns.weekly_amount.base"),
    "bottom-above-top": (lambda d: claimants(d).update(weekly_amount={"treatment": "round", "base": 1,
                                                                      "top_code": 10, "bottom_code": 20}),
                         "'bottom_code' is above 'top_code'"),
    "date-shift-too-far": (lambda d: claimants(d).update(claim_start={"treatment": "date_shift", "entity": "person",
                                                                      "max_days": 1000}),
                           "datasets[0].columns.claim_start.max_days"),
    "sample-without-size": (lambda d: d.update(sample={"entity": "claimant"}), "'fraction', 'max_records'"),
    "sample-fraction-above-one": (lambda d: d.update(sample={"entity": "claimant", "fraction": 1.5}),
                                  "sample.fraction"),
    "unknown-option": (lambda d: claimants(d)["nino"].update(salt="x"), "unknown key 'salt'"),
    # No contract key switches a catalogued class off (or on): the data owner decides, in the catalogue.
    "free-text-switched-off": (lambda d: claimants(d).update(last_name={"treatment": "keep", "free_text": False}),
                               "decided by the source catalogue"),
    "identifier-switched-off": (lambda d: claimants(d)["sex"].update(quasi_identifier=False),
                                "decided by the source catalogue"),
}


@pytest.mark.parametrize(("change", "fragment"), MODEL_ERRORS.values(), ids=MODEL_ERRORS.keys())
def test_nonsense_is_refused_when_the_file_loads(change, fragment: str) -> None:
    with pytest.raises(ContractError) as info:
        contract_from_mapping(demo(change), FILE)
    text = str(info.value)
    assert FILE in text and "Fix:" in text and fragment in text, text


# ---- refused by check_contract (across columns) ------------------------------------------------

CHECK_ERRORS = {
    "unmasked-not-listed": (lambda d: claimants(d).update(first_name={"treatment": "unmasked"}),
                            "datasets[0].columns.first_name", "'unmasked:' list does not name it"),
    "listed-but-pseudonymised": (lambda d: d.update(unmasked=[{
        "dataset": "claimants", "column": "nino", "business_requirement": "survey needs the NINO"}]),
        "datasets[0].columns.nino", "listed under 'unmasked:'"),
    "sample-entity-missing": (lambda d: d.update(sample={"fraction": 0.1}), "sample.entity", "names no entity"),
    "sample-entity-not-in-a-dataset": (lambda d: (d.pop("population"), d.update(sample={"entity": "person",
                                                                                        "fraction": 0.1})),
                                       "datasets[1].columns", "'payments' has no column pseudonymised"),
    "sample-entity-twice": (lambda d: (payments(d).update(
        payer={"treatment": "pseudonymise", "entity": "person"},
        payee={"treatment": "pseudonymise", "entity": "person"}),
        d.pop("population"), d.update(sample={"entity": "person", "fraction": 0.1})), "datasets[1].columns",
        "2 columns"),
    "date-shift-entity-missing": (lambda d: payments(d).update(paid_on={"treatment": "date_shift",
                                                                        "entity": "person"}),
                                  "datasets[1].columns.paid_on.entity", "found 0"),
    "date-shift-by-wrong-column": (lambda d: claimants(d).update(claim_start={
        "treatment": "date_shift", "entity": "claimant", "by": "nino"}), "datasets[0].columns.claim_start.by",
        "not a column pseudonymised"),
}


def first_error(data: dict) -> ContractError:
    """The error the contract gets: when it loads (once the model calls check_treatments) or before extract."""
    try:
        contract = contract_from_mapping(data, FILE)
    except ContractError as exc:
        return exc
    with pytest.raises(ContractError) as info:
        check_contract(contract, FILE)
    return info.value


@pytest.mark.parametrize(("change", "key", "fragment"), CHECK_ERRORS.values(), ids=CHECK_ERRORS.keys())
def test_problems_across_columns_name_the_key_and_the_fix(change, key: str, fragment: str) -> None:
    text = str(first_error(demo(change)))
    assert FILE in text and key in text and fragment in text and "Fix:" in text, text


ACCEPTED = {
    "free-text-omitted": lambda d: None,
    "free-text-suppressed": lambda d: claimants(d).update(first_name={"treatment": "suppress"}),
    "free-text-unmasked-and-listed": lambda d: (claimants(d).update(first_name={"treatment": "unmasked"}), d.update(
        unmasked=[{"dataset": "claimants", "column": "first_name",
                   "business_requirement": "the survey letter is addressed by name"}])),
    "listed-and-kept": lambda d: d.update(unmasked=[{"dataset": "claimants", "column": "region",
                                                     "business_requirement": "survey frame needs the region"}]),
    "sample-by-claimant": lambda d: d.update(sample={"entity": "claimant", "fraction": 0.1, "max_records": 50}),
    "date-shift-by-the-only-column": lambda d: payments(d).update(paid_on={"treatment": "date_shift",
                                                                           "entity": "claimant"}),
    "date-shift-by-named-column": lambda d: claimants(d).update(claim_start={"treatment": "date_shift",
                                                                             "entity": "person", "by": "nino"}),
}


@pytest.mark.parametrize("change", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_sensible_contracts_pass(change) -> None:
    contract = contract_from_mapping(demo(change), FILE)
    assert treatment_problems(contract) == []


# ---- refused when the extract is planned (needs the source's types) ------------------------------

SOURCE = {
    "claimants": [("id", pa.int64(), True), ("nino", pa.string(), True), ("date_of_birth", pa.date32(), True),
                  ("sex", pa.string(), True), ("region", pa.string(), True), ("benefit_code", pa.string(), True),
                  ("weekly_amount", pa.decimal128(8, 2), True), ("claim_start", pa.date32(), True),
                  ("paid_from", pa.date32(), True)],
    "payments": [("claimant_id", pa.int64(), True), ("paid_on", pa.date32(), True),
                 ("amount", pa.decimal128(8, 2), True)],
}


def test_the_model_validator_leaves_the_sample_to_the_extract() -> None:
    contract = contract_from_mapping(demo(lambda d: d.update(sample={"fraction": 0.1})), FILE)
    check_treatments(contract)  # a sample may be written before its entity; the run refuses it
    with pytest.raises(ContractError, match="names no entity"):
        check_contract(contract, FILE)
    base = contract_from_mapping(demo(), FILE)
    first = base.datasets[0]
    bad = base.model_copy(update={"datasets": [
        first.model_copy(update={"columns": {**first.columns, "surname": Unmasked(treatment="unmasked")}}),
        *base.datasets[1:]]})
    with pytest.raises(ValueError, match=r"datasets\[0\]\.columns\.surname: .*does not name it"):
        check_treatments(bad)


def test_a_kept_date_beside_shifted_dates_is_refused() -> None:
    def change(d: dict) -> None:
        payments(d).update(paid_on={"treatment": "date_shift", "entity": "claimant"})
        claimants(d).update(paid_from={"treatment": "keep"})
    contract = contract_from_mapping(demo(change), FILE)
    with pytest.raises(ContractError) as info:
        plan_contract(contract, SOURCE, file=FILE, reference_date=dt.date(2026, 6, 30))
    assert "datasets.claimants.columns.paid_from" in str(info.value) and "reveals the shift" in str(info.value)


def test_plan_contract_wires_date_shift_to_its_identifier() -> None:
    def change(d: dict) -> None:
        payments(d).update(paid_on={"treatment": "date_shift", "entity": "claimant", "max_days": 10})
        claimants(d).update(claim_start={"treatment": "date_shift", "entity": "claimant", "max_days": 10})
    contract = contract_from_mapping(demo(change), FILE)
    plans = plan_contract(contract, SOURCE, file=FILE, reference_date=dt.date(2026, 6, 30))
    shifted = {p.name: (p.by, p.by_canonicaliser) for ps in plans.values() for p in ps if p.by}
    assert shifted == {"claim_start": ("id", "integer"), "paid_on": ("claimant_id", "integer")}


def test_wrong_type_is_refused_with_file_key_and_fix() -> None:
    contract = contract_from_mapping(demo(lambda d: claimants(d).update(
        region={"treatment": "date_shift", "entity": "claimant"})), FILE)
    with pytest.raises(ContractError) as info:
        plan_contract(contract, SOURCE, file=FILE, reference_date=None)
    text = str(info.value)
    assert FILE in text and "datasets.claimants.columns.region" in text and "date_shift needs a date" in text


def test_unset_new_options_leave_the_content_hash_of_older_contracts_alone() -> None:
    # The canonical form (contracts.loading.content_hash) of treatments written before the options existed.
    assert Keep(treatment="keep").model_dump(mode="json") == {"treatment": "keep"}
    assert Generalise(treatment="generalise", to="year").model_dump(mode="json") == \
        {"treatment": "generalise", "to": "year"}
    assert Pseudonymise(treatment="pseudonymise", entity="person", canonicalise="nino").model_dump(mode="json") == \
        {"treatment": "pseudonymise", "entity": "person", "canonicalise": "nino"}
    assert Sample(fraction=0.1).model_dump(mode="json") == {"fraction": 0.1, "max_records": None}
    # Set options are part of the content (a changed option needs a new approval).
    assert Sample(entity="person", fraction=0.1).model_dump(mode="json")["entity"] == "person"
