"""The disclosure and aggregate parts of the contract model."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from contracts import load_contract
from contracts.disclosure import (
    Aggregate,
    BandHierarchy,
    Disclosure,
    MapHierarchy,
    disclosure_problems,
    measure_kind,
)
from core.errors import ContractError
from disclosure.assess import check_contract

REPO = Path(__file__).resolve().parents[2]


def test_new_fields_are_left_out_when_unset() -> None:
    # Contracts written before these fields existed keep their content hash.
    d = Disclosure.model_validate({"quasi_identifiers": ["sex"], "k": 5})
    assert d.model_dump(mode="json") == {"quasi_identifiers": ["sex"], "k": 5, "contractor_holds": []}
    assert d.ceiling == 0.05 and not d.may_generalise and d.sensitive_columns == []


def test_full_disclosure_section() -> None:
    d = Disclosure.model_validate({
        "quasi_identifiers": ["date_of_birth", "region"], "contractor_holds": ["sex", "region"],
        "sensitive": ["benefit_code"], "k": 10, "l": 2, "max_suppressed": 0.02, "generalise": True,
        "hierarchies": {"date_of_birth": {"bands": [5, 10]}, "region": {"levels": [{"NE": "North"}]}},
        "source_identifiers": {"claimants": ["first_name"]}})
    assert d.key_columns == ["date_of_birth", "region", "sex"]
    assert isinstance(d.hierarchies["date_of_birth"], BandHierarchy)
    assert isinstance(d.hierarchies["region"], MapHierarchy)


@pytest.mark.parametrize(("section", "message"), [
    ({"quasi_identifiers": ["a"], "sensitive": ["a"]}, "both a key variable and sensitive"),
    ({"quasi_identifiers": ["a"], "l": 2}, "needs 'sensitive'"),
    ({"quasi_identifiers": ["a"], "hierarchies": {"b": {"bands": [5]}}}, "not key variables"),
    ({"quasi_identifiers": ["a"], "generalise": True}, "needs 'hierarchies'"),
    ({"quasi_identifiers": ["a"], "hierarchies": {"a": {"bands": [5, 7]}}}, "multiple"),
    ({"quasi_identifiers": ["a"], "hierarchies": {"a": {"levels": [{"x": "X"}, {"Y": "Z"}]}}}, "does not map"),
    ({"quasi_identifiers": ["a", "a"]}, "twice"),
    ({"quasi_identifiers": ["a"], "max_suppressed": 1.5}, "less than or equal"),
])
def test_disclosure_errors(section: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Disclosure.model_validate(section)


def test_measures() -> None:
    agg = Aggregate.model_validate({"name": "t", "dataset": "d", "by": ["r"],
                                    "measures": ["count", {"sum": "x"}, {"mean": "y"}]})
    assert [measure_kind(m) for m in agg.measures] == [("count", None), ("sum", "x"), ("mean", "y")]
    assert Aggregate.model_validate({"name": "t", "dataset": "d", "by": ["r"],
                                     "measures": [{"count": None}]}).kinds() == [("count", None)]
    assert (agg.cell_threshold, agg.rounding_base, agg.dominance_share, agg.with_margins) == (10, 5, 0.5, True)
    assert agg.model_dump(mode="json") == {"name": "t", "dataset": "d", "by": ["r"],
                                           "measures": ["count", {"sum": "x"}, {"mean": "y"}]}
    for bad in ({"by": ["r", "r"]}, {"measures": ["count", "count"]}, {"measures": [{}]},
                {"measures": [{"sum": "r"}]}, {"unit": "u", "weight": "w"}):
        with pytest.raises(ValidationError):
            Aggregate.model_validate({"name": "t", "dataset": "d", "by": ["r"], "measures": ["count"], **bad})


def demo_with(tmp_path: Path, change) -> Path:
    data = yaml.safe_load((REPO / "configs" / "contracts" / "C-DEMO-001.yaml").read_text())
    change(data)
    path = tmp_path / "C-DEMO-001.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_contract_level_problems_name_the_key(tmp_path: Path) -> None:
    contract = load_contract(REPO / "configs" / "contracts" / "C-DEMO-001.yaml")
    bad = contract.model_copy(update={"disclosure": Disclosure.model_validate({
        "quasi_identifiers": ["date_of_birth", "nino"], "contractor_holds": ["shoe_size"],
        "source_identifiers": {"nobody": ["x"]}})})
    problems = dict(disclosure_problems(bad))
    assert "shoe_size" in problems["disclosure.contractor_holds"]
    assert "nino" in problems["disclosure"]
    assert "disclosure.source_identifiers.nobody" in problems
    with pytest.raises(ContractError) as raised:
        check_contract(bad, "C-DEMO-001.yaml")
    assert "C-DEMO-001.yaml" in str(raised.value) and "Fix:" in str(raised.value)


def test_the_model_refuses_unlisted_key_variables(tmp_path: Path) -> None:
    path = demo_with(tmp_path, lambda d: d.update(disclosure={"quasi_identifiers": ["shoe_size"]}))
    with pytest.raises(ContractError, match="shoe_size"):
        load_contract(path)


def test_a_demo_contract_without_disclosure_has_no_problems() -> None:
    assert disclosure_problems(load_contract(REPO / "configs" / "contracts" / "C-DEMO-001.yaml")) == []


def test_tables_of_one_dataset_share_one_protection(tmp_path: Path) -> None:
    """A cell-key table would publish, perturbed, what a suppression table of the same dataset withholds."""
    mixed = [{"name": "by_region", "by": ["region"], "dataset": "claimants", "measures": ["count"], "unit": "nino"},
             {"name": "by_benefit", "by": ["benefit_code"], "protection": "cell_key", "dataset": "claimants",
              "measures": ["count"], "unit": "nino"}]
    path = demo_with(tmp_path, lambda d: d.update(aggregates=mixed))
    with pytest.raises(ContractError, match=r"aggregates\[1\].protection.*different protections"):
        load_contract(path)
    for protection in ("suppression", "cell_key"):
        same = [{**table, "measures": ["count"], "by": list(table["by"]), "protection": protection} for table in mixed]
        path = demo_with(tmp_path, lambda d, same=same: d.update(aggregates=same))
        assert disclosure_problems(load_contract(path)) == []
