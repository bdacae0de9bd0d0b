"""Batched keyed hashing: byte-identical to hmac.new, in this process and over worker processes."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import ConfigError, DataError
from masking.hashing import HASH_WORKERS_ENV, HashPool, default_workers, hmac_sha256_many
from masking.pseudonyms import pseudonymise_array

from .vectors import MASTER, expected_contract_key, expected_pseudonym

KEY = expected_contract_key(MASTER, "pseudonym", "C-DEMO-001")


@settings(max_examples=200, deadline=None)
@given(key=st.binary(min_size=1, max_size=150), prefix=st.binary(max_size=20),
       messages=st.lists(st.binary(max_size=100), max_size=20))
def test_batched_hmac_equals_hmac_new(key: bytes, prefix: bytes, messages: list[bytes]) -> None:
    expected = b"".join(hmac.new(key, prefix + m, hashlib.sha256).digest() for m in messages)
    assert hmac_sha256_many(key, prefix, messages) == expected


@pytest.fixture(scope="module")
def pool() -> Iterator[HashPool]:
    with HashPool(2, min_parallel=64) as p:
        yield p


def test_worker_processes_give_identical_output_in_order(pool: HashPool) -> None:
    raw = [None if i % 17 == 0 else f"ab {i:06d} c" for i in range(5000)]
    values = pa.array(raw)
    for chunk in (values, values.slice(1234, 2000), values.slice(4990)):  # slices: only their own bytes travel
        local = pseudonymise_array(chunk, key=KEY, entity="person", canonicaliser="nino")
        remote = pseudonymise_array(chunk, key=KEY, entity="person", canonicaliser="nino", pool=pool)
        assert remote.equals(local)
    assert pool.started
    out = pseudonymise_array(values, key=KEY, entity="person", canonicaliser="nino", pool=pool).to_pylist()
    assert out == [None if v is None else expected_pseudonym(KEY, "person", v.replace(" ", "").upper()) for v in raw]


def test_worker_errors_carry_counts_not_values(pool: HashPool) -> None:
    values = pa.array([str(i) for i in range(500)] + ["not-a-number"] + [str(i) for i in range(500)])
    with pytest.raises(DataError) as info:
        pseudonymise_array(values, key=KEY, entity="claimant", canonicaliser="integer", pool=pool)
    assert "1 value(s)" in str(info.value) and "not-a-number" not in str(info.value)


def test_small_arrays_stay_in_process() -> None:
    with HashPool(2) as p:
        pseudonymise_array(pa.array(["AB123456C"] * 100), key=KEY, entity="person", canonicaliser="nino", pool=p)
        assert not p.started


def test_one_worker_never_starts_a_process() -> None:
    with HashPool(1, min_parallel=2) as p:
        pseudonymise_array(pa.array(["AB123456C"] * 1000), key=KEY, entity="person", canonicaliser="nino", pool=p)
        assert not p.started


def test_hash_workers_setting() -> None:
    assert default_workers({HASH_WORKERS_ENV: "3"}) == 3
    assert default_workers({}) >= 1
    for bad in ("0", "-1", "two"):
        with pytest.raises(ConfigError, match=HASH_WORKERS_ENV):
            default_workers({HASH_WORKERS_ENV: bad})
