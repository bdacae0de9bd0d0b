"""The disclosure step of a delivery: aggregate tables, then risk assessment and treatment of microdata.

``run_disclosure`` works on the staging folder the extract stage filled (``ExtractResult`` and
``data/<dataset>.parquet``) and returns a ``disclosure.result.DisclosureResult``, whose ``to_dict`` is
the value-free ``disclosure.json`` document (format below).
It rewrites a dataset's Parquet file only when treatment changes it, and writes aggregate tables as
``data/<aggregate>.parquet``. With ``microdata: false`` it removes the microdata files after the
tables are built, so they cannot be packaged. When a dataset cannot be treated within the contract's
ceiling it raises ``DisclosureBlocked`` (nothing is rewritten) with a report naming the drivers.

Framework-free: no Airflow, no Great Expectations.

``disclosure.json`` (``FORMAT``)::

    {"format": "contract-extracts/disclosure/v1", "success": true, "assessed": true, "microdata": true,
     "sample": {"fraction": 0.1, "population": 4000, "size": 400, "used_fraction": 0.1} | null,
     "settings": {"k", "l", "max_suppressed", "generalise", "quasi_identifiers", "contractor_holds",
                  "sensitive", "key"} | null,
     "datasets": [{"name", "file", "rows", "key", "sensitive", "before": <measures>, "after": <measures>,
                   "treatment": {"generalised": [{"column", "level", "of", "description"}], "steps": [...],
                                 "suppressed_records", "suppressed_share", "suppressed_values": {col: n},
                                 "suppression_rounds", "ceiling", "feasible"},
                   "changed": bool}],
     "not_assessed": [{"name", "reason"}],
     "aggregates": [{"name", "file", "rows", "dataset", "by", "unit", "measures", "margins", "threshold",
                     "rounding", "dominance", "grossed", "cells", "published", "suppressed_small",
                     "suppressed_dominance", "suppressed_secondary", "schema": [{"name", "type", "description"}],
                     "protection", "count_rounding", "ptable", "interval_audit", "information_loss"}],
     "microdata_removed": ["claimants", ...],
     "risk_report": {"datasets": [...], "tables": [...], "not_assessed": [...]}}

``<measures>`` is ``risk.Measures.to_dict()`` (with ``true_key``: the view of an intruder who knows the targets'
real key values). The manifest carries the document without the realised information loss
(``DisclosureResult.to_dict(recipient=True)``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from contracts.disclosure import (
    Aggregate,
    contract_aggregates,
    delivers_microdata,
    disclosure_problems,
)
from contracts.model import Contract
from core.errors import ContractError
from disclosure.ptable import PTable
from disclosure.result import (
    FORMAT,
    AggregateTable,
    AssessedDataset,
    BlockedDataset,
    DisclosureResult,
    DisclosureSettings,
    Grossing,
    InformationLoss,
    NotAssessed,
    SampleFraction,
    TableColumn,
)
from disclosure.risk import Classes, Measures, build_classes, measure
from disclosure.tables import SUPPRESSED, TOTAL_OVER, TableResult, build_tables, write_table
from disclosure.treatment import (
    DisclosureBlocked,
    Plan,
    apply_plan,
    blocked_report,
    plan_treatment,
    statistics_written,
)
from extract.result import ExtractResult, SampleSummary, StagedDataset
from masking.record_keys import is_record_key_column

log = logging.getLogger(__name__)

__all__ = ["FORMAT", "check_contract", "ledger_details", "run_disclosure", "sample_fraction", "sample_info"]

_POPULATION_KEYS = ("population", "population_size", "population_entities", "entities", "eligible")
_SIZE_KEYS = ("size", "sample_size", "sampled", "sample_entities", "selected", "drawn")
_FRACTION_KEYS = ("fraction", "fraction_requested", "sampling_fraction")


def _first_number(data: Mapping[str, Any], names: tuple[str, ...]) -> float | None:
    for name in names:
        value = data.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return value
    return None


def _realised(fraction: float | None, population: float | None, size: float | None) -> SampleFraction | None:
    """``used_fraction`` is the realised fraction (size/population) when both sizes are known, else ``fraction``."""
    used = size / population if population and size is not None and population > 0 else fraction
    if used is None:
        return None
    used = min(max(float(used), 0.0), 1.0)
    return SampleFraction(fraction=fraction, population=population, size=size, used_fraction=round(used, 8))


def sample_fraction(sample: SampleSummary | None) -> SampleFraction | None:
    """The sample the extract drew, as the disclosure measures use it (None: a 100% extract)."""
    if sample is None:
        return None
    return _realised(sample.fraction_requested, sample.population, sample.sample_size)


def sample_info(state: Mapping[str, Any], dataset: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """``sample_fraction`` read defensively from an ``extract.json`` object (absent: a 100% extract).

    Accepts a ``sample`` object on the dataset or at the top level with a population size, a sample
    size and/or a fraction under the usual names.
    """
    own = (dataset or {}).get("sample")
    raw = own if isinstance(own, dict) else state.get("sample")
    if not isinstance(raw, dict):
        return None
    found = _realised(_first_number(raw, _FRACTION_KEYS), _first_number(raw, _POPULATION_KEYS),
                      _first_number(raw, _SIZE_KEYS))
    return None if found is None else found.to_dict()


def _fraction(sample: SampleFraction | None) -> float | None:
    if not sample:
        return None
    used = sample.used_fraction
    return used if 0 < used < 1 else None


def check_contract(contract: Contract, file: str | None = None) -> None:
    """Fail closed on disclosure settings the model could not check (until ``Contract`` calls it)."""
    problems = disclosure_problems(contract)
    if problems:
        key, message = problems[0]
        raise ContractError(message, file=file, key=key, fix="see docs/disclosure.md")


def _describe_aggregate_column(name: str, unit: str, rounding: int, grossed: Grossing | None,
                               cell_key: bool = False) -> str:
    if name == TOTAL_OVER:
        return ("Dimensions this row is summed over, comma-separated; empty for an inner cell. Those "
                "dimensions are empty (null) in the row.")
    if name == SUPPRESSED:
        return ("Always false: cell-key tables withhold nothing." if cell_key else
                "True when the cell is withheld for disclosure control (its measures are null).")
    gross = ""
    if grossed and grossed.by == "weight":
        gross = f" Grossed with weight column `{grossed.column}`."
    elif grossed:
        gross = f" Grossed to the population by the inverse sampling fraction (x{grossed.factor:g})."
    if name == "count":
        what = "Number of records" if unit == "record" else f"Number of distinct `{unit}`"
        if cell_key:
            return (f"{what} in the cell, perturbed by the cell-key method (small noise from the published ptable; "
                    f"no 1s or 2s; cells perturbed to 0 are left out).{gross}")
        return f"{what} in the cell.{gross} Rounded to a multiple of {rounding}."
    kind, _, column = name.partition("_")
    if kind == "sum":
        return f"Sum of `{column}` in the cell.{gross} Rounded to 2 decimals."
    if kind == "mean":
        return (f"Mean of `{column}`: the cell's published sum of `{column}` divided by its number of non-empty "
                f"values{' (grossed)' if grossed else ''} rounded to a multiple of {rounding}. Rounded to 2 decimals.")
    return f"Dimension `{name}`."


def _aggregate_table(result: TableResult, file: str) -> AggregateTable:
    """The typed summary of a built table (``tables.build_table``'s value-free ``summary``)."""
    s = result.summary
    grossed = None if s["grossed"] is None else Grossing.from_dict(s["grossed"])
    cell_key = s["protection"] == "cell_key"
    return AggregateTable(
        name=s["name"], dataset=s["dataset"], by=tuple(s["by"]), unit=s["unit"], measures=tuple(s["measures"]),
        margins=s["margins"], threshold=s["threshold"], rounding=s["rounding"], dominance=s["dominance"],
        grossed=grossed, cells=s["cells"], published=s["published"], suppressed_small=s["suppressed_small"],
        suppressed_dominance=s["suppressed_dominance"], suppressed_secondary=s["suppressed_secondary"],
        rows=s["rows"], file=file,
        schema=tuple(TableColumn(name=f.name, type=str(f.type),
                                 description=_describe_aggregate_column(f.name, s["unit"], s["count_rounding"],
                                                                        grossed, cell_key))
                     for f in result.table.schema),
        protection=s["protection"], count_rounding=None if cell_key else s["count_rounding"],
        ptable=None if s["ptable"] is None else PTable.from_dict(s["ptable"]),
        information_loss=InformationLoss.from_dict(s["information_loss"]), interval_audit=s["interval_audit"])


def _write_aggregate(agg: Aggregate, result: TableResult, staging: Path) -> AggregateTable:
    file = f"data/{agg.name}.parquet"
    write_table(result, staging / file)
    table = _aggregate_table(result, file)
    if table.protection == "cell_key":
        log.info("aggregate %s: %d cells, perturbed by cell key; %d published (the others were perturbed to 0)",
                 agg.name, table.cells, table.published)
    else:
        log.info("aggregate %s: %d cells, %d published, %d suppressed (%d small, %d dominance, %d secondary)",
                 agg.name, table.cells, table.published, table.cells - table.published, table.suppressed_small,
                 table.suppressed_dominance, table.suppressed_secondary)
    return table


def run_disclosure(contract: Contract, staging: Path, extract: ExtractResult, *, batch_rows: int = 250_000,
                   contract_file: str | None = None, catalogued_keys: Sequence[str] = ()) -> DisclosureResult:
    """Build aggregates, assess and treat microdata; return the ``disclosure.json`` document.

    ``catalogued_keys``: the delivered columns the source catalogue classes quasi-identifier. A contract without
    ``disclosure`` delivers them unassessed; the risk report says so, per dataset, by column name.
    """
    check_contract(contract, contract_file)
    microdata = delivers_microdata(contract)
    disclosure = contract.disclosure
    sample = sample_fraction(extract.sample)
    fraction = _fraction(sample)
    assessed = bool(disclosure and (disclosure.key_columns) and microdata)

    # 1. Aggregate tables, from the masked (untreated) microdata.
    #    Tables of one dataset are protected together (an intruder combines them: tables.build_tables).
    specs: list[tuple[Path, Aggregate]] = []
    for agg in contract_aggregates(contract):
        source = extract.dataset(agg.dataset)
        if source is None:
            raise ContractError(f"aggregate {agg.name!r} needs dataset {agg.dataset!r}, which was not extracted",
                                key=f"aggregates.{agg.name}.dataset")
        specs.append((staging / source.file, agg))
    results = build_tables(specs, fraction=fraction, batch_rows=batch_rows)
    aggregates = [_write_aggregate(agg, result, staging) for (_path, agg), result in zip(specs, results, strict=True)]

    # 2. Microdata: assess, plan every dataset first (nothing is rewritten if any is blocked), apply.
    settings = None
    datasets: list[AssessedDataset] = []
    not_assessed: list[NotAssessed] = []
    if microdata and disclosure is not None and disclosure.key_columns:
        settings = DisclosureSettings(
            k=disclosure.k, l=disclosure.l, max_suppressed=disclosure.ceiling,
            generalise=disclosure.may_generalise, quasi_identifiers=tuple(disclosure.quasi_identifiers),
            contractor_holds=tuple(disclosure.contractor_holds), sensitive=tuple(disclosure.sensitive_columns),
            key=tuple(disclosure.key_columns),
        )
        planned: list[tuple[StagedDataset, Plan, Any, Measures, Measures, list[str], list[str]]] = []
        for ds in extract.datasets:
            dataset = contract.dataset(ds.name)
            key = [c for c in disclosure.key_columns if c in dataset.columns]
            sensitive = [c for c in disclosure.sensitive_columns if c in dataset.columns]
            if not key:
                not_assessed.append(NotAssessed(name=ds.name, reason="no key variable in this dataset"))
                continue
            base = build_classes(staging / ds.file, key, sensitive, batch_rows=batch_rows)
            level = disclosure.l if sensitive else None
            before = measure(base, disclosure.k, l=level, fraction=fraction, real=base.codes)
            plan = plan_treatment(base, k=disclosure.k, l=level, ceiling=disclosure.ceiling,
                                  hierarchies=disclosure.hierarchies, may_generalise=disclosure.may_generalise)
            if not plan.within_ceiling:
                report = blocked_report(ds.name, plan, before)
                blocked = DisclosureResult(success=False, microdata=microdata, sample=sample, assessed=assessed,
                                           settings=settings, not_assessed=tuple(not_assessed),
                                           aggregates=tuple(aggregates), blocked=report)
                raise DisclosureBlocked(_blocked_message(ds.name, plan, report), report=blocked)
            after = measure(plan.suppression.classes, disclosure.k, l=level, fraction=fraction,
                            real=plan.suppression.real)
            if after.enforced_records_below_k or after.enforced_records_below_l:  # fail closed: never expected
                raise DisclosureBlocked(f"dataset {ds.name}: treatment left {after.enforced_records_below_k} "
                                        f"record(s) below k={disclosure.k}; nothing is delivered")
            planned.append((ds, plan, base, before, after, key, sensitive))
        for ds, plan, base, before, after, key, sensitive in planned:
            written: dict[str, Any] = {}
            rows = apply_plan(staging / ds.file, plan, base, batch_rows=batch_rows,
                              drop_columns=_staging_only(staging / ds.file), written_pairs=written)
            if rows != ds.rows:
                raise DisclosureBlocked(f"dataset {ds.name}: {rows} rows after treatment, {ds.rows} extracted")
            if written:  # l-diversity as written: a class split into parts shows only its parts' own values
                published = plan.suppression.classes
                after = measure(Classes(published.key, published.dictionaries, published.codes, published.counts,
                                        written), disclosure.k, l=disclosure.l if sensitive else None,
                                fraction=fraction, real=plan.suppression.real)
                if after.enforced_records_below_k or after.enforced_records_below_l:
                    raise DisclosureBlocked(f"dataset {ds.name}: treatment left records below the threshold; "
                                            "nothing is delivered")
            treatment = plan.summary()
            datasets.append(AssessedDataset(name=ds.name, file=ds.file, rows=rows, key=tuple(key),
                                            sensitive=tuple(sensitive), before=before, after=after,
                                            treatment=treatment, changed=plan.changes_data))
            log.info("disclosure %s: k-anonymity %s -> %s with nulls as wildcards, %s -> %s for an intruder who knows "
                     "the targets' key values (k=%d); %d records below k before, %d records with a suppressed value, "
                     "generalised %s", ds.name, before.k_anonymity, after.k_anonymity,
                     before.enforced_k_anonymity, after.enforced_k_anonymity, disclosure.k,
                     before.enforced_records_below_k, plan.suppression.records,
                     [f"{g.column}@{g.level}" for g in treatment.generalised] or "nothing")
    elif microdata and disclosure is not None:
        not_assessed = [NotAssessed(name=ds.name, reason="the contract names no key variables")
                        for ds in extract.datasets]
    elif microdata:
        for ds in extract.datasets:
            uncontrolled = [c for c in catalogued_keys if c in contract.dataset(ds.name).columns]
            if uncontrolled:
                not_assessed.append(NotAssessed(
                    name=ds.name, reason=f"the contract has no 'disclosure:' block; catalogued quasi-identifiers "
                                         f"{', '.join(uncontrolled)} are delivered without a risk assessment"))

    # 3. Aggregates only: the microdata files go (after the tables were built from them). Otherwise no staging-only
    #    column (record keys for cell-key tables) may stay in a delivered file.
    removed: list[str] = []
    if not microdata:
        for ds in extract.datasets:
            (staging / ds.file).unlink(missing_ok=True)
            removed.append(ds.name)
    else:
        for ds in extract.datasets:
            hidden = _staging_only(staging / ds.file)
            if hidden:
                strip_columns(staging / ds.file, hidden, batch_rows=batch_rows)
    return DisclosureResult(success=True, microdata=microdata, sample=sample, assessed=assessed, settings=settings,
                            datasets=tuple(datasets), not_assessed=tuple(not_assessed), aggregates=tuple(aggregates),
                            microdata_removed=tuple(removed))


def _staging_only(path: Path) -> tuple[str, ...]:
    """The columns of a staged file that exist for the stages only (record keys), never for delivery."""
    return tuple(name for name in pq.read_schema(path).names if is_record_key_column(name)) if path.exists() else ()


def strip_columns(path: Path, columns: tuple[str, ...], *, batch_rows: int = 250_000) -> None:
    """Rewrite ``path`` without ``columns`` (streaming; row order and statistics settings kept)."""
    tmp = path.with_name(path.name + ".stripping")
    parquet = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)
    keep = [f.name for f in parquet.schema_arrow if f.name not in columns]
    schema = pa.schema([parquet.schema_arrow.field(n) for n in keep])
    try:
        statistics = [c for c in statistics_written(parquet.metadata) if c not in columns]
        with pq.ParquetWriter(tmp, schema, compression="zstd", write_statistics=statistics) as writer:
            rows = 0
            for batch in parquet.iter_batches(batch_size=batch_rows, columns=keep, use_pandas_metadata=False):
                writer.write_batch(batch)
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


def _blocked_message(dataset: str, plan: Plan, report: BlockedDataset) -> str:
    drivers = ", ".join(f"{d.column} ({d.records_below_k_without_it} records below k without it)"
                        for d in report.drivers[:3])
    if not plan.suppression.feasible:
        reason = "no amount of suppression reaches the threshold (the dataset is too small)"
    else:
        reason = (f"{plan.suppression.records} of {plan.records} records ({plan.share:.1%}) would need a "
                  f"suppressed value, above the ceiling of {plan.ceiling:.1%}")
    threshold = f"k={plan.k}" + (f", l={plan.l}" if plan.l else "")
    return (f"disclosure control blocked dataset {dataset}: it cannot be made safe for {threshold} within the "
            f"contract's limits: {reason}. The risk is driven by: {drivers}. Nothing is delivered. Fix: add or "
            "coarsen generalisation hierarchies (disclosure.hierarchies with generalise: true), drop key "
            "variables from the contract, or deliver aggregates instead")


def ledger_details(doc: DisclosureResult) -> dict[str, Any]:
    """The value-free summary for the ``disclosure_assessed`` ledger record."""
    out: dict[str, Any] = {"success": doc.success, "microdata": doc.microdata,
                           "sample_fraction": doc.sample.used_fraction if doc.sample else None}
    if doc.settings:
        s = doc.settings
        out["settings"] = {"k": s.k, "l": s.l, "max_suppressed": s.max_suppressed, "key": list(s.key),
                           "sensitive": list(s.sensitive), "generalise": s.generalise}
    out["datasets"] = [{
        "name": d.name, "rows": d.rows,
        "k_anonymity_before": d.before.k_anonymity, "k_anonymity_after": d.after.k_anonymity,
        "k_anonymity_true_key_before": d.before.enforced_k_anonymity,
        "k_anonymity_true_key_after": d.after.enforced_k_anonymity,
        "records_below_k_before": d.before.records_below_k,
        "records_below_k_after": d.after.records_below_k,
        "records_below_k_true_key_after": d.after.enforced_records_below_k,
        "sample_uniques_before": d.before.sample_uniques,
        "average_risk_after": round(d.after.average_risk, 6),
        "l_diversity_after": dict(d.after.l_diversity),
        "suppressed_records": d.treatment.suppressed_records,
        "suppressed_values": dict(d.treatment.suppressed_values),
        "generalised": [{"column": g.column, "level": g.level} for g in d.treatment.generalised],
    } for d in doc.datasets]
    if doc.not_assessed:
        out["not_assessed"] = [n.to_dict() for n in doc.not_assessed]
    out["aggregates"] = [{"name": a.name, "dataset": a.dataset, "cells": a.cells, "published": a.published,
                          "suppressed_small": a.suppressed_small, "suppressed_dominance": a.suppressed_dominance,
                          "suppressed_secondary": a.suppressed_secondary, "threshold": a.threshold,
                          "rounding": a.rounding, "protection": a.protection, "count_rounding": a.count_rounding,
                          "interval_audit": a.interval_audit} for a in doc.aggregates]
    if doc.microdata_removed:
        out["microdata_removed"] = list(doc.microdata_removed)
    if doc.blocked:
        b = doc.blocked
        out["blocked"] = {"dataset": b.dataset, "k": b.k, "l": b.l, "records": b.records, "ceiling": b.ceiling,
                          "suppression_needed_records": b.suppression_needed_records,
                          "suppression_needed_share": b.suppression_needed_share, "feasible": b.feasible,
                          "drivers": [d.to_dict() for d in b.drivers]}
    return out
