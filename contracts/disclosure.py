"""Disclosure control, aggregate outputs and unmasked columns as written in a contract.

``disclosure`` (microdata risk, docs/disclosure.md)::

    disclosure:
      quasi_identifiers: [date_of_birth, region]   # attributes anyone could know about a person
      contractor_holds: [sex]                      # delivered attributes the contractor also holds elsewhere
      sensitive: [benefit_code]                    # l-diversity is measured for these
      k: 10                                        # every record must match at least k records
      l: 2                                         # optional: at least l distinct sensitive values too
      max_suppressed: 0.05                         # ceiling: share of records that may lose a value
      generalise: true                             # allow stepping up the hierarchies below first
      hierarchies:
        date_of_birth: {bands: [5, 10]}            # year → 5-year band → 10-year band (band start)
        region: {levels: [{North East: North, North West: North, ...}]}
      source_identifiers: {claimants: [first_name, last_name]}   # also searched for by the leak check

The *key* of the risk assessment is ``quasi_identifiers`` ∪ ``contractor_holds``: the delivered
columns a person could be recognised by, because they are public knowledge or because the contractor
holds them for the same people from other sources. Both name delivered (listed) columns; a
pseudonymised column cannot be a key variable (it is new per contract).

``aggregates`` (a top-level contract field: tables delivered instead of, or as well as, microdata)::

    aggregates:
      - name: claimants_by_region
        dataset: claimants
        by: [region, sex]
        measures: [count, {sum: weekly_amount}, {mean: weekly_amount}]
        threshold: 10        # cells with fewer units are suppressed (primary suppression)
        rounding: 5          # published counts are rounded to this base
        dominance: 0.5       # a sum cell where one unit contributes more than this share is suppressed
      - name: people_by_region
        dataset: claimants
        by: [region]
        measures: [count]
        unit: nino           # cell-key perturbation counts people, identified by a pseudonymised column
        protection: cell_key # instead of suppression and rounding (docs/disclosure.md)
    microdata: false         # deliver only the aggregate tables

New optional fields default to ``None`` and are left out of the serialised model when unset, so the
content hash (what approvals sign) of contracts written before they existed does not change.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, field_validator, model_serializer, model_validator

from contracts.base import COLUMN, NAME, Strict, real_words
from contracts.column_treatments import Pseudonymise

if TYPE_CHECKING:  # pragma: no cover
    from contracts.model import Contract

ColumnName = Annotated[str, Field(pattern=COLUMN)]

DEFAULT_MAX_SUPPRESSED = 0.05
DEFAULT_THRESHOLD = 10
DEFAULT_ROUNDING = 5
DEFAULT_DOMINANCE = 0.5


def _drop_none(data: dict[str, Any], optional: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if not (k in optional and v is None)}


# ---- hierarchies -------------------------------------------------------------------------------


class BandHierarchy(Strict):
    """Numeric (integer) bands: level i replaces a value by the start of its ``bands[i-1]``-wide band."""

    bands: list[Annotated[int, Field(ge=2, le=1_000_000)]] = Field(min_length=1, max_length=10)

    @field_validator("bands")
    @classmethod
    def _nested(cls, value: list[int]) -> list[int]:
        for low, high in itertools.pairwise(value):
            if high <= low or high % low:
                raise ValueError("each band width must be a multiple of the one before (e.g. [5, 10, 20]), "
                                 "so that every band of a level lies inside one band of the next")
        return value

    @property
    def depth(self) -> int:
        return len(self.bands)


class MapHierarchy(Strict):
    """Text categories: level i maps each label of level i-1 (level 0: the delivered values) to a coarser one."""

    levels: list[dict[str, str]] = Field(min_length=1, max_length=10)

    @field_validator("levels", mode="before")
    @classmethod
    def _codes_as_text(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{(str(k) if isinstance(k, int) and not isinstance(k, bool) else k): v
                     for k, v in level.items()} if isinstance(level, dict) else level for level in value]
        return value

    @field_validator("levels")
    @classmethod
    def _not_empty(cls, value: list[dict[str, str]]) -> list[dict[str, str]]:
        if any(not level for level in value):
            raise ValueError("a hierarchy level maps at least one value")
        for i, (lower, upper) in enumerate(itertools.pairwise(value), start=2):
            missing = sorted(set(lower.values()) - set(upper))
            if missing:
                raise ValueError(f"level {i} does not map {len(missing)} label(s) of level {i - 1}; every label "
                                 "of a level must be mapped by the next")
        return value

    @property
    def depth(self) -> int:
        return len(self.levels)


Hierarchy = BandHierarchy | MapHierarchy


# ---- disclosure ----------------------------------------------------------------------------------


class Disclosure(Strict):
    quasi_identifiers: list[ColumnName] = Field(default_factory=list)
    k: int = Field(default=10, ge=2)
    contractor_holds: list[ColumnName] = Field(default_factory=list)
    sensitive: list[ColumnName] | None = None
    l: int | None = Field(default=None, ge=2)  # noqa: E741 - the established name (l-diversity)
    max_suppressed: float | None = Field(default=None, ge=0, le=1)
    generalise: bool | None = None
    hierarchies: dict[ColumnName, Hierarchy] | None = None
    source_identifiers: dict[Annotated[str, Field(pattern=NAME)], list[ColumnName]] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Disclosure:
        for name, values in (("quasi_identifiers", self.quasi_identifiers),
                             ("contractor_holds", self.contractor_holds),
                             ("sensitive", self.sensitive or [])):
            if len(set(values)) != len(values):
                raise ValueError(f"disclosure.{name} lists a column twice")
        both = sorted(set(self.key_columns) & set(self.sensitive or []))
        if both:
            raise ValueError(f"disclosure: {', '.join(both)} cannot be both a key variable and sensitive")
        if self.l is not None and not self.sensitive:
            raise ValueError("disclosure.l needs 'sensitive' attributes to measure diversity over")
        outside = sorted(set(self.hierarchies or {}) - set(self.key_columns))
        if outside:
            raise ValueError(f"disclosure.hierarchies names columns that are not key variables: {', '.join(outside)}")
        if self.generalise and not self.hierarchies:
            raise ValueError("disclosure.generalise needs 'hierarchies' to step up")
        return self

    @model_serializer(mode="wrap")
    def _serialise(self, handler: Any) -> dict[str, Any]:
        return _drop_none(handler(self), ("sensitive", "l", "max_suppressed", "generalise", "hierarchies",
                                          "source_identifiers"))

    @property
    def key_columns(self) -> list[str]:
        """quasi_identifiers ∪ contractor_holds, in that order, each once."""
        return list(dict.fromkeys([*self.quasi_identifiers, *self.contractor_holds]))

    @property
    def sensitive_columns(self) -> list[str]:
        return list(self.sensitive or [])

    @property
    def ceiling(self) -> float:
        return DEFAULT_MAX_SUPPRESSED if self.max_suppressed is None else self.max_suppressed

    @property
    def may_generalise(self) -> bool:
        return bool(self.generalise)


# ---- aggregate tables ---------------------------------------------------------------------------


class CountMeasure(Strict):
    """``count`` (or ``{count}``): the number of units in the cell."""

    count: None = None

    @model_validator(mode="before")
    @classmethod
    def _named(cls, value: Any) -> Any:
        if isinstance(value, dict) and "count" not in value:
            raise ValueError("a measure is 'count', {sum: <column>} or {mean: <column>}")
        return value


class SumMeasure(Strict):
    sum: str = Field(pattern=COLUMN)


class MeanMeasure(Strict):
    mean: str = Field(pattern=COLUMN)


Measure = Literal["count"] | CountMeasure | SumMeasure | MeanMeasure


def measure_kind(measure: Measure) -> tuple[str, str | None]:
    """('count', None), ('sum', column) or ('mean', column)."""
    if measure == "count" or isinstance(measure, CountMeasure):
        return "count", None
    if isinstance(measure, SumMeasure):
        return "sum", measure.sum
    assert isinstance(measure, MeanMeasure)
    return "mean", measure.mean


class Aggregate(Strict):
    name: str = Field(pattern=NAME, description="the file in the package is data/<name>.parquet")
    dataset: str = Field(pattern=NAME)
    by: list[ColumnName] = Field(min_length=1, max_length=6)
    measures: list[Measure] = Field(min_length=1)
    threshold: int | None = Field(default=None, ge=1, description="minimum units per published cell (10)")
    rounding: int | None = Field(default=None, ge=1, description="published counts are multiples of this (5)")
    dominance: float | None = Field(default=None, gt=0, le=1,
                                    description="largest share one unit may contribute to a sum (0.5)")
    unit: ColumnName | None = Field(default=None, description="count distinct units of this column (default: rows)")
    weight: ColumnName | None = Field(default=None, description="grossing weight column (default: 1/sampling fraction)")
    margins: bool | None = Field(default=None, description="publish row, column and grand totals (true)")
    protection: Literal["suppression", "cell_key"] | None = Field(
        default=None, description="suppression (threshold, rounding, secondary suppression; the default) or "
                                  "cell_key (cell-key perturbation of counts, docs/disclosure.md)")

    @model_validator(mode="after")
    def _consistent(self) -> Aggregate:
        if self.cell_key:
            if self.unit is None:
                raise ValueError(f"aggregate {self.name!r}: protection cell_key needs 'unit', the pseudonymised "
                                 "column that identifies the people counted (their record keys derive from it)")
            if self.kinds() != [("count", None)]:
                raise ValueError(f"aggregate {self.name!r}: protection cell_key perturbs counts only; publish sums "
                                 "and means in a table with protection: suppression")
            named = [n for n in ("threshold", "rounding", "dominance") if getattr(self, n) is not None]
            if named:
                raise ValueError(f"aggregate {self.name!r}: {', '.join(named)} belong to protection: suppression; "
                                 "a cell_key table is protected by its perturbation table instead")
        if len(set(self.by)) != len(self.by):
            raise ValueError(f"aggregate {self.name!r}: 'by' lists a column twice")
        kinds = [measure_kind(m) for m in self.measures]
        if len(set(kinds)) != len(kinds):
            raise ValueError(f"aggregate {self.name!r}: a measure is listed twice")
        measured = {c for _, c in kinds if c is not None}
        if measured & set(self.by):
            raise ValueError(f"aggregate {self.name!r}: a 'by' column cannot also be measured")
        if self.unit is not None and self.weight is not None:
            raise ValueError(f"aggregate {self.name!r}: 'weight' applies to rows; it cannot be combined with 'unit'")
        return self

    @model_serializer(mode="wrap")
    def _serialise(self, handler: Any) -> dict[str, Any]:
        return _drop_none(handler(self), ("threshold", "rounding", "dominance", "unit", "weight", "margins",
                                          "protection"))

    @property
    def cell_key(self) -> bool:
        """Protected by cell-key perturbation (else by suppression and rounding)."""
        return self.protection == "cell_key"

    @property
    def cell_threshold(self) -> int:
        return DEFAULT_THRESHOLD if self.threshold is None else self.threshold

    @property
    def rounding_base(self) -> int:
        return DEFAULT_ROUNDING if self.rounding is None else self.rounding

    @property
    def dominance_share(self) -> float:
        return DEFAULT_DOMINANCE if self.dominance is None else self.dominance

    @property
    def with_margins(self) -> bool:
        return True if self.margins is None else self.margins

    def kinds(self) -> list[tuple[str, str | None]]:
        return [measure_kind(m) for m in self.measures]


# ---- checks against the whole contract ----------------------------------------------------------


def contract_aggregates(contract: Contract) -> list[Aggregate]:
    """The contract's aggregate tables (``[]`` until ``Contract`` has the ``aggregates`` field)."""
    return list(getattr(contract, "aggregates", None) or [])


def delivers_microdata(contract: Contract) -> bool:
    """False only when the contract says ``microdata: false``."""
    return getattr(contract, "microdata", None) is not False


def disclosure_problems(contract: Contract) -> list[tuple[str, str]]:
    """(key, message) for everything wrong with the disclosure and aggregate settings of a contract.

    Only names columns, datasets and settings (never data). Used by the contract model's validator and,
    fail-closed, again by the disclosure stage.
    """
    problems: list[tuple[str, str]] = []
    listed: dict[str, Any] = {}
    for each in contract.datasets:
        for column, treatment in each.columns.items():
            listed.setdefault(column, treatment)
    d = contract.disclosure
    if d is not None:
        for name, values in (("quasi_identifiers", d.quasi_identifiers), ("contractor_holds", d.contractor_holds),
                             ("sensitive", d.sensitive_columns)):
            unknown = [c for c in values if c not in listed]
            if unknown:
                problems.append((f"disclosure.{name}", f"names unlisted columns: {', '.join(unknown)}"))
        pseudonyms = [c for c in d.key_columns + d.sensitive_columns if isinstance(listed.get(c), Pseudonymise)]
        if pseudonyms:
            problems.append(("disclosure", f"pseudonymised columns cannot be key variables or sensitive "
                                           f"attributes: {', '.join(pseudonyms)}"))
        names = {ds.name: ds for ds in contract.datasets}
        for dataset_name, columns in (d.source_identifiers or {}).items():
            if dataset_name not in names:
                problems.append((f"disclosure.source_identifiers.{dataset_name}", "is not a dataset of the contract"))
            elif not columns:
                problems.append((f"disclosure.source_identifiers.{dataset_name}", "lists no column"))
    names = {ds.name: ds for ds in contract.datasets}
    seen: set[str] = set()
    aggregates = contract_aggregates(contract)
    for i, agg in enumerate(aggregates):
        key = f"aggregates[{i}]"
        if agg.name in seen:
            problems.append((f"{key}.name", f"two aggregates are called {agg.name!r}"))
        seen.add(agg.name)
        if agg.name in names:
            problems.append((f"{key}.name", f"{agg.name!r} is also a dataset name; the files would clash"))
        dataset = names.get(agg.dataset)
        if dataset is None:
            problems.append((f"{key}.dataset", f"{agg.dataset!r} is not a dataset of the contract"))
            continue
        used = [*agg.by, *(c for _, c in agg.kinds() if c), *(c for c in (agg.unit, agg.weight) if c)]
        unknown = [c for c in used if c not in dataset.columns]
        if unknown:
            problems.append((key, f"names columns that dataset {agg.dataset!r} does not list: {', '.join(unknown)}"))
        pseudonymised = [c for c in [*agg.by, *(c for _, c in agg.kinds() if c)]
                         if isinstance(dataset.columns.get(c), Pseudonymise)]
        if pseudonymised:
            problems.append((key, f"cannot group by or measure pseudonymised columns: {', '.join(pseudonymised)}"))
        if agg.cell_key and agg.unit in dataset.columns and not isinstance(dataset.columns[agg.unit], Pseudonymise):
            problems.append((f"{key}.unit", f"protection cell_key derives each unit's record key from {agg.unit!r}, "
                                            "which must be a pseudonymised column (e.g. unit: nino)"))
    problems += _mixed_protection(aggregates)
    if not delivers_microdata(contract) and not aggregates:
        problems.append(("microdata", "microdata: false needs at least one table under 'aggregates'"))
    return problems


def _mixed_protection(aggregates: list[Aggregate]) -> list[tuple[str, str]]:
    """The tables of one dataset share one protection. Their cells overlap (margins, grand totals, a known sample
    size): a cell-key table would publish, perturbed, a cell a suppression table withholds (or show it is small by
    leaving it out), and a rounded count would tell the noise of a perturbed one."""
    problems: list[tuple[str, str]] = []
    first: dict[str, tuple[int, Aggregate]] = {}
    for i, agg in enumerate(aggregates):
        j, other = first.setdefault(agg.dataset, (i, agg))
        if other.cell_key != agg.cell_key:
            problems.append((f"aggregates[{i}].protection",
                             f"{agg.name!r} and {other.name!r} (aggregates[{j}]) are tables of dataset {agg.dataset!r} "
                             "under different protections (suppression and cell_key): their cells overlap, and one "
                             "would undo the other. Protect every table of a dataset the same way"))
    return problems


def check_disclosure(contract: Contract) -> None:
    """For the contract model's validator: raise ValueError naming the first problem's key."""
    problems = disclosure_problems(contract)
    if problems:
        key, message = problems[0]
        raise ValueError(f"{key}: {message}")


class Unmasked(Strict):
    """A column given in clear: it needs a business requirement in words and two approvers, one an IAM."""

    dataset: str = Field(pattern=NAME)
    column: str = Field(pattern=COLUMN)
    business_requirement: str = Field(min_length=10, max_length=2000)

    @field_validator("business_requirement")
    @classmethod
    def _in_words(cls, value: str) -> str:
        # The text is kept as written (the content hash covers it); only its substance is checked.
        real_words(value, "the business requirement")
        return value
