"""Treat microdata until it meets the contract's k (and l): generalisation hierarchies, local suppression.

Everything is decided on the table of distinct key combinations (``risk.Classes``), then applied to
the staged Parquet in one streaming pass (``apply_plan``).

**Generalisation** (only when the contract says ``generalise: true``) is full-domain: a step recodes
*every* value of one key column to the next level of its hierarchy (a year to its 5-year band, a
region to its country), so the column stays consistent for analysis. Numeric bands keep the column's
type: the value becomes the first value of its band (1973 → 1970 for 5-year bands). Steps are taken
one at a time, only while the local suppression the current levels would need exceeds the ceiling
(``max_suppressed``); each step goes to the column whose step leaves the fewest records below k.

**Local suppression** then sets key values to null until every target passes in the *true-key view*
(``risk``: an intruder who knows a target's real key values counts the published records whose values
are equal or null; the wildcard view is never stricter). Suppressing a target's own value does not help
it in that view: its group only grows when *other* records become compatible with it. So a target at
risk (fewer than k compatible records, or fewer than l sensitive values among them) is given donors:

1. records that differ from it in one key column only: suppressing that column in them makes them
   compatible. The column is chosen for the least suppression (records still needed, plus the target's
   own records unless that value is already gone), then more distinct values, then key order; the
   target loses that value as well, so that it and its donors are published alike and form one
   suppressed group of at least k (a target kept with its own rare value beside k-1 nulls would
   still stand out to an intruder who knows how suppression works);
2. where one column cannot supply enough, several columns are combined (most donors first), and as a
   last resort records that differ in more columns (fewest first) lose all those values;
3. for l, donors that bring sensitive values the target's candidates do not show yet come first.

Donors are taken from the largest classes, and a class may be split: only as many of its records as
needed give up the value (the first ones in file order, which is the keyed random delivery order).
When l is enforced classes are never split (which records of a class carry which sensitive value is not
kept), so there donors are whole classes, smallest first.

Suppression only ever adds nulls, so no target's compatible set ever shrinks; a round gives every target
at risk enough donors and rounds repeat until none is at risk. The target is reachable exactly when the
dataset has at least k records (and l distinct sensitive values): with every value suppressed every
record is compatible with every target. Otherwise the dataset is blocked.

The share of records that lost at least one value is compared with the ceiling; above it the
delivery is blocked with a report naming the key variables that drive the risk.
"""

from __future__ import annotations

import itertools
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
    true_key_queries,
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
class Parts:
    """The records of each class, in runs that share one suppression mask.

    Part ``i`` is records ``[offset[i], offset[i] + count[i])`` of class ``cls[i]`` (numbered in file order) with
    the key columns whose bit is set in ``mask[i]`` suppressed. A class is split into several parts only when some
    of its records had to give up a value for another group (see the module docstring).
    """

    cls: np.ndarray
    offset: np.ndarray
    count: np.ndarray
    mask: np.ndarray

    @classmethod
    def whole(cls, counts: np.ndarray) -> Parts:
        n = len(counts)
        return cls(cls=np.arange(n, dtype=np.int64), offset=np.zeros(n, dtype=np.int64),
                   count=np.asarray(counts, dtype=np.int64).copy(), mask=np.zeros(n, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.cls)


@dataclass
class Suppression:
    """Which key values of which records are suppressed, and the published classes that result."""

    parts: Parts
    real: np.ndarray  # real (generalised) key codes of every part
    classes: Classes  # after suppression: one row per part, published codes (NULL where suppressed)
    feasible: bool
    rounds: int

    @property
    def masks(self) -> np.ndarray:
        """Bit j of ``masks[i]``: key column j of part i is suppressed."""
        return self.parts.mask

    @property
    def records(self) -> int:
        return int(self.parts.count[self.parts.mask != 0].sum())

    def cells(self) -> dict[str, int]:
        return {name: int(self.parts.count[(self.parts.mask >> j) & 1 == 1].sum())
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


def _published(classes: Classes, parts: Parts, pair_rows: dict[str, np.ndarray]) -> Classes:
    """The classes as published: one row per part, suppressed values NULL.

    Sensitive pairs follow their class. A class split into parts gives each part all its class's values: an
    upper bound. Classes are split only where l is not enforced, so no decision rests on it, and the measures
    reported after treatment are taken from the records written (``apply_plan``'s ``written_pairs``).
    """
    m = len(classes.key)
    codes = classes.codes[parts.cls].copy()
    for j in range(m):
        codes[(parts.mask >> j) & 1 == 1, j] = NULL
    sensitive = {}
    whole = len(parts) == len(classes.codes) and bool((parts.cls == np.arange(len(parts))).all())
    for s, pairs in classes.sensitive.items():
        if whole:
            p = pairs.copy()
            p[:, :m] = codes[pair_rows[s]]
        else:
            order = np.argsort(pair_rows[s], kind="stable")
            owner = pair_rows[s][order]
            starts = np.searchsorted(owner, parts.cls, side="left")
            lengths = np.searchsorted(owner, parts.cls, side="right") - starts
            part = np.repeat(np.arange(len(parts)), lengths)
            within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
            p = pairs[order[np.repeat(starts, lengths) + within]].copy()
            p[:, :m] = codes[part]
            p = np.unique(p, axis=0) if len(p) else p
        sensitive[s] = p
    return Classes(classes.key, classes.dictionaries, codes, parts.count.copy(), sensitive)


class _Lines:
    """Parts grouped by their published values on every key column but one: the donor candidates of a target."""

    def __init__(self, published: np.ndarray, column: int) -> None:
        self.column = column
        others = [j for j in range(published.shape[1]) if j != column]
        self.others = others
        rest = published[:, others]
        self.patterns = sorted({int(p) for p in ((rest == NULL) * (1 << np.arange(len(others)))).sum(axis=1)}) \
            if len(published) else []
        self.index: dict[tuple[int, ...], list[int]] = {}
        for i, row in enumerate(map(tuple, rest.tolist())):
            self.index.setdefault(row, []).append(i)
        self.lists = {key: np.asarray(rows, dtype=np.int64) for key, rows in self.index.items()}
        self.published_column = published[:, column]

    def donors(self, query: np.ndarray) -> np.ndarray:
        """Parts that become compatible with real values ``query`` once their value in ``column`` is suppressed."""
        values = [int(query[j]) for j in self.others]
        found = []
        for pattern in self.patterns:
            key = tuple(NULL if (pattern >> i) & 1 else v for i, v in enumerate(values))
            rows = self.lists.get(key)
            if rows is not None:
                found.append(rows)
        if not found:
            return np.zeros(0, dtype=np.int64)
        rows = np.concatenate(found)
        own = self.published_column[rows]
        donors: np.ndarray = rows[(own != NULL) & (own != query[self.column])]
        return donors


@dataclass
class _Round:
    """One round's decisions: records of each part to convert (suppress) in each column."""

    parts: Parts
    published: np.ndarray
    split: bool
    real_missing: np.ndarray  # (parts, columns): the real value is missing, so there is nothing to suppress
    convert: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.convert = np.zeros((len(self.parts), self.published.shape[1]), dtype=np.int64)

    def remaining(self, rows: np.ndarray, column: int) -> np.ndarray:
        return np.asarray(self.parts.count[rows] - self.convert[rows, column], dtype=np.int64)

    def take(self, rows: np.ndarray, column: int, wanted: int) -> int:
        """Convert up to ``wanted`` records of ``rows`` in ``column`` (largest parts first; whole parts unless
        splitting is allowed); returns how many were converted."""
        if wanted <= 0 or len(rows) == 0:
            return 0
        left = self.remaining(rows, column)
        order = np.lexsort((rows, -left))
        taken = 0
        for i in order:
            if taken >= wanted:
                break
            if left[i] <= 0:
                continue
            row = rows[i]
            amount = int(left[i]) if not self.split else min(int(left[i]), wanted - taken)
            self.convert[row, column] += amount
            taken += amount
        return taken

    def lose(self, rows: np.ndarray, column: int) -> None:
        """Every record of ``rows`` loses its value in ``column``."""
        self.convert[rows, column] = self.parts.count[rows]

    def apply(self) -> tuple[Parts, bool]:
        """Split the parts by what was converted (record r of a part loses column j when r < convert[part, j])."""
        cls, offset, count, mask = [], [], [], []
        changed = False
        for i in range(len(self.parts)):
            n = int(self.parts.count[i])
            old = int(self.parts.mask[i])
            conv = self.convert[i]
            cuts = sorted({0, n, *(int(t) for t in conv if 0 < t < n)})
            for start, end in itertools.pairwise(cuts):
                new = old
                for j, t in enumerate(conv):
                    if t > start and not self.real_missing[i, j]:
                        new |= 1 << j
                changed |= new != old
                cls.append(int(self.parts.cls[i]))
                offset.append(int(self.parts.offset[i]) + start)
                count.append(end - start)
                mask.append(new)
        parts = Parts(cls=np.asarray(cls, dtype=np.int64), offset=np.asarray(offset, dtype=np.int64),
                      count=np.asarray(count, dtype=np.int64), mask=np.asarray(mask, dtype=np.int64))
        return _merge_runs(parts), changed


def _merge_runs(parts: Parts) -> Parts:
    """Adjacent runs of one class with the same mask become one part."""
    if len(parts) < 2:
        return parts
    order = np.lexsort((parts.offset, parts.cls))
    cls, offset, count, mask = (parts.cls[order], parts.offset[order], parts.count[order], parts.mask[order])
    keep = np.ones(len(cls), dtype=bool)
    counts = count.copy()
    last = 0
    for i in range(1, len(cls)):
        if cls[i] == cls[last] and mask[i] == mask[last] and offset[last] + counts[last] == offset[i]:
            counts[last] += counts[i]
            keep[i] = False
        else:
            last = i
    return Parts(cls=cls[keep], offset=offset[keep], count=counts[keep], mask=mask[keep])


def _class_values(classes: Classes) -> dict[str, list[np.ndarray]]:
    """Per sensitive attribute: the distinct value codes of every class."""
    m = len(classes.key)
    rows = _pair_rows(classes)
    out: dict[str, list[np.ndarray]] = {}
    for s, pairs in classes.sensitive.items():
        per: list[list[int]] = [[] for _ in range(len(classes.codes))]
        for row, value in zip(rows[s].tolist(), pairs[:, m].tolist(), strict=True):
            if row >= 0:
                per[row].append(value)
        out[s] = [np.unique(np.asarray(v, dtype=np.int64)) for v in per]
    return out


def suppress(classes: Classes, k: int, l: int | None = None) -> Suppression:  # noqa: E741
    """Local suppression until every target has ≥ k compatible records (and ≥ l sensitive values) in the
    true-key view, or proof that it cannot (see the module docstring)."""
    if len(classes.codes) and len(np.unique(classes.codes, axis=0)) != len(classes.codes):
        raise ValueError("suppress() needs one row per distinct combination")
    m = len(classes.key)
    real = classes.codes
    queries = true_key_queries(real)
    counts = np.asarray(classes.counts, dtype=np.int64)
    pair_rows = _pair_rows(classes)
    split = l is None  # with l enforced, which record of a class carries which sensitive value must stay known
    values = _class_values(classes) if l is not None and classes.sensitive else {}
    distinct = np.array([len(d) for d in classes.dictionaries], dtype=np.int64)
    possible = int(counts.sum()) >= k and (l is None or all(
        len(np.unique(p[:, m])) >= l for p in classes.sensitive.values()))
    parts = Parts.whole(counts)
    rounds = 0
    while True:
        published = _published(classes, parts, pair_rows)
        c = compatible_counts(queries, published.codes, published.counts)
        short_l: dict[str, np.ndarray] = {}
        risky = c < k
        if l is not None:
            for s, pairs in published.sensitive.items():
                div = compatible_distinct(queries, pairs)
                short_l[s] = div < l
                risky |= short_l[s]
        risky &= counts > 0
        if not risky.any():
            feasible = True
            break
        if not possible:
            feasible = False
            break
        rounds += 1
        step = _Round(parts, published.codes, split, real[parts.cls] == NULL)
        _suppression_round(step, classes, queries, published, c, risky, short_l, k, l, distinct, values)
        parts, changed = step.apply()
        if not changed:  # cannot happen while the target is possible (a round always converts some record)
            feasible = False
            break
    return Suppression(parts=parts, real=real[parts.cls], classes=_published(classes, parts, pair_rows),
                       feasible=feasible, rounds=rounds)


def _suppression_round(step: _Round, classes: Classes, queries: np.ndarray, published: Classes, c: np.ndarray,
                       risky: np.ndarray, short_l: dict[str, np.ndarray], k: int, l: int | None,  # noqa: E741
                       distinct: np.ndarray, values: dict[str, list[np.ndarray]]) -> None:
    """Decide one round: every target at risk gets enough donors, and loses the values its donors lose."""
    m = len(classes.key)
    parts = step.parts
    lines = [_Lines(published.codes, j) for j in range(m)]
    by_class: dict[int, list[int]] = {}
    for i, cls in enumerate(parts.cls.tolist()):
        by_class.setdefault(cls, []).append(i)
    targets = np.nonzero(risky)[0]
    for x in targets[np.lexsort((targets, c[targets]))]:
        own = np.asarray(by_class[int(x)], dtype=np.int64)
        need = int(k - c[x])
        needs_l = any(bool(short[x]) for short in short_l.values())
        if step.split and not needs_l:
            need = _single_column_donors(step, lines, queries[x], own, need, distinct)
        if need > 0 or needs_l:
            _any_donors(step, published, queries[x], own, need, l if needs_l else None, int(x), values)


def _single_column_donors(step: _Round, lines: list[_Lines], query: np.ndarray, own: np.ndarray, need: int,
                          distinct: np.ndarray) -> int:
    """Donors that differ from the target in one column; returns the records still needed."""
    m = len(lines)
    donors = [lines[j].donors(query) for j in range(m)]
    free = [int(step.convert[d, j].sum()) for j, d in enumerate(donors)]
    available = [int(step.remaining(d, j).sum()) for j, d in enumerate(donors)]
    own_count = int(step.parts.count[own].sum())
    options = []
    for j in range(m):
        if need - free[j] <= available[j]:
            lost = (bool(((step.parts.mask[own] >> j) & 1).all())
                    or bool((step.convert[own, j] >= step.parts.count[own]).all()))
            options.append((max(need - free[j], 0) + (0 if lost else own_count), -int(distinct[j]), j))
    if options:
        j = min(options)[2]
        step.take(donors[j], j, need - free[j])
        step.lose(own, j)
        return 0
    for j in sorted(range(m), key=lambda j: (-(available[j] + free[j]), j)):
        if need <= 0:
            break
        if available[j] + free[j] <= 0:
            continue
        need -= free[j]
        need -= step.take(donors[j], j, need)
        step.lose(own, j)
    return need


def _any_donors(step: _Round, published: Classes, query: np.ndarray, own: np.ndarray, need: int,
                l: int | None, target: int, values: dict[str, list[np.ndarray]]) -> None:  # noqa: E741
    """Donors that differ from the target in any columns (fewest first), and for l, donors that bring new values."""
    parts = step.parts
    codes = published.codes.copy()
    for j in range(codes.shape[1]):
        codes[step.convert[:, j] >= parts.count, j] = NULL  # converted whole this round: already null
    mismatch = (codes != NULL) & (codes != query)
    differ = mismatch.sum(axis=1)
    candidates = np.nonzero(differ > 0)[0]
    # Values the target's compatible records already show (classes are whole whenever values matter).
    seen = {s: set(np.concatenate([per[int(cls)] for cls in parts.cls[differ == 0]] or [np.zeros(0, np.int64)])
                   .tolist()) for s, per in values.items()} if l is not None else {}

    def short() -> bool:
        return l is not None and any(len(v) < l for v in seen.values())

    # Split parts: take from the largest (its remainder stays large); whole parts: the smallest first (least
    # overshoot). Fewest differing columns first either way.
    size = -parts.count[candidates] if step.split else parts.count[candidates]
    order = candidates[np.lexsort((candidates, size, differ[candidates]))]
    if l is not None:
        new = np.array([sum(len(set(values[s][int(parts.cls[i])].tolist()) - seen[s]) for s in values)
                        for i in order], dtype=np.int64)
        order = order[np.lexsort((np.arange(len(order)), -np.minimum(new, 1)))]
    for i in order:
        if need <= 0 and not short():
            break
        if l is not None and need <= 0:
            cls = int(parts.cls[i])
            if not any(set(values[s][cls].tolist()) - seen[s] for s in values):
                continue
        columns = np.nonzero(mismatch[i])[0]
        amount = int(parts.count[i]) if not step.split else min(int(parts.count[i]), max(need, 1))
        for col in columns.tolist():
            step.convert[i, col] = max(int(step.convert[i, col]), amount)
            step.lose(own, col)
        need -= amount
        for s in seen:
            seen[s].update(values[s][int(parts.cls[i])].tolist())


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


def apply_plan(path: Path, plan: Plan, base: Classes, *, batch_rows: int = 250_000,
               drop_columns: tuple[str, ...] = (), written_pairs: dict[str, np.ndarray] | None = None) -> int:
    """Rewrite ``path`` with the plan applied (streaming, row order kept); returns the rows written.

    Records are numbered within their class in file order, and record r of a class takes the mask of the part
    that covers r. The rows written per part are counted and must equal the plan's (else the staged file
    changed since it was assessed: ``DataError``), so the measures reported are those of the file written.
    ``drop_columns`` (staging-only columns such as record keys) are left out of the rewritten file.
    ``written_pairs``: filled, per sensitive attribute of the plan's classes, with the distinct (published key
    codes…, value code) of the records written (what l-diversity is measured on after treatment).
    """
    sensitive = list(base.sensitive) if written_pairs is not None else []
    if not plan.changes_data and not drop_columns:
        if written_pairs is not None:
            written_pairs.update(plan.suppression.classes.sensitive)
        return plan.records
    gen = plan.generalised
    m = len(plan.key)
    parts = plan.suppression.parts
    classes = pa.table({**{f"c{j}": gen.classes.codes[:, j] for j in range(m)},
                        "_class": np.arange(len(gen.classes.codes), dtype=np.int64)})
    stride = plan.records + 1
    order = np.lexsort((parts.offset, parts.cls))
    starts = parts.cls[order] * stride + parts.offset[order]
    part_masks = parts.mask[order]
    seen = np.zeros(len(gen.classes.codes), dtype=np.int64)
    written = np.zeros(len(parts), dtype=np.int64)
    collected: dict[str, list[pa.Table]] = {name: [] for name in sensitive}
    tmp = path.with_name(path.name + ".treating")
    parquet = pq.ParquetFile(path, pre_buffer=False, buffer_size=_READ_BUFFER_BYTES)
    source_schema = parquet.schema_arrow
    schema = pa.schema([f for f in source_schema if f.name not in drop_columns])
    rows = 0
    try:
        # Statistics as the extract wrote them: never for identifier columns (a rewrite must not add them).
        statistics = [c for c in statistics_written(parquet.metadata) if c not in drop_columns]
        with pq.ParquetWriter(tmp, schema, compression="zstd", write_statistics=statistics) as writer:
            for batch in parquet.iter_batches(batch_size=batch_rows, use_pandas_metadata=False):
                index = _part_index(batch, plan, base, classes, seen, starts, stride)
                written += np.bincount(index, minlength=len(parts))
                for name in sensitive:
                    found = pa.table({"p": index, "v": batch.column(name)}).filter(pc.is_valid(batch.column(name)))
                    collected[name].append(found.group_by(["p", "v"], use_threads=False).aggregate([]))
                writer.write_batch(_treat_batch(batch, plan, base, part_masks[index], schema))
                rows += batch.num_rows
            if rows == 0:
                writer.write_table(schema.empty_table())
        if not np.array_equal(written, parts.count[order]):
            raise DataError("the staged file does not hold the records the disclosure assessment counted; it changed "
                            "since it was assessed. Nothing is delivered; run the delivery again")
        if written_pairs is not None:
            published = plan.suppression.classes.codes[order]  # part codes, in the sorted order ``index`` uses
            for name, tables in collected.items():
                written_pairs[name] = _pairs(tables, published)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        parquet.close()
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return rows


def _pairs(tables: list[pa.Table], published: np.ndarray) -> np.ndarray:
    """Distinct (part, value) of the records written → (published key codes…, value code) rows."""
    m = published.shape[1]
    if not tables:
        return np.empty((0, m + 1), dtype=np.int64)
    distinct = pa.concat_tables(tables).group_by(["p", "v"], use_threads=False).aggregate([])
    out = np.empty((distinct.num_rows, m + 1), dtype=np.int64)
    out[:, :m] = published[np.asarray(distinct["p"].to_numpy(), dtype=np.int64)]
    values = pc.dictionary_encode(distinct["v"].combine_chunks()).indices
    out[:, m] = np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.int64)
    return out


def _generalised_codes(batch: pa.RecordBatch, plan: Plan, base: Classes) -> np.ndarray:
    gen = plan.generalised
    codes = np.empty((batch.num_rows, len(plan.key)), dtype=np.int64)
    for j, name in enumerate(plan.key):
        level0 = _level0_codes(batch.column(name), base.dictionaries[j], name)
        if j in gen.code_maps:
            live = level0 != NULL
            level0[live] = gen.code_maps[j][level0[live]]
        codes[:, j] = level0
    return codes


def _part_index(batch: pa.RecordBatch, plan: Plan, base: Classes, classes: pa.Table, seen: np.ndarray,
                starts: np.ndarray, stride: int) -> np.ndarray:
    """For every row of ``batch``: the (sorted) index of the part its record falls in; advances ``seen``."""
    n = batch.num_rows
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    m = len(plan.key)
    codes = _generalised_codes(batch, plan, base)
    query = pa.table({**{f"c{j}": codes[:, j] for j in range(m)}, "_row": np.arange(n)})
    joined = query.join(classes, keys=[f"c{j}" for j in range(m)], join_type="inner", use_threads=False)
    if joined.num_rows != n:
        raise DataError("the staged file holds key combinations the disclosure assessment did not see; it changed "
                        "since it was assessed. Nothing is delivered; run the delivery again")
    cls = np.empty(n, dtype=np.int64)
    cls[joined["_row"].to_numpy()] = joined["_class"].to_numpy()
    # Number the records of each class in file order: earlier batches (seen) + position among this batch's.
    order = np.argsort(cls, kind="stable")
    sorted_cls = cls[order]
    first = np.searchsorted(sorted_cls, sorted_cls, side="left")
    occurrence = np.empty(n, dtype=np.int64)
    occurrence[order] = np.arange(n) - first
    occurrence += seen[cls]
    seen += np.bincount(cls, minlength=len(seen))
    index = np.searchsorted(starts, cls * stride + occurrence, side="right") - 1
    return np.asarray(index, dtype=np.int64)


def _treat_batch(batch: pa.RecordBatch, plan: Plan, base: Classes, masks: np.ndarray,
                 schema: pa.Schema) -> pa.RecordBatch:
    gen = plan.generalised
    codes = _generalised_codes(batch, plan, base)
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
