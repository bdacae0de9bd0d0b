"""The contract model: a strict, typed reading of ``configs/contracts/<id>.yaml``.

Unknown keys are errors (``extra="forbid"``); identifiers are restricted to plain names so that
they are harmless as SQL identifiers (which SQLAlchemy quotes anyway), file names and key
derivation inputs. Filters are structured (column → operator → literal), never SQL text.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Literal

from croniter import croniter
from pydantic import Field, ValidationInfo, field_validator, model_serializer, model_validator

from contracts.base import COLUMN as COLUMN
from contracts.base import CONN_ID, CONTRACT_ID, ENTITY, NAME, TABLE, Strict, is_system_table, real_words
from contracts.column_treatments import (
    TREATMENT_NAMES,
    Sample,
    Treatment,
    treatment_problems,
)
from contracts.delivery import Delivery, Recipient
from contracts.disclosure import Aggregate, Disclosure, Unmasked, disclosure_problems
from contracts.extraction import Incremental, Partition

CRON_PRESETS = {"@hourly", "@daily", "@weekly", "@monthly", "@yearly", "@annually", "@midnight"}

#: Validation context key: collect the contract-wide problems (``model_problems``) instead of raising the
#: first one, so ``contract-extracts check`` can report every problem of a file at once.
DEFER_CHECKS = "defer_contract_checks"


class SecurityAssurance(Strict):
    framework: str = Field(min_length=1)
    reference: str = Field(min_length=1)
    expires: dt.date


class Validity(Strict):
    from_: dt.date = Field(alias="from")
    until: dt.date

    @model_validator(mode="after")
    def _ordered(self) -> Validity:
        if self.until < self.from_:
            raise ValueError("'until' is before 'from'")
        return self


class Source(Strict):
    connection: str = Field(pattern=CONN_ID, description="Airflow connection id of the source database")


# ---- filters -----------------------------------------------------------------------------------

Scalar = bool | int | float | dt.date | dt.datetime | str


class Condition(Strict):
    """Operators on one column; several operators on one column are ANDed."""

    eq: Scalar | None = None
    ne: Scalar | None = None
    lt: Scalar | None = None
    lte: Scalar | None = None
    gt: Scalar | None = None
    gte: Scalar | None = None
    in_: list[Scalar] | None = Field(default=None, alias="in", min_length=1)
    not_in: list[Scalar] | None = Field(default=None, min_length=1)
    is_null: bool | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> Condition:
        if not self.model_fields_set:
            raise ValueError("a filter needs at least one operator (eq, ne, lt, lte, gt, gte, in, not_in, is_null)")
        return self

    def operators(self) -> list[tuple[str, Any]]:
        return [(name.rstrip("_"), getattr(self, name)) for name in self.model_fields_set]


class Population(Strict):
    """Whose records the contract delivers: the ``entity`` as the ``dataset``'s filter and sample select it.

    Every other dataset whose table carries that entity (an ``identifier`` column of that entity in the
    source catalogue) is restricted to it, a semi-join on the entity (docs/catalogue.md).
    """

    entity: str = Field(pattern=ENTITY)
    dataset: str = Field(pattern=NAME)


class Dataset(Strict):
    name: str = Field(pattern=NAME)
    table: str = Field(pattern=TABLE)
    filter: dict[Annotated[str, Field(pattern=COLUMN)], Condition] = Field(default_factory=dict)
    columns: dict[Annotated[str, Field(pattern=COLUMN)], Treatment]
    partition: Partition | None = None
    without_population: str | None = Field(
        default=None, max_length=2000,
        description="why a dataset that does not carry the population's entity is needed (in words)")
    population_by: str | None = Field(
        default=None, pattern=COLUMN,
        description="the column carrying the population's entity, when the table has several")

    @field_validator("table")
    @classmethod
    def _not_a_system_table(cls, value: str) -> str:
        if is_system_table(value):
            raise ValueError(f"table {value!r} belongs to the database system itself (pg_catalog, "
                             "information_schema, sqlite_master, mysql, …) and can never be read by a contract")
        return value

    @field_validator("without_population")
    @classmethod
    def _reason_in_words(cls, value: str | None) -> str | None:
        if value is not None:
            real_words(value, "without_population")
        return value

    @model_serializer(mode="wrap")
    def _serialise(self, handler: Any) -> dict[str, Any]:
        # Unset population options stay out of the canonical form (content hashes of older contracts).
        data: dict[str, Any] = handler(self)
        for key in ("without_population", "population_by"):
            if data.get(key) is None:
                data.pop(key, None)
        return data

    @field_validator("columns", mode="before")
    @classmethod
    def _every_column_has_a_treatment(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for column, spec in value.items():
                if spec is None or (isinstance(spec, dict) and "treatment" not in spec):
                    raise ValueError(
                        f"column {column!r} has no treatment; give it one of "
                        f"{', '.join(TREATMENT_NAMES)}, or remove the column to leave it out of the extract"
                    )
        return value

    @field_validator("columns")
    @classmethod
    def _not_empty(cls, value: dict[str, Treatment]) -> dict[str, Treatment]:
        if not value:
            raise ValueError("a dataset needs at least one column")
        return value

    @property
    def schema_name(self) -> str | None:
        return self.table.split(".", 1)[0] if "." in self.table else None

    @property
    def table_name(self) -> str:
        return self.table.rsplit(".", 1)[-1]


class Contract(Strict):
    contract: str = Field(pattern=CONTRACT_ID, max_length=64)
    title: str = Field(min_length=1)
    contractor: str = Field(min_length=1)
    legal_gateway: str = Field(min_length=1)
    business_case: str = Field(min_length=1)
    security_assurance: SecurityAssurance
    valid: Validity
    schedule: str | None = None
    source: Source
    linkage: Literal["contract", "delivery"] = "contract"
    key_id: str | None = Field(default=None, pattern=r"^[0-9a-f]{16}$",
                               description="pin the master key by its key id (default: the current key)")
    sample: Sample | None = None
    population: Population | None = None
    datasets: list[Dataset] = Field(min_length=1)
    disclosure: Disclosure | None = None
    aggregates: list[Aggregate] | None = None  # tables with disclosure control (docs/disclosure.md)
    microdata: bool | None = None  # false: deliver only the aggregate tables
    unmasked: list[Unmasked] = Field(default_factory=list)
    recipients: list[Recipient] = Field(min_length=1)
    delivery: Delivery = Field(default_factory=Delivery)
    incremental: Incremental | None = None

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is None or value in CRON_PRESETS:
            return value
        # Five fields only (no seconds field) and every field in range, as Airflow's timetable needs.
        if len(value.split()) != 5 or not croniter.is_valid(value):
            raise ValueError("not a valid cron expression (five fields in range, e.g. '0 2 * * *') or a preset "
                             "like '@daily'")
        return value

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> Contract:
        if info.context and info.context.get(DEFER_CHECKS):
            return self  # the caller lists every problem with model_problems
        problems = self.model_problems()
        if problems:
            key, message = problems[0]
            raise ValueError(f"{key}: {message}" if key else message)
        return self

    def model_problems(self) -> list[tuple[str, str]]:
        """(key, message) of every contract-wide problem: names, unmasked columns, disclosure, treatments."""
        problems: list[tuple[str, str]] = []
        names = [d.name for d in self.datasets]
        if len(set(names)) != len(names):
            problems.append(("datasets", "dataset names must be unique"))
        recipient_names = [r.name for r in self.recipients]
        if len(set(recipient_names)) != len(recipient_names):
            problems.append(("recipients", "recipient names must be unique"))
        keys = [r.public_key for r in self.recipients]
        if len(set(keys)) != len(keys):
            problems.append(("recipients", "two recipients share one key"))
        if len({r.format for r in self.recipients}) > 1:
            problems.append(("recipients", "recipients mix age/ssh keys with OpenPGP keys; one delivery is one "
                             "package in one format (docs/delivery.md): give all recipients age/ssh keys or all "
                             "OpenPGP keys"))
        by_name = {d.name: d for d in self.datasets}
        for i, item in enumerate(self.unmasked):
            if item.dataset not in by_name or item.column not in by_name[item.dataset].columns:
                problems.append((f"unmasked[{i}]", f"unmasked column {item.dataset}.{item.column} is not a listed "
                                 "column"))
        if self.population is None:
            for i, dataset in enumerate(self.datasets):
                if dataset.population_by is not None:
                    problems.append((f"datasets[{i}].population_by", "names the column of a population, but the "
                                     "contract names no population"))
        else:
            population = self.population
            if population.dataset not in by_name:
                problems.append(("population.dataset", f"{population.dataset!r} is not a dataset of the contract"))
            elif by_name[population.dataset].without_population is not None:
                problems.append((f"datasets[{names.index(population.dataset)}].without_population",
                                 "the dataset that defines the population cannot be without it"))
            if (self.sample is not None and self.sample.entity is not None
                    and self.sample.entity != population.entity):
                problems.append(("sample.entity", f"the sample draws {self.sample.entity!r} but the population is "
                                 f"of {population.entity!r}; the sample must draw the population's entity"))
        problems += disclosure_problems(self)  # key variables, sensitive attributes, aggregates
        # Entities, date shifts, unmasked columns (contracts/column_treatments.py); the sample's entity is
        # checked when the extract is planned (a contract may be written and approved in steps).
        problems += [(p.key, f"{p.message}; {p.fix}") for p in treatment_problems(self, sample_checks=False)]
        return problems

    @model_serializer(mode="wrap")
    def _serialise(self, handler: Any) -> dict[str, Any]:
        # Unset output options stay out of the canonical form: older contracts keep their content hash.
        unset = ("aggregates", "microdata", "key_id", "population")
        return {k: v for k, v in handler(self).items() if not (k in unset and v is None)}

    # ---- derived names ---------------------------------------------------------------------
    @property
    def dag_id(self) -> str:
        return dag_id_for(self.contract)

    @property
    def contractor_slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.contractor.lower()).strip("-")[:63] or "contractor"

    def dataset(self, name: str) -> Dataset:
        for d in self.datasets:
            if d.name == name:
                return d
        raise KeyError(name)


def dag_id_for(contract_id: str) -> str:
    return "contract_" + contract_id.lower().replace("-", "_")
