"""The release gate's rules, derived from the contract and the staging hand-over files (never from data).

* Columns: the contract's allow-list in order, with the Arrow types the extract recorded; pseudonym
  format; not-null where the source column is NOT NULL.
* Entity keys: a pseudonymised column whose source column is unique (``source_unique`` recorded by
  the extract, else the source's primary key / single-column unique constraint) must be unique in
  the file; that dataset is the *parent* of entity E, and every other column pseudonymised with E
  must reference it (unless the parent dataset is filtered: its filter legitimately drops parents).
* Domains: what each treatment can produce (years in a plausible range, quarter/month/postcode
  shapes, age-band and mapping labels, multiples of a rounding base, top/bottom codes), replaced by
  the disclosure stage's generalisation where it coarsened a column.
* Leak check: every column (exact match in pseudonym columns and in numbers and dates as text,
  substring in other strings), except columns delivered ``unmasked`` under an approved business
  requirement; and it must have drawn identifiers when the tables read have catalogued ones.
* Population: every row of a dataset restricted to the contract's population belongs to it (its entity
  pseudonyms occur in the defining dataset).
* Parquet statistics: none for a column the source catalogue classes as identifier or free text.
* Aggregate tables (``disclosure.json``): columns and types, rounding base, minimum published
  count, no recoverable suppressed cell.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from contracts.catalogue import Catalogue, PopulationPlan, protected_columns
from contracts.column_treatments import Pseudonymise
from contracts.disclosure import BandHierarchy
from contracts.model import Contract
from disclosure.assess import sample_info
from disclosure.tables import round_to_base
from masking import generalise
from validation.model import (
    ColumnRule,
    DatasetRules,
    DeliveryRules,
    DisclosureCheck,
    Domain,
    LeakDraw,
    Reference,
    SampleCheck,
    StatisticsCheck,
    TableCheck,
)

EARLIEST_YEAR = 1850  # plausible lower bound of a generalised year (dates of birth included)
STRING_TYPES = ("string", "large_string")


def _is_string(type_name: str | None) -> bool:
    return type_name in STRING_TYPES


def treatment_domains(treatment: Any, type_name: str | None, run_year: int) -> list[Domain]:
    """What a column treatment can produce, as domains (unknown treatments: none)."""
    name = getattr(treatment, "treatment", None)
    try:
        if name == "generalise":
            return _generalise_domains(treatment, type_name, run_year)
        if name == "round":
            base = float(treatment.base)
            out = []
            codes = [c for c in (getattr(treatment, "top_code", None), getattr(treatment, "bottom_code", None))
                     if c is not None]
            if all(float(c) % base == 0 for c in codes):
                out.append(Domain("multiple_of", base=base))
            top, bottom = getattr(treatment, "top_code", None), getattr(treatment, "bottom_code", None)
            if top is not None or bottom is not None:
                out.append(Domain("between", min_value=None if bottom is None else float(bottom),
                                  max_value=None if top is None else float(top)))
            return out
        if name == "top_code":
            return [Domain("between", max_value=float(max(treatment.threshold, treatment.coded)))]
        if name == "bottom_code":
            return [Domain("between", min_value=float(min(treatment.threshold, treatment.coded)))]
    except (AttributeError, TypeError, ValueError, ArithmeticError):
        return []
    return []


def _generalise_domains(t: Any, type_name: str | None, run_year: int) -> list[Domain]:
    to = getattr(t, "to", None)
    if to == "year" and type_name and type_name.startswith(("int", "uint")):
        return [Domain("between", min_value=EARLIEST_YEAR, max_value=run_year + 1)]
    if not _is_string(type_name):
        return []
    if to == "quarter":
        return [Domain("regex", regex=r"^[0-9]{4}-Q[1-4]\Z")]
    if to == "month":
        return [Domain("regex", regex=r"^[0-9]{4}-(0[1-9]|1[0-2])\Z")]
    if to == "area":
        return [Domain("regex", regex=r"^[A-Z]{1,2}\Z")]
    if to == "district":
        return [Domain("regex", regex=r"^[A-Z]{1,2}[0-9][0-9A-Z]?\Z")]
    if to == "sector":
        return [Domain("regex", regex=r"^[A-Z]{1,2}[0-9][0-9A-Z]? [0-9]\Z")]
    if to == "mapping" and getattr(t, "mapping", None):
        labels = set(t.mapping.values()) | ({t.other} if getattr(t, "other", None) is not None else set())
        return [Domain("in_set", values=tuple(sorted(labels)))]
    if to == "age_band" and hasattr(generalise, "age_band_labels"):
        edges = t.age_edges if hasattr(t, "age_edges") else None
        return [Domain("in_set", values=tuple(generalise.age_band_labels(t.width, t.top, edges)))]
    if to == "band" and getattr(t, "edges", None) and hasattr(generalise, "number_band_labels"):
        return [Domain("in_set", values=tuple(generalise.number_band_labels(list(t.edges))))]
    return []


def _disclosure_domains(contract: Contract, column: str, level: int, current: list[Domain]) -> list[Domain]:
    """Domains of a column the disclosure stage generalised to ``level`` of its hierarchy."""
    hierarchy = (contract.disclosure.hierarchies or {}).get(column) if contract.disclosure else None
    if hierarchy is None or level <= 0:
        return current
    if isinstance(hierarchy, BandHierarchy):
        width = hierarchy.bands[level - 1]
        out = [Domain("multiple_of", base=float(width))]
        for d in current:
            if d.kind == "between":
                low = None if d.min_value is None else math.floor(d.min_value / width) * width
                out.append(Domain("between", min_value=low, max_value=d.max_value))
        return out
    labels = set(hierarchy.levels[level - 1].values())
    return [Domain("in_set", values=tuple(sorted(labels)))]


def source_unique_columns(contract: Contract, state: dict[str, Any],
                          reflected: dict[str, set[str]]) -> dict[str, set[str]]:
    """Per dataset: the pseudonymised columns whose source column is unique.

    ``source_unique`` recorded by the extract (per column in ``extract.json``) wins; otherwise the
    source's own constraints (``reflected``: primary key or single-column unique constraint/index).
    """
    out: dict[str, set[str]] = {}
    for ds in state["datasets"]:
        dataset = contract.dataset(ds["name"])
        unique = set()
        for c in ds["columns"]:
            if not isinstance(dataset.columns.get(c["name"]), Pseudonymise):
                continue
            recorded = c.get("source_unique")
            if recorded is True or (recorded is None and c["name"] in reflected.get(ds["name"], set())):
                unique.add(c["name"])
        out[ds["name"]] = unique
    return out


def table_checks(aggregates: list[dict[str, Any]]) -> list[TableCheck]:
    """One check per suppression table, read with the other tables of its dataset, unit and weight: the tables
    an intruder combines, as ``disclosure.tables.build_tables`` protected them together."""
    def family(a: dict[str, Any]) -> tuple[Any, ...]:
        grossed = a.get("grossed") or {}
        return a["dataset"], a.get("unit"), grossed.get("column") if grossed.get("by") == "weight" else None

    protected = [a for a in aggregates if a.get("protection", "suppression") != "cell_key"]
    checks = []
    for a in protected:
        base, factor = _count_scale(a)
        checks.append(TableCheck(
            dataset=a["name"], by=tuple(a["by"]),
            read_with=tuple(o["name"] for o in protected if o is not a and family(o) == family(a)),
            base=base, factor=factor, threshold=int(a["threshold"]),
            additive=a.get("unit", "record") == "record" and not _weighted(a)))
    return checks


def _weighted(a: dict[str, Any]) -> bool:
    return bool((a.get("grossed") or {}).get("by") == "weight")


def _count_scale(a: dict[str, Any]) -> tuple[int, float]:
    """An aggregate summary's count base (grossed tables round to a coarser one) and its grossing factor (1 when
    not grossed by the inverse sampling fraction)."""
    grossed = a.get("grossed") or {}
    factor = float(grossed["factor"]) if grossed.get("by") == "inverse sampling fraction" else 1.0
    return int(a.get("count_rounding") or a["rounding"]), factor


def delivery_rules(contract: Contract, state: dict[str, Any], disclosure_doc: dict[str, Any] | None, *,
                   unique: dict[str, set[str]], run_year: int, catalogue: Catalogue | None = None,
                   population: PopulationPlan | None = None) -> DeliveryRules:
    doc = disclosure_doc or {}
    microdata = doc.get("microdata", True) is not False
    generalised: dict[tuple[str, str], int] = {}
    suppressed: dict[tuple[str, str], int] = {}
    for d in doc.get("datasets", []):
        for g in d["treatment"]["generalised"]:
            generalised[(d["name"], g["column"])] = int(g["level"])
        for column, count in d["treatment"]["suppressed_values"].items():
            suppressed[(d["name"], column)] = int(count)
    sample = sample_info(state)
    entity = contract.sample.entity if contract.sample is not None and hasattr(contract.sample, "entity") else None

    datasets: list[DatasetRules] = []
    notes: list[str] = []
    if microdata:
        for ds in state["datasets"]:
            dataset = contract.dataset(ds["name"])
            columns = []
            for c in ds["columns"]:
                treatment = dataset.columns[c["name"]]
                domains = treatment_domains(treatment, c.get("type"), run_year)
                level = generalised.get((ds["name"], c["name"]), 0)
                if level:
                    domains = _disclosure_domains(contract, c["name"], level, domains)
                if c["pseudonym"]:
                    domains = [d for d in domains if d.kind != "regex"]
                # Every column is searched: strings for an identifier inside them, anything else for an identifier
                # equal to its text (a raw id kept in a number column).
                leak: Literal["exact", "substring"] | None = (
                    "substring" if _is_string(c.get("type")) and not c["pseudonym"] else "exact")
                if getattr(treatment, "treatment", None) == "unmasked":
                    leak = None  # delivered in clear by an approved business requirement
                # Local suppression nulls single key values: those columns can no longer be NOT NULL.
                not_null = bool(c.get("source_not_null")) and not suppressed.get((ds["name"], c["name"]))
                columns.append(ColumnRule(name=c["name"], pseudonym=bool(c["pseudonym"]),
                                          not_null=not_null, type=c.get("type"),
                                          unique=c["name"] in unique.get(ds["name"], set()),
                                          domains=tuple(domains), leak=leak))
            max_rows = None
            if contract.sample is not None and contract.sample.max_records and entity:
                carriers = [n for n, t in dataset.columns.items()
                            if isinstance(t, Pseudonymise) and t.entity == entity]
                if any(n in unique.get(ds["name"], set()) for n in carriers):
                    max_rows = contract.sample.max_records  # one row per sampled entity
            expected = int(ds["rows"])
            datasets.append(DatasetRules(dataset=ds["name"], columns=tuple(columns), min_rows=0,
                                         max_rows=max_rows, expected_rows=expected))

    for a in doc.get("aggregates", []):
        columns = []
        for c in a["schema"]:
            table_domains: list[Domain] = []
            if c["name"] == "count":
                base, factor = _count_scale(a)
                if a.get("protection") == "cell_key":  # perturbed: never 1 … smallest-1 (docs/disclosure.md)
                    smallest = int((a.get("ptable") or {}).get("smallest_published", 1))
                    if not _weighted(a):
                        table_domains.append(Domain("between", min_value=float(math.floor(smallest * factor))))
                else:
                    table_domains.append(Domain("multiple_of", base=float(base)))
                    if not _weighted(a):
                        table_domains.append(Domain("between",
                                                    min_value=round_to_base(a["threshold"] * factor, base)))
            columns.append(ColumnRule(name=c["name"], type=c["type"], domains=tuple(table_domains),
                                      leak="substring" if _is_string(c["type"]) else None))
        datasets.append(DatasetRules(dataset=a["name"], columns=tuple(columns), min_rows=0,
                                     expected_rows=int(a["rows"])))

    references: list[Reference] = []
    if microdata:
        parents: dict[str, tuple[str, str]] = {}
        for ds in state["datasets"]:
            dataset = contract.dataset(ds["name"])
            for name in unique.get(ds["name"], set()):
                t = dataset.columns[name]
                if isinstance(t, Pseudonymise) and t.entity not in parents:
                    parents[t.entity] = (ds["name"], name)
        for ds in state["datasets"]:
            dataset = contract.dataset(ds["name"])
            for name, t in dataset.columns.items():
                if not isinstance(t, Pseudonymise) or t.entity not in parents:
                    continue
                parent_ds, parent_col = parents[t.entity]
                if parent_ds == ds["name"]:
                    continue
                if contract.dataset(parent_ds).filter:
                    notes.append(f"{ds['name']}.{name}: references to {parent_ds}.{parent_col} not checked, "
                                 f"because {parent_ds} is filtered")
                    continue
                references.append(Reference(ds["name"], name, parent_ds, parent_col))

    checks = []
    settings = doc.get("settings") or {}
    for d in doc.get("datasets", []) if microdata else []:
        checks.append(DisclosureCheck(dataset=d["name"], key=tuple(d["key"]), sensitive=tuple(d["sensitive"]),
                                      k=int(settings.get("k", d["after"]["k"])),
                                      l=settings.get("l") if d["sensitive"] else None))
    tables = table_checks(doc.get("aggregates", []))

    sample_check = None
    if contract.sample is not None:
        sample_check = SampleCheck(fraction=contract.sample.fraction, max_records=contract.sample.max_records,
                                   population=(sample or {}).get("population"), size=(sample or {}).get("size"))
    population_checks: list[Reference] = []
    statistics: list[StatisticsCheck] = []
    leak_draw = None
    delivered = {ds["name"] for ds in state["datasets"]} if microdata else set()
    if population is not None and population.dataset in delivered:
        population_checks = [Reference(name, column, population.dataset, population.column)
                             for name, column in population.restricted.items() if name in delivered]
    if catalogue is not None:
        statistics = [StatisticsCheck(ds["name"], column) for ds in state["datasets"] if ds["name"] in delivered
                      for column in protected_columns(contract.dataset(ds["name"]), catalogue)]
        tables_read = dict.fromkeys(d.table for d in contract.datasets)
        rows = sum(int(ds["rows"]) for ds in state["datasets"] if ds["name"] in delivered)
        rows += sum(int(a["rows"]) for a in doc.get("aggregates", []))
        leak_draw = LeakDraw(identifier_columns=sum(len(catalogue.identifiers(t)) for t in tables_read),
                             delivered_rows=rows)
    return DeliveryRules(datasets=tuple(datasets), references=tuple(references), disclosure=tuple(checks),
                         tables=tuple(tables), sample=sample_check, notes=tuple(notes),
                         population=tuple(population_checks), statistics=tuple(statistics), leak_draw=leak_draw)
