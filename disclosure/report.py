"""What the package says about disclosure control: codebook lines and the manifest section.

Both are built from the value-free ``DisclosureResult`` (``assess.run_disclosure``), so the package
stage needs nothing else. Counts, thresholds and column names only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from disclosure.result import AggregateTable, AssessedDataset, DisclosureResult


@dataclass(frozen=True)
class TableFile:
    """An aggregate table for the package: its name there, rows, and the schema the manifest lists."""

    arcname: str
    rows: int
    schema: tuple[dict[str, Any], ...]


def manifest_section(doc: DisclosureResult | None) -> dict[str, Any]:
    """The ``disclosure`` object of manifest.json (the document itself, minus nothing: it is value-free)."""
    if not doc:
        return {"assessed": False, "note": "no disclosure assessment was recorded for this delivery"}
    return doc.to_dict()


def column_notes(doc: DisclosureResult | None, dataset: str) -> dict[str, str]:
    """Per column of a microdata dataset: what disclosure control did to it (for the codebook's table)."""
    notes: dict[str, str] = {}
    for d in doc.datasets if doc else ():
        if d.name != dataset:
            continue
        generalised = {g.column: g for g in d.treatment.generalised}
        for column in d.key:
            parts = []
            if column in generalised:
                parts.append(f"coarsened to {generalised[column].description}")
            suppressed = d.treatment.suppressed_values.get(column, 0)
            if suppressed:
                parts.append(f"{suppressed} value(s) suppressed (delivered as null)")
            if parts:
                notes[column] = "Disclosure control: " + "; ".join(parts) + "."
    return notes


def _sample_line(doc: DisclosureResult) -> list[str]:
    if not doc.sample:
        return []
    used = doc.sample.used_fraction
    return [f"- Sample: about {used:.2%} of the eligible population (fraction {used:g}); population figures "
            "below are estimates."] if used is not None else []


def _dataset_lines(d: AssessedDataset) -> list[str]:
    before, after, treatment = d.before, d.after, d.treatment
    lines = ["", f"### {d.name}", "",
             f"- Before treatment: smallest group {before.k_anonymity}, {before.records_below_k} of "
             f"{before.records} records in groups smaller than {before.k}, "
             f"{before.sample_uniques} unique.",
             f"- After treatment: smallest group {after.k_anonymity}, {after.records_below_k} records "
             f"below the threshold, average re-identification risk {round(after.average_risk, 6):.4f}."]
    for g in treatment.generalised:
        lines.append(f"- `{g.column}` coarsened to {g.description} (level {g.level} of {g.of}), "
                     "for every record.")
    if treatment.suppressed_records:
        per_column = ", ".join(f"`{c}` {n}" for c, n in treatment.suppressed_values.items() if n)
        lines.append(f"- {treatment.suppressed_records} record(s) ({treatment.suppressed_share:.2%}) had "
                     f"key values suppressed (delivered as null): {per_column}.")
    elif not treatment.generalised:
        lines.append("- No treatment was needed.")
    if after.l_diversity:
        lines.append("- Distinct sensitive values per group (smallest): "
                     + ", ".join(f"`{s}` {v}" for s, v in after.l_diversity.items()) + ".")
    population = after.population
    if population:
        lines.append(f"- Population estimates (sampling fraction {population['fraction']:g}): Skinner-Elliot "
                     f"risk measure {population['dis']}, about {population['estimated_population_uniques']} "
                     "records estimated unique in the population.")
    return lines


def _table_lines(a: AggregateTable) -> list[str]:
    grossed = a.grossed
    lines = ["", f"### Table {a.name} (`{a.file}`)", "",
             f"- Counts of {'records' if a.unit == 'record' else 'distinct ' + a.unit} in "
             f"`{a.dataset}` by " + ", ".join(f"`{b}`" for b in a.by)
             + (", with all margins (rows with `total_over` set)" if a.margins else "") + ".",
             f"- Cells with fewer than {a.threshold} units are suppressed"
             + ("; so are sums where one unit contributes more than "
                f"{a.dominance:.0%} of the cell" if any(m != "count" for m in a.measures) else "")
             + "; further cells are suppressed so that no suppressed cell can be worked out from a row or "
             "column total. Suppressed cells are empty with `suppressed` true.",
             f"- {a.cells} cells, {a.cells - a.published} suppressed.",
             f"- Counts are rounded to a multiple of {a.rounding}; totals are rounded separately, so "
             "cells need not add up to them exactly."]
    if grossed and grossed.by == "weight":
        lines.append(f"- Figures are grossed to the population with the weight column `{grossed.column}`.")
    elif grossed:
        lines.append(f"- The table is based on a sample: counts and sums are grossed to the population by "
                     f"the inverse sampling fraction (x{grossed.factor:g}), then rounded.")
    lines += ["", "| Column | Type | Meaning |", "| --- | --- | --- |"]
    lines += [f"| `{c.name}` | {c.type} | {c.description} |" for c in a.schema]
    return lines


def codebook_lines(doc: DisclosureResult | None) -> list[str]:
    """A ``## Disclosure control`` section for codebook.md (Markdown lines)."""
    lines = ["## Disclosure control", ""]
    if not doc or (not doc.assessed and not doc.aggregates):
        lines += ["No disclosure risk assessment applies to this delivery (the contract names no key "
                  "variables and no aggregate tables).", ""]
        return lines
    settings = doc.settings
    lines += _sample_line(doc)
    if settings:
        key = ", ".join(f"`{c}`" for c in settings.key)
        lines += [
            f"- Key variables (attributes a person could be recognised by): {key}.",
            f"- Threshold: every record matches at least {settings.k} records on the key variables"
            + (f", with at least {settings.l} distinct values of each sensitive attribute" if settings.l
               else "") + ". A missing (null) key value counts as matching any value.",
            f"- At most {settings.max_suppressed:.1%} of records may have a value suppressed.",
        ]
    for d in doc.datasets:
        lines += _dataset_lines(d)
    for a in doc.aggregates:
        lines += _table_lines(a)
    if doc.microdata_removed:
        lines += ["", "This delivery holds aggregate tables only; no record-level data is included."]
    lines.append("")
    return lines


def package_files(doc: DisclosureResult | None) -> list[TableFile]:
    """Extra files for the package: one per aggregate table (``data/<name>.parquet``)."""
    return [TableFile(arcname=a.file, rows=a.rows,
                      schema=tuple({"name": c.name, "type": c.type, "treatment": "aggregate"} for c in a.schema))
            for a in (doc.aggregates if doc else ())]


def microdata_included(doc: DisclosureResult | None) -> bool:
    return doc.microdata is not False if doc else True
