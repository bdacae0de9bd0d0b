"""The release gate of a staged delivery, with what it needs from the source.

The gate opens the contract's source (read only, plain SELECTs) for two things, both held in memory
only: the source's key constraints (which pseudonymised columns are entity keys, when the extract did
not record ``source_unique``) and a sample of raw identifiers for the leak check.
"""

from __future__ import annotations

import logging
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import URL

from contracts.model import Contract, Dataset
from contracts.treatments import Pseudonymise
from core.errors import SourceError
from validation.leakage import PER_COLUMN, IdentifierSample, draw_identifiers
from validation.release import DeliveryValidation, validate_delivery
from validation.rules import delivery_rules, source_unique_columns

log = logging.getLogger(__name__)


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
            if len(columns) == 1 and (getter == inspector.get_unique_constraints or entry.get("unique")):
                unique.add(columns[0])
    return unique


def identifier_columns(contract: Contract, dataset: Dataset) -> list[str]:
    """Pseudonymised columns plus the contract's extra source identifiers of this dataset."""
    columns = [c for c, t in dataset.columns.items() if isinstance(t, Pseudonymise)]
    extra = (contract.disclosure.source_identifiers or {}) if contract.disclosure else {}
    return list(dict.fromkeys([*columns, *extra.get(dataset.name, [])]))


def inspect_source(contract: Contract, url: URL, *, per_column: int = PER_COLUMN
                   ) -> tuple[dict[str, set[str]], IdentifierSample]:
    """(unique columns per dataset, identifier sample) from the source."""
    from extract.sources import create_source_engine, reflect_table

    engine = create_source_engine(url)
    try:
        reflected: dict[str, set[str]] = {}
        tables = []
        for dataset in contract.datasets:
            table = reflect_table(engine, dataset, contract)
            reflected[dataset.name] = unique_source_columns(engine, dataset)
            names = identifier_columns(contract, dataset)
            missing = [n for n in names if n not in table.c]
            if missing:
                raise SourceError(f"contract {contract.contract}, dataset {dataset.name!r}: identifier column(s) "
                                  f"{', '.join(missing)} for the leak check do not exist in table {dataset.table!r}. "
                                  "Fix: correct disclosure.source_identifiers")
            tables.append((dataset.name, table, names))
        try:
            sample = draw_identifiers(engine, tables, per_column=per_column)
        except sa.exc.OperationalError:
            raise SourceError(f"source of contract {contract.contract} failed while drawing identifiers for the "
                              "leak check (connection or query error)") from None
    finally:
        engine.dispose()
    return reflected, sample


def run_release_gate(contract: Contract, staging: Path, state: dict, disclosure_doc: dict | None, url: URL, *,
                     batch_rows: int, run_year: int, per_column: int = PER_COLUMN) -> DeliveryValidation:
    """Every expectation of the release gate on the staged delivery (value-free result)."""
    reflected, identifiers = inspect_source(contract, url, per_column=per_column)
    log.info("leak check: %d identifiers drawn from the source, %d searched for, %d too short to search",
             identifiers.drawn, identifiers.searched, identifiers.too_short)
    unique = source_unique_columns(contract, state, reflected)
    rules = delivery_rules(contract, state, disclosure_doc, unique=unique, run_year=run_year)
    files: dict[str, Path] = {}
    if (disclosure_doc or {}).get("microdata", True) is not False:
        files.update({ds["name"]: staging / ds["file"] for ds in state["datasets"]})
    files.update({a["name"]: staging / a["file"] for a in (disclosure_doc or {}).get("aggregates", [])})
    return validate_delivery(files, rules, batch_rows=batch_rows, identifiers=identifiers)
