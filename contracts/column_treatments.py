"""Column treatments and sampling as written in a contract (the masking engine applies them).

Every treatment is a small strict model. What can be checked without the source (options that fit
together, entities that exist, free-text columns) is checked here; what needs the source's column
types (e.g. ``date_shift`` on a text column) is checked when the extract is planned
(``masking.column_plans.plan_column``). docs/masking.md describes every treatment in plain words.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any, Literal, NamedTuple

from pydantic import Field, field_validator, model_serializer, model_validator

from contracts.base import COLUMN, ENTITY, Strict

if TYPE_CHECKING:  # pragma: no cover
    from contracts.model import Contract, Dataset

Canonicaliser = Literal["nino", "postcode", "email", "phone", "text", "integer"]
CANONICALISERS: tuple[str, ...] = ("nino", "postcode", "email", "phone", "text", "integer")

DATE_LEVELS = ("year", "quarter", "month", "age_band")
POSTCODE_LEVELS = ("area", "district", "sector")
Level = Literal["year", "quarter", "month", "age_band", "area", "district", "sector", "band", "mapping"]
LEVELS: tuple[str, ...] = (*DATE_LEVELS, *POSTCODE_LEVELS, "band", "mapping")

Number = Annotated[Decimal, Field(allow_inf_nan=False)]

#: Keys that would switch a catalogued class off (or on) from a contract: always refused.
CLASS_SWITCHES = ("free_text", "identifier", "quasi_identifier", "sensitive", "class")


class _Column(Strict):
    """Options every treatment accepts (none yet), and the refusal of class switches.

    What a column *is* (identifier, free text, quasi-identifier, …) is the data owner's call, made once
    in the source catalogue (``contracts.catalogue``); no contract key can say otherwise.
    """

    @model_validator(mode="before")
    @classmethod
    def _no_class_switch(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for key in CLASS_SWITCHES:
                if key in value:
                    raise ValueError(
                        f"{key!r} cannot be set in a contract: whether a column is free text, an identifier "
                        "or a quasi-identifier is decided by the source catalogue "
                        "(configs/sources/<connection>.yaml), never by a contract")
        return value

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler: Any) -> dict[str, Any]:
        # Options left unset stay out of the canonical form, so contracts written before an option
        # existed keep their content hash (and their approvals).
        return {k: v for k, v in handler(self).items() if v is not None}


class Pseudonymise(_Column):
    treatment: Literal["pseudonymise"]
    entity: str = Field(pattern=ENTITY, description="namespace: equal entity names join within a contract")
    canonicalise: Canonicaliser = "text"


class Generalise(_Column):
    treatment: Literal["generalise"]
    to: Level
    at: dt.date | Literal["delivery"] | None = Field(
        default=None, description="age_band: reference date (default: the delivery date)")
    width: int | None = Field(default=None, ge=1, le=100, description="age_band: band width in years")
    top: int | None = Field(default=None, ge=1, le=150, description="age_band: ages from here are one band")
    edges: list[Number] | None = Field(default=None, min_length=1, max_length=200)
    mapping: dict[str, str] | None = Field(default=None, min_length=1)
    other: str | None = Field(default=None, description="mapping: label for values not in the mapping")

    @field_validator("mapping", mode="before")
    @classmethod
    def _codes_as_text(cls, value: Any) -> Any:
        # YAML reads `1: Pension` with an integer key; codes are compared as text.
        if isinstance(value, dict):
            return {(str(k) if isinstance(k, int) and not isinstance(k, bool) else k): v for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _options_fit_the_level(self) -> Generalise:
        allowed = {"year": set(), "quarter": set(), "month": set(), "area": set(), "district": set(),
                   "sector": set(), "age_band": {"at", "width", "top", "edges"}, "band": {"edges"},
                   "mapping": {"mapping", "other"}}[self.to]
        given = {name for name in ("at", "width", "top", "edges", "mapping", "other")
                 if getattr(self, name) is not None}
        extra = sorted(given - allowed)
        if extra:
            raise ValueError(f"generalise to {self.to!r} takes no {', '.join(repr(e) for e in extra)}"
                             + (f"; it takes {', '.join(sorted(allowed))}" if allowed else ""))
        if self.to == "band" and self.edges is None:
            raise ValueError("generalise to 'band' needs 'edges', e.g. edges: [0, 100, 500, 1000]")
        if self.to == "mapping" and self.mapping is None:
            raise ValueError("generalise to 'mapping' needs 'mapping', e.g. mapping: {UC: universal credit}")
        if self.edges is not None and any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError("'edges' must be strictly increasing")
        if self.to == "age_band":
            if self.edges is not None and (self.width is not None or self.top is not None):
                raise ValueError("age_band takes either 'edges' or 'width' (with an optional 'top'), not both")
            if self.edges is not None and any(e != int(e) or e < 0 for e in self.edges):
                raise ValueError("age_band 'edges' must be whole, non-negative ages")
        return self

    @property
    def age_edges(self) -> list[int] | None:
        return [int(e) for e in self.edges] if self.edges is not None else None


class Round(_Column):
    treatment: Literal["round"]
    base: Number = Field(gt=0, description="round to the nearest multiple of this (halves away from zero)")
    top_code: Number | None = Field(default=None, description="rounded values above this become this")
    bottom_code: Number | None = Field(default=None, description="rounded values below this become this")

    @model_validator(mode="after")
    def _ordered(self) -> Round:
        if self.top_code is not None and self.bottom_code is not None and self.bottom_code > self.top_code:
            raise ValueError("'bottom_code' is above 'top_code'")
        return self


class TopCode(_Column):
    treatment: Literal["top_code"]
    threshold: Number = Field(description="values above this are coded")
    value: Number | None = Field(default=None, description="the coded value (default: the threshold)")

    @property
    def coded(self) -> Decimal:
        return self.threshold if self.value is None else self.value


class BottomCode(_Column):
    treatment: Literal["bottom_code"]
    threshold: Number = Field(description="values below this are coded")
    value: Number | None = Field(default=None, description="the coded value (default: the threshold)")

    @property
    def coded(self) -> Decimal:
        return self.threshold if self.value is None else self.value


class DateShift(_Column):
    treatment: Literal["date_shift"]
    entity: str = Field(pattern=ENTITY, description="whose dates shift together (a pseudonymised entity)")
    max_days: int = Field(default=30, ge=1, le=366)
    by: str | None = Field(default=None, pattern=COLUMN,
                           description="the column pseudonymised with the entity, when the dataset has two")


class Suppress(_Column):
    treatment: Literal["suppress"]


class Keep(_Column):
    treatment: Literal["keep"]


class Unmasked(_Column):
    treatment: Literal["unmasked"]


Treatment = Annotated[
    Pseudonymise | Generalise | Round | TopCode | BottomCode | DateShift | Suppress | Keep | Unmasked,
    Field(discriminator="treatment"),
]
TREATMENT_NAMES = ("pseudonymise", "generalise", "round", "top_code", "bottom_code", "date_shift", "suppress",
                   "keep", "unmasked")
AnyTreatment = Pseudonymise | Generalise | Round | TopCode | BottomCode | DateShift | Suppress | Keep | Unmasked


class Sample(Strict):
    """Keyed bottom-k sample of entities (design.md "Sampling"): all rows of a sampled entity, or none."""

    entity: str | None = Field(default=None, pattern=ENTITY,
                               description="the entity sampled; every dataset needs a column pseudonymised with it")
    fraction: float | None = Field(default=None, gt=0, le=1)
    max_records: int | None = Field(default=None, gt=0, description="at most this many entities")

    @model_serializer(mode="wrap")
    def _omit_unset_entity(self, handler: Any) -> dict[str, Any]:
        # As before 'entity' existed when it is unset (content hashes of approved contracts stay).
        return {k: v for k, v in handler(self).items() if not (k == "entity" and v is None)}

    @model_validator(mode="after")
    def _something_to_draw(self) -> Sample:
        if self.fraction is None and self.max_records is None:
            raise ValueError("sample needs 'fraction', 'max_records' or both")
        return self


# ---- checks across columns and datasets ---------------------------------------------------------


class Problem(NamedTuple):
    """(key, message, fix) of one contract problem; the key is a path like datasets[1].columns.x."""

    key: str
    message: str
    fix: str


def entity_columns(dataset: Dataset, entity: str) -> list[str]:
    return [name for name, t in dataset.columns.items() if isinstance(t, Pseudonymise) and t.entity == entity]


def date_shift_source(dataset: Dataset, column: str, treatment: DateShift) -> str:
    """The column whose identifier decides a date-shift offset (see ``treatment_problems``)."""
    return treatment.by or entity_columns(dataset, treatment.entity)[0]


def sample_column(dataset: Dataset, sample: Sample) -> str:
    """The column pseudonymised with the sample's entity (see ``treatment_problems``)."""
    return entity_columns(dataset, sample.entity or "")[0]


def treatment_problems(contract: Contract, *, sample_checks: bool = True) -> list[Problem]:
    """Everything wrong with the contract's treatments that can be seen without the source or its catalogue.

    What a column's catalogued class allows (``keep`` only on ``other``, ``sensitive`` and
    ``quasi_identifier`` columns, …) is checked against the catalogue (``contracts.catalogue``).

    ``sample_checks=False`` leaves out the sample's entity (for the model's validator: a contract may
    be written and approved in steps; the extract stage refuses a sample it cannot draw).
    """
    problems: list[Problem] = []
    unmasked = {(u.dataset, u.column) for u in contract.unmasked}
    sample = contract.sample if sample_checks else None
    if sample is not None and sample.entity is None:
        problems.append(Problem("sample.entity", "the sample names no entity",
                                "add 'entity: <name>', the entity whose people are sampled (every dataset needs a "
                                "column pseudonymised with it)"))
    for i, dataset in enumerate(contract.datasets):
        where = f"datasets[{i}]"
        if sample is not None and sample.entity is not None:
            carriers = entity_columns(dataset, sample.entity)
            if len(carriers) != 1:
                problems.append(Problem(
                    f"{where}.columns", f"dataset {dataset.name!r} has "
                    f"{'no column' if not carriers else str(len(carriers)) + ' columns'} pseudonymised with "
                    f"entity {sample.entity!r}, the sample's entity",
                    "every dataset of a sampled contract needs exactly one column with treatment: pseudonymise, "
                    f"entity: {sample.entity}, so that a person's rows are delivered in every dataset or in none"))
        for name, t in dataset.columns.items():
            key = f"{where}.columns.{name}"
            if isinstance(t, Unmasked) and (dataset.name, name) not in unmasked:
                problems.append(Problem(
                    key, f"column {name!r} is unmasked but the contract's 'unmasked:' list does not name it",
                    f"add {{dataset: {dataset.name}, column: {name}, business_requirement: ...}} to 'unmasked:'"))
            if (dataset.name, name) in unmasked and not isinstance(t, Unmasked | Keep):
                problems.append(Problem(
                    key, f"column {name!r} is listed under 'unmasked:' but its treatment is {t.treatment}",
                    "give it treatment: unmasked, or remove it from 'unmasked:'"))
            if isinstance(t, DateShift):
                carriers = entity_columns(dataset, t.entity)
                if t.by is not None:
                    if t.by not in carriers:
                        problems.append(Problem(
                            f"{key}.by", f"'by: {t.by}' is not a column pseudonymised with entity {t.entity!r} "
                            f"in dataset {dataset.name!r}",
                            f"name a column with treatment: pseudonymise, entity: {t.entity}"))
                elif len(carriers) != 1:
                    problems.append(Problem(
                        f"{key}.entity", f"date_shift by entity {t.entity!r} needs exactly one column "
                        f"pseudonymised with that entity in dataset {dataset.name!r}, found {len(carriers)}",
                        f"pseudonymise the column identifying the {t.entity} with entity: {t.entity}"
                        + (", or say which one with 'by: <column>'" if carriers else "")))
    return problems


def check_treatments(contract: Contract) -> None:
    """For the contract model's validator: raise ValueError naming the first problem's key and fix.

    The sample's entity is checked when the extract is planned (``masking.column_plans.check_contract``).
    """
    problems = treatment_problems(contract, sample_checks=False)
    if problems:
        first = problems[0]
        raise ValueError(f"{first.key}: {first.message}; {first.fix}")
