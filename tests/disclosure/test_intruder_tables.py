"""Tables that cannot be undone: the intruder's attacks on published aggregate tables.

The issue's attacks on the demo output worked on every cell: count = sum / mean gave the exact count in 88 of 88
inner cells; with grossing (×10.09, rounded to 5) count / 10.09 gave the sample count in 88 of 88; two suppressed
cells of one row together held 9 units, below the threshold 10. Here the same attacks (tests.disclosure.
table_attacks: ratios, grossing, differencing with the margins, linear-programming bounds over every line) run on

* real pipeline output: a sampled contract (grossed) and a 100% contract, aggregate-only deliveries received
  and decrypted as the recipient does, judged against true counts computed independently from the source;
* random tables of every shape (counts, sums, means, margins, grossing by fraction or weight, distinct units);

and, through tests/disclosure/conftest.py, on every other table the disclosure tests build.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts.disclosure import Aggregate
from core.errors import ContractExtractsError
from demo.synthetic import write_demo_source
from disclosure.tables import (
    PublishedTable,
    build_table,
    build_tables,
    count_base,
    exposed_across_tables,
    round_to_base,
)
from masking.keys import derive_key, load_master_key_file
from masking.sampling import fraction_cut, ranks
from tests.conftest import Workspace
from tests.disclosure.helpers import write
from tests.disclosure.intruder import RECIPIENT, edit_contract, pipeline, receive, run_through
from tests.disclosure.table_attacks import TrueCell, attack, attack_together, cell_key

PEOPLE = 6000
FRACTION = 0.1
BY_REGION_SEX = {"name": "claimants_by_region_sex", "dataset": "claimants", "by": ["region", "sex"],
                 "measures": ["count", {"sum": "weekly_amount"}, {"mean": "weekly_amount"}], "threshold": 10,
                 "rounding": 5}
BY_BENEFIT_REGION = {"name": "claimants_by_benefit_region", "dataset": "claimants", "by": ["benefit_code", "region"],
                     "measures": ["count", {"mean": "weekly_amount"}], "threshold": 10, "rounding": 5}


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('source') / 'claims.sqlite'}"
    write_demo_source(url, n_people=PEOPLE)
    return url


def source_rows(url: str, where: str = "") -> list[dict[str, Any]]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(sa.text(
            f"SELECT id, region, sex, benefit_code, weekly_amount, claim_start, date_of_birth FROM claimants {where}"))]
    engine.dispose()
    return rows


def sampled(workspace: Workspace, contract: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The claimants the contract's sample keeps (format v1 sampling, with the test's master key)."""
    master = load_master_key_file(workspace.keys["master"])
    key = derive_key(master.secret, "sample", contract)
    valid, drawn = ranks(pa.array([r["id"] for r in rows], pa.int64()), canonicaliser="integer", key=key,
                         entity="claimant")
    assert valid.all()
    cut = fraction_cut(FRACTION)
    return [r for r, rank in zip(rows, drawn.tolist(), strict=True) if rank < cut]


def true_cells(rows: list[dict[str, Any]], by: list[str], factor: float, averaged: str | None) -> dict:
    """Every cell (inner and margins) of the true table: units, grossed count, grossed non-empty values."""
    units: Counter = Counter()
    for r in rows:
        for mask in range(1 << len(by)):
            units[tuple(("T", None) if (mask >> j) & 1 else ("v", r[d]) for j, d in enumerate(by))] += 1
    return {k: TrueCell(units=n, count=n * factor, nonempty={averaged: n * factor} if averaged else {})
            for k, n in units.items()}


def aggregates_only(tables: list[dict[str, Any]], sample: dict[str, Any] | None):
    def change(data: dict[str, Any]) -> None:
        data["aggregates"] = tables
        data["microdata"] = False
        if sample:
            data["sample"] = sample
    return change


def test_attacks_fail_on_a_grossed_sample_delivery(workspace: Workspace, source: str, tmp_path: Path) -> None:
    """C-DEMO-001 draws a 10% sample of claimants; its tables are grossed ×(population/sample) and rounded."""
    edit_contract(workspace, "C-DEMO-001", aggregates_only(
        [BY_REGION_SEX, BY_BENEFIT_REGION], {"entity": "claimant", "fraction": FRACTION}))
    run = pipeline(workspace, "C-DEMO-001", source)
    run_through(run)
    out = receive(workspace, run, tmp_path / "sampled", recipient=RECIPIENT["C-DEMO-001"])
    manifest = json.loads((out / "manifest.json").read_text())
    population = source_rows(source, "WHERE claim_start >= '2016-01-01'")
    people = sampled(workspace, "C-DEMO-001", population)
    factor = len(population) / len(people)
    summaries = {a["name"]: a for a in manifest["disclosure"]["aggregates"]}
    assert not list((out / "data").glob("claimants.parquet")), "aggregates only"
    examined: Counter = Counter()
    withheld = 0
    for spec in (BY_REGION_SEX, BY_BENEFIT_REGION):
        summary = summaries[spec["name"]]
        table = pq.read_table(out / summary["file"])
        truth = true_cells(people, spec["by"], factor, "weekly_amount")
        examined.update(attack(table, summary, truth))
        assert summary["grossed"]["factor"] == pytest.approx(factor, rel=1e-6)
        assert summary["count_rounding"] == 5 * -(-factor // 1)  # rounding × ⌈factor⌉
        published = [r for r in table.to_pylist() if not r["suppressed"]]
        withheld += sum(r["suppressed"] for r in table.to_pylist())
        assert published
        # The attacks, as it ran them: every one of them used to recover the count.
        recovered = sum(round(r["count"] / factor) == truth[cell_key(r, spec["by"])].units for r in published)
        assert recovered <= len(published) / 2
        ratios = [r for r in published if r.get("sum_weekly_amount") is not None and r["mean_weekly_amount"]]
        assert all(round(r["sum_weekly_amount"] / r["mean_weekly_amount"]) % summary["count_rounding"] in
                   (0, 1, summary["count_rounding"] - 1) for r in ratios)
    assert withheld > 0, "about 4 sampled people per benefit-and-region cell: some cells are withheld"
    assert examined["grossing"] > 20 and examined["ratio"] > 5 and examined["differencing"] > 0
    assert examined["lp"] > 0


def test_attacks_fail_on_a_full_delivery(workspace: Workspace, source: str, tmp_path: Path) -> None:
    """C-DEMO-002 reads every claimant: tables are not grossed; small cells and their complements are withheld."""
    spec = {**BY_REGION_SEX, "by": ["benefit_code", "region", "sex"], "threshold": 10}

    def add_columns(data: dict[str, Any]) -> None:
        data["datasets"][0]["columns"].update({"sex": {"treatment": "keep"},
                                               "weekly_amount": {"treatment": "round", "base": 5}})
        aggregates_only([spec], None)(data)

    edit_contract(workspace, "C-DEMO-002", add_columns)
    run = pipeline(workspace, "C-DEMO-002", source)
    run_through(run)
    out = receive(workspace, run, tmp_path / "full", recipient=RECIPIENT["C-DEMO-002"])
    summary = json.loads((out / "manifest.json").read_text())["disclosure"]["aggregates"][0]
    assert summary["grossed"] is None and summary["count_rounding"] == 5
    assert summary["suppressed_small"] > 0
    table = pq.read_table(out / summary["file"])
    people = source_rows(source)
    truth = true_cells(people, spec["by"], 1.0, "weekly_amount")
    examined = attack(table, summary, truth)
    assert examined["differencing"] > 0 and examined["lp"] > 0 and examined["ratio"] > 0
    # Means are derived from the published sum and a rounded count, not from the exact ones.
    sums: dict = defaultdict(float)
    for r in people:
        sums[(r["benefit_code"], r["region"], r["sex"])] += float(round_to_base(float(r["weekly_amount"]), 5))
    for row in table.to_pylist():
        if row["total_over"] == "" and not row["suppressed"]:
            assert row["mean_weekly_amount"] == round(row["sum_weekly_amount"] / row["count"], 2)


def built_or_blocked(build: Any, fraction: float | None) -> Any:
    """What ``build`` built, or None: a tiny grossed sample may be refused instead, rightly: the manifest gives the
    sample's size, and when that total pins a withheld cell (or proves it small) with every cell withheld, nothing
    can be published. Only grossed tables are refused for this, and the refusal names no value."""
    try:
        return build()
    except ContractExtractsError as refused:
        assert fraction is not None and fraction < 1, "only a sample's known size can leave no safe table"
        assert "stays exposed with every cell withheld" in str(refused)
        return None


# ---- random tables of every shape --------------------------------------------------------------------------------

ROWS = st.lists(st.tuples(st.sampled_from(["a", "b", "c", "d"]), st.sampled_from(["F", "M", None]),
                          st.sampled_from(["x", "y", "z"]), st.integers(0, 400), st.integers(0, 30),
                          st.sampled_from([1.0, 2.5, 4.0])), min_size=1, max_size=150)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=ROWS, threshold=st.integers(3, 12), base=st.sampled_from([3, 5, 10]), dims=st.integers(1, 3),
       fraction=st.sampled_from([None, 0.5, 0.0991, 0.25]), mode=st.sampled_from(["records", "units", "weights"]))
def test_attacks_fail_on_random_tables(rows: list[tuple], threshold: int, base: int, dims: int,
                                       fraction: float | None, mode: str) -> None:
    """Built directly; the conftest attacks every one of them (and this test checks a few figures itself)."""
    by = ["region", "sex", "kind"][:dims]
    columns = {"region": [r[0] for r in rows], "sex": [r[1] for r in rows], "kind": [r[2] for r in rows],
               "amount": [float(r[3]) for r in rows], "person": [f"p{r[4]}" for r in rows],
               "w": [r[5] for r in rows]}
    spec: dict[str, Any] = {"name": "t", "dataset": "d", "by": by, "threshold": threshold, "rounding": base,
                            "measures": ["count", {"sum": "amount"}, {"mean": "amount"}]}
    if mode == "units":
        spec["unit"] = "person"
    elif mode == "weights":
        spec["weight"] = "w"
    agg = Aggregate.model_validate(spec)
    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp), columns, {"sex": pa.string()})
        grossed = fraction if mode != "weights" else None
        result = built_or_blocked(lambda: build_table(path, agg, fraction=grossed), grossed)
    if result is None:
        return
    table = result.table.to_pylist()
    published = [r for r in table if not r["suppressed"]]
    expected_base = count_base(agg, fraction if mode != "weights" else None,
                               sum(r[5] for r in rows) / len(rows))
    assert result.summary["count_rounding"] == expected_base
    assert all(r["count"] % expected_base == 0 for r in published)
    assert result.summary["interval_audit"] or not any(r["suppressed"] for r in table)


# ---- several tables of one dataset: the intruder combines them ----------------------------------------------------

ACROSS = [
    {"name": "by_benefit_region_sex", "dataset": "claimants", "by": ["benefit_code", "region", "sex"],
     "measures": ["count"], "margins": False},  # no totals of its own: the other tables publish them
    {"name": "by_region_sex", "dataset": "claimants", "by": ["region", "sex"], "measures": ["count"]},
    {"name": "by_benefit_region", "dataset": "claimants", "by": ["benefit_code", "region"], "measures": ["count"]},
]


def test_attacks_across_tables_fail_on_a_delivery(workspace: Workspace, source: str, tmp_path: Path) -> None:
    """Three tables of one dataset in one delivery: a cell of one table is a margin of another, and a table without
    margins has its totals published by the others. The intruder lifts every cell to the union of the dimensions and
    differences and bounds withheld cells over all of them at once."""
    def add_columns(data: dict[str, Any]) -> None:
        data["datasets"][0]["columns"]["sex"] = {"treatment": "keep"}
        aggregates_only(ACROSS, None)(data)

    edit_contract(workspace, "C-DEMO-002", add_columns)
    staged = tmp_path / "staged.parquet"
    run = pipeline(workspace, "C-DEMO-002", source)
    run_through(run, after_extract=lambda r: staged.write_bytes((r.staging / "data/claimants.parquet").read_bytes()))
    out = receive(workspace, run, tmp_path / "across", recipient=RECIPIENT["C-DEMO-002"])
    summaries = {a["name"]: a for a in json.loads((out / "manifest.json").read_text())["disclosure"]["aggregates"]}
    people = source_rows(source)
    received = [(pq.read_table(out / summaries[s["name"]]["file"]), summaries[s["name"]],
                 true_cells(people, s["by"], 1.0, None)) for s in ACROSS]
    for table, summary, truth in received:
        attack(table, summary, truth)
    examined = attack_together(received)
    assert examined["differencing"] > 10 and examined["lp"] > 10
    assert summaries["by_benefit_region_sex"]["suppressed_secondary"] > 0

    # The same tables, each protected on its own (as before): the combined attack undoes them at once.
    alone = []
    for spec in ACROSS:
        result = build_table(staged, Aggregate.model_validate(spec))
        truth = true_cells(people, spec["by"], 1.0, None)
        alone.append((result.table, result.summary, truth))
    with pytest.raises(AssertionError, match="across tables"):
        attack_together(alone)


FAMILY_DIMS = st.lists(st.tuples(st.lists(st.sampled_from(["region", "sex", "kind"]), min_size=1, max_size=3,
                                          unique=True), st.booleans()), min_size=2, max_size=3)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=ROWS, tables=FAMILY_DIMS, threshold=st.integers(3, 12), base=st.sampled_from([3, 5]),
       fraction=st.sampled_from([None, 0.25]), units=st.booleans())
def test_attacks_across_random_tables_fail(rows: list[tuple], tables: list[tuple[list[str], bool]], threshold: int,
                                           base: int, fraction: float | None, units: bool) -> None:
    """Families of random tables over overlapping dimensions, with and without margins, built together as one
    delivery builds them; the conftest attacks each table and every family at once."""
    columns = {"region": [r[0] for r in rows], "sex": [r[1] for r in rows], "kind": [r[2] for r in rows],
               "amount": [float(r[3]) for r in rows], "person": [f"p{r[4]}" for r in rows]}
    specs = []
    for i, (by, margins) in enumerate(tables):
        spec: dict[str, Any] = {"name": f"t{i}", "dataset": "d", "by": by, "threshold": threshold, "rounding": base,
                                "measures": ["count", {"sum": "amount"}], "margins": margins}
        if units:
            spec["unit"] = "person"
        specs.append(Aggregate.model_validate(spec))
    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp), columns, {"sex": pa.string()})
        results = built_or_blocked(lambda: build_tables([(path, agg) for agg in specs], fraction=fraction), fraction)
    if results is None:
        return
    withheld: dict[tuple, set[bool]] = defaultdict(set)
    for spec, result in zip(specs, results, strict=True):
        for row in result.table.to_pylist():
            key = tuple(sorted((d, row[d]) for d in spec.by if d not in (row["total_over"] or "").split(",")))
            withheld[key].add(bool(row["suppressed"]))
    assert all(len(states) == 1 for states in withheld.values()), "a cell is withheld in every table or in none"
    # The release gate's own reading of the published tables together (interval arithmetic, weaker than the
    # build's linear programs) finds no withheld cell pinned or proved small either.
    if not units:
        published = [PublishedTable(result.table, list(spec.by), base=int(result.summary["count_rounding"]),
                                    factor=float((result.summary["grossed"] or {}).get("factor", 1.0)),
                                    threshold=threshold) for spec, result in zip(specs, results, strict=True)]
        assert exposed_across_tables(published) == 0


def test_a_sample_size_in_the_manifest_is_a_known_total(workspace: Workspace, source: str, tmp_path: Path) -> None:
    """A grossed table without margins publishes no total, but the manifest gives the sample's size: the intruder
    knows the grand total in sample units exactly, and a single withheld cell would be that total minus the others.
    The table is protected as if its margins were published, with the grand total known exactly."""
    spec = {"name": "claimants_by_year", "dataset": "claimants", "by": ["date_of_birth"], "measures": ["count"],
            "margins": False}
    edit_contract(workspace, "C-DEMO-001", aggregates_only([spec], {"entity": "claimant", "fraction": FRACTION}))
    run = pipeline(workspace, "C-DEMO-001", source)
    run_through(run)
    out = receive(workspace, run, tmp_path / "no-margins", recipient=RECIPIENT["C-DEMO-001"])
    disclosure = json.loads((out / "manifest.json").read_text())["disclosure"]
    (summary,) = disclosure["aggregates"]
    people = sampled(workspace, "C-DEMO-001", source_rows(source, "WHERE claim_start >= '2016-01-01'"))
    for person in people:
        person["date_of_birth"] = int(str(person["date_of_birth"])[:4])  # the contract delivers the year
    assert disclosure["sample"]["size"] == len(people), "the manifest tells the grand total"
    table = pq.read_table(out / summary["file"])
    assert set(table.column("total_over").to_pylist()) == {""}, "no margins published"
    truth = true_cells(people, spec["by"], summary["grossed"]["factor"], None)
    assert summary["suppressed_small"] > 0
    examined = attack(table, summary, truth)
    assert examined["differencing"] == 1 and examined["lp"] >= 2
    withheld = [cell_key(r, spec["by"]) for r in table.to_pylist() if r["suppressed"]]
    assert sum(truth[k].units for k in withheld) >= summary["threshold"]


def test_a_known_sample_size_makes_a_table_without_margins_withhold_more(tmp_path: Path) -> None:
    """One small cell beside two published ones, in a 50% sample: 73 sampled records, 40 + 30 + 3. Published, the
    two large cells (80 and 60, base 10) leave the small one at most 73 − 37.5 − 27.5 = 8 units: proved small. So
    a second cell is withheld; without it (as before) the known total minus the published cells gives it back."""
    path = write(tmp_path, {"region": ["a"] * 40 + ["b"] * 30 + ["c"] * 3})
    agg = Aggregate.model_validate({"name": "t", "dataset": "d", "by": ["region"], "measures": ["count"],
                                    "margins": False})
    result = build_table(path, agg, fraction=0.5)
    rows = {r["region"]: r for r in result.table.to_pylist()}
    assert rows["c"]["suppressed"] and rows["b"]["suppressed"] and not rows["a"]["suppressed"]
    assert result.summary["suppressed_secondary"] == 1
    truth = {cell_key(r, ["region"]): TrueCell(units=n, count=2.0 * n, nonempty={})
             for r, n in ((rows["a"], 40), (rows["b"], 30), (rows["c"], 3))}
    truth[(("T", None),)] = TrueCell(units=73, count=146.0, nonempty={})
    attack(result.table, result.summary, truth)
    before = result.table.to_pylist()
    for r in before:
        if r["region"] == "b":
            r["suppressed"], r["count"] = False, 60
    with pytest.raises(AssertionError, match=r"differencing: line of .* has one suppressed cell"):
        attack(pa.Table.from_pylist(before, schema=result.table.schema), result.summary, truth)
