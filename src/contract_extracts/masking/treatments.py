"""Column treatments: Arrow batch in, Arrow batch out, one plan per delivered column.

Each treatment declares its output type up front (so an empty extract still has the right schema),
checks the source type (fail closed on nonsense such as 'year' of a text column) and describes
itself in plain words for the codebook.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from contract_extracts.contracts.treatments import Generalise, Keep, Pseudonymise
from contract_extracts.core.errors import ContractError, DataError
from contract_extracts.masking.keys import ContractKeys
from contract_extracts.masking.pseudonyms import PSEUDONYM_HEX_CHARS, pseudonymise_array

Treatment = Pseudonymise | Generalise | Keep


@dataclass(frozen=True)
class ColumnPlan:
    """How one source column becomes one delivered column."""

    name: str
    treatment: Treatment
    source_type: pa.DataType
    output_type: pa.DataType
    source_not_null: bool

    @property
    def is_pseudonym(self) -> bool:
        return isinstance(self.treatment, Pseudonymise)


def plan_column(dataset: str, name: str, treatment: Treatment, source_type: pa.DataType,
                source_not_null: bool, file: str | None = None) -> ColumnPlan:
    key = f"datasets.{dataset}.columns.{name}"
    if isinstance(treatment, Pseudonymise):
        if treatment.canonicalise == "integer" and not (
                pa.types.is_integer(source_type) or pa.types.is_string(source_type)):
            raise ContractError(f"canonicalise 'integer' needs an integer or text column, the source has "
                                f"{source_type}", file=file, key=key, fix="use canonicalise: text")
        if treatment.canonicalise != "integer" and not pa.types.is_string(source_type):
            raise ContractError(f"canonicalise {treatment.canonicalise!r} needs a text column, the source "
                                f"has {source_type}", file=file, key=key,
                                fix="use canonicalise: integer for numeric ids")
        out: pa.DataType = pa.string()
    elif isinstance(treatment, Generalise):
        if not (pa.types.is_date(source_type) or pa.types.is_timestamp(source_type)):
            raise ContractError(f"generalise to 'year' needs a date or timestamp column, the source has "
                                f"{source_type}", file=file, key=key,
                                fix="choose another treatment for this column")
        out = pa.int32()
    elif isinstance(treatment, Keep):
        out = source_type
    else:  # pragma: no cover - the model admits no other treatment
        raise ContractError("unsupported treatment", file=file, key=key)
    return ColumnPlan(name=name, treatment=treatment, source_type=source_type, output_type=out,
                      source_not_null=source_not_null)


def output_schema(plans: list[ColumnPlan]) -> pa.Schema:
    return pa.schema([pa.field(p.name, p.output_type, nullable=True) for p in plans])


def mask_batch(batch: pa.RecordBatch, plans: list[ColumnPlan], keys: ContractKeys) -> pa.RecordBatch:
    """Apply every column's treatment to one record batch; columns come out in plan order."""
    arrays = []
    for plan in plans:
        try:
            arrays.append(_apply(batch.column(plan.name), plan, keys))
        except DataError as exc:
            raise DataError(f"column {plan.name!r}: {exc}") from None
    return pa.RecordBatch.from_arrays(arrays, schema=output_schema(plans))


def _apply(values: pa.Array, plan: ColumnPlan, keys: ContractKeys) -> pa.Array:
    t = plan.treatment
    if isinstance(t, Pseudonymise):
        return pseudonymise_array(values, key=keys.pseudonym, entity=t.entity, canonicaliser=t.canonicalise)
    if isinstance(t, Generalise):
        return pc.cast(pc.year(values), pa.int32())
    return values.cast(plan.output_type) if values.type != plan.output_type else values


def describe(plan: ColumnPlan, linkage: str) -> str:
    """The treatment in plain words, for the codebook."""
    t = plan.treatment
    if isinstance(t, Pseudonymise):
        scope = ("across every delivery of this contract" if linkage == "contract"
                 else "within this delivery only (a new delivery gets new pseudonyms)")
        kinds = {"nino": "National Insurance number (upper-cased, spaces removed)",
                 "text": "text identifier (trimmed, spaces collapsed, lower-cased)",
                 "integer": "numeric identifier"}
        return (f"Pseudonym: {PSEUDONYM_HEX_CHARS} lower-case hex characters from a keyed hash (HMAC-SHA256) "
                f"of the {kinds[t.canonicalise]}, entity '{t.entity}'. The same {t.entity} has the same "
                f"pseudonym in every dataset of this package and {scope}; it cannot be linked to data "
                "delivered under any other contract. Empty values are delivered as null.")
    if isinstance(t, Generalise):
        return "Year only (day and month removed from the source date)."
    return "Delivered as held in the source."
