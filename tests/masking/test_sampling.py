"""Keyed bottom-k sampling (design.md "Sampling"), checked against an independent model (vectors.py)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from masking.sampling import TWO_64, SampleDraw, fraction_cut, keep_mask, ranks

from .vectors import MASTER, expected_contract_key, expected_rank, expected_sample

KEY_1 = expected_contract_key(MASTER, "sample", "C-DEMO-001")
KEY_2 = expected_contract_key(MASTER, "sample", "C-DEMO-002")
NINOS = [f"AB{n:06d}C" for n in range(4000)]


def draw(values_batches: list[list[str | None]], tmp: Path, *, key: bytes = KEY_1, fraction: float | None = None,
         max_records: int | None = None, canonicaliser: str = "nino"):
    """Pass 1 over the batches, then pass 2: the set of canonical values kept, and the result."""
    sample = SampleDraw(entity="person", fraction=fraction, max_records=max_records, spill_dir=tmp / "spill")
    for values in values_batches:
        _, r = ranks(pa.array(values, pa.string()), canonicaliser=canonicaliser, key=key, entity="person")
        sample.add(r)
    result = sample.finish()
    kept: set[str] = set()
    for values in values_batches:
        valid, r = ranks(pa.array(values, pa.string()), canonicaliser=canonicaliser, key=key, entity="person")
        present = [v for v, ok in zip(values, valid, strict=True) if ok]
        kept |= {"".join(v.split()).upper() for v, k in zip(present, keep_mask(r, result.limit), strict=True) if k}
    return kept, result


def test_ranks_follow_the_design_formula() -> None:
    valid, r = ranks(pa.array(["ab 12 34 56 c", None, "CD000001A", " "]), canonicaliser="nino", key=KEY_1,
                     entity="person")
    assert valid.tolist() == [True, False, True, False]
    assert r.dtype == np.uint64
    assert r.tolist() == [expected_rank(KEY_1, "person", "AB123456C"), expected_rank(KEY_1, "person", "CD000001A")]


@pytest.mark.parametrize(("fraction", "cut"), [
    (None, TWO_64), (1.0, TWO_64), (0.5, 2**63), (0.25, 2**62),
    (0.1, -(-Fraction(0.1) * 2**64 // 1)), (1e-30, 1),
])
def test_fraction_cut_is_exact(fraction: float | None, cut: int) -> None:
    assert fraction_cut(fraction) == cut
    if fraction is not None:  # rank < fraction × 2^64  ⟺  rank < cut, at the boundary
        assert Fraction(cut - 1) < Fraction(fraction) * 2**64 <= Fraction(cut)


@pytest.mark.parametrize(("fraction", "max_records"), [(0.1, None), (None, 50), (0.3, 100), (0.01, 1000), (1.0, None)])
def test_sample_equals_the_independent_model(tmp_path: Path, fraction, max_records) -> None:
    batches = [NINOS[i:i + 700] for i in range(0, len(NINOS), 700)]
    kept, result = draw(batches, tmp_path, fraction=fraction, max_records=max_records)
    expected = expected_sample(KEY_1, "person", NINOS, fraction, max_records)
    assert kept == expected
    assert result.population == len(NINOS)
    assert result.sample_size == len(expected)
    assert result.fraction_delivered == len(expected) / len(NINOS)
    assert not (tmp_path / "spill").exists(), "the rank spill files are removed"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(people=st.lists(st.integers(0, 10**6), min_size=1, max_size=300),
       repeat=st.lists(st.integers(0, 299), max_size=300),
       batch=st.integers(1, 120),
       fraction=st.none() | st.floats(0.01, 1.0),
       max_records=st.none() | st.integers(1, 80))
def test_sample_by_entity_with_repeated_rows(tmp_path_factory, people, repeat, batch, fraction, max_records) -> None:
    if fraction is None and max_records is None:
        fraction = 0.5
    ninos = [f"ZZ{p:06d}A" for p in people]
    rows = ninos + [ninos[i % len(ninos)].lower() for i in repeat] + [None, "  "]  # several rows per person
    batches = [rows[i:i + batch] for i in range(0, len(rows), batch)]
    kept, result = draw(batches, tmp_path_factory.mktemp("s"), fraction=fraction, max_records=max_records)
    expected = expected_sample(KEY_1, "person", ninos, fraction, max_records)
    assert kept == expected
    assert result.population == len(set(ninos)) and result.sample_size == len(expected)


def test_sample_is_stable_across_runs_and_batchings(tmp_path: Path) -> None:
    one, _ = draw([NINOS], tmp_path / "a", fraction=0.2, max_records=300)
    two, _ = draw([NINOS[i:i + 97] for i in range(0, len(NINOS), 97)][::-1], tmp_path / "b", fraction=0.2,
                  max_records=300)
    assert one == two


def test_fraction_sample_is_stable_when_people_join(tmp_path: Path) -> None:
    before, _ = draw([NINOS[:3000]], tmp_path / "a", fraction=0.2)
    after, _ = draw([NINOS], tmp_path / "b", fraction=0.2)
    assert before == {v for v in after if v in set(NINOS[:3000])}


def test_samples_of_two_contracts_are_independent(tmp_path: Path) -> None:
    one, _ = draw([NINOS], tmp_path / "a", key=KEY_1, fraction=0.25)
    two, _ = draw([NINOS], tmp_path / "b", key=KEY_2, fraction=0.25)
    assert one == expected_sample(KEY_1, "person", NINOS, 0.25, None)
    assert two == expected_sample(KEY_2, "person", NINOS, 0.25, None)
    # Independent draws of 25%: the overlap is about 25% × 25% of everyone, not the whole sample.
    overlap = len(one & two) / len(NINOS)
    assert 0.04 < overlap < 0.09, overlap
    assert 0.2 < len(one) / len(NINOS) < 0.3


def test_the_same_entity_in_two_datasets_is_kept_in_both_or_neither(tmp_path: Path) -> None:
    claimants = [str(i) for i in range(1, 2001)]
    payments = [str(1 + (i * 7919) % 2000) for i in range(6000)]  # ~3 payments per claimant
    sample = SampleDraw(entity="claimant", fraction=0.1, max_records=None, spill_dir=tmp_path / "spill")
    for values in (claimants, payments):
        sample.add(ranks(pa.array(values), canonicaliser="integer", key=KEY_1, entity="claimant")[1])
    result = sample.finish()

    def kept(values: list[str]) -> list[str]:
        _, r = ranks(pa.array(values), canonicaliser="integer", key=KEY_1, entity="claimant")
        return [v for v, k in zip(values, keep_mask(r, result.limit), strict=True) if k]

    kept_claimants, kept_payments = set(kept(claimants)), kept(payments)
    assert set(kept_payments) <= kept_claimants  # every delivered payment's claimant is delivered
    assert len(kept_payments) == sum(1 for p in payments if p in kept_claimants)  # all rows of a sampled person
    assert result.population == 2000 and result.sample_size == len(kept_claimants)


def test_bottom_k_memory_stays_bounded(tmp_path: Path) -> None:
    sample = SampleDraw(entity="person", fraction=None, max_records=25, spill_dir=tmp_path / "spill")
    rng = np.random.default_rng(7)
    for _ in range(40):
        sample.add(rng.integers(0, 2**63, 5000, dtype=np.uint64))
        assert len(sample._best) <= 25 and sample._pending_n <= max(25, 1 << 16)
    result = sample.finish()
    assert result.sample_size == 25 and result.population == 200_000  # distinct random ranks


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(people=st.lists(st.integers(0, 10**7), min_size=1, max_size=400, unique=True),
       fraction=st.floats(0.05, 0.9), max_records=st.none() | st.integers(1, 100), seed=st.integers(0, 1000))
def test_stable_across_runs_and_independent_across_contracts(tmp_path_factory, people, fraction, max_records,
                                                             seed) -> None:
    ninos = [f"QQ{p:08d}" for p in people]
    rng = np.random.default_rng(seed)
    shuffled = [ninos[i] for i in rng.permutation(len(ninos))]
    runs = {}
    for name, key, order in (("1a", KEY_1, ninos), ("1b", KEY_1, shuffled), ("2", KEY_2, ninos)):
        batches = [order[i:i + 37] for i in range(0, len(order), 37)]
        runs[name], _ = draw(batches, tmp_path_factory.mktemp(name), key=key, fraction=fraction,
                             max_records=max_records)
    assert runs["1a"] == runs["1b"]  # the next delivery, rows in another order: the same people
    assert runs["1a"] == expected_sample(KEY_1, "person", ninos, fraction, max_records)
    assert runs["2"] == expected_sample(KEY_2, "person", ninos, fraction, max_records)  # another contract's own draw
