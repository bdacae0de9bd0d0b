"""Keyed pseudonyms (format v1): known answers from an independent model, and the promised properties."""

from __future__ import annotations

import hashlib
import hmac
import re

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from masking.keys import derive_key
from masking.pseudonyms import PrekeyedHmacSha256, entity_prefix, pseudonymise_array

from .vectors import MASTER, expected_contract_key, expected_pseudonym

PSEUDONYM = re.compile(r"^[0-9a-f]{32}$")
KEY_1 = expected_contract_key(MASTER, "pseudonym", "C-DEMO-001")
KEY_2 = expected_contract_key(MASTER, "pseudonym", "C-DEMO-002")


def pseudonyms(values: list, *, key: bytes = KEY_1, entity: str = "person", canonicaliser: str = "nino",
               type_: pa.DataType | None = None) -> list[str | None]:
    array = pa.array(values, type_) if type_ is not None else pa.array(values)
    return pseudonymise_array(array, key=key, entity=entity, canonicaliser=canonicaliser).to_pylist()


# ---- known answers ------------------------------------------------------------------------------

# (entity, canonicaliser, raw value, canonical value) for the pseudonym key of C-DEMO-001.
VECTORS = {
    "nino-canonical": ("person", "nino", "AB123456C", "AB123456C"),
    "nino-spaced-lower": ("person", "nino", "ab 12 34 56 c", "AB123456C"),
    "text": ("household", "text", "  Flat 3,  High   Street ", "flat 3, high street"),
    "text-unicode": ("person", "text", "Zoë  Ørsted", "zoë ørsted"),
    "integer-text": ("claimant", "integer", " 042", "42"),
    "integer-int": ("claimant", "integer", 42, "42"),
    "integer-zero": ("claimant", "integer", 0, "0"),
}


def test_pinned_vector_from_design() -> None:
    # docs/formats.md: hmac.new(HKDF(..., b"contract-extracts/v1/pseudonym/C-DEMO-001"), b"person\x00AB123456C")
    assert pseudonyms(["AB123456C"], key=derive_key(MASTER, "pseudonym", "C-DEMO-001")) == \
        ["7de50191d49ba4bba05a61eb3893daeb"]


@pytest.mark.parametrize(("entity", "canonicaliser", "raw", "canonical"), VECTORS.values(), ids=VECTORS.keys())
@pytest.mark.parametrize("key", [KEY_1, KEY_2], ids=["C-DEMO-001", "C-DEMO-002"])
def test_known_answer(key: bytes, entity: str, canonicaliser: str, raw: object, canonical: str) -> None:
    expected = hmac.new(key, (entity + "\x00" + canonical).encode(), "sha256").hexdigest()[:32]
    assert pseudonyms([raw], key=key, entity=entity, canonicaliser=canonicaliser) == [expected]


def test_known_answer_with_delivery_linkage_key() -> None:
    key = derive_key(MASTER, "pseudonym", "C-DEMO-001", "20261125T020000Z-1a2b3c4d")
    assert key == expected_contract_key(MASTER, "pseudonym", "C-DEMO-001", "20261125T020000Z-1a2b3c4d")
    assert pseudonyms(["AB123456C"], key=key) == [expected_pseudonym(key, "person", "AB123456C")]
    assert pseudonyms(["AB123456C"], key=key) != pseudonyms(["AB123456C"], key=KEY_1)


def test_entity_is_part_of_the_input() -> None:
    assert entity_prefix("person") == b"person\x00"
    a = pseudonyms(["42"], entity="person", canonicaliser="text")
    b = pseudonyms(["42"], entity="claimant", canonicaliser="text")
    assert a != b
    # The NUL separator keeps ("ab", "c") and ("a", "bc") apart.
    assert pseudonyms(["c"], entity="ab", canonicaliser="text") != \
        pseudonyms(["bc"], entity="a", canonicaliser="text")


def test_output_type_nulls_and_length() -> None:
    out = pseudonymise_array(pa.array(["AB123456C", None, "", "  "]), key=KEY_1, entity="person",
                             canonicaliser="nino")
    assert out.type == pa.string()
    assert out.to_pylist()[1:] == [None, None, None]
    assert PSEUDONYM.match(out.to_pylist()[0])


def test_chunked_input() -> None:
    chunked = pa.chunked_array([pa.array(["AB123456C"]), pa.array(["ab 12 34 56 c", None])])
    out = pseudonymise_array(chunked, key=KEY_1, entity="person", canonicaliser="nino").to_pylist()
    assert out[0] == out[1] == expected_pseudonym(KEY_1, "person", "AB123456C")
    assert out[2] is None


# ---- PrekeyedHmacSha256 ≡ hmac.new --------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(key=st.binary(max_size=200), message=st.binary(max_size=300))
def test_prekeyed_hmac_equals_hmac(key: bytes, message: bytes) -> None:
    assert PrekeyedHmacSha256(key).digest(message) == hmac.new(key, message, hashlib.sha256).digest()


@pytest.mark.parametrize("size", [0, 1, 31, 32, 63, 64, 65, 128, 1000])
def test_prekeyed_hmac_key_sizes_around_the_block(size: int) -> None:
    key = bytes((i * 7 + 3) % 256 for i in range(size))
    for message in (b"", b"x", b"person\x00AB123456C", bytes(range(256)) * 3):
        assert PrekeyedHmacSha256(key).digest(message) == hmac.new(key, message, hashlib.sha256).digest()


@settings(max_examples=200, deadline=None)
@given(key=st.binary(min_size=1, max_size=150), prefix=st.binary(max_size=20),
       values=st.lists(st.none() | st.text(max_size=30), max_size=20), chars=st.integers(1, 64))
def test_prekeyed_hexdigests_equal_hmac(key: bytes, prefix: bytes, values: list[str | None], chars: int) -> None:
    expected = [None if v is None else hmac.new(key, prefix + v.encode(), hashlib.sha256).hexdigest()[:chars]
                for v in values]
    assert PrekeyedHmacSha256(key).hexdigests(prefix, values, chars) == expected


def test_prekeyed_hasher_is_reusable() -> None:
    hasher = PrekeyedHmacSha256(KEY_1)
    first = hasher.digest(b"a")
    hasher.digest(b"b" * 1000)
    assert hasher.digest(b"a") == first


# ---- properties ---------------------------------------------------------------------------------

NINO = st.from_regex(r"\A[A-Z]{2}[0-9]{6}[A-D]\Z")
ANY_TEXT = st.text(max_size=40)


@settings(max_examples=150, deadline=None)
@given(value=ANY_TEXT, entity=st.from_regex(r"\A[a-z][a-z0-9_]{0,10}\Z"),
       canonicaliser=st.sampled_from(["nino", "text"]))
def test_output_is_null_or_32_lower_hex(value: str, entity: str, canonicaliser: str) -> None:
    [out] = pseudonyms([value], entity=entity, canonicaliser=canonicaliser)
    assert out is None or PSEUDONYM.match(out)
    if value.strip(" \t\n\r") == "":
        assert out is None
    if not all(ch.isspace() for ch in value):
        assert out is not None


@settings(max_examples=150, deadline=None)
@given(values=st.lists(NINO, min_size=1, max_size=20))
def test_same_value_same_contract_same_pseudonym(values: list[str]) -> None:
    first = pseudonyms(values)
    # Batching, order and repetition do not matter: a pseudonym depends on the value alone.
    again = pseudonyms(list(reversed(values)) + values)
    assert again[len(values):] == first
    assert again[:len(values)] == list(reversed(first))
    assert first == [expected_pseudonym(KEY_1, "person", v) for v in values]


@settings(max_examples=150, deadline=None)
@given(value=NINO)
def test_different_contracts_give_different_pseudonyms(value: str) -> None:
    assert pseudonyms([value], key=KEY_1) != pseudonyms([value], key=KEY_2)


def test_no_collisions_within_or_across_contracts() -> None:
    values = [f"AB{n:06d}C" for n in range(5000)]
    one = pseudonyms(values, key=KEY_1)
    two = pseudonyms(values, key=KEY_2)
    assert len(set(one)) == len(values)
    assert len(set(two)) == len(values)
    assert not set(one) & set(two)
    assert all(PSEUDONYM.match(p) for p in one + two)


def test_integer_ids_no_collisions_across_contracts() -> None:
    values = list(range(5000))
    one = pseudonyms(values, key=KEY_1, entity="claimant", canonicaliser="integer", type_=pa.int64())
    two = pseudonyms(values, key=KEY_2, entity="claimant", canonicaliser="integer", type_=pa.int64())
    assert len(set(one)) == len(set(two)) == 5000
    assert not set(one) & set(two)


@st.composite
def respelled_nino(draw: st.DrawFn) -> tuple[str, str]:
    canonical = draw(NINO)
    out = ""
    for ch in canonical:
        out += draw(st.sampled_from([ch, ch.lower()])) + draw(st.sampled_from(["", "", " ", "\t", "\n"]))
    return draw(st.sampled_from(["", " ", "\t", "\n "])) + out, canonical


@settings(max_examples=200, deadline=None)
@given(respelled_nino())
def test_canonicalisation_invariance(pair: tuple[str, str]) -> None:
    spelled, canonical = pair
    assert pseudonyms([spelled]) == pseudonyms([canonical]) == [expected_pseudonym(KEY_1, "person", canonical)]


@pytest.mark.parametrize("spelling", ["ab 12 34 56 c", "AB123456C", "ab\t12\t34\t56\tc", "AB 12\n34 56 C\n",
                                      "  aB123456c  ", "a b 1 2 3 4 5 6 c"],
                         ids=["spaces-lower", "canonical", "tabs", "newlines", "padded-mixed", "every-char"])
def test_nino_spellings_are_equivalent(spelling: str) -> None:
    assert pseudonyms([spelling]) == [expected_pseudonym(KEY_1, "person", "AB123456C")]


@pytest.mark.parametrize("blank", [None, "", " ", "\t", "\n", " \t\r\n "],
                         ids=["null", "empty", "space", "tab", "newline", "mixed"])
@pytest.mark.parametrize("canonicaliser", ["nino", "text"])
def test_blank_values_become_null(canonicaliser: str, blank: str | None) -> None:
    assert pseudonyms([blank, "AB123456C"], canonicaliser=canonicaliser)[0] is None


def test_integer_canonicaliser_on_int_and_text() -> None:
    expected = expected_pseudonym(KEY_1, "claimant", "42")
    assert pseudonyms([42, None], entity="claimant", canonicaliser="integer", type_=pa.int64()) == [expected, None]
    assert pseudonyms([" 042", "42", None], entity="claimant", canonicaliser="integer",
                      type_=pa.string()) == [expected, expected, None]
    assert pseudonyms([42], entity="claimant", canonicaliser="integer", type_=pa.int32()) == [expected]


def test_integer_canonicaliser_blank_text_is_null() -> None:
    assert pseudonyms([" ", "42"], entity="claimant", canonicaliser="integer", type_=pa.string())[0] is None


@pytest.mark.parametrize("spelling", ["AB\xa012 34 56 C", "AB 12\u300034 56 C", "AB\x0b123456C"],
                         ids=["no-break-space", "ideographic-space", "vertical-tab"])
def test_nino_unicode_whitespace_is_removed(spelling: str) -> None:
    assert pseudonyms([spelling]) == [expected_pseudonym(KEY_1, "person", "AB123456C")]


def test_nino_only_unicode_whitespace_is_null() -> None:
    assert pseudonyms(["\xa0", "\u3000"]) == [None, None]
