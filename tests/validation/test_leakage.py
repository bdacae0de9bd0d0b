"""The leak check: raw source identifiers never appear in any output column, in any case or spacing."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from validation import leakage
from validation.leakage import IdentifierSample, leak_canonical
from validation.model import NOT_SOURCE_IDENTIFIER, ColumnRule, DatasetRules, DeliveryRules
from validation.release_gate import validate_delivery
from validation.staged_file import validate_parquet

SECRET = "AB123456C"
IDENTIFIERS = [f"AB{100000 + i}C" for i in range(50)] + [" ab 12 34 56 c ", "7", "42", "1234567", "12345678", None]


def pseudonym(i: int) -> str:
    return hashlib.md5(str(i).encode(), usedforsecurity=False).hexdigest()


def columns(n: int = 30) -> dict[str, list]:
    return {
        "person": [pseudonym(i) for i in range(n)],
        "region": ["North East" if i % 2 else "Wales" for i in range(n)],
        "note": [f"code {i}" for i in range(n)],
        "benefit": ["UC" for _ in range(n)],
        "amount": list(range(n)),
    }


RULES = DatasetRules("people", (
    ColumnRule("person", pseudonym=True, leak="exact"),
    ColumnRule("region", leak="substring"),
    ColumnRule("note", leak="substring"),
    ColumnRule("benefit", leak="substring"),
    ColumnRule("amount"),
))


def check(tmp_path: Path, data: dict[str, list], sample: IdentifierSample | None = None):
    path = tmp_path / "people.parquet"
    pq.write_table(pa.table(data), path)
    token = leakage.register(sample or IdentifierSample.from_values(IDENTIFIERS))
    try:
        return validate_parquet(path, RULES, batch_rows=7, leak_token=token)
    finally:
        leakage.unregister(token)


def leaks(summary) -> dict[str, int | None]:
    return {o.column: o.unexpected_count for o in summary.expectations if o.expectation == NOT_SOURCE_IDENTIFIER}


def test_clean_output_passes(tmp_path: Path) -> None:
    summary = check(tmp_path, columns())
    assert summary.success, summary.failures()
    assert leaks(summary) == {"person": 0, "region": 0, "note": 0, "benefit": 0}


@pytest.mark.parametrize("column", ["person", "region", "note", "benefit"])
@pytest.mark.parametrize("leaked", [SECRET, SECRET.lower(), "ab 12 34 56 c", "A B1 23 45 6C", "\tab123456c\u00a0",
                                    "AB\u2003123456C"],
                         ids=["as-is", "lower", "spaced", "odd-spacing", "tab-nbsp", "em-space"])
def test_a_leaked_identifier_is_caught_in_any_column_case_or_spacing(tmp_path: Path, column: str,
                                                                     leaked: str) -> None:
    data = columns()
    data[column][11] = leaked
    summary = check(tmp_path, data)
    assert not summary.success
    assert leaks(summary)[column] == 1
    assert {c for c, n in leaks(summary).items() if n} == {column}


@pytest.mark.parametrize("column", ["region", "note"])
def test_an_identifier_inside_free_text_is_caught(tmp_path: Path, column: str) -> None:
    data = columns()
    data[column][3] = "ref: Ab 123456 c (see file)"
    assert leaks(check(tmp_path, data))[column] == 1


def test_short_identifiers_are_counted_not_searched(tmp_path: Path) -> None:
    sample = IdentifierSample.from_values(IDENTIFIERS)
    assert sample.too_short == 3 and sample.drawn == len(IDENTIFIERS)
    assert sample.searched == 52  # 50 + the spaced secret, canonicalised + an 8-digit number
    data = columns()
    data["note"][0] = "42"  # equals a short integer id: not searched (would hit every number)
    data["note"][1] = "1234567"  # a 7-digit row id: not searched (numeric codes kept as text would collide)
    assert check(tmp_path, data, sample).success
    data["note"][2] = "12 345 678"
    assert leaks(check(tmp_path, data, sample))["note"] == 1
    facts = sample.facts()
    assert SECRET not in json.dumps(facts) and "42" not in json.dumps(facts)


def test_pseudonym_columns_are_matched_exactly_not_by_substring(tmp_path: Path) -> None:
    # A hex identifier that happens to occur inside a pseudonym is not a leak; an equal one is.
    inner = pseudonym(5)[3:15].upper()
    sample = IdentifierSample.from_values([inner, pseudonym(9)])
    summary = check(tmp_path, columns(), sample)
    assert leaks(summary)["person"] == 1  # pseudonym(9) itself


def test_nothing_leaks_into_results_logs_or_exceptions(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)
    data = columns()
    for name in ("person", "region", "note", "benefit"):
        data[name][2] = SECRET
    path = tmp_path / "people.parquet"
    pq.write_table(pa.table(data), path)
    result = validate_delivery({"people": path}, DeliveryRules(datasets=(RULES,)), batch_rows=5,
                               identifiers=IdentifierSample.from_values(IDENTIFIERS))
    assert not result.success
    assert not leakage._REGISTRY, "the identifier sample is dropped after the gate"
    configs = [json.dumps(o.config.to_json_dict()) for s in result.summaries for o in s.expectations]
    exposed = json.dumps(result.to_dict()) + repr(result) + caplog.text + "".join(configs) + str(result.failed())
    captured = capsys.readouterr()
    exposed += captured.out + captured.err
    for value in (SECRET, SECRET.lower(), "AB100000C"):
        assert value not in exposed


def test_canonicalisation() -> None:
    assert leak_canonical(["ab 12\u00a034\t56 c", None]).to_pylist() == ["AB123456C", None]


# ------------------------------------------------------------------------- fast paths, same answers

def _reference_canonical(values: list) -> list:
    """The definition: every RE2 white space character removed, Unicode upper case."""
    text = pa.array(values, pa.string())
    return pc.utf8_upper(pc.replace_substring_regex(text, pattern=leakage._WHITESPACE, replacement="")).to_pylist()


_TEXT = st.text(st.sampled_from(list("ab AB12\t\n\x0b\x0c\r\x1f\x85\u00a0\u2003éß\u0131Ω-")), max_size=12)


@settings(max_examples=300, deadline=None)
@given(values=st.lists(st.one_of(st.none(), _TEXT, st.from_regex(r"\A[0-9a-f]{32}\Z")), max_size=30))
def test_canonicalisation_fast_paths_equal_the_definition(values: list) -> None:
    assert leak_canonical(values).to_pylist() == _reference_canonical(values)
    ascii_only = [v if v is None else v.encode("ascii", "ignore").decode() for v in values]
    assert leak_canonical(ascii_only).to_pylist() == _reference_canonical(ascii_only)


@settings(max_examples=25, deadline=None)
@given(labels=st.lists(st.one_of(st.none(), _TEXT, st.sampled_from(IDENTIFIERS[-6:-1])), min_size=1, max_size=8),
       substring=st.booleans())
def test_searching_distinct_values_equals_searching_every_value(labels: list, substring: bool) -> None:
    sample = IdentifierSample.from_values(IDENTIFIERS)
    values = pa.array([labels[i % len(labels)] for i in range(20_000)], pa.string())  # few distinct: dictionary mode
    one_by_one = sample._leaked(values, substring)
    assert (sample.leaked(values, substring=substring) == one_by_one).all()
    assert (sample.leaked(values.to_pylist(), substring=substring) == one_by_one).all()  # GX's wrapper: a list


def test_short_values_skip_the_substring_search_without_changing_the_answer() -> None:
    sample = IdentifierSample.from_values(["AB123456C", "12345678"])
    assert sample.shortest_pattern == 8
    values = pa.array(["AB12345", "xAB123456Cx", "1234 5678", None, ""])
    assert sample.leaked(values, substring=True).tolist() == [False, True, True, False, False]
