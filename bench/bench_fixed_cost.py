"""Fixed cost of one small delivery through ``contract-extracts run``, run by hand (never in the timed suite).

    .venv/bin/python bench/bench_fixed_cost.py [--rows 10000] [--repeat 3] [--keep]

Generates N claimants into PostgreSQL (bench_extract's generator and contract: the NINO pseudonymised,
two dates generalised, seven columns kept, Parquet zstd, one age recipient), then runs the whole
delivery — extract, mask, release gate (Great Expectations), package, encrypt, deliver — as an operator
would: ``contract-extracts run C-BENCH-1`` in a fresh process, timed from outside (wall clock of the
process, interpreter start-up and every import included). Issue #17's target: under 3 s for 10,000 rows.
Round by round it also runs the same command with the stages one after another in one process (no overlap
of the GX import, ``cli.run``), and ``import great_expectations`` alone in a fresh process, for reference.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import sqlalchemy as sa
from bench_extract import bench_home, ensure_source

# The same command with the stages run one after another in one process (cli.run.overlap_possible off): what
# the overlap of the GX import with the stages before the gate saves.
SEQUENTIAL = ("import sys, cli.run; cli.run.overlap_possible = lambda: False; from cli import main; "
              "sys.exit(main(['run', 'C-BENCH-1']))")


def cli_run(env: dict[str, str], *, sequential: bool = False) -> float:
    command = ([sys.executable, "-c", SEQUENTIAL] if sequential
               else [str(Path(sys.executable).with_name("contract-extracts")), "run", "C-BENCH-1"])
    started = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"contract-extracts run failed:\n{proc.stderr[-2000:]}")
    return seconds


def import_seconds(module: str) -> float:
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "GX_ANALYTICS_ENABLED": "false"})
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="reuse the generated database if present")
    args = parser.parse_args()
    url = ensure_source(args.rows, args.keep)
    env = {**os.environ, **bench_home(url)}
    env["AIRFLOW_CONN_BENCH"] = sa.engine.make_url(url).set(drivername="postgresql").render_as_string(False)
    runs: list[float] = []
    sequential: list[float] = []
    imports: list[float] = []
    for _ in range(args.repeat):  # round by round, so a noisy minute hits all alike
        runs.append(cli_run(env))
        sequential.append(cli_run(env, sequential=True))
        imports.append(import_seconds("great_expectations"))
    for label, values in (("contract-extracts run", runs), ("  the same, stages in one process", sequential),
                          ("import great_expectations alone", imports)):
        print(f"{label:<36} median {statistics.median(values):5.2f} s wall  "
              f"(runs: {', '.join(f'{s:.2f}' for s in values)})")
    print(f"{args.rows:,} rows; target for contract-extracts run: < 3 s; machine load now: "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
