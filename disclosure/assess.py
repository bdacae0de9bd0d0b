"""The disclosure step of a delivery: aggregate tables, then risk assessment and treatment of microdata.

``run_disclosure`` works on the staging folder the extract stage filled (``extract.json`` and
``data/<dataset>.parquet``) and returns the value-free ``disclosure.json`` document (format below).
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
                     "suppressed_dominance", "suppressed_secondary", "schema": [{"name", "type", "description"}]}],
     "microdata_removed": ["claimants", ...]}

``<measures>`` is ``risk.Measures.to_dict()``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from contracts.disclosure import (
    contract_aggregates,
    delivers_microdata,
    disclosure_problems,
)
from contracts.model import Contract
from core.errors import ContractError
from disclosure.risk import build_classes, measure
from disclosure.tables import SUPPRESSED, TOTAL_OVER, build_table, write_table
from disclosure.treatment import (
    DisclosureBlocked,
    apply_plan,
    blocked_report,
    plan_treatment,
)

log = logging.getLogger(__name__)

FORMAT = "contract-extracts/disclosure/v1"

_POPULATION_KEYS = ("population", "population_size", "population_entities", "entities", "eligible")
_SIZE_KEYS = ("size", "sample_size", "sampled", "sample_entities", "selected", "drawn")
_FRACTION_KEYS = ("fraction", "fraction_requested", "sampling_fraction")


def _first_number(data: dict, names: tuple[str, ...]) -> float | None:
    for name in names:
        value = data.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return value
    return None


def sample_info(state: dict, dataset: dict | None = None) -> dict | None:
    """The sample the extract stage drew, read defensively from ``extract.json`` (absent: a 100% extract).

    Accepts a ``sample`` object on the dataset or at the top level with a population size, a sample
    size and/or a fraction under the usual names. ``used_fraction`` is the realised fraction
    (size/population) when both sizes are known, else the configured fraction.
    """
    raw = (dataset or {}).get("sample") if isinstance((dataset or {}).get("sample"), dict) else state.get("sample")
    if not isinstance(raw, dict):
        return None
    population = _first_number(raw, _POPULATION_KEYS)
    size = _first_number(raw, _SIZE_KEYS)
    fraction = _first_number(raw, _FRACTION_KEYS)
    used = size / population if population and size is not None and population > 0 else fraction
    if used is None:
        return None
    used = min(max(float(used), 0.0), 1.0)
    return {"fraction": fraction, "population": population, "size": size, "used_fraction": round(used, 8)}


def _fraction(sample: dict | None) -> float | None:
    if not sample:
        return None
    used = sample["used_fraction"]
    return used if 0 < used < 1 else None


def check_contract(contract: Contract, file: str | None = None) -> None:
    """Fail closed on disclosure settings the model could not check (until ``Contract`` calls it)."""
    problems = disclosure_problems(contract)
    if problems:
        key, message = problems[0]
        raise ContractError(message, file=file, key=key, fix="see docs/disclosure.md")


def _describe_aggregate_column(name: str, summary: dict) -> str:
    if name == TOTAL_OVER:
        return ("Dimensions this row is summed over, comma-separated; empty for an inner cell. Those "
                "dimensions are empty (null) in the row.")
    if name == SUPPRESSED:
        return "True when the cell is withheld for disclosure control (its measures are null)."
    grossed = summary["grossed"]
    gross = ""
    if grossed and grossed["by"] == "weight":
        gross = f" Grossed with weight column `{grossed['column']}`."
    elif grossed:
        gross = f" Grossed to the population by the inverse sampling fraction (x{grossed['factor']:g})."
    if name == "count":
        what = "Number of records" if summary["unit"] == "record" else f"Number of distinct `{summary['unit']}`"
        return f"{what} in the cell.{gross} Rounded to a multiple of {summary['rounding']}."
    kind, _, column = name.partition("_")
    if kind == "sum":
        return f"Sum of `{column}` in the cell.{gross} Rounded to 2 decimals."
    if kind == "mean":
        return f"Mean of `{column}` over the cell's non-empty values. Rounded to 2 decimals."
    return f"Dimension `{name}`."


def run_disclosure(contract: Contract, staging: Path, state: dict, *, batch_rows: int = 250_000,
                   contract_file: str | None = None) -> dict:
    """Build aggregates, assess and treat microdata; return the ``disclosure.json`` document."""
    check_contract(contract, contract_file)
    microdata = delivers_microdata(contract)
    aggregates = contract_aggregates(contract)
    disclosure = contract.disclosure
    sample = sample_info(state)
    datasets = {d["name"]: d for d in state["datasets"]}
    doc: dict[str, Any] = {
        "format": FORMAT, "success": True, "microdata": microdata, "sample": sample,
        "assessed": bool(disclosure and (disclosure.key_columns) and microdata),
        "settings": None, "datasets": [], "not_assessed": [], "aggregates": [], "microdata_removed": [],
    }

    # 1. Aggregate tables, from the masked (untreated) microdata.
    for agg in aggregates:
        source = datasets.get(agg.dataset)
        if source is None:
            raise ContractError(f"aggregate {agg.name!r} needs dataset {agg.dataset!r}, which was not extracted",
                                key=f"aggregates.{agg.name}.dataset")
        fraction = _fraction(sample_info(state, source))
        result = build_table(staging / source["file"], agg, fraction=fraction, batch_rows=batch_rows)
        file = f"data/{agg.name}.parquet"
        write_table(result, staging / file)
        summary = dict(result.summary)
        summary["file"] = file
        summary["schema"] = [{"name": f.name, "type": str(f.type),
                              "description": _describe_aggregate_column(f.name, summary)}
                             for f in result.table.schema]
        doc["aggregates"].append(summary)
        log.info("aggregate %s: %d cells, %d published, %d suppressed (%d small, %d dominance, %d secondary)",
                 agg.name, summary["cells"], summary["published"],
                 summary["cells"] - summary["published"], summary["suppressed_small"],
                 summary["suppressed_dominance"], summary["suppressed_secondary"])

    # 2. Microdata: assess, plan every dataset first (nothing is rewritten if any is blocked), apply.
    if microdata and disclosure is not None and disclosure.key_columns:
        doc["settings"] = {
            "k": disclosure.k, "l": disclosure.l, "max_suppressed": disclosure.ceiling,
            "generalise": disclosure.may_generalise, "quasi_identifiers": list(disclosure.quasi_identifiers),
            "contractor_holds": list(disclosure.contractor_holds), "sensitive": disclosure.sensitive_columns,
            "key": disclosure.key_columns,
        }
        planned = []
        for ds in state["datasets"]:
            dataset = contract.dataset(ds["name"])
            key = [c for c in disclosure.key_columns if c in dataset.columns]
            sensitive = [c for c in disclosure.sensitive_columns if c in dataset.columns]
            if not key:
                doc["not_assessed"].append({"name": ds["name"], "reason": "no key variable in this dataset"})
                continue
            path = staging / ds["file"]
            fraction = _fraction(sample_info(state, ds))
            base = build_classes(path, key, sensitive, batch_rows=batch_rows)
            level = disclosure.l if sensitive else None
            before = measure(base, disclosure.k, l=level, fraction=fraction)
            plan = plan_treatment(base, k=disclosure.k, l=level, ceiling=disclosure.ceiling,
                                  hierarchies=disclosure.hierarchies, may_generalise=disclosure.may_generalise)
            if not plan.within_ceiling:
                report = blocked_report(ds["name"], base, plan)
                report["before"] = before.to_dict()
                doc["success"] = False
                doc["blocked"] = report
                raise DisclosureBlocked(_blocked_message(ds["name"], plan, report), report=doc)
            after = measure(plan.suppression.classes, disclosure.k, l=level, fraction=fraction)
            planned.append((ds, path, base, plan, before, after, key, sensitive))
        for ds, path, base, plan, before, after, key, sensitive in planned:
            rows = apply_plan(path, plan, base, batch_rows=batch_rows)
            if rows != ds["rows"]:
                raise DisclosureBlocked(f"dataset {ds['name']}: {rows} rows after treatment, {ds['rows']} extracted")
            doc["datasets"].append({
                "name": ds["name"], "file": ds["file"], "rows": rows, "key": key, "sensitive": sensitive,
                "before": before.to_dict(), "after": after.to_dict(), "treatment": plan.summary(),
                "changed": plan.changes_data,
            })
            log.info("disclosure %s: k-anonymity %s -> %s (k=%d), %d records below k before, %d records with a "
                     "suppressed value, generalised %s", ds["name"], before.k_anonymity, after.k_anonymity,
                     disclosure.k, before.records_below_k, plan.suppression.records,
                     [f"{g['column']}@{g['level']}" for g in plan.summary()["generalised"]] or "nothing")
    elif microdata and disclosure is not None:
        doc["not_assessed"] = [{"name": ds["name"], "reason": "the contract names no key variables"}
                               for ds in state["datasets"]]

    # 3. Aggregates only: the microdata files go (after the tables were built from them).
    if not microdata:
        for ds in state["datasets"]:
            (staging / ds["file"]).unlink(missing_ok=True)
            doc["microdata_removed"].append(ds["name"])
    return doc


def _blocked_message(dataset: str, plan: Any, report: dict) -> str:
    drivers = ", ".join(f"{d['column']} ({d['records_below_k_without_it']} records below k without it)"
                        for d in report["drivers"][:3])
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


def ledger_details(doc: dict) -> dict:
    """The value-free summary for the ``disclosure_assessed`` ledger record."""
    out: dict[str, Any] = {"success": doc.get("success", True), "microdata": doc.get("microdata", True),
                           "sample_fraction": (doc.get("sample") or {}).get("used_fraction")}
    if doc.get("settings"):
        s = doc["settings"]
        out["settings"] = {"k": s["k"], "l": s["l"], "max_suppressed": s["max_suppressed"], "key": s["key"],
                           "sensitive": s["sensitive"], "generalise": s["generalise"]}
    out["datasets"] = [{
        "name": d["name"], "rows": d["rows"],
        "k_anonymity_before": d["before"]["k_anonymity"], "k_anonymity_after": d["after"]["k_anonymity"],
        "records_below_k_before": d["before"]["records_below_k"],
        "records_below_k_after": d["after"]["records_below_k"],
        "sample_uniques_before": d["before"]["sample_uniques"],
        "average_risk_after": d["after"]["average_risk"],
        "l_diversity_after": d["after"]["l_diversity"],
        "suppressed_records": d["treatment"]["suppressed_records"],
        "suppressed_values": d["treatment"]["suppressed_values"],
        "generalised": [{"column": g["column"], "level": g["level"]} for g in d["treatment"]["generalised"]],
    } for d in doc.get("datasets", [])]
    if doc.get("not_assessed"):
        out["not_assessed"] = doc["not_assessed"]
    out["aggregates"] = [{k: a[k] for k in ("name", "dataset", "cells", "published", "suppressed_small",
                                            "suppressed_dominance", "suppressed_secondary", "threshold",
                                            "rounding")} for a in doc.get("aggregates", [])]
    if doc.get("microdata_removed"):
        out["microdata_removed"] = doc["microdata_removed"]
    if doc.get("blocked"):
        b = doc["blocked"]
        out["blocked"] = {k: b[k] for k in ("dataset", "k", "l", "records", "ceiling", "suppression_needed_records",
                                             "suppression_needed_share", "feasible", "drivers")}
    return out
