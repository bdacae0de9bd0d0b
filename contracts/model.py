"""The contract model: a strict, typed reading of ``configs/contracts/<id>.yaml``.

Unknown keys are errors (``extra="forbid"``); identifiers are restricted to plain names so that
they are harmless as SQL identifiers (which SQLAlchemy quotes anyway), file names and key
derivation inputs. Filters are structured (column → operator → literal), never SQL text.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_serializer, model_validator

from contracts.base import COLUMN as COLUMN
from contracts.base import CONN_ID, CONTRACT_ID, NAME, TABLE, Strict
from contracts.delivery import Delivery, Recipient
from contracts.disclosure import Aggregate, Disclosure, Unmasked, check_disclosure
from contracts.extraction import Incremental, Partition
from contracts.treatments import (
    TREATMENT_NAMES,
    Sample,
    Treatment,
    check_treatments,
)

CRON_PRESETS = {"@hourly", "@daily", "@weekly", "@monthly", "@yearly", "@annually", "@midnight"}


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


class Dataset(Strict):
    name: str = Field(pattern=NAME)
    table: str = Field(pattern=TABLE)
    filter: dict[Annotated[str, Field(pattern=COLUMN)], Condition] = Field(default_factory=dict)
    columns: dict[Annotated[str, Field(pattern=COLUMN)], Treatment]
    partition: Partition | None = None

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
    def _not_empty(cls, value: dict) -> dict:
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
        from croniter import croniter

        # Five fields only (no seconds field) and every field in range, as Airflow's timetable needs.
        if len(value.split()) != 5 or not croniter.is_valid(value):
            raise ValueError("not a valid cron expression (five fields in range, e.g. '0 2 * * *') or a preset "
                             "like '@daily'")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Contract:
        names = [d.name for d in self.datasets]
        if len(set(names)) != len(names):
            raise ValueError("dataset names must be unique")
        recipient_names = [r.name for r in self.recipients]
        if len(set(recipient_names)) != len(recipient_names):
            raise ValueError("recipient names must be unique")
        keys = [r.public_key for r in self.recipients]
        if len(set(keys)) != len(keys):
            raise ValueError("two recipients share one key")
        if len({r.format for r in self.recipients}) > 1:
            raise ValueError("recipients mix age/ssh keys with OpenPGP keys; one delivery is one package in one "
                             "format (docs/delivery.md): give all recipients age/ssh keys or all OpenPGP keys")
        by_name = {d.name: d for d in self.datasets}
        for item in self.unmasked:
            if item.dataset not in by_name or item.column not in by_name[item.dataset].columns:
                raise ValueError(f"unmasked column {item.dataset}.{item.column} is not a listed column")
        check_disclosure(self)  # key variables, sensitive attributes, aggregates (names the key)
        check_treatments(self)  # entities, free text, unmasked columns (contracts/treatments.py)
        return self

    @model_serializer(mode="wrap")
    def _serialise(self, handler: Any) -> dict[str, Any]:
        # Unset output options stay out of the canonical form: older contracts keep their content hash.
        unset = ("aggregates", "microdata", "key_id")
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
