"""Column treatments: planning against source types, and masking of Arrow record batches."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest

from contracts.column_treatments import (
    BottomCode,
    DateShift,
    Generalise,
    Keep,
    Pseudonymise,
    Round,
    Suppress,
    TopCode,
    Unmasked,
)
from core.errors import ContractError
from masking.column_plans import describe, mask_batch, output_schema, plan_column
from masking.keys import ContractKeys, MasterKey

from .vectors import MASTER, expected_contract_key, expected_pseudonym

KEEP = Keep(treatment="keep")
YEAR = Generalise(treatment="generalise", to="year")
NINO = Pseudonymise(treatment="pseudonymise", entity="person", canonicalise="nino")
TEXT = Pseudonymise(treatment="pseudonymise", entity="person", canonicalise="text")
INTEGER = Pseudonymise(treatment="pseudonymise", entity="claimant", canonicalise="integer")
QUARTER = Generalise(treatment="generalise", to="quarter")
AGE = Generalise(treatment="generalise", to="age_band", at=dt.date(2026, 6, 30))
DISTRICT = Generalise(treatment="generalise", to="district")
BAND = Generalise(treatment="generalise", to="band", edges=[0, 100])
MAPPING = Generalise(treatment="generalise", to="mapping", mapping={"UC": "universal credit"})
ROUND = Round(treatment="round", base=100)
ROUND_CENTS = Round(treatment="round", base="0.05")
TOP = TopCode(treatment="top_code", threshold=1000)
BOTTOM = BottomCode(treatment="bottom_code", threshold=0, value="0.5")
SHIFT = DateShift(treatment="date_shift", entity="person")
SUPPRESS = Suppress(treatment="suppress")
UNMASKED = Unmasked(treatment="unmasked")

KEYS = ContractKeys.derive(MasterKey(secret=MASTER, source="test"), "C-DEMO-001", None)
PSEUDONYM_KEY = expected_contract_key(MASTER, "pseudonym", "C-DEMO-001")


# ---- plan_column -------------------------------------------------------------------------------

TYPE_ERRORS = {
    "year-of-string": (YEAR, pa.string(), "generalise to 'year'"),
    "year-of-int": (YEAR, pa.int64(), "generalise to 'year'"),
    "year-of-time": (YEAR, pa.time64("us"), "generalise to 'year'"),
    "nino-on-int": (NINO, pa.int64(), "canonicalise 'nino'"),
    "nino-on-date": (NINO, pa.date32(), "canonicalise 'nino'"),
    "text-on-int": (TEXT, pa.int32(), "canonicalise 'text'"),
    "integer-on-float": (INTEGER, pa.float64(), "canonicalise 'integer'"),
    "integer-on-decimal": (INTEGER, pa.decimal128(10, 0), "canonicalise 'integer'"),
    "integer-on-date": (INTEGER, pa.date32(), "canonicalise 'integer'"),
    "postcode-canonicaliser-on-int": (Pseudonymise(treatment="pseudonymise", entity="address",
                                                   canonicalise="postcode"), pa.int64(), "canonicalise 'postcode'"),
    "quarter-of-string": (QUARTER, pa.string(), "generalise to 'quarter'"),
    "age-band-of-int": (AGE, pa.int64(), "generalise to 'age_band'"),
    "district-of-int": (DISTRICT, pa.int64(), "generalise to 'district'"),
    "district-of-date": (DISTRICT, pa.date32(), "generalise to 'district'"),
    "band-of-string": (BAND, pa.string(), "generalise to 'band'"),
    "band-of-date": (BAND, pa.date32(), "generalise to 'band'"),
    "mapping-of-date": (MAPPING, pa.date32(), "generalise to 'mapping'"),
    "mapping-of-float": (MAPPING, pa.float64(), "generalise to 'mapping'"),
    "round-of-string": (ROUND, pa.string(), "round needs a numeric column"),
    "round-of-date": (ROUND, pa.date32(), "round needs a numeric column"),
    "round-cents-of-int": (ROUND_CENTS, pa.int64(), "base 0.05 cannot be held"),
    "round-cents-of-decimal-scale-1": (ROUND_CENTS, pa.decimal128(8, 1), "base 0.05 cannot be held"),
    "top-code-of-string": (TOP, pa.string(), "top_code needs a numeric column"),
    "bottom-code-half-of-int": (BOTTOM, pa.int32(), "coded value 0.5 cannot be held"),
    "date-shift-of-string": (SHIFT, pa.string(), "date_shift needs a date or timestamp column"),
    "date-shift-of-int": (SHIFT, pa.int64(), "date_shift needs a date or timestamp column"),
}


@pytest.mark.parametrize(("treatment", "source_type", "fragment"), TYPE_ERRORS.values(), ids=TYPE_ERRORS.keys())
def test_plan_column_refuses_type_mismatch(treatment, source_type: pa.DataType, fragment: str) -> None:
    with pytest.raises(ContractError) as info:
        plan_column("claimants", "col", treatment, source_type, False, file="configs/contracts/C-X.yaml",
                    by="nino", by_canonicaliser="nino")
    text = str(info.value)
    assert fragment in text
    assert "configs/contracts/C-X.yaml" in text
    assert "datasets.claimants.columns.col" in text
    assert "Fix:" in text
    assert str(source_type) in text


PLANS_OK = {
    "year-of-date32": (YEAR, pa.date32(), pa.int32()),
    "year-of-date64": (YEAR, pa.date64(), pa.int32()),
    "year-of-timestamp": (YEAR, pa.timestamp("us"), pa.int32()),
    "year-of-timestamp-utc": (YEAR, pa.timestamp("ms", tz="UTC"), pa.int32()),
    "nino-on-string": (NINO, pa.string(), pa.string()),
    "text-on-string": (TEXT, pa.string(), pa.string()),
    "integer-on-int64": (INTEGER, pa.int64(), pa.string()),
    "integer-on-int16": (INTEGER, pa.int16(), pa.string()),
    "integer-on-string": (INTEGER, pa.string(), pa.string()),
    "keep-decimal": (KEEP, pa.decimal128(10, 2), pa.decimal128(10, 2)),
    "keep-string": (KEEP, pa.string(), pa.string()),
    "quarter-of-date": (QUARTER, pa.date32(), pa.string()),
    "age-band-of-timestamp": (AGE, pa.timestamp("us"), pa.string()),
    "district-of-string": (DISTRICT, pa.string(), pa.string()),
    "band-of-decimal": (BAND, pa.decimal128(8, 2), pa.string()),
    "mapping-of-int": (MAPPING, pa.int64(), pa.string()),
    "round-keeps-decimal": (ROUND_CENTS, pa.decimal128(8, 2), pa.decimal128(8, 2)),
    "round-keeps-int": (ROUND, pa.int32(), pa.int32()),
    "top-code-keeps-float": (TOP, pa.float64(), pa.float64()),
    "date-shift-keeps-timestamp-tz": (SHIFT, pa.timestamp("us", tz="UTC"), pa.timestamp("us", tz="UTC")),
    "suppress-keeps-type": (SUPPRESS, pa.decimal128(8, 2), pa.decimal128(8, 2)),
    "unmasked-keeps-type": (UNMASKED, pa.string(), pa.string()),
}


@pytest.mark.parametrize(("treatment", "source_type", "output_type"), PLANS_OK.values(), ids=PLANS_OK.keys())
def test_plan_column_output_types(treatment, source_type: pa.DataType, output_type: pa.DataType) -> None:
    plan = plan_column("claimants", "col", treatment, source_type, True, by="nino", by_canonicaliser="nino")
    assert plan.output_type == output_type
    assert plan.source_type == source_type
    assert plan.is_pseudonym == isinstance(treatment, Pseudonymise)


def test_output_schema_is_nullable_in_plan_order() -> None:
    plans = [plan_column("d", "b", KEEP, pa.int64(), True), plan_column("d", "a", YEAR, pa.date32(), True)]
    schema = output_schema(plans)
    assert schema.names == ["b", "a"]
    assert schema.types == [pa.int64(), pa.int32()]
    assert all(f.nullable for f in schema)


# ---- mask_batch --------------------------------------------------------------------------------


def test_mask_batch_schema_order_and_values() -> None:
    batch = pa.record_batch({
        "extra_not_listed": pa.array(["secret-1", "secret-2", "secret-3"]),
        "claim_start": pa.array([dt.datetime(2016, 3, 1, 12), dt.datetime(2020, 12, 31, 23, 59), None],
                                pa.timestamp("us")),
        "date_of_birth": pa.array([dt.date(1980, 1, 1), None, dt.date(2001, 12, 31)], pa.date32()),
        "nino": pa.array(["ab 12 34 56 c", None, "CD654321A"]),
        "id": pa.array([42, 7, None], pa.int64()),
        "region": pa.array(["North", "South", None]),
    })
    plans = [
        plan_column("claimants", "id", INTEGER, pa.int64(), False),
        plan_column("claimants", "nino", NINO, pa.string(), False),
        plan_column("claimants", "date_of_birth", YEAR, pa.date32(), False),
        plan_column("claimants", "region", KEEP, pa.string(), False),
        plan_column("claimants", "claim_start", YEAR, pa.timestamp("us"), False),
    ]
    out = mask_batch(batch, plans, KEYS)
    assert out.schema == output_schema(plans)
    assert out.schema.names == ["id", "nino", "date_of_birth", "region", "claim_start"]
    assert out.num_rows == 3
    assert out.column("id").to_pylist() == [expected_pseudonym(PSEUDONYM_KEY, "claimant", "42"),
                                            expected_pseudonym(PSEUDONYM_KEY, "claimant", "7"), None]
    assert out.column("nino").to_pylist() == [expected_pseudonym(PSEUDONYM_KEY, "person", "AB123456C"), None,
                                              expected_pseudonym(PSEUDONYM_KEY, "person", "CD654321A")]
    assert out.column("date_of_birth").to_pylist() == [1980, None, 2001]
    assert out.column("claim_start").to_pylist() == [2016, 2020, None]
    assert out.column("region").to_pylist() == ["North", "South", None]
    flat = str(out.to_pydict())
    assert "secret-1" not in flat and "ab 12 34 56 c" not in flat


@pytest.mark.parametrize("type_", [pa.date32(), pa.date64(), pa.timestamp("s"), pa.timestamp("ns"),
                                   pa.timestamp("us", tz="UTC")], ids=str)
def test_year_extraction(type_: pa.DataType) -> None:
    if pa.types.is_timestamp(type_):
        values = [dt.datetime(1999, 12, 31, 23, 59, 59), dt.datetime(2000, 1, 1), None]
    else:
        values = [dt.date(1999, 12, 31), dt.date(2000, 1, 1), None]
    batch = pa.record_batch({"d": pa.array(values, type_)})
    out = mask_batch(batch, [plan_column("x", "d", YEAR, type_, False)], KEYS)
    assert out.column(0).type == pa.int32()
    assert out.column(0).to_pylist() == [1999, 2000, None]


def test_mask_empty_batch_keeps_schema() -> None:
    plans = [plan_column("d", "nino", NINO, pa.string(), False), plan_column("d", "dob", YEAR, pa.date32(), False)]
    batch = pa.record_batch({"nino": pa.array([], pa.string()), "dob": pa.array([], pa.date32())})
    out = mask_batch(batch, plans, KEYS)
    assert out.num_rows == 0
    assert out.schema == output_schema(plans)


def test_pseudonyms_differ_between_contracts_in_batches() -> None:
    other = ContractKeys.derive(MasterKey(secret=MASTER, source="test"), "C-DEMO-002", None)
    batch = pa.record_batch({"nino": pa.array(["AB123456C"])})
    plans = [plan_column("d", "nino", NINO, pa.string(), False)]
    assert mask_batch(batch, plans, KEYS).column(0) != mask_batch(batch, plans, other).column(0)


def test_missing_source_column_fails() -> None:
    batch = pa.record_batch({"a": pa.array([1])})
    with pytest.raises(KeyError):
        mask_batch(batch, [plan_column("d", "b", KEEP, pa.int64(), False)], KEYS)


@pytest.mark.parametrize(("treatment", "fragment"), [(NINO, "Pseudonym"), (YEAR, "Year only"), (KEEP, "as held")],
                         ids=["pseudonymise", "generalise", "keep"])
def test_describe_in_plain_words(treatment, fragment: str) -> None:
    source = pa.date32() if treatment is YEAR else pa.string()
    plan = plan_column("d", "c", treatment, source, False)
    assert fragment in describe(plan, "contract")
    if treatment is NINO:
        assert "every delivery" in describe(plan, "contract")
        assert "within this delivery only" in describe(plan, "delivery")
