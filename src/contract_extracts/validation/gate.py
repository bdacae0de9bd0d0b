"""The delivery gate: a Great Expectations suite derived from the contract must pass on the staged file.

Security rule: data values never reach logs, exceptions or the returned summary. GX results carry
values (``partial_unexpected_list``, ``unexpected_list``, exception messages, ...); this module reads
only the expectation type, column, success flag and counts from them. The only "observed" facts kept
are value-free table facts: the row count and the list of column *names*.

Memory is bounded by ``batch_rows``, not by the file size:

* column-level expectations (pseudonym format, not-null) run through GX on each Arrow record batch
  (only the columns they need are read) and their unexpected counts are summed across batches;
* ``expect_table_columns_to_match_ordered_list`` runs through GX once, on a zero-row DataFrame
  built from the file's Parquet schema (the column names a batch would have, at no cost; this also
  covers files with 0 rows);
* ``expect_table_row_count_to_be_between`` is decided by the GX expectation object's own
  ``_validate`` on the ``table.row_count`` metric taken from the Parquet footer. Feeding GX a
  DataFrame of N rows instead would cost O(N) memory: even a column-less frame is hashed row by row
  for GX's batch fingerprint. ``_validate`` is GX's decision function for that expectation (the
  same code a normal validation calls once the metric is resolved); a test pins its behaviour
  against a full GX validation so an upgrade that changes it fails loudly rather than silently.

The release gate (``validate_delivery``) adds, for every dataset of a delivery:

* the exact Arrow types, in order (``expect_table_arrow_types_to_equal``, decided on the footer's
  schema) and the exact row count recorded by the extract (``expect_table_row_count_to_equal``);
* domains of generalised values (years in a plausible range, band starts, labels, postcode levels)
  and multiples of a rounding base, run through GX batch by batch like the format checks;
* **no leakage**: a GX map expectation searches every string column for raw source identifiers
  (``leakage``: drawn from the source at run time, held only in memory, referred to by a token);
* uniqueness of entity keys over the *whole* file (``expect_column_values_to_be_unique``, decided by
  GX's map-expectation logic on a duplicate count taken in hash partitions of the pseudonym, so
  memory stays bounded), and referential integrity between datasets (same partitioning);
* the disclosure threshold, re-measured on the staged file; the sample matching the contract;
  aggregate tables with no cell recoverable from a single row or column equation.

Metric-fed expectations are decided by the expectation object's own ``_validate`` on the metric the
gate computed, exactly like the row count above. Every outcome keeps its GX configuration
(value-free kwargs) so the operator's Data Docs report (``docs``) can be rendered from the outcomes
alone: it never sees a GX result that could hold values.

Great Expectations is imported lazily (it takes seconds) and never at module import time; this
module never imports Airflow.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

from contract_extracts.core.errors import (
    ConfigError,
    ContractExtractsError,
    StageFailed,
    ValidationFailed,
)

if TYPE_CHECKING:
    import great_expectations
    import pandas as pd

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


def _table_expectations(gx: ModuleType, rules: DatasetRules) -> list[Any]:
    out = [
        gx.expectations.ExpectTableColumnsToMatchOrderedList(column_list=[c.name for c in rules.columns]),
        gx.expectations.ExpectTableRowCountToBeBetween(min_value=rules.min_rows, max_value=rules.max_rows),
    ]
    if rules.expected_rows is not None:
        out.append(gx.expectations.ExpectTableRowCountToEqual(value=rules.expected_rows))
    if rules.typed:
        from contract_extracts.validation.expectations import ExpectTableArrowTypesToEqual

        out.append(ExpectTableArrowTypesToEqual(types=[[c.name, c.type or "?"] for c in rules.columns]))
    return out


def _domain_expectation(gx: ModuleType, column: str, domain: Domain) -> Any:
    if domain.kind == "between":
        return gx.expectations.ExpectColumnValuesToBeBetween(column=column, min_value=domain.min_value,
                                                            max_value=domain.max_value)
    if domain.kind == "in_set":
        return gx.expectations.ExpectColumnValuesToBeInSet(column=column, value_set=list(domain.values))
    if domain.kind == "regex":
        return gx.expectations.ExpectColumnValuesToMatchRegex(column=column, regex=domain.regex)
    from contract_extracts.validation.expectations import ExpectColumnValuesToBeMultiplesOf

    return ExpectColumnValuesToBeMultiplesOf(column=column, base=domain.base)


def _column_expectations(gx: ModuleType, rule: ColumnRule, leak_token: str | None = None) -> list[Any]:
    out: list[Any] = []
    if rule.pseudonym:
        out.append(gx.expectations.ExpectColumnValuesToMatchRegex(column=rule.name, regex=PSEUDONYM_REGEX))
        # GX matches with str.contains, where "$" also matches before a trailing newline, so
        # "<32 hex>\n" would pass the regex alone; the length check closes that gap.
        out.append(gx.expectations.ExpectColumnValueLengthsToEqual(column=rule.name, value=PSEUDONYM_LENGTH))
    if rule.not_null:
        out.append(gx.expectations.ExpectColumnValuesToNotBeNull(column=rule.name))
    if rule.unique:
        out.append(gx.expectations.ExpectColumnValuesToBeUnique(column=rule.name))
    for domain in rule.domains:
        out.append(_domain_expectation(gx, rule.name, domain))
    if rule.leak is not None and leak_token is not None:
        from contract_extracts.validation.expectations import ExpectColumnValuesToNotContainSourceIdentifiers

        out.append(ExpectColumnValuesToNotContainSourceIdentifiers(
            column=rule.name, identifier_set=leak_token, substring=rule.leak == "substring"))
    return out


def build_suite(rules: DatasetRules, *, leak_token: str | None = None) -> great_expectations.ExpectationSuite:
    """The GX suite derived from the rules (table-level expectations first, then per column)."""
    gx = _import_gx()
    expectations = _table_expectations(gx, rules)
    for rule in rules.columns:
        expectations.extend(_column_expectations(gx, rule, leak_token))
    return gx.ExpectationSuite(name=f"{_GX_NAME}.{rules.dataset}", expectations=expectations)


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
                out[key] = _Counts(success=False, unexpected=None, errored=True, observed=None)
                continue
            body = res.result or {}
            unexpected = body.get("unexpected_count")
            observed = body.get("observed_value") if key[0] == COLUMNS_MATCH_ORDERED_LIST else None
            out[key] = _Counts(
                success=bool(res.success),
                unexpected=int(unexpected) if unexpected is not None else None,
                errored=False,
                observed=json.dumps([str(n) for n in observed]) if observed is not None else None,
            )
        return out


@dataclass
class _Counts:
    success: bool
    unexpected: int | None
    errored: bool
    observed: str | None  # value-free only (column names)

    def add(self, other: _Counts) -> None:
        self.success = self.success and other.success
        self.errored = self.errored or other.errored
        if self.errored or other.unexpected is None or self.unexpected is None:
            self.unexpected = None
        else:
            self.unexpected += other.unexpected


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


def _validate(path: Path, rules: DatasetRules, batch_rows: int, leak_token: str | None = None) -> ValidationSummary:
    import pyarrow.parquet as pq

    gx = _import_gx()
    suite = build_suite(rules, leak_token=leak_token)
    by_key = {_key(e): e for e in suite.expectations}
    columns_expectation = by_key[(COLUMNS_MATCH_ORDERED_LIST, None)]

    # pre_buffer=False + a read buffer: pyarrow's default pre-buffering caches every column chunk
    # read so far until the reader closes, i.e. memory grows with the file (measured).
    parquet = pq.ParquetFile(path, pre_buffer=False, buffer_size=_READ_BUFFER_BYTES)
    try:
        schema = parquet.schema_arrow
        total_rows = int(parquet.metadata.num_rows)
        file_names = list(schema.names)

        # Column expectations GX can evaluate: the column is in the file exactly once.
        evaluable: list[Any] = []
        file_wide: list[Any] = []
        not_evaluated: dict[tuple[str, str | None], str] = {}
        for expectation in suite.expectations:
            kind, column = _key(expectation)
            if kind in _TABLE_LEVEL:
                continue
            if file_names.count(column) == 1:
                (file_wide if kind in _FILE_WIDE else evaluable).append(expectation)
            elif column in file_names:
                not_evaluated[(kind, column)] = OBSERVED_COLUMN_DUPLICATED
            else:
                not_evaluated[(kind, column)] = OBSERVED_COLUMN_MISSING
        read_columns = [c.name for c in rules.columns
                        if any(_key(e)[1] == c.name for e in evaluable)]

        runner = _GxRunner(gx)
        # First GX run: the ordered column list (and every evaluable column expectation, so each is
        # run through GX even for a 0-row file) on a zero-row frame with the file's schema.
        first_suite = gx.ExpectationSuite(name=f"{_GX_NAME}.schema",
                                          expectations=[columns_expectation, *evaluable])
        counts = runner.validate(_to_pandas(schema.empty_table()), first_suite)

        # Column expectations, batch by batch, summing counts.
        batch_suite = gx.ExpectationSuite(name=f"{_GX_NAME}.batches", expectations=evaluable)
        seen_rows = 0
        if evaluable and total_rows:
            for batch in parquet.iter_batches(batch_size=batch_rows, columns=read_columns,
                                              use_pandas_metadata=False):
                seen_rows += batch.num_rows
                for key, batch_counts in runner.validate(_to_pandas(batch), batch_suite).items():
                    if key in counts:
                        counts[key].add(batch_counts)
                    else:
                        counts[key] = batch_counts
            if seen_rows != total_rows:
                raise StageFailed(f"{path.name}: read {seen_rows} rows but the Parquet footer says "
                                  f"{total_rows}")
    finally:
        parquet.close()

    # Whole-file decisions by the GX expectations' own logic on metrics the gate computed.
    decided: dict[tuple[str, str | None], ExpectationOutcome] = {}
    for expectation in suite.expectations:
        kind, column = _key(expectation)
        config = expectation.configuration
        if kind in (ROW_COUNT_BETWEEN, ROW_COUNT_EQUAL):
            result = expectation._validate(metrics={"table.row_count": total_rows})
            decided[(kind, None)] = ExpectationOutcome(kind, None, bool(result["success"]), None,
                                                       str(total_rows), config)
        elif kind == ARROW_TYPES:
            observed = [[f.name, str(f.type)] for f in schema]
            result = expectation._validate(metrics={"table.arrow_types": observed})
            decided[(kind, None)] = ExpectationOutcome(kind, None, bool(result["success"]), None,
                                                       str(result["result"]["observed_value"]), config)
        elif kind == VALUES_UNIQUE and expectation in file_wide:
            nulls, duplicated = duplicate_rows(path, column, batch_rows=batch_rows)
            result = expectation._validate(
                metrics={"table.row_count": total_rows, "column_values.nonnull.unexpected_count": nulls,
                         "column_values.unique.unexpected_count": duplicated,
                         "column_values.unique.unexpected_values": []},
                runtime_configuration={"result_format": _RESULT_FORMAT})
            decided[(kind, column)] = ExpectationOutcome(kind, column, bool(result["success"]), duplicated, None,
                                                         config)

    outcomes: list[ExpectationOutcome] = []
    for expectation in suite.expectations:
        kind, column = _key(expectation)
        config = expectation.configuration
        if (kind, column) in decided:
            outcomes.append(decided[(kind, column)])
        elif (kind, column) in not_evaluated:
            outcomes.append(ExpectationOutcome(kind, column, False, None, not_evaluated[(kind, column)], config))
        elif (kind, column) not in counts:
            outcomes.append(ExpectationOutcome(kind, column, False, None, OBSERVED_EVALUATION_ERROR, config))
        else:
            c = counts[(kind, column)]
            if kind == COLUMNS_MATCH_ORDERED_LIST:
                outcomes.append(ExpectationOutcome(kind, None, c.success and not c.errored, None,
                                                   c.observed, config))
            elif c.errored:
                outcomes.append(ExpectationOutcome(kind, column, False, None, OBSERVED_EVALUATION_ERROR, config))
            else:
                outcomes.append(ExpectationOutcome(kind, column, c.success, c.unexpected, None, config))
    return ValidationSummary(dataset=rules.dataset, success=all(o.success for o in outcomes),
                             rows=total_rows, expectations=tuple(outcomes))


# ---------------------------------------------------------------------- whole-file, bounded memory

_PARTITION_ROWS = 2_000_000  # values held at once by a uniqueness or reference check (about 100 MB)
_HEX = "0123456789abcdef"


def _prefixes(rows: int) -> list[str | None]:
    """Hash partitions by the pseudonym's leading hex digits; None: values not starting with them."""
    if rows <= _PARTITION_ROWS:
        return [""]
    width = 1 if rows <= 16 * _PARTITION_ROWS else 2
    return [*("".join(p) for p in itertools.product(_HEX, repeat=width)), None]


def _partition(values: Any, prefix: str | None, width: int) -> Any:
    import pyarrow.compute as pc

    if prefix == "":
        return pc.drop_null(values)
    if prefix is None:
        keep = pc.invert(pc.match_substring_regex(values, pattern=f"^[0-9a-f]{{{width}}}"))
    else:
        keep = pc.starts_with(values, pattern=prefix)
    return pc.filter(values, pc.fill_null(keep, False))


def _column_batches(path: Path, column: str, batch_rows: int) -> Iterator[Any]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path, pre_buffer=False, buffer_size=_READ_BUFFER_BYTES)
    try:
        for batch in parquet.iter_batches(batch_size=batch_rows, columns=[column], use_pandas_metadata=False):
            yield batch.column(0)
    finally:
        parquet.close()


def duplicate_rows(path: Path, column: str, *, batch_rows: int = 250_000) -> tuple[int, int]:
    """(null count, rows whose value occurs more than once) of one text column, in bounded memory."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    rows = int(pq.ParquetFile(path).metadata.num_rows)
    nulls = 0
    duplicated = 0
    prefixes = _prefixes(rows)
    width = max(len(p or "") for p in prefixes)
    for i, prefix in enumerate(prefixes):
        parts = []
        for values in _column_batches(path, column, batch_rows):
            if i == 0:
                nulls += values.null_count
            parts.append(_partition(pc.cast(values, pa.string()), prefix, width))
        if not parts:
            continue
        counts = pc.value_counts(pa.concat_arrays(parts)).field("counts")
        duplicated += int(pc.sum(pc.filter(counts, pc.greater(counts, 1))).as_py() or 0)
    return nulls, duplicated


def missing_references(child: Path, child_column: str, parent: Path, parent_column: str, *,
                       batch_rows: int = 250_000) -> tuple[int, int, int]:
    """(child rows, child nulls, non-null child values absent from the parent column), bounded memory."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    rows = int(pq.ParquetFile(child).metadata.num_rows)
    parent_rows = int(pq.ParquetFile(parent).metadata.num_rows)
    nulls = 0
    missing = 0
    prefixes = _prefixes(max(rows, parent_rows))
    width = max(len(p or "") for p in prefixes)
    for i, prefix in enumerate(prefixes):
        keys = [_partition(pc.cast(v, pa.string()), prefix, width)
                for v in _column_batches(parent, parent_column, batch_rows)]
        key_set = pc.unique(pa.concat_arrays(keys)) if keys else pa.array([], pa.string())
        for values in _column_batches(child, child_column, batch_rows):
            if i == 0:
                nulls += values.null_count
            part = _partition(pc.cast(values, pa.string()), prefix, width)
            missing += int(pc.sum(pc.invert(pc.is_in(part, value_set=key_set))).as_py() or 0)
    return rows, nulls, missing


def _to_pandas(data: Any) -> pd.DataFrame:
    # ignore_metadata: judge the physical columns (a stored pandas index stays a column).
    return data.to_pandas(ignore_metadata=True)
