"""One staged Parquet file against its rules: a Great Expectations suite derived from the contract must pass.

Security rule: data values never reach logs, exceptions or the returned summary. GX results carry
values; only the expectation type, column, success flag and counts are read from them (``gx_adapter``),
and only the *type name* of any foreign exception is kept (pyarrow's messages quote values too). The
only "observed" facts kept are value-free table facts (the row count, the list of column *names*) or
fixed markers (``model``).

**GX decides, the gate counts.** Every expectation is a GX expectation object built from the rules
(``suite_specs`` as data, ``build_suite`` as GX objects), and every outcome is GX's decision: either a
real GX validation, or the expectation's own decision (``gx_adapter.decide``) fed with metrics the gate
computed. Memory is bounded by ``batch_rows`` (and the partition size of ``hash_partitions``), not by
the file size:

* ``expect_table_columns_to_match_ordered_list`` runs through GX once, on a zero-row DataFrame built
  from the file's Parquet schema (this also covers files with 0 rows), together with any column
  expectation that has no vectorised metric (below);
* ``expect_table_row_count_to_be_between`` / ``_to_equal`` are decided on the ``table.row_count``
  taken from the Parquet footer (a DataFrame of N rows would cost O(N) memory just for GX's batch
  fingerprint); the Arrow types likewise on the footer's schema;
* **column expectations** (pseudonym regex and length, not-null, between, in-set, regex domains,
  multiples of a base, the leak check) have their metrics computed by ``metrics``: vectorised
  ``pyarrow.compute`` on each Arrow record batch read straight from Parquet (only the columns needed,
  no pandas), reproducing GX's pandas semantics exactly. The counts are summed across batches and
  handed to the expectation's decision (``gx_adapter.decide_on_map_metrics``), whose result must echo
  them back, or the expectation fails closed. A (kind, column type) with no exact vectorised metric
  (``\\d`` in a regex, a uint64 or boolean column, ...) is evaluated by real GX on pandas batches instead;
* ``expect_column_values_to_be_unique`` is decided the same way on a duplicate count taken over the
  *whole* file in the same pass (``hash_partitions.DuplicateCounter``).

**Cross-check.** So the vectorised metrics cannot drift from GX silently, real GX validates the first
``_HEAD_ROWS`` rows of the file (a constant, whatever the file size) with every metric-fed column
expectation, and its unexpected and missing counts must equal the vectorised counts on the same rows.
Any disagreement fails that expectation closed with the value-free marker
``OBSERVED_METRIC_DISAGREES``. A vectorised metric that raises fails its expectation with
``OBSERVED_METRIC_ERROR`` (no message kept); an error inside GX gives ``OBSERVED_EVALUATION_ERROR``.

Every outcome keeps its GX configuration (value-free kwargs) so the operator's Data Docs report
(``operator_report``) can be rendered from the outcomes alone: it never sees a GX result that could
hold values. Great Expectations is imported on first use, never at module import time (importing it
in a background thread while the file is measured was tried and measured: the import holds the GIL and
the pass only slowed down); this module never imports Airflow.
"""

from __future__ import annotations

import contextlib
import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from core.errors import ConfigError, ContractExtractsError, StageFailed, value_free
from validation import gx_adapter, metrics
from validation.gx_adapter import ExpectationKey, GxCounts, GxRunner, decide, decide_on_map_metrics, expectation_key
from validation.hash_partitions import READ_BUFFER_BYTES, DuplicateCounter
from validation.metrics import Counts, Metric
from validation.model import (
    ARROW_TYPES,
    COLUMNS_MATCH_ORDERED_LIST,
    MULTIPLES_OF,
    NOT_SOURCE_IDENTIFIER,
    OBSERVED_COLUMN_DUPLICATED,
    OBSERVED_COLUMN_MISSING,
    OBSERVED_EVALUATION_ERROR,
    OBSERVED_METRIC_DISAGREES,
    OBSERVED_METRIC_ERROR,
    PSEUDONYM_LENGTH,
    PSEUDONYM_REGEX,
    ROW_COUNT_BETWEEN,
    ROW_COUNT_EQUAL,
    VALUE_LENGTHS_EQUAL,
    VALUES_BETWEEN,
    VALUES_IN_SET,
    VALUES_MATCH_REGEX,
    VALUES_NOT_NULL,
    VALUES_UNIQUE,
    DatasetRules,
    Domain,
    ExpectationOutcome,
    ValidationSummary,
)

if TYPE_CHECKING:
    from great_expectations.core.expectation_suite import ExpectationSuite
    from great_expectations.expectations.expectation import Expectation

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------ suite as data

Spec = tuple[str, dict[str, Any]]  # (expectation type, configuration kwargs): what a GX expectation is built from


def domain_spec(column: str, domain: Domain) -> Spec:
    """The column expectation of one domain."""
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
        specs.extend(domain_spec(rule.name, domain) for domain in rule.domains)
        if rule.leak is not None and leak_token is not None:
            specs.append((NOT_SOURCE_IDENTIFIER, {"column": rule.name, "identifier_set": leak_token,
                                                  "substring": rule.leak == "substring"}))
    return specs


def build_suite(rules: DatasetRules, *, leak_token: str | None = None) -> ExpectationSuite:
    """The GX suite derived from the rules (table-level expectations first, then per column)."""
    return gx_adapter.suite_from_specs(rules.dataset, suite_specs(rules, leak_token=leak_token))


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
        failure = value_free(exc)
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

_BatchJob = Future[tuple[Counts | None, Counts | None]]  # (counts on the batch, counts on its head part)


@dataclass
class _Plan:
    """How each column expectation is evaluated on this file (keyed by expectation type and column)."""

    vectorised: dict[ExpectationKey, Metric] = field(default_factory=dict)  # metric computed here
    gx_batched: list[ExpectationKey] = field(default_factory=list)  # no exact vectorised metric: GX on every batch
    file_wide: list[ExpectationKey] = field(default_factory=list)  # uniqueness over the whole file
    not_evaluated: dict[ExpectationKey, str] = field(default_factory=dict)  # column missing or duplicated

    def columns(self, rules: DatasetRules) -> list[str]:
        used = {key[1] for key in [*self.vectorised, *self.gx_batched, *self.file_wide]}
        return [c.name for c in rules.columns if c.name in used]


def _plan(entries: list[Spec], schema: Any) -> _Plan:
    """Plan the column expectations ``(type, configuration kwargs)`` against the file's schema."""
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
            metric = metrics.column_metric(kind, dict(kwargs), schema.field(column).type)
            if metric is None:
                plan.gx_batched.append(key)
            else:
                plan.vectorised[key] = metric
    return plan


@dataclass
class _Measured:
    """What one pass over the file measured."""

    totals: dict[ExpectationKey, Counts]  # whole-file counts of metric-fed expectations
    head: dict[ExpectationKey, Counts]  # the same on the head slice
    raised: set[ExpectationKey]  # a metric raised: not evaluated (the message is dropped)
    head_table: Any  # the head slice (at most _HEAD_ROWS rows), for GX's cross-check
    gx_counts: dict[ExpectationKey, GxCounts]  # GX's own counts of the batched expectations


def _measure_file(path: Path, rules: DatasetRules, plan: _Plan, batch_rows: int, runner: GxRunner,
                  gx_batched: ExpectationSuite) -> _Measured:
    """One pass over the file computing every planned metric; memory bounded by two batches.

    ``runner`` runs ``gx_batched``, the expectations GX evaluates itself, on every batch.
    """
    # pre_buffer=False + a read buffer: pyarrow's default pre-buffering caches every column chunk
    # read so far until the reader closes, i.e. memory grows with the file (measured).
    parquet = pq.ParquetFile(path, pre_buffer=False, buffer_size=READ_BUFFER_BYTES)
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(parquet.close)
        schema = parquet.schema_arrow
        total_rows = int(parquet.metadata.num_rows)
        read_columns = plan.columns(rules)
        totals = {key: Counts() for key in plan.vectorised}
        head = {key: Counts() for key in plan.vectorised}
        raised: set[ExpectationKey] = set()
        gx_counts: dict[ExpectationKey, GxCounts] = {}
        spill = path.parent
        duplicates = {key: cleanup.enter_context(DuplicateCounter(total_rows, spill)) for key in plan.file_wide}
        head_duplicates = {key: cleanup.enter_context(DuplicateCounter(_HEAD_ROWS, spill)) for key in duplicates}
        gx_columns = [c for c in read_columns if any(key[1] == c for key in plan.gx_batched)]
        head_batches: list[Any] = []
        pool = cleanup.enter_context(ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="gate"))

        def submit(batch: Any, head_part: Any) -> dict[ExpectationKey, _BatchJob]:
            """The batch's metrics, one job per expectation (pyarrow and numpy release the GIL)."""
            jobs: dict[ExpectationKey, _BatchJob] = {}
            for key, metric in plan.vectorised.items():
                if key not in raised:
                    jobs[key] = pool.submit(_measure, metric, batch.column(key[1]),
                                            None if head_part is None else head_part.column(key[1]))
            for key, counter in duplicates.items():
                if key not in raised:
                    jobs[key] = pool.submit(_feed, counter, head_duplicates[key], batch.column(key[1]),
                                            None if head_part is None else head_part.column(key[1]))
            return jobs

        def collect(jobs: dict[ExpectationKey, _BatchJob]) -> None:
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
            pending: dict[ExpectationKey, _BatchJob] = {}
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
                    batch_frame = gx_adapter.to_pandas(batch.select(gx_columns))
                    for key, batch_counts in runner.validate(batch_frame, gx_batched).items():
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
    parquet = pq.ParquetFile(path)
    try:
        schema = parquet.schema_arrow
        total_rows = int(parquet.metadata.num_rows)
    finally:
        parquet.close()

    suite = build_suite(rules, leak_token=leak_token)
    by_key = {expectation_key(e): e for e in suite.expectations}
    plan = _plan([(str(e.expectation_type), dict(e.configuration.kwargs)) for e in suite.expectations], schema)
    runner = GxRunner()
    batched = gx_adapter.make_suite("batches", [by_key[k] for k in plan.gx_batched])
    measured = _measure_file(path, rules, plan, batch_rows, runner, batched)

    # GX on a zero-row frame with the file's schema: the ordered column list, and the expectations GX
    # evaluates batch by batch (so each has been through GX even for a 0-row file). The vectorised
    # ones go through GX on the head slice below, which has the same schema.
    columns_expectation = by_key[(COLUMNS_MATCH_ORDERED_LIST, None)]
    counts = runner.validate(gx_adapter.to_pandas(schema.empty_table()), gx_adapter.make_suite(
        "schema", [columns_expectation, *(by_key[k] for k in plan.gx_batched)]))
    for key, batch_counts in measured.gx_counts.items():
        if key in counts:
            counts[key].add(batch_counts)
        else:
            counts[key] = batch_counts

    # Cross-check: real GX on the head of the file (bounded) must count what the metrics counted.
    cross: dict[ExpectationKey, GxCounts] = {}
    metric_fed = [by_key[k] for k in [*plan.vectorised, *plan.file_wide]]
    if metric_fed:
        cross = runner.validate(gx_adapter.to_pandas(measured.head_table), gx_adapter.make_suite("head", metric_fed))
    return _summary(rules, suite, schema, total_rows, plan, counts, measured, cross)


def _measure(metric: Metric, values: Any, head_values: Any) -> tuple[Counts | None, Counts | None]:
    return metric(values), (None if head_values is None else metric(head_values))


def _feed(counter: DuplicateCounter, head_counter: DuplicateCounter, values: Any,
          head_values: Any) -> tuple[Counts | None, Counts | None]:
    counter.add(values)
    if head_values is not None:
        head_counter.add(head_values)
    return None, None


def _agrees(gx_counts: GxCounts | None, counts: Counts) -> bool:
    """GX's counts on the head slice equal the vectorised ones on the same rows."""
    return (gx_counts is not None and not gx_counts.errored and gx_counts.unexpected == counts.unexpected
            and gx_counts.missing in (None, counts.nulls))


def _summary(rules: DatasetRules, suite: ExpectationSuite, schema: Any, total_rows: int, plan: _Plan,
             counts: dict[ExpectationKey, GxCounts], measured: _Measured,
             cross: dict[ExpectationKey, GxCounts]) -> ValidationSummary:
    outcomes: list[ExpectationOutcome] = []
    metric_fed = {*plan.vectorised, *plan.file_wide}
    for expectation in suite.expectations:
        key = expectation_key(expectation)
        kind, column = key
        config = expectation.configuration
        if kind in (ROW_COUNT_BETWEEN, ROW_COUNT_EQUAL):
            decision = decide(expectation, {"table.row_count": total_rows})
            outcomes.append(ExpectationOutcome(kind, None, decision.success, None, str(total_rows), config))
        elif kind == ARROW_TYPES:
            observed = [[f.name, str(f.type)] for f in schema]
            decision = decide(expectation, {"table.arrow_types": observed})
            outcomes.append(ExpectationOutcome(kind, None, decision.success, None,
                                               str(decision.result["observed_value"]), config))
        elif key in plan.not_evaluated:
            outcomes.append(ExpectationOutcome(kind, column, False, None, plan.not_evaluated[key], config))
        elif key in metric_fed:
            outcomes.append(_metric_fed_outcome(expectation, total_rows, measured.totals[key], measured.head[key],
                                                key in measured.raised, cross.get(key)))
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


def _metric_fed_outcome(expectation: Expectation, total_rows: int, total: Counts, head: Counts, raised: bool,
                        cross: GxCounts | None) -> ExpectationOutcome:
    """Outcome of a column expectation decided on gate-computed metrics, after the head cross-check."""
    kind, column = expectation_key(expectation)
    config = expectation.configuration
    not_evaluated: str | None = None
    if raised:
        not_evaluated = OBSERVED_METRIC_ERROR
    elif cross is None or cross.errored:
        not_evaluated = OBSERVED_EVALUATION_ERROR
    elif not _agrees(cross, head):
        not_evaluated = OBSERVED_METRIC_DISAGREES
    success: bool | None = None
    if not_evaluated is None:
        try:
            success = decide_on_map_metrics(expectation, rows=total_rows, nulls=total.nulls,
                                            unexpected=total.unexpected)
        except Exception:  # value-free inputs, but keep the pattern: no message
            not_evaluated = OBSERVED_EVALUATION_ERROR
        else:
            if success is None:  # GX's decision did not echo the metrics it was given
                not_evaluated = OBSERVED_METRIC_DISAGREES
    if success is None:
        return ExpectationOutcome(kind, column, False, None, not_evaluated, config)
    return ExpectationOutcome(kind, column, success, total.unexpected, None, config)
