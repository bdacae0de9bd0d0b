"""Tests for the deterministic synthetic demo source (demo.synthetic)."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import os
import re
import subprocess
import sys
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import sqlalchemy as sa

from demo import synthetic as syn

SMALL = 2_000
# Crosses several internal generation blocks, so block boundaries are exercised too.
MULTI_BLOCK = 40_000

NINO_RE = re.compile(r"^[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z][0-9]{6}[A-D]$")
POSTCODE_RE = re.compile(r"^([A-Z]{1,2})[0-9][A-Z0-9]? [0-9][ABD-HJLNP-UW-Z]{2}$")
# Independent spot checks of area -> region (not read from the module under test).
KNOWN_AREAS = {
    "LS": "Yorkshire and The Humber",
    "S": "Yorkshire and The Humber",
    "M": "North West",
    "L": "North West",
    "NE": "North East",
    "NG": "East Midlands",
    "B": "West Midlands",
    "CB": "East of England",
    "SW": "London",
    "EC": "London",
    "SE": "London",
    "BN": "South East",
    "OX": "South East",
    "BS": "South West",
    "EX": "South West",
    "CF": "Wales",
    "SA": "Wales",
    "EH": "Scotland",
    "G": "Scotland",
}
REF = dt.date(2026, 10, 31)


def _table(batches, schema: pa.Schema) -> pa.Table:
    return pa.Table.from_batches(list(batches), schema=schema)


def _ipc_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table.combine_chunks())
    return sink.getvalue()


@pytest.fixture(scope="module")
def claimants() -> pa.Table:
    return _table(syn.claimant_batches(MULTI_BLOCK), syn.CLAIMANTS_SCHEMA)


@pytest.fixture(scope="module")
def payments() -> pa.Table:
    return _table(syn.payment_batches(MULTI_BLOCK), syn.PAYMENTS_SCHEMA)


# --------------------------------------------------------------------------------------------
# Determinism
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("generator", "schema"),
    [(syn.claimant_batches, syn.CLAIMANTS_SCHEMA), (syn.payment_batches, syn.PAYMENTS_SCHEMA)],
    ids=["claimants", "payments"],
)
def test_byte_identical_regardless_of_batch_rows(generator, schema) -> None:
    reference = None
    for batch_rows in (1_000, 7_777, 16_384, 50_000, 1_000_000):
        batches = list(generator(MULTI_BLOCK, batch_rows=batch_rows))
        assert all(b.schema == schema for b in batches)
        # Every batch is full except possibly the last.
        assert all(b.num_rows == batch_rows for b in batches[:-1])
        assert 0 < batches[-1].num_rows <= batch_rows
        data = _ipc_bytes(_table(batches, schema))
        if reference is None:
            reference = data
        assert data == reference, f"output differs for batch_rows={batch_rows}"


_DIGEST_SNIPPET = """
import hashlib, io, sys
import pyarrow as pa
from demo import synthetic as syn

h = hashlib.sha256()
for gen, schema in ((syn.claimant_batches, syn.CLAIMANTS_SCHEMA), (syn.payment_batches, syn.PAYMENTS_SCHEMA)):
    table = pa.Table.from_batches(list(gen(int(sys.argv[1]), seed=7)), schema=schema).combine_chunks()
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, schema) as writer:
        writer.write_table(table)
    h.update(sink.getvalue())
print(h.hexdigest())
"""


def _digest(n_people: int) -> str:
    h = hashlib.sha256()
    h.update(_ipc_bytes(_table(syn.claimant_batches(n_people, seed=7), syn.CLAIMANTS_SCHEMA)))
    h.update(_ipc_bytes(_table(syn.payment_batches(n_people, seed=7), syn.PAYMENTS_SCHEMA)))
    return h.hexdigest()


def test_deterministic_across_runs_and_processes() -> None:
    here = _digest(SMALL)
    assert _digest(SMALL) == here
    for hash_seed in ("1", "98765"):
        out = subprocess.run(
            [sys.executable, "-c", _DIGEST_SNIPPET, str(SMALL)],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
        )
        assert out.stdout.strip() == here


def test_first_people_do_not_depend_on_population_size(claimants, payments) -> None:
    few_c = _table(syn.claimant_batches(123, batch_rows=10), syn.CLAIMANTS_SCHEMA)
    few_p = _table(syn.payment_batches(123, batch_rows=10), syn.PAYMENTS_SCHEMA)
    assert few_c.equals(claimants.slice(0, 123))
    assert few_p.equals(payments.slice(0, few_p.num_rows))
    assert pc.max(few_p["claimant_id"]).as_py() <= 123


def test_different_seed_gives_different_data(claimants) -> None:
    other = _table(syn.claimant_batches(MULTI_BLOCK, seed=syn.DEFAULT_SEED + 1), syn.CLAIMANTS_SCHEMA)
    assert other.num_rows == claimants.num_rows
    for column in ("nino", "last_name", "date_of_birth", "postcode", "claim_start"):
        same = pc.sum(pc.equal(other[column], claimants[column])).as_py()
        assert same < 0.05 * claimants.num_rows, column
    assert not _table(syn.payment_batches(SMALL, seed=1), syn.PAYMENTS_SCHEMA).equals(
        _table(syn.payment_batches(SMALL, seed=2), syn.PAYMENTS_SCHEMA)
    )


# --------------------------------------------------------------------------------------------
# Realism and integrity of the generated rows
# --------------------------------------------------------------------------------------------
def test_schemas_and_nulls(claimants, payments) -> None:
    assert claimants.schema == syn.CLAIMANTS_SCHEMA
    assert payments.schema == syn.PAYMENTS_SCHEMA
    assert claimants.schema.field("weekly_amount").type == pa.decimal128(8, 2)
    assert claimants.schema.field("claim_end").type == pa.date32()
    for name in claimants.column_names:
        if name != "claim_end":
            assert claimants[name].null_count == 0, name
    for name in payments.column_names:
        assert payments[name].null_count == 0, name
    ongoing = claimants["claim_end"].null_count / claimants.num_rows
    assert 0.5 <= ongoing <= 0.7


def test_ids_are_sequential(claimants, payments) -> None:
    assert claimants["id"].to_pylist() == list(range(1, MULTI_BLOCK + 1))
    assert payments["id"].to_pylist() == list(range(1, payments.num_rows + 1))


def test_nino_format_and_prohibited_prefixes(claimants) -> None:
    ninos = claimants["nino"].to_pylist()
    bad = [n for n in ninos if not NINO_RE.match(n)]
    assert not bad, bad[:5]
    banned = {"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"}
    assert not [n for n in ninos if n[:2] in banned]
    assert len(syn._NINO_PREFIXES) == 373
    # Realistic spread: many prefixes and all suffixes in use.
    assert len({n[:2] for n in ninos}) > 300
    assert {n[-1] for n in ninos} == set("ABCD")


def test_nino_unique(claimants) -> None:
    ninos = claimants["nino"].to_pylist()
    assert len(set(ninos)) == len(ninos)
    # Also unique on prefix+digits alone (the suffix does not make a NINO distinct).
    assert len({n[:8] for n in ninos}) == len(ninos)


def test_nino_numbers_are_a_permutation_sample() -> None:
    idx = np.arange(0, 1_000_000, dtype=np.int64)
    numbers = syn._nino_numbers(idx, syn._nino_keys(syn.DEFAULT_SEED))
    assert numbers.min() >= 0 and numbers.max() < syn._NINO_SPACE
    assert np.unique(numbers).size == idx.size
    # Per-person: any subset gives the same values as the whole.
    part = syn._nino_numbers(idx[734_567:734_600], syn._nino_keys(syn.DEFAULT_SEED))
    assert np.array_equal(part, numbers[734_567:734_600])


def test_postcodes_and_region_consistency(claimants) -> None:
    rows = zip(claimants["postcode"].to_pylist(), claimants["region"].to_pylist(), strict=True)
    areas_seen: set[str] = set()
    for postcode, region in rows:
        m = POSTCODE_RE.match(postcode)
        assert m, postcode
        assert len(postcode) <= 8
        area = m.group(1)
        areas_seen.add(area)
        assert syn.POSTCODE_AREA_REGION[area] == region, (postcode, region)
        if area in KNOWN_AREAS:
            assert KNOWN_AREAS[area] == region, (postcode, region)
    assert set(claimants["region"].to_pylist()) == set(syn.REGIONS)
    assert len(syn.REGIONS) == 11
    assert len(areas_seen) > 80


def test_postcode_table_has_one_region_per_area() -> None:
    seen: dict[str, str] = {}
    for region, (_, areas) in syn._POSTCODE_TABLE.items():
        for area in areas:
            assert area not in seen, f"{area} listed under {seen.get(area)} and {region}"
            seen[area] = region
    districts = [d for ds in syn._DISTRICTS_BY_REGION for d in ds]
    assert len(districts) == len(set(districts))


def test_names_dates_and_amounts_are_plausible(claimants) -> None:
    rows = claimants.to_pylist()
    female, male = set(syn._FEMALE_NAMES), set(syn._MALE_NAMES)
    assert len(syn._FEMALE_NAMES) + len(syn._MALE_NAMES) >= 300 and len(syn._LAST_NAMES) >= 250
    for r in rows:
        assert r["sex"] in ("F", "M")
        assert r["first_name"] in (female if r["sex"] == "F" else male)
        assert len(r["first_name"]) <= 40 and len(r["last_name"]) <= 40
        assert dt.date(1940, 1, 1) <= r["date_of_birth"] <= dt.date(2006, 12, 31)
        assert dt.date(2015, 1, 1) <= r["claim_start"] <= REF
        if r["claim_end"] is not None:
            assert r["claim_start"] <= r["claim_end"] <= REF
        amount = r["weekly_amount"]
        assert isinstance(amount, Decimal) and amount.as_tuple().exponent == -2
        assert Decimal("20.00") <= amount <= Decimal("500.00")
        age_at_start = (r["claim_start"] - r["date_of_birth"]).days / 365.2425
        code = r["benefit_code"]
        if code in ("SP", "AA"):
            assert age_at_start >= 65.99, r
        elif code == "DLA":
            assert age_at_start <= 16.01, r
        else:
            assert age_at_start >= 15.99, r
    codes = Counter(r["benefit_code"] for r in rows)
    assert set(codes) == set(syn.BENEFIT_CODES) == {"UC", "JSA", "ESA", "PIP", "DLA", "CA", "AA", "SP"}
    assert codes["SP"] > codes["PIP"] > codes["JSA"]  # plausible relative frequencies
    sexes = Counter(r["sex"] for r in rows)
    assert 0.45 < sexes["F"] / len(rows) < 0.57


def test_payments_reference_claimants_within_claim_period(claimants, payments) -> None:
    starts = claimants["claim_start"].to_pylist()
    ends = claimants["claim_end"].to_pylist()
    ids = payments["claimant_id"].to_numpy()
    assert ids.min() >= 1 and ids.max() <= MULTI_BLOCK
    for cid, paid_on in zip(ids.tolist(), payments["paid_on"].to_pylist(), strict=True):
        end = ends[cid - 1] or REF
        assert starts[cid - 1] <= paid_on <= end, (cid, paid_on)
    per_claimant = np.bincount(ids, minlength=MULTI_BLOCK + 1)[1:]
    assert per_claimant.max() <= 8
    assert (per_claimant == 0).any()
    assert 2.8 < per_claimant.mean() < 3.2
    # Ordered by claimant, then date.
    order = pc.sort_indices(payments, [("claimant_id", "ascending"), ("paid_on", "ascending")])
    assert order.to_pylist() == list(range(payments.num_rows))
    amounts = payments["amount"].to_pylist()
    assert all(Decimal("1.00") <= a <= Decimal("5000.00") for a in amounts)


def test_zero_people_and_argument_checks() -> None:
    assert list(syn.claimant_batches(0)) == []
    assert list(syn.payment_batches(0)) == []
    with pytest.raises(ValueError, match="n_people"):
        list(syn.claimant_batches(-1))
    with pytest.raises(ValueError, match="batch_rows"):
        list(syn.payment_batches(10, batch_rows=0))
    with pytest.raises(ValueError, match="seed"):
        list(syn.claimant_batches(10, seed=-5))


def test_module_does_not_import_airflow() -> None:
    code = (
        "import sys, demo.synthetic; "
        "assert not [m for m in sys.modules if m.split('.')[0] == 'airflow'], 'airflow imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------------------------
# Writing to databases
# --------------------------------------------------------------------------------------------
def _expected_rows(n_people: int, seed: int = syn.DEFAULT_SEED) -> tuple[list[tuple], list[tuple]]:
    c = _table(syn.claimant_batches(n_people, seed), syn.CLAIMANTS_SCHEMA).to_pylist()
    p = _table(syn.payment_batches(n_people, seed), syn.PAYMENTS_SCHEMA).to_pylist()
    return [tuple(r.values()) for r in c], [tuple(r.values()) for r in p]


def _read_back(url: str, schema: str | None = None) -> tuple[list[tuple], list[tuple]]:
    md = syn.demo_metadata(schema)
    tables = {t.name: t for t in md.sorted_tables}
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            out = []
            for name in ("claimants", "payments"):
                t = tables[name]
                out.append([tuple(r) for r in conn.execute(sa.select(t).order_by(t.c.id))])
            orphans = conn.execute(
                sa.select(sa.func.count())
                .select_from(tables["payments"].outerjoin(tables["claimants"]))
                .where(tables["claimants"].c.id.is_(None))
            ).scalar_one()
            assert orphans == 0
        return out[0], out[1]
    finally:
        engine.dispose()


def _check_round_trip(url: str, n_people: int, schema: str | None = None) -> None:
    seen: list[tuple[str, int]] = []
    counts = syn.write_demo_source(url, n_people, schema=schema, progress=lambda t, n: seen.append((t, n)))
    exp_c, exp_p = _expected_rows(n_people)
    assert counts == {"claimants": n_people, "payments": len(exp_p)}
    assert seen[-1] == ("payments", len(exp_p))
    assert ("claimants", n_people) in seen
    got_c, got_p = _read_back(url, schema)
    assert got_c == exp_c
    assert got_p == exp_p
    # A few typed values.
    first = got_c[0]
    assert isinstance(first[4], dt.date) and isinstance(first[10], dt.date)
    assert isinstance(first[9], Decimal) and first[9] == exp_c[0][9]
    assert sum(1 for r in got_c if r[11] is None) == sum(1 for r in exp_c if r[11] is None) > 0


def test_write_sqlite_round_trip(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    _check_round_trip(url, SMALL)
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        # Loading pragmas are not left behind.
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "delete"
        cols = {r[1]: r for r in conn.exec_driver_sql("PRAGMA table_info(claimants)")}
        assert cols["nino"][2] == "VARCHAR(9)" and cols["nino"][3] == 1
        assert cols["claim_end"][3] == 0
        assert cols["weekly_amount"][2] == "NUMERIC(8, 2)"
    engine.dispose()


def test_sqlite_fast_path_stores_what_core_path_stores(tmp_path: Path, monkeypatch) -> None:
    fast, core = tmp_path / "fast.db", tmp_path / "core.db"
    syn.write_demo_source(f"sqlite:///{fast}", 500)
    monkeypatch.setattr(syn, "_load_sqlite", syn._load_core)
    syn.write_demo_source(f"sqlite:///{core}", 500)

    def raw(path: Path) -> list[tuple]:
        engine = sa.create_engine(f"sqlite:///{path}")
        with engine.connect() as conn:
            rows = []
            for t in ("claimants", "payments"):
                cols = [r[1] for r in conn.exec_driver_sql(f"PRAGMA table_info({t})")]
                select = ", ".join(f"{c}, typeof({c})" for c in cols)
                rows += conn.exec_driver_sql(f"SELECT {select} FROM {t} ORDER BY id").all()
        engine.dispose()
        return rows

    assert raw(fast) == raw(core)


def test_decimal_to_float_matches_python_on_sliced_arrays(claimants) -> None:
    money = claimants["weekly_amount"].combine_chunks()
    for sliced in (money, money.slice(12_345, 20_000), money.slice(39_990)):
        expected = [float(d) for d in sliced.to_pylist()]
        assert syn._decimal_to_float(sliced, 2).to_pylist() == expected


def test_write_refuses_existing_tables_unless_replace(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    assert syn.write_demo_source(url, 300)["claimants"] == 300
    with pytest.raises(ValueError, match=r"already exist.*replace=True"):
        syn.write_demo_source(url, 100)
    # Still the original data.
    got_c, _ = _read_back(url)
    assert len(got_c) == 300
    counts = syn.write_demo_source(url, 100, replace=True)
    assert counts["claimants"] == 100
    got_c, got_p = _read_back(url)
    exp_c, exp_p = _expected_rows(100)
    assert (got_c, got_p) == (exp_c, exp_p)


def test_refuses_when_only_one_table_exists(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE payments (id INTEGER)")
    engine.dispose()
    with pytest.raises(ValueError, match="payments"):
        syn.write_demo_source(url, 10)
    assert syn.write_demo_source(url, 10, replace=True)["claimants"] == 10


@pytest.mark.slow
def test_default_size_into_sqlite_is_fast(tmp_path: Path) -> None:
    start = time.perf_counter()
    counts = syn.write_demo_source(f"sqlite:///{tmp_path / 'demo.db'}")
    elapsed = time.perf_counter() - start
    assert counts["claimants"] == syn.DEFAULT_PEOPLE
    assert 250_000 < counts["payments"] < 350_000
    assert elapsed < 15, f"{syn.DEFAULT_PEOPLE:,} people took {elapsed:.1f}s into SQLite"


@pytest.mark.integration
def test_write_postgresql_round_trip(postgres_url: str) -> None:
    _check_round_trip(postgres_url, SMALL, schema="demo_src")
    with pytest.raises(ValueError, match="already exist"):
        syn.write_demo_source(postgres_url, 10, schema="demo_src")
    assert syn.write_demo_source(postgres_url, 50, schema="demo_src", replace=True)["claimants"] == 50
    assert _read_back(postgres_url, "demo_src") == _expected_rows(50)
    # Column types as declared.
    engine = sa.create_engine(postgres_url)
    cols = {c["name"]: c for c in sa.inspect(engine).get_columns("claimants", schema="demo_src")}
    engine.dispose()
    assert str(cols["weekly_amount"]["type"]) == "NUMERIC(8, 2)"
    assert str(cols["sex"]["type"]) == "CHAR(1)"
    assert cols["claim_end"]["nullable"] and not cols["claim_start"]["nullable"]


@pytest.mark.integration
def test_write_mariadb_round_trip(mariadb_url: str) -> None:
    _check_round_trip(mariadb_url, SMALL)
    with pytest.raises(ValueError, match="already exist"):
        syn.write_demo_source(mariadb_url, 10)
    assert syn.write_demo_source(mariadb_url, 50, replace=True)["claimants"] == 50
    assert _read_back(mariadb_url) == _expected_rows(50)
    engine = sa.create_engine(mariadb_url)
    cols = {c["name"]: c for c in sa.inspect(engine).get_columns("claimants")}
    engine.dispose()
    assert str(cols["weekly_amount"]["type"]) == "DECIMAL(8, 2)"
    assert cols["claim_end"]["nullable"] and not cols["nino"]["nullable"]
