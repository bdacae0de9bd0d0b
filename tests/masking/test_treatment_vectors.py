"""Known answers for every treatment, and the properties each promises (docs/masking.md).

Pseudonyms and date-shift offsets are recomputed here from the design.md formulas with hmac/hashlib
(tests/masking/vectors.py), independently of the code under test.
"""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
from core.errors import DataError
from masking.column_plans import describe, mask_batch, plan_column
from masking.keys import ContractKeys, MasterKey

from .vectors import MASTER, expected_contract_key, expected_offset, expected_pseudonym

KEYS = ContractKeys.derive(MasterKey(secret=MASTER, source="test"), "C-DEMO-001", None)
OTHER = ContractKeys.derive(MasterKey(secret=MASTER, source="test"), "C-DEMO-002", None)
PSEUDONYM_KEY = expected_contract_key(MASTER, "pseudonym", "C-DEMO-001")
DATESHIFT_KEY = expected_contract_key(MASTER, "dateshift", "C-DEMO-001")
AT = dt.date(2026, 6, 30)


def apply(treatment, values: list, type_: pa.DataType, keys: ContractKeys = KEYS, **extra) -> list:
    """Mask one column (plus an identifier column for date shifts) and return its values."""
    columns = {"c": pa.array(values, type_)}
    by = None
    if isinstance(treatment, DateShift):
        columns["id"] = pa.array(extra.pop("ids"), pa.string())
        by = "id"
    batch = pa.record_batch(columns)
    plan = plan_column("d", "c", treatment, type_, False, by=by, by_canonicaliser="nino" if by else None,
                       reference_date=extra.pop("reference_date", None))
    return mask_batch(batch, [plan], keys).column(0).to_pylist()


def gen(to: str, **options) -> Generalise:
    return Generalise(treatment="generalise", to=to, **options)


# ---- pseudonymise: every canonicaliser ------------------------------------------------------------

PSEUDONYM_VECTORS = {
    "nino": ("nino", "person", [" ab 12 34 56 c"], "AB123456C"),
    "postcode": ("postcode", "address", ["sw1a  1aa "], "SW1A1AA"),
    "email": ("email", "person", ["  Jo.Bloggs+news@Example.ORG "], "jo.bloggs+news@example.org"),
    "phone-national": ("phone", "person", ["020 7946 0018"], "+442079460018"),
    "phone-international": ("phone", "person", ["+44 (0)20 7946-0018"], "+442079460018"),
    "phone-00": ("phone", "person", ["0044 20 7946 0018"], "+442079460018"),
    "phone-mobile-dots": ("phone", "person", ["07700.900.123"], "+447700900123"),
    "text": ("text", "household", ["  Flat 3,  High   Street "], "flat 3, high street"),
    "integer": ("integer", "claimant", [" 0042"], "42"),
}


@pytest.mark.parametrize(("canonicaliser", "entity", "raw", "canonical"), PSEUDONYM_VECTORS.values(),
                         ids=PSEUDONYM_VECTORS.keys())
def test_pseudonymise_known_answers(canonicaliser: str, entity: str, raw: list, canonical: str) -> None:
    treatment = Pseudonymise(treatment="pseudonymise", entity=entity, canonicalise=canonicaliser)
    assert apply(treatment, [*raw, None], pa.string()) == [expected_pseudonym(PSEUDONYM_KEY, entity, canonical), None]


@pytest.mark.parametrize("bad", ["020 7946 0018 ext 5", "+44 20 +7946", "phone me"])
def test_phone_that_is_not_a_number_stops_the_run_without_showing_it(bad: str) -> None:
    treatment = Pseudonymise(treatment="pseudonymise", entity="person", canonicalise="phone")
    with pytest.raises(DataError) as info:
        apply(treatment, [bad, "020 7946 0018"], pa.string())
    assert "1 value(s)" in str(info.value) and "'c'" in str(info.value)
    assert bad not in str(info.value)


# ---- generalise ------------------------------------------------------------------------------------

DATES = [dt.date(2024, 1, 1), dt.date(2024, 3, 31), dt.date(2024, 4, 1), dt.date(2024, 12, 31), None]


@pytest.mark.parametrize("type_", [pa.date32(), pa.date64(), pa.timestamp("us"), pa.timestamp("ms", tz="UTC")],
                         ids=str)
def test_generalise_dates_to_quarter_and_month(type_: pa.DataType) -> None:
    values = [None if d is None else (dt.datetime.combine(d, dt.time(23, 59)) if pa.types.is_timestamp(type_) else d)
              for d in DATES]
    assert apply(gen("quarter"), values, type_) == ["2024-Q1", "2024-Q1", "2024-Q2", "2024-Q4", None]
    assert apply(gen("month"), values, type_) == ["2024-01", "2024-03", "2024-04", "2024-12", None]
    assert apply(gen("year"), values, type_) == [2024, 2024, 2024, 2024, None]


AGE_CASES = [
    # (date of birth, reference date, completed years)
    (dt.date(1990, 6, 15), dt.date(2026, 6, 14), 35),
    (dt.date(1990, 6, 15), dt.date(2026, 6, 15), 36),
    (dt.date(2000, 2, 29), dt.date(2025, 2, 28), 24),  # no 29 February in 2025: the birthday counts from 1 March
    (dt.date(2000, 2, 29), dt.date(2025, 3, 1), 25),
    (dt.date(2000, 2, 29), dt.date(2028, 2, 29), 28),
    (dt.date(2026, 1, 1), dt.date(2026, 1, 1), 0),
]


@pytest.mark.parametrize(("born", "at", "age"), AGE_CASES, ids=[f"{b}@{a}" for b, a, _ in AGE_CASES])
def test_age_band_width_one_is_the_completed_age(born: dt.date, at: dt.date, age: int) -> None:
    assert apply(gen("age_band", at=at, width=1), [born], pa.date32()) == [str(age)]


def test_age_bands() -> None:
    born = [dt.date(1990, 7, 1), dt.date(1990, 6, 30), dt.date(1930, 1, 1), dt.date(2027, 1, 1), None,
            dt.date(2020, 1, 1)]
    assert apply(gen("age_band", at=AT), born, pa.date32()) == ["35-39", "35-39", "95-99", None, None, "5-9"]
    assert apply(gen("age_band", at=AT, width=10, top=90), born, pa.date32()) == ["30-39", "30-39", "90+", None,
                                                                                  None, "0-9"]
    assert apply(gen("age_band", at=AT, edges=[16, 25, 65]), born, pa.date32()) == ["25-64", "25-64", "65+", None,
                                                                                    None, "0-15"]
    assert apply(gen("age_band", at=AT, edges=[0, 18]), born, pa.date32()) == ["18+", "18+", "18+", None, None,
                                                                               "0-17"]


def test_age_band_at_the_delivery_date() -> None:
    born = [dt.date(1990, 7, 1)]
    assert apply(gen("age_band"), born, pa.date32(), reference_date=dt.date(2026, 7, 1)) == ["35-39"]
    assert apply(gen("age_band", at="delivery"), born, pa.date32(), reference_date=dt.date(2025, 6, 30)) == \
        ["30-34"]


POSTCODES = ["SW1A 1AA", "sw1a1aa", " M1 1AE ", "B33 8TH", "EC1A 1BB", "CR2 6XH", "DN55 1PT", "W1A 0AX",
             "not a postcode", "SW1A", "", None]


@pytest.mark.parametrize(("level", "expected"), [
    ("area", ["SW", "SW", "M", "B", "EC", "CR", "DN", "W", None, None, None, None]),
    ("district", ["SW1A", "SW1A", "M1", "B33", "EC1A", "CR2", "DN55", "W1A", None, None, None, None]),
    ("sector", ["SW1A 1", "SW1A 1", "M1 1", "B33 8", "EC1A 1", "CR2 6", "DN55 1", "W1A 0", None, None, None, None]),
])
def test_generalise_postcodes(level: str, expected: list) -> None:
    out = apply(gen(level), POSTCODES, pa.string())
    assert out == expected
    # The unit (the last two letters) never survives.
    for raw, value in zip(POSTCODES, out, strict=True):
        if value is not None:
            assert raw.replace(" ", "").upper() not in value.replace(" ", "")


@pytest.mark.parametrize(("type_", "values"), [
    (pa.int64(), [-1, 0, 99, 100, 499, 500, 10**12, None]),
    (pa.decimal128(10, 2), [Decimal("-0.01"), Decimal("0.00"), Decimal("99.99"), Decimal("100.00"),
                            Decimal("499.99"), Decimal("500.00"), Decimal("99999999.99"), None]),
    (pa.float64(), [-0.5, 0.0, 99.999, 100.0, 499.5, 500.0, 1e300, None]),
], ids=["int", "decimal", "float"])
def test_number_bands(type_: pa.DataType, values: list) -> None:
    out = apply(gen("band", edges=[0, 100, 500]), values, type_)
    assert out == ["(-inf, 0)", "[0, 100)", "[0, 100)", "[100, 500)", "[100, 500)", "[500, inf)", "[500, inf)", None]


def test_number_band_fractional_edges_on_integers() -> None:
    assert apply(gen("band", edges=["0.5", "2.5"]), [0, 1, 2, 3], pa.int32()) == \
        ["(-inf, 0.5)", "[0.5, 2.5)", "[0.5, 2.5)", "[2.5, inf)"]


def test_mapping_to_groups() -> None:
    table = {"UC": "universal credit", "JSA": "jobseeker", "ESA": "sickness and disability",
             "PIP": "sickness and disability"}
    assert apply(gen("mapping", mapping=table), ["UC", "PIP", "ESA", None, "JSA"], pa.string()) == \
        ["universal credit", "sickness and disability", "sickness and disability", None, "jobseeker"]
    assert apply(gen("mapping", mapping=table, other="other"), ["UC", "XYZ"], pa.string()) == \
        ["universal credit", "other"]
    assert apply(gen("mapping", mapping={1: "one", "2": "two"}), [1, 2, None], pa.int64()) == ["one", "two", None]


def test_unmapped_code_stops_the_run_without_showing_it() -> None:
    with pytest.raises(DataError) as info:
        apply(gen("mapping", mapping={"UC": "universal credit"}), ["UC", "RARE-CODE", "RARE-CODE"], pa.string())
    assert "2 value(s)" in str(info.value) and "RARE-CODE" not in str(info.value)


# ---- round, top and bottom coding -----------------------------------------------------------------


def test_round_integers_halves_away_from_zero() -> None:
    assert apply(Round(treatment="round", base=100), [149, 150, 151, -149, -150, 0, None], pa.int64()) == \
        [100, 200, 200, -100, -200, 0, None]
    assert apply(Round(treatment="round", base=5), [7, 8, 2], pa.int32()) == [5, 10, 0]


def test_round_decimals_and_floats_keep_their_type() -> None:
    money = [Decimal("12.34"), Decimal("12.35"), Decimal("-0.03"), None]
    assert apply(Round(treatment="round", base="0.1"), money, pa.decimal128(8, 2)) == \
        [Decimal("12.30"), Decimal("12.40"), Decimal("0.00"), None]
    assert apply(Round(treatment="round", base=10), money, pa.decimal128(8, 2)) == \
        [Decimal("10.00"), Decimal("10.00"), Decimal("0.00"), None]
    assert apply(Round(treatment="round", base="0.5"), [1.2, 1.25, 1.74, None], pa.float64()) == [1.0, 1.5, 1.5, None]


def test_round_with_top_and_bottom_codes() -> None:
    income = Round(treatment="round", base=100, top_code=100000, bottom_code=0)
    assert apply(income, [99949, 99950, 100049, 250000, -40, -60, None], pa.int64()) == \
        [99900, 100000, 100000, 100000, 0, 0, None]


def test_rounding_that_overflows_the_column_stops_the_run() -> None:
    with pytest.raises(DataError, match="do not fit"):
        apply(Round(treatment="round", base=100), [Decimal("999999.99")], pa.decimal128(8, 2))


def test_top_and_bottom_coding_with_configurable_values() -> None:
    assert apply(TopCode(treatment="top_code", threshold=1000), [999, 1000, 1001, None], pa.int64()) == \
        [999, 1000, 1000, None]
    assert apply(TopCode(treatment="top_code", threshold=1000, value=9999), [1000, 1001], pa.int64()) == [1000, 9999]
    assert apply(BottomCode(treatment="bottom_code", threshold=16, value=15), [15, 16, 90, None], pa.int16()) == \
        [15, 16, 90, None]
    assert apply(BottomCode(treatment="bottom_code", threshold="10.5", value=0), [Decimal("10.49"), Decimal("10.5")],
                 pa.decimal128(6, 2)) == [Decimal("0.00"), Decimal("10.50")]
    assert apply(TopCode(treatment="top_code", threshold="2.5"), [2.4, 2.6, None], pa.float32()) == \
        [pytest.approx(2.4), 2.5, None]


# ---- date shift ------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_days", [1, 30, 366])
def test_date_shift_offsets_follow_the_design_formula(max_days: int) -> None:
    ids = [f"AB{n:06d}C" for n in range(300)]
    dates = [dt.date(2020, 1, 1)] * len(ids)
    out = apply(DateShift(treatment="date_shift", entity="person", max_days=max_days), dates, pa.date32(), ids=ids)
    offsets = [(o - d).days for o, d in zip(out, dates, strict=True)]
    assert offsets == [expected_offset(DATESHIFT_KEY, "person", i, max_days) for i in ids]
    assert all(offset != 0 and -max_days <= offset <= max_days for offset in offsets)
    if max_days == 1:
        assert set(offsets) == {-1, 1}


def test_date_shift_timestamps_move_whole_days_and_null_identifiers_give_null() -> None:
    shift = DateShift(treatment="date_shift", entity="person", max_days=30)
    moments = [dt.datetime(2024, 2, 29, 13, 45, 10), dt.datetime(2024, 2, 29, 13, 45, 10), dt.datetime(2024, 3, 1)]
    for type_ in (pa.timestamp("us"), pa.timestamp("s", tz="UTC"), pa.date64()):
        values = [m.date() for m in moments] if type_ == pa.date64() else moments
        out = apply(shift, values, type_, ids=["ab 12 34 56 c", None, "AB123456C"])
        expected = expected_offset(DATESHIFT_KEY, "person", "AB123456C", 30)
        first = out[0].replace(tzinfo=None) if isinstance(out[0], dt.datetime) else out[0]
        assert first - values[0] == dt.timedelta(days=expected)
        assert out[1] is None  # no identifier: no date (a real date would leak)
        third = out[2].replace(tzinfo=None) if isinstance(out[2], dt.datetime) else out[2]
        assert third - first == values[2] - values[0]  # same person: interval kept


@settings(max_examples=60, deadline=None)
@given(people=st.lists(st.from_regex(r"\A[A-Z]{2}[0-9]{6}[A-D]\Z"), min_size=1, max_size=6, unique=True),
       rows=st.lists(st.tuples(st.integers(0, 5), st.dates(dt.date(1950, 1, 1), dt.date(2050, 1, 1))),
                     min_size=1, max_size=40),
       max_days=st.integers(1, 366))
def test_date_intervals_within_a_person_are_preserved(people: list[str], rows: list, max_days: int) -> None:
    ids = [people[i % len(people)] for i, _ in rows]
    dates = [d for _, d in rows]
    out = apply(DateShift(treatment="date_shift", entity="person", max_days=max_days), dates, pa.date32(), ids=ids)
    for a in range(len(rows)):
        shift_a = (out[a] - dates[a]).days
        assert shift_a != 0 and abs(shift_a) <= max_days  # never the real date
        for b in range(len(rows)):
            if ids[a] == ids[b]:
                assert out[a] - out[b] == dates[a] - dates[b]


def test_date_shift_differs_between_contracts() -> None:
    ids = [f"AB{n:06d}C" for n in range(200)]
    dates = [dt.date(2020, 1, 1)] * len(ids)
    shift = DateShift(treatment="date_shift", entity="person", max_days=30)
    assert apply(shift, dates, pa.date32(), ids=list(ids)) != apply(shift, dates, pa.date32(), OTHER, ids=list(ids))


# ---- suppress, keep, unmasked ------------------------------------------------------------------


def test_suppress_keeps_the_column_and_its_type_but_no_value() -> None:
    assert apply(Suppress(treatment="suppress"), ["Jo Bloggs", "x", None], pa.string()) == [None, None, None]
    assert apply(Suppress(treatment="suppress"), [Decimal("1.00")], pa.decimal128(8, 2)) == [None]


def test_keep_and_unmasked_deliver_the_value_as_held() -> None:
    assert apply(Keep(treatment="keep"), ["North", None], pa.string()) == ["North", None]
    assert apply(Unmasked(treatment="unmasked"), ["07700 900123"], pa.string()) == ["07700 900123"]


# ---- properties across treatments ------------------------------------------------------------------

NINO = st.from_regex(r"\A[A-Z]{2}[0-9]{6}[A-D]\Z")


@settings(max_examples=80, deadline=None)
@given(values=st.lists(NINO, min_size=1, max_size=30))
def test_determinism_within_and_unlinkability_across_contracts(values: list[str]) -> None:
    treatment = Pseudonymise(treatment="pseudonymise", entity="person", canonicalise="nino")
    first = apply(treatment, values, pa.string())
    assert apply(treatment, values, pa.string()) == first
    assert not set(first) & set(apply(treatment, values, pa.string(), OTHER))


@settings(max_examples=60, deadline=None)
@given(values=st.lists(NINO, min_size=1, max_size=30), spaced=st.booleans())
def test_no_raw_identifier_survives_pseudonymisation(values: list[str], spaced: bool) -> None:
    raw = [" ".join(v) if spaced else v for v in values]
    out = apply(Pseudonymise(treatment="pseudonymise", entity="person", canonicalise="nino"), raw, pa.string())
    text = " ".join(out).upper()
    assert all(re.fullmatch(r"[0-9a-f]{32}", p) for p in out)
    assert not any(v in text for v in values)


def test_every_treatment_is_described_in_plain_words() -> None:
    cases = [
        (gen("quarter"), pa.date32(), "quarter"), (gen("month"), pa.date32(), "month"),
        (gen("age_band", at=AT, width=10, top=90), pa.date32(), "90+"),
        (gen("sector"), pa.string(), "sector"), (gen("band", edges=[0, 100]), pa.int64(), "[0, 100)"),
        (gen("mapping", mapping={"UC": "universal credit"}, other="other"), pa.string(), "universal credit"),
        (Round(treatment="round", base=100, top_code=100000), pa.int64(), "above 100000"),
        (TopCode(treatment="top_code", threshold=5, value=9), pa.int64(), "delivered as 9"),
        (BottomCode(treatment="bottom_code", threshold=5), pa.int64(), "below 5"),
        (DateShift(treatment="date_shift", entity="person", max_days=14), pa.date32(), "-14 and +14"),
        (Suppress(treatment="suppress"), pa.string(), "every value is null"),
        (Unmasked(treatment="unmasked"), pa.string(), "in clear"),
        (Pseudonymise(treatment="pseudonymise", entity="person", canonicalise="email"), pa.string(), "e-mail"),
    ]
    for treatment, type_, fragment in cases:
        plan = plan_column("d", "c", treatment, type_, False, by="id", by_canonicaliser="nino", reference_date=AT)
        assert fragment in describe(plan, "contract"), (treatment, describe(plan, "contract"))
