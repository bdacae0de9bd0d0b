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

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from scipy.optimize import linprog

Key = tuple[tuple[str, Any], ...]


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


def complete(keys: list[Key], rows: list[dict[str, Any]]) -> tuple[list[Key], list[dict[str, Any]]]:
    """What the intruder reasons with beyond the listed cells: every margin the tables do not list (e.g. with
    ``margins: false``) is an unknown, non-empty cell (it holds a listed cell), added as an implicit row."""
    present = set(keys)
    keys, rows = list(keys), list(rows)
    for k in list(keys):
        vdims = [d for d, part in enumerate(k) if part[0] == "v"]
        for size in range(len(vdims)):
            for subset in itertools.combinations(vdims, size):
                projection = tuple(part if d in subset else ("T", None) for d, part in enumerate(k))
                if projection not in present:
                    present.add(projection)
                    keys.append(projection)
                    rows.append({"suppressed": True, "count": None, "implicit": True})
    return keys, rows


def known_exactly(keys: list[Key], truth: Mapping[Key, TrueCell], threshold: int, sampled: bool) -> set[int]:
    """Cells the intruder knows exactly whatever is published: in a grossed table, the grand total in sample units
    (the manifest gives the sample's size) unless it is below the threshold; and the only member of a line whose
    total is known (a dimension with one value)."""
    if not sampled:
        return set()
    known = {i for i, k in enumerate(keys) if all(part[0] == "T" for part in k) and truth[k].units >= threshold}
    grown = True
    while grown:
        grown = False
        for members, total in lines(keys):
            if len(members) == 1 and total in known and members[0] not in known:
                known.add(members[0])
                grown = True
    return known


def round_to_base(value: float, base: int) -> int:
    return math.floor(value / base + 0.5) * base


def consistent_units(published: int, factor: float, base: int, low: int, high: int) -> list[int]:
    """Sample counts n in [low, high] whose grossed, rounded count is ``published``."""
    return [n for n in range(low, high + 1) if round_to_base(n * factor, base) == published]


def _differencing(keys: list[Key], rows: list[dict[str, Any]], truth: Mapping[Key, TrueCell], known: set[int],
                  threshold: int, attack_name: str, held_text: Callable[[int], str]) -> int:
    """Differencing along every line whose total is known: a line with withheld cells must have at least two,
    holding at least ``threshold`` units together. Returns how many lines were examined."""
    examined = 0
    for members, total in lines(keys):
        suppressed = [i for i in members if rows[i]["suppressed"] and i not in known]
        if any(rows[i].get("implicit") for i in members):
            continue
        if not suppressed or (rows[total]["suppressed"] and total not in known):
            continue
        examined += 1
        assert len(suppressed) >= 2, f"{attack_name}: line of {keys[total]} has one suppressed cell"
        held = sum(truth[keys[i]].units for i in suppressed)
        assert held >= threshold, f"{attack_name}: the suppressed cells of a line hold {held_text(held)}"
    return examined


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
        # Over many cells of varied sizes, guessing count/factor is right about once in `rounding` cells (each
        # published count fits at least `rounding` sample counts, checked above). A few sizes repeated over few
        # cells can all sit where the guess is right (e.g. 8 cells of 7 or 10 units at base 33, factor 10.09):
        # the intruder still cannot tell those cells from the others, so only varied tables are counted.
        if len(published) >= 10 and len({truth[k].units for _c, k in published}) >= 10:
            assert hits <= 0.5 * len(published), f"grossing attack: count/factor is right for {hits} cells"

    # 3. differencing with the margins (and with the grand total, which the intruder may know exactly: a sample's
    #    size is in the manifest, population sizes are often published).
    keys, rows = complete(keys, rows)
    known = known_exactly(keys, truth, threshold, factor > 1)
    examined["differencing"] = _differencing(keys, rows, truth, known, threshold, "differencing",
                                             lambda held: f"{held} < {threshold} units")

    # 4. linear programming over every line at once (unweighted units, or the weighted count with weights).
    bounds = _bounds(rows, threshold=threshold, base=base, factor=factor, weighted=weighted)
    for i in known:
        exact = truth[keys[i]].count if weighted else float(truth[keys[i]].units)
        bounds[i] = (exact, exact)
    examined["lp"] = _lp_attack(rows, keys, truth, threshold=threshold, base=base, factor=factor,
                                weighted=weighted, additive=summary["unit"] == "record", bounds=bounds, known=known)
    return examined


def solve(objective: np.ndarray, a_ub: Any, b_ub: Any, a_eq: Any, b_eq: Any, bounds: list) -> Any:
    """HiGHS through ``linprog``; without presolve when presolve cannot tell infeasible from unbounded."""
    result = linprog(objective, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=b_eq, bounds=bounds, method="highs")
    if result.status not in (0, 3):
        result = linprog(objective, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=b_eq, bounds=bounds, method="highs",
                         options={"presolve": False})
    return result


def _bounds(rows: list[dict[str, Any]], *, threshold: int, base: int, factor: float,
            weighted: bool) -> list[tuple[float, float | None]]:
    """What the intruder knows of each cell: a published count lies in its rounding interval (and, unweighted, at
    or above the threshold); a listed withheld cell is non-empty."""
    bounds: list[tuple[float, float | None]] = []
    for r in rows:
        if r["suppressed"] or r.get("count") is None:
            bounds.append((0.0 if weighted else 1.0, None))
            continue
        low, high = (r["count"] - base / 2) / factor, (r["count"] + base / 2) / factor
        bounds.append((low if weighted else max(low, threshold), high))
    return bounds


def _lp_attack(rows: list[dict[str, Any]], keys: list[Key], truth: Mapping[Key, TrueCell], *, threshold: int,
               base: int, factor: float, weighted: bool, additive: bool,
               bounds: list[tuple[float, float | None]] | None = None, known: set[int] | None = None) -> int:
    """Bounds on every withheld cell from every line at once. Returns how many withheld cells were examined.

    The true table is a feasible point (checked first), so a cell's lower bound is at most its truth: a feasible
    table giving it at least truth + 1 (and the threshold, for a small cell) proves it safe. One LP pushing all
    withheld cells up finds most such tables at once; the rest get both bounds solved on their own.
    """
    n = len(rows)
    if not any(r["suppressed"] and not r.get("implicit") for r in rows):
        return 0
    if bounds is None:
        bounds = _bounds(rows, threshold=threshold, base=base, factor=factor, weighted=weighted)
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
    true = np.array([truth[k].count if weighted else truth[k].units for k in keys], dtype=np.float64)
    tolerance = 1e-6 * max(1.0, float(np.abs(true).max()))
    assert all(low - tolerance <= t and (high is None or t <= high + tolerance)
               for t, (low, high) in zip(true, bounds, strict=True)), "the truth lies within the published bounds"
    assert a_eq is None or np.abs(a_eq @ true).max() <= tolerance, "the true table satisfies every line"
    assert a_ub is None or (a_ub @ true).max() <= tolerance, "the true table satisfies every line"
    withheld = [i for i, r in enumerate(rows) if r["suppressed"] and not r.get("implicit") and i not in (known or ())]
    targets = {i: max(true[i] + 1, threshold if not weighted and true[i] < threshold else 0) for i in withheld}
    cap = float(true.sum() + threshold + 2)
    capped = [(low, cap if high is None else high) for low, high in bounds]
    remaining = set(withheld)
    while remaining:
        objective = np.zeros(n)
        objective[list(remaining)] = -1.0
        result = solve(objective, a_ub, b_ub, a_eq, b_eq, capped)
        assert result.status == 0, "the published table is consistent with its own truth"
        settled = {i for i in remaining if result.x[i] >= targets[i] - 1e-6}
        if not settled:
            break
        remaining -= settled
    for i in sorted(remaining):
        objective = np.zeros(n)
        objective[i] = 1.0
        low = solve(objective, a_ub, b_ub, a_eq, b_eq, bounds)
        high = solve(-objective, a_ub, b_ub, a_eq, b_eq, bounds)
        assert low.status == 0 and high.status in (0, 3), "the published table is consistent with its own truth"
        upper = math.inf if high.status == 3 else -high.fun
        lower = low.fun
        assert lower - 1e-6 <= true[i] <= upper + 1e-6, "the LP bounds hold the truth"
        assert upper - lower >= 1 - 1e-6, f"LP attack pinned suppressed cell {keys[i]} to [{lower:.2f}, {upper:.2f}]"
        if not weighted:
            assert true[i] >= threshold or upper >= threshold - 1e-6, \
                f"LP attack proved suppressed cell {keys[i]} below the threshold (at most {upper:.2f})"
    return len(withheld)


def attack_together(tables: Sequence[tuple[pa.Table, Mapping[str, Any], Mapping[Key, TrueCell]]]) -> dict[str, int]:
    """The attacks on several tables of one dataset and unit at once, as one table over all their dimensions.

    A cell of a table over B is the cell of a table over B′ ⊇ B summed over B′ − B. The intruder lifts every cell to
    the union of the dimensions, reads each figure from whichever table publishes it (intersecting the rounding
    intervals), and differences and bounds withheld cells over every line the tables complete together (e.g. a
    table without margins against another table's counts). Suppression tables only.
    """
    assert tables and all(s.get("protection", "suppression") == "suppression" for _t, s, _x in tables)
    dims = list(dict.fromkeys(d for _t, s, _x in tables for d in s["by"]))
    grossed = tables[0][1].get("grossed") or {}
    factor = float(grossed["factor"]) if grossed.get("by") == "inverse sampling fraction" else 1.0
    weighted = grossed.get("by") == "weight"
    threshold = max(int(s["threshold"]) for _t, s, _x in tables)
    merged: dict[Key, dict[str, Any]] = {}
    truth: dict[Key, TrueCell] = {}
    known: dict[Key, tuple[float, float]] = {}
    withheld_in: dict[Key, list[str]] = {}
    published_in: dict[Key, list[str]] = {}
    for table, summary, own in tables:
        by = list(summary["by"])
        base = int(summary.get("count_rounding") or summary["rounding"])
        for r in table.to_pylist():
            k = cell_key(r, by)
            lifted = tuple(dict(zip(by, k, strict=True)).get(d, ("T", None)) for d in dims)
            truth[lifted] = own[k]
            cell = merged.setdefault(lifted, {"suppressed": False, "count": None})
            if r["suppressed"]:
                cell["suppressed"] = True
                withheld_in.setdefault(lifted, []).append(summary["name"])
                continue
            published_in.setdefault(lifted, []).append(summary["name"])
            if r.get("count") is None or weighted:
                continue
            low = max(float(summary["threshold"]), (r["count"] - base / 2) / factor)
            high = (r["count"] + base / 2) / factor
            was = known.get(lifted, (0.0, math.inf))
            known[lifted] = (max(was[0], low), min(was[1], high))
    for _table, summary, own in tables:
        by = list(summary["by"])
        for k, cell in own.items():
            truth.setdefault(tuple(dict(zip(by, k, strict=True)).get(d, ("T", None)) for d in dims), cell)
    for k in withheld_in:
        assert k not in published_in, f"cell {k} is withheld in {withheld_in[k]} but published in {published_in[k]}"
    keys, rows = complete(list(merged), [merged[k] for k in merged])
    known_cells = known_exactly(keys, truth, threshold, factor > 1)
    examined = {"differencing": _differencing(keys, rows, truth, known_cells, threshold,
                                              "differencing across tables", lambda held: f"{held} units"),
                "lp": 0}
    bounds: list[tuple[float, float | None]] = []
    for k, r in zip(keys, rows, strict=True):
        if r["suppressed"] or k not in known:
            bounds.append((0.0 if weighted else (1.0 if r["suppressed"] else float(threshold)), None))
        else:
            bounds.append(known[k])
    for i in known_cells:
        exact = truth[keys[i]].count if weighted else float(truth[keys[i]].units)
        bounds[i] = (exact, exact)
    additive = all(s["unit"] == "record" for _t, s, _x in tables)
    examined["lp"] = _lp_attack(rows, keys, truth, threshold=threshold, base=1, factor=factor, weighted=weighted,
                                additive=additive, bounds=bounds, known=known_cells)
    return examined


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
    slack = max_noise + (0.5 / factor if factor > 1 else 0.0)  # a grossed count is rounded to a whole number
    bounds = [(max(0.0, r["count"] / factor - slack), r["count"] / factor + slack) for r in rows]
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
    # Every small cell (one the ptable may publish as 0 or move to the smallest count): the true table is feasible
    # (checked), so a feasible table giving a cell at least its truth + 1 proves it not pinned. One LP pushes all of
    # them up; the cells it does not settle get both bounds of their own.
    true = np.array([truth[k].units for k in keys], dtype=np.float64)
    assert all(low - 1e-6 <= t <= high + 1e-6 for t, (low, high) in zip(true, bounds, strict=True))
    assert a_ub is None or (a_ub @ true).max() <= 1e-6, "the true table satisfies every line"
    small = [i for i in range(n) if true[i] < smallest + max_noise]
    remaining = set(small)
    while remaining:
        objective = np.zeros(n)
        objective[list(remaining)] = -1.0
        result = linprog(objective, A_ub=a_ub, b_ub=b_ub, bounds=bounds, method="highs")
        assert result.status == 0, "the published table is consistent with its own truth"
        settled = {i for i in remaining if result.x[i] >= true[i] + 1 - 1e-6}
        if not settled:
            break
        remaining -= settled
    for i in sorted(remaining):
        objective = np.zeros(n)
        objective[i] = 1.0
        low = linprog(objective, A_ub=a_ub, b_ub=b_ub, bounds=bounds, method="highs")
        high = linprog(-objective, A_ub=a_ub, b_ub=b_ub, bounds=bounds, method="highs")
        assert low.status == 0 and high.status == 0, "the published table is consistent with its own truth"
        assert low.fun - 1e-6 <= true[i] <= -high.fun + 1e-6, "the LP bounds hold the truth"
        assert -high.fun - low.fun >= 1 - 1e-6, f"LP attack pinned small perturbed cell {keys[i]}"
    return len(small)


def attack_result(result: Any) -> dict[str, int]:
    """``attack`` on a ``disclosure.tables.TableResult``, with its own cells as the truth."""
    summary = result.summary
    grossed = summary.get("grossed") or {}
    factor = float(grossed["factor"]) if grossed.get("by") == "inverse sampling fraction" else 1.0
    truth = {c.key: TrueCell(units=c.units, count=c.values.get("count", c.units * factor),
                             nonempty=dict(c.nonempty)) for c in [*result.cells, *result.hidden]}
    return attack(result.table, summary, truth)


def attack_results_together(results: Sequence[Any]) -> dict[str, int]:
    """``attack_together`` on the suppression tables of ``results`` (``TableResult``s of one delivery) per family:
    one dataset, one unit, one weight."""
    families: dict[tuple[Any, ...], list[Any]] = {}
    for result in results:
        s = result.summary
        if s["protection"] == "suppression":
            families.setdefault((s["dataset"], s["unit"], str(s.get("grossed"))), []).append(result)
    examined: dict[str, int] = {"differencing": 0, "lp": 0}
    for family in families.values():
        if len(family) < 2:
            continue
        together = []
        for result in family:
            grossed = result.summary.get("grossed") or {}
            factor = float(grossed["factor"]) if grossed.get("by") == "inverse sampling fraction" else 1.0
            truth = {c.key: TrueCell(units=c.units, count=c.values.get("count", c.units * factor),
                                     nonempty=dict(c.nonempty)) for c in [*result.cells, *result.hidden]}
            together.append((result.table, result.summary, truth))
        for name, count in attack_together(together).items():
            examined[name] += count
    return examined
