"""The perturbation table and the record keys of cell-key perturbation (docs/disclosure.md, docs/formats.md)."""

from __future__ import annotations

import hashlib
import hmac
import json
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.disclosure import Aggregate
from demo.synthetic import claimant_batches
from disclosure.ptable import DEFAULT_PTABLE, KEY_RANGE, PTable, build_ptable
from disclosure.tables import build_table
from masking.record_keys import RecordKeyPlan, record_key_column, record_key_secret, record_keys
from tests.disclosure.helpers import write

PARAMETERS = [(3, 0.5, 3), (3, 0.3, 3), (4, 1.0, 3), (5, 2.0, 5), (1, 0.2, 1), (3, 0.8, 2)]


@pytest.mark.parametrize(("max_noise", "variance", "smallest"), PARAMETERS)
def test_ptable_properties(max_noise: int, variance: float, smallest: int) -> None:
    table = build_ptable(max_noise=max_noise, variance=variance, smallest=smallest)
    assert table.rows[0].values == (0,) and table.rows[0].keys == (KEY_RANGE,), "zeros stay zeros"
    for row in table.rows:
        assert sum(row.keys) == KEY_RANGE and all(k > 0 for k in row.keys)
        assert list(row.values) == sorted(set(row.values))
        # Unbiased exactly: the mean over the 256 cell keys is the cell value itself.
        assert sum(v * k for v, k in zip(row.values, row.keys, strict=True)) == KEY_RANGE * row.i
        assert all(abs(v - row.i) <= max_noise and v >= 0 for v in row.values)
        assert all(v == 0 or v >= smallest for v in row.values), "no count between 1 and smallest-1"
    interior = table.rows[table.interior]
    noise = {v - interior.i: k for v, k in zip(interior.values, interior.keys, strict=True)}
    assert all(noise[d] == noise.get(-d) for d in noise), "larger cells: symmetric noise"
    assert interior.variance == pytest.approx(variance, abs=0.1)
    # Every larger value uses the interior row's noise; nothing outside the table.
    for value in (table.interior, table.interior + 1, 10_000):
        published = [table.perturb(value, key) for key in range(KEY_RANGE)]
        assert sum(published) == KEY_RANGE * value
        assert min(published) >= value - max_noise and min(published) >= smallest


def test_the_default_ptable_is_the_documented_one() -> None:
    params = DEFAULT_PTABLE.parameters()
    assert (params["max_noise"], params["variance"], params["smallest_published"]) == (3, 0.5, 3)
    docs = (Path(__file__).resolve().parents[2] / "docs" / "disclosure.md").read_text()
    for row in DEFAULT_PTABLE.rows:  # docs/disclosure.md prints every row
        assert f"| {row.i} | " + ", ".join(f"{v}: {k}" for v, k in zip(row.values, row.keys, strict=True)) in docs
    assert PTable.from_dict(json.loads(json.dumps(DEFAULT_PTABLE.to_dict()))) == DEFAULT_PTABLE


def test_impossible_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="max_noise"):
        build_ptable(max_noise=1, smallest=4)
    with pytest.raises(ValueError, match="variance"):
        build_ptable(max_noise=1, variance=5.0, smallest=1)
    with pytest.raises(ValueError, match="without bias"):  # 1 → {0, 3} only: p(3) = 1/3 is not a multiple of 1/256
        build_ptable(max_noise=2, smallest=3)


@settings(max_examples=200, deadline=None)
@given(value=st.integers(0, 5000), key=st.integers(0, KEY_RANGE - 1))
def test_perturbation_is_a_lookup(value: int, key: int) -> None:
    published = DEFAULT_PTABLE.perturb(value, key)
    assert published == DEFAULT_PTABLE.perturb(value, key)  # the same cell, the same noise
    assert (published == 0) == (value == 0) or (0 < value < DEFAULT_PTABLE.interior and published == 0)
    assert published not in (1, 2)


def test_record_keys_follow_the_documented_formula() -> None:
    master = bytes(range(32))
    secret = record_key_secret(master, "demo_claims")
    expected = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                    info=b"contract-extracts/v1/record-key/demo_claims").derive(master)
    assert secret == expected
    assert record_key_secret(master, "other_source") != secret
    plan = RecordKeyPlan(column="nino", entity="person", canonicaliser="nino")
    values = ["ab 12 34 56 c", "AB123456C", None, "QQ123456D"]
    keys = record_keys(pa.array(values), plan, secret).to_pylist()
    by_hand = hmac.new(secret, b"person\x00AB123456C", hashlib.sha256).digest()[0]
    assert keys[0] == keys[1] == by_hand and keys[2] is None
    assert keys[3] == hmac.new(secret, b"person\x00QQ123456D", hashlib.sha256).digest()[0]


def test_a_cell_key_table_perturbs_by_the_sum_of_record_keys() -> None:
    people = [f"p{i}" for i in range(60)]
    region = ["a" if i < 40 else "b" for i in range(60)]
    rk = [(i * 37) % 256 for i in range(60)]
    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp), {"person": people * 2, "region": region * 2, record_key_column("person"): rk * 2},
                     {record_key_column("person"): pa.uint8()})
        agg = Aggregate.model_validate({"name": "t", "dataset": "d", "by": ["region"], "measures": ["count"],
                                        "unit": "person", "protection": "cell_key"})
        result = build_table(path, agg)
    rows = {(r["region"], r["total_over"]): r["count"] for r in result.table.to_pylist()}
    for cell, members in ((("a", ""), range(40)), (("b", ""), range(40, 60)), ((None, "region"), range(60))):
        key = sum(rk[i] for i in members) % 256
        assert rows[cell] == DEFAULT_PTABLE.perturb(len(members), key)  # units counted once, not per row
    assert result.summary["protection"] == "cell_key" and result.summary["ptable"]["max_noise"] == 3


def test_cell_key_contract_rules() -> None:
    base = {"name": "t", "dataset": "d", "by": ["region"], "measures": ["count"], "protection": "cell_key"}
    with pytest.raises(ValueError, match="needs 'unit'"):
        Aggregate.model_validate(base)
    with pytest.raises(ValueError, match="counts only"):
        Aggregate.model_validate({**base, "unit": "nino", "measures": ["count", {"sum": "amount"}]})
    with pytest.raises(ValueError, match="rounding"):
        Aggregate.model_validate({**base, "unit": "nino", "rounding": 5})


@pytest.mark.parametrize("by", [["region", "sex"], ["date_of_birth", "region"]])
def test_cell_key_loses_less_than_suppression_on_demo_tables(by: list[str]) -> None:
    """Information loss (mean absolute deviation of all cells, withheld ones counting their whole count)."""
    people = pa.Table.from_batches(list(claimant_batches(5000)))
    secret = record_key_secret(bytes(32), "demo_claims")
    keys = record_keys(people["nino"], RecordKeyPlan(column="nino", entity="person", canonicaliser="nino"), secret)
    loss = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "claimants.parquet"
        pq.write_table(pa.table({"nino": people["nino"], "region": people["region"], "sex": people["sex"],
                                 "date_of_birth": pc.year(people["date_of_birth"]), record_key_column("nino"): keys}),
                       path)
        for protection in ("suppression", "cell_key"):
            agg = Aggregate.model_validate({"name": "t", "dataset": "d", "by": by, "measures": ["count"],
                                            "unit": "nino", "protection": protection})
            loss[protection] = build_table(path, agg).summary["information_loss"]
    realised = {p: loss[p]["realised_mean_absolute_deviation"] for p in loss}
    assert realised["cell_key"] < realised["suppression"]
    assert loss["cell_key"]["expected_absolute_deviation"] < loss["suppression"]["expected_absolute_deviation"]
    assert loss["cell_key"]["withheld"] <= loss["suppression"]["withheld"]
