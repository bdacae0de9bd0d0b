"""What the package says about disclosure control: codebook lines and the manifest section.

Both are built from the value-free ``DisclosureResult`` (``assess.run_disclosure``), so the package
stage needs nothing else. Counts, thresholds and column names only.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.errors import ContractExtractsError
from disclosure.result import AggregateTable, AssessedDataset, DisclosureResult, RiskReport, RiskView


@dataclass(frozen=True)
class TableFile:
    """An aggregate table for the package: its name there, rows, and the schema the manifest lists."""

    arcname: str
    rows: int
    schema: tuple[dict[str, Any], ...]


def manifest_section(doc: DisclosureResult | None) -> dict[str, Any]:
    """The ``disclosure`` object of manifest.json: the document as a recipient may see it (value-free; realised
    information loss, measured on the table's own cells, stays with the operator)."""
    if not doc:
        return {"assessed": False, "note": "no disclosure assessment was recorded for this delivery"}
    return doc.to_dict(recipient=True)


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
    if after.true_key is not None:
        t = after.true_key
        lines.append(f"- For an intruder who knows a person's real key values (a suppressed value matches anything, "
                     f"a real missing value only a suppressed one): every person has at least {t.k_anonymity} "
                     f"candidate records, {t.records_below_k} records below the threshold, average risk "
                     f"{round(t.average_risk, 6):.4f}.")
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
             + (", with all margins (rows with `total_over` set)" if a.margins else "") + "."]
    if a.protection == "cell_key" and a.ptable is not None:
        p = a.ptable
        lines += [f"- Protected by cell-key perturbation: every count has small noise added (at most {p.max_noise}, "
                  f"zero on average; about {p.perturbed_share:.0%} of larger counts change), decided by a key made "
                  "from the people in the cell, so the same cell gets the same noise in every release. No count "
                  f"between 1 and {p.smallest - 1} is published; cells perturbed to 0 are left out. Totals are "
                  "perturbed separately and need not add up. The perturbation table is in the manifest.",
                  f"- {a.cells} cells, {a.published} published."]
    else:
        base = a.count_rounding or a.rounding
        lines += [f"- Cells with fewer than {a.threshold} units are suppressed"
                  + ("; so are sums where one unit contributes more than "
                     f"{a.dominance:.0%} of the cell" if any(m != "count" for m in a.measures) else "")
                  + "; further cells are suppressed so that every row and column with a suppressed cell has at "
                  f"least two, together holding at least {a.threshold} units. Suppressed cells are empty with "
                  "`suppressed` true.",
                  f"- {a.cells} cells, {a.cells - a.published} suppressed.",
                  f"- Counts are rounded to a multiple of {base}; totals are rounded separately, so "
                  "cells need not add up to them exactly."
                  + (" Means are the published sum divided by the rounded number of values, so they add no "
                     "precision to the counts." if any(m.startswith("mean_") for m in a.measures) else "")]
    if a.information_loss is not None:
        loss = a.information_loss
        lines.append(f"- Expected deviation of a published count from the true one: about "
                     f"{loss.expected_absolute_deviation:g} (at most {loss.max_absolute_deviation:g}).")
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
    lines += risk_report_lines(doc)
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


# ---- the risk report (manifest, codebook, operator's report) ----------------------------------------------------


def _k(view: RiskView | None) -> str:
    return "-" if view is None or view.k_anonymity is None else str(view.k_anonymity)


def _l(view: RiskView | None) -> str:
    if view is None or not view.l_diversity:
        return "-"
    return ", ".join(f"{s} {v}" for s, v in view.l_diversity.items())


def risk_rows(report: RiskReport, *, recipient: bool = True) -> tuple[list[list[str]], list[list[str]]]:
    """The report as two tables of text cells: (datasets, tables), each with its header row first."""
    datasets = [["Dataset", "Key", "k required", "k (nulls as wildcards)", "k (intruder knows the person)",
                 "l (wildcards)", "l (intruder)", "Unique before treatment", "Records with a suppressed value",
                 "Suppressed values", "Generalised"]]
    for d in report.datasets:
        datasets.append([d.name, ", ".join(d.key), str(d.k) + (f", l {d.l}" if d.l else ""), _k(d.wildcard),
                         _k(d.true_key), _l(d.wildcard), _l(d.true_key), str(d.uniques_before),
                         str(d.suppressed_records),
                         ", ".join(f"{c} {n}" for c, n in d.suppressed_values.items() if n) or "none",
                         "; ".join(d.generalised) or "none"])
    tables = [["Table", "Protection", "Cells", "Published", "Withheld", "Expected deviation",
               "Max deviation", *([] if recipient else ["Mean absolute deviation (all cells)",
                                                        "Mean absolute deviation (published)"])]]
    for t in report.tables:
        loss = t.information_loss
        method = ("cell-key perturbation" if t.protection == "cell_key"
                  else f"suppression, counts rounded to {t.count_rounding}")
        row = [t.name, method, str(t.cells), str(t.published), str(loss.withheld if loss else t.suppressed),
               f"{loss.expected_absolute_deviation:g}" if loss else "-",
               f"{loss.max_absolute_deviation:g}" if loss else "-"]
        if not recipient:
            row += [f"{loss.realised_mean_absolute_deviation:g}" if loss and loss.realised_mean_absolute_deviation
                    is not None else "-",
                    f"{loss.realised_mean_absolute_deviation_published:g}"
                    if loss and loss.realised_mean_absolute_deviation_published is not None else "-"]
        tables.append(row)
    return datasets, tables


def risk_report_lines(doc: DisclosureResult | None) -> list[str]:
    """A ``### Risk summary`` for the codebook: what the recipient may see of the risk report (Markdown)."""
    if not doc or (not doc.datasets and not doc.aggregates):
        return []
    datasets, tables = risk_rows(doc.risk_report(), recipient=True)
    lines = ["", "### Risk summary", ""]
    for rows in (datasets, tables):
        if len(rows) > 1:
            lines += ["| " + " | ".join(rows[0]) + " |", "|" + " --- |" * len(rows[0])]
            lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows[1:]]
            lines.append("")
    return lines


def risk_report_html(document: Mapping[str, Any]) -> str:
    """The operator's risk report as an HTML fragment, from ``disclosure.json`` (escaped; counts only)."""
    try:
        doc = DisclosureResult.from_dict(document)
    except (ContractExtractsError, KeyError, TypeError, ValueError):
        return "<p>The disclosure document could not be read; see disclosure.json.</p>"
    datasets, tables = risk_rows(doc.risk_report(), recipient=False)
    parts = ["<h2>Disclosure risk</h2>"]
    if doc.blocked is not None:
        b = doc.blocked
        parts.append(f"<p>Blocked: dataset {html.escape(b.dataset)} could not be made safe for k={b.k} "
                     f"({b.suppression_needed_records} of {b.records} records would need a suppressed value; "
                     f"ceiling {b.ceiling:.1%}).</p>")
    for title, rows in (("Datasets", datasets), ("Tables", tables)):
        if len(rows) < 2:
            continue
        head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows[1:])
        parts.append(f"<h3>{title}</h3><table border=\"1\" cellpadding=\"4\"><tr>{head}</tr>{body}</table>")
    if doc.not_assessed:
        parts.append("<p>Not assessed: " + html.escape(", ".join(f"{n.name} ({n.reason})" for n in doc.not_assessed))
                     + "</p>")
    return "".join(parts)
