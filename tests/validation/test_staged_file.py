"""One staged file through the Great Expectations gate: each failure kind is detected and named, without values."""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.errors import ConfigError, StageFailed, ValidationFailed
from validation import (
    PSEUDONYM_REGEX,
    ColumnRule,
    DatasetRules,
    ExpectationOutcome,
    ValidationSummary,
    build_suite,
    validate_parquet,
)
from validation.gx_adapter import GxRunner, import_gx
from validation.model import (
    COLUMNS_MATCH_ORDERED_LIST,
    OBSERVED_COLUMN_MISSING,
    ROW_COUNT_BETWEEN,
    VALUE_LENGTHS_EQUAL,
    VALUES_MATCH_REGEX,
    VALUES_NOT_NULL,
)

SECRET = "AB123456C"  # looks like a National Insurance number: must never leave the data

RULES = DatasetRules(
    dataset="people",
    columns=(
        ColumnRule("person_id", pseudonym=True, not_null=True),
        ColumnRule("household_id", pseudonym=True),
        ColumnRule("age_band", not_null=True),
        ColumnRule("region"),
    ),
    min_rows=1,
    max_rows=100,
)


def pseudonym(i: int) -> str:
    return hashlib.md5(str(i).encode(), usedforsecurity=False).hexdigest()


def good_columns(n: int) -> dict[str, list]:
    return {
        "person_id": [pseudonym(i) for i in range(n)],
        "household_id": [pseudonym(10_000 + i) if i % 3 else None for i in range(n)],  # nulls allowed
        "age_band": [f"{(i % 8) * 10}-{(i % 8) * 10 + 9}" for i in range(n)],
        "region": [None if i % 5 == 0 else "north" for i in range(n)],
    }


def write(tmp_path: Path, columns: dict[str, list], *, row_group_size: int | None = None,
          name: str = "staged.parquet") -> Path:
    path = tmp_path / name
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


def outcome(summary: ValidationSummary, expectation: str, column: str | None = None) -> ExpectationOutcome:
    matches = [e for e in summary.expectations if e.expectation == expectation and e.column == column]
    assert len(matches) == 1, (expectation, column, summary.expectations)
    return matches[0]


def failed(summary: ValidationSummary) -> set[tuple[str, str | None]]:
    return {(f.expectation, f.column) for f in summary.failures()}


# ------------------------------------------------------------------------------------------- passing


def test_passing_dataset(tmp_path: Path) -> None:
    summary = validate_parquet(write(tmp_path, good_columns(40)), RULES)

    assert summary.success
    assert summary.rows == 40
    assert summary.failures() == []
    assert [(e.expectation, e.column) for e in summary.expectations] == [
        (COLUMNS_MATCH_ORDERED_LIST, None),
        (ROW_COUNT_BETWEEN, None),
        (VALUES_MATCH_REGEX, "person_id"),
        (VALUE_LENGTHS_EQUAL, "person_id"),
        (VALUES_NOT_NULL, "person_id"),
        (VALUES_MATCH_REGEX, "household_id"),
        (VALUE_LENGTHS_EQUAL, "household_id"),
        (VALUES_NOT_NULL, "age_band"),
    ]
    assert all(e.unexpected_count == 0 for e in summary.expectations if e.column)
    assert outcome(summary, ROW_COUNT_BETWEEN).observed == "40"
    assert json.loads(outcome(summary, COLUMNS_MATCH_ORDERED_LIST).observed) == [
        "person_id", "household_id", "age_band", "region"]
    data = summary.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["success"] is True and data["failed"] == 0 and data["evaluated"] == 8
    summary.raise_if_failed()  # no exception


def test_build_suite_is_derived_from_the_rules() -> None:
    suite = build_suite(RULES)
    found = [(e.expectation_type, getattr(e, "column", None)) for e in suite.expectations]
    assert found == [(e.expectation, e.column) for e in (
        ExpectationOutcome(COLUMNS_MATCH_ORDERED_LIST, None, True, None, None),
        ExpectationOutcome(ROW_COUNT_BETWEEN, None, True, None, None),
        ExpectationOutcome(VALUES_MATCH_REGEX, "person_id", True, None, None),
        ExpectationOutcome(VALUE_LENGTHS_EQUAL, "person_id", True, None, None),
        ExpectationOutcome(VALUES_NOT_NULL, "person_id", True, None, None),
        ExpectationOutcome(VALUES_MATCH_REGEX, "household_id", True, None, None),
        ExpectationOutcome(VALUE_LENGTHS_EQUAL, "household_id", True, None, None),
        ExpectationOutcome(VALUES_NOT_NULL, "age_band", True, None, None),
    )]
    by_type = {e.expectation_type: e for e in suite.expectations}
    assert by_type[COLUMNS_MATCH_ORDERED_LIST].column_list == [c.name for c in RULES.columns]
    assert (by_type[ROW_COUNT_BETWEEN].min_value, by_type[ROW_COUNT_BETWEEN].max_value) == (1, 100)
    assert by_type[VALUES_MATCH_REGEX].regex == PSEUDONYM_REGEX
    assert by_type[VALUE_LENGTHS_EQUAL].value == 32


# ------------------------------------------------------------------------------------ table failures


def test_wrong_column_order(tmp_path: Path) -> None:
    cols = good_columns(10)
    reordered = {k: cols[k] for k in ("household_id", "person_id", "age_band", "region")}
    summary = validate_parquet(write(tmp_path, reordered), RULES)

    assert not summary.success
    assert failed(summary) == {(COLUMNS_MATCH_ORDERED_LIST, None)}
    assert json.loads(outcome(summary, COLUMNS_MATCH_ORDERED_LIST).observed) == list(reordered)


def test_extra_column(tmp_path: Path) -> None:
    cols = {**good_columns(10), "date_of_birth": ["1970-01-01"] * 10}
    summary = validate_parquet(write(tmp_path, cols), RULES)

    assert failed(summary) == {(COLUMNS_MATCH_ORDERED_LIST, None)}
    assert "date_of_birth" in json.loads(outcome(summary, COLUMNS_MATCH_ORDERED_LIST).observed)


def test_missing_column(tmp_path: Path) -> None:
    cols = good_columns(10)
    del cols["person_id"]
    summary = validate_parquet(write(tmp_path, cols), RULES)

    assert failed(summary) == {
        (COLUMNS_MATCH_ORDERED_LIST, None),
        (VALUES_MATCH_REGEX, "person_id"),
        (VALUE_LENGTHS_EQUAL, "person_id"),
        (VALUES_NOT_NULL, "person_id"),
    }
    missing = outcome(summary, VALUES_NOT_NULL, "person_id")
    assert missing.unexpected_count is None and missing.observed == OBSERVED_COLUMN_MISSING
    assert outcome(summary, VALUES_MATCH_REGEX, "household_id").success  # the rest still evaluated


def test_stored_pandas_index_counts_as_an_extra_column(tmp_path: Path) -> None:
    path = tmp_path / "staged.parquet"
    pd.DataFrame(good_columns(6), index=[f"r{i}" for i in range(6)]).to_parquet(path)
    summary = validate_parquet(path, RULES)
    assert failed(summary) == {(COLUMNS_MATCH_ORDERED_LIST, None)}


@pytest.mark.parametrize(("rows", "min_rows", "max_rows"), [(11, 1, 10), (4, 5, None)],
                         ids=["too-many-rows", "too-few-rows"])
def test_row_count_outside_bounds(tmp_path: Path, rows: int, min_rows: int, max_rows: int | None) -> None:
    rules = DatasetRules(RULES.dataset, RULES.columns, min_rows=min_rows, max_rows=max_rows)
    summary = validate_parquet(write(tmp_path, good_columns(rows)), rules)

    assert failed(summary) == {(ROW_COUNT_BETWEEN, None)}
    assert outcome(summary, ROW_COUNT_BETWEEN).observed == str(rows)
    assert summary.rows == rows


def test_row_count_decision_matches_a_full_gx_validation(tmp_path: Path) -> None:
    """The footer row count goes through the expectation's own decision: pin it to GX's full path."""
    gx = import_gx()
    runner = GxRunner()  # a plain GX ephemeral context, progress bars off
    for min_rows, max_rows in [(2, 4), (0, None), (3, 3)]:
        rules = DatasetRules(RULES.dataset, RULES.columns, min_rows=min_rows, max_rows=max_rows)
        suite = gx.ExpectationSuite(name=f"pin{min_rows}{max_rows}", expectations=[
            gx.expectations.ExpectTableRowCountToBeBetween(min_value=min_rows, max_value=max_rows)])
        for rows in range(6):
            frame = pd.DataFrame(good_columns(rows))
            expected = runner.validate(frame, suite)[(ROW_COUNT_BETWEEN, None)]
            summary = validate_parquet(write(tmp_path, good_columns(rows)), rules)
            assert outcome(summary, ROW_COUNT_BETWEEN).success is expected.success, (min_rows, max_rows, rows)


# ----------------------------------------------------------------------------------- value failures


@pytest.mark.parametrize(
    ("bad", "regex_fails"),
    [
        (pseudonym(1).upper(), True),
        (pseudonym(1)[:31], True),
        (pseudonym(1) + pseudonym(2), True),
        (pseudonym(1) + "\n", None),  # "$" matches before a final newline: the length check catches it
    ],
    ids=["uppercase-hex", "31-chars", "64-chars", "trailing-newline"],
)
def test_bad_pseudonym_format(tmp_path: Path, bad: str, regex_fails: bool | None) -> None:
    cols = good_columns(20)
    cols["household_id"][7] = bad
    summary = validate_parquet(write(tmp_path, cols), RULES)

    assert not summary.success
    assert {c for _, c in failed(summary)} == {"household_id"}
    if regex_fails:
        assert outcome(summary, VALUES_MATCH_REGEX, "household_id").unexpected_count == 1
    assert outcome(summary, VALUE_LENGTHS_EQUAL, "household_id").unexpected_count == (
        0 if len(bad) == 32 else 1)


def test_null_in_not_null_column(tmp_path: Path) -> None:
    cols = good_columns(20)
    cols["person_id"][3] = None
    cols["age_band"][4] = None
    cols["age_band"][9] = None
    summary = validate_parquet(write(tmp_path, cols), RULES)

    assert failed(summary) == {(VALUES_NOT_NULL, "person_id"), (VALUES_NOT_NULL, "age_band")}
    assert outcome(summary, VALUES_NOT_NULL, "person_id").unexpected_count == 1
    assert outcome(summary, VALUES_NOT_NULL, "age_band").unexpected_count == 2
    assert outcome(summary, VALUES_MATCH_REGEX, "person_id").success  # a null is not a format error


def test_counts_are_summed_across_batches(tmp_path: Path) -> None:
    rows = 1_000
    cols = good_columns(rows)
    bad_rows = [0, 63, 64, 200, 511, 512, 999]  # on batch edges and in different row groups
    for i in bad_rows:
        cols["person_id"][i] = pseudonym(i).upper()
    null_rows = [1, 65, 300, 700, 998]
    for i in null_rows:
        cols["age_band"][i] = None
    path = write(tmp_path, cols, row_group_size=300)
    rules = DatasetRules(RULES.dataset, RULES.columns, min_rows=1, max_rows=None)

    batched = validate_parquet(path, rules, batch_rows=64)  # 16 batches
    assert batched.rows == rows
    assert outcome(batched, VALUES_MATCH_REGEX, "person_id").unexpected_count == len(bad_rows)
    assert outcome(batched, VALUE_LENGTHS_EQUAL, "person_id").unexpected_count == 0
    assert outcome(batched, VALUES_NOT_NULL, "age_band").unexpected_count == len(null_rows)
    assert failed(batched) == {(VALUES_MATCH_REGEX, "person_id"), (VALUES_NOT_NULL, "age_band")}
    assert validate_parquet(path, rules, batch_rows=rows) == batched  # same answer in one batch


def test_empty_file(tmp_path: Path) -> None:
    schema = pa.schema([(c.name, pa.string()) for c in RULES.columns])
    path = tmp_path / "empty.parquet"
    pq.write_table(schema.empty_table(), path)

    zero_allowed = DatasetRules(RULES.dataset, RULES.columns, min_rows=0, max_rows=10)
    summary = validate_parquet(path, zero_allowed)
    assert summary.success and summary.rows == 0
    assert all(e.unexpected_count == 0 for e in summary.expectations if e.column)
    assert json.loads(outcome(summary, COLUMNS_MATCH_ORDERED_LIST).observed) == schema.names

    summary = validate_parquet(path, RULES)  # min_rows=1
    assert failed(summary) == {(ROW_COUNT_BETWEEN, None)}
    assert outcome(summary, ROW_COUNT_BETWEEN).observed == "0"


# --------------------------------------------------------------------------------------- no values


def test_planted_secret_never_leaves_the_data(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)
    cols = good_columns(30)
    cols["person_id"][5] = SECRET  # bad pseudonym format
    cols["household_id"][6] = SECRET
    cols["region"][7] = SECRET  # not checked, but read by nothing that reports
    cols["extra"] = [SECRET] * 30  # an extra column full of it

    summary = validate_parquet(write(tmp_path, cols), RULES, batch_rows=8)

    assert failed(summary) == {
        (COLUMNS_MATCH_ORDERED_LIST, None),
        (VALUES_MATCH_REGEX, "person_id"),
        (VALUE_LENGTHS_EQUAL, "person_id"),
        (VALUES_MATCH_REGEX, "household_id"),
        (VALUE_LENGTHS_EQUAL, "household_id"),
    }
    with pytest.raises(ValidationFailed) as raised:
        summary.raise_if_failed()
    captured = capsys.readouterr()
    exposed = {
        "repr": repr(summary),
        "str": str(summary),
        "json": json.dumps(summary.to_dict()),
        "failures": repr(summary.failures()),
        "exception": str(raised.value) + repr(raised.value.failures),
        "logs": caplog.text + repr([r.args for r in caplog.records]),
        "stdout": captured.out,
        "stderr": captured.err,
    }
    for where, text in exposed.items():
        assert SECRET not in text, where
        assert SECRET.lower() not in text.lower(), where
    assert "people" in exposed["exception"] and "person_id" in exposed["exception"]


def test_foreign_errors_become_value_free_stage_failures(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.parquet"
    path.write_bytes(b"PAR1" + SECRET.encode() * 50)

    with pytest.raises(StageFailed) as raised:
        validate_parquet(path, RULES)
    assert SECRET not in str(raised.value)
    assert raised.value.__cause__ is None and raised.value.__context__ is None  # nothing chained


# ---------------------------------------------------------------------------------------- hygiene


def test_rules_are_checked() -> None:
    with pytest.raises(ConfigError):
        DatasetRules("d", (ColumnRule("a"), ColumnRule("a")))
    with pytest.raises(ConfigError):
        DatasetRules("d", (ColumnRule("a"),), min_rows=5, max_rows=4)
    with pytest.raises(ConfigError):
        DatasetRules("d", ())
    with pytest.raises(ConfigError):
        validate_parquet(Path("unused.parquet"), RULES, batch_rows=0)


def test_import_is_lazy_quiet_and_airflow_free() -> None:
    code = textwrap.dedent("""
        import logging, os, sys
        import validation as v
        assert "great_expectations" not in sys.modules, "GX imported at module import time"
        v.build_suite(v.DatasetRules("d", (v.ColumnRule("a", pseudonym=True),)))
        assert "great_expectations" in sys.modules
        assert os.environ["GX_ANALYTICS_ENABLED"] == "false"
        assert logging.getLogger("great_expectations").getEffectiveLevel() >= logging.WARNING
        loud = [n for n, lg in logging.Logger.manager.loggerDict.items()
                if n.startswith("great_expectations") and isinstance(lg, logging.Logger)
                and lg.getEffectiveLevel() < logging.WARNING]
        assert not loud, loud
        airflow = [m for m in sys.modules if m == "airflow" or m.startswith("airflow.")]
        assert not airflow, airflow
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr

