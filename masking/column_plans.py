"""Column plans: how each delivered column is made from its source column, applied to Arrow batches.

One ``ColumnPlan`` per delivered column binds the contract's treatment (``contracts.column_treatments``) to the
source column's Arrow type. Each plan declares its output type up front (so an empty extract still has
the right schema) and checks the source type (fail closed on nonsense such as 'year' of a text column or
a date shift of a number); ``mask_batch`` applies the plans to a record batch (Arrow batch in, Arrow batch
out) and ``describe`` says in plain words what each did, for the codebook. Everything runs through pyarrow
compute or the batched keyed hashing of ``masking.hashing``; nothing loops over values in Python.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

import numpy as np
import pyarrow as pa

from contracts.column_treatments import (
    DATE_LEVELS,
    POSTCODE_LEVELS,
    AnyTreatment,
    BottomCode,
    DateShift,
    Generalise,
    Keep,
    Pseudonymise,
    Round,
    Suppress,
    TopCode,
    Unmasked,
    date_shift_source,
    treatment_problems,
)
from contracts.model import Contract
from core.errors import ContractError, DataError
from masking import dateshift, generalise
from masking.hashing import HashPool
from masking.keys import ContractKeys
from masking.pseudonyms import PSEUDONYM_HEX_CHARS, pseudonymise_array

Treatment = AnyTreatment


@dataclass(frozen=True)
class ColumnPlan:
    """How one source column becomes one delivered column."""

    name: str
    treatment: Treatment
    source_type: pa.DataType
    output_type: pa.DataType
    source_not_null: bool
    by: str | None = None  # date_shift: the column whose identifier decides the offset
    by_canonicaliser: str | None = None
    reference_date: dt.date | None = None  # generalise to age_band

    @property
    def is_pseudonym(self) -> bool:
        return isinstance(self.treatment, Pseudonymise)

    @property
    def output_not_null(self) -> bool:
        """Whether every delivered value is non-null when the source column is NOT NULL."""
        t = self.treatment
        if isinstance(t, Suppress | DateShift):
            return False  # all null; null identifier → null date
        if isinstance(t, Generalise) and t.to in (*POSTCODE_LEVELS, "age_band"):
            return False  # unrecognised postcode / birth after the reference date → null
        return self.source_not_null


def _is_date(t: pa.DataType) -> bool:
    return bool(pa.types.is_date(t) or pa.types.is_timestamp(t))


def _is_number(t: pa.DataType) -> bool:
    return bool(pa.types.is_integer(t) or pa.types.is_decimal(t) or pa.types.is_floating(t))


def _fits(number: Decimal, t: pa.DataType) -> bool:
    """Whether ``number`` is exactly representable in a column of type ``t``."""
    if pa.types.is_integer(t):
        return number == number.to_integral_value()
    if pa.types.is_decimal(t):
        scaled: Decimal = number * (Decimal(10) ** t.scale)
        return scaled == scaled.to_integral_value()
    return True


def plan_column(dataset: str, name: str, treatment: Treatment, source_type: pa.DataType,
                source_not_null: bool, file: str | None = None, *, by: str | None = None,
                by_canonicaliser: str | None = None, reference_date: dt.date | None = None) -> ColumnPlan:
    key = f"datasets.{dataset}.columns.{name}"

    def refuse(message: str, fix: str) -> ContractError:
        return ContractError(message, file=file, key=key, fix=fix)

    t = treatment
    out: pa.DataType = source_type
    if isinstance(t, Pseudonymise):
        if t.canonicalise == "integer" and not (pa.types.is_integer(source_type) or pa.types.is_string(source_type)
                                                or pa.types.is_large_string(source_type)):
            raise refuse(f"canonicalise 'integer' needs an integer or text column, the source has {source_type}",
                         "use canonicalise: text")
        if t.canonicalise != "integer" and not (pa.types.is_string(source_type)
                                                or pa.types.is_large_string(source_type)):
            raise refuse(f"canonicalise {t.canonicalise!r} needs a text column, the source has {source_type}",
                         "use canonicalise: integer for numeric ids")
        out = pa.string()
    elif isinstance(t, Generalise):
        text = pa.types.is_string(source_type) or pa.types.is_large_string(source_type)
        if t.to in DATE_LEVELS and not _is_date(source_type):
            raise refuse(f"generalise to {t.to!r} needs a date or timestamp column, the source has {source_type}",
                         "choose another treatment for this column")
        if t.to in POSTCODE_LEVELS and not text:
            raise refuse(f"generalise to {t.to!r} needs a text column of UK postcodes, the source has "
                         f"{source_type}", "choose another treatment for this column")
        if t.to == "band" and not _is_number(source_type):
            raise refuse(f"generalise to 'band' needs a numeric column, the source has {source_type}",
                         "use generalise to 'mapping' for codes, or another treatment")
        if t.to == "mapping" and not (text or pa.types.is_integer(source_type)):
            raise refuse(f"generalise to 'mapping' needs a text or integer code column, the source has "
                         f"{source_type}", "choose another treatment for this column")
        if t.to == "age_band":
            reference_date = t.at if isinstance(t.at, dt.date) else reference_date
            if reference_date is None:
                raise refuse("generalise to 'age_band' needs a reference date", "give 'at: YYYY-MM-DD'")
        out = pa.int32() if t.to == "year" else pa.string()
    elif isinstance(t, Round):
        if not _is_number(source_type):
            raise refuse(f"round needs a numeric column, the source has {source_type}",
                         "choose another treatment for this column")
        for label, number in (("base", t.base), ("top_code", t.top_code), ("bottom_code", t.bottom_code)):
            if number is not None and not _fits(number, source_type):
                raise refuse(f"{label} {number} cannot be held by the column type {source_type}",
                             "use a value with no more decimal places than the column")
    elif isinstance(t, TopCode | BottomCode):
        if not _is_number(source_type):
            raise refuse(f"{t.treatment} needs a numeric column, the source has {source_type}",
                         "choose another treatment for this column")
        if not _fits(t.coded, source_type):
            raise refuse(f"the coded value {t.coded} cannot be held by the column type {source_type}",
                         "use a value with no more decimal places than the column")
    elif isinstance(t, DateShift):
        if not _is_date(source_type):
            raise refuse(f"date_shift needs a date or timestamp column, the source has {source_type}",
                         "choose another treatment for this column")
        if by is None or by_canonicaliser is None:
            raise refuse(f"date_shift needs the column pseudonymised with entity {t.entity!r}",
                         f"pseudonymise the identifier of the {t.entity} in this dataset with entity: {t.entity}")
    elif not isinstance(t, Keep | Suppress | Unmasked):  # pragma: no cover - the model admits no other
        raise refuse("unsupported treatment", "see docs/masking.md")
    return ColumnPlan(name=name, treatment=t, source_type=source_type, output_type=out,
                      source_not_null=source_not_null, by=by, by_canonicaliser=by_canonicaliser,
                      reference_date=reference_date)


def check_contract(contract: Contract, file: str | None = None) -> None:
    """Raise ContractError (file, key, fix) for the first treatment problem visible without the source."""
    problems = treatment_problems(contract)
    if problems:
        first = problems[0]
        raise ContractError(first.message, file=file, key=first.key, fix=first.fix)


def plan_contract(contract: Contract, sources: Mapping[str, Sequence[tuple[str, pa.DataType, bool]]], *,
                  file: str | None = None, reference_date: dt.date | None = None) -> dict[str, list[ColumnPlan]]:
    """Plans for every dataset, given each dataset's source columns as (name, arrow type, not null).

    Besides each column's own checks: when the contract shifts dates, no date or timestamp column of
    the contract may be delivered as held (``keep``): a real date beside shifted ones of the same
    person would reveal the offset.
    """
    check_contract(contract, file)
    plans: dict[str, list[ColumnPlan]] = {}
    for dataset in contract.datasets:
        by_name = {name: (type_, not_null) for name, type_, not_null in sources[dataset.name]}
        dataset_plans: list[ColumnPlan] = []
        for name, treatment in dataset.columns.items():
            type_, not_null = by_name[name]
            by: str | None = None
            by_canonicaliser: str | None = None
            if isinstance(treatment, DateShift):
                by = date_shift_source(dataset, name, treatment)
                by_treatment = dataset.columns[by]
                # Not a pseudonymised column: plan_column refuses the shift with the key and the fix.
                by_canonicaliser = by_treatment.canonicalise if isinstance(by_treatment, Pseudonymise) else None
            dataset_plans.append(plan_column(dataset.name, name, treatment, type_, not_null, file, by=by,
                                             by_canonicaliser=by_canonicaliser, reference_date=reference_date))
        plans[dataset.name] = dataset_plans
    if any(isinstance(p.treatment, DateShift) for ps in plans.values() for p in ps):
        for dataset_name, ps in plans.items():
            for p in ps:
                if isinstance(p.treatment, Keep) and _is_date(p.source_type):
                    raise ContractError(
                        f"column {p.name!r} is a date kept as held, but the contract shifts dates; a real date "
                        "beside shifted dates of the same person reveals the shift", file=file,
                        key=f"datasets.{dataset_name}.columns.{p.name}",
                        fix="date_shift it with the same entity, generalise it (e.g. to year), or leave it out")
    return plans


def output_schema(plans: list[ColumnPlan]) -> pa.Schema:
    return pa.schema([pa.field(p.name, p.output_type, nullable=True) for p in plans])


def mask_batch(batch: pa.RecordBatch, plans: list[ColumnPlan], keys: ContractKeys, *,
               pool: HashPool | None = None) -> pa.RecordBatch:
    """Apply every column's treatment to one record batch; columns come out in plan order."""
    arrays: list[pa.Array] = []
    for plan in plans:
        try:
            arrays.append(_apply(batch, plan, keys, pool))
        except DataError as exc:
            text = str(exc)
            raise DataError(text if text.startswith("column ") else f"column {plan.name!r}: {text}") from None
    return pa.RecordBatch.from_arrays(arrays, schema=output_schema(plans))


def _apply(batch: pa.RecordBatch, plan: ColumnPlan, keys: ContractKeys, pool: HashPool | None) -> pa.Array:
    values = batch.column(plan.name)
    t = plan.treatment
    if isinstance(t, Pseudonymise):
        return pseudonymise_array(values, key=keys.pseudonym, entity=t.entity, canonicaliser=t.canonicalise,
                                  pool=pool)
    if isinstance(t, Generalise):
        if t.to in DATE_LEVELS:
            if t.to == "age_band":
                assert plan.reference_date is not None  # plan_column refuses an age band without one
                return generalise.age_band(values, plan.reference_date, width=t.width, top=t.top,
                                           edges=t.age_edges)
            return generalise.date_level(values, t.to)
        if t.to in POSTCODE_LEVELS:
            return generalise.postcode_level(values, t.to)
        if t.to == "band":
            return generalise.number_band(values, list(t.edges or []))
        return generalise.map_categories(values, dict(t.mapping or {}), t.other)
    if isinstance(t, Round):
        out = generalise.round_to(values, t.base)
        if t.top_code is not None:
            out = generalise.top_code(out, t.top_code, t.top_code)
        if t.bottom_code is not None:
            out = generalise.bottom_code(out, t.bottom_code, t.bottom_code)
        return out
    if isinstance(t, TopCode):
        return generalise.top_code(values, t.threshold, t.coded)
    if isinstance(t, BottomCode):
        return generalise.bottom_code(values, t.threshold, t.coded)
    if isinstance(t, DateShift):
        try:
            days = dateshift.offsets(batch.column(plan.by), canonicaliser=plan.by_canonicaliser,
                                     key=keys.dateshift, entity=t.entity, max_days=t.max_days, pool=pool)
        except DataError as exc:
            raise DataError(f"column {plan.by!r} (whose {t.entity} decides the shift of {plan.name!r}): {exc}") \
                from None
        return dateshift.shift(values, days)
    if isinstance(t, Suppress):
        return pa.nulls(len(values), plan.output_type)
    return values.cast(plan.output_type) if values.type != plan.output_type else values


# ---- the codebook, in plain words ----------------------------------------------------------------

_KINDS = {"nino": "National Insurance number (upper-cased, spaces removed)",
          "postcode": "postcode (upper-cased, spaces removed)",
          "email": "e-mail address (trimmed, lower-cased)",
          "phone": "phone number (in international form, e.g. +44…)",
          "text": "text identifier (trimmed, spaces collapsed, lower-cased)",
          "integer": "numeric identifier"}


def _n(number: Decimal | None) -> str:
    return "" if number is None else generalise.number_text(number)


def describe(plan: ColumnPlan, linkage: str) -> str:
    """The treatment in plain words, for the codebook."""
    t = plan.treatment
    if isinstance(t, Pseudonymise):
        scope = "in every delivery of this contract" if linkage == "contract" else "within this delivery only"
        return (f"Pseudonym: {PSEUDONYM_HEX_CHARS} lower-case hex characters from a keyed hash (HMAC-SHA256) "
                f"of the {_KINDS[t.canonicalise]}, entity '{t.entity}'. The same {t.entity} has the same "
                f"pseudonym in every dataset of this package and {scope}; it cannot be linked to data "
                "delivered under any other contract. Empty values are delivered as null.")
    if isinstance(t, Generalise):
        if t.to == "year":
            return "Year only (day and month removed from the source date)."
        if t.to == "quarter":
            return "Calendar quarter only, written like 2024-Q1 (day and month removed)."
        if t.to == "month":
            return "Calendar month only, written like 2024-03 (day removed)."
        if t.to == "age_band":
            at = (plan.reference_date.isoformat() if plan.reference_date else "the delivery date")
            bands = generalise.age_band_labels(t.width, t.top, t.age_edges)
            shown = ", ".join(bands) if len(bands) <= 14 else ", ".join([*bands[:4], "…", *bands[-2:]])
            return (f"Age band on {at} (completed years), one of: {shown}. The date itself is not delivered; "
                    "a date after the reference date is delivered as null.")
        if t.to in POSTCODE_LEVELS:
            example = {"area": "SW", "district": "SW1A", "sector": "SW1A 1"}[t.to]
            return (f"Postcode {t.to} only (e.g. {example}); the rest of the postcode is removed. Values that are "
                    "not recognisable UK postcodes are delivered as null.")
        if t.to == "band":
            return "Band of the value, one of: " + ", ".join(generalise.number_band_labels(list(t.edges or []))) \
                + " (lower edge included)."
        groups = sorted(set((t.mapping or {}).values()) | ({t.other} if t.other else set()))
        return ("Grouped: each source code is replaced by its group, one of: " + ", ".join(groups) + "."
                + (f" Codes not in the contract's table are delivered as '{t.other}'." if t.other else ""))
    if isinstance(t, Round):
        text = f"Rounded to the nearest multiple of {_n(t.base)} (halves away from zero)."
        if t.top_code is not None:
            text += f" Values above {_n(t.top_code)} are delivered as {_n(t.top_code)}."
        if t.bottom_code is not None:
            text += f" Values below {_n(t.bottom_code)} are delivered as {_n(t.bottom_code)}."
        return text
    if isinstance(t, TopCode):
        return f"Top-coded: values above {_n(t.threshold)} are delivered as {_n(t.coded)}; others as held."
    if isinstance(t, BottomCode):
        return f"Bottom-coded: values below {_n(t.threshold)} are delivered as {_n(t.coded)}; others as held."
    if isinstance(t, DateShift):
        return (f"Shifted date: every date of the same {t.entity} is moved by the same secret number of days "
                f"(between -{t.max_days} and +{t.max_days}, never 0), in every dataset of this package. Intervals "
                f"between dates of one {t.entity} are exact; calendar dates are not. Rows without an identifier "
                "have no date (null).")
    if isinstance(t, Suppress):
        return "Suppressed: the column is present for compatibility but every value is null."
    if isinstance(t, Unmasked):
        return ("Delivered in clear (unmasked) under an approved business requirement of the contract; handle as "
                "directly identifying personal data.")
    return "Delivered as held in the source."


def filter_rows(batch: pa.RecordBatch, valid: np.ndarray, keep_valid: np.ndarray) -> pa.RecordBatch:
    """Keep the rows whose identifier is valid and selected (``keep_valid``: one flag per valid identifier)."""
    mask = np.zeros(len(valid), dtype=bool)
    mask[valid] = keep_valid
    return batch.filter(pa.array(mask, pa.bool_()))
