"""Canonicalisers: turn an identifier into the one spelling that is hashed.

Vectorised with pyarrow compute. An identifier that is empty after canonicalisation becomes null
(an empty value identifies nobody; hashing it would give every such row one shared pseudonym).
"White space" means Unicode white space (no-break and ideographic spaces too), so a NINO typed
with U+00A0 gets the same pseudonym as one typed with plain spaces.

The regular expressions are the definition. Batches that are plain ASCII take a fast path with the
same result (literal replacements instead of regex scans: about 5× faster, and canonicalisation is
a third of the cost of a pseudonym); ``tests/masking/test_canonical.py`` checks both paths agree.

Canonical forms (docs/masking.md, docs/formats.md):
- ``nino``, ``postcode``: white space removed, upper case (``"sw1a 1aa"`` → ``"SW1A1AA"``);
- ``email``: trimmed, lower case (``" Jo.Bloggs@Example.ORG "`` → ``"jo.bloggs@example.org"``);
- ``phone``: UK numbers in international form (``"020 7946 0018"``, ``"+44 (0)20 7946 0018"`` and
  ``"0044 20 7946 0018"`` → ``"+442079460018"``); separators (space - . ( ) /) are dropped;
- ``text``: trimmed, inner white-space runs collapsed to one space, lower case;
- ``integer``: the decimal digits of the integer (``" 042"`` → ``"42"``).
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from core.errors import DataError

CANONICALISERS = ("nino", "postcode", "email", "phone", "text", "integer")
# RE2: \s is ASCII only; add vertical tab, NEL, and every Unicode space separator (\p{Z}).
_WHITESPACE = r"[\s\x0B\x{85}\p{Z}]+"
_INTEGER = r"^[+-]?[0-9]+$"
_PHONE_SEPARATORS = r"[\s\x0B\x{85}\p{Z}\-.()/]+"
_PHONE = r"^\+?[0-9]+$"


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
    if kind in ("nino", "postcode"):
        # Upper case, no white space anywhere ("ab 12 34 56 c" == "AB123456C", "sw1a 1aa" == "SW1A1AA").
        out = _upper(_remove_whitespace(text))
    elif kind == "text":
        # Generic text: trimmed, inner white-space runs collapsed to one space, lower case.
        out = _lower(_collapse_whitespace(text))
    elif kind == "email":
        out = _lower(_strip(text))
    elif kind == "phone":
        out = _phone(text)
    else:
        raise ValueError(f"unknown canonicaliser {kind!r}; known: {', '.join(CANONICALISERS)}")
    return _empty_to_null(out)


def _phone(text: pa.Array) -> pa.Array:
    text = pc.replace_substring(text, pattern="(0)", replacement="")  # "+44 (0)20 …": the trunk 0 is not dialled
    digits = _empty_to_null(pc.replace_substring_regex(text, pattern=_PHONE_SEPARATORS, replacement=""))
    ok = pc.match_substring_regex(digits, pattern=_PHONE)
    bad = pc.sum(pc.invert(pc.fill_null(ok, True))).as_py() or 0
    if bad:
        raise DataError(f"{bad} value(s) are not phone numbers (digits, an optional leading '+', and the "
                        "separators space - . ( ) /), so they cannot be canonicalised as 'phone'")
    out = pc.replace_substring_regex(digits, pattern=r"^00", replacement="+")      # 0044… → +44…
    out = pc.replace_substring_regex(out, pattern=r"^0", replacement="+44")        # 020… → +4420…
    return pc.replace_substring_regex(out, pattern=r"^([0-9])", replacement=r"+44\1")  # 20… → +4420…


# ---- helpers with an ASCII fast path -------------------------------------------------------------


def _is_plain_ascii(text: pa.Array) -> bool:
    """Printable ASCII only: the only white space is the plain space, so literal replacements suffice."""
    if len(text) == 0 or text.null_count == len(text):
        return True
    return pc.all(pc.ascii_is_printable(text)).as_py() is not False


def _remove_whitespace(text: pa.Array) -> pa.Array:
    if _is_plain_ascii(text):
        if not pc.any(pc.match_substring(text, pattern=" ")).as_py():
            return text  # e.g. NINOs stored canonical already
        return pc.replace_substring(text, pattern=" ", replacement="")
    return pc.replace_substring_regex(text, pattern=_WHITESPACE, replacement="")


def _collapse_whitespace(text: pa.Array) -> pa.Array:
    if _is_plain_ascii(text):
        trimmed = pc.ascii_trim(text, characters=" ")
        if not pc.any(pc.match_substring(trimmed, pattern="  ")).as_py():
            return trimmed
    return pc.replace_substring_regex(_strip(text), pattern=_WHITESPACE, replacement=" ")


def _upper(text: pa.Array) -> pa.Array:
    return pc.ascii_upper(text) if _all_ascii(text) else pc.utf8_upper(text)


def _lower(text: pa.Array) -> pa.Array:
    return pc.ascii_lower(text) if _all_ascii(text) else pc.utf8_lower(text)


def _all_ascii(text: pa.Array) -> bool:
    return len(text) == 0 or pc.all(pc.string_is_ascii(text)).as_py() is not False


def _strip(text: pa.Array) -> pa.Array:
    if _is_plain_ascii(text):
        return pc.ascii_trim(text, characters=" ")
    return pc.replace_substring_regex(text, pattern=rf"^{_WHITESPACE}|{_WHITESPACE}$", replacement="")


def _empty_to_null(values: pa.Array) -> pa.Array:
    empty = pc.equal(pc.binary_length(values), 0)
    if not pc.any(empty).as_py():
        return values
    return pc.if_else(empty, pa.scalar(None, pa.string()), values)
