"""Aggregate tables: thresholds, secondary suppression, rounding, dominance, grossing."""

from __future__ import annotations

import random
import tempfile
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts.disclosure import Aggregate
from core.errors import ContractError
from disclosure.tables import (
    build_table,
    pinned_at_threshold,
    recoverable,
    recoverable_in_table,
    round_to_base,
)
from tests.disclosure.helpers import write


def aggregate(**kwargs) -> Aggregate:
    spec = {"name": "t", "dataset": "d", "measures": ["count"], **kwargs}
    return Aggregate.model_validate(spec)


def line_equations(table: pa.Table, by: list[str]) -> list[list[int]]:
    """Every additive line of the published table as row indices: members…, total (last)."""
    rows = table.to_pylist()
    key = {}
    for i, r in enumerate(rows):
        over = set(filter(None, r["total_over"].split(",")))
        key[tuple(("T",) if d in over else ("v", r[d]) for d in by)] = i
    lines = []
    for k, i in key.items():
        for d, part in enumerate(k):
            if part[0] == "T":
                members = [j for k2, j in key.items()
                           if k2[d][0] == "v" and all(k2[e] == k[e] for e in range(len(by)) if e != d)]
                if members:
                    lines.append([*members, i])
    return lines


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(st.tuples(st.sampled_from(["a", "b", "c", "d"]), st.sampled_from(["F", "M", None]),
                               st.sampled_from(["x", "y"])), min_size=0, max_size=120),
       threshold=st.integers(2, 12), base=st.sampled_from([1, 3, 5, 10]), dims=st.integers(1, 3))
def test_table_rules_hold(rows, threshold, base, dims) -> None:
    by = ["region", "sex", "kind"][:dims]
    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp), {"region": [r[0] for r in rows], "sex": [r[1] for r in rows],
                                 "kind": [r[2] for r in rows]}, {"sex": pa.string()})
        result = build_table(path, aggregate(by=by, threshold=threshold, rounding=base))
    table = result.table
    true_counts = Counter()
    for r in rows:
        values = dict(zip(["region", "sex", "kind"], r, strict=True))
        for mask in range(1 << dims):
            cell = tuple(("T",) if (mask >> j) & 1 else ("v", values[d]) for j, d in enumerate(by))
            true_counts[cell] += 1
    published = table.to_pylist()
    assert len(published) == len(true_counts)
    for r in published:
        over = set(filter(None, r["total_over"].split(",")))
        cell = tuple(("T",) if d in over else ("v", r[d]) for d in by)
        units = true_counts[cell]
        if r["suppressed"]:
            assert r["count"] is None
        else:
            assert units >= threshold, "no published cell below the threshold"
            assert r["count"] % base == 0, "every published count is a multiple of the rounding base"
            assert r["count"] == round_to_base(units, base)
    # No suppressed cell can be recovered from a single row/column equation.
    for line in line_equations(table, by):
        assert sum(published[i]["suppressed"] for i in line) != 1
    assert recoverable_in_table(table, by) == 0
    assert recoverable(result.cells, dims) == 0


def test_secondary_suppression_on_a_two_way_table(tmp_path: Path) -> None:
    # region a has 3 women (below 10): primary. Its row and column then need a second suppression.
    rows = [("a", "F")] * 3 + [("a", "M")] * 20 + [("b", "F")] * 15 + [("b", "M")] * 30 + [("c", "F")] * 12 \
        + [("c", "M")] * 11
    path = write(tmp_path, {"region": [r[0] for r in rows], "sex": [r[1] for r in rows]})
    result = build_table(path, aggregate(by=["region", "sex"]))
    s = result.summary
    assert s["suppressed_small"] == 1 and s["suppressed_secondary"] >= 3
    table = result.table.to_pylist()
    suppressed = {(r["region"], r["sex"], r["total_over"]) for r in table if r["suppressed"]}
    assert ("a", "F", "") in suppressed
    # The grand total and the margins stay published when inner cells can carry the protection.
    assert (None, None, "region,sex") not in suppressed
    assert recoverable_in_table(result.table, ["region", "sex"]) == 0


def test_dominance_suppresses_sums(tmp_path: Path) -> None:
    amounts = [1.0] * 20 + [1000.0] + [5.0] * 20
    regions = ["a"] * 21 + ["b"] * 20
    path = write(tmp_path, {"region": regions, "amount": amounts})
    result = build_table(path, aggregate(by=["region"], measures=["count", {"sum": "amount"}, {"mean": "amount"}],
                                         dominance=0.5))
    rows = {(r["region"], r["total_over"]): r for r in result.table.to_pylist()}
    assert rows[("a", "")]["suppressed"] and rows[("a", "")]["sum_amount"] is None
    assert result.summary["suppressed_dominance"] >= 1
    assert recoverable_in_table(result.table, ["region"]) == 0


def test_units_are_distinct_people_and_grossing_uses_the_fraction(tmp_path: Path) -> None:
    rnd = random.Random(1)
    people = [f"p{i}" for i in range(40)]
    rows = [(p, "a" if i < 25 else "b") for i, p in enumerate(people) for _ in range(rnd.randint(1, 4))]
    path = write(tmp_path, {"person": [r[0] for r in rows], "region": [r[1] for r in rows],
                            "amount": [10.0] * len(rows)})
    result = build_table(path, aggregate(by=["region"], unit="person", rounding=1, threshold=5,
                                         measures=["count", {"sum": "amount"}]), fraction=0.25)
    rows_out = {(r["region"], r["total_over"]): r for r in result.table.to_pylist()}
    assert rows_out[("a", "")]["count"] == 25 * 4  # 25 people, grossed by 1/0.25
    assert rows_out[(None, "region")]["count"] == 40 * 4
    assert result.summary["grossed"] == {"by": "inverse sampling fraction", "factor": 4.0}


@pytest.mark.parametrize(("units", "pinned"), [(5, True), (6, False), (7, False), (40, False)],
                         ids=["5-units-round-to-0-only-5-is-possible", "6-units", "7-units", "40-units"])
def test_a_grossed_count_that_pins_its_sample_count_at_the_threshold_is_withheld(
        tmp_path: Path, units: int, pinned: bool) -> None:
    """Sampling fraction 0.0991 (×10.09), rounding 10 (count base 110), threshold 5: 5 units gross to 50.5, which
    rounds to 0, and 5 is the only sample count at or above the threshold that rounds to 0: published, the cell
    would give its sample count back. Found by the random-table intruder test."""
    factor = 1 / 0.0991
    assert pinned_at_threshold(units * factor, 110, factor, 5) is pinned
    path = write(tmp_path, {"region": ["a"] * units + ["b"] * 40})
    result = build_table(path, aggregate(by=["region"], rounding=10, threshold=5), fraction=0.0991)
    cell = next(r for r in result.table.to_pylist() if r["region"] == "a")
    assert cell["suppressed"] is pinned
    assert cell["count"] is None if pinned else cell["count"] == round_to_base(units * factor, 110)


def test_weights_gross_the_counts(tmp_path: Path) -> None:
    path = write(tmp_path, {"region": ["a"] * 12, "w": [2.5] * 12})
    result = build_table(path, aggregate(by=["region"], weight="w", rounding=5))
    counts = [r["count"] for r in result.table.to_pylist()]
    assert counts == [30, 30]


def test_measures_must_be_numeric(tmp_path: Path) -> None:
    path = write(tmp_path, {"region": ["a"], "label": ["x"]})
    with pytest.raises(ContractError, match="numeric"):
        build_table(path, aggregate(by=["region"], measures=[{"sum": "label"}]))


def test_without_margins_only_inner_cells(tmp_path: Path) -> None:
    path = write(tmp_path, {"region": ["a"] * 12 + ["b"] * 3})
    result = build_table(path, aggregate(by=["region"], margins=False))
    assert [(r["region"], r["suppressed"]) for r in result.table.to_pylist()] == [("a", False), ("b", True)]
    assert set(pq.read_schema(path).names) == {"region"}
