"""The gate's vectorised metrics count exactly what a full Great Expectations validation counts.

Each expectation kind is checked on the same data two ways: ``metrics.column_metric`` on the Arrow
array, and real GX (an ephemeral context, the gate's own pandas conversion) on the same rows. Unexpected
counts and GX's missing (null) counts must be equal; where GX raises inside its metric, the vectorised
metric must raise too.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import uuid
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from validation import leakage
from validation.gx_adapter import GxRunner, build_expectation, import_gx, to_pandas
from validation.leakage import IdentifierSample
from validation.metrics import Counts, column_metric, python_regex_to_re2
from validation.model import (
    MULTIPLES_OF,
    NOT_SOURCE_IDENTIFIER,
    PSEUDONYM_LENGTH,
    PSEUDONYM_REGEX,
    VALUE_LENGTHS_EQUAL,
    VALUES_MATCH_REGEX,
    VALUES_NOT_NULL,
    ColumnRule,
    DatasetRules,
    Domain,
)
from validation.staged_file import domain_spec, suite_specs

# The regex domains rules.py produces, plus the pseudonym format.
RULE_REGEXES = {
    "pseudonym": PSEUDONYM_REGEX,
    "quarter": r"^[0-9]{4}-Q[1-4]\Z",
    "month": r"^[0-9]{4}-(0[1-9]|1[0-2])\Z",
    "area": r"^[A-Z]{1,2}\Z",
    "district": r"^[A-Z]{1,2}[0-9][0-9A-Z]?\Z",
    "sector": r"^[A-Z]{1,2}[0-9][0-9A-Z]? [0-9]\Z",
}
# Translator corner cases: "$" inside groups and branches, negated classes, lazy repeats, empty pattern.
EXTRA_REGEXES = {
    "dollar-in-branch": r"^(ab$|cd$)",
    "dollar-in-group": r"(x(y)$)",
    "negated-class": r"^[^a-c\n]+$",
    "dot-star": r"^a.*z\Z",
    "lazy": r"x+?y",
    "anywhere": r"[0-9]{2}",
    "empty": r"",
    "literal-specials": r"\.\+\(\)\[\]\{\}\|\^ \t/-",
    "non-ascii": r"^é+ü?$",
}
IDENTIFIERS = ["AB123456C", "cd 65 43 21 d", "12345678", "ÉCOLE-1234", "NORTH EAST", "20201", "0123456789abcdef"]
LABELS = ("0-4", "5-9", "North East", "", " ", "north east", "NORTH EAST", "É", "2021-Q1")

# pandas warns that a regex with groups is not str.extract; GX's regex metric is what we compare with.
pytestmark = pytest.mark.filterwarnings("ignore:This pattern is interpreted as a regular expression")


@pytest.fixture(scope="module")
def gx_runner() -> tuple[Any, Any]:
    return import_gx(), GxRunner()


@pytest.fixture(scope="module")
def token() -> str:
    registered = leakage.register(IdentifierSample.from_values(IDENTIFIERS))
    yield registered
    leakage.unregister(registered)


def pseudonym(i: int) -> str:
    return hashlib.md5(str(i).encode(), usedforsecurity=False).hexdigest()


def expectations_for(gx: Any, *, column: str = "v", regex: str | None = None, pseudonym_rule: bool = False,
                     length: bool = False, not_null: bool = False,
                     between: tuple[float | None, float | None] | None = None, in_set: tuple | None = None,
                     multiple_of: float | None = None, leak: str | None = None,
                     token: str | None = None) -> list[Any]:
    """GX expectations on ``column``, built the way the gate builds them."""
    rule = ColumnRule(column, pseudonym=pseudonym_rule, not_null=not_null, leak=leak)
    out = [build_expectation(kind, kwargs)
           for kind, kwargs in suite_specs(DatasetRules("d", (rule,)), leak_token=token)
           if kwargs.get("column") == column]
    if length and not pseudonym_rule:
        out.append(gx.expectations.ExpectColumnValueLengthsToEqual(column=column, value=PSEUDONYM_LENGTH))
    if regex is not None:  # built directly: a Domain refuses the empty regex
        out.append(gx.expectations.ExpectColumnValuesToMatchRegex(column=column, regex=regex))
    if between is not None:
        out.append(build_expectation(*domain_spec(column, Domain("between", min_value=between[0],
                                                                 max_value=between[1]))))
    if in_set is not None:
        out.append(build_expectation(*domain_spec(column, Domain("in_set", values=in_set))))
    if multiple_of is not None:
        out.append(build_expectation(*domain_spec(column, Domain("multiple_of", base=multiple_of))))
    return out


def assert_parity(gx_runner: tuple[Any, Any], array: pa.Array, expectations: list[Any], *,
                  at_least: frozenset[str] = frozenset()) -> dict[str, Counts]:
    """Vectorised counts == a full GX validation's counts on the same rows (``at_least``: ≥ GX's).

    The data is in columns "v" and "w" (the same values), so one kind can be checked twice in one run.
    """
    gx, runner = gx_runner
    suite = gx.ExpectationSuite(name=f"parity-{uuid.uuid4().hex}", expectations=expectations)
    keys = [(e.expectation_type, e.column) for e in expectations]
    assert len(set(keys)) == len(keys), "GX results are keyed by (kind, column)"
    found = runner.validate(to_pandas(pa.table({"v": array, "w": array})), suite)
    out = {}
    for expectation in expectations:
        kind = expectation.expectation_type
        metric = column_metric(kind, dict(expectation.configuration.kwargs), array.type)
        assert metric is not None, f"{kind} on {array.type} is not vectorised"
        expected = found[(kind, expectation.column)]
        if expected.errored:
            with pytest.raises(Exception):  # any error, as GX's
                metric(array)
            continue
        counts = metric(array)
        if kind in at_least:
            assert counts.unexpected >= expected.unexpected, kind
        else:
            assert counts.unexpected == expected.unexpected, (kind, counts, expected)
        assert expected.missing in (None, counts.nulls), (kind, counts, expected)
        # additive over batches, as the gate sums them
        cut = len(array) // 2
        halves = Counts()
        halves.add(metric(array.slice(0, cut)))
        halves.add(metric(array.slice(cut)))
        assert halves == counts, kind
        out[kind if expectation.column == "v" else f"{kind}:{expectation.column}"] = counts
    return out


# -------------------------------------------------------------------------------------- parametrised

PSEUDONYMS = [pseudonym(1), pseudonym(2), None, pseudonym(3).upper(), pseudonym(4) + "\n", "\n" + pseudonym(5),
              pseudonym(6)[:31], pseudonym(7) + "0", "", "é" * 32, pseudonym(8)[:31] + "\n", pseudonym(9) + "\n\n",
              pseudonym(10)[:31] + "٣"]

STRING_CASES = {
    "pseudonyms-with-newlines": (PSEUDONYMS, dict(pseudonym_rule=True, not_null=True, leak="exact")),
    "pseudonyms-length": (PSEUDONYMS, dict(length=True)),
    "quarters": (["2020-Q1", "2020-Q5", "2020-Q1\n", None, "2020-q1", "20201-Q1", "", "٢٠٢٠-Q1"],
                 dict(regex=RULE_REGEXES["quarter"], leak="substring")),
    "months": (["2020-01", "2020-13", "2020-00", "2020-12\n", None, "2020-1"], dict(regex=RULE_REGEXES["month"])),
    "areas": (["A", "AB", "ABC", "a", "É", None, "AB\n", ""], dict(regex=RULE_REGEXES["area"])),
    "districts": (["AB1", "AB12", "AB1C", "A1", "AB1c", None, "ABC1"], dict(regex=RULE_REGEXES["district"])),
    "sectors": (["AB1 2", "AB12 3", "AB1C 4", "AB1  2", "AB1 2\n", None], dict(regex=RULE_REGEXES["sector"])),
    "labels-in-set": ([*LABELS, None, "5-10", "0-4 "], dict(in_set=("0-4", "5-9", "North East", 5, None))),
    "empty-in-set": (["a", None, ""], dict(in_set=(1, 2))),
    "leaks-substring": (["ref AB 123 456 c", "ab123456c", "x", None, "  12 34 5678 ", "école-1234!", "north  east"],
                        dict(leak="substring", not_null=True)),
    "leaks-exact": (["ab123456c", "ref AB123456C", "0123456789ABCDEF", None], dict(leak="exact")),
}


@pytest.mark.parametrize("case", list(STRING_CASES), ids=list(STRING_CASES))
@pytest.mark.parametrize("arrow_type", [pa.string(), pa.large_string()], ids=["string", "large_string"])
def test_string_expectations_match_gx(gx_runner, token, case: str, arrow_type: pa.DataType) -> None:
    values, options = STRING_CASES[case]
    gx, _ = gx_runner
    array = pa.array(values, arrow_type)
    assert_parity(gx_runner, array, expectations_for(gx, token=token, **options))


def test_a_pseudonym_with_a_trailing_newline_passes_the_regex_and_fails_the_length(gx_runner) -> None:
    gx, _ = gx_runner
    array = pa.array([pseudonym(1) + "\n", pseudonym(2)])
    counts = assert_parity(gx_runner, array, expectations_for(gx, pseudonym_rule=True))
    assert counts[VALUES_MATCH_REGEX].unexpected == 0  # Python's "$": before a final newline
    assert counts[VALUE_LENGTHS_EQUAL].unexpected == 1


@pytest.mark.parametrize("name", [*RULE_REGEXES, *EXTRA_REGEXES])
def test_rule_regexes_are_translated(name: str) -> None:
    assert python_regex_to_re2({**RULE_REGEXES, **EXTRA_REGEXES}[name]) is not None


@pytest.mark.parametrize("pattern", [r"^\d{4}\Z", r"\w+", r"\s", r"\bx", r"(?i)abc", r"(a)\1", r"a(?=b)",
                                     r"(?<!a)b", r"a{1001}", r"(?s).", r"$x", r"(a$)*"],
                         ids=["digit-class", "word-class", "space-class", "boundary", "flag", "backreference",
                              "lookahead", "lookbehind", "huge-repeat", "dotall", "dollar-not-final",
                              "dollar-in-repeat"])
def test_regexes_with_engine_specific_meaning_are_not_translated(pattern: str) -> None:
    assert python_regex_to_re2(pattern) is None


def test_an_untranslatable_regex_is_left_to_gx(gx_runner) -> None:
    gx, _ = gx_runner
    [expectation] = expectations_for(gx, regex=r"^\d{4}\Z")
    assert column_metric(expectation.expectation_type, dict(expectation.configuration.kwargs), pa.string()) is None


NUMBER_CASES = {
    "int64-years": (pa.int64(), [1849, 1850, 2027, 2028, None, -5, 0], dict(between=(1850, 2027), not_null=True)),
    "int64-huge": (pa.int64(), [2**53 + 1, -(2**63), 2**63 - 1, 9007199254740992, 7],
                   dict(between=(None, 9007199254740992.0), multiple_of=5)),
    "int64-huge-fraction-base": (pa.int64(), [2**62, -(2**62) - 1, 3, 0], dict(multiple_of=0.3)),
    "int32-min-only": (pa.int32(), [1, 2, None, -(2**31)], dict(between=(0.5, None), multiple_of=2)),
    "uint32": (pa.uint32(), [0, 2**32 - 1, 5, None], dict(between=(0, 4e9), multiple_of=5)),
    "int8-fraction-base": (pa.int8(), [-128, 127, 0, 5, None], dict(multiple_of=2.5)),
    "int64-tiny-base-error": (pa.int64(), [2**62, 3], dict(multiple_of=1e-10)),
    "int64-tiny-base-fits": (pa.int64(), [10**17, 3, None], dict(multiple_of=1e-10)),
    "float-specials": (pa.float64(), [0.1, float("nan"), None, float("inf"), -float("inf"), -0.0, 1e15 + 0.5, 25.0],
                       dict(between=(0.0, 1e300), multiple_of=0.5, not_null=True)),
    "float-decimal-repr": (pa.float64(), [0.30000000000000004, 0.3, 0.1 + 0.7, 2.675, 1e-7, 5e-324, None],
                           dict(multiple_of=0.1)),
    "float-huge-error": (pa.float64(), [1e300, 5.0], dict(multiple_of=5)),
    "float-near-2-53": (pa.float64(), [2.0**53, 2.0**53 + 2, 2.0**60, -(2.0**55), 1e16, 1.5e16],
                        dict(multiple_of=3)),
    "float32": (pa.float32(), [0.1, 2.5, float("nan"), 1e30, None], dict(between=(0.1, 2.5), multiple_of=0.5)),
    "decimal-amounts": (pa.decimal128(8, 2), [Decimal("0.10"), Decimal("-7.25"), Decimal("999999.99"), None,
                                              Decimal("5.00")], dict(between=(0.1, 999999.985), multiple_of=0.05)),
    "decimal-bound-beyond-type": (pa.decimal128(4, 1), [Decimal("999.9"), Decimal("-999.9")],
                                  dict(between=(-1e300, 1e6), multiple_of=5)),
    "decimal-wide": (pa.decimal128(38, 4), [Decimal("1234567890123456789012345678901234.5678"), Decimal("0.0005"),
                                            None], dict(between=(0.0005, None), multiple_of=0.0005)),
}


@pytest.mark.parametrize("case", list(NUMBER_CASES), ids=list(NUMBER_CASES))
def test_number_expectations_match_gx(gx_runner, token, case: str) -> None:
    arrow_type, values, options = NUMBER_CASES[case]
    gx, _ = gx_runner
    array = pa.array(values, arrow_type, from_pandas=False)
    # Leak check on numbers: either rendering (pandas' astype(str) or Arrow's) counts, so at least GX's.
    expectations = expectations_for(gx, token=token, leak="substring", **options)
    assert_parity(gx_runner, array, expectations, at_least=frozenset({NOT_SOURCE_IDENTIFIER}))


def test_numbers_rendered_as_identifiers_are_found_in_either_rendering(gx_runner, token) -> None:
    gx, _ = gx_runner
    # GX's pandas frame turns an int64 column with a null into float64 ("12345678.0"): Arrow's "12345678" is
    # equal to an identifier, so the vectorised leak check finds more than GX here, never less.
    array = pa.array([12345678, None], pa.int64())
    counts = assert_parity(gx_runner, array, expectations_for(gx, token=token, leak="exact"),
                           at_least=frozenset({NOT_SOURCE_IDENTIFIER}))
    assert counts[NOT_SOURCE_IDENTIFIER].unexpected == 1


def test_dates_and_timestamps(gx_runner, token) -> None:
    gx, _ = gx_runner
    dates = pa.array([dt.date(2020, 1, 1), None, dt.date(1850, 12, 31)], pa.date32())
    assert_parity(gx_runner, dates, expectations_for(gx, token=token, not_null=True, leak="exact"))
    # pandas reads the int64 minimum of a timestamp as NaT, i.e. null
    stamps = pa.array([-(2**63), 0, None, 10**15], pa.timestamp("us"))
    counts = assert_parity(gx_runner, stamps, expectations_for(gx, not_null=True))
    assert counts[VALUES_NOT_NULL].unexpected == 2
    # between on a date (float bounds) makes GX raise: not vectorised, GX decides (and errors)
    [between] = expectations_for(gx, between=(1850, None))
    assert column_metric(between.expectation_type, dict(between.configuration.kwargs), pa.date32()) is None


@pytest.mark.parametrize("arrow_type", [pa.uint64(), pa.bool_(), pa.dictionary(pa.int32(), pa.string()),
                                        pa.list_(pa.int64()), pa.decimal256(40, 2), pa.float16(),
                                        pa.decimal128(5, -2)],
                         ids=["uint64", "bool", "dictionary", "list", "decimal256", "float16", "negative-scale"])
def test_types_without_an_exact_vectorised_metric_are_left_to_gx(gx_runner, arrow_type: pa.DataType) -> None:
    gx, _ = gx_runner
    for expectation in expectations_for(gx, between=(0, 1), multiple_of=5, regex="a", in_set=("a",)):
        if expectation.expectation_type != VALUES_NOT_NULL:
            kwargs = dict(expectation.configuration.kwargs)
            assert column_metric(expectation.expectation_type, kwargs, arrow_type) is None, expectation


def test_base_beyond_int64_raises_like_gx(gx_runner) -> None:
    gx, _ = gx_runner
    assert_parity(gx_runner, pa.array([10, 20], pa.int64()), expectations_for(gx, multiple_of=1e19))


# ---------------------------------------------------------------------------------------- hypothesis

# CE_HYPOTHESIS_EXAMPLES=600 for a longer hunt by hand
HYPOTHESIS = settings(max_examples=int(os.environ.get("CE_HYPOTHESIS_EXAMPLES", "40")), deadline=None,
                      suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

hex32 = st.from_regex(r"\A[0-9a-f]{32}\Z")
mutated_pseudonym = st.one_of(
    hex32, hex32.map(str.upper), hex32.map(lambda v: v + "\n"), hex32.map(lambda v: "\n" + v),
    hex32.map(lambda v: v[:31]), hex32.map(lambda v: v + "\n\n"), hex32.map(lambda v: v[:31] + "é"),
    hex32.map(lambda v: v.replace("a", "\u0430")))
text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=14)
shaped = st.one_of(st.from_regex(r"\A[0-9٣]{4}-[Qq]?[0-9]{1,2}\n?\Z"),
                   st.from_regex(r"\A[A-Za-zÉ]{1,3}[0-9]{0,2}[A-Z]? ?[0-9]?\n?\Z"))
strings = st.one_of(st.none(), mutated_pseudonym, text, shaped, st.sampled_from(LABELS),
                    st.sampled_from(IDENTIFIERS).map(lambda v: f" x {v.lower()}! "))


@HYPOTHESIS
@given(values=st.lists(strings, min_size=1, max_size=25),
       regex=st.sampled_from(sorted({**RULE_REGEXES, **EXTRA_REGEXES}.values())))
def test_strings_match_gx(gx_runner, token, values: list, regex: str) -> None:
    gx, _ = gx_runner
    expectations = [*expectations_for(gx, token=token, pseudonym_rule=True, not_null=True, leak="substring",
                                      in_set=LABELS),
                    *expectations_for(gx, column="w", regex=regex)]
    assert_parity(gx_runner, pa.array(values, pa.string()), expectations)


@HYPOTHESIS
@given(values=st.lists(strings, min_size=1, max_size=25))
def test_exact_leaks_match_gx(gx_runner, token, values: list) -> None:
    gx, _ = gx_runner
    assert_parity(gx_runner, pa.array(values, pa.large_string()), expectations_for(gx, token=token, leak="exact"))


bounds = st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(
    [0.0, -0.0, 0.5, 1850.0, 2027.0, 9007199254740992.0, 9.3e18, -9.3e18, 0.1, 1e300]))
bases = st.sampled_from([1.0, 2.0, 5.0, 10.0, 0.5, 0.25, 0.1, 0.3, 2.5, 7.0, 1e-3, 0.05, 1e18, 3.0e-5, 1.0e15,
                         1e-10, 7.5e-12])
int_values = st.integers(-(2**63), 2**63 - 1)
exact_ints = st.integers(-(2**53), 2**53)  # a null makes GX's frame float64: exact up to 2**53 only


def ordered(low: float | None, high: float | None) -> tuple[float | None, float | None]:
    assume(low is not None or high is not None)
    if low is not None and high is not None and low > high:
        low, high = high, low
    return low, high


@HYPOTHESIS
@given(data=st.one_of(st.lists(int_values, min_size=1, max_size=25),
                      st.lists(st.one_of(st.none(), exact_ints), min_size=1, max_size=25)),
       low=bounds, high=bounds, base=bases, arrow_type=st.sampled_from([pa.int64(), pa.int32(), pa.int16()]))
def test_integers_match_gx(gx_runner, data: list, low, high, base: float, arrow_type: pa.DataType) -> None:
    gx, _ = gx_runner
    bits = arrow_type.bit_width - 1
    values = [None if v is None else (v % 2**bits if v >= 0 else -((-v) % 2**bits)) for v in data]
    assert_parity(gx_runner, pa.array(values, arrow_type),
                  expectations_for(gx, between=ordered(low, high), multiple_of=base, not_null=True))


floats = st.one_of(st.none(), st.floats(), st.floats(-1e6, 1e6).map(lambda v: round(v, 2)),
                   st.integers(-(2**60), 2**60).map(float), st.sampled_from([0.1, 0.2, 0.3, 0.30000000000000004,
                                                                              2.675, 1e16, 2.0**53, -0.0, 5e-324]))


@HYPOTHESIS
@given(values=st.lists(floats, min_size=1, max_size=25), low=bounds, high=bounds, base=bases)
def test_floats_match_gx(gx_runner, values: list, low, high, base: float) -> None:
    gx, _ = gx_runner
    assert_parity(gx_runner, pa.array(values, pa.float64()),
                  expectations_for(gx, between=ordered(low, high), multiple_of=base, not_null=True))


@st.composite
def decimals(draw: Any) -> tuple[pa.DataType, list]:
    precision = draw(st.sampled_from([4, 8, 18, 30, 38]))
    scale = draw(st.integers(0, min(precision, 6)))
    limit = Decimal("9" * (precision - scale) + ("." + "9" * scale if scale else ""))  # the type's largest
    value = st.decimals(min_value=-limit, max_value=limit, places=scale, allow_nan=False,
                        allow_infinity=False).filter(lambda d: abs(d) <= limit)  # hypothesis rounds at 28 digits
    return pa.decimal128(precision, scale), draw(st.lists(st.one_of(st.none(), value), min_size=1, max_size=20))


@HYPOTHESIS
@given(typed=decimals(), low=bounds, high=bounds, base=bases)
def test_decimals_match_gx(gx_runner, typed: tuple[pa.DataType, list], low, high, base: float) -> None:
    gx, _ = gx_runner
    arrow_type, values = typed
    assert_parity(gx_runner, pa.array(values, arrow_type),
                  expectations_for(gx, between=ordered(low, high), multiple_of=base, not_null=True))


@settings(max_examples=300, deadline=None)
@given(pattern=st.sampled_from(sorted({**RULE_REGEXES, **EXTRA_REGEXES}.values())),
       values=st.lists(st.one_of(strings.filter(lambda v: v is not None), st.from_regex(r"\Aab|cd\n?\Z"),
                                 st.from_regex(r"\Aa.{0,3}z\n?\Z")), max_size=20))
def test_translated_regexes_agree_with_python_re(pattern: str, values: list) -> None:
    translated = python_regex_to_re2(pattern)
    found = pc.match_substring_regex(pa.array(values, pa.string()), pattern=translated).to_pylist()
    assert found == [re.search(pattern, v) is not None for v in values]


def test_multiples_of_never_reads_a_nan_as_a_value() -> None:
    metric = column_metric(MULTIPLES_OF, {"column": "v", "base": 5.0}, pa.float64())
    assert metric(pa.array([float("nan"), 10.0, 11.0])) == Counts(nulls=1, unexpected=1)

