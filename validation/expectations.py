"""Custom Great Expectations expectations of the release gate (imported only with GX, by ``gx_adapter``).

Two kinds:

* **Row-wise**: ``ExpectColumnValuesToNotContainSourceIdentifiers`` (the leak check) and
  ``ExpectColumnValuesToBeMultiplesOf`` (bands, rounding). Each has a ``ColumnMapMetricProvider`` for
  pandas, which GX runs on the head of the file for ``staged_file``'s cross-check (and on every batch
  where no vectorised metric applies); on the whole file ``staged_file`` computes the same metric with
  pyarrow (``metrics``, sharing ``is_multiple`` and ``leakage.IdentifierSample.leaked`` with the
  providers here) and the expectation's own decision (``gx_adapter.decide``) applies.
* **Metric-fed** (decided by the expectation's own ``_validate`` on a value-free metric the gate
  computes over the whole file or across files, as ``staged_file`` already does for the row count):
  ``ExpectColumnValuesToExistInDataset`` (referential integrity), ``ExpectColumnValuesToBeInPopulation``
  (minimum data: no row of anyone outside the contract's population), ``ExpectTableArrowTypesToEqual``,
  ``ExpectDisclosureThresholdToHold``, ``ExpectSampleToMatchContract``,
  ``ExpectTableCellsNotRecoverable``, ``ExpectColumnParquetStatisticsToBeAbsent`` (no identifier value in
  the file's statistics) and ``ExpectSourceIdentifiersToBeDrawn`` (the leak check searched for something).
  They declare ``metric_dependencies`` for documentation; no GX metric provider computes them (their
  inputs span files or need the raw source).

No kwarg of any expectation holds a data value: the leak check refers to its identifier sample by an
opaque token (``leakage.register``), whose values live only in this process's memory.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any, ClassVar

import numpy as np
import pandas as pd  # type: ignore[import-untyped]  # pandas ships no type information (no stubs pinned)
from great_expectations.execution_engine.pandas_execution_engine import PandasExecutionEngine
from great_expectations.expectations.expectation import BatchExpectation, ColumnMapExpectation
from great_expectations.expectations.metrics.map_metric_provider.column_condition_partial import (
    column_condition_partial,
)
from great_expectations.expectations.metrics.map_metric_provider.column_map_metric_provider import (
    ColumnMapMetricProvider,
)

from validation import leakage
from validation.metrics import is_multiple  # one definition, shared with the vectorised metric

# ------------------------------------------------------------------------------------ leak check


class ColumnValuesNotSourceIdentifier(ColumnMapMetricProvider):
    condition_metric_name = "column_values.not_source_identifier"
    condition_value_keys = ("identifier_set", "substring")

    @column_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column: pd.Series, identifier_set: str, substring: bool, **kwargs: Any) -> pd.Series:
        leaked = leakage.lookup(identifier_set).leaked(column.astype(str).tolist(), substring=bool(substring))
        return pd.Series(~leaked, index=column.index)


class ExpectColumnValuesToNotContainSourceIdentifiers(ColumnMapExpectation):
    """No value of the column equals (or, with ``substring``, contains) a raw source identifier.

    Both sides are canonicalised the same way (white space removed, upper case), so a leaked
    identifier is caught in any case or spacing. ``identifier_set`` is an opaque token naming a
    sample of identifiers drawn from the source at run time and held only in memory.
    """

    identifier_set: str
    substring: bool = False

    map_metric = "column_values.not_source_identifier"
    success_keys = ("identifier_set", "substring", "mostly")
    args_keys = ("column", "identifier_set", "substring")
    library_metadata: ClassVar[dict[str, Any]] = {"maturity": "experimental", "tags": ["contract-extracts"],
                                                  "contributors": ["contract-extracts"]}


# ---------------------------------------------------------------------------------- multiples of


class ColumnValuesMultipleOf(ColumnMapMetricProvider):
    condition_metric_name = "column_values.multiple_of"
    condition_value_keys = ("base",)

    @column_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column: pd.Series, base: float, **kwargs: Any) -> pd.Series:
        if pd.api.types.is_integer_dtype(column.dtype) and float(base).is_integer():
            return pd.Series(np.asarray(column, dtype=np.int64) % int(base) == 0, index=column.index)
        step = Decimal(str(base))
        return column.map(lambda v: is_multiple(v, step)).astype(bool)


class ExpectColumnValuesToBeMultiplesOf(ColumnMapExpectation):
    """Every non-null value is a whole multiple of ``base`` (rounded counts, band starts, rounding)."""

    base: float

    map_metric = "column_values.multiple_of"
    success_keys = ("base", "mostly")
    args_keys = ("column", "base")
    library_metadata: ClassVar[dict[str, Any]] = {"maturity": "experimental", "tags": ["contract-extracts"],
                                                  "contributors": ["contract-extracts"]}


# ------------------------------------------------------------------------------------ metric-fed


class ExpectColumnValuesToExistInDataset(ColumnMapExpectation):
    """Every pseudonym of the column occurs in ``parent_column`` of ``parent_dataset`` (where it is the key).

    Metric-fed: ``column_values.exist_in_dataset.unexpected_count`` is computed by the gate across
    the two files (bounded memory), then GX's own map-expectation decision is applied.
    """

    parent_dataset: str
    parent_column: str

    map_metric = "column_values.exist_in_dataset"
    success_keys = ("parent_dataset", "parent_column", "mostly")
    args_keys = ("column", "parent_dataset", "parent_column")
    library_metadata: ClassVar[dict[str, Any]] = {"maturity": "experimental", "tags": ["contract-extracts"],
                                                  "contributors": ["contract-extracts"]}


class ExpectColumnValuesToBeInPopulation(ColumnMapExpectation):
    """Every entity pseudonym of the column occurs in ``population_column`` of ``population_dataset``: the rows
    of a dataset restricted to the contract's population belong to people of that population.

    Metric-fed like ``ExpectColumnValuesToExistInDataset`` (the same bounded, hash-split pass over both files).
    """

    population_dataset: str
    population_column: str

    map_metric = "column_values.in_population"
    success_keys = ("population_dataset", "population_column", "mostly")
    args_keys = ("column", "population_dataset", "population_column")
    library_metadata: ClassVar[dict[str, Any]] = {"maturity": "experimental", "tags": ["contract-extracts"],
                                                  "contributors": ["contract-extracts"]}


class ExpectColumnParquetStatisticsToBeAbsent(BatchExpectation):
    """No row group of the Parquet file holds min/max statistics of ``column`` (an identifier or free text):
    statistics are values, readable without decompressing a page."""

    column: str

    metric_dependencies = ("parquet.row_groups_with_statistics",)
    success_keys = ("column",)
    args_keys = ("column",)
    library_metadata: ClassVar[dict[str, Any]] = {"maturity": "experimental", "tags": ["contract-extracts"],
                                                  "contributors": ["contract-extracts"]}

    def _validate(self, metrics: dict[str, Any], runtime_configuration: dict[str, Any] | None = None,
                  execution_engine: Any = None) -> dict[str, Any]:
        groups = int(metrics["parquet.row_groups_with_statistics"])
        return {"success": groups == 0,
                "result": {"observed_value": f"{groups} row group(s) with min/max statistics"}}


class ExpectSourceIdentifiersToBeDrawn(BatchExpectation):
    """The leak check drew raw identifiers to search for: a search for nothing cannot pass for a clean result.

    Passes when identifiers were drawn, or when there is nothing they could leak into (no catalogued
    identifier in the tables read, or no delivered row).
    """

    metric_dependencies = ("leak_check.drawn", "leak_check.identifier_columns", "leak_check.delivered_rows")
    library_metadata: ClassVar[dict[str, Any]] = {"maturity": "experimental", "tags": ["contract-extracts"],
                                                  "contributors": ["contract-extracts"]}

    def _validate(self, metrics: dict[str, Any], runtime_configuration: dict[str, Any] | None = None,
                  execution_engine: Any = None) -> dict[str, Any]:
        drawn = int(metrics["leak_check.drawn"])
        columns = int(metrics["leak_check.identifier_columns"])
        rows = int(metrics["leak_check.delivered_rows"])
        success = drawn > 0 or columns == 0 or rows == 0
        return {"success": success, "result": {"observed_value": f"{drawn} identifier(s) drawn from {columns} "
                                                                 f"catalogued identifier column(s); {rows} row(s) "
                                                                 "delivered"}}


class ExpectTableArrowTypesToEqual(BatchExpectation):
    """The file's columns have exactly these Arrow types, in this order (``[[name, type], ...]``)."""

    types: list[list[str]]

    metric_dependencies = ("table.arrow_types",)
    success_keys = ("types",)
    args_keys = ("types",)
    library_metadata: ClassVar[dict[str, Any]] = {"maturity": "experimental", "tags": ["contract-extracts"],
                                                  "contributors": ["contract-extracts"]}

    def _validate(self, metrics: dict[str, Any], runtime_configuration: dict[str, Any] | None = None,
                  execution_engine: Any = None) -> dict[str, Any]:
        observed = [list(pair) for pair in metrics["table.arrow_types"]]
        expected = [list(pair) for pair in self.types]
        mismatched = [name for (name, t), (_, u) in zip(expected, observed, strict=False) if t != u]
        return {"success": observed == expected,
                "result": {"observed_value": f"{len(mismatched)} column type(s) differ"
                           + (f": {', '.join(mismatched)}" if mismatched else "")
                           + ("" if len(observed) == len(expected) else
                              f"; {len(observed)} columns, {len(expected)} expected")}}


class ExpectDisclosureThresholdToHold(BatchExpectation):
    """Re-measured on the staged file: every record matches ≥ k records on the key (and ≥ l sensitive values)."""

    k: int
    l: int | None = None  # noqa: E741
    key: list[str]

    metric_dependencies = ("disclosure.k_anonymity", "disclosure.records_below_k", "disclosure.records_below_l")
    success_keys = ("k", "l", "key")
    args_keys = ("key", "k", "l")
    library_metadata: ClassVar[dict[str, Any]] = {"maturity": "experimental", "tags": ["contract-extracts"],
                                                  "contributors": ["contract-extracts"]}

    def _validate(self, metrics: dict[str, Any], runtime_configuration: dict[str, Any] | None = None,
                  execution_engine: Any = None) -> dict[str, Any]:
        below_k = int(metrics["disclosure.records_below_k"])
        below_l = metrics.get("disclosure.records_below_l")
        smallest = metrics.get("disclosure.k_anonymity")
        success = below_k == 0 and (self.l is None or not below_l)
        text = f"smallest group {smallest}; {below_k} record(s) below k={self.k}"
        if self.l is not None:
            text += f"; {below_l or 0} record(s) below l={self.l}"
        return {"success": success, "result": {"observed_value": text}}


class ExpectSampleToMatchContract(BatchExpectation):
    """The extract's sample is the contract's: at most ``max_records`` entities and about ``fraction`` of them.

    The realised share may differ from the fraction by sampling noise: 4 standard deviations of a
    binomial share plus one entity. When ``max_records`` caps the sample only the upper bound applies.
    """

    fraction: float | None = None
    max_records: int | None = None

    metric_dependencies = ("sample.population", "sample.size")
    success_keys = ("fraction", "max_records")
    args_keys = ("fraction", "max_records")
    library_metadata: ClassVar[dict[str, Any]] = {"maturity": "experimental", "tags": ["contract-extracts"],
                                                  "contributors": ["contract-extracts"]}

    def _validate(self, metrics: dict[str, Any], runtime_configuration: dict[str, Any] | None = None,
                  execution_engine: Any = None) -> dict[str, Any]:
        population = metrics.get("sample.population")
        size = metrics.get("sample.size")
        if size is None:
            return {"success": False, "result": {"observed_value": "no sample size recorded by the extract"}}
        success = True
        notes = [f"{int(size)} sampled"]
        if self.max_records is not None and size > self.max_records:
            success = False
            notes.append(f"more than max_records={self.max_records}")
        if self.fraction is not None:
            if not population:
                return {"success": False, "result": {"observed_value": "no population size recorded by the extract"}}
            share = size / population
            noise = 4 * math.sqrt(self.fraction * (1 - self.fraction) / population) + 1 / population
            capped = self.max_records is not None and size >= self.max_records
            notes.append(f"share {share:.6f} of {int(population)}")
            if share > self.fraction + noise or (not capped and share < self.fraction - noise):
                success = False
                notes.append(f"outside fraction {self.fraction:g} ± {noise:.6f}")
        return {"success": success, "result": {"observed_value": "; ".join(notes)}}


class ExpectTableCellsNotRecoverable(BatchExpectation):
    """Aggregate table: no line of it has exactly one suppressed entry, and no withheld cell is pinned or proved
    small along its lines with ``read_with``, the other tables of its dataset (rounding intervals respected)."""

    by: list[str]
    read_with: list[str] | None = None  # the other tables of its dataset read with it

    metric_dependencies = ("table.recoverable_cells",)
    success_keys = ("by", "read_with")
    args_keys = ("by", "read_with")
    library_metadata: ClassVar[dict[str, Any]] = {"maturity": "experimental", "tags": ["contract-extracts"],
                                                  "contributors": ["contract-extracts"]}

    def _validate(self, metrics: dict[str, Any], runtime_configuration: dict[str, Any] | None = None,
                  execution_engine: Any = None) -> dict[str, Any]:
        cells = int(metrics["table.recoverable_cells"])
        return {"success": cells == 0,
                "result": {"observed_value": f"{cells} withheld cell(s) recoverable or proved small"}}
