"""Record keys for cell-key perturbation of aggregate tables (docs/disclosure.md, docs/formats.md).

Every unit a cell-key table counts (a person, identified by the raw value of the table's ``unit`` column)
carries a record key in 0…255. The secret behind it belongs to the *source*, not to a contract:

    record_key_secret = HKDF-SHA256(ikm=master, salt=None, info="contract-extracts/v1/record-key/<source connection>",
                                    length=32)
    record_key(unit)  = first byte of HMAC-SHA256(record_key_secret, entity + 0x00 + canonical(value))

with the entity and canonicaliser of the unit column's ``pseudonymise`` treatment (the same entity input
as pseudonyms and sampling, design.md). So the same person has the same record key in every contract and
every delivery that reads the source, a cell made of the same people gets the same cell key and the same
noise everywhere, and averaging releases gains nothing. The record keys live only in staging, as a
column ``__record_key__<unit>`` beside the masked data; the disclosure stage reads them for the tables
and removes the column before anything is validated or packaged. They never reach a recipient (with
them and the published ptable, the noise could be taken off again).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from contracts.column_treatments import Pseudonymise
from contracts.disclosure import contract_aggregates
from contracts.model import Contract
from masking.hashing import LOCAL, HashPool, scatter_numbers
from masking.keys import FORMAT
from masking.pseudonyms import entity_prefix

PREFIX = "__record_key__"
KEY_RANGE = 256  # record and cell keys are integers modulo this


def record_key_column(unit: str) -> str:
    """The staging-only column holding the record keys of the units identified by column ``unit``."""
    return f"{PREFIX}{unit}"


def is_record_key_column(name: str) -> bool:
    return name.startswith(PREFIX)


def record_key_secret(master: bytes, connection: str) -> bytes:
    """The source's record-key secret (module docstring): one per source connection, never per contract."""
    info = f"{FORMAT}/record-key/{connection}"
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info.encode("utf-8")).derive(master)


@dataclass(frozen=True)
class RecordKeyPlan:
    """Record keys of one dataset's units: read from the raw values of ``column`` (a pseudonymised column)."""

    column: str
    entity: str
    canonicaliser: str | None

    @property
    def output(self) -> str:
        return record_key_column(self.column)


def plan_record_keys(contract: Contract) -> dict[str, tuple[RecordKeyPlan, ...]]:
    """Per dataset: the record keys its cell-key tables need (none for a contract without such tables)."""
    wanted: dict[str, dict[str, RecordKeyPlan]] = {}
    for agg in contract_aggregates(contract):
        if not agg.cell_key or agg.unit is None:
            continue
        treatment = contract.dataset(agg.dataset).columns.get(agg.unit)
        if not isinstance(treatment, Pseudonymise):  # contracts.disclosure refuses this; fail closed regardless
            raise ValueError(f"aggregate {agg.name!r}: unit {agg.unit!r} is not a pseudonymised column")
        wanted.setdefault(agg.dataset, {})[agg.unit] = RecordKeyPlan(
            column=agg.unit, entity=treatment.entity, canonicaliser=treatment.canonicalise)
    return {dataset: tuple(plans.values()) for dataset, plans in wanted.items()}


def record_keys(values: pa.Array | pa.ChunkedArray, plan: RecordKeyPlan, secret: bytes,
                pool: HashPool | None = None) -> pa.Array:
    """The record key (uint8) of every row's unit; null where the unit's canonical value is null."""
    keyed = (pool or LOCAL).keyed(values, canonicaliser=plan.canonicaliser, key=secret,
                                  prefix=entity_prefix(plan.entity), width=1)
    return scatter_numbers(keyed.valid, np.frombuffer(keyed.data, dtype=np.uint8), pa.uint8())


def output_fields(plans: Iterable[RecordKeyPlan]) -> list[pa.Field]:
    return [pa.field(p.output, pa.uint8(), nullable=True) for p in plans]


def with_record_keys(raw: pa.RecordBatch, masked: pa.RecordBatch, plans: tuple[RecordKeyPlan, ...], secret: bytes,
                     pool: HashPool | None = None) -> pa.RecordBatch:
    """``masked`` with one record-key column per plan, computed from the same rows of ``raw`` (before masking)."""
    if not plans:
        return masked
    arrays = list(masked.columns)
    for plan in plans:
        arrays.append(record_keys(raw.column(plan.column), plan, secret, pool))
    schema = pa.schema([*masked.schema, *output_fields(plans)])
    return pa.RecordBatch.from_arrays(arrays, schema=schema)
