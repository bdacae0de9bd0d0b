"""Information loss of the two table protections on the demo tables, run by hand (never in the timed suite).

    .venv/bin/python bench/bench_table_protection.py [--people 100000] [--fraction 1.0]

Builds the demo source's claimants in memory (demo.synthetic, the `make demo` data), stages them as the
masking stage would (year of birth, record keys under a throwaway master key), and builds each demo table
twice: with suppression (threshold 10, rounding 5, secondary suppression and the interval audit) and with
cell-key perturbation (the default ptable). Prints per table: cells, withheld cells, the mean absolute
deviation of all cells (a withheld cell deviates by its whole count) and of the published ones, and the
time taken. docs/disclosure.md quotes the numbers.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from contracts.disclosure import Aggregate
from demo.synthetic import claimant_batches
from disclosure.tables import build_table, build_tables
from masking.record_keys import RecordKeyPlan, record_key_column, record_key_secret, record_keys

TABLES = {
    "region x sex": ["region", "sex"],
    "benefit x region": ["benefit_code", "region"],
    "benefit x region x sex": ["benefit_code", "region", "sex"],
    "year of birth x region": ["date_of_birth", "region"],
}


def staged(people: int, folder: Path) -> Path:
    table = pa.Table.from_batches(list(claimant_batches(people)))
    secret = record_key_secret(secrets.token_bytes(32), "demo_claims")
    keys = record_keys(table["nino"], RecordKeyPlan(column="nino", entity="person", canonicaliser="nino"), secret)
    path = folder / "claimants.parquet"
    pq.write_table(pa.table({"nino": table["nino"], "region": table["region"], "sex": table["sex"],
                             "benefit_code": table["benefit_code"], "date_of_birth": pc.year(table["date_of_birth"]),
                             record_key_column("nino"): keys}), path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=100_000)
    parser.add_argument("--fraction", type=float, default=1.0, help="treat the data as a sample of this fraction")
    parser.add_argument("--together", action="store_true",
                        help="also build the suppression tables together, as one delivery of all of them does")
    args = parser.parse_args()
    fraction = args.fraction if args.fraction < 1 else None
    with tempfile.TemporaryDirectory() as tmp:
        path = staged(args.people, Path(tmp))
        print(f"{args.people} people" + (f", as a {fraction:g} sample" if fraction else ""))
        print(f"{'table':26} {'protection':12} {'cells':>6} {'withheld':>8} {'MAD all':>9} {'MAD published':>13} "
              f"{'seconds':>8}")
        for name, by in TABLES.items():
            for protection in ("suppression", "cell_key"):
                spec = {"name": "t", "dataset": "claimants", "by": by, "measures": ["count"], "unit": "nino",
                        "protection": protection}
                started = time.perf_counter()
                result = build_table(path, Aggregate.model_validate(spec), fraction=fraction)
                seconds = time.perf_counter() - started
                loss = result.summary["information_loss"]
                print(f"{name:26} {protection:12} {loss['cells']:>6} {loss['withheld']:>8} "
                      f"{loss['realised_mean_absolute_deviation']:>9.3f} "
                      f"{loss['realised_mean_absolute_deviation_published']:>13.3f} {seconds:>8.2f}")
        if args.together:
            specs = [(path, Aggregate.model_validate({"name": name.replace(" ", "_"), "dataset": "claimants", "by": by,
                                                      "measures": ["count"], "unit": "nino"}))
                     for name, by in TABLES.items()]
            started = time.perf_counter()
            results = build_tables(specs, fraction=fraction)
            seconds = time.perf_counter() - started
            print(f"suppression, all {len(specs)} tables protected together ({seconds:.2f} s):")
            for (name, _by), result in zip(TABLES.items(), results, strict=True):
                loss = result.summary["information_loss"]
                print(f"{name:26} {'together':12} {loss['cells']:>6} {loss['withheld']:>8} "
                      f"{loss['realised_mean_absolute_deviation']:>9.3f} "
                      f"{loss['realised_mean_absolute_deviation_published']:>13.3f}")


if __name__ == "__main__":
    main()
