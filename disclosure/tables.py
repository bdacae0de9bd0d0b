"""Aggregate tables with statistical disclosure control: counts, sums and means by chosen dimensions.

A contract's ``aggregates`` entry becomes one Parquet table: one row per combination of the ``by``
columns that occurs in the data, plus (``margins``, default on) a row per *margin*: every subset of
the dimensions summed over the others, down to the grand total. Column ``total_over`` names the
dimensions a row is summed over ("" for inner cells, "region,sex" for a margin); the summed
dimensions are null in that row.

Rules, in order (docs/disclosure.md):

1. **Units.** A cell's units are its records, or the distinct values of ``unit`` (e.g. people in a
   table of payments).
2. **Primary suppression.** A cell (margins included) with fewer than ``threshold`` units (default
   10) is suppressed. For every summed or averaged column, a cell where one unit contributes more
   than ``dominance`` (default 0.5) of the cell's total (in absolute values) is suppressed too.
3. **Secondary suppression.** Every row and column of the table, and of every margin, is an
   equation: its published cells add up to its total. A line with exactly one suppressed entry
   would give it away by subtraction, so another entry of that line is suppressed: the unsuppressed
   inner cell with the fewest units (ties: the first in table order), or the line's total when no
   inner cell is left. Lines are revisited until none has exactly one suppressed entry (a fixed
   point: suppressions only grow, so this ends). This protects against single-equation recovery;
   it does not solve the full linear system an intruder could build from many equations (no
   interval audit); cells absent from the table are empty (zero) and never suppressed.
4. **Grossing.** For a sample, counts and sums are multiplied by the inverse sampling fraction (or
   summed over a ``weight`` column) — the threshold is always applied to unweighted units.
5. **Rounding.** Published counts are rounded to the nearest multiple of ``rounding`` (default 5,
   halves up), each cell independently, so rounded cells need not add up to rounded totals. Sums
   and means are rounded to 2 decimals.

Suppressed cells are published as nulls with ``suppressed = true``; whether the suppression was
primary or secondary is not published (it would point at the small cells).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from contracts.disclosure import Aggregate
from core.errors import ContractError

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


def _batch_partial(table: pa.Table, agg: Aggregate, group: list[str], measured: list[str]) -> pa.Table:
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
    t = pa.table(cols)
    return _group(t, group, measured)


def _aggs(measured: list[str]) -> list[tuple[str, str]]:
    out = [("_n", "sum"), ("_w", "sum")]
    for i in range(len(measured)):
        out += [(f"_s{i}", "sum"), (f"_sw{i}", "sum"), (f"_nn{i}", "sum"), (f"_nw{i}", "sum"),
                (f"_amax{i}", "max"), (f"_asum{i}", "sum")]
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


def _group(table: pa.Table, group: list[str], measured: list[str]) -> pa.Table:
    return _grouped(table, group, _aggs(measured))


def _base_table(path: Path, agg: Aggregate, batch_rows: int) -> tuple[pa.Table, list[str]]:
    """Grouped by by (+ unit): additive statistics, read once, batch by batch."""
    measured = _measured(agg)
    group = [*agg.by, *([agg.unit] if agg.unit else [])]
    columns = list(dict.fromkeys([*group, *measured, *([agg.weight] if agg.weight else [])]))
    parts: list[pa.Table] = []
    held = 0
    parquet = pq.ParquetFile(path, pre_buffer=False, buffer_size=_READ_BUFFER_BYTES)
    try:
        for batch in parquet.iter_batches(batch_size=batch_rows, columns=columns, use_pandas_metadata=False):
            part = _batch_partial(pa.Table.from_batches([batch]), agg, group, measured)
            parts.append(part)
            held += part.num_rows
            if held > _COMPACT_ROWS and len(parts) > 1:
                parts = [_group(pa.concat_tables(parts), group, measured)]
                held = parts[0].num_rows
        if not parts:
            empty = pa.Table.from_batches([], schema=parquet.schema_arrow.empty_table().select(columns).schema)
            parts = [_batch_partial(empty, agg, group, measured)]
    finally:
        parquet.close()
    return _group(pa.concat_tables(parts), group, measured), measured


def _unit_level(base: pa.Table, agg: Aggregate, group: list[str], measured: list[str]) -> pa.Table:
    """Cells of ``group`` from the (by, unit) table: units counted once, dominance over unit totals."""
    unit = agg.unit
    assert unit is not None
    per_unit = _grouped(base, [*group, unit], [("_n", "sum"), *((f"_s{i}", "sum") for i in range(len(measured))),
                                               *((f"_nn{i}", "sum") for i in range(len(measured)))])
    cols: dict[str, pa.Array] = {g: per_unit[g] for g in group}
    cols["_units"] = pa.array(np.ones(per_unit.num_rows, dtype=np.int64))
    cols["_n"] = per_unit["_n"]
    for i in range(len(measured)):
        s = per_unit[f"_s{i}"]
        cols[f"_s{i}"] = s
        cols[f"_nn{i}"] = per_unit[f"_nn{i}"]
        cols[f"_amax{i}"] = pc.abs(s)
        cols[f"_asum{i}"] = pc.abs(s)
    aggs = [("_units", "sum"), ("_n", "sum")]
    for i in range(len(measured)):
        aggs += [(f"_s{i}", "sum"), (f"_nn{i}", "sum"), (f"_amax{i}", "max"), (f"_asum{i}", "sum")]
    return _grouped(pa.table(cols), group, aggs)


@dataclass
class _Cell:
    key: tuple[tuple[str, Any], ...]  # per dimension: ("v", value) or ("T", None) for a summed-over dimension
    units: int
    values: dict[str, float]  # grossed count, sums and means before rounding
    dominated: bool
    suppressed: bool = False
    primary: bool = False
    secondary: bool = False


def _cells(path: Path, agg: Aggregate, fraction: float | None, batch_rows: int) -> list[_Cell]:
    base, measured = _base_table(path, agg, batch_rows)
    dims = list(agg.by)
    factor = 1.0 if agg.weight else (1.0 / fraction if fraction else 1.0)
    subsets = [list(s) for size in range(len(dims), -1, -1) for s in itertools.combinations(dims, size)]
    if not agg.with_margins:
        subsets = [dims]
    cells: list[_Cell] = []
    for subset in subsets:
        if agg.unit:
            grouped = _unit_level(base, agg, subset, measured)
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
            dominated = False
            for kind, column in agg.kinds():
                if kind == "count":
                    values["count"] = (units * factor if agg.unit or not agg.weight else float(row["_w"]))
                    continue
                assert column is not None  # sums and means name their column
                i = measured.index(column)
                total_abs = float(row[f"_asum{i}"] or 0.0)
                if total_abs > 0 and float(row[f"_amax{i}"] or 0.0) > agg.dominance_share * total_abs:
                    dominated = True
                if kind == "sum":
                    values[f"sum_{column}"] = (float(row[f"_sw{i}"]) if agg.weight and not agg.unit
                                               else float(row[f"_s{i}"]) * factor)
                else:
                    if agg.weight and not agg.unit:
                        denominator = float(row[f"_nw{i}"])
                        values[f"mean_{column}"] = (float(row[f"_sw{i}"]) / denominator if denominator
                                                    else math.nan)
                    else:
                        nn = int(row[f"_nn{i}"])
                        values[f"mean_{column}"] = float(row[f"_s{i}"]) / nn if nn else math.nan
            cells.append(_Cell(key=key, units=units, values=values, dominated=dominated))
    return cells


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


def secondary_suppression(cells: list[_Cell], ndims: int) -> int:
    """Suppress more cells until no line has exactly one suppressed entry; returns how many were added."""
    lines = _lines(cells, ndims)
    added = 0
    changed = True
    while changed:
        changed = False
        for members, total in lines:
            entries = [*members, total]
            if sum(cells[i].suppressed for i in entries) != 1:
                continue
            open_members = [i for i in members if not cells[i].suppressed]
            pick = min(open_members, key=lambda i: (cells[i].units, i)) if open_members else total
            cells[pick].suppressed = True
            cells[pick].secondary = True
            added += 1
            changed = True
    return added


def recoverable(cells: list[_Cell], ndims: int) -> int:
    """Lines with exactly one suppressed entry (0 after ``secondary_suppression``); for tests and the gate."""
    return sum(1 for members, total in _lines(cells, ndims)
               if sum(cells[i].suppressed for i in [*members, total]) == 1)


# ---------------------------------------------------------------------------------------- output


@dataclass
class TableResult:
    table: pa.Table
    summary: dict[str, Any]  # value-free: the rule applied and the cell counts
    cells: list[_Cell]


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


def build_table(path: Path, agg: Aggregate, *, fraction: float | None = None,
                batch_rows: int = 250_000) -> TableResult:
    """Aggregate the staged dataset file ``path`` as ``agg`` asks, with every rule applied."""
    source = pq.read_schema(path)
    check_columns(agg, source)
    cells = _cells(path, agg, fraction if fraction and fraction < 1 else None, batch_rows)
    small = dominated = 0
    for cell in cells:
        if cell.units < agg.cell_threshold:
            cell.suppressed = cell.primary = True
            small += 1
        elif cell.dominated:
            cell.suppressed = cell.primary = True
            dominated += 1
    secondary = secondary_suppression(cells, len(agg.by)) if agg.with_margins else 0
    order = sorted(range(len(cells)), key=lambda i: (sum(p[0] == "T" for p in cells[i].key),
                                                    [(p[0], _sortable(p[1])) for p in cells[i].key]))
    cells = [cells[i] for i in order]
    schema = output_schema(agg, source)
    columns: dict[str, list[Any]] = {f.name: [] for f in schema}
    for cell in cells:
        for d, part in zip(agg.by, cell.key, strict=True):
            columns[d].append(part[1] if part[0] == "v" else None)
        columns[TOTAL_OVER].append(",".join(d for d, part in zip(agg.by, cell.key, strict=True) if part[0] == "T"))
        for name, value in cell.values.items():
            if cell.suppressed or (isinstance(value, float) and math.isnan(value)):
                columns[name].append(None)
            elif name == "count":
                columns[name].append(round_to_base(value, agg.rounding_base))
            else:
                columns[name].append(round(value, 2))
        columns[SUPPRESSED].append(cell.suppressed)
    table = pa.table({f.name: pa.array(columns[f.name], f.type) for f in schema}, schema=schema)
    grossed: dict[str, Any] | None = None
    if agg.weight:
        grossed = {"by": "weight", "column": agg.weight}
    elif fraction and fraction < 1:
        grossed = {"by": "inverse sampling fraction", "factor": round(1.0 / fraction, 6)}
    summary = {
        "name": agg.name, "dataset": agg.dataset, "by": list(agg.by), "unit": agg.unit or "record",
        "measures": [k if c is None else f"{k}_{c}" for k, c in agg.kinds()],
        "margins": agg.with_margins, "threshold": agg.cell_threshold, "rounding": agg.rounding_base,
        "dominance": agg.dominance_share, "grossed": grossed,
        "cells": len(cells), "published": sum(not c.suppressed for c in cells),
        "suppressed_small": small, "suppressed_dominance": dominated, "suppressed_secondary": secondary,
        "rows": table.num_rows,
    }
    return TableResult(table=table, summary=summary, cells=cells)


def _sortable(value: object) -> tuple[bool, object]:
    return (value is None, "" if value is None else value)


def write_table(result: TableResult, path: Path) -> None:
    tmp = path.with_name(path.name + ".writing")
    pq.write_table(result.table, tmp, compression="zstd")
    tmp.chmod(0o600)
    tmp.replace(path)


def recoverable_in_table(table: pa.Table, by: list[str]) -> int:
    """Lines of a *published* table with exactly one suppressed entry (the gate's independent check)."""
    totals = table[TOTAL_OVER].to_pylist()
    suppressed = table[SUPPRESSED].to_pylist()
    dims = [table[d].to_pylist() for d in by]
    cells = []
    for i in range(table.num_rows):
        over = set(filter(None, (totals[i] or "").split(",")))
        key = tuple(("T", None) if d in over else ("v", dims[j][i]) for j, d in enumerate(by))
        cells.append(_Cell(key=key, units=0, values={}, dominated=False, suppressed=bool(suppressed[i])))
    return recoverable(cells, len(by))
