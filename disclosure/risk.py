"""Re-identification risk of microdata over its key variables: k-anonymity, uniques, l-diversity, risk.

The file is read once, batch by batch, projected on the key (and sensitive) columns and grouped
with pyarrow's hash ``group_by``, so memory grows with the number of *distinct* key combinations,
not with the number of rows. Everything after that works on integer codes of those combinations.

Missing values are wildcards (as in sdcMicro's ``freqCalc``: "a missing value stands for any of
the possible categories of the variable considered"): a record with a null key value could be any
person who agrees with it on its other values. That is what makes local suppression work, and it is
the cautious reading for the intruder. So for a record *r* over key variables *A*:

    f(r) = number of records s such that, for every a in A, r[a] is null, s[a] is null or r[a] == s[a]

With no nulls this is the size of r's equivalence class. From f:

* ``k_anonymity``      = min f over records (the smallest class);
* ``records_below_k``  = records with f < k (``share_below_k`` of all records);
* ``sample_uniques``   = records with f == 1;
* ``average_risk``     = mean over records of 1/f (the expected share re-identified by an intruder
                         who picks at random among matching records);
* ``l_diversity[s]``   = min over records of the number of distinct non-null values of sensitive
                         attribute s among the records matching it (distinct l-diversity).

Sample extracts (sampling fraction π < 1) add population estimates (see ``population_estimates``).

**The true-key view.** The wildcard view is how the *published* file looks to someone matching one
published record against the others. An intruder who knows a target's real key values sees it
differently: a published record is a candidate for the target when each of its key values equals the
target's real value or is suppressed (null). So for a target *t* with real key values *x(t)*:

    c(t) = number of published records s such that, for every a in A, s[a] is null or s[a] == x(t)[a]

A real value that is missing in the source is known to be missing: it matches only a published null.
c(t) ≤ f(t) always (the published record of *t* is *x(t)* with some values nulled, and nulls only widen
the wildcard match), so the true-key view is the stricter one and treatment enforces k and l on it
(``TrueKeyMeasures``). When every record of a small group loses the same value, f counts the whole
neighbourhood while c counts only the group itself: the gap the wildcard view hides.

Nothing here returns or logs a data value: results are counts, shares and column names.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

_READ_BUFFER_BYTES = 1 << 20
_COMPACT_ROWS = 1_000_000  # regroup partial group-by results once they hold this many rows
NULL = -1  # the code of a missing (wildcard) value
# In a true-key query: a target's real value that is missing in the source. It equals no code, so it matches only a
# published null (``true_key_queries``).
KNOWN_MISSING = -2


# ------------------------------------------------------------------------------------ class table


@dataclass
class Classes:
    """Distinct key combinations of a file, as integer codes, with their record counts.

    ``codes[i, j]`` is the code of key column ``key[j]`` in combination ``i``: an index into
    ``dictionaries[j]`` (the column's distinct values) or ``NULL``. Rows are not necessarily unique
    (suppression can make two combinations equal); every computation allows for that.
    ``sensitive[s]`` holds the distinct (key codes…, value code) rows of sensitive attribute ``s``
    with a non-null value.
    """

    key: list[str]
    dictionaries: list[pa.Array]
    codes: np.ndarray
    counts: np.ndarray
    sensitive: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def records(self) -> int:
        return int(self.counts.sum())

    def without(self, column: int) -> Classes:
        """The same classes with key column ``column`` made a wildcard everywhere (as if dropped)."""
        codes = self.codes.copy()
        codes[:, column] = NULL
        sensitive = {}
        for name, pairs in self.sensitive.items():
            p = pairs.copy()
            p[:, column] = NULL
            sensitive[name] = p
        return Classes(self.key, self.dictionaries, codes, self.counts, sensitive)


def _iter_projection(path: Path, columns: list[str], batch_rows: int) -> Iterator[pa.Table]:
    parquet = pq.ParquetFile(path, pre_buffer=False, buffer_size=_READ_BUFFER_BYTES)
    try:
        for batch in parquet.iter_batches(batch_size=batch_rows, columns=columns, use_pandas_metadata=False):
            yield pa.Table.from_batches([batch])
    finally:
        parquet.close()


def _regroup(parts: list[pa.Table], keys: list[str]) -> pa.Table:
    """Merge partial group-by results: sum ``n`` per key (or keep distinct keys when there is no ``n``)."""
    table = pa.concat_tables(parts)
    if "n" in table.column_names:
        grouped = table.group_by(keys, use_threads=False).aggregate([("n", "sum")])
        return grouped.rename_columns(["n" if c == "n_sum" else c for c in grouped.column_names]).select([*keys, "n"])
    return table.group_by(keys, use_threads=False).aggregate([]).select(keys)


def build_classes(path: Path, key: list[str], sensitive: list[str] | None = None, *,
                  batch_rows: int = 250_000) -> Classes:
    """Read ``path`` once and group it by ``key`` (and by key + each sensitive column)."""
    sensitive = list(sensitive or [])
    parts: list[pa.Table] = []
    held = 0
    s_parts: dict[str, list[pa.Table]] = {s: [] for s in sensitive}
    s_held = dict.fromkeys(sensitive, 0)
    for table in _iter_projection(path, list(dict.fromkeys([*key, *sensitive])), batch_rows):
        grouped = table.group_by(key, use_threads=False).aggregate([([], "count_all")])
        grouped = grouped.rename_columns(["n" if c == "count_all" else c for c in grouped.column_names])
        parts.append(grouped.select([*key, "n"]))
        held += grouped.num_rows
        if held > _COMPACT_ROWS and len(parts) > 1:
            parts = [_regroup(parts, key)]
            held = parts[0].num_rows
        for s in sensitive:
            present = table.filter(pc.is_valid(table[s]))
            pairs = present.group_by([*key, s], use_threads=False).aggregate([]).select([*key, s])
            s_parts[s].append(pairs)
            s_held[s] += pairs.num_rows
            if s_held[s] > _COMPACT_ROWS and len(s_parts[s]) > 1:
                s_parts[s] = [_regroup(s_parts[s], [*key, s])]
                s_held[s] = s_parts[s][0].num_rows
    if parts:
        merged = _regroup(parts, key)
    else:
        schema = pq.read_schema(path)
        merged = pa.table({**{k: pa.array([], schema.field(k).type) for k in key}, "n": pa.array([], pa.int64())})
    dictionaries = []
    codes = np.empty((merged.num_rows, len(key)), dtype=np.int64)
    for j, name in enumerate(key):
        column = merged[name].combine_chunks()
        encoded = pc.dictionary_encode(column)
        dictionaries.append(encoded.dictionary)
        codes[:, j] = np.asarray(encoded.indices.fill_null(NULL).to_numpy(zero_copy_only=False), dtype=np.int64)
    counts = np.asarray(merged["n"].to_numpy(), dtype=np.int64)
    sensitive_codes: dict[str, np.ndarray] = {}
    for s in sensitive:
        arr = np.empty((0, len(key) + 1), dtype=np.int64)
        if s_parts[s]:
            pairs = _regroup(s_parts[s], [*key, s])
            arr = np.empty((pairs.num_rows, len(key) + 1), dtype=np.int64)
            for j, name in enumerate(key):
                index = pc.index_in(pairs[name].combine_chunks(), value_set=dictionaries[j], skip_nulls=True)
                arr[:, j] = np.asarray(index.fill_null(NULL).to_numpy(zero_copy_only=False), dtype=np.int64)
            values = pc.dictionary_encode(pairs[s].combine_chunks()).indices
            arr[:, len(key)] = np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.int64)
        sensitive_codes[s] = arr
    return Classes(list(key), dictionaries, codes, counts, sensitive_codes)


# ------------------------------------------------------------------------------- wildcard matching


def _patterns(codes: np.ndarray) -> np.ndarray:
    """Bit j set when column j is a wildcard."""
    if codes.shape[1] == 0:
        return np.zeros(codes.shape[0], dtype=np.int64)
    weights = np.left_shift(np.int64(1), np.arange(codes.shape[1], dtype=np.int64))
    patterns: np.ndarray = ((codes == NULL).astype(np.int64) * weights).sum(axis=1)
    return patterns


def _join_columns(m: int, pattern: int) -> list[int]:
    return [j for j in range(m) if not (pattern >> j) & 1]


def compatible_counts(queries: np.ndarray, reference: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """For every query row: the sum of ``weights`` over reference rows compatible with it.

    Rows are compatible when they agree on every column where both are non-null. Works pattern by
    pattern: rows sharing a null pattern are hash-joined (pyarrow) on the columns both have.
    """
    out = np.zeros(queries.shape[0], dtype=np.float64 if weights.dtype.kind == "f" else np.int64)
    if queries.shape[0] == 0 or reference.shape[0] == 0:
        return out
    m = queries.shape[1]
    q_pat = _patterns(queries)
    r_pat = _patterns(reference)
    q_groups = {int(p): np.nonzero(q_pat == p)[0] for p in np.unique(q_pat)}
    r_groups = {int(p): np.nonzero(r_pat == p)[0] for p in np.unique(r_pat)}
    for rp, r_rows in r_groups.items():
        grouped_by_cols: dict[tuple[int, ...], pa.Table] = {}
        for qp, q_rows in q_groups.items():
            cols = tuple(_join_columns(m, rp | qp))
            if not cols:
                out[q_rows] += weights[r_rows].sum()
                continue
            ref = grouped_by_cols.get(cols)
            if ref is None:
                ref = pa.table({**{f"c{j}": reference[r_rows, j] for j in cols}, "w": weights[r_rows]})
                ref = ref.group_by([f"c{j}" for j in cols], use_threads=False).aggregate([("w", "sum")])
                grouped_by_cols[cols] = ref
            query = pa.table({**{f"c{j}": queries[q_rows, j] for j in cols}, "_row": q_rows})
            joined = query.join(ref, keys=[f"c{j}" for j in cols], join_type="inner", use_threads=False)
            if joined.num_rows:
                rows = joined["_row"].to_numpy()
                np.add.at(out, rows, joined["w_sum"].to_numpy().astype(out.dtype))
    return out


def compatible_distinct(queries: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """For every query row: distinct values (last column of ``pairs``) among compatible pair rows."""
    n = queries.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if pairs.shape[0] == 0:
        return np.zeros(n, dtype=np.int64)
    m = queries.shape[1]
    keys, values = pairs[:, :m], pairs[:, m]
    q_pat = _patterns(queries)
    r_pat = _patterns(keys)
    found: list[pa.Table] = []
    for rp in np.unique(r_pat):
        r_rows = np.nonzero(r_pat == rp)[0]
        cache: dict[tuple[int, ...], pa.Table] = {}
        for qp in np.unique(q_pat):
            q_rows = np.nonzero(q_pat == qp)[0]
            cols = tuple(_join_columns(m, int(rp) | int(qp)))
            if not cols:
                distinct = np.unique(values[r_rows])
                found.append(pa.table({"_row": np.repeat(q_rows, len(distinct)),
                                       "v": np.tile(distinct, len(q_rows))}))
                continue
            ref = cache.get(cols)
            if ref is None:
                ref = pa.table({**{f"c{j}": keys[r_rows, j] for j in cols}, "v": values[r_rows]})
                ref = ref.group_by([*(f"c{j}" for j in cols), "v"], use_threads=False).aggregate([])
                cache[cols] = ref
            query = pa.table({**{f"c{j}": queries[q_rows, j] for j in cols}, "_row": q_rows})
            joined = query.join(ref, keys=[f"c{j}" for j in cols], join_type="inner", use_threads=False)
            if joined.num_rows:
                found.append(joined.select(["_row", "v"]))
    out = np.zeros(n, dtype=np.int64)
    if not found:
        return out
    table = pa.concat_tables([t.cast(pa.schema([("_row", pa.int64()), ("v", pa.int64())])) for t in found])
    distinct = table.group_by(["_row"], use_threads=False).aggregate([("v", "count_distinct")])
    out[distinct["_row"].to_numpy()] = distinct["v_count_distinct"].to_numpy()
    return out


def true_key_queries(real: np.ndarray) -> np.ndarray:
    """Real key codes as an intruder who knows them queries the published file: a missing value is known missing."""
    queries = np.array(real, dtype=np.int64, copy=True)
    queries[queries == NULL] = KNOWN_MISSING
    return queries


def true_key_counts(real: np.ndarray, published: Classes) -> np.ndarray:
    """c for every row of ``published`` whose real codes are the same row of ``real`` (module docstring)."""
    return compatible_counts(true_key_queries(real), published.codes, published.counts)


def true_key_diversities(real: np.ndarray, published: Classes) -> dict[str, np.ndarray]:
    """Distinct sensitive values among the published records compatible with each row's real key values."""
    queries = true_key_queries(real)
    return {s: compatible_distinct(queries, pairs) for s, pairs in published.sensitive.items()}


def frequencies(classes: Classes) -> np.ndarray:
    """f for every row of ``classes`` (the number of records compatible with it)."""
    return compatible_counts(classes.codes, classes.codes, classes.counts)


def diversities(classes: Classes) -> dict[str, np.ndarray]:
    """For every sensitive attribute: distinct non-null values among the records compatible with each row."""
    return {s: compatible_distinct(classes.codes, pairs) for s, pairs in classes.sensitive.items()}


# -------------------------------------------------------------------------------------- measures


@dataclass(frozen=True)
class TrueKeyMeasures:
    """The true-key view (module docstring): what an intruder who knows each target's real key values sees."""

    k_anonymity: int | None  # min c: the fewest published records compatible with some target
    records_below_k: int
    uniques: int  # targets with exactly one compatible published record
    average_risk: float  # mean of 1/c
    l_diversity: dict[str, int | None]
    records_below_l: int | None
    records: int

    @property
    def share_below_k(self) -> float:
        return self.records_below_k / self.records if self.records else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"k_anonymity": self.k_anonymity, "records_below_k": self.records_below_k,
                "share_below_k": round(self.share_below_k, 6), "uniques": self.uniques,
                "average_risk": round(self.average_risk, 6), "l_diversity": dict(self.l_diversity),
                "records_below_l": self.records_below_l}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], records: int) -> TrueKeyMeasures:
        return cls(k_anonymity=data["k_anonymity"], records_below_k=data["records_below_k"], uniques=data["uniques"],
                   average_risk=data["average_risk"], l_diversity=dict(data["l_diversity"]),
                   records_below_l=data["records_below_l"], records=records)


@dataclass(frozen=True)
class Measures:
    """Value-free risk measures of one dataset over its key (see the module docstring).

    The top-level fields are the wildcard view; ``true_key`` the true-key view (None where the real key values
    are not known, e.g. when the release gate re-measures a published file). ``enforced_*`` is the stricter.
    """

    records: int
    key: tuple[str, ...]
    k: int
    classes: int
    k_anonymity: int | None
    records_below_k: int
    sample_uniques: int
    average_risk: float
    l_diversity: dict[str, int | None]
    records_below_l: int | None
    l: int | None  # noqa: E741
    population: dict[str, Any] | None  # population_estimates (sample extracts), else None
    true_key: TrueKeyMeasures | None = None

    @property
    def share_below_k(self) -> float:
        return self.records_below_k / self.records if self.records else 0.0

    @property
    def enforced_k_anonymity(self) -> int | None:
        """The smaller of the two views' k-anonymity (the one treatment enforces)."""
        values = [v for v in (self.k_anonymity, self.true_key.k_anonymity if self.true_key else None) if v is not None]
        return min(values) if values else None

    @property
    def enforced_records_below_k(self) -> int:
        return max(self.records_below_k, self.true_key.records_below_k if self.true_key else 0)

    @property
    def enforced_records_below_l(self) -> int | None:
        views = [v for v in (self.records_below_l, self.true_key.records_below_l if self.true_key else None)
                 if v is not None]
        return max(views) if views else None

    @property
    def k_anonymous(self) -> bool:
        return self.records_below_k == 0

    @property
    def l_diverse(self) -> bool:
        return self.records_below_l in (None, 0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "records": self.records, "key": list(self.key), "k": self.k, "classes": self.classes,
            "k_anonymity": self.k_anonymity, "records_below_k": self.records_below_k,
            "share_below_k": round(self.share_below_k, 6), "sample_uniques": self.sample_uniques,
            "average_risk": round(self.average_risk, 6),
            "l": self.l, "l_diversity": dict(self.l_diversity), "records_below_l": self.records_below_l,
            "population": self.population,
            "true_key": None if self.true_key is None else self.true_key.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Measures:
        """The measures as ``to_dict`` wrote them (``share_below_k`` is derived, so not read)."""
        population = data["population"]
        true_key = data.get("true_key")
        return cls(records=data["records"], key=tuple(data["key"]), k=data["k"], classes=data["classes"],
                   k_anonymity=data["k_anonymity"], records_below_k=data["records_below_k"],
                   sample_uniques=data["sample_uniques"], average_risk=data["average_risk"],
                   l_diversity=dict(data["l_diversity"]), records_below_l=data["records_below_l"], l=data["l"],
                   population=None if population is None else dict(population),
                   true_key=None if true_key is None else TrueKeyMeasures.from_dict(true_key, data["records"]))


def population_estimates(f: np.ndarray, counts: np.ndarray, fraction: float, k: int) -> dict[str, Any]:
    """Population-level estimates for a sample drawn with fraction π (docs/disclosure.md).

    * ``dis`` — Skinner & Elliot (2002), "A measure of disclosure risk for microdata", JRSS B 64(4):
      the probability that a unique match of a sample unique against the population is correct,
      estimated under equal-probability sampling by π·n1 / (π·n1 + 2(1−π)·n2), with n1 the number of
      sample uniques and n2 the number of classes of size 2 in the sample.
    * ``estimated_population_uniques``, ``estimated_records_below_k``, ``estimated_average_risk`` —
      the simple inverse-fraction estimator F̂ = f/π of each record's population class size (the
      weighted frequency sdcMicro's ``freqCalc`` computes with weights 1/π): records whose F̂ < 2,
      whose F̂ < k, and the mean of 1/F̂. It ignores the sampling variance of f (crude, but
      transparent); ``dis`` is the better-founded figure.
    """
    records = int(counts.sum())
    if records == 0:
        return {"fraction": fraction, "dis": None, "estimated_population_uniques": 0,
                "estimated_records_below_k": 0, "estimated_average_risk": 0.0,
                "estimators": ["skinner-elliot-2002", "inverse-fraction"]}
    n1 = int(counts[f == 1].sum())
    n2 = int(counts[f == 2].sum()) / 2
    denominator = fraction * n1 + 2 * (1 - fraction) * n2
    dis = fraction * n1 / denominator if denominator > 0 else 0.0
    estimated = np.maximum(f / fraction, f)
    return {
        "fraction": round(fraction, 8),
        "dis": round(dis, 6),
        "estimated_population_uniques": int(counts[estimated < 2].sum()),
        "estimated_records_below_k": int(counts[estimated < k].sum()),
        "estimated_average_risk": round(float((counts / estimated).sum() / records), 6),
        "estimators": ["skinner-elliot-2002", "inverse-fraction"],
    }


def _below_l(diversity: dict[str, np.ndarray], counts: np.ndarray, live: np.ndarray, l: int | None) -> int | None:  # noqa: E741
    if l is None:
        return None
    low = np.zeros(len(counts), dtype=bool)
    for values in diversity.values():
        low |= values < l
    return int(counts[low & live].sum())


def measure_true_key(real: np.ndarray, published: Classes, k: int, *, l: int | None = None) -> TrueKeyMeasures:  # noqa: E741
    """The true-key view of ``published`` whose rows have the real key codes ``real`` (same row order)."""
    counts = published.counts
    live = counts > 0
    records = int(counts.sum())
    c = true_key_counts(real, published)
    diversity = true_key_diversities(real, published)
    return TrueKeyMeasures(
        k_anonymity=int(c[live].min()) if records else None,
        records_below_k=int(counts[(c < k) & live].sum()),
        uniques=int(counts[(c == 1) & live].sum()),
        average_risk=float((counts[live] / c[live]).sum() / records) if records else 0.0,
        l_diversity={s: (int(v[live].min()) if records else None) for s, v in diversity.items()},
        records_below_l=_below_l(diversity, counts, live, l),
        records=records,
    )


def measure(classes: Classes, k: int, *, l: int | None = None,  # noqa: E741
            fraction: float | None = None, f: np.ndarray | None = None, real: np.ndarray | None = None) -> Measures:
    """All measures for ``classes`` against threshold ``k`` (and ``l``); sample estimates when π < 1.

    ``real``: the real (unsuppressed) key codes of every row of ``classes``; given, the true-key view is
    measured too (for data before treatment, the codes themselves).
    """
    f = frequencies(classes) if f is None else f
    counts = classes.counts
    live = counts > 0
    records = int(counts.sum())
    distinct = np.unique(classes.codes[live], axis=0).shape[0] if records else 0
    diversity = diversities(classes)
    below_l = _below_l(diversity, counts, live, l)
    population = None
    if fraction is not None and fraction < 1:
        population = population_estimates(f[live], counts[live], fraction, k)
    return Measures(
        records=records,
        key=tuple(classes.key),
        k=k,
        classes=int(distinct),
        k_anonymity=int(f[live].min()) if records else None,
        records_below_k=int(counts[(f < k) & live].sum()),
        sample_uniques=int(counts[(f == 1) & live].sum()),
        average_risk=float((counts[live] / f[live]).sum() / records) if records else 0.0,
        l_diversity={s: (int(v[live].min()) if records else None) for s, v in diversity.items()},
        records_below_l=below_l,
        l=l,
        population=population,
        true_key=None if real is None else measure_true_key(real, classes, k, l=l),
    )


@dataclass(frozen=True)
class RiskDriver:
    """One key variable's part in the risk: records below k with it, and if it were left out of the key."""

    column: str
    records_below_k: int
    records_below_k_without_it: int
    distinct_values: int

    def to_dict(self) -> dict[str, Any]:
        return {"column": self.column, "records_below_k": self.records_below_k,
                "records_below_k_without_it": self.records_below_k_without_it,
                "distinct_values": self.distinct_values}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RiskDriver:
        return cls(column=data["column"], records_below_k=data["records_below_k"],
                   records_below_k_without_it=data["records_below_k_without_it"],
                   distinct_values=data["distinct_values"])


def drivers(classes: Classes, k: int) -> list[RiskDriver]:
    """Which key variables drive the risk: records below k if each one were left out of the key."""
    f = frequencies(classes)
    below = int(classes.counts[f < k].sum())
    out = []
    for j, name in enumerate(classes.key):
        without = classes.without(j)
        fw = compatible_counts(without.codes, without.codes, without.counts)
        out.append(RiskDriver(column=name, records_below_k=below,
                              records_below_k_without_it=int(without.counts[fw < k].sum()),
                              distinct_values=len(classes.dictionaries[j])))
    out.sort(key=lambda d: (d.records_below_k_without_it, -d.distinct_values))
    return out
