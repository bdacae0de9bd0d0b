"""Risk measures against a brute-force computation over small random tables (nulls are wildcards)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from disclosure.risk import Classes, build_classes, measure, population_estimates
from tests.disclosure.helpers import brute_force, true_key_count, write

ROWS = st.lists(st.tuples(st.sampled_from([None, 1970, 1971, 1980]),
                          st.sampled_from([None, "north", "south"]),
                          st.sampled_from([None, "F", "M"]),
                          st.sampled_from([None, "UC", "JSA", "PIP"])), max_size=40)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=ROWS, k=st.integers(2, 6), l=st.integers(2, 3), batch=st.integers(1, 9))
def test_measures_match_brute_force(rows: list[tuple], k: int, l: int, batch: int) -> None:  # noqa: E741
    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp), {"year": [r[0] for r in rows], "region": [r[1] for r in rows],
                                 "sex": [r[2] for r in rows], "benefit": [r[3] for r in rows]},
                     {"year": pa.int32(), "region": pa.string(), "sex": pa.string(), "benefit": pa.string()})
        classes = build_classes(path, ["year", "region", "sex"], ["benefit"], batch_rows=batch)
        measured = measure(classes, k, l=l)
    keys = [r[:3] for r in rows]
    f, ls = brute_force(keys, [r[3] for r in rows])
    n = len(rows)
    assert measured.records == n
    assert measured.k_anonymity == (min(f) if f else None)
    assert measured.records_below_k == sum(x < k for x in f)
    assert measured.share_below_k == pytest.approx(sum(x < k for x in f) / n if n else 0.0)
    assert measured.sample_uniques == sum(x == 1 for x in f)
    assert measured.average_risk == pytest.approx(sum(1 / x for x in f) / n if n else 0.0)
    assert measured.l_diversity["benefit"] == (min(ls) if ls else None)
    assert measured.records_below_l == sum(x < l for x in ls)
    assert measured.classes == len(set(keys))
    assert measured.k_anonymous == all(x >= k for x in f)


def test_without_nulls_f_is_the_equivalence_class_size(tmp_path: Path) -> None:
    path = write(tmp_path, {"a": [1, 1, 1, 2, 2, 3], "b": ["x", "x", "x", "y", "y", "z"]})
    m = measure(build_classes(path, ["a", "b"]), 3)
    assert (m.k_anonymity, m.records_below_k, m.sample_uniques, m.classes) == (1, 3, 1, 3)
    assert m.average_risk == pytest.approx((3 * (1 / 3) + 2 * (1 / 2) + 1) / 6)


def test_a_missing_value_matches_any_value(tmp_path: Path) -> None:
    # (1, x) and (1, y) are unique, but (1, null) could be either: each matches 2 records.
    path = write(tmp_path, {"a": [1, 1, 1], "b": ["x", "y", None]})
    classes = build_classes(path, ["a", "b"])
    m = measure(classes, 2)
    assert m.k_anonymity == 2 and m.records_below_k == 0


def test_empty_file(tmp_path: Path) -> None:
    path = write(tmp_path, {"a": []}, {"a": pa.int32()})
    m = measure(build_classes(path, ["a"]), 5, fraction=0.5)
    assert (m.records, m.k_anonymity, m.records_below_k, m.average_risk) == (0, None, 0, 0.0)


def test_population_estimates_skinner_elliot_and_inverse_fraction() -> None:
    # 4 sample uniques, one class of 2 (two records), one class of 5.
    f = np.array([1, 1, 1, 1, 2, 5])
    counts = np.array([1, 1, 1, 1, 2, 5])
    est = population_estimates(f, counts, 0.1, k=10)
    n1, n2, pi = 4, 1, 0.1
    assert est["dis"] == pytest.approx(pi * n1 / (pi * n1 + 2 * (1 - pi) * n2), abs=1e-6)
    # F̂ = f / π: 10, 10, 10, 10, 20, 50 → none estimated unique, none below k=10.
    assert est["estimated_population_uniques"] == 0
    assert est["estimated_records_below_k"] == 0
    assert est["estimated_average_risk"] == pytest.approx((4 * 0.1 + 2 * 0.05 + 5 * 0.02) / 11, abs=1e-6)
    assert population_estimates(f, counts, 0.9, k=10)["estimated_population_uniques"] == 4  # 1/0.9 < 2


def test_measures_on_a_sample_report_population_estimates(tmp_path: Path) -> None:
    path = write(tmp_path, {"a": [1, 2, 2, 3, 3, 3]})
    m = measure(build_classes(path, ["a"]), 3, fraction=0.5)
    assert m.population is not None and m.population["fraction"] == 0.5
    assert "dis" in m.population and m.to_dict()["population"] == m.population
    assert measure(build_classes(path, ["a"]), 3).population is None  # a 100% extract


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=ROWS, k=st.integers(2, 6), l=st.integers(2, 3),
       drop=st.lists(st.tuples(st.booleans(), st.booleans(), st.booleans()), min_size=40, max_size=40))
def test_true_key_view_matches_the_intruder(rows: list[tuple], k: int, l: int, drop: list) -> None:  # noqa: E741
    """Published = real values with some nulled; the true-key view counts what an intruder with the real values sees."""
    real = [r[:3] for r in rows]
    published = [tuple(None if gone else v for v, gone in zip(r, d, strict=True))
                 for r, d in zip(real, drop, strict=False)]
    with tempfile.TemporaryDirectory() as tmp:
        columns = {"year": [r[0] for r in real], "region": [r[1] for r in real], "sex": [r[2] for r in real],
                   "benefit": [r[3] for r in rows]}
        types = {"year": pa.int32(), "region": pa.string(), "sex": pa.string(), "benefit": pa.string()}
        real_path = write(Path(tmp), columns, types, name="real.parquet")
        both = build_classes(real_path, ["year", "region", "sex"], ["benefit"])
        # One row per record: its real codes and its published codes (nulls where dropped).
        codes = []
        for r, p in zip(real, published, strict=True):
            codes.append([(-1 if v is None else both.dictionaries[j].to_pylist().index(v)) for j, v in enumerate(r)]
                         + [(-1 if v is None else both.dictionaries[j].to_pylist().index(v)) for j, v in enumerate(p)])
        arr = np.asarray(codes, dtype=np.int64).reshape(len(rows), 6)
        benefit = [r[3] for r in rows]
        values = sorted({b for b in benefit if b is not None})
        pairs = np.asarray([[*arr[i, 3:], values.index(b)] for i, b in enumerate(benefit) if b is not None],
                           dtype=np.int64).reshape(-1, 4)
        pub = Classes(both.key, both.dictionaries, arr[:, 3:], np.ones(len(rows), dtype=np.int64), {"benefit": pairs})
        view = measure(pub, k, l=l, real=arr[:, :3]).true_key
    assert view is not None
    c = [true_key_count(t, published) for t in real]
    assert view.k_anonymity == (min(c) if c else None)
    assert view.records_below_k == sum(x < k for x in c)
    assert view.uniques == sum(x == 1 for x in c)
    f, _ = brute_force(published)
    assert all(ci <= fi for ci, fi in zip(c, f, strict=True)), "the true-key view is never laxer than the wildcard"
    div = [len({b for p, b in zip(published, benefit, strict=True) if b is not None and true_key_count(t, [p])})
           for t in real]
    assert view.records_below_l == sum(d < l for d in div)
