"""Date shifting (format v1, design.md): one keyed offset per entity, within ±max_days, never 0.

``u`` = first 4 bytes of HMAC-SHA256(dateshift_key, entity + "\\x00" + canonical identifier), big-endian;
``r = u mod 2m``; offset = ``r − m`` if ``r < m`` else ``r − m + 1`` (m = max_days). Every date of the
entity, in every column and every dataset of the contract, moves by the same number of days, so
intervals within a person are exact while calendar dates are not. Rows whose identifier is null get
null dates (an unshifted date would be a real one).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from masking.hashing import LOCAL, HashPool, scatter_numbers
from masking.pseudonyms import entity_prefix

_UNITS_PER_DAY = {"s": 86_400, "ms": 86_400_000, "us": 86_400_000_000, "ns": 86_400_000_000_000}


def offsets_from_u(u: np.ndarray, max_days: int) -> np.ndarray:
    """The design.md formula on an array of 32-bit unsigned integers."""
    m = np.int64(max_days)
    r = u.astype(np.int64) % (2 * m)
    return np.where(r < m, r - m, r - m + 1).astype(np.int32)


def offsets(identifiers: pa.Array, *, canonicaliser: str | None, key: bytes, entity: str, max_days: int,
            pool: HashPool | None = None) -> pa.Array:
    """Offsets in days (int32) for identifiers; null where the canonical identifier is null."""
    keyed = (pool or LOCAL).keyed(identifiers, canonicaliser=canonicaliser, key=key, prefix=entity_prefix(entity),
                                  width=4)
    u = np.frombuffer(keyed.data, dtype=">u4")
    return scatter_numbers(keyed.valid, offsets_from_u(u, max_days), pa.int32())


def shift(values: pa.Array, days: pa.Array) -> pa.Array:
    """Add ``days`` (int32, may be null) to a date32, date64 or timestamp array; same type out."""
    type_ = values.type
    if pa.types.is_date32(type_):
        return pc.add(values.cast(pa.int32()), days).cast(type_)
    if pa.types.is_date64(type_):
        return pc.add(values.cast(pa.int64()), pc.multiply(days.cast(pa.int64()), 86_400_000)).cast(type_)
    if pa.types.is_timestamp(type_):
        step = pc.multiply(days.cast(pa.int64()), _UNITS_PER_DAY[type_.unit])
        return pc.add(values.cast(pa.int64()), step).cast(type_)
    raise TypeError(f"cannot shift values of type {type_}")
