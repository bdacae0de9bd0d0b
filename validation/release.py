"""The release gate of one delivery: every file's suite plus the checks that span files.

``validate_delivery`` runs ``gate.validate_parquet`` on every staged file (microdata datasets and
aggregate tables), with the leak check's identifier sample registered for the duration, then adds
metric-fed GX expectations that need more than one file or more than one pass:

* referential integrity (``expect_column_values_to_exist_in_dataset``) on each child column;
* the disclosure threshold re-measured on the treated file (``expect_disclosure_threshold_to_hold``);
* no suppressed cell of an aggregate table recoverable from one line (``expect_table_cells_not_recoverable``);
* the sample matching the contract (``expect_sample_to_match_contract``, in the delivery summary).

The result is value-free. The operator's HTML report is rendered from it (``docs``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import ContractExtractsError, StageFailed
from validation import leakage
from validation.gate import (
    _RESULT_FORMAT,
    DatasetRules,
    ExpectationOutcome,
    ValidationSummary,
    _import_gx,
    missing_references,
    validate_parquet,
)

log = logging.getLogger(__name__)

DELIVERY = "(delivery)"  # the summary of checks that belong to no single file


@dataclass(frozen=True)
class Reference:
    """Every non-null value of ``dataset.column`` must occur in ``parent_dataset.parent_column``."""

    dataset: str
    column: str
    parent_dataset: str
    parent_column: str


@dataclass(frozen=True)
class DisclosureCheck:
    dataset: str
    key: tuple[str, ...]
    sensitive: tuple[str, ...]
    k: int
    l: int | None = None  # noqa: E741


@dataclass(frozen=True)
class TableCheck:
    dataset: str  # the aggregate's name (its file is data/<name>.parquet)
    by: tuple[str, ...]


@dataclass(frozen=True)
class SampleCheck:
    fraction: float | None
    max_records: int | None
    population: float | None
    size: float | None


@dataclass(frozen=True)
class DeliveryRules:
    datasets: tuple[DatasetRules, ...]
    references: tuple[Reference, ...] = ()
    disclosure: tuple[DisclosureCheck, ...] = ()
    tables: tuple[TableCheck, ...] = ()
    sample: SampleCheck | None = None
    notes: tuple[str, ...] = ()  # value-free remarks (e.g. a reference not checked, and why)


@dataclass
class DeliveryValidation:
    summaries: list[ValidationSummary]
    delivery: ValidationSummary | None
    leak_check: dict | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def success(self) -> bool:
        return all(s.success for s in self.summaries) and (self.delivery is None or self.delivery.success)

    def all_summaries(self) -> list[ValidationSummary]:
        return [*self.summaries, *([self.delivery] if self.delivery else [])]

    def to_dict(self) -> dict[str, Any]:
        """``validation.json``: the summary for the manifest and the ledger (value-free)."""
        out: dict[str, Any] = {"success": self.success, "datasets": [s.to_dict() for s in self.summaries]}
        if self.delivery is not None:
            out["delivery"] = self.delivery.to_dict()
        if self.leak_check is not None:
            out["leak_check"] = self.leak_check
        if self.notes:
            out["notes"] = list(self.notes)
        return out

    def failed(self) -> list[str]:
        return [f"{s.dataset}: {f.expectation}" + (f"({f.column})" if f.column else "")
                + (f", {f.unexpected_count} unexpected" if f.unexpected_count else "")
                for s in self.all_summaries() for f in s.failures()]


def _with(summary: ValidationSummary, extra: list[ExpectationOutcome]) -> ValidationSummary:
    if not extra:
        return summary
    outcomes = (*summary.expectations, *extra)
    return ValidationSummary(dataset=summary.dataset, success=all(o.success for o in outcomes),
                             rows=summary.rows, expectations=outcomes)


def validate_delivery(files: dict[str, Path], rules: DeliveryRules, *, batch_rows: int = 250_000,
                      identifiers: leakage.IdentifierSample | None = None) -> DeliveryValidation:
    """Run the whole release gate; ``files`` maps every dataset/aggregate name of ``rules`` to its file."""
    token = leakage.register(identifiers) if identifiers is not None else None
    failure: str | None = None
    try:
        result = _validate_delivery(files, rules, batch_rows, token)
    except ContractExtractsError:
        raise
    except Exception as exc:  # foreign errors may quote data values: keep only the type name
        failure = type(exc).__name__
    finally:
        if token is not None:
            leakage.unregister(token)
    if failure is not None:
        raise StageFailed(f"the release gate failed: {failure}")
    if identifiers is not None:
        result.leak_check = identifiers.facts()
    return result


def _validate_delivery(files: dict[str, Path], rules: DeliveryRules, batch_rows: int,
                       token: str | None) -> DeliveryValidation:
    import pyarrow.parquet as pq

    from disclosure.risk import build_classes, measure
    from disclosure.tables import recoverable_in_table

    # Whole-file and cross-file metrics, with pyarrow only; GX decides on them below.
    references = [missing_references(files[ref.dataset], ref.column, files[ref.parent_dataset], ref.parent_column,
                                     batch_rows=batch_rows) for ref in rules.references]
    disclosures = [measure(build_classes(files[check.dataset], list(check.key), list(check.sensitive),
                                         batch_rows=batch_rows), check.k, l=check.l) for check in rules.disclosure]
    tables = [recoverable_in_table(pq.read_table(files[check.dataset]), list(check.by)) for check in rules.tables]

    _import_gx()
    from validation.expectations import (
        ExpectColumnValuesToExistInDataset,
        ExpectDisclosureThresholdToHold,
        ExpectSampleToMatchContract,
        ExpectTableCellsNotRecoverable,
    )

    summaries = {r.dataset: validate_parquet(files[r.dataset], r, batch_rows=batch_rows, leak_token=token)
                 for r in rules.datasets}
    extra: dict[str, list[ExpectationOutcome]] = {name: [] for name in summaries}

    for ref, (rows, nulls, missing) in zip(rules.references, references, strict=True):
        expectation = ExpectColumnValuesToExistInDataset(column=ref.column, parent_dataset=ref.parent_dataset,
                                                         parent_column=ref.parent_column)
        decided = expectation._validate(
            metrics={"table.row_count": rows, "column_values.nonnull.unexpected_count": nulls,
                     "column_values.exist_in_dataset.unexpected_count": missing,
                     "column_values.exist_in_dataset.unexpected_values": []},
            runtime_configuration={"result_format": _RESULT_FORMAT})
        extra[ref.dataset].append(ExpectationOutcome(expectation.expectation_type, ref.column,
                                                     bool(decided["success"]), missing, None,
                                                     expectation.configuration))

    for check, measured in zip(rules.disclosure, disclosures, strict=True):
        expectation = ExpectDisclosureThresholdToHold(key=list(check.key), k=check.k, l=check.l)
        decided = expectation._validate(metrics={"disclosure.k_anonymity": measured.k_anonymity,
                                                 "disclosure.records_below_k": measured.records_below_k,
                                                 "disclosure.records_below_l": measured.records_below_l})
        extra[check.dataset].append(ExpectationOutcome(
            expectation.expectation_type, None, bool(decided["success"]), measured.records_below_k,
            str(decided["result"]["observed_value"]), expectation.configuration))

    for check, lines in zip(rules.tables, tables, strict=True):
        expectation = ExpectTableCellsNotRecoverable(by=list(check.by))
        decided = expectation._validate(metrics={"table.recoverable_lines": lines})
        extra[check.dataset].append(ExpectationOutcome(
            expectation.expectation_type, None, bool(decided["success"]), lines,
            str(decided["result"]["observed_value"]), expectation.configuration))

    delivery = None
    if rules.sample is not None:
        s = rules.sample
        expectation = ExpectSampleToMatchContract(fraction=s.fraction, max_records=s.max_records)
        decided = expectation._validate(metrics={"sample.population": s.population, "sample.size": s.size})
        outcome = ExpectationOutcome(expectation.expectation_type, None, bool(decided["success"]), None,
                                     str(decided["result"]["observed_value"]), expectation.configuration)
        delivery = ValidationSummary(dataset=DELIVERY, success=outcome.success, rows=0, expectations=(outcome,))

    ordered = [_with(summaries[r.dataset], extra[r.dataset]) for r in rules.datasets]
    for summary in ordered:
        log.info("release gate %s: success=%s, %d of %d expectations failed", summary.dataset, summary.success,
                 len(summary.failures()), len(summary.expectations))
    return DeliveryValidation(summaries=ordered, delivery=delivery, notes=list(rules.notes))
