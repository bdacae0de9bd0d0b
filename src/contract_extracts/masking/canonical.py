"""Canonicalisers: turn an identifier into the one spelling that is hashed.

Vectorised with pyarrow compute. An identifier that is empty after canonicalisation becomes null
(an empty value identifies nobody; hashing it would give every such row one shared pseudonym).
"White space" means Unicode white space (no-break and ideographic spaces too), so a NINO typed
with U+00A0 gets the same pseudonym as one typed with plain spaces.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from contract_extracts.core.errors import DataError

CANONICALISERS = ("nino", "text", "integer")
# RE2: \s is ASCII only; add vertical tab, NEL, and every Unicode space separator (\p{Z}).
_WHITESPACE = r"[\s\x0B\x{85}\p{Z}]+"
_INTEGER = r"^[+-]?[0-9]+$"


def canonicalise(values: pa.Array | pa.ChunkedArray, kind: str) -> pa.Array:
    """Return a string array of canonical values (nulls stay null)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if kind == "integer":
        if pa.types.is_integer(values.type):
            return pc.cast(values, pa.string())
        # Text holding digits: " 042" and "42" are the same id; blank is null; anything else is refused.
        text = _empty_to_null(_strip(pc.cast(values, pa.string())))
        numeric = pc.match_substring_regex(text, pattern=_INTEGER)
        bad = pc.sum(pc.invert(pc.fill_null(numeric, True))).as_py() or 0
        if bad:
            raise DataError(f"{bad} value(s) are not whole numbers, so they cannot be canonicalised as "
                            "'integer'")
        return pc.cast(pc.cast(text, pa.int64()), pa.string())
    text = pc.cast(values, pa.string())
    if kind == "nino":
        # National Insurance numbers: upper case, no white space anywhere ("ab 12 34 56 c" == "AB123456C").
        out = pc.utf8_upper(pc.replace_substring_regex(text, pattern=_WHITESPACE, replacement=""))
    elif kind == "text":
        # Generic text: trimmed, inner white-space runs collapsed to one space, lower case.
        out = pc.utf8_lower(pc.replace_substring_regex(_strip(text), pattern=_WHITESPACE, replacement=" "))
    else:
        raise ValueError(f"unknown canonicaliser {kind!r}; known: {', '.join(CANONICALISERS)}")
    return _empty_to_null(out)


def _strip(text: pa.Array) -> pa.Array:
    return pc.replace_substring_regex(text, pattern=rf"^{_WHITESPACE}|{_WHITESPACE}$", replacement="")


def _empty_to_null(values: pa.Array) -> pa.Array:
    empty = pc.equal(pc.utf8_length(values), 0)
    return pc.if_else(empty, pa.scalar(None, pa.string()), values)
