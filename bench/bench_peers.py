"""The same delivery job through the peer (DuckDB) and through this project, in one run, round by round.

    .venv/bin/python bench/bench_peers.py [--rows 1000000] [--keep] [--repeat 3] [--steps copy,duckdb,pipeline,dag]

Needs the ``bench`` extra (``uv pip install -c constraints.txt -e ".[dev,bench]"``): DuckDB 1.5 and its postgres
scanner from the package index, loaded from the installed file (offline, signature checked).

The job (issue #17), on N synthetic claimants in PostgreSQL (bench_extract's generator, kept with --keep):
read 7 columns, pseudonymise the NINO with keyed HMAC-SHA256 (the documented formula, docs/formats.md),
generalise date of birth and claim start to the year, write Parquet (zstd), encrypt to one age recipient.

Steps, each round in this order, each in a fresh process so its peak RSS is its own:
  copy      the server's own ``COPY (SELECT the 7 columns) TO '/dev/null'``: the floor of one backend;
  duckdb    DuckDB + postgres scanner, HMAC composed in SQL from its sha256 (RFC 2104: the key padded to the
            block, sha256(opad ‖ sha256(ipad ‖ message))), ``COPY … TO parquet (zstd)``, then age (pyrage);
  pipeline  this project's whole delivery as ``contract-extracts run`` runs it (bench_extract --step pipeline:
            authorise, extract, mask, keyed row order, release gate with Great Expectations, package, sign,
            encrypt, deliver; the stages before the gate in a forked child while GX is imported, cli/run.py);
  pipeline-seq  the same with every stage in one process one after another (``Pipeline.run_all``): what the
            overlap of the GX import saves (not in the default steps);
  dag       the same delivery as a real DAG run: Airflow (scheduler, dag processor, API server, LocalExecutor,
            PostgreSQL metadata) started once before the rounds (tests/scheduler/cluster.py), one run
            triggered per round through the REST API, timed by Airflow's own start and end of the run; peak
            RSS is the largest task process seen (sampled every 0.1 s).

Before the rounds, DuckDB's SQL pseudonyms of the first 5,000 NINOs are checked byte for byte against the
documented formula (Python's hmac) and against the project's own ``pseudonymise_array``.
Prints rows/s, the ratio to COPY and to DuckDB of the same round's medians, and peak RSS.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import hmac
import importlib.metadata
import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from benchlib import run_step

if TYPE_CHECKING:
    import duckdb

    from tests.scheduler.cluster import Cluster

# Each measured step runs in its own process and imports only its own libraries (before its clock starts), so
# its peak RSS is its own: DuckDB's process holds no pandas or Great Expectations, the pipeline's no DuckDB.

COLUMNS = "nino, date_of_birth, sex, region, benefit_code, weekly_amount, claim_start"
ENTITY = "person"
DAG = "contract_c_bench_1"
CONF = {"delivery_reference": "BENCH-1", "reason": "benchmark against the peer"}


# ---- the peer: DuckDB ---------------------------------------------------------------------------

def duckdb_connection(url: str) -> duckdb.DuckDBPyConnection:
    """DuckDB with the postgres scanner loaded from the installed file (no download) and the source attached."""
    import duckdb  # noqa: PLC0415 - deferred: only the DuckDB step's process holds DuckDB
    import duckdb_extension_postgres_scanner  # noqa: PLC0415 - deferred: as above

    extension = (Path(duckdb_extension_postgres_scanner.__file__).parent / "extensions" / f"v{duckdb.__version__}"
                 / "postgres_scanner.duckdb_extension")
    con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    con.execute(f"LOAD '{extension}'")
    u = sa.engine.make_url(url)
    con.execute(f"ATTACH 'host={u.host} port={u.port or 5432} user={u.username} dbname={u.database}' AS pg "
                "(TYPE postgres, READ_ONLY)")
    return con


def hmac_sql(key: bytes, column: str) -> str:
    """HMAC-SHA256(key, "person\\x00" ‖ canonical NINO), first 32 hex, composed from DuckDB's sha256 (RFC 2104)."""
    block = key.ljust(64, b"\x00")  # a 32-byte key is shorter than SHA-256's 64-byte block: padded with zeros
    ipad = bytes(b ^ 0x36 for b in block) + ENTITY.encode() + b"\x00"
    opad = bytes(b ^ 0x5C for b in block)
    canon = f"upper(regexp_replace({column}, '\\s', '', 'g'))"
    inner = f"unhex(sha256(unhex('{ipad.hex()}') || encode({canon})))"
    return (f"CASE WHEN {canon} IS NULL OR {canon} = '' THEN NULL "
            f"ELSE left(sha256(unhex('{opad.hex()}') || {inner}), 32) END")


def peer_select(key: bytes) -> str:
    return (f"SELECT {hmac_sql(key, 'nino')} AS nino, CAST(year(date_of_birth) AS SMALLINT) AS date_of_birth, "
            "sex, region, benefit_code, weekly_amount, CAST(year(claim_start) AS SMALLINT) AS claim_start "
            "FROM pg.public.claimants")


def step_duckdb(url: str) -> int:
    import pyrage  # noqa: PLC0415 - deferred: the DuckDB step's own libraries only

    key = os.urandom(32)
    recipient = pyrage.x25519.Identity.generate().to_public()
    con = duckdb_connection(url)
    with tempfile.TemporaryDirectory(prefix="ce-peer-") as tmp:
        out = Path(tmp) / "claimants.parquet"
        con.execute(f"COPY ({peer_select(key)}) TO '{out}' (FORMAT parquet, COMPRESSION zstd)")
        rows = int(con.execute(f"SELECT count(*) FROM read_parquet('{out}')").fetchone()[0])
        pyrage.encrypt_file(str(out), str(out) + ".age", [recipient])
    con.close()
    return rows


def step_copy(url: str) -> int:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(f"COPY (SELECT {COLUMNS} FROM claimants) TO '/dev/null'").rowcount
    engine.dispose()
    return rows


def _pipeline() -> Callable[[str], int]:
    from bench_extract import step_pipeline  # noqa: PLC0415 - deferred: the pipeline's process only

    return step_pipeline


def _pipeline_sequential() -> Callable[[str], int]:
    from bench_extract import step_pipeline  # noqa: PLC0415 - deferred: as above

    import cli.run  # noqa: PLC0415 - deferred: the pipeline's process only

    cli.run.overlap_possible = lambda: False  # every stage in this process, one after another (Pipeline.run_all)
    return step_pipeline


def _duckdb() -> Callable[[str], int]:
    import duckdb  # noqa: F401, PLC0415 - deferred: imported before the clock, in the DuckDB step's process only
    import pyrage  # noqa: F401, PLC0415 - deferred: as above

    return step_duckdb


# Each step's libraries are imported before its clock starts (rates measure work, not start-up).
STEPS: dict[str, Callable[[], Callable[[str], int]]] = {
    "copy": lambda: step_copy, "duckdb": _duckdb, "pipeline": _pipeline, "pipeline-seq": _pipeline_sequential}


def check_identity(url: str, n: int = 5000) -> str:
    """DuckDB's SQL pseudonyms against the documented formula and the project's own, byte for byte."""
    import pyarrow as pa  # noqa: PLC0415 - deferred: the parent process of the rounds stays small

    from masking.pseudonyms import pseudonymise_array  # noqa: PLC0415 - deferred: as above

    key = os.urandom(32)
    con = duckdb_connection(url)
    rows = con.execute(f"SELECT nino, {hmac_sql(key, 'nino')} FROM pg.public.claimants ORDER BY id LIMIT {n}"
                       ).fetchall()
    con.close()
    raw = pa.array([r[0] for r in rows], pa.string())
    ours = pseudonymise_array(raw, key=key, entity=ENTITY, canonicaliser="nino").to_pylist()
    canonical = [None if v is None else "".join(v.split()).upper() for v in raw.to_pylist()]  # docs/formats.md
    documented = [None if not c else hmac.new(key, f"{ENTITY}\x00{c}".encode(), hashlib.sha256).hexdigest()[:32]
                  for c in canonical]
    peer = [r[1] for r in rows]
    same = sum(p == o == d for p, o, d in zip(peer, ours, documented, strict=True))
    if same != len(rows):
        raise SystemExit(f"pseudonyms differ: DuckDB, ours and the formula agree on {same} of {len(rows)}")
    return f"DuckDB's SQL HMAC, the project's pseudonyms and the documented formula agree on {same:,} of {len(rows):,}"


# ---- the pipeline as a real DAG run -------------------------------------------------------------

@contextlib.contextmanager
def airflow_for(url: str, root: Path) -> Iterator[Cluster]:
    """Airflow running the bench contract's DAG against the bench source (ledger in its own PostgreSQL db)."""
    from bench_extract import bench_home  # noqa: PLC0415 - deferred: the parent process of the rounds stays small

    from tests.scheduler.cluster import metadata_database, running_airflow  # noqa: PLC0415 - deferred: as above

    with metadata_database() as ledger_url:
        env = bench_home(url, {"CONTRACT_EXTRACTS_LEDGER_URL": ledger_url})
        env["AIRFLOW_CONN_BENCH"] = sa.engine.make_url(url).set(drivername="postgresql").render_as_string(False)
        base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "CONTRACT_EXTRACTS"))}
        with running_airflow(root, {**base, **env}) as cluster:
            cluster.wait_for("the bench DAG", lambda: cluster.api("GET", f"/dags/{DAG}")[0] == 200, timeout=120)
            cluster.ok("PATCH", f"/dags/{DAG}", {"is_paused": False})
            yield cluster


def _task_processes(cluster: Cluster) -> list[Any]:
    import psutil  # noqa: PLC0415 - deferred: the DAG rounds only

    found = []
    for proc in cluster.procs.values():
        with contextlib.suppress(psutil.Error):
            found.extend(psutil.Process(proc.pid).children(recursive=True))
    return found


def dag_round(cluster: Cluster, rows: int) -> dict[str, Any]:
    run = cluster.ok("POST", f"/dags/{DAG}/dagRuns", {"logical_date": None, "conf": CONF})["dag_run_id"]
    import psutil  # noqa: PLC0415 - deferred: the DAG rounds only

    peak = 0
    deadline = time.monotonic() + 3600
    while time.monotonic() < deadline:
        for proc in _task_processes(cluster):
            with contextlib.suppress(psutil.Error):
                if "task" in " ".join(proc.cmdline()) or proc.name().startswith("airflow"):
                    peak = max(peak, proc.memory_info().rss)
        state = cluster.ok("GET", f"/dags/{DAG}/dagRuns/{run}")
        if state["state"] in ("success", "failed"):
            break
        time.sleep(0.1)
    if state["state"] != "success":
        return {"step": "dag", "error": f"DAG run {run} ended {state['state']}"}
    seconds = (_when(state["end_date"]) - _when(state["start_date"]))
    tasks = cluster.ok("GET", f"/dags/{DAG}/dagRuns/{run}/taskInstances")["task_instances"]
    busy = {t["task_id"]: round(float(t.get("duration") or 0), 1) for t in tasks}
    return {"step": "dag", "rows": rows, "seconds": seconds, "peak_mib": peak / 2**20, "tasks": busy}


def _when(stamp: str) -> float:
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


# ---- rounds -------------------------------------------------------------------------------------

def rows_in(url: str) -> int:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = int(conn.execute(sa.text("SELECT count(*) FROM claimants")).scalar_one())
    engine.dispose()
    return rows


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = sorted((r for r in runs if "error" not in r), key=lambda r: r["seconds"])
    if not ok:
        return runs[-1]
    median = dict(ok[(len(ok) - 1) // 2])
    median["peak_mib"] = max(r["peak_mib"] for r in ok)
    median["all"] = [r["seconds"] for r in runs if "error" not in r]
    return median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true", help="reuse the generated database if present")
    parser.add_argument("--steps", default="copy,duckdb,pipeline,dag", help="comma-separated subset")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the median of each step is shown")
    parser.add_argument("--step", nargs=2, metavar=("NAME", "URL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        name, url = args.step
        step = STEPS[name]()
        started = time.perf_counter()
        rows = step(url)
        seconds = time.perf_counter() - started
        peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                   resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
        print(json.dumps({"step": name, "rows": rows, "seconds": seconds, "peak_mib": peak}))
        return
    from bench_extract import ensure_source  # noqa: PLC0415 - deferred: the parent process of the rounds stays small

    url = ensure_source(args.rows, args.keep)
    rows = rows_in(url)
    print(check_identity(url), flush=True)
    steps = args.steps.split(",")
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in steps}
    with contextlib.ExitStack() as stack:
        cluster = None
        if "dag" in steps:
            print("starting Airflow (scheduler, dag processor, API server) ...", flush=True)
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ce-peers-airflow-")))
            cluster = stack.enter_context(airflow_for(url, root))
        for round_no in range(args.repeat):
            for step in steps:
                result = dag_round(cluster, rows) if step == "dag" and cluster else run_step(__file__, step, url)
                runs[step].append(result)
                shown = (f"{result['seconds']:.1f} s" if "error" not in result else f"failed: {result['error']}")
                tasks = (f"  (task seconds: {', '.join(f'{k} {v}' for k, v in result['tasks'].items())})"
                         if "tasks" in result else "")
                print(f"  round {round_no + 1} {step:<12} {shown}{tasks}", flush=True)
    report(steps, runs, rows, args.repeat)


def report(steps: list[str], runs: dict[str, list[dict[str, Any]]], rows: int, repeat: int) -> None:
    results = {s: median_run(runs[s]) for s in steps}

    def rate(step: str) -> float | None:
        r = results.get(step)
        return r["rows"] / r["seconds"] if r and "error" not in r else None

    copy, peer = rate("copy"), rate("duckdb")
    print(f"\n{rows:,} rows, median of {repeat} rounds (each step's rounds: seconds)")
    print(f"{'step':<12} {'seconds':>8} {'rows/s':>11} {'× COPY':>7} {'× DuckDB':>9} {'peak RSS':>9}  rounds")
    for step in steps:
        r = results[step]
        if "error" in r:
            print(f"{step:<12} failed: {r['error']}")
            continue
        value = r["rows"] / r["seconds"]
        ratios = [f"{value / base:.2f}" if base else "-" for base in (copy, peer)]
        rss = "-" if step == "copy" else f"{r['peak_mib']:.0f} MiB"  # COPY runs in the server: no client
        print(f"{step:<12} {r['seconds']:>8.2f} {value:>11,.0f} {ratios[0]:>7} {ratios[1]:>9} {rss:>9}  "
              f"{', '.join(f'{s:.1f}' for s in r['all'])}")
    print(f"\nmachine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
          f"DuckDB {importlib.metadata.version('duckdb')}; load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
