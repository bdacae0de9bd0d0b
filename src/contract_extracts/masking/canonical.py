"""Canonicalisers: turn an identifier into the one spelling that is hashed.

Vectorised with pyarrow compute. An identifier that is empty after canonicalisation becomes null
(an empty value identifies nobody; hashing it would give every such row one shared pseudonym).
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

CANONICALISERS = ("nino", "text", "integer")


def canonicalise(values: pa.Array | pa.ChunkedArray, kind: str) -> pa.Array:
    """Return a string array of canonical values (nulls stay null)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if kind == "integer":
        if not pa.types.is_integer(values.type):
            # Text holding digits: trim, then parse, so " 042" and "42" are the same id.
            values = pc.cast(pc.utf8_trim_whitespace(_as_string(values)), pa.int64())
        return _empty_to_null(pc.cast(values, pa.string()))
    text = _as_string(values)
    if kind == "nino":
        # National Insurance numbers: upper case, no spaces anywhere ("ab 12 34 56 c" == "AB123456C").
        out = pc.utf8_upper(pc.replace_substring_regex(text, pattern=r"\s+", replacement=""))
    elif kind == "text":
        # Generic text: trimmed, inner whitespace runs collapsed to one space, lower case.
        out = pc.utf8_lower(pc.replace_substring_regex(pc.utf8_trim_whitespace(text), pattern=r"\s+",
                                                        replacement=" "))
    else:
        raise ValueError(f"unknown canonicaliser {kind!r}; known: {', '.join(CANONICALISERS)}")
    return _empty_to_null(out)


def _as_string(values: pa.Array) -> pa.Array:
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        return pc.cast(values, pa.string())
    return pc.cast(values, pa.string())


def _empty_to_null(values: pa.Array) -> pa.Array:
    empty = pc.equal(pc.utf8_length(values), 0)
    return pc.if_else(empty, pa.scalar(None, pa.string()), values)
