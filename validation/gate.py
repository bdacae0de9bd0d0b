"""The delivery gate: a Great Expectations suite derived from the contract must pass on the staged file.

Security rule: data values never reach logs, exceptions or the returned summary. GX results carry
values (``partial_unexpected_list``, ``unexpected_list``, exception messages, ...); this module reads
only the expectation type, column, success flag and counts from them, and keeps only the *type name*
of any foreign exception (pyarrow's messages quote values too). The only "observed" facts kept are
value-free table facts (the row count, the list of column *names*) or fixed markers.

**GX decides, the gate counts.** Every expectation is a GX expectation object built from the rules
(``build_suite``), and every outcome is GX's decision: either a real GX validation, or the expectation
object's own ``_validate`` (the decision function a normal validation calls once its metrics are
resolved) fed with metrics the gate computed. Memory is bounded by ``batch_rows`` (and
``_PARTITION_ROWS``), not by the file size:

* ``expect_table_columns_to_match_ordered_list`` runs through GX once, on a zero-row DataFrame built
  from the file's Parquet schema (this also covers files with 0 rows), together with any column
  expectation that has no vectorised metric (below);
* ``expect_table_row_count_to_be_between`` / ``_to_equal`` are decided by ``_validate`` on the
  ``table.row_count`` taken from the Parquet footer (a DataFrame of N rows would cost O(N) memory just
  for GX's batch fingerprint); the Arrow types likewise on the footer's schema;
* **column expectations** (pseudonym regex and length, not-null, between, in-set, regex domains,
  multiples of a base, the leak check) have their metrics computed by ``metrics``: vectorised
  ``pyarrow.compute`` on each Arrow record batch read straight from Parquet (only the columns needed,
  no pandas), reproducing GX's pandas semantics exactly (nulls and NaN ignored, Python ``re`` regexes,
  ``Decimal`` multiples, ...). The counts (``column_values.nonnull.unexpected_count``,
  ``<map_metric>.unexpected_count``; ``unexpected_values`` is always empty) are summed across batches
  and handed to the expectation's ``_validate``. Its result must echo them back, or the expectation
  fails closed: a metric key renamed by a GX upgrade would otherwise read as "no metric" and pass
  vacuously. A (kind, column type) with no exact vectorised metric (``\\d`` in a regex, a uint64 or
  boolean column, ...) is evaluated by real GX on pandas batches instead;
* ``expect_column_values_to_be_unique`` is decided the same way on a duplicate count taken over the
  *whole* file in the same pass: a 64-bit hash per value, the rows whose hash repeats compared
  exactly; beyond ``_PARTITION_ROWS`` values the (value, hash) pairs are split by hash into spill files
  in a private folder next to the staged file (removed afterwards), one partition in memory at a time.

**Cross-check.** So the vectorised metrics cannot drift from GX silently, real GX validates the first
``_HEAD_ROWS`` rows of the file (a constant, whatever the file size) with every metric-fed column
expectation, and its unexpected and missing counts must equal the vectorised counts on the same rows.
Any disagreement fails that expectation closed with the value-free marker
``OBSERVED_METRIC_DISAGREES``. A vectorised metric that raises fails its expectation with
``OBSERVED_METRIC_ERROR`` (no message kept); an error inside GX gives ``OBSERVED_EVALUATION_ERROR``.

The release gate (``release.validate_delivery``) adds, for every dataset of a delivery:

* the exact Arrow types, in order (``expect_table_arrow_types_to_equal``, decided on the footer's
  schema) and the exact row count recorded by the extract (``expect_table_row_count_to_equal``);
* domains of generalised values (years in a plausible range, band starts, labels, postcode levels)
  and multiples of a rounding base: column expectations as above;
* **no leakage**: ``expect_column_values_to_not_contain_source_identifiers`` searches every string
  column for raw source identifiers (``leakage``: drawn from the source at run time, held only in
  memory, referred to by a token): a column expectation as above;
* uniqueness of entity keys over the whole file (above), and referential integrity between datasets
  (``missing_references``: both files split by the same hash, one pass each);
* the disclosure threshold, re-measured on the staged file; the sample matching the contract;
  aggregate tables with no cell recoverable from a single row or column equation.

Every outcome keeps its GX configuration (value-free kwargs) so the operator's Data Docs report
(``docs``) can be rendered from the outcomes alone: it never sees a GX result that could hold values.

Great Expectations is imported lazily (it takes seconds) and never at module import time; this
module never imports Airflow. (Importing it in a background thread while the file is measured was
tried and measured: the import holds the GIL and the pass only slowed down.) The suite exists first as
data (``suite_specs``: expectation type and kwargs), from which ``build_suite`` builds the GX objects.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

from core.errors import (
    ConfigError,
    ContractExtractsError,
    StageFailed,
    ValidationFailed,
)

if TYPE_CHECKING:
    import great_expectations
    import pandas as pd

    from validation.metrics import Metric

log = logging.getLogger(__name__)

PSEUDONYM_REGEX = r"^[0-9a-f]{32}$"
PSEUDONYM_LENGTH = 32

# GX expectation type names (``Expectation.expectation_type``), used in summaries.
COLUMNS_MATCH_ORDERED_LIST = "expect_table_columns_to_match_ordered_list"
ROW_COUNT_BETWEEN = "expect_table_row_count_to_be_between"
VALUES_MATCH_REGEX = "expect_column_values_to_match_regex"
VALUE_LENGTHS_EQUAL = "expect_column_value_lengths_to_equal"
VALUES_NOT_NULL = "expect_column_values_to_not_be_null"
ROW_COUNT_EQUAL = "expect_table_row_count_to_equal"
VALUES_UNIQUE = "expect_column_values_to_be_unique"
VALUES_BETWEEN = "expect_column_values_to_be_between"
VALUES_IN_SET = "expect_column_values_to_be_in_set"
# Custom expectations (validation/expectations.py); names repeated here so importing this module stays cheap.
ARROW_TYPES = "expect_table_arrow_types_to_equal"
NOT_SOURCE_IDENTIFIER = "expect_column_values_to_not_contain_source_identifiers"
MULTIPLES_OF = "expect_column_values_to_be_multiples_of"
EXIST_IN_DATASET = "expect_column_values_to_exist_in_dataset"
DISCLOSURE_THRESHOLD = "expect_disclosure_threshold_to_hold"
SAMPLE_MATCHES = "expect_sample_to_match_contract"
CELLS_NOT_RECOVERABLE = "expect_table_cells_not_recoverable"

# Fixed, value-free markers for column expectations GX could not evaluate.
OBSERVED_COLUMN_MISSING = "not evaluated: column missing from file"
OBSERVED_COLUMN_DUPLICATED = "not evaluated: column name duplicated in file"
OBSERVED_EVALUATION_ERROR = "not evaluated: error inside Great Expectations"
OBSERVED_METRIC_ERROR = "not evaluated: error while computing the metric"
# Real GX on the head of the file counted differently from the vectorised metric (or GX's decision did
# not echo the metrics it was given): the expectation fails closed rather than trusting either.
OBSERVED_METRIC_DISAGREES = "not evaluated: vectorised metric disagrees with Great Expectations"

# Counts without values: BASIC computes element_count and unexpected_count;
# partial_unexpected_count=0 keeps partial_unexpected_list empty. SUMMARY gives the same counts
# but also computes the unexpected index list, which we never use (slower on failing batches).
_RESULT_FORMAT: dict[str, Any] = {"result_format": "BASIC", "partial_unexpected_count": 0}
_GX_NAME = "contract_extracts_gate"
_READ_BUFFER_BYTES = 1 << 20


# --------------------------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class Domain:
    """Where a column's non-null values must lie (declared by the contract, never read from the data).

    ``between``: ``min_value`` ≤ v ≤ ``max_value``; ``in_set``: v in ``values`` (labels a
    treatment or hierarchy can produce); ``regex``: v matches ``regex`` (use ``\\Z``, not ``$``);
    ``multiple_of``: v is a whole multiple of ``base``.
    """

    kind: Literal["between", "in_set", "regex", "multiple_of"]
    min_value: float | None = None
    max_value: float | None = None
    values: tuple = ()
    regex: str | None = None
    base: float | None = None

    def __post_init__(self) -> None:
        ok = {"between": self.min_value is not None or self.max_value is not None,
              "in_set": bool(self.values), "regex": bool(self.regex),
              "multiple_of": self.base is not None and self.base > 0}.get(self.kind, False)
        if not ok:
            raise ConfigError(f"domain {self.kind!r} is missing its bounds, values, regex or base",
                              key="columns.domains")


@dataclass(frozen=True)
class ColumnRule:
    """One expected column of the staged file."""

    name: str
    pseudonym: bool = False  # values must match PSEUDONYM_REGEX (nulls allowed unless not_null)
    not_null: bool = False  # no nulls allowed
    type: str | None = None  # the exact Arrow type (str(pa.DataType)); checked when any column names one
    unique: bool = False  # no value occurs twice in the whole file (nulls ignored)
    domains: tuple[Domain, ...] = ()
    leak: Literal["exact", "substring"] | None = None  # search for raw source identifiers

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError("a column rule needs a non-empty column name", key="columns.name")
        kinds = [d.kind for d in self.domains]
        if len(set(kinds)) != len(kinds):
            raise ConfigError(f"column {self.name}: one domain of each kind at most", key="columns.domains")
        if self.pseudonym and "regex" in kinds:
            raise ConfigError(f"column {self.name}: a pseudonym column has its own format rule",
                              key="columns.domains")


@dataclass(frozen=True)
class DatasetRules:
    """What the staged file of one dataset must look like (derived from the contract)."""

    dataset: str
    columns: tuple[ColumnRule, ...]  # exact expected columns, in order
    min_rows: int = 0
    max_rows: int | None = None
    expected_rows: int | None = None  # exactly this many rows (the extract's count)

    def __post_init__(self) -> None:
        key = f"datasets.{self.dataset}"
        if not self.dataset:
            raise ConfigError("a dataset needs a name", key="datasets")
        if not self.columns:
            raise ConfigError("at least one column is required", key=f"{key}.columns")
        names = [c.name for c in self.columns]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ConfigError(f"duplicated column names {duplicated}", key=f"{key}.columns",
                              fix="list each column once")
        if not isinstance(self.min_rows, int) or self.min_rows < 0:
            raise ConfigError("min_rows must be a whole number >= 0", key=f"{key}.min_rows")
        if self.max_rows is not None and (not isinstance(self.max_rows, int)
                                          or self.max_rows < self.min_rows):
            raise ConfigError("max_rows must be a whole number >= min_rows", key=f"{key}.max_rows")
        if self.expected_rows is not None and (not isinstance(self.expected_rows, int) or self.expected_rows < 0):
            raise ConfigError("expected_rows must be a whole number >= 0", key=f"{key}.expected_rows")

    @property
    def typed(self) -> bool:
        return any(c.type is not None for c in self.columns)


# ------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ExpectationOutcome:
    """The value-free outcome of one expectation over the whole file.

    ``observed`` holds only table-level facts that are not data values (the observed row count, the
    JSON list of observed column names) or a fixed marker saying why a column expectation could
    not be evaluated; ``unexpected_count`` is None when it is not a column expectation or when it
    could not be evaluated.
    """

    expectation: str
    column: str | None
    success: bool
    unexpected_count: int | None
    observed: str | None
    # The GX expectation configuration (value-free kwargs), for the operator's Data Docs report only.
    config: Any = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"expectation": self.expectation, "column": self.column, "success": self.success,
                "unexpected_count": self.unexpected_count, "observed": self.observed}


@dataclass(frozen=True)
class ValidationSummary:
    """Value-free result of the gate for one staged file."""

    dataset: str
    success: bool
    rows: int
    expectations: tuple[ExpectationOutcome, ...]

    def failures(self) -> list[ExpectationOutcome]:
        """The expectations that failed (empty when the gate passed)."""
        return [e for e in self.expectations if not e.success]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable and value-free: for the package manifest and the audit ledger."""
        return {
            "dataset": self.dataset,
            "success": self.success,
            "rows": self.rows,
            "evaluated": len(self.expectations),
            "failed": len(self.failures()),
            "expectations": [e.to_dict() for e in self.expectations],
        }

    def raise_if_failed(self) -> None:
        """Block delivery: raise ``ValidationFailed`` (value-free) unless every expectation passed."""
        if self.success:
            return
        failures = self.failures()
        named = ", ".join(f"{f.expectation}({f.column})" if f.column else f.expectation
                          for f in failures)
        raise ValidationFailed(
            f"dataset {self.dataset}: {len(failures)} of {len(self.expectations)} expectations "
            f"failed: {named}",
            failures=[f.to_dict() for f in failures],
        )


# ---------------------------------------------------------------------------------------------- GX


def _import_gx() -> ModuleType:
    """Import great_expectations without analytics and with its loggers at WARNING."""
    os.environ["GX_ANALYTICS_ENABLED"] = "false"
    _quieten_gx_loggers()
    import great_expectations as gx

    _quieten_gx_loggers()  # some GX modules set their own level (INFO) when imported
    return gx


def _quieten_gx_loggers() -> None:
    root = logging.getLogger("great_expectations")
    if root.level < logging.WARNING:  # NOTSET included; a stricter level set by the operator stays
        root.setLevel(logging.WARNING)
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if (name.startswith("great_expectations.") and isinstance(logger, logging.Logger)
                and logging.NOTSET < logger.level < logging.WARNING):
            logger.setLevel(logging.WARNING)


Spec = tuple[str, dict]  # (expectation type, configuration kwargs): what a GX expectation is built from

# GX classes by expectation type; the custom ones live in validation/expectations.py (imported with GX).
_BUILT_IN = {
    COLUMNS_MATCH_ORDERED_LIST: "ExpectTableColumnsToMatchOrderedList",
    ROW_COUNT_BETWEEN: "ExpectTableRowCountToBeBetween",
    ROW_COUNT_EQUAL: "ExpectTableRowCountToEqual",
    VALUES_MATCH_REGEX: "ExpectColumnValuesToMatchRegex",
    VALUE_LENGTHS_EQUAL: "ExpectColumnValueLengthsToEqual",
    VALUES_NOT_NULL: "ExpectColumnValuesToNotBeNull",
    VALUES_UNIQUE: "ExpectColumnValuesToBeUnique",
    VALUES_BETWEEN: "ExpectColumnValuesToBeBetween",
    VALUES_IN_SET: "ExpectColumnValuesToBeInSet",
}
_CUSTOM = {
    ARROW_TYPES: "ExpectTableArrowTypesToEqual",
    MULTIPLES_OF: "ExpectColumnValuesToBeMultiplesOf",
    NOT_SOURCE_IDENTIFIER: "ExpectColumnValuesToNotContainSourceIdentifiers",
}


def _domain_spec(column: str, domain: Domain) -> Spec:
    if domain.kind == "between":
        return VALUES_BETWEEN, {"column": column, "min_value": domain.min_value, "max_value": domain.max_value}
    if domain.kind == "in_set":
        return VALUES_IN_SET, {"column": column, "value_set": list(domain.values)}
    if domain.kind == "regex":
        return VALUES_MATCH_REGEX, {"column": column, "regex": domain.regex}
    return MULTIPLES_OF, {"column": column, "base": domain.base}


def suite_specs(rules: DatasetRules, *, leak_token: str | None = None) -> list[Spec]:
    """The suite derived from the rules, as data (table-level expectations first, then per column)."""
    specs: list[Spec] = [
        (COLUMNS_MATCH_ORDERED_LIST, {"column_list": [c.name for c in rules.columns]}),
        (ROW_COUNT_BETWEEN, {"min_value": rules.min_rows, "max_value": rules.max_rows}),
    ]
    if rules.expected_rows is not None:
        specs.append((ROW_COUNT_EQUAL, {"value": rules.expected_rows}))
    if rules.typed:
        specs.append((ARROW_TYPES, {"types": [[c.name, c.type or "?"] for c in rules.columns]}))
    for rule in rules.columns:
        if rule.pseudonym:
            specs.append((VALUES_MATCH_REGEX, {"column": rule.name, "regex": PSEUDONYM_REGEX}))
            # GX matches with str.contains, where "$" also matches before a trailing newline, so
            # "<32 hex>\n" would pass the regex alone; the length check closes that gap.
            specs.append((VALUE_LENGTHS_EQUAL, {"column": rule.name, "value": PSEUDONYM_LENGTH}))
        if rule.not_null:
            specs.append((VALUES_NOT_NULL, {"column": rule.name}))
        if rule.unique:
            specs.append((VALUES_UNIQUE, {"column": rule.name}))
        specs.extend(_domain_spec(rule.name, domain) for domain in rule.domains)
        if rule.leak is not None and leak_token is not None:
            specs.append((NOT_SOURCE_IDENTIFIER, {"column": rule.name, "identifier_set": leak_token,
                                                  "substring": rule.leak == "substring"}))
    return specs


def _expectation(gx: ModuleType, kind: str, kwargs: dict) -> Any:
    if kind in _CUSTOM:
        from validation import expectations as custom

        return getattr(custom, _CUSTOM[kind])(**kwargs)
    return getattr(gx.expectations, _BUILT_IN[kind])(**kwargs)


def build_suite(rules: DatasetRules, *, leak_token: str | None = None) -> great_expectations.ExpectationSuite:
    """The GX suite derived from the rules (table-level expectations first, then per column)."""
    gx = _import_gx()
    return gx.ExpectationSuite(name=f"{_GX_NAME}.{rules.dataset}",
                               expectations=[_expectation(gx, kind, kwargs)
                                             for kind, kwargs in suite_specs(rules, leak_token=leak_token)])


class _GxRunner:
    """One ephemeral context / datasource / asset / batch definition, reused for every batch."""

    def __init__(self, gx: ModuleType) -> None:
        from great_expectations.data_context.types.base import (
            DataContextConfig,
            InMemoryStoreBackendDefaults,
            ProgressBarsConfig,
        )

        config = DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
            progress_bars=ProgressBarsConfig(globally=False),  # tqdm would write to stderr
            analytics_enabled=False,
        )
        context = gx.get_context(mode="ephemeral", project_config=config)
        asset = context.data_sources.add_pandas(_GX_NAME).add_dataframe_asset(_GX_NAME)
        self._batch_definition = asset.add_batch_definition_whole_dataframe(_GX_NAME)

    def validate(self, df: pd.DataFrame, suite: Any) -> dict[tuple[str, str | None], _Counts]:
        """Run the suite on one DataFrame; keep only type, column, success and counts."""
        batch = self._batch_definition.get_batch(batch_parameters={"dataframe": df})
        result = batch.validate(suite, result_format=_RESULT_FORMAT)
        out: dict[tuple[str, str | None], _Counts] = {}
        for res in result.results:
            config = res.expectation_config
            key = (str(config.type), config.kwargs.get("column"))
            if _raised_exception(res.exception_info):
                out[key] = _Counts(success=False, unexpected=None, errored=True, observed=None, missing=None)
                continue
            body = res.result or {}
            unexpected = body.get("unexpected_count")
            observed = body.get("observed_value") if key[0] == COLUMNS_MATCH_ORDERED_LIST else None
            missing = body.get("missing_count")
            out[key] = _Counts(
                success=bool(res.success),
                unexpected=int(unexpected) if unexpected is not None else None,
                errored=False,
                observed=json.dumps([str(n) for n in observed]) if observed is not None else None,
                missing=int(missing) if missing is not None else None,
            )
        return out


@dataclass
class _Counts:
    success: bool
    unexpected: int | None
    errored: bool
    observed: str | None  # value-free only (column names)
    missing: int | None = None  # GX's null count (map expectations other than not-null)

    def add(self, other: _Counts) -> None:
        self.success = self.success and other.success
        self.errored = self.errored or other.errored
        if self.errored or other.unexpected is None or self.unexpected is None:
            self.unexpected = None
        else:
            self.unexpected += other.unexpected
        self.missing = None if self.missing is None or other.missing is None else self.missing + other.missing


def _raised_exception(info: Any) -> bool:
    if not info:
        return False
    if isinstance(info, dict) and "raised_exception" in info:
        return bool(info["raised_exception"])
    if isinstance(info, dict):
        return any(_raised_exception(v) for v in info.values() if isinstance(v, dict))
    return bool(getattr(info, "raised_exception", False))


def _key(expectation: Any) -> tuple[str, str | None]:
    return str(expectation.expectation_type), getattr(expectation, "column", None)


# ---------------------------------------------------------------------------------------- validation


def validate_parquet(path: Path, rules: DatasetRules, *, batch_rows: int = 250_000,
                     leak_token: str | None = None) -> ValidationSummary:
    """Validate a staged (already masked) Parquet file against its rules; memory bounded by batch_rows.

    Returns a value-free summary; call ``summary.raise_if_failed()`` to block delivery. Errors from
    pyarrow or GX are re-raised as ``StageFailed`` naming only the exception type (their messages
    may quote data), without chaining. ``leak_token`` names a registered identifier sample
    (``leakage.register``); without it, columns with a ``leak`` rule are not searched.
    """
    if isinstance(batch_rows, bool) or not isinstance(batch_rows, int) or batch_rows < 1:
        raise ConfigError("batch_rows must be a whole number >= 1", key="batch_rows")
    path = Path(path)
    failure: str | None = None
    try:
        summary = _validate(path, rules, batch_rows, leak_token)
    except ContractExtractsError:
        raise
    except Exception as exc:  # foreign errors may quote data values: keep only the type name
        failure = type(exc).__name__
    if failure is not None:  # raised outside the except block: no __context__ to leak values
        raise StageFailed(f"validating {path.name} for dataset {rules.dataset} failed: {failure}")
    log.info("validated dataset %s: rows=%d success=%s failed=%d of %d expectations",
             summary.dataset, summary.rows, summary.success, len(summary.failures()),
             len(summary.expectations))
    return summary


_TABLE_LEVEL = frozenset({COLUMNS_MATCH_ORDERED_LIST, ROW_COUNT_BETWEEN, ROW_COUNT_EQUAL, ARROW_TYPES})
_FILE_WIDE = frozenset({VALUES_UNIQUE})  # column expectations decided on a whole-file metric
_HEAD_ROWS = 2_000  # rows at the head of the file that real GX validates, to cross-check the metrics
_WORKERS = max(1, min(4, os.cpu_count() or 1))  # threads computing one batch's metrics

_Key = tuple[str, str | None]


@dataclass
class _Plan:
    """How each column expectation is evaluated on this file (keyed by expectation type and column)."""

    vectorised: dict[_Key, Metric] = field(default_factory=dict)  # metric computed here
    gx_batched: list[_Key] = field(default_factory=list)  # no exact vectorised metric: GX on every batch
    file_wide: list[_Key] = field(default_factory=list)  # uniqueness over the whole file
    not_evaluated: dict[_Key, str] = field(default_factory=dict)  # column missing or duplicated

    def columns(self, rules: DatasetRules) -> list[str]:
        used = {key[1] for key in [*self.vectorised, *self.gx_batched, *self.file_wide]}
        return [c.name for c in rules.columns if c.name in used]


def _plan(entries: list[Spec], schema: Any) -> _Plan:
    """Plan the column expectations ``(type, configuration kwargs)`` against the file's schema."""
    from validation.metrics import column_metric

    names = list(schema.names)
    plan = _Plan()
    for kind, kwargs in entries:
        column = kwargs.get("column")
        key = (kind, column)
        if kind in _TABLE_LEVEL:
            continue
        if names.count(column) != 1:
            plan.not_evaluated[key] = OBSERVED_COLUMN_DUPLICATED if column in names else OBSERVED_COLUMN_MISSING
        elif kind in _FILE_WIDE:
            plan.file_wide.append(key)
        else:
            metric = column_metric(kind, dict(kwargs), schema.field(column).type)
            if metric is None:
                plan.gx_batched.append(key)
            else:
                plan.vectorised[key] = metric
    return plan


@dataclass
class _Measured:
    """What one pass over the file measured."""

    totals: dict[_Key, Any]  # whole-file counts of metric-fed expectations
    head: dict[_Key, Any]  # the same on the head slice
    raised: set[_Key]  # a metric raised: not evaluated (the message is dropped)
    head_table: Any  # the head slice (at most _HEAD_ROWS rows), for GX's cross-check
    gx_counts: dict[_Key, _Counts]  # GX's own counts of the batched expectations


def _measure_file(path: Path, rules: DatasetRules, plan: _Plan, batch_rows: int,
                  gx_batched: tuple[Any, Any] | None = None) -> _Measured:
    """One pass over the file computing every planned metric; memory bounded by two batches.

    ``gx_batched``: (runner, suite) of the expectations GX evaluates itself on every batch (needed only
    when the plan has some).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from validation.metrics import Counts

    # pre_buffer=False + a read buffer: pyarrow's default pre-buffering caches every column chunk
    # read so far until the reader closes, i.e. memory grows with the file (measured).
    parquet = pq.ParquetFile(path, pre_buffer=False, buffer_size=_READ_BUFFER_BYTES)
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(parquet.close)
        schema = parquet.schema_arrow
        total_rows = int(parquet.metadata.num_rows)
        read_columns = plan.columns(rules)
        totals = {key: Counts() for key in plan.vectorised}
        head = {key: Counts() for key in plan.vectorised}
        raised: set[_Key] = set()
        gx_counts: dict[_Key, _Counts] = {}
        spill = path.parent
        duplicates = {key: cleanup.enter_context(_DuplicateCounter(total_rows, spill)) for key in plan.file_wide}
        head_duplicates = {key: cleanup.enter_context(_DuplicateCounter(_HEAD_ROWS, spill)) for key in duplicates}
        gx_columns = [c for c in read_columns if any(key[1] == c for key in plan.gx_batched)]
        head_batches: list[Any] = []
        pool = cleanup.enter_context(ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="gate"))

        def submit(batch: Any, head_part: Any) -> dict[_Key, Future]:
            """The batch's metrics, one job per expectation (pyarrow and numpy release the GIL)."""
            jobs = {}
            for key, metric in plan.vectorised.items():
                if key not in raised:
                    jobs[key] = pool.submit(_measure, metric, batch.column(key[1]),
                                            None if head_part is None else head_part.column(key[1]))
            for key, counter in duplicates.items():
                if key not in raised:
                    jobs[key] = pool.submit(_feed, counter, head_duplicates[key], batch.column(key[1]),
                                            None if head_part is None else head_part.column(key[1]))
            return jobs

        def collect(jobs: dict[_Key, Future]) -> None:
            for key, job in jobs.items():
                try:
                    batch_counts, head_counts = job.result()
                except Exception:  # its message may quote values: keep only the fact
                    raised.add(key)
                    continue
                if batch_counts is not None:
                    totals[key].add(batch_counts)
                if head_counts is not None:
                    head[key].add(head_counts)

        seen_rows = 0
        if read_columns and total_rows:
            pending: dict[_Key, Future] = {}
            # Reading batch k+1 (in the iterator) overlaps the jobs of batch k: two batches in memory at most.
            for batch in parquet.iter_batches(batch_size=batch_rows, columns=read_columns,
                                              use_pandas_metadata=False):
                collect(pending)
                head_part = None
                if seen_rows < _HEAD_ROWS:  # copied out: a zero-copy slice would pin the whole batch
                    head_part = batch.take(pa.array(range(min(batch.num_rows, _HEAD_ROWS - seen_rows)), pa.int64()))
                seen_rows += batch.num_rows
                if head_part is not None:
                    head_batches.append(head_part)
                pending = submit(batch, head_part)
                if plan.gx_batched:
                    runner, gx_suite = gx_batched
                    for key, batch_counts in runner.validate(_to_pandas(batch.select(gx_columns)), gx_suite).items():
                        if key in gx_counts:
                            gx_counts[key].add(batch_counts)
                        else:
                            gx_counts[key] = batch_counts
            collect(pending)
            if seen_rows != total_rows:
                raise StageFailed(f"{path.name}: read {seen_rows} rows but the Parquet footer says "
                                  f"{total_rows}")
        for key, counter in duplicates.items():
            totals[key] = Counts() if key in raised else Counts(*counter.result())
            head[key] = Counts() if key in raised else Counts(*head_duplicates[key].result())
        head_table = (pa.Table.from_batches(head_batches) if head_batches
                      else pa.schema([schema.field(c) for c in read_columns]).empty_table())
    return _Measured(totals=totals, head=head, raised=raised, head_table=head_table, gx_counts=gx_counts)


def _validate(path: Path, rules: DatasetRules, batch_rows: int, leak_token: str | None = None) -> ValidationSummary:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    try:
        schema = parquet.schema_arrow
        total_rows = int(parquet.metadata.num_rows)
    finally:
        parquet.close()

    gx = _import_gx()
    suite = build_suite(rules, leak_token=leak_token)
    by_key = {_key(e): e for e in suite.expectations}
    plan = _plan([(str(e.expectation_type), dict(e.configuration.kwargs)) for e in suite.expectations], schema)
    runner = _GxRunner(gx)
    batched = gx.ExpectationSuite(name=f"{_GX_NAME}.batches", expectations=[by_key[k] for k in plan.gx_batched])
    measured = _measure_file(path, rules, plan, batch_rows, (runner, batched))

    # GX on a zero-row frame with the file's schema: the ordered column list, and the expectations GX
    # evaluates batch by batch (so each has been through GX even for a 0-row file). The vectorised
    # ones go through GX on the head slice below, which has the same schema.
    columns_expectation = by_key[(COLUMNS_MATCH_ORDERED_LIST, None)]
    counts = runner.validate(_to_pandas(schema.empty_table()), gx.ExpectationSuite(
        name=f"{_GX_NAME}.schema", expectations=[columns_expectation, *(by_key[k] for k in plan.gx_batched)]))
    for key, batch_counts in measured.gx_counts.items():
        if key in counts:
            counts[key].add(batch_counts)
        else:
            counts[key] = batch_counts

    # Cross-check: real GX on the head of the file (bounded) must count what the metrics counted.
    cross: dict[_Key, _Counts] = {}
    metric_fed = [by_key[k] for k in [*plan.vectorised, *plan.file_wide]]
    if metric_fed:
        cross = runner.validate(_to_pandas(measured.head_table), gx.ExpectationSuite(
            name=f"{_GX_NAME}.head", expectations=metric_fed))
    return _summary(rules, suite, schema, total_rows, plan, counts, measured.totals, measured.head,
                    measured.raised, cross)


def _measure(metric: Metric, values: Any, head_values: Any) -> tuple[Any, Any]:
    return metric(values), (None if head_values is None else metric(head_values))


def _feed(counter: _DuplicateCounter, head_counter: _DuplicateCounter, values: Any,
          head_values: Any) -> tuple[None, None]:
    counter.add(values)
    if head_values is not None:
        head_counter.add(head_values)
    return None, None


def _agrees(gx_counts: _Counts | None, counts: Any) -> bool:
    """GX's counts on the head slice equal the vectorised ones on the same rows."""
    return (gx_counts is not None and not gx_counts.errored and gx_counts.unexpected == counts.unexpected
            and gx_counts.missing in (None, counts.nulls))


def _decide(expectation: Any, total_rows: int, counts: Any) -> bool | None:
    """The map expectation's own decision (GX's ``_validate``) on the whole-file metrics.

    None when GX's result does not echo the metrics it was given (a renamed metric key after a GX
    upgrade would otherwise read as "no metric" and pass vacuously).
    """
    metric = expectation.map_metric
    result = expectation._validate(
        metrics={"table.row_count": total_rows, "column_values.nonnull.unexpected_count": counts.nulls,
                 f"{metric}.unexpected_count": counts.unexpected, f"{metric}.unexpected_values": []},
        runtime_configuration={"result_format": _RESULT_FORMAT})
    body = result.get("result") or {}
    echoed = (body.get("element_count") == total_rows and body.get("unexpected_count") == counts.unexpected
              and body.get("missing_count", counts.nulls) == counts.nulls)
    return bool(result["success"]) if echoed else None


def _summary(rules: DatasetRules, suite: Any, schema: Any, total_rows: int, plan: _Plan,
             counts: dict[_Key, _Counts], totals: dict[_Key, Any], head: dict[_Key, Any], raised: set[_Key],
             cross: dict[_Key, _Counts]) -> ValidationSummary:
    outcomes: list[ExpectationOutcome] = []
    metric_fed = {*plan.vectorised, *plan.file_wide}
    for expectation in suite.expectations:
        kind, column = _key(expectation)
        key = (kind, column)
        config = expectation.configuration
        if kind in (ROW_COUNT_BETWEEN, ROW_COUNT_EQUAL):
            result = expectation._validate(metrics={"table.row_count": total_rows})
            outcomes.append(ExpectationOutcome(kind, None, bool(result["success"]), None, str(total_rows), config))
        elif kind == ARROW_TYPES:
            observed = [[f.name, str(f.type)] for f in schema]
            result = expectation._validate(metrics={"table.arrow_types": observed})
            outcomes.append(ExpectationOutcome(kind, None, bool(result["success"]), None,
                                               str(result["result"]["observed_value"]), config))
        elif key in plan.not_evaluated:
            outcomes.append(ExpectationOutcome(kind, column, False, None, plan.not_evaluated[key], config))
        elif key in metric_fed:
            outcomes.append(_metric_fed_outcome(expectation, total_rows, totals[key], head[key], key in raised,
                                                cross.get(key)))
        elif key not in counts:
            outcomes.append(ExpectationOutcome(kind, column, False, None, OBSERVED_EVALUATION_ERROR, config))
        else:
            c = counts[key]
            if kind == COLUMNS_MATCH_ORDERED_LIST:
                outcomes.append(ExpectationOutcome(kind, None, c.success and not c.errored, None,
                                                   c.observed, config))
            elif c.errored:
                outcomes.append(ExpectationOutcome(kind, column, False, None, OBSERVED_EVALUATION_ERROR, config))
            else:
                outcomes.append(ExpectationOutcome(kind, column, c.success, c.unexpected, None, config))
    return ValidationSummary(dataset=rules.dataset, success=all(o.success for o in outcomes),
                             rows=total_rows, expectations=tuple(outcomes))


def _metric_fed_outcome(expectation: Any, total_rows: int, total: Any, head: Any, raised: bool,
                        cross: _Counts | None) -> ExpectationOutcome:
    """Outcome of a column expectation decided on gate-computed metrics, after the head cross-check."""
    kind, column = _key(expectation)
    config = expectation.configuration
    not_evaluated = None
    if raised:
        not_evaluated = OBSERVED_METRIC_ERROR
    elif cross is None or cross.errored:
        not_evaluated = OBSERVED_EVALUATION_ERROR
    elif not _agrees(cross, head):
        not_evaluated = OBSERVED_METRIC_DISAGREES
    else:
        try:
            success = _decide(expectation, total_rows, total)
        except Exception:  # value-free inputs, but keep the pattern: no message
            success, not_evaluated = None, OBSERVED_EVALUATION_ERROR
        if success is None:
            not_evaluated = not_evaluated or OBSERVED_METRIC_DISAGREES
    if not_evaluated is not None:
        return ExpectationOutcome(kind, column, False, None, not_evaluated, config)
    return ExpectationOutcome(kind, column, success, total.unexpected, None, config)


# ---------------------------------------------------------------------- whole-file, bounded memory

_PARTITION_ROWS = 2_000_000  # values held at once by a uniqueness or reference check (about 100 MB)


def _partition_count(rows: int) -> int:
    parts = 1
    while parts * _PARTITION_ROWS < rows:
        parts *= 2
    return parts


def _keys(values: Any) -> tuple[int, Any]:
    """(GX null count, the other values as strings): what uniqueness and references compare."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from validation.metrics import null_mask

    nulls = null_mask(values)
    null_count = int(pc.sum(nulls).as_py() or 0)
    if pa.types.is_floating(values.type):
        values = pc.add(values, 0.0)  # -0.0 → 0.0: pandas' duplicated() takes them as equal
    if null_count:
        values = pc.filter(values, pc.invert(nulls))
    return null_count, pc.cast(values, pa.string())


_MIX = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 0xD6E8FEB86659FD93)


def _words(keys: Any) -> tuple[Any, Any, Any, Any]:
    """(byte lengths, first, middle and last 8 bytes of each string as uint64; bytes outside a value are 0)."""
    import numpy as np

    n = len(keys)
    buffers = keys.buffers()
    offsets = np.frombuffer(buffers[1], dtype=np.int32, count=n + 1, offset=keys.offset * 4).astype(np.int64)
    starts, ends = offsets[:-1], offsets[1:]
    lengths = ends - starts
    data = np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] is not None and buffers[2].size else None
    if data is None or not n or not lengths.any():
        zero = np.zeros(n, dtype=np.uint64)
        return lengths.astype(np.uint64), zero, zero, zero
    width = int(lengths[0])
    if width >= 8 and (lengths == width).all():  # fixed width (pseudonyms): plain slices, no gather
        block = data[starts[0]:starts[0] + n * width].reshape(n, width)
        middle = width // 2 - 4
        return (lengths.astype(np.uint64), np.ascontiguousarray(block[:, :8]).view("<u8").ravel(),
                np.ascontiguousarray(block[:, middle:middle + 8]).view("<u8").ravel(),
                np.ascontiguousarray(block[:, width - 8:]).view("<u8").ravel())

    def word(at: Any) -> Any:
        index = at[:, None] + np.arange(8)
        inside = (index >= starts[:, None]) & (index < ends[:, None])
        picked = np.where(inside, data[np.clip(index, 0, len(data) - 1)], 0).astype(np.uint8)
        return np.ascontiguousarray(picked).view("<u8").ravel()

    return lengths.astype(np.uint64), word(starts), word(starts + lengths // 2 - 4), word(ends - 8)


def _hash64(keys: Any) -> Any:
    """A 64-bit hash of each string (its length and first, middle and last 8 bytes; whole up to 24 bytes).

    Equal strings hash equal; the hash only picks partitions and duplicate candidates, which are then
    compared exactly, so a weak spot costs time, never correctness.
    """
    import numpy as np

    lengths, first, middle, last = _words(keys)
    k1, k2, k3, k4 = (np.uint64(m) for m in _MIX)
    with np.errstate(over="ignore"):
        h = lengths * k1
        h ^= first * k2
        h = (h << np.uint64(29)) | (h >> np.uint64(35))
        h ^= middle * k3
        h = (h << np.uint64(31)) | (h >> np.uint64(33))
        h ^= last * k4
        h ^= h >> np.uint64(30)  # splitmix64's finaliser: every input bit reaches the top bits
        h *= k2
        h ^= h >> np.uint64(27)
        h *= k3
        h ^= h >> np.uint64(31)
    return h


def _partition_ids(hashes: Any, parts: int) -> Any:
    import numpy as np

    if parts == 1:
        return np.zeros(len(hashes), dtype=np.int64)
    return (hashes >> np.uint64(65 - parts.bit_length())).astype(np.int64)  # the top log2(parts) bits


class _Partitioned:
    """String values (and their hashes) fed batch by batch, split by hash into ``parts`` partitions.

    One partition is held in memory; more are spilled to Arrow IPC files in a private (0700) folder
    next to the staged file (it holds masked values, like the file) and removed on close.
    """

    def __init__(self, parts: int, spill_parent: Path) -> None:
        self.parts = parts
        self._spill_parent = spill_parent
        self._held: list[Any] = []
        self._folder: Path | None = None
        self._writers: list[Any] = []

    def __enter__(self) -> _Partitioned:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add_keys(self, keys: Any) -> None:
        """Add string values (no nulls)."""
        import numpy as np
        import pyarrow as pa

        if not len(keys):
            return
        hashes = _hash64(keys)
        batch = pa.record_batch([keys, pa.array(hashes)], names=["value", "hash"])
        if self.parts == 1:
            self._held.append(batch)
            return
        if not self._writers:
            self._open(batch.schema)
        ids = _partition_ids(hashes, self.parts)
        order = np.argsort(ids, kind="stable")
        bounds = np.searchsorted(ids[order], np.arange(self.parts + 1))
        ordered = batch.take(pa.array(order))
        for part, writer in enumerate(self._writers):
            if bounds[part + 1] > bounds[part]:
                writer.write_batch(ordered.slice(bounds[part], bounds[part + 1] - bounds[part]))

    def chunks(self, part: int) -> Iterator[Any]:
        """The (value, hash) record batches of one partition, in the order they were added."""
        import pyarrow as pa

        if self.parts == 1:
            yield from self._held
            return
        if not self._writers:
            return
        self._writers[part].close()
        with pa.memory_map(str(self._folder / f"{part}.arrow")) as source:
            yield from pa.ipc.open_stream(source)

    def partition(self, part: int) -> Any:
        """One partition as a table (value, hash)."""
        import pyarrow as pa

        schema = pa.schema([("value", pa.string()), ("hash", pa.uint64())])
        return pa.Table.from_batches(list(self.chunks(part)), schema=schema)

    def _open(self, schema: Any) -> None:
        import pyarrow as pa

        self._folder = Path(tempfile.mkdtemp(prefix=".gate-spill-", dir=self._spill_parent))
        for part in range(self.parts):
            self._writers.append(pa.ipc.new_stream(pa.OSFile(str(self._folder / f"{part}.arrow"), "wb"), schema))

    def close(self) -> None:
        for writer in self._writers:
            with contextlib.suppress(Exception):
                writer.close()
        self._writers = []
        self._held = []
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None


class _DuplicateCounter(_Partitioned):
    """(null count, rows whose value occurs more than once) over arrays fed one by one."""

    def __init__(self, rows: int, spill_parent: Path) -> None:
        super().__init__(_partition_count(rows), spill_parent)
        self.nulls = 0

    def __enter__(self) -> _DuplicateCounter:
        return self

    def add(self, values: Any) -> None:
        nulls, keys = _keys(values)
        self.nulls += nulls
        self.add_keys(keys)

    def result(self) -> tuple[int, int]:
        return self.nulls, sum(_duplicated(self.partition(part)) for part in range(self.parts))


def _duplicated(table: Any) -> int:
    """Rows whose value occurs more than once: rows sharing a hash are candidates, compared exactly."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if table.num_rows < 2:
        return 0
    hashes = table.column("hash").to_numpy()
    ordered = np.sort(hashes)
    repeated = ordered[1:][ordered[1:] == ordered[:-1]]
    if not len(repeated):
        return 0
    candidates = np.flatnonzero(np.isin(hashes, np.unique(repeated)))
    values = table.column("value").take(pa.array(candidates))
    counts = pc.value_counts(values).field("counts")
    return int(pc.sum(pc.filter(counts, pc.greater(counts, 1))).as_py() or 0)


def _column_batches(path: Path, column: str, batch_rows: int) -> Iterator[Any]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path, pre_buffer=False, buffer_size=_READ_BUFFER_BYTES)
    try:
        for batch in parquet.iter_batches(batch_size=batch_rows, columns=[column], use_pandas_metadata=False):
            yield batch.column(0)
    finally:
        parquet.close()


def duplicate_rows(path: Path, column: str, *, batch_rows: int = 250_000) -> tuple[int, int]:
    """(null count, rows whose value occurs more than once) of one column, in one pass and bounded memory."""
    import pyarrow.parquet as pq

    path = Path(path)
    rows = int(pq.ParquetFile(path).metadata.num_rows)
    with _DuplicateCounter(rows, path.parent) as counter:
        for values in _column_batches(path, column, batch_rows):
            counter.add(values)
        return counter.result()


def missing_references(child: Path, child_column: str, parent: Path, parent_column: str, *,
                       batch_rows: int = 250_000) -> tuple[int, int, int]:
    """(child rows, child nulls, non-null child values absent from the parent column), bounded memory.

    One pass over each file: the parent's keys and the child's values are split by the same hash, then
    compared partition by partition (one ``is_in`` per partition: it hashes its value set on every call).
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    child, parent = Path(child), Path(parent)
    rows = int(pq.ParquetFile(child).metadata.num_rows)
    parent_rows = int(pq.ParquetFile(parent).metadata.num_rows)
    parts = _partition_count(rows + parent_rows)  # both sides of a partition are held at once
    nulls = 0
    missing = 0
    with _Partitioned(parts, parent.parent) as keys, _Partitioned(parts, child.parent) as values:
        for batch in _column_batches(parent, parent_column, batch_rows):
            keys.add_keys(_keys(batch)[1])
        for batch in _column_batches(child, child_column, batch_rows):
            batch_nulls, batch_keys = _keys(batch)
            nulls += batch_nulls
            values.add_keys(batch_keys)
        for part in range(parts):
            wanted = values.partition(part).column("value")
            if len(wanted):
                missing += _absent(wanted, pc.unique(keys.partition(part).column("value")))
    return rows, nulls, missing


def _absent(values: Any, key_set: Any) -> int:
    import pyarrow.compute as pc

    return int(pc.sum(pc.invert(pc.is_in(values, value_set=key_set))).as_py() or 0)


def _to_pandas(data: Any) -> pd.DataFrame:
    # ignore_metadata: judge the physical columns (a stored pandas index stays a column).
    return data.to_pandas(ignore_metadata=True)
