"""Extraction benchmark against PostgreSQL, run by hand (never in the timed test suite).

    .venv/bin/python bench/bench_extract.py [--rows 5000000] [--keep] [--repeat 3] [--steps copy-server,extract,...]

Generates N synthetic claimants into a PostgreSQL database (kept with --keep for the next run), then
measures in the same run, each in a fresh process so peak RSS is its own:
  1. raw server COPY of the table to /dev/null (the floor of one backend, no client),
  2. ``psql \\copy`` of the table to /dev/null (libpq into a client that parses nothing),
  3. COPY TO STDOUT drained by psycopg (the in-process client floor),
  4. our extract alone (stream_batches, all 12 columns): the psql route, the in-process COPY route, and
     two partitions read by two processes at once,
  5. our extract through the generic SQLAlchemy path (for comparison),
  6. the whole delivery pipeline (extract → mask → validate → package → encrypt → deliver) for a
     contract that pseudonymises one identifier (the NINO), generalises two dates and keeps seven columns,
     as ``contract-extracts run`` runs it (``cli.run``).
Prints rows/s, the ratios to both raw COPYs and peak RSS of each.
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import psycopg
import sqlalchemy as sa
import yaml
from benchlib import run_rounds

from cli.run import run_delivery
from contracts.model import Contract
from core.settings import load_settings
from delivery.recipients import new_identity_file
from demo.runner import ensure_keys
from demo.synthetic import write_demo_source
from extract.partitioning import plan_ranges, range_clause, snapshot_connection
from extract.postgres import psql_environment
from extract.sources import create_source_engine, plan_query, reflect_table, stream_batches
from pipeline.stages import Pipeline, RunContext
from tests.authorisation.helpers import approve_for_tests, demo_catalogue, write_catalogue

ADMIN = os.environ.get("BENCH_PG_ADMIN", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def database_url(rows: int) -> str:
    return sa.engine.make_url(ADMIN).set(database=f"ce_bench_{rows}").render_as_string(hide_password=False)


def ensure_source(rows: int, keep: bool) -> str:

    url = database_url(rows)
    name = sa.engine.make_url(url).database
    admin = sa.create_engine(ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        exists = conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first()
        if exists and not keep:
            conn.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
            exists = None
        if not exists:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    admin.dispose()
    if not exists:
        started = time.monotonic()
        print(f"generating {rows:,} claimants into {name} ...", flush=True)
        write_demo_source(url, n_people=rows)
        # As a settled source table would be: hint bits set and statistics present, so the first measured
        # step does not pay for writing hint bits into every page and automatic partitions see reltuples.
        vacuum = sa.create_engine(url, isolation_level="AUTOCOMMIT")
        with vacuum.connect() as conn:
            conn.exec_driver_sql("VACUUM (ANALYZE) claimants")
        vacuum.dispose()
        print(f"  generated in {time.monotonic() - started:.0f}s", flush=True)
    return url


# ---- measured steps (each runs in its own process: `bench_extract.py --step NAME URL`) -----------

def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (/proc/stat: all but idle and iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def step_copy_server(url: str) -> int:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        result = conn.exec_driver_sql("COPY claimants TO '/dev/null'")
        rows = result.rowcount
    engine.dispose()
    return rows


def step_copy_psql(url: str) -> int:
    """``psql \\copy … to /dev/null``: the whole table through libpq into a client, parsed by nobody."""


    dsn = sa.engine.make_url(url).set(drivername="postgresql").render_as_string(False)
    with psycopg.connect(dsn) as conn:
        env = psql_environment(conn)
        rows = conn.execute("SELECT count(*) FROM claimants").fetchone()[0]
    subprocess.run(["psql", "-X", "-q", "-c", "\\copy claimants to /dev/null with (format csv)"], env=env,
                   check=True)
    return rows


def step_copy_client(url: str) -> int:

    rows = 0
    dsn = sa.engine.make_url(url).set(drivername="postgresql").render_as_string(False)
    with psycopg.connect(dsn) as conn, conn.cursor() as cur, \
            cur.copy("COPY claimants TO STDOUT WITH (FORMAT csv)") as copy:
        for chunk in copy:
            rows += bytes(chunk).count(b"\n")
    return rows


def _extract(url: str, method: str) -> int:

    contract = Contract.model_validate(bench_contract("keep-all"))
    engine = create_source_engine(sa.engine.make_url(url))
    dataset = contract.datasets[0]
    query = plan_query(reflect_table(engine, dataset, contract), dataset, contract)
    rows = sum(b.num_rows for b in stream_batches(engine, query, 65536, method=method))
    engine.dispose()
    return rows


def step_extract(url: str) -> int:
    return _extract(url, "auto")


def step_extract_copy(url: str) -> int:
    return _extract(url, "copy")


def step_extract_generic(url: str) -> int:
    return _extract(url, "generic")


def _extract_range(url: str, index: int, parts: int) -> int:

    contract = Contract.model_validate(bench_contract("keep-all"))
    engine = create_source_engine(sa.engine.make_url(url))
    dataset = contract.datasets[0]
    table = reflect_table(engine, dataset, contract)
    query = plan_query(table, dataset, contract)
    rng = plan_ranges(engine, table, "claimants", "id", parts)[index]
    with snapshot_connection(engine, None) as conn:
        rows = sum(b.num_rows for b in stream_batches(engine, query, 65536, connection=conn,
                                                      where=range_clause(table, rng)))
    engine.dispose()
    return rows


def step_extract_2parts(url: str) -> int:
    """Two partitions read by two processes at once (the mapped-task layout on one 2-core worker)."""

    with ProcessPoolExecutor(2) as pool:
        return sum(pool.map(_extract_range, [url, url], [0, 1], [2, 2]))


def bench_home(url: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """A throwaway home for the bench contract C-BENCH-1 (keys, one age recipient, catalogue, approvals): its
    environment variables (also set in this process), with ``extra`` (e.g. a ledger URL)."""
    home = Path(tempfile.mkdtemp(prefix="ce-bench-"))
    atexit.register(shutil.rmtree, home, True)  # its packages and ledger go with the process that made it
    keys = ensure_keys(home)
    public = new_identity_file(home / "identity.txt")
    contracts = home / "configs" / "contracts"
    contracts.mkdir(parents=True)
    spec = bench_contract("pipeline")
    spec["recipients"] = [{"name": "bench", "age": public}]
    (contracts / "C-BENCH-1.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    env = {"CONTRACT_EXTRACTS_HOME": str(home), "CONTRACT_EXTRACTS_CONFIG_DIR": str(home / "configs"),
           "CONTRACT_EXTRACTS_MASTER_KEY_FILE": str(keys["master"]),
           "CONTRACT_EXTRACTS_SIGNING_KEY_FILE": str(keys["signing"]),
           "CONTRACT_EXTRACTS_INSECURE_UNKEYED_LEDGER": "1", **(extra or {})}  # a throwaway ledger
    os.environ.update(env)  # the approvals below read the settings from the environment
    # The demo source's catalogue for the connection 'bench', and a throwaway approver for both. The job is the
    # peers' job (bench_peers.py): no disclosure control, which none of them does, so the three quasi-identifiers
    # the contract keeps (date of birth as a year, sex, region) are classed 'other' here; a real contract keeping
    # them needs a 'disclosure:' block (docs/disclosure.md).
    catalogue = {**demo_catalogue(), "source": "bench"}
    for column in ("date_of_birth", "sex", "region"):
        catalogue["tables"]["claimants"]["columns"][column]["class"] = "other"
    write_catalogue(home / "configs", catalogue)
    approve_for_tests(home / "configs", home, [contracts / "C-BENCH-1.yaml"])
    return env


def step_pipeline(url: str) -> int:
    bench_home(url)
    contracts = Path(os.environ["CONTRACT_EXTRACTS_CONFIG_DIR"]) / "contracts"
    ctx = RunContext(contract_path=contracts / "C-BENCH-1.yaml", settings=load_settings(), actor="bench",
                     run_key=f"bench/{uuid.uuid4()}", run_after=dt.datetime.now(dt.UTC),
                     resolve_connection=lambda _c: sa.engine.make_url(url), trigger={"system": "bench"})
    # As `contract-extracts run` runs it (cli.run): the stages before the release gate in a forked child while
    # this process imports Great Expectations, then the gate and the rest here.
    run_delivery(Pipeline(ctx))
    return _rows_of(url)


def _rows_of(url: str) -> int:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT count(*) FROM claimants")).scalar_one()
    engine.dispose()
    return rows


def bench_contract(kind: str) -> dict:
    def keep() -> dict:
        return {"treatment": "keep"}  # fresh dicts: YAML aliases are refused

    if kind == "keep-all":
        columns = {c: keep() for c in ("id", "nino", "first_name", "last_name", "date_of_birth", "sex", "postcode",
                                     "region", "benefit_code", "weekly_amount", "claim_start", "claim_end")}
    else:
        columns = {
            "nino": {"treatment": "pseudonymise", "entity": "person", "canonicalise": "nino"},
            "date_of_birth": {"treatment": "generalise", "to": "year"},
            "sex": keep(), "region": keep(), "benefit_code": keep(), "weekly_amount": keep(),
            "claim_start": {"treatment": "generalise", "to": "year"},
        }
    return {
        "contract": "C-BENCH-1", "title": "benchmark", "contractor": "Bench", "legal_gateway": "bench",
        "business_case": "bench", "security_assurance": {"framework": "SARA", "reference": "b",
                                                         "expires": "2099-01-01"},
        "valid": {"from": "2020-01-01", "until": "2099-01-01"}, "source": {"connection": "bench"},
        "population": {"entity": "person", "dataset": "claimants"},
        "datasets": [{"name": "claimants", "table": "claimants", "columns": columns}],
        "recipients": [{"name": "bench", "age": "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"}],
    }


STEPS = {"copy-server": step_copy_server, "copy-psql": step_copy_psql, "copy-client": step_copy_client,
         "extract": step_extract, "extract-copy": step_extract_copy,
         "extract-2parts": step_extract_2parts, "extract-generic": step_extract_generic, "pipeline": step_pipeline}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--keep", action="store_true", help="reuse the generated database if present")
    parser.add_argument("--steps", default=",".join(STEPS), help="comma-separated subset")
    parser.add_argument("--repeat", type=int, default=3, help="runs of every step; the median is shown")
    parser.add_argument("--step", nargs=2, metavar=("NAME", "URL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        name, url = args.step
        # Everything the steps use was imported at the top, before the clock: rates measure work, not start-up.
        busy_before = busy_cpu_seconds()
        started = time.perf_counter()
        rows = STEPS[name](url)
        seconds = time.perf_counter() - started
        cores_busy = (busy_cpu_seconds() - busy_before) / seconds
        peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                   resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
        print(json.dumps({"step": name, "rows": rows, "seconds": seconds, "peak_mib": peak,
                          "cores_busy": cores_busy}))
        return
    url = ensure_source(args.rows, args.keep)
    results = run_rounds(__file__, args.steps.split(","), url, args.repeat)
    def rate_of(step: str) -> float | None:
        found = next((r for r in results if r.get("step") == step and "rows" in r), None)
        return found["rows"] / found["seconds"] if found else None

    server, client = rate_of("copy-server"), rate_of("copy-psql")
    print(f"\n{'step':<16} {'rows':>11} {'seconds':>8} {'rows/s':>11} {'× COPY':>7} {'× psql':>7} {'peak RSS':>9}"
          f" {'cores busy':>10}")
    for r in results:
        if "error" in r:
            print(f"{r['step']:<16} failed: {r['error']}")
            continue
        rate = r["rows"] / r["seconds"]
        ratios = [f"{rate / base:.2f}" if base else "-" for base in (server, client)]
        print(f"{r['step']:<16} {r['rows']:>11,} {r['seconds']:>8.1f} {rate:>11,.0f} {ratios[0]:>7} {ratios[1]:>7} "
              f"{r['peak_mib']:>7.0f} MiB {r['cores_busy']:>10.2f}")
    print("\n× COPY: against the server's own COPY to /dev/null (no client at all); × psql: against "
          "`psql \\copy … to /dev/null` (the whole table through libpq into a client that parses nothing).")
    print(f"cores busy: CPU time of the whole machine (client, psql, hash workers and the PostgreSQL backends) "
          f"per second of the step, out of {os.cpu_count()}; a step near {os.cpu_count()} is bound by CPU, so "
          "partitions cannot speed it up on this machine.")
    print(f"\nmachine: {os.cpu_count()} cores, Python {sys.version.split()[0]}; each figure is the median of "
          f"{args.repeat} runs taken round by round, peak RSS the highest of them")


if __name__ == "__main__":
    main()
