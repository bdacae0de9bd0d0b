"""Generalisation, rounding and coding: pyarrow compute over whole arrays, no Python loop per value.

Nulls stay null everywhere. Values that cannot be generalised as asked (an unparseable postcode, a
date of birth after the reference date) become null, never a guess; a code missing from a mapping
without an ``other`` label stops the run (a rare code may identify someone).
"""

from __future__ import annotations

import datetime as dt
import itertools
from decimal import Decimal

import pyarrow as pa
import pyarrow.compute as pc

from core.errors import DataError
from masking.canonical import canonicalise

# UK postcode, canonical (no spaces, upper case): area letters, district, sector digit, unit letters.
POSTCODE = r"^(?P<area>[A-Z]{1,2})(?P<district>[0-9][0-9A-Z]?)(?P<sector>[0-9])(?P<unit>[A-Z]{2})$"


# ---- dates -------------------------------------------------------------------------------------


def date_level(values: pa.Array, level: str) -> pa.Array:
    """year → int32 (2024); quarter → "2024-Q1"; month → "2024-03"."""
    if level == "year":
        return pc.cast(pc.year(values), pa.int32())
    if level == "quarter":
        return pc.binary_join_element_wise(pc.cast(pc.year(values), pa.string()),
                                           pc.cast(pc.quarter(values), pa.string()), "-Q")
    if level == "month":
        return pc.strftime(values, format="%Y-%m")
    raise ValueError(f"unknown date level {level!r}")


def ages(values: pa.Array, at: dt.date) -> pa.Array:
    """Completed years of age on ``at`` (a 29 February birthday counts from 1 March); negative → null."""
    year, month, day = pc.year(values), pc.month(values), pc.day(values)
    before_birthday = pc.or_(pc.greater(month, at.month),
                             pc.and_(pc.equal(month, at.month), pc.greater(day, at.day)))
    age = pc.subtract(pc.subtract(pa.scalar(at.year, pa.int64()), year), pc.cast(before_birthday, pa.int64()))
    return pc.if_else(pc.less(age, 0), pa.scalar(None, pa.int64()), age)


def age_band_labels(width: int | None, top: int | None, edges: list[int] | None) -> list[str]:
    """Every label an age band can take, in order (for the codebook)."""
    if edges is not None:
        labels = [f"0-{edges[0] - 1}"] if edges[0] > 0 else []
        labels += [f"{a}-{b - 1}" if b - 1 > a else f"{a}" for a, b in itertools.pairwise(edges)]
        return [*labels, f"{edges[-1]}+"]
    width = width or 5
    stop = top if top is not None else 150
    labels = [f"{lo}-{lo + width - 1}" if width > 1 else f"{lo}" for lo in range(0, stop, width)]
    return [*labels, f"{top}+"] if top is not None else labels


def age_band(values: pa.Array, at: dt.date, *, width: int | None = None, top: int | None = None,
             edges: list[int] | None = None) -> pa.Array:
    """Age on ``at`` as a band label: width 5 → "35-39"; ``top: 90`` → "90+"; or explicit ``edges``."""
    age = ages(values, at)
    if edges is not None:
        index = _band_index(age, [pa.scalar(e, pa.int64()) for e in edges])
        labels = age_band_labels(None, None, edges)
        if edges[0] == 0:
            labels = ["", *labels]  # index 0 (below 0) cannot happen: negative ages are null
        return pc.take(pa.array(labels, pa.string()), index)
    width = width or 5
    low = pc.multiply(pc.divide(age, width), width)
    if width == 1:
        label = pc.cast(low, pa.string())
    else:
        label = pc.binary_join_element_wise(pc.cast(low, pa.string()),
                                            pc.cast(pc.add(low, width - 1), pa.string()), "-")
    if top is not None:
        label = pc.if_else(pc.greater_equal(age, top), pa.scalar(f"{top}+"), label)
    return label


# ---- postcodes ---------------------------------------------------------------------------------


def postcode_level(values: pa.Array, level: str) -> pa.Array:
    """area "SW"; district (outward code) "SW1A"; sector "SW1A 1". Unrecognised postcodes → null."""
    parts = pc.extract_regex(canonicalise(values, "postcode"), pattern=POSTCODE)
    area = pc.struct_field(parts, "area")
    if level == "area":
        return area
    district = pc.binary_join_element_wise(area, pc.struct_field(parts, "district"), "")
    if level == "district":
        return district
    if level == "sector":
        return pc.binary_join_element_wise(district, pc.struct_field(parts, "sector"), " ")
    raise ValueError(f"unknown postcode level {level!r}")


# ---- numbers -----------------------------------------------------------------------------------


def number_text(number: Decimal) -> str:
    """A contract number as written in labels and the codebook: plain decimal, no trailing zeros."""
    return format(number.normalize(), "f")


def number_band_labels(edges: list[Decimal]) -> list[str]:
    """"(-inf, e0)", "[e0, e1)", …, "[ek, inf)"."""
    texts = [number_text(e) for e in edges]
    return [f"(-inf, {texts[0]})",
            *[f"[{a}, {b})" for a, b in itertools.pairwise(texts)],
            f"[{texts[-1]}, inf)"]


def number_band(values: pa.Array, edges: list[Decimal]) -> pa.Array:
    """The band of each value between consecutive ``edges`` (lower edge included), as a label."""
    index = _band_index(values, [scalar_for(values.type, e, edge=True) for e in edges])
    return pc.take(pa.array(number_band_labels(edges), pa.string()), index)


def _band_index(values: pa.Array, edges: list[pa.Scalar]) -> pa.Array:
    index = pa.nulls(len(values), pa.int32()) if not edges else None
    for edge in edges:
        step = pc.cast(pc.greater_equal(values, edge), pa.int32())
        index = step if index is None else pc.add(index, step)
    return index


def scalar_for(type_: pa.DataType, number: Decimal, *, edge: bool = False) -> pa.Scalar:
    """``number`` as a scalar comparable with (or storable in) a column of ``type_``.

    For an integer column an edge is rounded up (value >= 0.5 ⟺ value >= 1 for integers).
    """
    if pa.types.is_integer(type_):
        whole = int(number.to_integral_value(rounding="ROUND_CEILING")) if edge else int(number)
        return pa.scalar(whole, pa.int64())
    if pa.types.is_decimal(type_):
        return pa.scalar(number)
    return pa.scalar(float(number), pa.float64())


def round_to(values: pa.Array, base: Decimal) -> pa.Array:
    """Nearest multiple of ``base``, halves away from zero; same type as the input."""
    mode = "half_towards_infinity"
    if pa.types.is_decimal(values.type):
        wide = values.cast(pa.decimal128(38, values.type.scale))
        rounded = pc.round_to_multiple(wide, multiple=float(base), round_mode=mode)
        return _cast_back(rounded, values.type)
    if pa.types.is_integer(values.type):
        return _cast_back(pc.round_to_multiple(values.cast(pa.int64()), multiple=int(base), round_mode=mode),
                          values.type)
    return pc.round_to_multiple(values, multiple=float(base), round_mode=mode)


def top_code(values: pa.Array, threshold: Decimal, coded: Decimal) -> pa.Array:
    """Values above ``threshold`` become ``coded``."""
    above = pc.greater(values, scalar_for(values.type, threshold))
    return pc.if_else(above, _coded(values.type, coded), values)


def bottom_code(values: pa.Array, threshold: Decimal, coded: Decimal) -> pa.Array:
    """Values below ``threshold`` become ``coded``."""
    below = pc.less(values, scalar_for(values.type, threshold))
    return pc.if_else(below, _coded(values.type, coded), values)


def _coded(type_: pa.DataType, coded: Decimal) -> pa.Scalar:
    try:
        return pa.scalar(int(coded) if pa.types.is_integer(type_) else
                         (coded if pa.types.is_decimal(type_) else float(coded))).cast(type_)
    except (pa.ArrowInvalid, OverflowError):
        raise DataError(f"the coded value does not fit the column type {type_}") from None


def _cast_back(values: pa.Array, type_: pa.DataType) -> pa.Array:
    try:
        return values.cast(type_)
    except (pa.ArrowInvalid, OverflowError):
        raise DataError(f"rounded values do not fit the column type {type_}") from None


# ---- categories --------------------------------------------------------------------------------


def map_categories(values: pa.Array, mapping: dict[str, str], other: str | None) -> pa.Array:
    """Each code → its group in ``mapping``; codes not in it → ``other``, or the run stops."""
    codes = pc.cast(values, pa.string())
    keys = list(mapping)
    index = pc.index_in(codes, value_set=pa.array(keys, pa.string()))
    out = pc.take(pa.array([mapping[k] for k in keys], pa.string()), index)
    unmapped = pc.and_(pc.is_valid(codes), pc.is_null(index))
    count = pc.sum(pc.cast(unmapped, pa.int64())).as_py() or 0
    if count:
        if other is None:
            raise DataError(f"{count} value(s) have codes that the contract's mapping does not list. Fix: add "
                            "the codes to 'mapping', or give an 'other' label for unlisted codes")
        out = pc.if_else(unmapped, pa.scalar(other, pa.string()), out)
    return out
