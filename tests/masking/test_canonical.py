"""Canonicalisers (docs/formats.md, Pseudonyms step 1): one spelling per identifier, empty → null."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import DataError
from masking.canonical import canonicalise

CASES = {
    "nino-spaced-lower": ("nino", ["ab 12 34 56 c"], ["AB123456C"]),
    "nino-tabs-newlines": ("nino", ["\tab\n12\r\n34 56\tc \n"], ["AB123456C"]),
    "nino-already-canonical": ("nino", ["AB123456C"], ["AB123456C"]),
    "nino-null-empty-blank": ("nino", [None, "", "   ", "\t\n"], [None, None, None, None]),
    "text-trim-collapse-lower": ("text", ["  Foo \t  Bar\nBaz  "], ["foo bar baz"]),
    "text-null-empty-blank": ("text", [None, "", " \t\n "], [None, None, None]),
    "integer-text-leading-zero": ("integer", [" 042", "42", "42 ", "\t42\n"], ["42", "42", "42", "42"]),
    "integer-text-negative": ("integer", ["-7", " -7 "], ["-7", "-7"]),
    "integer-text-null": ("integer", [None, "0"], [None, "0"]),
}


@pytest.mark.parametrize(("kind", "values", "expected"), CASES.values(), ids=CASES.keys())
def test_canonical_values(kind: str, values: list, expected: list) -> None:
    assert canonicalise(pa.array(values, pa.string()), kind).to_pylist() == expected


@pytest.mark.parametrize("type_", [pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint32(), pa.uint64()],
                         ids=str)
def test_integer_canonicaliser_on_integer_columns(type_: pa.DataType) -> None:
    out = canonicalise(pa.array([42, 0, None, 7], type_), "integer")
    assert out.type == pa.string()
    assert out.to_pylist() == ["42", "0", None, "7"]


def test_integer_on_int_and_text_agree() -> None:
    assert canonicalise(pa.array([42]), "integer").to_pylist() == \
        canonicalise(pa.array([" 042"]), "integer").to_pylist()


def test_large_string_and_chunked_input() -> None:
    chunked = pa.chunked_array([pa.array(["ab 12"], pa.large_string()), pa.array([" cd"], pa.large_string())])
    assert canonicalise(chunked, "nino").to_pylist() == ["AB12", "CD"]


def test_unknown_canonicaliser_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown canonicaliser"):
        canonicalise(pa.array(["x"]), "soundex")


@pytest.mark.parametrize("blank", ["", "   ", "\t\n"], ids=["empty", "spaces", "tab-newline"])
def test_integer_canonicaliser_turns_blank_text_into_null(blank: str) -> None:
    assert canonicalise(pa.array(["42", blank, None]), "integer").to_pylist() == ["42", None, None]


WHITESPACE = st.sampled_from([" ", "\t", "\n", "\r\n", "  "])


@st.composite
def spaced_nino(draw: st.DrawFn) -> tuple[str, str]:
    letters = st.sampled_from("ABCDEFGHJKLMNPRSTWXYZ")
    canonical = (draw(letters) + draw(letters) + draw(st.from_regex(r"\A[0-9]{6}\Z"))
                 + draw(st.sampled_from("ABCD")))
    out = ""
    for ch in canonical:
        out += draw(st.sampled_from([ch, ch.lower()]))
        if draw(st.booleans()):
            out += draw(WHITESPACE)
    return draw(st.sampled_from(["", " ", "\t"])) + out + draw(st.sampled_from(["", " ", "\n"])), canonical


@settings(max_examples=200, deadline=None)
@given(spaced_nino())
def test_nino_canonical_form_ignores_case_and_whitespace(pair: tuple[str, str]) -> None:
    spelled, canonical = pair
    assert canonicalise(pa.array([spelled]), "nino").to_pylist() == [canonical]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet=" \t\n\r", max_size=5) | st.none(), max_size=10))
def test_blank_or_null_text_is_null(values: list[str | None]) -> None:
    for kind in ("nino", "text"):
        assert canonicalise(pa.array(values, pa.string()), kind).to_pylist() == [None] * len(values)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=-(2**63), max_value=2**63 - 1), st.integers(0, 3), WHITESPACE, WHITESPACE)
def test_integer_text_and_int_agree(n: int, zeros: int, left: str, right: str) -> None:
    sign, digits = ("-", str(-n)) if n < 0 else ("", str(n))
    text = left + sign + "0" * zeros + digits + right
    assert canonicalise(pa.array([text]), "integer").to_pylist() == [str(n)]
    assert canonicalise(pa.array([n], pa.int64()), "integer").to_pylist() == [str(n)]


def test_integer_canonicaliser_refuses_non_numeric_text_without_showing_it() -> None:
    with pytest.raises(DataError) as excinfo:
        canonicalise(pa.array(["42", "AB123456C", "7x"]), "integer")
    assert "2 value(s)" in str(excinfo.value)
    assert "AB123456C" not in str(excinfo.value) and "7x" not in str(excinfo.value)


# ---- the ASCII fast path gives exactly what the regular expressions define ----------------------

_WS = r"[\s\x0B\x{85}\p{Z}]+"


def _regex_reference(values: list[str | None], kind: str) -> list[str | None]:
    """The canonical forms written with the defining regular expressions only (no fast path)."""
    text = pa.array(values, pa.string())
    strip = lambda a: pc.replace_substring_regex(a, pattern=rf"^{_WS}|{_WS}$", replacement="")  # noqa: E731
    if kind in ("nino", "postcode"):
        out = pc.utf8_upper(pc.replace_substring_regex(text, pattern=_WS, replacement=""))
    elif kind == "text":
        out = pc.utf8_lower(pc.replace_substring_regex(strip(text), pattern=_WS, replacement=" "))
    else:  # email
        out = pc.utf8_lower(strip(text))
    return [None if v in (None, "") else v for v in out.to_pylist()]


@settings(max_examples=300, deadline=None)
@given(values=st.lists(st.none() | st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x7F)) |
                       st.text(max_size=12), max_size=12),
       kind=st.sampled_from(["nino", "postcode", "text", "email"]))
def test_fast_path_equals_the_regex_definition(values: list[str | None], kind: str) -> None:
    assert canonicalise(pa.array(values, pa.string()), kind).to_pylist() == _regex_reference(values, kind)


@pytest.mark.parametrize("kind", ["nino", "postcode", "text", "email"])
def test_fast_path_on_printable_ascii_batches(kind: str) -> None:
    values = ["  ab 12  34 56 c ", "AB123456C", "x", "  ", "a  b", "Jo.Bloggs@Example.ORG "]
    assert canonicalise(pa.array(values), kind).to_pylist() == _regex_reference(values, kind)
