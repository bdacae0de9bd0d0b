"""Aggregate tables with statistical disclosure control: counts, sums and means by chosen dimensions.

A contract's ``aggregates`` entry becomes one Parquet table: one row per combination of the ``by``
columns that occurs in the data, plus (``margins``, default on) a row per *margin*: every subset of
the dimensions summed over the others, down to the grand total. Column ``total_over`` names the
dimensions a row is summed over ("" for inner cells, "region,sex" for a margin); the summed
dimensions are null in that row.

Two protections (``protection``, docs/disclosure.md):

**Suppression** (the default). Rules, in order:

1. **Units.** A cell's units are its records, or the distinct values of ``unit`` (e.g. people in a
   table of payments).
2. **Primary suppression.** A cell (margins included) with fewer than ``threshold`` units (default
   10) is suppressed. For every summed or averaged column, a cell where one unit contributes more
   than ``dominance`` (default 0.5) of the cell's total (in absolute values) is suppressed too.
3. **Secondary suppression.** Every row and column of the table, and of every margin, is an
   equation: its cells add up to its total. Whenever a line has a suppressed entry, it must have at
   least two, and when its total is published the suppressed members together must hold at least
   ``threshold`` units and not be dominated by one unit: the total minus the published members gives
   their sum, which must be as safe as a published cell. Otherwise another member is suppressed (the
   smallest that covers what is missing, else the largest; the total when no member is left). Lines
   are revisited until all pass (suppressions only grow, so this ends). Cells absent from the table
   are empty (zero) and never suppressed.
   An interval audit by linear programming then withholds more until no withheld cell can be pinned
   or proved small from all lines at once. Margins a table does not list (``margins: false``) take
   part as unknowns, and a grossed table's grand total counts as known exactly (the manifest gives the
   sample's size). The tables of one delivery over one dataset, unit and weight are then protected
   together (``build_tables``): merged into one table over all their dimensions, so no combination of
   them undoes a withheld cell.
4. **Grossing.** For a sample, counts and sums are multiplied by the inverse sampling fraction f (or
   summed over a ``weight`` column); the threshold always applies to unweighted units.
5. **Rounding.** Published counts are rounded to the nearest multiple of the *count base*, each cell
   independently (halves up): ``rounding`` (default 5) for unweighted tables, ``rounding × ⌈f⌉`` for
   grossed ones (``rounding × ⌈mean weight⌉`` with weights), so that every published grossed count
   is consistent with at least ``rounding`` different sample counts, as an unweighted rounded count
   is; otherwise count = grossed / f would give the sample count back. A grossed cell near the
   threshold whose rounded count leaves a single sample count at or above the threshold is withheld
   as a small one (``pinned_at_threshold``). Sums are rounded to 2
   decimals. A mean is *derived from published figures*: its published sum divided by the rounded
   (grossed) number of non-empty values, so sum / mean gives back only a rounded count, never the
   exact one.

**Cell-key perturbation** (``protection: cell_key``, counts only): every unit carries a record key
(``masking.record_keys``), a cell's key is the sum of its units' record keys modulo 256, and the
published perturbation table (``disclosure.ptable``) maps (count, cell key) to the noise. No
suppression, no rounding: each cell (margins too) is perturbed on its own; a cell perturbed to 0 is
left out of the table like an empty one. Grossed counts are the perturbed count × f, rounded to a
whole number.

Suppressed cells are published as nulls with ``suppressed = true``; whether the suppression was
primary or secondary is not published (it would point at the small cells).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from scipy import sparse
from scipy.optimize import linprog

from contracts.disclosure import Aggregate
from core.errors import ContractError, ContractExtractsError
from disclosure.ptable import DEFAULT_PTABLE, KEY_RANGE, PTable
from masking.record_keys import record_key_column

_READ_BUFFER_BYTES = 1 << 20
_COMPACT_ROWS = 1_000_000
TOTAL_OVER = "total_over"
SUPPRESSED = "suppressed"


def round_to_base(value: float, base: int) -> int:
    """Nearest multiple of ``base``, halves up (12.5 → 15 for base 5)."""
    return math.floor(value / base + 0.5) * base


def _numeric(t: pa.DataType) -> bool:
    return bool(pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t))


def check_columns(agg: Aggregate, schema: pa.Schema) -> None:
    key = f"aggregates.{agg.name}"
    for kind, column in agg.kinds():
        if column is None:
            continue
        if column not in schema.names:
            raise ContractError(f"column {column!r} is not in dataset {agg.dataset!r}", key=key)
        if not _numeric(schema.field(column).type):
            raise ContractError(f"{kind} of {column!r} needs a numeric column, it is {schema.field(column).type}",
                                key=key, fix="measure a numeric column, or count by this one")
    for column in [*agg.by, *(c for c in (agg.unit, agg.weight) if c)]:
        if column not in schema.names:
            raise ContractError(f"column {column!r} is not in dataset {agg.dataset!r}", key=key)
    if agg.weight and not _numeric(schema.field(agg.weight).type):
        raise ContractError(f"weight {agg.weight!r} must be numeric", key=key)


# ------------------------------------------------------------------------------------ aggregation


def _measured(agg: Aggregate) -> list[str]:
    return list(dict.fromkeys(c for _, c in agg.kinds() if c is not None))


def _batch_partial(table: pa.Table, agg: Aggregate, group: list[str], measured: list[str],
                   record_key: str | None) -> pa.Table:
    n = table.num_rows
    cols: dict[str, pa.Array] = {g: table[g] for g in group}
    cols["_n"] = pa.array(np.ones(n, dtype=np.int64))
    weight = (pc.fill_null(pc.cast(table[agg.weight], pa.float64()), 0.0) if agg.weight
              else pa.array(np.ones(n, dtype=np.float64)))
    cols["_w"] = weight
    for i, c in enumerate(measured):
        v = pc.cast(table[c], pa.float64())
        cols[f"_s{i}"] = pc.fill_null(v, 0.0)
        cols[f"_sw{i}"] = pc.fill_null(pc.multiply(v, weight), 0.0)
        cols[f"_nn{i}"] = pc.cast(pc.is_valid(v), pa.int64())
        cols[f"_nw{i}"] = pc.if_else(pc.is_valid(v), weight, 0.0)
        cols[f"_amax{i}"] = pc.fill_null(pc.abs(v), 0.0)
        cols[f"_asum{i}"] = pc.fill_null(pc.abs(v), 0.0)
    if record_key is not None:
        cols["_rk"] = pc.fill_null(pc.cast(table[record_key], pa.int64()), 0)
    t = pa.table(cols)
    return _group(t, group, measured, record_key is not None)


def _aggs(measured: list[str], keyed: bool = False) -> list[tuple[str, str]]:
    out = [("_n", "sum"), ("_w", "sum")]
    for i in range(len(measured)):
        out += [(f"_s{i}", "sum"), (f"_sw{i}", "sum"), (f"_nn{i}", "sum"), (f"_nw{i}", "sum"),
                (f"_amax{i}", "max"), (f"_asum{i}", "sum")]
    if keyed:
        out.append(("_rk", "max"))  # every row of a unit carries the unit's record key: any one will do
    return out


def _grouped(table: pa.Table, group: list[str], aggs: list[tuple[str, str]]) -> pa.Table:
    """``table`` grouped by ``group`` (none: one row) with the aggregates named like their inputs."""
    if not group:
        table = table.append_column("_all", pa.array(np.zeros(table.num_rows, dtype=np.int8)))
        keys = ["_all"]
    else:
        keys = list(group)
    grouped = table.group_by(keys, use_threads=False).aggregate(aggs)
    names = {f"{column}_{function}": column for column, function in aggs}
    grouped = grouped.rename_columns([names.get(c, c) for c in grouped.column_names])
    return grouped.select([*group, *(a for a, _ in aggs)])


def _group(table: pa.Table, group: list[str], measured: list[str], keyed: bool = False) -> pa.Table:
    return _grouped(table, group, _aggs(measured, keyed))


def _base_table(path: Path, agg: Aggregate, batch_rows: int, record_key: str | None) -> tuple[pa.Table, list[str]]:
    """Grouped by by (+ unit): additive statistics, read once, batch by batch."""
    measured = _measured(agg)
    group = [*agg.by, *([agg.unit] if agg.unit else [])]
    columns = list(dict.fromkeys([*group, *measured, *([agg.weight] if agg.weight else []),
                                  *([record_key] if record_key else [])]))
    keyed = record_key is not None
    parts: list[pa.Table] = []
    held = 0
    parquet = pq.ParquetFile(path, pre_buffer=False, buffer_size=_READ_BUFFER_BYTES)
    try:
        for batch in parquet.iter_batches(batch_size=batch_rows, columns=columns, use_pandas_metadata=False):
            part = _batch_partial(pa.Table.from_batches([batch]), agg, group, measured, record_key)
            parts.append(part)
            held += part.num_rows
            if held > _COMPACT_ROWS and len(parts) > 1:
                parts = [_group(pa.concat_tables(parts), group, measured, keyed)]
                held = parts[0].num_rows
        if not parts:
            empty = pa.Table.from_batches([], schema=parquet.schema_arrow.empty_table().select(columns).schema)
            parts = [_batch_partial(empty, agg, group, measured, record_key)]
    finally:
        parquet.close()
    return _group(pa.concat_tables(parts), group, measured, keyed), measured


def _unit_level(base: pa.Table, agg: Aggregate, group: list[str], measured: list[str], keyed: bool) -> pa.Table:
    """Cells of ``group`` from the (by, unit) table: units counted once, dominance over unit totals."""
    unit = agg.unit
    assert unit is not None
    per_unit = _grouped(base, [*group, unit], [("_n", "sum"), *((f"_s{i}", "sum") for i in range(len(measured))),
                                               *((f"_nn{i}", "sum") for i in range(len(measured))),
                                               *([("_rk", "max")] if keyed else [])])
    cols: dict[str, pa.Array] = {g: per_unit[g] for g in group}
    cols["_units"] = pa.array(np.ones(per_unit.num_rows, dtype=np.int64))
    cols["_n"] = per_unit["_n"]
    for i in range(len(measured)):
        s = per_unit[f"_s{i}"]
        cols[f"_s{i}"] = s
        cols[f"_nn{i}"] = per_unit[f"_nn{i}"]
        cols[f"_amax{i}"] = pc.abs(s)
        cols[f"_asum{i}"] = pc.abs(s)
    if keyed:
        cols["_rk"] = per_unit["_rk"]
    aggs = [("_units", "sum"), ("_n", "sum")]
    for i in range(len(measured)):
        aggs += [(f"_s{i}", "sum"), (f"_nn{i}", "sum"), (f"_amax{i}", "max"), (f"_asum{i}", "sum")]
    if keyed:
        aggs.append(("_rk", "sum"))  # the cell key: the sum of its units' record keys (mod 256 below)
    return _grouped(pa.table(cols), group, aggs)


@dataclass
class _Cell:
    key: tuple[tuple[str, Any], ...]  # per dimension: ("v", value) or ("T", None) for a summed-over dimension
    units: int
    values: dict[str, float]  # grossed count and sums before rounding; means are derived when published
    dominated: bool
    suppressed: bool = False
    primary: bool = False
    secondary: bool = False
    nonempty: dict[str, float] = field(default_factory=dict)  # per averaged column: grossed non-empty values
    magnitude: dict[str, tuple[float, float]] = field(default_factory=dict)  # per column: (largest unit, total)
    cell_key: int | None = None
    published_count: int | None = None
    # Cross-table audit only: what the tables publishing this cell tell together (its units' interval).
    known: tuple[float, float] | None = None
    # A margin the table does not list (margins: false): an unknown the audit reasons with, never published.
    implicit: bool = False
    # Known exactly to a recipient whatever is published: the grand total (the population or sample size).
    fixed: bool = False


def _cells(path: Path, agg: Aggregate, fraction: float | None, batch_rows: int) -> tuple[list[_Cell], float]:
    """The table's cells before protection, and the mean weight of a record (1 without weights)."""
    record_key = record_key_column(agg.unit) if agg.cell_key and agg.unit else None
    keyed = record_key is not None
    base, measured = _base_table(path, agg, batch_rows, record_key)
    dims = list(agg.by)
    factor = 1.0 if agg.weight else (1.0 / fraction if fraction else 1.0)
    subsets = [list(s) for size in range(len(dims), -1, -1) for s in itertools.combinations(dims, size)]
    total_rows = int(pc.sum(base["_n"]).as_py() or 0)
    mean_weight = float(pc.sum(base["_w"]).as_py() or 0.0) / total_rows if agg.weight and total_rows else 1.0
    cells: list[_Cell] = []
    for subset in subsets:
        if agg.unit:
            grouped = _unit_level(base, agg, subset, measured, keyed)
        elif subset == dims:
            grouped = base
        else:
            grouped = _group(base, subset, measured)
        rows = grouped.to_pylist()
        for row in rows:
            units = int(row["_units"] if agg.unit else row["_n"])
            if units == 0:
                continue
            key = tuple(("v", row[d]) if d in subset else ("T", None) for d in dims)
            values: dict[str, float] = {}
            nonempty: dict[str, float] = {}
            magnitude: dict[str, tuple[float, float]] = {}
            dominated = False
            for kind, column in agg.kinds():
                if kind == "count":
                    values["count"] = (units * factor if agg.unit or not agg.weight else float(row["_w"]))
                    continue
                assert column is not None  # sums and means name their column
                i = measured.index(column)
                total_abs = float(row[f"_asum{i}"] or 0.0)
                largest = float(row[f"_amax{i}"] or 0.0)
                magnitude[column] = (largest, total_abs)
                if total_abs > 0 and largest > agg.dominance_share * total_abs:
                    dominated = True
                weighted = bool(agg.weight and not agg.unit)
                total = float(row[f"_sw{i}"]) if weighted else float(row[f"_s{i}"]) * factor
                nonempty[column] = float(row[f"_nw{i}"]) if weighted else int(row[f"_nn{i}"]) * factor
                values[f"{kind}_{column}"] = total
            cell = _Cell(key=key, units=units, values=values, dominated=dominated, nonempty=nonempty,
                         magnitude=magnitude, implicit=not agg.with_margins and subset != dims)
            cell.suppressed = cell.implicit  # unknown to a recipient
            if keyed:
                cell.cell_key = int(row["_rk"] or 0) % KEY_RANGE
            cells.append(cell)
    return cells, mean_weight


def count_base(agg: Aggregate, fraction: float | None, mean_weight: float = 1.0) -> int:
    """The base published counts are rounded to (module docstring, rule 5)."""
    if agg.weight:
        return agg.rounding_base * max(1, math.ceil(mean_weight - 1e-9))
    if fraction and fraction < 1:
        return agg.rounding_base * max(1, math.ceil(1.0 / fraction - 1e-9))
    return agg.rounding_base


# ----------------------------------------------------------------------------------- suppression


def _lines(cells: list[_Cell], ndims: int) -> list[tuple[list[int], int]]:
    """Every additive line: (inner member indices, total index) along each dimension."""
    index = {c.key: i for i, c in enumerate(cells)}
    groups: dict[tuple[int, tuple[tuple[str, Any], ...]], list[int]] = {}
    for i, c in enumerate(cells):
        for d in range(ndims):
            if c.key[d][0] == "v":
                rest = (*c.key[:d], ("T", None), *c.key[d + 1:])
                groups.setdefault((d, rest), []).append(i)
    lines = []
    for (_, total_key), members in groups.items():
        total = index.get(total_key)
        if total is not None:
            lines.append((members, total))
    return lines


def _shortfall(cells: list[_Cell], members: list[int], total: int, threshold: int, dominance: float) -> int | None:
    """Units still missing for the line to be safe (0: safe; None: unsafe with nothing to add but the total)."""
    if cells[total].implicit and not cells[total].fixed:
        return 0  # nothing published to difference against
    suppressed = [i for i in members if cells[i].suppressed and not cells[i].fixed]
    hidden_total = cells[total].suppressed and not cells[total].fixed
    entries = len(suppressed) + hidden_total
    if entries == 0:
        return 0
    if entries == 1:
        return max(1, threshold - sum(cells[i].units for i in suppressed))
    if hidden_total:
        return 0
    held = sum(cells[i].units for i in suppressed)
    if held < threshold:
        return threshold - held
    if cells[total].suppressed:
        return 0  # its count is known, its sums are not published
    for column in cells[total].magnitude:
        largest = max((cells[i].magnitude.get(column, (0.0, 0.0))[0] for i in suppressed), default=0.0)
        total_abs = sum(cells[i].magnitude.get(column, (0.0, 0.0))[1] for i in suppressed)
        if total_abs > 0 and largest > dominance * total_abs:
            return 1
    return 0


def secondary_suppression(cells: list[_Cell], ndims: int, threshold: int = 1, dominance: float = 1.0) -> int:
    """Suppress more cells until every line is safe (module docstring, rule 3); returns how many were added."""
    lines = _lines(cells, ndims)
    added = 0
    changed = True
    while changed:
        changed = False
        for members, total in lines:
            missing = _shortfall(cells, members, total, threshold, dominance)
            if not missing:
                continue
            open_members = [i for i in members if not cells[i].suppressed]
            if open_members:
                covering = [i for i in open_members if cells[i].units >= missing]
                pick = (min(covering, key=lambda i: (cells[i].units, i)) if covering
                        else max(open_members, key=lambda i: (cells[i].units, -i)))
            elif not cells[total].suppressed and not cells[total].fixed:
                pick = total
            else:
                continue
            cells[pick].suppressed = True
            cells[pick].secondary = True
            added += 1
            changed = True
    return added


# A table with suppressed cells and more cells than this is not audited (the LPs grow with it): it is refused, as
# an unaudited table could be undone. Contracts then use fewer or coarser dimensions, or cell-key perturbation.
AUDIT_MAX_CELLS = 20_000
# The gate's interval narrowing (exposed_across_tables) stops after this many passes over the lines (each pass
# only narrows; a few suffice in practice).
EXPOSURE_PASSES = 50


def _bounds(cells: list[_Cell], threshold: int, base: int, factor: float, weighted: bool) -> list[tuple[float, Any]]:
    """What a recipient knows of each cell's units: published counts lie in their rounding interval (in units:
    divided by the grossing factor) and at or above the threshold; withheld cells are non-empty."""
    out: list[tuple[float, Any]] = []
    for cell in cells:
        if cell.fixed:
            out.append((float(cell.units), float(cell.units)))
            continue
        if not cell.suppressed and cell.known is not None:
            out.append(cell.known)
            continue
        if cell.suppressed or "count" not in cell.values or weighted:
            out.append((1.0 if cell.suppressed else float(threshold), None))
            continue
        out.append(units_interval(round_to_base(cell.values["count"], base), base, factor, threshold))
    return out


def units_interval(published: int, base: int, factor: float, threshold: int) -> tuple[float, float]:
    """What a published count tells about its cell's units: its rounding interval divided by the grossing
    factor, and at least the threshold (a published cell is not small)."""
    return max(float(threshold), (published - base / 2) / factor), (published + base / 2) / factor


def _constraints(cells: list[_Cell], ndims: int, additive: bool) -> dict[str, Any]:
    """The lines as sparse linear constraints on the cells' units (equalities for records; for distinct units a
    total is at most the sum of its members and at least each of them). They never change; only bounds do."""
    n = len(cells)
    eq_rows: list[int] = []
    eq_cols: list[int] = []
    eq_vals: list[float] = []
    ub_rows: list[int] = []
    ub_cols: list[int] = []
    ub_vals: list[float] = []
    equalities = inequalities = 0
    for members, total in _lines(cells, ndims):
        if additive:
            eq_rows += [equalities] * (len(members) + 1)
            eq_cols += [*members, total]
            eq_vals += [1.0] * len(members) + [-1.0]
            equalities += 1
            continue
        ub_rows += [inequalities] * (len(members) + 1)  # total − Σ members ≤ 0
        ub_cols += [*members, total]
        ub_vals += [-1.0] * len(members) + [1.0]
        inequalities += 1
        for m in members:  # member − total ≤ 0
            ub_rows += [inequalities, inequalities]
            ub_cols += [m, total]
            ub_vals += [1.0, -1.0]
            inequalities += 1
    out: dict[str, Any] = {"A_eq": None, "b_eq": None, "A_ub": None, "b_ub": None}
    if equalities:
        out["A_eq"] = sparse.csr_array((eq_vals, (eq_rows, eq_cols)), shape=(equalities, n))
        out["b_eq"] = np.zeros(equalities)
    if inequalities:
        out["A_ub"] = sparse.csr_array((ub_vals, (ub_rows, ub_cols)), shape=(inequalities, n))
        out["b_ub"] = np.zeros(inequalities)
    return out


def _solve(objective: np.ndarray, bounds: list[tuple[float, Any]], constraints: dict[str, Any]) -> Any:
    """``linprog`` with HiGHS; when presolve cannot tell infeasible from unbounded, once more without it."""
    result = linprog(objective, bounds=bounds, method="highs", **constraints)
    if result.status not in (0, 3):
        result = linprog(objective, bounds=bounds, method="highs", options={"presolve": False}, **constraints)
    return result


def _is_exposed(i: int, cells: list[_Cell], bounds: list[tuple[float, Any]], constraints: dict[str, Any],
                name: str, threshold: int) -> bool:
    """Whether withheld cell ``i`` can be bounded too tightly by a recipient (an LP over every line).

    Too tight: the interval of its possible units is narrower than one unit (its count is known), or a cell
    below the threshold is proved to be below it (the recipient learns it is small). The true units are a
    feasible point, so the lower bound is at most them: an upper bound at least one unit above the truth (and at
    least the threshold, for a small cell) settles it with one LP; only otherwise is the lower bound solved.
    """
    objective = np.zeros(len(cells))
    objective[i] = 1.0
    true = float(cells[i].units)
    high = _solve(-objective, bounds, constraints)
    if high.status not in (0, 3):
        raise ContractExtractsError(f"aggregate {name}: the table's own constraints have no solution; "
                                    "nothing is delivered")
    upper = math.inf if high.status == 3 else -high.fun
    if cells[i].units < threshold and upper < threshold - 1e-9:
        return True
    if upper >= true + 1 - 1e-9:
        return False
    low = _solve(objective, bounds, constraints)
    if low.status != 0:
        raise ContractExtractsError(f"aggregate {name}: the table's own constraints have no solution; "
                                    "nothing is delivered")
    return bool(upper - low.fun < 1 - 1e-9)


def _target(cell: _Cell, threshold: int) -> float:
    """A withheld cell is safe once a feasible table gives it this many units: one more than the truth (so it
    is not pinned: the truth is feasible too), and for a small cell at least the threshold."""
    return float(max(cell.units + 1, threshold if cell.units < threshold else 0))


def _unsettled(pending: list[int], cells: list[_Cell], bounds: list[tuple[float, Any]],
               constraints: dict[str, Any], threshold: int) -> list[int]:
    """The cells of ``pending`` that no feasible table found here shows safe (``_target``).

    One LP pushes all still-unsettled cells up at once (capped, so it has a solution); every cell that reaches its
    target in that solution is settled, and the LP is repeated for the rest while it settles some. Only the cells
    left need an LP of their own (``_is_exposed``).
    """
    targets = {i: _target(cells[i], threshold) for i in pending}
    cap = float(sum(c.units for c in cells) + max(targets.values(), default=0.0) + 1)
    capped = [(low, cap if high is None else high) for low, high in bounds]
    remaining = set(pending)
    while remaining:
        objective = np.zeros(len(cells))
        objective[list(remaining)] = -1.0
        result = linprog(objective, bounds=capped, method="highs", **constraints)
        if result.status != 0:
            break
        settled = {i for i in remaining if result.x[i] >= targets[i] - 1e-9}
        if not settled:
            break
        remaining -= settled
    return sorted(remaining)


def interval_audit(cells: list[_Cell], agg: Aggregate, base: int, factor: float) -> int | None:
    """Suppress more cells until no withheld cell is exposed (``_is_exposed``); returns how many were added, or
    None when the table is too large to audit.

    Withholding one more cell only widens what a recipient can infer about every other cell (its published
    interval becomes unknown), so a cell found safe stays safe: after the first pass over every withheld cell,
    only the exposed ones and the newly withheld ones are checked again.
    """
    return _audit(cells, len(agg.by), name=agg.name, threshold=agg.cell_threshold, dominance=agg.dominance_share,
                  additive=agg.unit is None, weighted=bool(agg.weight), base=base, factor=factor)


def _audit(cells: list[_Cell], ndims: int, *, name: str, threshold: int, dominance: float, additive: bool,
           weighted: bool, base: int, factor: float) -> int | None:
    """``interval_audit`` on any set of cells over ``ndims`` dimensions (one table, or several merged)."""
    if len(cells) > AUDIT_MAX_CELLS:
        return None
    lines = _lines(cells, ndims)
    constraints = _constraints(cells, ndims, additive)
    added = 0
    pending = [i for i, c in enumerate(cells) if c.suppressed and not c.implicit and not c.fixed]
    while pending:
        bounds = _bounds(cells, threshold, base, factor, weighted)
        unsettled = _unsettled(pending, cells, bounds, constraints, threshold)
        exposed = [i for i in unsettled if _is_exposed(i, cells, bounds, constraints, name, threshold)]
        if not exposed:
            break
        before = {i for i, c in enumerate(cells) if c.suppressed}
        for i in exposed[:1]:  # one more cell at a time: it may settle the other exposed cells too
            near = [j for members, total in lines if i in (*members, total) for j in (*members, total)]
            open_near = [j for j in near if not cells[j].suppressed and not cells[j].fixed]
            if not open_near:  # nothing left beside it: widen from any line that has a withheld cell
                open_near = [j for members, total in lines if any(cells[m].suppressed for m in (*members, total))
                             for j in (*members, total) if not cells[j].suppressed and not cells[j].fixed]
            if not open_near:
                raise ContractExtractsError(f"aggregate {name}: a withheld cell stays exposed with every cell "
                                            "withheld; nothing is delivered")
            pick = min(open_near, key=lambda j: (sum(p[0] == "T" for p in cells[j].key), cells[j].units, j))
            cells[pick].suppressed = cells[pick].secondary = True
            added += 1
        added += secondary_suppression(cells, ndims, threshold, dominance)
        pending = exposed + [i for i, c in enumerate(cells) if c.suppressed and not c.fixed and i not in before]
    return added


def recoverable(cells: list[_Cell], ndims: int) -> int:
    """Lines with exactly one suppressed entry (0 after ``secondary_suppression``); for the gate and tests."""
    return sum(1 for members, total in _lines(cells, ndims)
               if sum(cells[i].suppressed for i in [*members, total]) == 1)


# ---------------------------------------------------------------------------------------- output


@dataclass
class TableResult:
    table: pa.Table
    summary: dict[str, Any]  # value-free: the rule applied, the cell counts and the information loss
    cells: list[_Cell]  # the cells the table lists
    hidden: list[_Cell] = field(default_factory=list)  # margins it does not list (margins: false), for tests


def output_schema(agg: Aggregate, source: pa.Schema) -> pa.Schema:
    fields = [pa.field(d, source.field(d).type) for d in agg.by]
    fields.append(pa.field(TOTAL_OVER, pa.string()))
    for kind, column in agg.kinds():
        if kind == "count":
            fields.append(pa.field("count", pa.int64()))
        else:
            fields.append(pa.field(f"{kind}_{column}", pa.float64()))
    fields.append(pa.field(SUPPRESSED, pa.bool_()))
    return pa.schema(fields)


def _protect_by_suppression(cells: list[_Cell], agg: Aggregate, base: int, factor: float) -> dict[str, Any]:
    small = dominated = 0
    for cell in cells:
        if cell.implicit:
            continue
        if cell.units < agg.cell_threshold:
            cell.suppressed = cell.primary = True
            small += 1
        elif cell.dominated:
            cell.suppressed = cell.primary = True
            dominated += 1
        elif factor > 1 and agg.rounding_base > 1 and "count" in cell.values \
                and pinned_at_threshold(cell.values["count"], base, factor, agg.cell_threshold):
            cell.suppressed = cell.primary = True
            small += 1
    if factor > 1:  # a sample: the manifest gives its size
        _fix_grand_total(cells, agg.cell_threshold, len(agg.by))
    secondary = secondary_suppression(cells, len(agg.by), agg.cell_threshold, agg.dominance_share)
    listed_withheld = any(c.suppressed and not c.implicit for c in cells)
    audited = interval_audit(cells, agg, base, factor) if listed_withheld else 0
    if audited is None:
        raise ContractError(f"aggregate {agg.name!r} has {len(cells)} cells with some withheld, more than the "
                            f"{AUDIT_MAX_CELLS} whose protection can be audited; nothing is delivered",
                            key=f"aggregates.{agg.name}.by",
                            fix="use fewer or coarser dimensions, or protection: cell_key")
    return {"suppressed_small": small, "suppressed_dominance": dominated,
            "suppressed_secondary": secondary + (audited or 0), "interval_audit": audited is not None}


def pinned_at_threshold(grossed: float, base: int, factor: float, threshold: int) -> bool:
    """Whether a grossed count, rounded to ``base``, leaves only one sample count at or above the threshold.

    The recipient knows a published cell holds at least ``threshold`` units. Near the threshold's edge the
    rounding interval can reach below it, and what is left above may be a single sample count (e.g. 5 units ×
    10.09 = 50.5 → 0 with base 110 and threshold 5: only 5 is both published and rounded to 0); such a cell is
    withheld like a small one."""
    published = round_to_base(grossed, base)
    top = math.ceil((published + base / 2) / factor) + 1
    candidates = sum(1 for n in range(threshold, top + 1) if round_to_base(n * factor, base) == published)
    return candidates < 2


def _fix_grand_total(cells: list[_Cell], threshold: int, ndims: int) -> None:
    """A recipient of a grossed table knows its grand total in sample units exactly (the manifest gives the
    sample's size and the grossing factor): the audit treats it as known, whatever the table publishes, unless it
    is itself below the threshold (then every cell is small and withheld anyway). So is the only member of a line
    whose total is known (a dimension with one value): it *is* that total."""
    fixed = [c for c in cells if all(part[0] == "T" for part in c.key) and c.units >= threshold]
    lines = _lines(cells, ndims)
    while fixed:
        for cell in fixed:
            cell.fixed = True
            if cell.implicit:
                cell.suppressed = False
        fixed = [cells[members[0]] for members, total in lines
                 if len(members) == 1 and cells[total].fixed and not cells[members[0]].fixed]


def _protect_by_cell_key(cells: list[_Cell], ptable: PTable, factor: float) -> list[_Cell]:
    """Perturb every cell's count by its cell key; cells perturbed to 0 are left out (returned: the rest)."""
    kept = []
    for cell in cells:
        if cell.implicit:
            continue
        assert cell.cell_key is not None
        perturbed = ptable.perturb(cell.units, cell.cell_key)
        if perturbed == 0:
            continue
        cell.published_count = round(perturbed * factor)
        kept.append(cell)
    return kept


def _published_values(cell: _Cell, agg: Aggregate, base: int) -> dict[str, Any]:
    """What a cell publishes per measure (None when suppressed or undefined)."""
    out: dict[str, Any] = {}
    sums = {name: round(value, 2) for name, value in cell.values.items() if name.startswith("sum_")}
    for kind, column in agg.kinds():
        if cell.suppressed:
            out["count" if kind == "count" else f"{kind}_{column}"] = None
        elif kind == "count":
            out["count"] = cell.published_count
        elif kind == "sum":
            out[f"sum_{column}"] = sums[f"sum_{column}"]
        else:
            assert column is not None
            nonempty = round_to_base(cell.nonempty[column], base)
            total = sums.get(f"sum_{column}", round(cell.values[f"mean_{column}"], 2))
            out[f"mean_{column}"] = round(total / nonempty, 2) if nonempty else None
    return out


@dataclass
class _Prepared:
    """One table between aggregation and output: its cells (protected, possibly again with other tables)."""

    agg: Aggregate
    source: pa.Schema
    sampled: float | None
    factor: float
    base: int
    all_cells: list[_Cell]  # every cell, for the information loss
    cells: list[_Cell]  # the cells the table lists (cell key: not perturbed to 0)
    counts: dict[str, Any]
    ptable: PTable | None


def _prepare(path: Path, agg: Aggregate, fraction: float | None, batch_rows: int,
             ptable: PTable | None) -> _Prepared:
    source = pq.read_schema(path)
    check_columns(agg, source)
    if agg.cell_key and (agg.unit is None or record_key_column(agg.unit) not in source.names):
        raise ContractExtractsError(f"aggregate {agg.name}: the staged data holds no record keys for its unit, so "
                                    "cell-key perturbation cannot run; nothing is delivered. Fix: run the delivery "
                                    "again from the extract")
    sampled = fraction if fraction and fraction < 1 else None
    cells, mean_weight = _cells(path, agg, sampled, batch_rows)
    factor = 1.0 if agg.weight else (1.0 / sampled if sampled else 1.0)
    all_cells = [c for c in cells if not c.implicit]
    counts: dict[str, Any] = {"suppressed_small": 0, "suppressed_dominance": 0, "suppressed_secondary": 0,
                              "interval_audit": False}
    table_ptable = None
    if agg.cell_key:
        table_ptable = ptable or DEFAULT_PTABLE
        base = 1
        cells = _protect_by_cell_key(cells, table_ptable, factor)
    else:
        base = count_base(agg, sampled, mean_weight)
        counts = _protect_by_suppression(cells, agg, base, factor)
    return _Prepared(agg=agg, source=source, sampled=sampled, factor=factor, base=base, all_cells=all_cells,
                     cells=cells, counts=counts, ptable=table_ptable)


def _lift(key: tuple[tuple[str, Any], ...], by: list[str], dims: list[str]) -> tuple[tuple[str, Any], ...]:
    """A cell's key over ``by`` as a key over ``dims`` (a superset): the other dimensions are summed over."""
    parts = dict(zip(by, key, strict=True))
    return tuple(parts.get(d, ("T", None)) for d in dims)


def _protect_family(family: list[_Prepared]) -> None:
    """Protect tables of one dataset and one unit together: an intruder combines them.

    A cell of a table over dimensions B is the same figure as the cell of another table over B′ ⊇ B that sums over
    B′ − B: the same units, the same count. So the cells of all the tables are merged into one table over the
    union of their dimensions, each merged cell published with what all its tables tell about it together (the
    intersection of their rounding intervals), and secondary suppression and the interval audit run on the merged
    table: its lines are every table's own lines and the lines that only the tables together complete (the totals
    of a table without margins, published by another table). A cell withheld in one table is withheld in all.
    """
    dims = list(dict.fromkeys(d for p in family for d in p.agg.by))
    merged: dict[tuple[tuple[str, Any], ...], _Cell] = {}
    instances: dict[tuple[tuple[str, Any], ...], list[tuple[_Prepared, _Cell]]] = {}
    weighted = bool(family[0].agg.weight)
    for prep in family:
        for cell in prep.cells:
            key = _lift(cell.key, list(prep.agg.by), dims)
            into = merged.get(key)
            if into is None:
                into = merged[key] = _Cell(key=key, units=cell.units, values={}, dominated=False, implicit=True)
            into.values.update(cell.values)
            into.magnitude.update(cell.magnitude)
            into.dominated |= cell.dominated
            into.fixed |= cell.fixed
            if not cell.implicit:
                into.implicit = False
            instances.setdefault(key, []).append((prep, cell))
    for key, cell in merged.items():
        listed = [one for _p, one in instances[key] if not one.implicit]
        cell.suppressed = any(one.suppressed for one in listed) or (not listed and not cell.fixed)
        if weighted:
            continue  # weighted counts bound no units (as in one table's audit)
        low, high = 0.0, math.inf
        for prep, one in instances[key]:
            if "count" not in one.values or one.implicit:
                continue
            one_low, one_high = units_interval(round_to_base(one.values["count"], prep.base), prep.base,
                                               prep.factor, prep.agg.cell_threshold)
            low, high = max(low, one_low), min(high, one_high)
        if high < math.inf:
            cell.known = (low, high)
    cells = list(merged.values())
    threshold = max(p.agg.cell_threshold for p in family)
    dominance = min(p.agg.dominance_share for p in family)
    name = " + ".join(p.agg.name for p in family)
    if family[0].factor > 1:
        _fix_grand_total(cells, min(p.agg.cell_threshold for p in family), len(dims))
    secondary_suppression(cells, len(dims), threshold, dominance)
    audited = _audit(cells, len(dims), name=name, threshold=threshold, dominance=dominance,
                     additive=family[0].agg.unit is None, weighted=weighted, base=family[0].base,
                     factor=family[0].factor) if any(c.suppressed and not c.implicit for c in cells) else 0
    if audited is None:
        raise ContractError(f"aggregates {name} of dataset {family[0].agg.dataset!r} have {len(cells)} distinct cells "
                            f"together with some withheld, more than the {AUDIT_MAX_CELLS} whose protection can be "
                            "audited; nothing is delivered", key=f"aggregates.{family[0].agg.name}.by",
                            fix="use fewer or coarser dimensions, or protection: cell_key")
    for key, cell in merged.items():
        if not cell.suppressed:
            continue
        for prep, one in instances[key]:
            if not one.suppressed and not one.implicit:
                one.suppressed = one.secondary = True
                prep.counts["suppressed_secondary"] += 1
    for prep in family:
        if any(c.suppressed and not c.implicit for c in prep.cells):
            prep.counts["interval_audit"] = True


def _finish(prep: _Prepared) -> TableResult:
    agg, base, factor = prep.agg, prep.base, prep.factor
    cells = [c for c in prep.cells if not c.implicit]
    hidden = [c for c in prep.cells if c.implicit]
    if not agg.cell_key:
        for cell in cells:
            cell.published_count = (round_to_base(cell.values["count"], base)
                                    if not cell.suppressed and "count" in cell.values else None)
    order = sorted(range(len(cells)), key=lambda i: (sum(p[0] == "T" for p in cells[i].key),
                                                    [(p[0], _sortable(p[1])) for p in cells[i].key]))
    cells = [cells[i] for i in order]
    schema = output_schema(agg, prep.source)
    columns: dict[str, list[Any]] = {f.name: [] for f in schema}
    for cell in cells:
        for d, part in zip(agg.by, cell.key, strict=True):
            columns[d].append(part[1] if part[0] == "v" else None)
        columns[TOTAL_OVER].append(",".join(d for d, part in zip(agg.by, cell.key, strict=True) if part[0] == "T"))
        for name, value in _published_values(cell, agg, base).items():
            columns[name].append(None if isinstance(value, float) and math.isnan(value) else value)
        columns[SUPPRESSED].append(cell.suppressed)
    table = pa.table({f.name: pa.array(columns[f.name], f.type) for f in schema}, schema=schema)
    grossed: dict[str, Any] | None = None
    if agg.weight:
        grossed = {"by": "weight", "column": agg.weight}
    elif prep.sampled:
        grossed = {"by": "inverse sampling fraction", "factor": round(factor, 6)}
    summary = {
        "name": agg.name, "dataset": agg.dataset, "by": list(agg.by), "unit": agg.unit or "record",
        "measures": [k if c is None else f"{k}_{c}" for k, c in agg.kinds()],
        "margins": agg.with_margins, "threshold": agg.cell_threshold, "rounding": agg.rounding_base,
        "dominance": agg.dominance_share, "grossed": grossed,
        "cells": len(prep.all_cells), "published": sum(not c.suppressed for c in cells),
        **prep.counts, "rows": table.num_rows,
        "protection": "cell_key" if agg.cell_key else "suppression",
        "count_rounding": base,
        "ptable": None if prep.ptable is None else prep.ptable.to_dict(),
        "information_loss": information_loss(prep.all_cells, agg, base, factor, prep.ptable),
    }
    return TableResult(table=table, summary=summary, cells=cells, hidden=hidden)


def build_table(path: Path, agg: Aggregate, *, fraction: float | None = None, batch_rows: int = 250_000,
                ptable: PTable | None = None) -> TableResult:
    """Aggregate the staged dataset file ``path`` as ``agg`` asks, with its protection applied (alone: a table
    delivered beside others of the same dataset needs ``build_tables``)."""
    return _finish(_prepare(path, agg, fraction, batch_rows, ptable))


def build_tables(specs: list[tuple[Path, Aggregate]], *, fraction: float | None = None, batch_rows: int = 250_000,
                 ptable: PTable | None = None) -> list[TableResult]:
    """Every table of one delivery: each protected on its own, then the suppressed tables of the same dataset,
    unit and weight together (``_protect_family``), so that no combination of them undoes a withheld cell."""
    prepared = [_prepare(path, agg, fraction, batch_rows, ptable) for path, agg in specs]
    families: dict[tuple[str, str | None, str | None], list[_Prepared]] = {}
    for prep in prepared:
        if not prep.agg.cell_key:
            families.setdefault((prep.agg.dataset, prep.agg.unit, prep.agg.weight), []).append(prep)
    for family in families.values():
        if len(family) > 1:
            _protect_family(family)
    return [_finish(prep) for prep in prepared]


def information_loss(cells: list[_Cell], agg: Aggregate, base: int, factor: float,
                     ptable: PTable | None) -> dict[str, Any]:
    """How far published counts are from the true (grossed) counts.

    ``expected_*`` follow from the method's public parameters alone (safe to publish); ``realised_*`` are
    measured on this table's cells (for the operator only: with a few cells they would narrow the truth).
    A withheld cell (suppressed, or left out as perturbed to 0) deviates by its whole true count.
    """
    deviations: list[float] = []
    withheld = 0
    for cell in cells:
        if "count" not in cell.values:
            continue
        truth = cell.values["count"]
        if cell.suppressed or cell.published_count is None:
            deviations.append(truth)
            withheld += 1
        else:
            deviations.append(abs(cell.published_count - truth))
    published = [d for d, c in zip(deviations, (c for c in cells if "count" in c.values), strict=True)
                 if not (c.suppressed or c.published_count is None)]
    if ptable is not None:
        expected = {"expected_absolute_deviation": round(ptable.expected_absolute_noise * factor, 6),
                    "max_absolute_deviation": round(ptable.max_noise * factor, 6)}
    else:
        expected = {"expected_absolute_deviation": round(base / 4, 6), "max_absolute_deviation": base / 2}
    return {
        "method": "cell_key" if ptable is not None else "suppression",
        "cells": len(deviations), "withheld": withheld, **expected,
        "realised_mean_absolute_deviation": round(sum(deviations) / len(deviations), 6) if deviations else 0.0,
        "realised_mean_absolute_deviation_published": (round(sum(published) / len(published), 6)
                                                        if published else 0.0),
    }


def _sortable(value: object) -> tuple[bool, object]:
    return (value is None, "" if value is None else value)


def write_table(result: TableResult, path: Path) -> None:
    tmp = path.with_name(path.name + ".writing")
    pq.write_table(result.table, tmp, compression="zstd")
    tmp.chmod(0o600)
    tmp.replace(path)


def _published_keys(table: pa.Table, by: list[str], dims: list[str]) -> list[tuple[tuple[str, Any], ...]]:
    """The cell key of each row of a *published* table over ``by``, lifted onto ``dims`` (``by`` or a superset)."""
    totals = table[TOTAL_OVER].to_pylist()
    values = [table[d].to_pylist() for d in by]
    keys = []
    for i in range(table.num_rows):
        over = set(filter(None, (totals[i] or "").split(",")))
        own = tuple(("T", None) if d in over else ("v", values[j][i]) for j, d in enumerate(by))
        keys.append(_lift(own, by, dims))
    return keys


def recoverable_in_table(table: pa.Table, by: list[str]) -> int:
    """Lines of one *published* table with exactly one suppressed entry (the gate also reads a dataset's tables
    together: ``exposed_across_tables``)."""
    suppressed = table[SUPPRESSED].to_pylist()
    cells = [_Cell(key=key, units=0, values={}, dominated=False, suppressed=bool(suppressed[i]))
             for i, key in enumerate(_published_keys(table, by, by))]
    return recoverable(cells, len(by))


@dataclass(frozen=True)
class PublishedTable:
    """A published suppression table as the release gate reads it: its file's rows and how its counts were made."""

    table: pa.Table
    by: list[str]
    base: int  # the count base its counts are rounded to
    factor: float = 1.0  # the grossing factor (inverse sampling fraction), 1 when not grossed
    threshold: int = 1  # every published count holds at least this many units


def exposed_across_tables(tables: list[PublishedTable]) -> int:
    """Withheld cells that the published tables of one dataset (records, unweighted) pin or prove small together.

    The gate's independent reading of what a delivery publishes, as an intruder reads it: every table's cells are
    lifted onto the union of the tables' dimensions (a cell summed over some dimensions is the same figure in
    every table that lists it); a published count gives an interval of units (its rounding interval divided by
    the grossing factor, and at least its table's threshold), a withheld cell or a margin that no table lists is
    at least 1. Then interval arithmetic along every line (a row, column or margin, within one table or
    completed by another: members add up to the total) narrows the intervals until nothing changes. A withheld
    cell is exposed when its interval is narrower than one unit (its count is known) or lies below the
    threshold (it is known to be small). Interval arithmetic is sound and weaker than the linear programs of
    ``build_tables``' audit, so tables that audit passed are never exposed here; anything else is.
    """
    dims = list(dict.fromkeys(d for t in tables for d in t.by))
    low: dict[tuple[tuple[str, Any], ...], float] = {}
    high: dict[tuple[tuple[str, Any], ...], float] = {}
    withheld: dict[tuple[tuple[str, Any], ...], int] = {}  # withheld cell → the smallest threshold of its tables
    for t in tables:
        suppressed = t.table[SUPPRESSED].to_pylist()
        counts = t.table["count"].to_pylist()
        for i, key in enumerate(_published_keys(t.table, t.by, dims)):
            lo, hi = low.get(key, 1.0), high.get(key, math.inf)
            if suppressed[i] or counts[i] is None:
                withheld[key] = min(withheld.get(key, t.threshold), t.threshold)
            else:
                one_lo, one_hi = units_interval(counts[i], t.base, t.factor, t.threshold)
                lo, hi = max(lo, one_lo), min(hi, one_hi)
            low[key], high[key] = lo, hi
    for key in list(low):  # margins no table lists: unknowns of their lines, non-empty
        inner = [d for d, part in enumerate(key) if part[0] == "v"]
        for size in range(len(inner)):
            for kept in itertools.combinations(inner, size):
                margin = tuple(part if d in kept else ("T", None) for d, part in enumerate(key))
                low.setdefault(margin, 1.0)
                high.setdefault(margin, math.inf)
    cells = [_Cell(key=key, units=0, values={}, dominated=False) for key in low]
    lo_of = [low[c.key] for c in cells]
    hi_of = [high[c.key] for c in cells]
    lines = _lines(cells, len(dims))
    for _ in range(EXPOSURE_PASSES):
        changed = False
        for members, total in lines:
            tightened = _tighten(members, total, lo_of, hi_of)
            changed = changed or tightened
        if not changed:
            break
    if any(lo_of[i] > hi_of[i] + 1e-6 for i in range(len(cells))):
        return len(withheld) or 1  # the published figures contradict each other: not what the build wrote
    return sum(1 for i, cell in enumerate(cells) if cell.key in withheld
               and (hi_of[i] - lo_of[i] < 1 - 1e-9 or hi_of[i] < withheld[cell.key] - 1e-9))


def _tighten(members: list[int], total: int, lo: list[float], hi: list[float]) -> bool:
    """One line's interval arithmetic (members add up to the total); whether any interval narrowed."""
    changed = False
    sum_lo = math.fsum(lo[i] for i in members)
    sum_hi = math.fsum(hi[i] for i in members) if all(hi[i] < math.inf for i in members) else math.inf
    if sum_lo > lo[total] + 1e-9:
        lo[total], changed = sum_lo, True
    if sum_hi < hi[total] - 1e-9:
        hi[total], changed = sum_hi, True
    for m in members:
        others_lo = math.fsum(lo[i] for i in members if i != m)
        others_hi = (math.fsum(hi[i] for i in members if i != m)
                     if all(hi[i] < math.inf for i in members if i != m) else math.inf)
        if hi[total] - others_lo < hi[m] - 1e-9:
            hi[m], changed = hi[total] - others_lo, True
        if others_hi < math.inf and lo[total] - others_hi > lo[m] + 1e-9:
            lo[m], changed = lo[total] - others_hi, True
    return changed
