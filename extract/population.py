"""The contract's population as SQL: a semi-join that keeps only rows of the population's entities.

A contract names its population (``population: {entity, dataset}``); the source catalogue says which
column of each table carries that entity (``contracts.catalogue.population_plan``). Every other dataset
carrying the entity is read with one more condition::

    <its entity column> IN (SELECT <defining entity column> FROM <defining table>
                            WHERE <the defining dataset's filter> AND <defining entity column> IS NOT NULL)

built with SQLAlchemy Core from the contract only (identifiers quoted by the dialect, filter values bound),
so every route that runs the dataset's statement (the generic cursor, PostgreSQL COPY through psql or
psycopg, the MySQL/MariaDB raw route), the sample's draw, partition ranges and incremental windows all read
the restricted rows, in the delivery's snapshot like everything else. The sample (by the population's
entity) then keeps the same people in every dataset.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from contracts.catalogue import PopulationPlan
from contracts.column_treatments import Keep
from contracts.model import Contract, Dataset
from extract.sources import plan_query


def selection(table: sa.Table, dataset: Dataset, contract: Contract, columns: list[str]) -> sa.Select[Any]:
    """``SELECT <columns> FROM <table> WHERE <the dataset's filter>`` (any columns of the table, listed or not)."""
    narrowed = dataset.model_copy(update={"columns": {c: Keep(treatment="keep") for c in columns}})
    return plan_query(table, narrowed, contract).statement


def population_clauses(contract: Contract, plan: PopulationPlan | None,
                       tables: Mapping[str, sa.Table]) -> dict[str, sa.ColumnElement[bool]]:
    """Per restricted dataset (by name), the condition that keeps only rows of the population.

    ``tables``: the reflected table of every dataset, by dataset name.
    """
    if plan is None or not plan.restricted:
        return {}
    defining = contract.dataset(plan.dataset)
    table = tables[plan.dataset]
    column = table.c[plan.column]
    members = selection(table, defining, contract, [plan.column]).where(column.is_not(None))
    return {name: tables[name].c[carrier].in_(members) for name, carrier in plan.restricted.items()}
