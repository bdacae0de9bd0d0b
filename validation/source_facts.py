"""What the release gate reads from the contract's source, held in memory only.

The gate opens the source (read only, plain SELECTs) for two things: the source's key constraints
(which pseudonymised columns are entity keys, when the extract did not record ``source_unique``) and a
sample of raw identifiers for the leak check (``leakage``): of every identifier column the source
catalogue lists for the tables read (delivered or not), every pseudonymised column, and the contract's
``disclosure.source_identifiers``, drawn from the rows the contract reads (its filters and population),
so the identifiers searched for are those of the people delivered.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import URL

from contracts.catalogue import Catalogue, PopulationPlan
from contracts.column_treatments import Pseudonymise
from contracts.model import Contract, Dataset
from core.errors import SourceError
from extract.population import population_clauses, selection
from extract.sources import create_source_engine, reflect_table
from validation.leakage import PER_COLUMN, IdentifierSample, draw_identifiers


def unique_source_columns(engine: sa.Engine, dataset: Dataset) -> set[str]:
    """Columns that are unique in the source on their own: a one-column primary key or unique constraint."""
    inspector = sa.inspect(engine)
    name, schema = dataset.table_name, dataset.schema_name
    unique: set[str] = set()
    pk = (inspector.get_pk_constraint(name, schema=schema) or {}).get("constrained_columns") or []
    if len(pk) == 1:
        unique.add(pk[0])
    for getter in (inspector.get_unique_constraints, inspector.get_indexes):
        try:
            entries = getter(name, schema=schema)
        except NotImplementedError:
            continue
        for entry in entries:
            columns = entry.get("column_names") or []
            # An expression index names no column (None): it makes no column unique on its own.
            if (len(columns) == 1 and columns[0] is not None
                    and (getter == inspector.get_unique_constraints or entry.get("unique"))):
                unique.add(columns[0])
    return unique


def identifier_columns(contract: Contract, dataset: Dataset, catalogue: Catalogue | None = None) -> list[str]:
    """The catalogue's identifiers of the dataset's table, its pseudonymised columns, and the contract's extra
    source identifiers of this dataset."""
    catalogued = catalogue.identifiers(dataset.table) if catalogue is not None else []
    columns = [c for c, t in dataset.columns.items() if isinstance(t, Pseudonymise)]
    extra = (contract.disclosure.source_identifiers or {}) if contract.disclosure else {}
    return list(dict.fromkeys([*catalogued, *columns, *extra.get(dataset.name, [])]))


def inspect_source(contract: Contract, url: URL, *, per_column: int = PER_COLUMN, catalogue: Catalogue | None = None,
                   population: PopulationPlan | None = None) -> tuple[dict[str, set[str]], IdentifierSample]:
    """(unique columns per dataset, identifier sample) from the source."""
    engine = create_source_engine(url)
    try:
        reflected: dict[str, set[str]] = {}
        tables: dict[str, sa.Table] = {}
        wanted: dict[str, list[str]] = {}
        for dataset in contract.datasets:
            table = reflect_table(engine, dataset, contract)
            reflected[dataset.name] = unique_source_columns(engine, dataset)
            names = identifier_columns(contract, dataset, catalogue)
            missing = [n for n in names if n not in table.c]
            if missing:
                raise SourceError(f"contract {contract.contract}, dataset {dataset.name!r}: identifier column(s) "
                                  f"{', '.join(missing)} for the leak check do not exist in table {dataset.table!r}. "
                                  "Fix: correct the source catalogue or disclosure.source_identifiers")
            tables[dataset.name] = table
            wanted[dataset.name] = names
        restrict = population_clauses(contract, population, tables)
        draws = []
        for dataset in contract.datasets:
            for name in wanted[dataset.name]:
                statement = selection(tables[dataset.name], dataset, contract, [name])
                if dataset.name in restrict:
                    statement = statement.where(restrict[dataset.name])
                draws.append((dataset.name, name, statement))
        try:
            sample = draw_identifiers(engine, draws, per_column=per_column)
        except sa.exc.OperationalError:
            raise SourceError(f"source of contract {contract.contract} failed while drawing identifiers for the "
                              "leak check (connection or query error)") from None
    finally:
        engine.dispose()
    return reflected, sample
