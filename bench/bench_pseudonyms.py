"""Benchmark: pseudonymise 5,000,000 NINO values (the hot loop of masking). Not a test.

    .venv/bin/python bench/bench_pseudonyms.py [--values 5000000] [--repeat 3] [--spaced]

Every mode runs in its own process (so its peak RSS is its own) and streams record batches, never a
Python list of the whole column. Printed per mode: values/s (best of --repeat), values per CPU-second of
the process (all its threads: the per-core rate), the ratio to the plain loop measured in the same run, peak
RSS of the process (and of its hash workers), and whether the output is byte-identical to the design.md
formula computed by the plain loop (sha256 over all pseudonyms). When ``openssl`` is on PATH, its own
HMAC-SHA256 rate on 16-byte inputs (``openssl speed -bytes 16 -hmac sha256``: a canonical NINO with the
"person\x00" prefix is 16 bytes) is measured too, and every per-core rate is shown as a share of it.

Modes (masking.pseudonyms.pseudonymise_array with the "nino" canonicaliser, 65,536-value batches: the
pipeline default, unless said otherwise):
  baseline             [hmac.new(key, b"person\x00" + v.encode(), "sha256").hexdigest()[:32] for v in batch]
                       (canonical input; the loop alone is timed, as in field-notes.md)
  native, 1 thread     the native backend (OpenSSL's HMAC over the Arrow buffers) in the calling thread
  native, 2 threads    the same over 2 threads
  native, 2 threads large   the same with 1,048,576-value batches
  fallback, 1 process  the pure-Python backend (cryptography's HMAC, one copy() per value)
  fallback, 2 processes     the same over 2 worker processes, 1,048,576-value batches
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from masking.hashing import NATIVE, NATIVE_UNAVAILABLE, PYTHON, HashPool
from masking.pseudonyms import pseudonymise_array

ROOT = Path(__file__).resolve().parent.parent

KEY = hashlib.sha256(b"benchmark key, not a secret").digest()
ENTITY = "person"
LETTERS = np.frombuffer(b"ABCEGHJKLMNPRSTWXYZ", dtype=np.uint8)
SUFFIX = np.frombuffer(b"ABCD", dtype=np.uint8)
DIGITS = np.frombuffer(b"0123456789", dtype=np.uint8)


def nino_batch(start: int, n: int, spaced: bool) -> pa.Array:
    """n synthetic NINOs (format only), built straight into Arrow buffers; deterministic in ``start``."""
    rng = np.random.default_rng(start)
    width = 13 if spaced else 9
    chars = np.empty((n, width), dtype=np.uint8)
    cols = ([LETTERS, LETTERS] + [DIGITS] * 6 + [SUFFIX])
    picks = [c[rng.integers(0, len(c), n)] for c in cols]
    if spaced:  # "AB 12 34 56 C"
        layout = [0, 1, None, 2, 3, None, 4, 5, None, 6, 7, None, 8]
        for j, src in enumerate(layout):
            chars[:, j] = ord(" ") if src is None else picks[src]
    else:
        for j in range(9):
            chars[:, j] = picks[j]
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(chars.tobytes())])


CHUNK = 65_536  # data depends on the value index only, not on the batch size


def batches(total: int, size: int, spaced: bool):
    for start in range(0, total, size):
        stop = min(start + size, total)
        chunks = [nino_batch(c, min(CHUNK, stop - c), spaced) for c in range(start, stop, CHUNK)]
        yield chunks[0] if len(chunks) == 1 else pa.concat_arrays(chunks)


def cpu_seconds() -> float:
    """CPU time of this process so far, every thread included (not its children)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_baseline(total: int, size: int, spaced: bool) -> tuple[float, float, str]:
    digest = hashlib.sha256()
    elapsed = cpu = 0.0
    prefix = ENTITY.encode() + b"\x00"
    for batch in batches(total, size, spaced):
        values = ["".join(v.split()).upper() for v in batch.to_pylist()] if spaced else batch.to_pylist()
        t0, c0 = time.perf_counter(), cpu_seconds()
        out = [hmac.new(KEY, prefix + v.encode(), "sha256").hexdigest()[:32] for v in values]
        elapsed += time.perf_counter() - t0
        cpu += cpu_seconds() - c0
        digest.update("".join(out).encode())
    return elapsed, cpu, digest.hexdigest()


def run_masking(total: int, size: int, spaced: bool, workers: int, backend: str) -> tuple[float, float, str]:
    digest = hashlib.sha256()
    elapsed = cpu = 0.0
    with HashPool(workers, backend=backend) as pool:
        if workers > 1:  # start the workers before timing (a pipeline run starts them once per stage)
            pseudonymise_array(nino_batch(1, 40_000, spaced), key=KEY, entity=ENTITY, canonicaliser="nino",
                               pool=pool)
        for batch in batches(total, size, spaced):
            t0, c0 = time.perf_counter(), cpu_seconds()
            out = pseudonymise_array(batch, key=KEY, entity=ENTITY, canonicaliser="nino", pool=pool)
            elapsed += time.perf_counter() - t0
            cpu += cpu_seconds() - c0
            data = out.buffers()[2]
            digest.update(memoryview(data)[: 32 * len(out)])
    return elapsed, cpu, digest.hexdigest()


def child(args: argparse.Namespace) -> None:
    best = None
    for _ in range(args.repeat):
        if args.mode == "baseline":
            run = run_baseline(args.values, args.batch, args.spaced)
        else:
            run = run_masking(args.values, args.batch, args.spaced, args.workers, args.mode)
        best = run if best is None or run[0] < best[0] else best
    assert best is not None
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"seconds": best[0], "cpu_seconds": best[1], "sha256": best[2], "rss_mib": own,
                      "worker_rss_mib": children}))


def openssl_hmac_rate(seconds: int = 3) -> float | None:
    """HMAC-SHA256 per second on 16-byte inputs, one core, as ``openssl speed`` measures it (None: no openssl)."""
    if shutil.which("openssl") is None:
        return None
    out = subprocess.run(["openssl", "speed", "-seconds", str(seconds), "-bytes", "16", "-hmac", "sha256"],
                         capture_output=True, text=True, check=False).stdout
    match = re.search(r"^hmac\(sha256\)\s+([0-9.]+)k", out, re.MULTILINE)
    return float(match.group(1)) * 1000 / 16 if match else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--values", type=int, default=5_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--spaced", action="store_true", help="input like 'AB 12 34 56 C' instead of 'AB123456C'")
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=65_536, help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        child(args)
        return
    modes = [("baseline (plain hmac loop)", "baseline", 65_536, 1),
             ("native, 1 thread", NATIVE, 65_536, 1),
             ("native, 2 threads", NATIVE, 65_536, 2),
             ("native, 2 threads, 1,048,576/batch", NATIVE, 1_048_576, 2),
             ("fallback, 1 process", PYTHON, 65_536, 1),
             ("fallback, 2 processes, 1,048,576/batch", PYTHON, 1_048_576, 2)]
    if NATIVE_UNAVAILABLE is not None:
        print(f"native backend unavailable ({NATIVE_UNAVAILABLE}): its modes are skipped")
        modes = [m for m in modes if m[1] != NATIVE]
    print(f"{args.values:,} NINO values ({'spaced' if args.spaced else 'canonical'} input), best of "
          f"{args.repeat}; {os.cpu_count()} CPU(s)")
    results = {}
    for label, mode, batch, workers in modes:
        cmd = [sys.executable, __file__, "--mode", mode, "--batch", str(batch), "--workers", str(workers),
               "--values", str(args.values), "--repeat", str(args.repeat)] + (["--spaced"] if args.spaced else [])
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
        results[label] = json.loads(out.stdout.strip().splitlines()[-1])
    reference = openssl_hmac_rate()
    base = results["baseline (plain hmac loop)"]
    base_rate = args.values / base["seconds"]
    share = "of openssl" if reference else ""
    print(f"{'mode':40} {'values/s':>11} {'per CPU-s':>11} {share:>10} {'× baseline':>11} {'peak RSS':>9} "
          f"{'workers RSS':>12}  identical")
    for label, r in results.items():
        rate = args.values / r["seconds"]
        # Worker processes' CPU is not this process's: no per-core figure for them.
        per_cpu = args.values / r["cpu_seconds"] if not r["worker_rss_mib"] and r["cpu_seconds"] else None
        same = "yes" if r["sha256"] == base["sha256"] else "NO"
        workers_rss = f"{r['worker_rss_mib']:.0f} MiB" if r["worker_rss_mib"] else "-"
        per_cpu_text = f"{per_cpu:>11,.0f}" if per_cpu else f"{'-':>11}"
        share_text = f"{per_cpu / reference:>10.0%}" if per_cpu and reference else f"{'':>10}"
        print(f"{label:40} {rate:>11,.0f} {per_cpu_text} {share_text} {rate / base_rate:>10.2f}× "
              f"{r['rss_mib']:>5.0f} MiB {workers_rss:>12}  {same}")
    if reference:
        print(f"openssl speed -bytes 16 -hmac sha256 (one core): {reference:,.0f} HMAC/s")
    if any(r["sha256"] != base["sha256"] for r in results.values()):
        sys.exit("output differs from the design.md formula")


if __name__ == "__main__":
    main()
