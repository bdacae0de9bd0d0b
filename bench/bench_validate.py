"""Release-gate benchmark (``validation.staged_file.validate_parquet``), run by hand (never in the timed test suite).

    .venv/bin/python bench/bench_validate.py [--rows 5000000] [--batch-rows 250000] [--keep DIR]

Writes N rows of a realistic masked Parquet file (two 32-hex pseudonym columns, years, codes, labels,
quarters, decimal amounts) to a temporary folder, then measures in the same run, each in a fresh
process so peak RSS is its own:
  1. ``read``: reading every column of the file with pyarrow alone (``iter_batches``, the floor),
  2. ``validate``: ``validate_parquet`` with rules like the pipeline's (pseudonym format, not-null,
     uniqueness, year/label/quarter/amount domains, and the leak check with a registered sample of
     ~1000 identifiers). Great Expectations is imported before the clock starts (a fixed ~4 s).
Prints rows/s, the ratio to the pyarrow read and peak RSS of each.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from benchlib import run_step

from validation import leakage
from validation.gx_adapter import import_gx
from validation.leakage import IdentifierSample
from validation.model import ColumnRule, DatasetRules, Domain
from validation.staged_file import validate_parquet

REGIONS = ("North East", "North West", "Yorkshire", "East Midlands", "West Midlands", "East", "London",
           "South East", "South West", "Wales", "Scotland", "Northern Ireland")
BENEFITS = ("UC", "PIP", "ESA", "JSA", "CA", "AA", "DLA", "SP")
SEXES = ("F", "M", "X")


def _pseudonyms(rng, rows: int, *, null_every: int = 0):
    """``rows`` random 32-hex strings, built as one Arrow buffer (no Python string per row)."""
    hexdigits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    raw = rng.integers(0, 256, size=rows * 16, dtype=np.uint8)
    chars = np.empty(rows * 32, dtype=np.uint8)
    chars[0::2] = hexdigits[raw >> 4]
    chars[1::2] = hexdigits[raw & 15]
    offsets = np.arange(0, rows * 32 + 1, 32, dtype=np.int32)
    array = pa.StringArray.from_buffers(rows, pa.py_buffer(offsets), pa.py_buffer(chars))
    if null_every:
        mask = np.zeros(rows, dtype=bool)
        mask[::null_every] = True
        array = pc.if_else(pa.array(mask), pa.scalar(None, pa.string()), array)
    return array


def _labels(rng, rows: int, choices: tuple[str, ...]):
    indices = pa.array(rng.integers(0, len(choices), size=rows, dtype=np.int32))
    return pa.DictionaryArray.from_arrays(indices, pa.array(choices)).cast(pa.string())


def _money(pence):
    """decimal128(8, 2) from integer pence, built from little-endian int128 words (as demo.synthetic)."""
    words = np.empty((len(pence), 2), dtype="<i8")
    words[:, 0] = pence
    words[:, 1] = np.where(pence < 0, -1, 0)
    return pa.Array.from_buffers(pa.decimal128(8, 2), len(pence), [None, pa.py_buffer(words)])


def write_file(path: Path, rows: int, chunk: int = 500_000) -> None:
    rng = np.random.default_rng(7)
    schema = pa.schema([("person_id", pa.string()), ("nino_id", pa.string()), ("birth_year", pa.int32()),
                        ("claim_year", pa.int32()), ("sex", pa.string()), ("region", pa.string()),
                        ("benefit_code", pa.string()), ("claim_quarter", pa.string()),
                        ("weekly_amount", pa.decimal128(8, 2)), ("household_size", pa.int64())])
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            years = rng.integers(2000, 2026, size=n)
            quarters = [f"{y}-Q{q}" for y, q in zip(years.tolist(), rng.integers(1, 5, size=n).tolist(), strict=True)]
            pence = rng.integers(0, 4000, size=n) * 500  # rounded to £5
            table = pa.table([
                _pseudonyms(rng, n),
                _pseudonyms(rng, n, null_every=97),
                pa.array(rng.integers(1920, 2010, size=n), pa.int32()),
                pa.array(years, pa.int32()),
                _labels(rng, n, SEXES),
                _labels(rng, n, REGIONS),
                _labels(rng, n, BENEFITS),
                pa.array(quarters, pa.string()),
                _money(pence),
                pa.array(rng.integers(1, 9, size=n) * 10, pa.int64()),
            ], schema=schema)
            writer.write_table(table, row_group_size=chunk)


def rules(rows: int) -> DatasetRules:
    years = (Domain("between", min_value=1850, max_value=2027),)
    return DatasetRules("claimants", (
        ColumnRule("person_id", pseudonym=True, not_null=True, unique=True, type="string", leak="exact"),
        ColumnRule("nino_id", pseudonym=True, type="string", leak="exact"),
        ColumnRule("birth_year", not_null=True, type="int32", domains=years),
        ColumnRule("claim_year", not_null=True, type="int32", domains=years),
        ColumnRule("sex", type="string", leak="substring", domains=(Domain("in_set", values=SEXES),)),
        ColumnRule("region", type="string", leak="substring", domains=(Domain("in_set", values=REGIONS),)),
        ColumnRule("benefit_code", type="string", leak="substring"),
        ColumnRule("claim_quarter", type="string", leak="substring",
                   domains=(Domain("regex", regex=r"^[0-9]{4}-Q[1-4]\Z"),)),
        ColumnRule("weekly_amount", not_null=True, type="decimal128(8, 2)",
                   domains=(Domain("multiple_of", base=5.0), Domain("between", min_value=0.0))),
        ColumnRule("household_size", type="int64", domains=(Domain("multiple_of", base=10.0),)),
    ), expected_rows=rows)


def identifiers():
    """~1000 NINO-like raw identifiers plus some numeric ids, as the pipeline draws them from the source."""
    letters = "ABCEGHJKLMNPRSTWXYZ"
    ninos = [f"{letters[n % 19]}{letters[n // 19 % 19]}{123457 * n % 1_000_000:06d}{'ABCD'[n % 4]}"
             for n in range(900)]
    ids = [str(10_000_000 + 7919 * i) for i in range(100)]
    return IdentifierSample.from_values(ninos + ids)


# ---- measured steps (each runs in its own process: `bench_validate.py --step NAME FILE`) --------

def step_read(path: Path, batch_rows: int) -> int:
    rows = 0
    parquet = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)
    for batch in parquet.iter_batches(batch_size=batch_rows, use_pandas_metadata=False):
        rows += batch.num_rows
    return rows


def step_validate(path: Path, batch_rows: int) -> int:
    rows = pq.ParquetFile(path).metadata.num_rows
    token = leakage.register(identifiers())
    try:
        summary = validate_parquet(path, rules(rows), batch_rows=batch_rows, leak_token=token)
    finally:
        leakage.unregister(token)
    if not summary.success:
        raise SystemExit(f"the benchmark file failed the gate: {[f.to_dict() for f in summary.failures()]}")
    return summary.rows


STEPS = {"read": step_read, "validate": step_validate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--batch-rows", type=int, default=250_000)
    parser.add_argument("--keep", type=Path, help="write the file into this folder and reuse it if present")
    parser.add_argument("--steps", default=",".join(STEPS), help="comma-separated subset")
    parser.add_argument("--step", nargs=2, metavar=("NAME", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        name, file = args.step
        # Everything the steps use is imported before the clock starts (rates measure work, not start-up);
        # Great Expectations, imported on first use, is timed apart.
        import_seconds = 0.0
        if name == "validate":
            started = time.perf_counter()
            import_gx()
            import validation.expectations  # noqa: F401, PLC0415 - deferred: it imports GX (~3 s), timed apart
            import_seconds = time.perf_counter() - started
        started = time.perf_counter()
        rows = STEPS[name](Path(file), args.batch_rows)
        seconds = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"step": name, "rows": rows, "seconds": seconds, "import_seconds": import_seconds,
                          "peak_mib": peak}))
        return
    folder = args.keep or Path(tempfile.mkdtemp(prefix="ce-bench-validate-"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"claimants-{args.rows}.parquet"
    try:
        if not path.exists():
            started = time.monotonic()
            print(f"writing {args.rows:,} rows to {path} ...", flush=True)
            write_file(path, args.rows)
            print(f"  written in {time.monotonic() - started:.0f}s, {path.stat().st_size / 2**20:.0f} MiB",
                  flush=True)
        results = [run_step(__file__, name, str(path), "--batch-rows", str(args.batch_rows))
                   for name in args.steps.split(",")]
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    floor = next((r for r in results if r.get("step") == "read" and "rows" in r), None)
    floor_rate = floor["rows"] / floor["seconds"] if floor else None
    print(f"\n{'step':<10} {'rows':>11} {'seconds':>8} {'rows/s':>12} {'× read':>7} {'peak RSS':>9}")
    for r in results:
        if "error" in r:
            print(f"{r['step']:<10} failed: {r['error']}")
            continue
        rate = r["rows"] / r["seconds"]
        ratio = f"{rate / floor_rate:.2f}" if floor_rate else "-"
        print(f"{r['step']:<10} {r['rows']:>11,} {r['seconds']:>8.2f} {rate:>12,.0f} {ratio:>7} "
              f"{r['peak_mib']:>7.0f} MiB" + (f"  (+{r['import_seconds']:.1f}s importing GX, not timed)"
                                              if r.get("import_seconds") else ""))
    print(f"\nmachine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, batch_rows={args.batch_rows:,}")


if __name__ == "__main__":
    main()
