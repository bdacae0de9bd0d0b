"""The Great Expectations adapter: the one private GX call, pinned to the GX version in constraints.txt.

``gx_adapter.decide`` calls ``Expectation._validate`` (private API) so that GX decides on metrics the gate
computed in bounded memory. These tests pin what that call does on the pinned version: it decides as a
full GX validation of the same data does, it reads the metric names the adapter writes, and it echoes the
counts it was given. On any other GX version the first test fails with what to do, and the adapter
itself refuses to run (``ConfigError``) rather than decide with semantics nobody checked.
"""

from __future__ import annotations

import ast
import gc
import importlib.metadata
import re
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from core.errors import ConfigError
from validation import gx_adapter
from validation.gx_adapter import (
    PINNED_GX_VERSION,
    RESULT_FORMAT,
    GxRunner,
    build_expectation,
    decide,
    decide_on_map_metrics,
    import_gx,
    make_suite,
    map_metrics,
    to_pandas,
)
from validation.model import (
    CELLS_NOT_RECOVERABLE,
    ROW_COUNT_BETWEEN,
    ROW_COUNT_EQUAL,
    VALUE_LENGTHS_EQUAL,
    VALUES_BETWEEN,
    VALUES_IN_SET,
    VALUES_MATCH_REGEX,
    VALUES_NOT_NULL,
    VALUES_UNIQUE,
)

ROOT = Path(__file__).resolve().parents[2]


def constraints_pin() -> str:
    match = re.search(r"^great[-_]expectations==(\S+)", (ROOT / "constraints.txt").read_text(), re.MULTILINE)
    assert match, "constraints.txt pins no great-expectations version"
    return match.group(1)


@pytest.fixture(scope="module")
def runner() -> GxRunner:
    return GxRunner()


def test_the_installed_gx_is_the_pinned_version() -> None:
    installed = importlib.metadata.version("great_expectations")
    pinned = constraints_pin()
    assert installed == pinned == PINNED_GX_VERSION, (
        f"Great Expectations {installed} is installed, constraints.txt pins {pinned} and "
        f"validation/gx_adapter.py is pinned to {PINNED_GX_VERSION}. The release gate calls GX's private "
        "Expectation._validate (gx_adapter.decide): re-run tests/validation/test_gx_adapter.py on the new "
        "version, check what _validate reads and returns there, then move both pins together.")


def test_decide_is_the_one_call_into_gx_private_api() -> None:
    calls = [f"{path.name}:{node.lineno}" for path in sorted((ROOT / "validation").glob("*.py"))
             for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "_validate"]
    assert len(calls) == 1 and calls[0].startswith("gx_adapter.py:"), calls


def test_the_adapter_refuses_another_gx_version(monkeypatch: pytest.MonkeyPatch) -> None:
    expectation = build_expectation(ROW_COUNT_EQUAL, {"value": 1})
    monkeypatch.setattr(gx_adapter, "installed_gx_version", lambda: "1.99.0")
    for call in (import_gx, lambda: decide(expectation, {"table.row_count": 1}), GxRunner):
        with pytest.raises(ConfigError) as refused:
            call()
        message = str(refused.value)
        assert "1.99.0" in message and PINNED_GX_VERSION in message, message
        assert "_validate" in message


def test_gx_is_imported_without_the_collector_and_what_it_built_is_frozen() -> None:
    """``imported_without_gc`` (import_gx's first import): the collector paused inside, its state restored
    after, and every object alive at the end moved to the permanent generation (skipped by later collections)."""
    before = gc.get_freeze_count()
    was_enabled = gc.isenabled()
    try:
        gc.enable()
        with gx_adapter.imported_without_gc():
            assert not gc.isenabled()
            built = [[i] for i in range(1000)]  # containers, tracked by the collector like imported classes
        assert gc.isenabled()
        assert gc.get_freeze_count() >= before + len(built)
        gc.disable()
        with gx_adapter.imported_without_gc():
            pass
        assert not gc.isenabled()  # a collector the caller had paused stays paused
    finally:
        gc.unfreeze()
        if was_enabled:
            gc.enable()


def test_import_gx_brings_the_custom_expectations_with_it() -> None:
    gx = import_gx()
    assert gx is sys.modules["great_expectations"] and gx.__version__ == PINNED_GX_VERSION
    assert "validation.expectations" in sys.modules
    assert import_gx() is gx  # later calls: the imported module, version still checked


# The same column "v" seen by a full GX validation and by ``decide`` on counts of it.
COLUMNS: dict[str, pa.Array] = {
    "strings": pa.array(["a", "b", "c", None, "a"]),
    "all-null": pa.array([None, None], pa.string()),
    "empty": pa.array([], pa.string()),
    "numbers": pa.array([1.0, 2.5, None, 7.0, float("nan")]),
}
STRING_SPECS: list[tuple[str, dict[str, Any]]] = [
    (VALUES_IN_SET, {"value_set": ["a", "b"]}),
    (VALUES_IN_SET, {"value_set": ["a", "b"], "mostly": 0.7}),
    (VALUES_IN_SET, {"value_set": ["a", "b"], "mostly": 0.8}),
    (VALUES_MATCH_REGEX, {"regex": "^a$"}),
    (VALUE_LENGTHS_EQUAL, {"value": 1}),
    (VALUES_NOT_NULL, {}),
    (VALUES_NOT_NULL, {"mostly": 0.8}),
    (VALUES_UNIQUE, {}),
]
NUMBER_SPECS: list[tuple[str, dict[str, Any]]] = [
    (VALUES_BETWEEN, {"min_value": 0.0, "max_value": 5.0}),
    (VALUES_BETWEEN, {"min_value": 0.0, "max_value": 5.0, "mostly": 0.6}),
    (VALUES_NOT_NULL, {"mostly": 0.5}),
]


@pytest.mark.parametrize("name", list(COLUMNS))
def test_map_decisions_equal_a_full_gx_validation(runner: GxRunner, name: str) -> None:
    column = COLUMNS[name]
    frame = to_pandas(pa.table({"v": column}))
    rows, nulls = len(frame), int(frame["v"].isnull().sum())
    specs = NUMBER_SPECS if pa.types.is_floating(column.type) else STRING_SPECS
    for kind, kwargs in specs:
        expectation = build_expectation(kind, {"column": "v", **kwargs})
        full = runner.validate(frame, make_suite("pin", [expectation]))[(kind, "v")]
        assert not full.errored and full.unexpected is not None, (name, kind, kwargs)
        decided = decide_on_map_metrics(expectation, rows=rows, nulls=nulls, unexpected=full.unexpected)
        assert decided is full.success, (name, kind, kwargs)


def test_a_map_decision_reads_the_adapters_metric_names_and_echoes_them() -> None:
    expectation = build_expectation(VALUES_IN_SET, {"column": "v", "value_set": ["a"], "mostly": 0.5})
    metrics = map_metrics(expectation, rows=10, nulls=2, unexpected=3)
    assert set(metrics) == {"table.row_count", "column_values.nonnull.unexpected_count",
                            "column_values.in_set.unexpected_count", "column_values.in_set.unexpected_values"}
    decision = decide(expectation, metrics, result_format=RESULT_FORMAT)
    assert decision.success is True  # 5 of 8 non-null values expected: mostly 0.5 holds
    assert (decision.result["element_count"], decision.result["unexpected_count"],
            decision.result["missing_count"]) == (10, 3, 2)
    assert decision.result["partial_unexpected_list"] == []  # no values, ever
    assert decide(expectation, map_metrics(expectation, rows=10, nulls=2, unexpected=5),
                  result_format=RESULT_FORMAT).success is False
    # Without the unexpected count GX passes vacuously: why decide_on_map_metrics insists on the echo.
    vacuous = decide(expectation, {"table.row_count": 10, "column_values.nonnull.unexpected_count": 2},
                     result_format=RESULT_FORMAT)
    assert vacuous.success is True and vacuous.result.get("unexpected_count") is None


@pytest.mark.parametrize("rows", range(5))
def test_row_count_decisions_equal_a_full_gx_validation(runner: GxRunner, rows: int) -> None:
    frame = to_pandas(pa.table({"v": pa.array(["x"] * rows)}))
    for kind, kwargs in [(ROW_COUNT_BETWEEN, {"min_value": 1, "max_value": 3}), (ROW_COUNT_BETWEEN, {"min_value": 0}),
                         (ROW_COUNT_EQUAL, {"value": 2})]:
        expectation = build_expectation(kind, kwargs)
        full = runner.validate(frame, make_suite("rows", [expectation]))[(kind, None)]
        assert decide(expectation, {"table.row_count": rows}).success is full.success, (kind, kwargs, rows)


def test_custom_expectations_decide_through_the_same_call() -> None:
    expectation = build_expectation(CELLS_NOT_RECOVERABLE, {"by": ["region"]})
    assert decide(expectation, {"table.recoverable_cells": 0}).success is True
    refused = decide(expectation, {"table.recoverable_cells": 2})
    assert refused.success is False
    assert refused.result["observed_value"] == "2 withheld cell(s) recoverable or proved small"
