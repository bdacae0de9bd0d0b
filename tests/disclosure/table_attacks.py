"""The intruder's attacks on a published aggregate table, with the true cells to judge them.

Each attack uses only what the recipient holds (the table and the manifest's description of it: dimensions,
threshold, rounding base, grossing factor, ptable); the truth (the cell's units before protection) is used only
to decide whether the attack succeeded:

* **ratio**: count = sum / mean for every cell publishing both (and, grossed, / factor for the sample count);
* **grossing**: the sample count from a grossed count, count / factor, and how many sample counts a published
  grossed count is consistent with;
* **differencing**: a line's published total minus its published members gives the suppressed members' sum;
* **linear programming**: bounds on every suppressed cell (scipy's ``linprog``) from all lines at once, every
  published count known to lie in its rounding interval, every listed cell non-empty and every published one at
  or above the threshold; the intruder must not prove a small cell small, nor pin any suppressed cell down.

``attack`` raises AssertionError naming the first attack that worked.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from scipy.optimize import linprog

Key = tuple[tuple[str, Any], ...]
SMALL_CELLS_SOLVED = 40  # LP bounds per perturbed table: the first this many small cells (two LPs each)


@dataclass(frozen=True)
class TrueCell:
    units: int  # unweighted units (records or distinct units)
    count: float  # the grossed count before rounding (= units without grossing)
    nonempty: Mapping[str, float]  # per averaged column: grossed number of non-empty values


def cell_key(row: Mapping[str, Any], by: Sequence[str]) -> Key:
    over = set(filter(None, (row["total_over"] or "").split(",")))
    return tuple(("T", None) if d in over else ("v", row[d]) for d in by)


def lines(keys: Sequence[Key]) -> list[tuple[list[int], int]]:
    """Every line of the table: (member row indices, total row index)."""
    index = {k: i for i, k in enumerate(keys)}
    groups: dict[tuple[int, Key], list[int]] = {}
    for i, k in enumerate(keys):
        for d, part in enumerate(k):
            if part[0] == "v":
                groups.setdefault((d, (*k[:d], ("T", None), *k[d + 1:])), []).append(i)
    return [(members, index[total]) for (_, total), members in groups.items() if total in index]


def round_to_base(value: float, base: int) -> int:
    return math.floor(value / base + 0.5) * base


def consistent_units(published: int, factor: float, base: int, low: int, high: int) -> list[int]:
    """Sample counts n in [low, high] whose grossed, rounded count is ``published``."""
    return [n for n in range(low, high + 1) if round_to_base(n * factor, base) == published]


def attack(table: pa.Table, summary: Mapping[str, Any], truth: Mapping[Key, TrueCell]) -> dict[str, int]:
    """Run every attack on one published table; returns how many cells/lines each examined."""
    by = list(summary["by"])
    rows = table.to_pylist()
    keys = [cell_key(r, by) for r in rows]
    assert all(k in truth for k in keys), "every published cell exists"
    examined = {"ratio": 0, "grossing": 0, "differencing": 0, "lp": 0}
    if summary.get("protection") == "cell_key":
        examined["lp"] = _cell_key_attacks(rows, keys, summary, truth)
        return examined
    threshold = int(summary["threshold"])
    base = int(summary.get("count_rounding") or summary["rounding"])
    grossed = summary.get("grossed") or {}
    factor = float(grossed["factor"]) if grossed.get("by") == "inverse sampling fraction" else 1.0
    weighted = grossed.get("by") == "weight"
    unweighted_base = int(summary["rounding"])

    # 1. ratio: sum / mean of the same cell.
    for r, k in zip(rows, keys, strict=True):
        for name in r:
            if not name.startswith("mean_"):
                continue
            column = name[len("mean_"):]
            total, mean = r.get(f"sum_{column}"), r[name]
            if total is None or mean in (None, 0):
                continue
            examined["ratio"] += 1
            ratio = total / mean
            true_nonempty = truth[k].nonempty[column]
            # The ratio is a rounded (grossed) count: a multiple of the base, never finer.
            assert abs(ratio - round_to_base(ratio, base)) <= max(0.02 * base, 0.01 * ratio), \
                f"ratio attack: sum/mean = {ratio:.3f} is not a rounded count (cell {k})"
            if factor == 1 and not weighted and round(ratio) == round(true_nonempty):
                # Only where the true count is itself a multiple of the base (rounding left it as it was).
                assert round(true_nonempty) % base == 0, f"ratio attack recovered the exact count of cell {k}"
            if factor > 1:
                candidates = consistent_units(round_to_base(ratio, base), factor, base, 1, 10 * truth[k].units + 10)
                assert round(ratio / factor) != truth[k].units or len(candidates) >= min(2, unweighted_base), \
                    f"ratio attack recovered the sample count of cell {k}"

    # 2. grossing: count / factor.
    if factor > 1:
        hits = 0
        published = [(r["count"], k) for r, k in zip(rows, keys, strict=True) if r.get("count") is not None]
        for count, k in published:
            examined["grossing"] += 1
            n = truth[k].units
            candidates = consistent_units(count, factor, base, threshold, 10 * n + 10)
            assert n in candidates, "the true sample count is consistent with the published one"
            # (A contract that rounds to 1 publishes exact counts by choice; the grossed ones may then be exact too.)
            assert len(candidates) >= min(2, unweighted_base), \
                f"grossing attack: cell {k} allows only sample count {candidates}"
            if count > round_to_base(threshold * factor, base):  # away from the threshold's edge
                assert len(consistent_units(count, factor, base, 1, 10 * n + 10)) >= unweighted_base, \
                    f"grossing attack: cell {k} is narrower than an unweighted rounded count"
            hits += round(count / factor) == n
        if len(published) >= 10:
            assert hits <= 0.5 * len(published), f"grossing attack: count/factor is right for {hits} cells"

    # 3. differencing with the margins.
    for members, total in lines(keys):
        suppressed = [i for i in members if rows[i]["suppressed"]]
        if not suppressed or rows[total]["suppressed"]:
            continue
        examined["differencing"] += 1
        assert len(suppressed) >= 2, f"differencing: line of {keys[total]} has one suppressed cell"
        held = sum(truth[keys[i]].units for i in suppressed)
        assert held >= threshold, f"differencing: the suppressed cells of a line hold {held} < {threshold} units"

    # 4. linear programming over every line at once (unweighted units, or the weighted count with weights).
    examined["lp"] = _lp_attack(rows, keys, truth, threshold=threshold, base=base, factor=factor,
                                weighted=weighted, additive=summary["unit"] == "record")
    return examined


def solve(objective: np.ndarray, a_ub: Any, b_ub: Any, a_eq: Any, b_eq: Any, bounds: list) -> Any:
    """HiGHS through ``linprog``; without presolve when presolve cannot tell infeasible from unbounded."""
    result = linprog(objective, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=b_eq, bounds=bounds, method="highs")
    if result.status not in (0, 3):
        result = linprog(objective, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=b_eq, bounds=bounds, method="highs",
                         options={"presolve": False})
    return result


def _lp_attack(rows: list[dict[str, Any]], keys: list[Key], truth: Mapping[Key, TrueCell], *, threshold: int,
               base: int, factor: float, weighted: bool, additive: bool) -> int:
    n = len(rows)
    if not any(r["suppressed"] for r in rows):
        return 0
    bounds: list[tuple[float, float | None]] = []
    for r in rows:
        if r["suppressed"] or r.get("count") is None:
            bounds.append((0.0 if weighted else 1.0, None))
            continue
        low, high = (r["count"] - base / 2) / factor, (r["count"] + base / 2) / factor
        bounds.append((low if weighted else max(low, threshold), high))
    equalities: list[np.ndarray] = []
    inequalities: list[np.ndarray] = []
    for members, total in lines(keys):
        row = np.zeros(n)
        row[members] = 1.0
        row[total] = -1.0
        if additive:
            equalities.append(row)
        else:  # distinct units: a unit may be in several members, so total ≤ Σ members and ≥ each member
            inequalities.append(-row)
            for m in members:
                each = np.zeros(n)
                each[m], each[total] = 1.0, -1.0
                inequalities.append(each)
    a_eq = np.vstack(equalities) if equalities else None
    b_eq = np.zeros(len(equalities)) if equalities else None
    a_ub = np.vstack(inequalities) if inequalities else None
    b_ub = np.zeros(len(inequalities)) if inequalities else None
    solved = 0
    for i, r in enumerate(rows):
        if not r["suppressed"]:
            continue
        objective = np.zeros(n)
        objective[i] = 1.0
        low = solve(objective, a_ub, b_ub, a_eq, b_eq, bounds)
        high = solve(-objective, a_ub, b_ub, a_eq, b_eq, bounds)
        assert low.status == 0 and high.status in (0, 3), "the published table is consistent with its own truth"
        upper = math.inf if high.status == 3 else -high.fun
        lower = low.fun
        true = truth[keys[i]].count if weighted else truth[keys[i]].units
        assert lower - 1e-6 <= true <= upper + 1e-6, "the LP bounds hold the truth"
        solved += 1
        assert upper - lower >= 1 - 1e-6, f"LP attack pinned suppressed cell {keys[i]} to [{lower:.2f}, {upper:.2f}]"
        if not weighted and truth[keys[i]].units < threshold:
            assert upper >= threshold - 1e-6, \
                f"LP attack proved suppressed cell {keys[i]} below the threshold (at most {upper:.2f})"
    return solved


def _cell_key_attacks(rows: list[dict[str, Any]], keys: list[Key], summary: Mapping[str, Any],
                      truth: Mapping[Key, TrueCell]) -> int:
    """Perturbed tables: no 1…s-1, noise within ±D, and the LP over lines cannot pin a small cell down."""
    ptable = summary["ptable"]
    smallest, max_noise = int(ptable["smallest_published"]), int(ptable["max_noise"])
    grossed = summary.get("grossed") or {}
    factor = float(grossed["factor"]) if grossed.get("by") == "inverse sampling fraction" else 1.0
    for r, k in zip(rows, keys, strict=True):
        published = r["count"] / factor
        assert round(published) == 0 or round(published) >= smallest, f"cell {k} publishes a count below {smallest}"
        assert abs(round(published) - truth[k].units) <= max_noise, f"cell {k} is off by more than {max_noise}"
    n = len(rows)
    bounds = [(max(0.0, r["count"] / factor - max_noise), r["count"] / factor + max_noise) for r in rows]
    # A line's listed members add up to at most its total: cells perturbed to 0 are missing from the table.
    below = []
    for members, total in lines(keys):
        row = np.zeros(n)
        row[members] = 1.0
        row[total] = -1.0
        below.append(row)
    if summary["unit"] != "record" or not below:
        a_ub, b_ub = None, None
    else:
        a_ub, b_ub = np.vstack(below), np.zeros(len(below))
    solved = 0
    for i in range(n):
        if truth[keys[i]].units >= smallest + max_noise:
            continue
        if solved >= SMALL_CELLS_SOLVED:
            break
        objective = np.zeros(n)
        objective[i] = 1.0
        low = linprog(objective, A_ub=a_ub, b_ub=b_ub, bounds=bounds, method="highs")
        high = linprog(-objective, A_ub=a_ub, b_ub=b_ub, bounds=bounds, method="highs")
        assert low.status == 0 and high.status == 0, "the published table is consistent with its own truth"
        assert low.fun - 1e-6 <= truth[keys[i]].units <= -high.fun + 1e-6, "the LP bounds hold the truth"
        solved += 1
        assert -high.fun - low.fun >= 1 - 1e-6, f"LP attack pinned small perturbed cell {keys[i]}"
    return solved


def attack_result(result: Any) -> dict[str, int]:
    """``attack`` on a ``disclosure.tables.TableResult``, with its own cells as the truth."""
    summary = result.summary
    grossed = summary.get("grossed") or {}
    factor = float(grossed["factor"]) if grossed.get("by") == "inverse sampling fraction" else 1.0
    truth = {c.key: TrueCell(units=c.units, count=c.values.get("count", c.units * factor),
                             nonempty=dict(c.nonempty)) for c in result.cells}
    return attack(result.table, summary, truth)
