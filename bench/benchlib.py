"""What the benchmarks share: each measured step runs in a fresh process so its peak RSS is its own."""

from __future__ import annotations

import json
import subprocess
import sys


def run_step(script: str, name: str, target: str, *extra: str) -> dict:
    """Run ``script --step NAME TARGET EXTRA…`` and return the JSON line it prints last (or the error)."""
    proc = subprocess.run([sys.executable, script, "--step", name, target, *extra], capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        return {"step": name, "error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_rounds(script: str, names: list[str], target: str, repeat: int) -> list[dict]:
    """Every step ``repeat`` times, round by round (so a noisy minute hits all steps alike), and per step the
    run of median duration with the highest peak RSS of its runs."""
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for _ in range(repeat):
        for name in names:
            runs[name].append(run_step(script, name, target))
    results = []
    for name in names:
        ok = sorted((r for r in runs[name] if "error" not in r), key=lambda r: r["seconds"])
        if not ok:
            results.append(runs[name][-1])
            continue
        median = dict(ok[(len(ok) - 1) // 2])
        median["peak_mib"] = max(r["peak_mib"] for r in ok)
        results.append(median)
    return results
