"""A contract against its live source, before anyone approves it (``contract-extracts check FILE --source``).

Reads the source's schema only (reflection: table and column names and types, never a row) and lists
every problem at once: a table or column that does not exist, a source type the pipeline cannot read,
a treatment the column's type does not accept (``masking.column_plans.plan_column``), the contract-wide
rules that need the types (no date kept beside shifted dates, the sample's entity), and catalogued
identifiers or population columns the source lacks (the release gate draws every catalogued
identifier). A contract that passes would not fail at run time for its source's shape.
"""

from __future__ import annotations

import datetime as dt
from typing import NamedTuple

import pyarrow as pa
import sqlalchemy as sa

from contracts.catalogue import Catalogue, population_plan
from contracts.column_treatments import (
    DateShift,
    Pseudonymise,
    date_shift_source,
    entity_columns,
    treatment_problems,
)
from contracts.model import Contract
from core.errors import ConfigError, SourceError
from extract.types import arrow_type
from masking.column_plans import plan_column, plan_contract


class SourceProblem(NamedTuple):
    key: str
    message: str
    fix: str


def source_problems(contract: Contract, engine: sa.Engine, *, catalogue: Catalogue | None = None,
                    reference_date: dt.date | None = None) -> list[SourceProblem]:
    """Every way ``contract`` does not fit the source behind ``engine`` (empty: it fits)."""
    problems: list[SourceProblem] = []
    inspector = sa.inspect(engine)
    reference_date = reference_date or dt.datetime.now(dt.UTC).date()
    sources: dict[str, list[tuple[str, pa.DataType, bool]]] = {}
    for i, dataset in enumerate(contract.datasets):
        where = f"datasets[{i}]"
        if not inspector.has_table(dataset.table_name, schema=dataset.schema_name):
            problems.append(SourceProblem(f"{where}.table", f"table {dataset.table!r} does not exist in source "
                                          f"{contract.source.connection!r}", "correct datasets[].table"))
            continue
        table = sa.Table(dataset.table_name, sa.MetaData(), schema=dataset.schema_name, autoload_with=engine)
        types: dict[str, tuple[pa.DataType, bool]] = {}
        for name in dataset.columns:
            if name not in table.c:
                problems.append(SourceProblem(f"{where}.columns.{name}", f"column {name!r} does not exist in table "
                                              f"{dataset.table!r}", "correct the column name or remove it"))
                continue
            try:
                types[name] = (arrow_type(table.c[name], f"column {name!r}"), not table.c[name].nullable)
            except SourceError as exc:
                problems.append(SourceProblem(f"{where}.columns.{name}", str(exc), "leave the column out or expose "
                                              "it through a view with a supported type"))
        for name, treatment in dataset.columns.items():
            if name not in types:
                continue
            by = by_canonicaliser = None
            if isinstance(treatment, DateShift):
                carriers = entity_columns(dataset, treatment.entity)
                if treatment.by is None and len(carriers) != 1:
                    continue  # the contract model names this problem
                by = date_shift_source(dataset, name, treatment)
                by_treatment = dataset.columns.get(by)
                by_canonicaliser = by_treatment.canonicalise if isinstance(by_treatment, Pseudonymise) else None
            try:
                plan_column(dataset.name, name, treatment, types[name][0], types[name][1], by=by,
                            by_canonicaliser=by_canonicaliser, reference_date=reference_date)
            except ConfigError as exc:
                problems.append(SourceProblem(f"{where}.columns.{name}", exc.detail, exc.fix or "see docs/masking.md"))
        for name in dataset.filter:
            if name not in table.c:
                problems.append(SourceProblem(f"{where}.filter.{name}", f"filter column {name!r} does not exist in "
                                              f"table {dataset.table!r}", "correct the filter"))
        partition = dataset.partition
        if partition is not None:
            if partition.column is not None and partition.column not in table.c:
                problems.append(SourceProblem(f"{where}.partition.column", f"partition column {partition.column!r} "
                                              f"does not exist in table {dataset.table!r}", "correct it"))
            elif partition.column is None and len(table.primary_key.columns) != 1:
                problems.append(SourceProblem(f"{where}.partition", f"table {dataset.table!r} has no single-column "
                                              "primary key to partition on", "set partition.column to an integer or "
                                              "date column"))
        if contract.incremental is not None and contract.incremental.column not in table.c:
            problems.append(SourceProblem("incremental.column", f"incremental column {contract.incremental.column!r} "
                                          f"does not exist in table {dataset.table!r}", "add it or remove "
                                          "'incremental'"))
        if catalogue is not None:
            for name in catalogue.identifiers(dataset.table):
                if name not in table.c:
                    problems.append(SourceProblem(f"{where}.table", f"the catalogue lists identifier {name!r} of "
                                                  f"table {dataset.table!r}, which the source does not have (the "
                                                  "release gate draws every catalogued identifier)",
                                                  "the data owner corrects the catalogue"))
        if len(types) == len(dataset.columns):
            sources[dataset.name] = [(n, *types[n]) for n in dataset.columns]
    if catalogue is not None and not problems:
        try:
            population_plan(contract, catalogue)
        except ConfigError as exc:
            problems.append(SourceProblem(exc.key or "population", exc.detail, exc.fix or "see docs/catalogue.md"))
    # The sample's entity (the contract model leaves it to the run: a contract may be written in steps).
    without_sample = set(treatment_problems(contract, sample_checks=False))
    problems += [SourceProblem(*p) for p in treatment_problems(contract) if p not in without_sample]
    if not problems and len(sources) == len(contract.datasets):
        try:
            plan_contract(contract, sources, reference_date=reference_date)
        except ConfigError as exc:
            problems.append(SourceProblem(exc.key or "(contract)", exc.detail, exc.fix or "see docs/masking.md"))
    return problems
