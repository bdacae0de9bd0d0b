"""Position is data: the intruder aligns two contracts' packages row by row, on real pipeline output.

Two contracts over the same people (C-DEMO-001 and C-DEMO-002: different contractors, different pseudonyms) are
delivered from one source. The test holds the master key, so it re-derives every person's pseudonym under each
contract and knows who every delivered row is (ground truth). The intruder has only the two packages:

* aligning them by position (row i with row i, or by relative position when the row counts differ) must link no
  more people than chance;
* the rank correlation between a row's delivered position and the person's source key must be near zero (and a
  partitioned delivery, merged from key ranges, must not show its ranges either);
* row groups and their Parquet statistics must not reveal source order: a kept numeric column that follows the
  source key spreads over every row group like over the whole file.

Before keyed row order the same alignment re-identified 99.996% of C-DEMO-001's claimants in C-DEMO-002.
"""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from demo.synthetic import write_demo_source
from masking import row_order
from pipeline.stages import Pipeline
from tests.authorisation.helpers import demo_catalogue, write_catalogue
from tests.conftest import Workspace
from tests.disclosure.intruder import (
    RECIPIENT,
    edit_contract,
    pipeline,
    pseudonyms_of,
    receive,
    run_through,
    spearman,
)

PEOPLE = 1500
GROUP_ROWS = 160  # rows per delivered row group in these tests (several groups per file)


@pytest.fixture
def source(tmp_path: Path, workspace: Workspace) -> str:
    """The demo source with one more kept column, ``intake_seq``, that follows the source key (like a registration
    sequence): the sharpest probe of order leaking through row groups and their statistics."""
    url = f"sqlite:///{tmp_path / 'claims.sqlite'}"
    write_demo_source(url, n_people=PEOPLE)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE claimants ADD COLUMN intake_seq INTEGER"))
        conn.execute(sa.text("UPDATE claimants SET intake_seq = id * 7 + 1000"))
    engine.dispose()
    catalogue = demo_catalogue()
    catalogue["tables"]["claimants"]["columns"]["intake_seq"] = {
        "class": "other", "description": "Order in which the claim was registered."}
    write_catalogue(workspace.config_dir, catalogue)
    return url


def source_people(url: str) -> dict[str, int]:
    """NINO → source key (claimants.id)."""
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT nino, id FROM claimants")).all()
    engine.dispose()
    return {nino: key for nino, key in rows}


def delivered_keys(workspace: Workspace, contract: str, folder: Path, people: dict[str, int]) -> list[int]:
    """The source key of every delivered claimant row, in delivered order (ground truth, via the master key)."""
    ninos = list(people)
    index = dict(zip(pseudonyms_of(workspace, contract, ninos, entity="person", canonicaliser="nino"), ninos,
                     strict=True))
    delivered = pq.read_table(folder / "data" / "claimants.parquet").column("nino").to_pylist()
    return [people[index[p]] for p in delivered]


def keep_intake_seq(data: dict) -> None:
    next(d for d in data["datasets"] if d["name"] == "claimants")["columns"]["intake_seq"] = {"treatment": "keep"}


def small_row_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(row_order, "ROW_GROUP_ROWS", GROUP_ROWS)


def check_row_groups(path: Path, column: str, values: list[int]) -> None:
    """Every row group's statistics of ``column`` span nearly the whole range, as random draws from the file do."""
    metadata = pq.ParquetFile(path).metadata
    assert metadata.num_row_groups >= 5, "the test needs several row groups"
    ordered = sorted(values)
    low, high = ordered[len(ordered) // 10], ordered[-len(ordered) // 10]
    index = pq.ParquetFile(path).schema_arrow.get_field_index(column)
    for group in range(metadata.num_row_groups):
        stats = metadata.row_group(group).column(index).statistics
        assert stats is not None and stats.has_min_max, "statistics of a kept column are written"
        # In source order group g would hold one contiguous tenth of the range; randomly, ~160 draws reach both
        # outer tenths (a miss has probability 0.9^160 ≈ 5e-8 per group).
        if metadata.row_group(group).num_rows >= 100:
            assert stats.min <= low and stats.max >= high, f"row group {group} holds a narrow range of {column}"


def staged_claimants(seen: dict[str, list[int]]):
    def look(run: Pipeline) -> None:
        path = run.staging / "data" / "claimants.parquet"
        seen["staged"] = pq.read_table(path).column("intake_seq").to_pylist()
        check_row_groups(path, "intake_seq", seen["staged"])
    return look


def test_two_contracts_aligned_by_position_link_no_more_than_chance(workspace: Workspace, source: str,
                                                                    tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    small_row_groups(monkeypatch)
    people = source_people(source)
    keys: dict[str, list[int]] = {}
    for contract in ("C-DEMO-001", "C-DEMO-002"):
        edit_contract(workspace, contract, keep_intake_seq)
        run = pipeline(workspace, contract, source)
        seen: dict[str, list[int]] = {}
        run_through(run, after_extract=staged_claimants(seen))
        out = receive(workspace, run, tmp_path / contract, recipient=RECIPIENT[contract])
        keys[contract] = delivered_keys(workspace, contract, out, people)
        delivered = out / "data" / "claimants.parquet"
        seq = pq.read_table(delivered).column("intake_seq").to_pylist()
        assert seq == [k * 7 + 1000 for k in keys[contract]]  # ground truth agrees with the kept column
        check_row_groups(delivered, "intake_seq", seq)
        n = len(keys[contract])
        # Delivered position against the source key: |rho| ~ N(0, 1/sqrt(n)) for a random order; 4.5 sigma.
        assert abs(spearman(range(n), keys[contract])) < 4.5 / math.sqrt(n), contract

    one, two = keys["C-DEMO-001"], keys["C-DEMO-002"]
    assert len(two) == PEOPLE and 0 < len(one) < PEOPLE  # C-DEMO-001 selects claims from 2016 on
    # The attack: row i of one package is row i of the other. By chance about len(one)/PEOPLE ≈ 1 fixed point.
    same_row = sum(a == b for a, b in zip(one, two, strict=False))
    assert same_row <= 8, f"{same_row} people linked by position"
    # The attack on relative position: the row at the same quantile in the other package.
    by_quantile = sum(two[min(PEOPLE - 1, round(i * PEOPLE / len(one)))] == a for i, a in enumerate(one))
    assert by_quantile <= 8
    # Rank of position in one package against position in the other, over the people in both.
    position_two = {k: i for i, k in enumerate(two)}
    assert abs(spearman(range(len(one)), [position_two[k] for k in one])) < 4.5 / math.sqrt(len(one))
    # The same attack on source order links everyone: the test would see a leak.
    assert sum(a == b for a, b in zip(sorted(one), sorted(two)[: len(one)], strict=False)) < len(one)
    assert sum(a == b for a, b in zip(sorted(two), sorted(two), strict=True)) == PEOPLE


def test_a_partitioned_delivery_shows_neither_source_order_nor_its_ranges(workspace: Workspace, source: str,
                                                                         tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    small_row_groups(monkeypatch)
    people = source_people(source)

    def partitioned(data: dict) -> None:
        keep_intake_seq(data)
        for dataset, column in (("claimants", "id"), ("payments", "claimant_id")):
            next(d for d in data["datasets"] if d["name"] == dataset)["partition"] = {"column": column, "parts": 4}

    edit_contract(workspace, "C-DEMO-001", partitioned)
    run = pipeline(workspace, "C-DEMO-001", source)
    seen: dict[str, list[int]] = {}
    run_through(run, after_extract=staged_claimants(seen))
    out = receive(workspace, run, tmp_path / "parted", recipient=RECIPIENT["C-DEMO-001"])
    keys = delivered_keys(workspace, "C-DEMO-001", out, people)
    n = len(keys)
    assert abs(spearman(range(n), keys)) < 4.5 / math.sqrt(n)
    # The four key ranges are interleaved: each quarter of the file holds about a quarter of every range.
    quarter = n // 4
    for q in range(4):
        ranges = [min(3, (k - 1) * 4 // PEOPLE) for k in keys[q * quarter:(q + 1) * quarter]]
        for part in range(4):
            share = ranges.count(part) / quarter
            assert 0.1 < share < 0.4, f"quarter {q} of the file holds {share:.0%} of key range {part}"
    check_row_groups(out / "data" / "claimants.parquet", "intake_seq",
                     pq.read_table(out / "data" / "claimants.parquet").column("intake_seq").to_pylist())
    payments = pq.read_table(out / "data" / "payments.parquet")
    assert payments.num_rows > n  # payments are in keyed order too (their claimant pseudonyms, checked by count)


def test_two_deliveries_with_fresh_pseudonyms_do_not_align_by_position(workspace: Workspace, source: str,
                                                                       tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """``linkage: delivery``: every delivery has fresh pseudonyms so that one contractor cannot join two of them;
    the order key is per delivery too, so position does not join them either. Ground truth: the kept
    ``intake_seq``, which identifies each person."""
    small_row_groups(monkeypatch)

    def per_delivery(data: dict) -> None:
        keep_intake_seq(data)
        data["linkage"] = "delivery"

    edit_contract(workspace, "C-DEMO-002", per_delivery)
    orders, pseudonyms = [], []
    for i in range(2):
        run = pipeline(workspace, "C-DEMO-002", source)
        run_through(run)
        out = receive(workspace, run, tmp_path / f"delivery{i}", recipient=RECIPIENT["C-DEMO-002"])
        table = pq.read_table(out / "data" / "claimants.parquet")
        orders.append(table.column("intake_seq").to_pylist())
        pseudonyms.append(set(table.column("nino").to_pylist()))
    one, two = orders
    assert sorted(one) == sorted(two) and len(one) == PEOPLE, "the same people in both deliveries"
    assert not pseudonyms[0] & pseudonyms[1], "fresh pseudonyms"
    assert sum(a == b for a, b in zip(one, two, strict=True)) <= 8, "position links the deliveries"
    position = {v: i for i, v in enumerate(two)}
    assert abs(spearman(range(PEOPLE), [position[v] for v in one])) < 4.5 / math.sqrt(PEOPLE)
    for order in orders:
        assert abs(spearman(range(PEOPLE), order)) < 4.5 / math.sqrt(PEOPLE)
