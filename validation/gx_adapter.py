"""The Great Expectations adapter: the one module through which the gate imports, builds, runs and asks GX.

* ``import_gx``: GX imported on first use (it takes seconds), analytics off, its loggers at WARNING,
  and only the pinned version (``PINNED_GX_VERSION``, as in constraints.txt).
* ``build_expectation`` / ``suite_from_specs``: GX expectation objects from ``(type, kwargs)`` specs; the
  custom ones live in ``validation.expectations``.
* ``GxRunner``: a real GX validation of a pandas DataFrame (public API: an ephemeral context, a pandas
  data source and a whole-dataframe batch definition), reduced to value-free counts (``GxCounts``).
* ``decide``: GX's own decision on metrics the gate computed.

**The one private call.** GX's public API validates a batch, computing every metric itself on a
DataFrame, i.e. holding the data in memory (a whole file, or per batch with no way to add up the
counts before deciding). The gate computes whole-file metrics in bounded memory instead and lets the
expectation decide on them with ``Expectation._validate``, the function a normal validation calls once
its metrics are resolved. It is private API: ``decide`` is the only caller, tests/validation/
test_gx_adapter.py pins its behaviour on the pinned version, and ``decide`` and ``import_gx`` refuse any
other version (``ConfigError`` naming both) instead of deciding with semantics nobody checked.

Security rule: GX results carry values (``partial_unexpected_list``, exception messages, ...); only the
expectation type, column, success flag, counts and column *names* are read from them here.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import importlib.metadata
import json
import logging
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from core.errors import ConfigError
from validation.model import (
    ARROW_TYPES,
    CELLS_NOT_RECOVERABLE,
    COLUMNS_MATCH_ORDERED_LIST,
    DISCLOSURE_THRESHOLD,
    EXIST_IN_DATASET,
    IDENTIFIERS_DRAWN,
    MULTIPLES_OF,
    NO_PARQUET_STATISTICS,
    NOT_SOURCE_IDENTIFIER,
    ROW_COUNT_BETWEEN,
    ROW_COUNT_EQUAL,
    SAMPLE_MATCHES,
    VALUE_LENGTHS_EQUAL,
    VALUES_BETWEEN,
    VALUES_IN_SET,
    VALUES_MATCH_REGEX,
    VALUES_NOT_NULL,
    VALUES_UNIQUE,
    WITHIN_POPULATION,
)

if TYPE_CHECKING:
    import pandas as pd  # type: ignore[import-untyped]  # pandas ships no type information (no stubs pinned)
    from great_expectations.core.expectation_suite import ExpectationSuite
    from great_expectations.expectations.expectation import Expectation

PINNED_GX_VERSION = "1.24.1"  # constraints.txt pins the same; test_gx_adapter.py checks all three agree

# Counts without values: BASIC computes element_count and unexpected_count;
# partial_unexpected_count=0 keeps partial_unexpected_list empty. SUMMARY gives the same counts
# but also computes the unexpected index list, which we never use (slower on failing batches).
RESULT_FORMAT: dict[str, Any] = {"result_format": "BASIC", "partial_unexpected_count": 0}
GX_NAME = "contract_extracts_gate"  # prefix of the suite, data source, asset and batch definition names

ExpectationKey = tuple[str, str | None]  # (expectation type, column): how GX results are matched to expectations

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
    EXIST_IN_DATASET: "ExpectColumnValuesToExistInDataset",
    DISCLOSURE_THRESHOLD: "ExpectDisclosureThresholdToHold",
    SAMPLE_MATCHES: "ExpectSampleToMatchContract",
    CELLS_NOT_RECOVERABLE: "ExpectTableCellsNotRecoverable",
    WITHIN_POPULATION: "ExpectColumnValuesToBeInPopulation",
    NO_PARQUET_STATISTICS: "ExpectColumnParquetStatisticsToBeAbsent",
    IDENTIFIERS_DRAWN: "ExpectSourceIdentifiersToBeDrawn",
}


# ------------------------------------------------------------------------------------ import, version


@functools.cache
def installed_gx_version() -> str:
    """The installed Great Expectations distribution's version (read without importing GX)."""
    return importlib.metadata.version("great_expectations")


def require_pinned_gx() -> None:
    """Refuse (``ConfigError``) unless the installed GX is the version ``decide`` was checked on."""
    found = installed_gx_version()
    if found != PINNED_GX_VERSION:
        raise ConfigError(
            f"Great Expectations {found} is installed, but the release gate is pinned to {PINNED_GX_VERSION}: "
            "it calls GX's private Expectation._validate, whose behaviour is checked on that version only.",
            fix=f"install great-expectations=={PINNED_GX_VERSION} (constraints.txt), or re-check "
                f"validation/gx_adapter.decide on {found} and move the pin")


def import_gx() -> ModuleType:
    """Import great_expectations (pinned version only) without analytics and with its loggers at WARNING.

    The first call imports GX and the gate's custom expectations (``validation.expectations``) with the cyclic
    garbage collector paused (``imported_without_gc``); this import is most of the fixed cost of a small
    delivery, which ``contract-extracts run`` hides behind the extract (``cli.run``).
    """
    require_pinned_gx()
    loaded = sys.modules.get("great_expectations")
    if loaded is not None and "validation.expectations" in sys.modules:
        return loaded
    os.environ["GX_ANALYTICS_ENABLED"] = "false"
    _quieten_gx_loggers()
    with imported_without_gc():
        import great_expectations as gx  # noqa: PLC0415 - deferred: importing GX takes ~2-3 s

        import validation.expectations  # noqa: F401, PLC0415 - deferred: it imports GX

    _quieten_gx_loggers()  # some GX modules set their own level (INFO) when imported
    return gx


@contextlib.contextmanager
def imported_without_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while a large package is imported, then freeze what was imported.

    Importing GX builds tens of thousands of long-lived objects (pydantic models, expectation classes, their
    registries): with the collector running, every few hundred allocations trigger a collection that walks
    them all again and frees nothing (~0.3 s of a ~1.5 s import here). Afterwards ``gc.freeze`` moves every
    object alive to the permanent generation: later collections (during the run, and the interpreter's own
    at exit, ~0.7 s with GX loaded) skip them. Objects are still freed by reference counting; only cycles
    that were already garbage when the import ended stay until the process exits. The collector's previous
    state (enabled or not) is restored.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


def _quieten_gx_loggers() -> None:
    root = logging.getLogger("great_expectations")
    if root.level < logging.WARNING:  # NOTSET included; a stricter level set by the operator stays
        root.setLevel(logging.WARNING)
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if (name.startswith("great_expectations.") and isinstance(logger, logging.Logger)
                and logging.NOTSET < logger.level < logging.WARNING):
            logger.setLevel(logging.WARNING)


# -------------------------------------------------------------------------------------------- build


def _build(gx: ModuleType, kind: str, kwargs: dict[str, Any]) -> Expectation:
    if kind in _CUSTOM:
        from validation import expectations as custom  # noqa: PLC0415 - deferred: it imports GX (~3 s)

        expectation: Expectation = getattr(custom, _CUSTOM[kind])(**kwargs)
    else:
        expectation = getattr(gx.expectations, _BUILT_IN[kind])(**kwargs)
    return expectation


def build_expectation(kind: str, kwargs: dict[str, Any]) -> Expectation:
    """The GX expectation of type ``kind`` with these configuration kwargs (built-in or custom)."""
    return _build(import_gx(), kind, kwargs)


def make_suite(name: str, expectations: Iterable[Expectation]) -> ExpectationSuite:
    """A GX suite named ``<GX_NAME>.<name>`` holding these expectation objects."""
    suite: ExpectationSuite = import_gx().ExpectationSuite(name=f"{GX_NAME}.{name}", expectations=list(expectations))
    return suite


def suite_from_specs(name: str, specs: Iterable[tuple[str, dict[str, Any]]]) -> ExpectationSuite:
    """A GX suite built from ``(expectation type, configuration kwargs)`` specs, in order."""
    gx = import_gx()
    return make_suite(name, [_build(gx, kind, kwargs) for kind, kwargs in specs])


def expectation_key(expectation: Expectation) -> ExpectationKey:
    return str(expectation.expectation_type), getattr(expectation, "column", None)


# ---------------------------------------------------------------------------------------- validate


@dataclass
class GxCounts:
    """What the gate keeps of one GX expectation result: success and counts, never values."""

    success: bool
    unexpected: int | None
    errored: bool
    observed: str | None  # value-free only (column names)
    missing: int | None = None  # GX's null count (map expectations other than not-null)

    def add(self, other: GxCounts) -> None:
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


def to_pandas(data: Any) -> pd.DataFrame:
    """The DataFrame GX validates, from an Arrow table or record batch."""
    # ignore_metadata: judge the physical columns (a stored pandas index stays a column).
    return data.to_pandas(ignore_metadata=True)


class GxRunner:
    """One ephemeral context / datasource / asset / batch definition, reused for every batch."""

    def __init__(self) -> None:
        gx = import_gx()
        from great_expectations.data_context.types.base import (  # noqa: PLC0415 - deferred: importing GX takes ~3 s
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
        asset = context.data_sources.add_pandas(GX_NAME).add_dataframe_asset(GX_NAME)
        self._batch_definition = asset.add_batch_definition_whole_dataframe(GX_NAME)

    def validate(self, df: pd.DataFrame, suite: ExpectationSuite) -> dict[ExpectationKey, GxCounts]:
        """Run the suite on one DataFrame; keep only type, column, success and counts."""
        batch = self._batch_definition.get_batch(batch_parameters={"dataframe": df})
        result = batch.validate(suite, result_format=RESULT_FORMAT)
        out: dict[ExpectationKey, GxCounts] = {}
        for res in result.results:
            config = res.expectation_config
            key = (str(config.type), config.kwargs.get("column"))
            if _raised_exception(res.exception_info):
                out[key] = GxCounts(success=False, unexpected=None, errored=True, observed=None, missing=None)
                continue
            body = res.result or {}
            unexpected = body.get("unexpected_count")
            observed = body.get("observed_value") if key[0] == COLUMNS_MATCH_ORDERED_LIST else None
            missing = body.get("missing_count")
            out[key] = GxCounts(
                success=bool(res.success),
                unexpected=int(unexpected) if unexpected is not None else None,
                errored=False,
                observed=json.dumps([str(n) for n in observed]) if observed is not None else None,
                missing=int(missing) if missing is not None else None,
            )
        return out


# ------------------------------------------------------------------------------------------ decide


@dataclass(frozen=True)
class GxDecision:
    """An expectation's decision on given metrics: success and GX's result body (value-free inputs only)."""

    success: bool
    result: dict[str, Any]


def decide(expectation: Expectation, metrics: dict[str, Any], *,
           result_format: dict[str, Any] | None = None) -> GxDecision:
    """The expectation's own decision (``Expectation._validate``) on metrics the gate computed.

    The module's one call into GX's private API (see the module docstring). ``metrics`` maps GX metric
    names to value-free metrics: counts, the row count, column names and types.
    """
    require_pinned_gx()
    runtime_configuration = None if result_format is None else {"result_format": result_format}
    raw = expectation._validate(metrics=metrics, runtime_configuration=runtime_configuration)
    return GxDecision(success=bool(raw["success"]), result=dict(raw.get("result") or {}))


def map_metrics(expectation: Expectation, *, rows: int, nulls: int, unexpected: int) -> dict[str, Any]:
    """The metrics a column map expectation decides on: row count, null count, unexpected count (no values)."""
    from great_expectations.expectations.expectation import (  # noqa: PLC0415 - deferred: importing GX takes ~3 s
        ColumnMapExpectation,
    )

    if not isinstance(expectation, ColumnMapExpectation):
        raise TypeError("not a column map expectation")
    metric = expectation.map_metric
    return {"table.row_count": rows, "column_values.nonnull.unexpected_count": nulls,
            f"{metric}.unexpected_count": unexpected, f"{metric}.unexpected_values": []}


def decide_on_map_metrics(expectation: Expectation, *, rows: int, nulls: int, unexpected: int) -> bool | None:
    """A column map expectation's decision on whole-file counts; None unless GX echoes the counts it was given.

    A metric key renamed by a GX upgrade would otherwise read as "no metric" and pass vacuously.
    """
    decision = decide(expectation, map_metrics(expectation, rows=rows, nulls=nulls, unexpected=unexpected),
                      result_format=RESULT_FORMAT)
    body = decision.result
    echoed = (body.get("element_count") == rows and body.get("unexpected_count") == unexpected
              and body.get("missing_count", nulls) == nulls)
    return decision.success if echoed else None
