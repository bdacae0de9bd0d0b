"""Treat microdata until it meets the contract's k (and l): generalisation hierarchies, local suppression.

Everything is decided on the table of distinct key combinations (``risk.Classes``), then applied to
the staged Parquet in one streaming pass (``apply_plan``).

**Generalisation** (only when the contract says ``generalise: true``) is full-domain: a step recodes
*every* value of one key column to the next level of its hierarchy (a year to its 5-year band, a
region to its country), so the column stays consistent for analysis. Numeric bands keep the column's
type: the value becomes the first value of its band (1973 → 1970 for 5-year bands). Steps are taken
one at a time, only while the local suppression the current levels would need exceeds the ceiling
(``max_suppressed``); each step goes to the column whose step leaves the fewest records below k.

**Local suppression** then sets single key values of at-risk records to null (a wildcard, see
``risk``). Rounds repeat until no record is at risk: in each round every at-risk combination loses
one value, chosen to minimise information loss, i.e. the number of values removed:

1. the column whose suppression gives the record the most matching records (fewest further
   suppressions needed; any choice that reaches k ends that record's treatment);
2. on a tie, the column with more distinct values (it carries the most identifying detail);
3. then the column listed first in the key.

Suppression only ever adds wildcards, so no record's matching set shrinks: rounds end after at most
one per key column. A record whose every key value is null matches every record; if even that is
fewer than k records (or l sensitive values), the dataset cannot be treated and is blocked.

The share of records that lost at least one value is compared with the ceiling; above it the
delivery is blocked with a report naming the key variables that drive the risk.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from contracts.disclosure import BandHierarchy, Hierarchy, MapHierarchy
from core.errors import ContractError, ContractExtractsError, DataError
from disclosure.result import BlockedDataset, DisclosureResult, GeneralisedColumn, TreatmentStep, TreatmentSummary
from disclosure.risk import (
    NULL,
    Classes,
    Measures,
    compatible_counts,
    compatible_distinct,
    drivers,
    frequencies,
)

_READ_BUFFER_BYTES = 1 << 20


class DisclosureBlocked(ContractExtractsError):
    """The data cannot be made safe within the contract's limits: nothing is delivered.

    ``report`` (the disclosure document so far, with ``blocked`` set) is value-free (counts, shares,
    column names, thresholds) and goes to the ledger and the operator's report.
    """

    def __init__(self, message: str, report: DisclosureResult | None = None) -> None:
        self.report = report
        super().__init__(message)


# ---------------------------------------------------------------------------------- hierarchies


def describe_level(hierarchy: Hierarchy, level: int) -> str:
    if level == 0:
        return "as delivered"
    if isinstance(hierarchy, BandHierarchy):
        width = hierarchy.bands[level - 1]
        return f"bands of width {width} (each value is the first value of its band)"
    return f"hierarchy level {level} of {hierarchy.depth}"


def level_values(values: pa.Array, hierarchy: Hierarchy, level: int, column: str) -> pa.Array:
    """Distinct level-0 values (no nulls) → their values at ``level`` (same type for bands)."""
    if level == 0:
        return values
    if isinstance(hierarchy, BandHierarchy):
        if not pa.types.is_integer(values.type):
            raise ContractError(f"a band hierarchy needs a whole-number column, {column!r} is {values.type}",
                                key=f"disclosure.hierarchies.{column}",
                                fix="use 'levels' (a mapping) for text columns, or generalise the column to a "
                                    "whole number (e.g. a year) first")
        width = hierarchy.bands[level - 1]
        raw = np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.int64)
        return pa.array((raw // width) * width).cast(values.type)
    assert isinstance(hierarchy, MapHierarchy)
    if not pa.types.is_string(values.type) and not pa.types.is_large_string(values.type):
        raise ContractError(f"a mapping hierarchy needs a text column, {column!r} is {values.type}",
                            key=f"disclosure.hierarchies.{column}",
                            fix="use 'bands' for whole-number columns")
    out = values.cast(pa.string())
    for i, mapping in enumerate(hierarchy.levels[:level], start=1):
        keys = pa.array(list(mapping), pa.string())
        index = pc.index_in(out, value_set=keys)
        missing = int(pc.sum(pc.is_null(index)).as_py() or 0)
        if missing:
            raise DataError(f"{missing} distinct value(s) of column {column!r} are not mapped by level {i} of its "
                            "disclosure hierarchy; add them to the contract's hierarchy")
        out = pc.take(pa.array(list(mapping.values()), pa.string()), index)
    return out.cast(values.type)


@dataclass
class Generalised:
    """Classes recoded to given hierarchy levels, with the maps from level-0 codes."""

    classes: Classes
    levels: dict[str, int]
    code_maps: dict[int, np.ndarray]  # key column index → new code of each level-0 code


def generalise(base: Classes, levels: dict[str, int], hierarchies: dict[str, Hierarchy]) -> Generalised:
    """Recode ``base`` (level 0) to ``levels`` and merge the combinations that became equal."""
    codes = base.codes.copy()
    dictionaries = list(base.dictionaries)
    code_maps: dict[int, np.ndarray] = {}
    sensitive = {s: p.copy() for s, p in base.sensitive.items()}
    for j, name in enumerate(base.key):
        level = levels.get(name, 0)
        if level == 0:
            continue
        mapped = level_values(base.dictionaries[j], hierarchies[name], level, name)
        encoded = pc.dictionary_encode(mapped)
        code_map = np.asarray(encoded.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
        dictionaries[j] = encoded.dictionary
        code_maps[j] = code_map
        live = codes[:, j] != NULL
        codes[live, j] = code_map[codes[live, j]]
        for pairs in sensitive.values():
            live = pairs[:, j] != NULL
            pairs[live, j] = code_map[pairs[live, j]]
    counts = base.counts
    if code_maps and len(codes):
        codes, inverse = np.unique(codes, axis=0, return_inverse=True)
        counts = np.bincount(inverse.reshape(-1), weights=base.counts, minlength=len(codes)).astype(np.int64)
        sensitive = {s: (np.unique(p, axis=0) if len(p) else p) for s, p in sensitive.items()}
    return Generalised(Classes(base.key, dictionaries, codes, counts, sensitive), dict(levels), code_maps)


# ---------------------------------------------------------------------------------- suppression


@dataclass
class Suppression:
    """Which key values of which combinations are suppressed (bit j of ``masks[i]``: column j)."""

    masks: np.ndarray
    classes: Classes  # after suppression
    feasible: bool
    rounds: int

    @property
    def records(self) -> int:
        return int(self.classes.counts[self.masks != 0].sum())

    def cells(self) -> dict[str, int]:
        return {name: int(self.classes.counts[(self.masks >> j) & 1 == 1].sum())
                for j, name in enumerate(self.classes.key)}


def _pair_rows(classes: Classes) -> dict[str, np.ndarray]:
    """For every sensitive pair row: the index of its (unique) class row."""
    m = len(classes.key)
    out: dict[str, np.ndarray] = {}
    lookup = pa.table({**{f"c{j}": classes.codes[:, j] for j in range(m)}, "_class": np.arange(len(classes.codes))})
    for s, pairs in classes.sensitive.items():
        query = pa.table({**{f"c{j}": pairs[:, j] for j in range(m)}, "_pair": np.arange(len(pairs))})
        joined = query.join(lookup, keys=[f"c{j}" for j in range(m)], join_type="inner", use_threads=False)
        index = np.full(len(pairs), -1, dtype=np.int64)
        index[joined["_pair"].to_numpy()] = joined["_class"].to_numpy()
        out[s] = index
    return out


def _at_risk(codes: np.ndarray, counts: np.ndarray, k: int, l: int | None,  # noqa: E741
             sensitive: dict[str, np.ndarray]) -> np.ndarray:
    f = compatible_counts(codes, codes, counts)
    risky = f < k
    if l is not None:
        for pairs in sensitive.values():
            risky |= compatible_distinct(codes, pairs) < l
    return risky & (counts > 0)


def suppress(classes: Classes, k: int, l: int | None = None) -> Suppression:  # noqa: E741
    """Local suppression until every record matches ≥ k records (and ≥ l sensitive values), or proof it cannot."""
    if len(classes.codes) and len(np.unique(classes.codes, axis=0)) != len(classes.codes):
        raise ValueError("suppress() needs one row per distinct combination")
    m = len(classes.key)
    codes = classes.codes.copy()
    counts = classes.counts
    masks = np.zeros(len(codes), dtype=np.int64)
    pair_rows = _pair_rows(classes)
    distinct = np.array([len(d) for d in classes.dictionaries], dtype=np.int64)

    def current_pairs() -> dict[str, np.ndarray]:
        out = {}
        for s, pairs in classes.sensitive.items():
            p = pairs.copy()
            p[:, :m] = codes[pair_rows[s]]
            out[s] = p
        return out

    rounds = 0
    while True:
        risky = _at_risk(codes, counts, k, l, current_pairs())
        rows = np.nonzero(risky)[0]
        if len(rows) == 0:
            feasible = True
            break
        if rounds > m or bool(np.all(codes[rows] == NULL, axis=1).any()):
            feasible = False
            break
        rounds += 1
        scores = np.full((len(rows), m), -1, dtype=np.int64)
        for j in range(m):
            eligible = codes[rows, j] != NULL
            if not eligible.any():
                continue
            hypothetical = codes[rows[eligible]].copy()
            hypothetical[:, j] = NULL
            scores[np.nonzero(eligible)[0], j] = compatible_counts(hypothetical, codes, counts)
        for i, row in enumerate(rows):
            best = max((j for j in range(m) if scores[i, j] >= 0),
                       key=functools.partial(_preference, scores[i], distinct, k))
            codes[row, best] = NULL
            masks[row] |= 1 << best
    after = Classes(classes.key, classes.dictionaries, codes, counts, current_pairs())
    return Suppression(masks=masks, classes=after, feasible=feasible, rounds=rounds)


def _preference(scores: np.ndarray, distinct: np.ndarray, k: int, j: int) -> tuple[int, int, int]:
    """Which column of one combination to suppress first: most matching records (up to k), most values, first."""
    return (min(int(scores[j]), k), int(distinct[j]), -j)


# ------------------------------------------------------------------------------------- planning


@dataclass
class Plan:
    """The treatment of one dataset: hierarchy levels, then suppression of single values."""

    key: list[str]
    k: int
    l: int | None  # noqa: E741
    ceiling: float
    records: int
    generalised: Generalised
    suppression: Suppression
    steps: list[TreatmentStep] = field(default_factory=list)
    hierarchies: dict[str, Hierarchy] = field(default_factory=dict)

    @property
    def share(self) -> float:
        return self.suppression.records / self.records if self.records else 0.0

    @property
    def within_ceiling(self) -> bool:
        return self.suppression.feasible and self.share <= self.ceiling

    @property
    def changes_data(self) -> bool:
        return bool(self.generalised.code_maps) or bool((self.suppression.masks != 0).any())

    def generalised_columns(self) -> tuple[GeneralisedColumn, ...]:
        return tuple(GeneralisedColumn(column=name, level=level, of=self.hierarchies[name].depth,
                                       description=describe_level(self.hierarchies[name], level))
                     for name, level in self.generalised.levels.items() if level > 0)

    def summary(self) -> TreatmentSummary:
        """Value-free: what was coarsened and suppressed, with counts."""
        return TreatmentSummary(
            generalised=self.generalised_columns(),
            steps=tuple(self.steps),
            suppressed_records=self.suppression.records,
            suppressed_share=round(self.share, 6),
            suppressed_values=self.suppression.cells(),
            suppression_rounds=self.suppression.rounds,
            ceiling=self.ceiling,
            feasible=self.suppression.feasible,
        )


def _records_below(classes: Classes, k: int) -> int:
    f = frequencies(classes)
    return int(classes.counts[f < k].sum())


def plan_treatment(base: Classes, *, k: int, l: int | None, ceiling: float,  # noqa: E741
                   hierarchies: dict[str, Hierarchy] | None, may_generalise: bool) -> Plan:
    """Decide the treatment of one dataset (see the module docstring); nothing is written."""
    hierarchies = dict(hierarchies or {})
    usable = {name: h for name, h in hierarchies.items() if name in base.key} if may_generalise else {}
    levels = dict.fromkeys(usable, 0)
    steps: list[TreatmentStep] = []
    records = base.records
    while True:
        current = generalise(base, levels, usable)
        suppression = suppress(current.classes, k, l)
        share = suppression.records / records if records else 0.0
        if suppression.feasible and share <= ceiling:
            break
        candidates = [name for name in base.key if name in usable and levels[name] < usable[name].depth]
        if not candidates:
            break
        trial = {}
        for name in candidates:
            stepped = generalise(base, {**levels, name: levels[name] + 1}, usable)
            trial[name] = _records_below(stepped.classes, k)
        best = min(candidates, key=lambda n: (trial[n], base.key.index(n)))
        levels[best] += 1
        steps.append(TreatmentStep(column=best, level=levels[best], records_below_k_after=trial[best],
                                   suppression_needed_before=suppression.records))
    return Plan(key=list(base.key), k=k, l=l, ceiling=ceiling, records=records, generalised=current,
                suppression=suppression, steps=steps, hierarchies=usable)


def blocked_report(dataset: str, plan: Plan, before: Measures) -> BlockedDataset:
    """Value-free report of why a dataset cannot be delivered, naming the key variables that drive the risk."""
    return BlockedDataset(
        dataset=dataset,
        k=plan.k,
        l=plan.l,
        records=plan.records,
        ceiling=plan.ceiling,
        suppression_needed_records=plan.suppression.records,
        suppression_needed_share=round(plan.share, 6),
        feasible=plan.suppression.feasible,
        suppression_needed_values=plan.suppression.cells(),
        generalised=plan.generalised_columns(),
        drivers=tuple(drivers(plan.generalised.classes, plan.k)),
        before=before,
    )


# ------------------------------------------------------------------------------------- applying


def _level0_codes(column: pa.Array, dictionary: pa.Array, name: str) -> np.ndarray:
    index = pc.index_in(column, value_set=dictionary, skip_nulls=True)
    codes = np.asarray(index.fill_null(NULL).to_numpy(zero_copy_only=False), dtype=np.int64)
    valid = np.asarray(column.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    if bool(((codes == NULL) & valid).any()):
        raise DataError(f"column {name!r} holds values the assessment did not see; the staged file changed")
    return codes


def statistics_written(metadata: pq.FileMetaData) -> list[str]:
    """The columns whose statistics a Parquet file holds (none known in a file without row groups)."""
    if metadata.num_row_groups == 0:
        return []
    group = metadata.row_group(0)
    return [group.column(i).path_in_schema for i in range(group.num_columns) if group.column(i).is_stats_set]


def apply_plan(path: Path, plan: Plan, base: Classes, *, batch_rows: int = 250_000) -> int:
    """Rewrite ``path`` with the plan applied (streaming, row order kept); returns the rows written."""
    if not plan.changes_data:
        return plan.records
    gen = plan.generalised
    m = len(plan.key)
    hit = plan.suppression.masks != 0
    mask_table = pa.table({**{f"c{j}": gen.classes.codes[hit, j] for j in range(m)},
                           "_mask": plan.suppression.masks[hit]})
    tmp = path.with_name(path.name + ".treating")
    parquet = pq.ParquetFile(path, pre_buffer=False, buffer_size=_READ_BUFFER_BYTES)
    schema = parquet.schema_arrow
    rows = 0
    try:
        # Statistics as the extract wrote them: never for identifier columns (a rewrite must not add them).
        with pq.ParquetWriter(tmp, schema, compression="zstd",
                              write_statistics=statistics_written(parquet.metadata)) as writer:
            for batch in parquet.iter_batches(batch_size=batch_rows, use_pandas_metadata=False):
                writer.write_batch(_treat_batch(batch, plan, base, mask_table, schema))
                rows += batch.num_rows
            if rows == 0:
                writer.write_table(schema.empty_table())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        parquet.close()
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return rows


def _treat_batch(batch: pa.RecordBatch, plan: Plan, base: Classes, mask_table: pa.Table,
                 schema: pa.Schema) -> pa.RecordBatch:
    gen = plan.generalised
    m = len(plan.key)
    n = batch.num_rows
    codes = np.empty((n, m), dtype=np.int64)
    for j, name in enumerate(plan.key):
        level0 = _level0_codes(batch.column(name), base.dictionaries[j], name)
        if j in gen.code_maps:
            live = level0 != NULL
            level0[live] = gen.code_maps[j][level0[live]]
        codes[:, j] = level0
    masks = np.zeros(n, dtype=np.int64)
    if mask_table.num_rows and n:
        query = pa.table({**{f"c{j}": codes[:, j] for j in range(m)}, "_row": np.arange(n)})
        joined = query.join(mask_table, keys=[f"c{j}" for j in range(m)], join_type="inner", use_threads=False)
        masks[joined["_row"].to_numpy()] = joined["_mask"].to_numpy()
    arrays = []
    for field_ in schema:
        column = batch.column(field_.name)
        if field_.name in plan.key:
            j = plan.key.index(field_.name)
            if j in gen.code_maps:
                index = pa.array(codes[:, j], mask=codes[:, j] == NULL)
                column = pc.take(gen.classes.dictionaries[j], index).cast(field_.type)
            drop = ((masks >> j) & 1) == 1
            if drop.any():
                column = pc.if_else(pa.array(drop), pa.scalar(None, field_.type), column)
        arrays.append(column)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)
