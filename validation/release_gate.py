"""The release gate of one delivery: every staged file's suite plus the checks that span files.

``run_release_gate`` is the gate as the pipeline runs it: it reads what it needs from the source
(``source_facts``: key constraints and a sample of raw identifiers, both held in memory only), derives
the rules from the contract and the staging hand-over files (``rules``), then calls
``validate_delivery``.

``validate_delivery`` runs ``staged_file.validate_parquet`` on every staged file (microdata datasets and
aggregate tables), with the leak check's identifier sample registered for the duration, then adds
metric-fed GX expectations that need more than one file or more than one pass, each decided by the
expectation itself on metrics computed here with pyarrow (``gx_adapter.decide``):

* referential integrity (``expect_column_values_to_exist_in_dataset``) on each child column
  (``references.missing_references``: both files split by the same hash, one pass each);
* the disclosure threshold re-measured on the treated file (``expect_disclosure_threshold_to_hold``);
* no suppressed cell of an aggregate table recoverable from one line, of it or of it read with the other tables of
  its dataset (``expect_table_cells_not_recoverable``);
* the sample matching the contract (``expect_sample_to_match_contract``, in the delivery summary);
* every row of a dataset restricted to the contract's population belonging to it
  (``expect_column_values_to_be_in_population``: its entity pseudonyms occur in the defining dataset);
* no Parquet statistics of a column the source catalogue classes as identifier or free text
  (``expect_column_parquet_statistics_to_be_absent``);
* the leak check having drawn identifiers to search for (``expect_source_identifiers_to_be_drawn``, in the
  delivery summary): a search for nothing cannot pass for a clean result.

Per file, the gate checks the exact Arrow types in order and the exact row count recorded by the
extract, the domains of generalised values and multiples of a rounding base, uniqueness of entity keys
over the whole file, and **no leakage**: every string column searched for raw source identifiers
(``leakage``). The result is value-free; the operator's HTML report is rendered from it
(``operator_report``).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from sqlalchemy.engine import URL

from contracts.catalogue import Catalogue, PopulationPlan
from contracts.model import Contract
from core.errors import ContractExtractsError, StageFailed, value_free
from disclosure.risk import build_classes, measure
from disclosure.tables import PublishedTable, exposed_across_tables, recoverable_in_table
from validation import leakage
from validation.gx_adapter import RESULT_FORMAT, build_expectation, decide, import_gx, map_metrics
from validation.model import (
    CELLS_NOT_RECOVERABLE,
    DELIVERY,
    DISCLOSURE_THRESHOLD,
    EXIST_IN_DATASET,
    IDENTIFIERS_DRAWN,
    NO_PARQUET_STATISTICS,
    SAMPLE_MATCHES,
    WITHIN_POPULATION,
    DeliveryRules,
    DeliveryValidation,
    ExpectationOutcome,
    TableCheck,
    ValidationSummary,
)
from validation.references import missing_references
from validation.rules import delivery_rules, source_unique_columns
from validation.source_facts import inspect_source
from validation.staged_file import validate_parquet

log = logging.getLogger(__name__)


def run_release_gate(contract: Contract, staging: Path, state: dict[str, Any], disclosure_doc: dict[str, Any] | None,
                     url: URL, *, batch_rows: int, run_year: int,
                     per_column: int = leakage.PER_COLUMN, catalogue: Catalogue | None = None,
                     population: PopulationPlan | None = None) -> DeliveryValidation:
    """Every expectation of the release gate on the staged delivery (value-free result).

    ``catalogue``: the source catalogue the run was authorised with (identifiers to draw, protected columns);
    ``population``: the contract's population as the extract applied it (rows to check).
    """
    reflected, identifiers = inspect_source(contract, url, per_column=per_column, catalogue=catalogue,
                                            population=population)
    log.info("leak check: %d identifiers drawn from the source, %d searched for, %d too short to search",
             identifiers.drawn, identifiers.searched, identifiers.too_short)
    unique = source_unique_columns(contract, state, reflected)
    rules = delivery_rules(contract, state, disclosure_doc, unique=unique, run_year=run_year, catalogue=catalogue,
                           population=population)
    files: dict[str, Path] = {}
    if (disclosure_doc or {}).get("microdata", True) is not False:
        files.update({ds["name"]: staging / ds["file"] for ds in state["datasets"]})
    files.update({a["name"]: staging / a["file"] for a in (disclosure_doc or {}).get("aggregates", [])})
    return validate_delivery(files, rules, batch_rows=batch_rows, identifiers=identifiers)


def validate_delivery(files: dict[str, Path], rules: DeliveryRules, *, batch_rows: int = 250_000,
                      identifiers: leakage.IdentifierSample | None = None) -> DeliveryValidation:
    """Run the whole release gate; ``files`` maps every dataset/aggregate name of ``rules`` to its file."""
    token = leakage.register(identifiers) if identifiers is not None else None
    failure: str | None = None
    try:
        result = _validate_delivery(files, rules, batch_rows, token, identifiers)
    except ContractExtractsError:
        raise
    except Exception as exc:  # foreign errors may quote data values: keep only the type name
        failure = value_free(exc)
    finally:
        if token is not None:
            leakage.unregister(token)
    if failure is not None:
        raise StageFailed(f"the release gate failed: {failure}")
    if identifiers is not None:
        result.leak_check = identifiers.facts()
    return result


def _with(summary: ValidationSummary, extra: list[ExpectationOutcome]) -> ValidationSummary:
    if not extra:
        return summary
    outcomes = (*summary.expectations, *extra)
    return ValidationSummary(dataset=summary.dataset, success=all(o.success for o in outcomes),
                             rows=summary.rows, expectations=outcomes)


def row_groups_with_statistics(path: Path, column: str) -> int:
    """How many row groups of the Parquet file hold min/max statistics of ``column`` (read from the footer)."""
    metadata = pq.ParquetFile(path).metadata
    names = [metadata.schema.column(i).name for i in range(metadata.num_columns)]
    if column not in names:
        return 0
    index = names.index(column)
    count = 0
    for group in range(metadata.num_row_groups):
        stats = metadata.row_group(group).column(index).statistics
        if stats is not None and stats.has_min_max:
            count += 1
    return count


def _validate_delivery(files: dict[str, Path], rules: DeliveryRules, batch_rows: int, token: str | None,
                       identifiers: leakage.IdentifierSample | None = None) -> DeliveryValidation:
    # Whole-file and cross-file metrics, with pyarrow only; GX decides on them below.
    references = [missing_references(files[ref.dataset], ref.column, files[ref.parent_dataset], ref.parent_column,
                                     batch_rows=batch_rows) for ref in rules.references]
    disclosures = [measure(build_classes(files[check.dataset], list(check.key), list(check.sensitive),
                                         batch_rows=batch_rows), check.k, l=check.l) for check in rules.disclosure]
    tables = _tables_exposed(files, rules.tables)
    in_population = [missing_references(files[ref.dataset], ref.column, files[ref.parent_dataset], ref.parent_column,
                                        batch_rows=batch_rows) for ref in rules.population]
    statistics = [row_groups_with_statistics(files[stats.dataset], stats.column) for stats in rules.statistics]

    preloaded = "great_expectations" in sys.modules
    started = time.monotonic()
    import_gx()
    log.info("release gate: Great Expectations %s", "was already imported in this process" if preloaded
             else f"imported in {time.monotonic() - started:.1f} s")
    summaries = {r.dataset: validate_parquet(files[r.dataset], r, batch_rows=batch_rows, leak_token=token)
                 for r in rules.datasets}
    extra: dict[str, list[ExpectationOutcome]] = {name: [] for name in summaries}

    for ref, (rows, nulls, missing) in zip(rules.references, references, strict=True):
        expectation = build_expectation(EXIST_IN_DATASET, {"column": ref.column, "parent_dataset": ref.parent_dataset,
                                                           "parent_column": ref.parent_column})
        decision = decide(expectation, map_metrics(expectation, rows=rows, nulls=nulls, unexpected=missing),
                          result_format=RESULT_FORMAT)
        extra[ref.dataset].append(ExpectationOutcome(expectation.expectation_type, ref.column, decision.success,
                                                     missing, None, expectation.configuration))

    for check, measured in zip(rules.disclosure, disclosures, strict=True):
        expectation = build_expectation(DISCLOSURE_THRESHOLD, {"key": list(check.key), "k": check.k, "l": check.l})
        decision = decide(expectation, {"disclosure.k_anonymity": measured.k_anonymity,
                                        "disclosure.records_below_k": measured.records_below_k,
                                        "disclosure.records_below_l": measured.records_below_l})
        extra[check.dataset].append(ExpectationOutcome(
            expectation.expectation_type, None, decision.success, measured.records_below_k,
            str(decision.result["observed_value"]), expectation.configuration))

    for table, recovered in zip(rules.tables, tables, strict=True):
        expectation = build_expectation(CELLS_NOT_RECOVERABLE,
                                        {"by": list(table.by), "read_with": list(table.read_with)})
        decision = decide(expectation, {"table.recoverable_cells": recovered})
        extra[table.dataset].append(ExpectationOutcome(
            expectation.expectation_type, None, decision.success, recovered,
            str(decision.result["observed_value"]), expectation.configuration))

    for ref, (rows, nulls, missing) in zip(rules.population, in_population, strict=True):
        expectation = build_expectation(WITHIN_POPULATION, {"column": ref.column,
                                                            "population_dataset": ref.parent_dataset,
                                                            "population_column": ref.parent_column})
        decision = decide(expectation, map_metrics(expectation, rows=rows, nulls=nulls, unexpected=missing),
                          result_format=RESULT_FORMAT)
        extra[ref.dataset].append(ExpectationOutcome(expectation.expectation_type, ref.column, decision.success,
                                                     missing, None, expectation.configuration))

    for stats, groups in zip(rules.statistics, statistics, strict=True):
        expectation = build_expectation(NO_PARQUET_STATISTICS, {"column": stats.column})
        decision = decide(expectation, {"parquet.row_groups_with_statistics": groups})
        extra[stats.dataset].append(ExpectationOutcome(expectation.expectation_type, stats.column, decision.success,
                                                       groups, str(decision.result["observed_value"]),
                                                       expectation.configuration))

    outcomes: list[ExpectationOutcome] = []
    if rules.sample is not None:
        s = rules.sample
        expectation = build_expectation(SAMPLE_MATCHES, {"fraction": s.fraction, "max_records": s.max_records})
        decision = decide(expectation, {"sample.population": s.population, "sample.size": s.size})
        outcomes.append(ExpectationOutcome(expectation.expectation_type, None, decision.success, None,
                                           str(decision.result["observed_value"]), expectation.configuration))
    if rules.leak_draw is not None:
        expectation = build_expectation(IDENTIFIERS_DRAWN, {})
        decision = decide(expectation, {"leak_check.drawn": identifiers.drawn if identifiers is not None else 0,
                                        "leak_check.identifier_columns": rules.leak_draw.identifier_columns,
                                        "leak_check.delivered_rows": rules.leak_draw.delivered_rows})
        outcomes.append(ExpectationOutcome(expectation.expectation_type, None, decision.success, None,
                                           str(decision.result["observed_value"]), expectation.configuration))
    delivery = None
    if outcomes:
        delivery = ValidationSummary(dataset=DELIVERY, success=all(o.success for o in outcomes), rows=0,
                                     expectations=tuple(outcomes))

    ordered = [_with(summaries[r.dataset], extra[r.dataset]) for r in rules.datasets]
    for summary in ordered:
        log.info("release gate %s: success=%s, %d of %d expectations failed", summary.dataset, summary.success,
                 len(summary.failures()), len(summary.expectations))
    return DeliveryValidation(summaries=ordered, delivery=delivery, notes=list(rules.notes))


def _tables_exposed(files: dict[str, Path], checks: tuple[TableCheck, ...]) -> list[int]:
    """Per table: the lines of it with one suppressed entry, plus the withheld cells that it and the other tables
    of its dataset pin or prove small together (records, unweighted: their lines add up)."""
    by_name = {check.dataset: check for check in checks}
    published = {check.dataset: pq.read_table(files[check.dataset]) for check in checks}

    def read(check: TableCheck) -> PublishedTable:
        return PublishedTable(published[check.dataset], list(check.by), base=check.base, factor=check.factor,
                              threshold=check.threshold)

    together: dict[frozenset[str], int] = {}  # one reading per family, shared by its tables' checks
    out = []
    for check in checks:
        exposed = recoverable_in_table(published[check.dataset], list(check.by))
        if check.additive:
            family = frozenset((check.dataset, *check.read_with))
            if family not in together:
                together[family] = exposed_across_tables([read(by_name[name]) for name in sorted(family)])
            exposed += together[family]
        out.append(exposed)
    return out
