"""The release gate's checks beyond format: types, uniqueness, references, domains, disclosure, tables, sample."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from contracts.disclosure import Aggregate
from disclosure.tables import build_table, build_tables, recoverable_in_table, write_table
from validation import hash_partitions
from validation.hash_partitions import duplicate_rows
from validation.model import (
    ARROW_TYPES,
    CELLS_NOT_RECOVERABLE,
    DELIVERY,
    DISCLOSURE_THRESHOLD,
    EXIST_IN_DATASET,
    MULTIPLES_OF,
    ROW_COUNT_EQUAL,
    SAMPLE_MATCHES,
    VALUES_BETWEEN,
    VALUES_IN_SET,
    VALUES_UNIQUE,
    ColumnRule,
    DatasetRules,
    DeliveryRules,
    DisclosureCheck,
    Domain,
    Reference,
    SampleCheck,
    TableCheck,
)
from validation.references import missing_references
from validation.release_gate import validate_delivery
from validation.rules import table_checks
from validation.staged_file import validate_parquet


def pseudonym(i: int) -> str:
    return hashlib.md5(str(i).encode(), usedforsecurity=False).hexdigest()


def write(path: Path, data: dict[str, list], types: dict | None = None, row_group_size: int | None = None) -> Path:
    types = types or {}
    pq.write_table(pa.table({k: pa.array(v, types.get(k)) for k, v in data.items()}), path,
                   row_group_size=row_group_size)
    return path


def outcome(summary, expectation: str, column: str | None = None):
    found = [o for o in summary.expectations if o.expectation == expectation and o.column == column]
    assert len(found) == 1, (expectation, column, summary.expectations)
    return found[0]


def test_types_and_exact_row_count(tmp_path: Path) -> None:
    path = write(tmp_path / "d.parquet", {"a": [1, 2, 3], "b": ["x", "y", "z"]}, {"a": pa.int32()})
    rules = DatasetRules("d", (ColumnRule("a", type="int32"), ColumnRule("b", type="string")), expected_rows=3)
    summary = validate_parquet(path, rules)
    assert summary.success
    assert outcome(summary, ROW_COUNT_EQUAL).observed == "3"
    wrong = DatasetRules("d", (ColumnRule("a", type="int64"), ColumnRule("b", type="string")), expected_rows=4)
    summary = validate_parquet(path, wrong)
    assert {(f.expectation, f.column) for f in summary.failures()} == {(ARROW_TYPES, None), (ROW_COUNT_EQUAL, None)}
    assert outcome(summary, ARROW_TYPES).observed == "1 column type(s) differ: a"


@pytest.mark.parametrize("partition_rows", [None, 10], ids=["one-pass", "hash-partitioned"])
def test_uniqueness_over_the_whole_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, partition_rows) -> None:
    if partition_rows:
        monkeypatch.setattr(hash_partitions, "_PARTITION_ROWS", partition_rows)
    values = [pseudonym(i) for i in range(400)] + [None, None]
    values[350] = values[3]  # a duplicate in another batch and row group
    values[399] = "Zz" + values[7][2:]  # not hex: lands in the leftover partition
    values[398] = "Zz" + values[7][2:]
    path = write(tmp_path / "d.parquet", {"id": values}, row_group_size=64)
    assert duplicate_rows(path, "id", batch_rows=50) == (2, 4)
    summary = validate_parquet(path, DatasetRules("d", (ColumnRule("id", unique=True),)), batch_rows=50)
    assert outcome(summary, VALUES_UNIQUE, "id").unexpected_count == 4 and not summary.success
    ok = write(tmp_path / "ok.parquet", {"id": [pseudonym(i) for i in range(100)] + [None, None]})
    assert validate_parquet(ok, DatasetRules("d", (ColumnRule("id", unique=True),))).success


@pytest.mark.parametrize("partition_rows", [None, 10], ids=["one-pass", "hash-partitioned"])
def test_referential_integrity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, partition_rows) -> None:
    if partition_rows:
        monkeypatch.setattr(hash_partitions, "_PARTITION_ROWS", partition_rows)
    parents = write(tmp_path / "people.parquet", {"pid": [pseudonym(i) for i in range(100)]})
    child_values = [pseudonym(i % 100) for i in range(300)] + [pseudonym(1000), pseudonym(1001), None]
    children = write(tmp_path / "payments.parquet", {"pid": child_values})
    assert missing_references(children, "pid", parents, "pid", batch_rows=40) == (303, 1, 2)
    rules = DeliveryRules(
        datasets=(DatasetRules("people", (ColumnRule("pid", unique=True),)),
                  DatasetRules("payments", (ColumnRule("pid"),))),
        references=(Reference("payments", "pid", "people", "pid"),))
    result = validate_delivery({"people": parents, "payments": children}, rules, batch_rows=40)
    payments = result.summaries[1]
    assert outcome(payments, EXIST_IN_DATASET, "pid").unexpected_count == 2
    assert not result.success
    assert "payments: expect_column_values_to_exist_in_dataset(pid), 2 unexpected" in result.failed()


def test_domains(tmp_path: Path) -> None:
    path = write(tmp_path / "d.parquet", {"year": [1970, 1975, 2300, 1850], "band": ["0-4", "5-9", "x", None],
                                          "amount": [10.0, 20.0, 25.0, 30.0]}, {"year": pa.int32()})
    rules = DatasetRules("d", (
        ColumnRule("year", domains=(Domain("between", min_value=1850, max_value=2027),
                                    Domain("multiple_of", base=5))),
        ColumnRule("band", domains=(Domain("in_set", values=("0-4", "5-9")),)),
        ColumnRule("amount", domains=(Domain("multiple_of", base=10),)),
    ))
    summary = validate_parquet(path, rules, batch_rows=2)
    assert outcome(summary, VALUES_BETWEEN, "year").unexpected_count == 1
    assert outcome(summary, MULTIPLES_OF, "year").unexpected_count == 0
    assert outcome(summary, VALUES_IN_SET, "band").unexpected_count == 1
    assert outcome(summary, MULTIPLES_OF, "amount").unexpected_count == 1


def test_disclosure_threshold_is_measured_on_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "d.parquet", {"year": [1970] * 5 + [1980], "sex": ["F"] * 6})
    rules = DeliveryRules(datasets=(DatasetRules("d", (ColumnRule("year"), ColumnRule("sex"))),),
                          disclosure=(DisclosureCheck("d", ("year", "sex"), (), 5),))
    result = validate_delivery({"d": path}, rules)
    found = outcome(result.summaries[0], DISCLOSURE_THRESHOLD)
    assert not found.success and found.unexpected_count == 1
    assert found.observed == "smallest group 1; 1 record(s) below k=5"


def test_tables_with_a_recoverable_cell_fail(tmp_path: Path) -> None:
    data = write(tmp_path / "micro.parquet", {"region": ["a"] * 3 + ["b"] * 20 + ["c"] * 20,
                                              "sex": ["F"] * 3 + ["M"] * 40})
    agg = Aggregate.model_validate({"name": "t", "dataset": "d", "by": ["region"], "measures": ["count"]})
    result = build_table(data, agg)
    good = tmp_path / "t.parquet"
    write_table(result, good)
    rules = DeliveryRules(datasets=(DatasetRules("t", tuple(ColumnRule(n) for n in result.table.column_names)),),
                          tables=(TableCheck("t", ("region",)),))
    assert validate_delivery({"t": good}, rules).success
    # Publish one of the two suppressed cells again: the other one becomes recoverable by subtraction.
    table = result.table.to_pylist()
    secondary = next(i for i, r in enumerate(table) if r["suppressed"] and r["region"] != "a")
    table[secondary]["suppressed"] = False
    tampered = tmp_path / "tampered.parquet"
    pq.write_table(pa.Table.from_pylist(table, schema=result.table.schema), tampered)
    found = validate_delivery({"t": tampered}, rules)
    assert outcome(found.summaries[0], CELLS_NOT_RECOVERABLE).unexpected_count == 1 and not found.success


def test_tables_that_give_a_cell_back_only_together_fail(tmp_path: Path) -> None:
    """Each table alone is safe: by_region_sex lists no margins, so its withheld cell (a, M), 2 people, has an
    unknown row total; by_region publishes that total. Read together (as the gate reads a dataset's tables), the
    rounding intervals (base 5) put (a, M) between 1 and 5: below the threshold 10, so known to be small. Tables
    protected together (build_tables) pass."""
    data = write(tmp_path / "micro.parquet", {"region": ["a"] * 32 + ["b"] * 40,
                                              "sex": ["F"] * 30 + ["M"] * 2 + ["F"] * 20 + ["M"] * 20})
    specs = [Aggregate.model_validate({"name": "by_region_sex", "dataset": "d", "by": ["region", "sex"],
                                       "measures": ["count"], "margins": False}),
             Aggregate.model_validate({"name": "by_region", "dataset": "d", "by": ["region"], "measures": ["count"]})]
    checks = table_checks([{"name": a.name, "dataset": "d", "by": list(a.by), "unit": "record", "rounding": 5,
                            "threshold": 10} for a in specs])
    assert [c.read_with for c in checks] == [("by_region",), ("by_region_sex",)]

    def gate(results: list, folder: str) -> tuple[bool, list[int]]:
        files = {}
        for agg, result in zip(specs, results, strict=True):
            files[agg.name] = tmp_path / folder / f"{agg.name}.parquet"
            files[agg.name].parent.mkdir(exist_ok=True)
            write_table(result, files[agg.name])
        rules = DeliveryRules(datasets=tuple(DatasetRules(a.name, tuple(ColumnRule(n) for n in r.table.column_names))
                                             for a, r in zip(specs, results, strict=True)), tables=tuple(checks))
        found = validate_delivery(files, rules)
        return found.success, [outcome(s, CELLS_NOT_RECOVERABLE).unexpected_count for s in found.summaries]

    alone = [build_table(data, agg) for agg in specs]
    assert [recoverable_in_table(r.table, list(a.by)) for a, r in zip(specs, alone, strict=True)] == [0, 0]
    assert gate(alone, "alone") == (False, [1, 1])  # the same exposed cell, seen from either table
    assert gate(build_tables([(data, agg) for agg in specs]), "together") == (True, [0, 0])


@pytest.mark.parametrize(("check", "success"), [
    (SampleCheck(fraction=0.1, max_records=None, population=10_000, size=1_010), True),
    (SampleCheck(fraction=0.1, max_records=None, population=10_000, size=2_000), False),
    (SampleCheck(fraction=0.1, max_records=500, population=10_000, size=500), True),  # capped: share below
    (SampleCheck(fraction=None, max_records=500, population=10_000, size=501), False),
    (SampleCheck(fraction=0.1, max_records=None, population=None, size=None), False),  # not recorded
])
def test_sample_matches_the_contract(tmp_path: Path, check: SampleCheck, success: bool) -> None:
    path = write(tmp_path / "d.parquet", {"a": [1]})
    result = validate_delivery({"d": path}, DeliveryRules(datasets=(DatasetRules("d", (ColumnRule("a"),)),),
                                                          sample=check))
    assert result.delivery is not None and result.delivery.dataset == DELIVERY
    assert outcome(result.delivery, SAMPLE_MATCHES).success is success
    assert result.success is success
    assert "delivery" in result.to_dict()

