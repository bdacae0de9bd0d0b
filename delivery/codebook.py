"""``codebook.md``: what a package holds, in plain words, for the contractor's analysts.

Built from the contract, the source catalogue (what each table and column is: description, unit, the
meaning of codes) and the value-free hand-offs of the extract and disclosure stages: dataset and column
names, types, treatments, row counts, the population, the sample and the incremental window. Never a data
value. The format is documented in docs/formats.md; the text is stable for equal inputs.
"""

from __future__ import annotations

import datetime as dt

from contracts.catalogue import Catalogue, PopulationPlan, describe_column, population_plan
from contracts.column_treatments import Keep, Pseudonymise, Unmasked
from contracts.model import Contract
from disclosure.report import codebook_lines, column_notes, microdata_included
from disclosure.result import DisclosureResult
from extract.incremental import Window
from extract.result import ExtractResult, SampleSummary, StagedDataset


def _records_line(sample: SampleSummary | None) -> str:
    if sample is None:
        return "- Records: every record matching the contract's filters (no sampling)."
    entity = sample.entity
    share = sample.fraction_delivered
    return (f"- Records: a keyed random sample of {entity}s: {sample.sample_size} of the "
            f"{sample.population} {entity}s matching the contract's filters"
            + (f" ({share:.4%})" if share is not None else "")
            + f". Every record of a sampled {entity} is included, in every dataset; no record of any other "
            f"{entity}. The same {entity}s are drawn in every delivery of this contract"
            + (f" (requested fraction {sample.fraction_requested}" if sample.fraction_requested else " (")
            + (f", at most {sample.max_records} {entity}s)." if sample.max_records else ").")
            + f" To estimate population totals, weight each {entity} by "
            + (f"{sample.population}/{sample.sample_size}." if sample.sample_size else "(none drawn)."))


def _window_lines(windows: tuple[Window, ...] | None) -> list[str]:
    if not windows:
        return []
    if all(w.full for w in windows):
        return ["- Delivery kind: full refresh of an incremental contract (every current matching record)."]
    column = windows[0].column
    return [f"- Delivery kind: incremental: only records whose `{column}` changed since the previous delivery "
            "(window in manifest.json, extract.windows). Deleted source records cannot appear in an "
            "incremental delivery; a full refresh re-sends everything."]


def _cell(text: str) -> str:
    """Catalogue text inside a Markdown table cell (one line, no column separator)."""
    return " ".join(text.split()).replace("|", "\\|")


def _population_lines(plan: PopulationPlan | None) -> list[str]:
    if plan is None:
        return []
    restricted = ", ".join(plan.restricted)
    return [f"- Population: the {plan.entity}s selected by dataset {plan.dataset}"
            + (f"; {restricted} hold records of those {plan.entity}s only." if restricted else ".")]


def _dataset_lines(contract: Contract, ds: StagedDataset, sample: SampleSummary | None,
                   disclosure: DisclosureResult | None, catalogue: Catalogue | None = None) -> list[str]:
    dataset = contract.dataset(ds.name)
    notes = column_notes(disclosure, ds.name)
    lines = [f"## {ds.name} ({ds.rows} rows)", "", f"File `{ds.file}`.", ""]
    table = catalogue.tables.get(dataset.table) if catalogue is not None else None
    if table is not None:
        lines += [_cell(table.description), ""]
    if dataset.without_population is not None:
        lines += [f"Not restricted to the contract's population: {_cell(dataset.without_population)}", ""]
    if sample is not None:
        source_rows = sample.population_rows(ds.name)
        if source_rows is not None:
            lines += [f"{ds.rows} of {source_rows} matching records (those of the sampled "
                      f"{sample.entity}s).", ""]
    if dataset.filter:
        conditions = [f"`{col}` {op} {value}" for col, cond in dataset.filter.items()
                      for op, value in sorted(cond.operators())]
        lines += ["Records selected where " + " and ".join(conditions) + ".", ""]
    if catalogue is None:
        lines += ["| Column | Type | Treatment |", "| --- | --- | --- |"]
    else:
        lines += ["| Column | Type | Meaning | Treatment |", "| --- | --- | --- | --- |"]
    labelled: list[str] = []
    for c in ds.columns:
        note = f" {notes[c.name]}" if c.name in notes else ""
        if catalogue is None:
            lines.append(f"| `{c.name}` | {c.type} | {c.description}{note} |")
            continue
        meaning, unit, labels = describe_column(catalogue, dataset.table, c.name)
        text = _cell(meaning or "")
        if unit:
            text += f" Unit: {_cell(unit)}."
        lines.append(f"| `{c.name}` | {c.type} | {text} | {c.description}{note} |")
        # Codes keep their meaning only where the values are delivered as held.
        if labels and isinstance(dataset.columns[c.name], Keep | Unmasked):
            labelled.append(f"- `{c.name}`: " + "; ".join(f"{_cell(code)} = {_cell(label)}"
                                                           for code, label in labels.items()))
    lines.append("")
    if labelled:
        lines += ["Codes:", "", *labelled, ""]
    entity_columns = [c.name for c in ds.columns if isinstance(dataset.columns[c.name], Pseudonymise)]
    if entity_columns:
        lines += ["Pseudonymised columns: " + ", ".join(f"`{n}`" for n in entity_columns) + ".", ""]
    return lines


def render_codebook(contract: Contract, delivery_id: str, created: dt.datetime, extract: ExtractResult,
                    disclosure: DisclosureResult | None = None, catalogue: Catalogue | None = None) -> str:
    """The text of ``codebook.md`` for one delivery (``catalogue``: the source catalogue the run was authorised
    with, for what tables and columns mean)."""
    lines = [
        f"# Codebook: {contract.title}",
        "",
        f"- Contract: {contract.contract}",
        f"- Contractor: {contract.contractor}",
        f"- Delivery: {delivery_id}",
        f"- Created: {created.isoformat()}",
        f"- Linkage: {contract.linkage} — " + (
            "pseudonyms are stable across this contract's deliveries."
            if contract.linkage == "contract" else "pseudonyms are new in every delivery."),
        _records_line(extract.sample),
        *_population_lines(population_plan(contract, catalogue) if catalogue is not None else None),
        *_window_lines(extract.windows),
        "- Disclosure control: see the section 'Disclosure control' at the end.",
        "",
        "Pseudonyms of the same entity are equal across the datasets of this package, so the datasets",
        "join on them. They are unrelated to pseudonyms in any other contract's data.",
        "",
    ]
    for ds in extract.datasets if microdata_included(disclosure) else ():
        lines += _dataset_lines(contract, ds, extract.sample, disclosure, catalogue)
    lines += codebook_lines(disclosure)
    return "\n".join(lines)
