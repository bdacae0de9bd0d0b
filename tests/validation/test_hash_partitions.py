"""The whole-file hash engine: duplicates counted exactly (whatever the hash does) and as GX counts them."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from validation import hash_partitions
from validation.gx_adapter import GxRunner, import_gx, to_pandas
from validation.hash_partitions import DuplicateCounter, duplicate_rows
from validation.model import VALUES_UNIQUE

# CE_HYPOTHESIS_EXAMPLES=600 for a longer hunt by hand
HYPOTHESIS = settings(max_examples=int(os.environ.get("CE_HYPOTHESIS_EXAMPLES", "40")), deadline=None,
                      suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def pseudonym(i: int) -> str:
    return hashlib.md5(str(i).encode(), usedforsecurity=False).hexdigest()


@pytest.fixture(scope="module")
def gx_runner() -> tuple[Any, GxRunner]:
    return import_gx(), GxRunner()


def test_duplicates_are_exact_even_when_every_hash_collides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hash_partitions, "_hash64", lambda keys: np.zeros(len(keys), dtype=np.uint64))
    values = [pseudonym(i) for i in range(300)] + [pseudonym(5), pseudonym(5), pseudonym(6), None, "", ""]
    path = tmp_path / "people.parquet"
    pq.write_table(pa.table({"id": pa.array(values)}), path, row_group_size=1_500)
    assert duplicate_rows(path, "id", batch_rows=64) == (1, 7)  # 3 + 2 + 2 rows


few_strings = st.one_of(st.none(), st.sampled_from(["a", "A", "", " ", "é", "a\n", pseudonym(1), pseudonym(2)]))
few_floats = st.one_of(st.none(), st.sampled_from([0.0, -0.0, float("nan"), 1.5, float("inf"), 1e300, 2.0**53]))


@HYPOTHESIS
@given(column=st.one_of(st.lists(few_strings, min_size=1, max_size=30).map(lambda v: pa.array(v, pa.string())),
                        st.lists(few_floats, min_size=1, max_size=30).map(lambda v: pa.array(v, pa.float64())),
                        st.lists(st.one_of(st.none(), st.integers(-3, 3)), min_size=1, max_size=30)
                        .map(lambda v: pa.array(v, pa.int64()))),
       spilled=st.booleans())
def test_uniqueness_matches_gx(gx_runner, tmp_path_factory, column: pa.Array, spilled: bool) -> None:
    gx, runner = gx_runner
    expectation = gx.expectations.ExpectColumnValuesToBeUnique(column="v")
    suite = gx.ExpectationSuite(name=f"unique-{uuid.uuid4().hex}", expectations=[expectation])
    expected = runner.validate(to_pandas(pa.table({"v": column})), suite)[(VALUES_UNIQUE, "v")]
    folder = tmp_path_factory.mktemp("spill")
    with DuplicateCounter(len(column), folder) as counter:
        if spilled:
            counter.parts = 4  # split by hash into spill files, as beyond _PARTITION_ROWS
        cut = len(column) // 2
        counter.add(column.slice(0, cut))
        counter.add(column.slice(cut))
        nulls, duplicated = counter.result()
    assert (duplicated, nulls) == (expected.unexpected, expected.missing)
    assert not list(folder.iterdir())
