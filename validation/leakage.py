"""The leak check's raw material: a sample of raw identifiers drawn from the source, held only in memory.

At validation time the gate draws up to ``per_column`` values (plain ``SELECT col … WHERE <the
dataset's filter and population> AND col IS NOT NULL LIMIT n``) of every identifier column the source
catalogue lists for the tables read (delivered or not), of every pseudonymised column, and of the extra
columns the contract names under ``disclosure.source_identifiers`` (``source_facts``), and canonicalises
them: all (Unicode) white space removed, upper case. Every column of every output file is rendered as
text, canonicalised the same way and searched:

* **exact**: a delivered value equal to an identifier (every column: pseudonyms, numbers and dates as
  their text; a non-text column is only searched when some identifier could be a number's or a date's
  text, ``IdentifierSample.could_be_rendered``);
* **substring**: a delivered value containing an identifier (every non-pseudonym string column;
  only identifiers of at least ``MIN_SUBSTRING`` characters, so short codes cannot match by chance).

Identifiers shorter than ``MIN_EXACT`` characters after canonicalisation, and all-digit identifiers
shorter than ``MIN_NUMERIC`` (sequential row ids, which would collide with numeric codes kept in text
columns), are not searched; they are counted. The sample is registered under an opaque token that the GX
expectation names; values never reach an expectation's kwargs, a result, a log or an exception.
"""

from __future__ import annotations

import re
import secrets
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from core.errors import ContractExtractsError

MIN_EXACT = 4
MIN_NUMERIC = 8
MIN_SUBSTRING = 8
PER_COLUMN = 1_000
_WHITESPACE = r"[\s\x0B\x{85}\p{Z}]+"  # RE2, as masking.canonical
_CHUNK = 400  # identifiers per RE2 alternation (keeps each compiled program small)


_DICTIONARY_PROBE = 4_096  # values looked at to decide whether searching distinct values pays off
# Canonical texts of numbers, dates, times and timestamps (digits, signs, '.', ':', exponent 'E', UTC 'Z'),
# and the words pyarrow and pandas render special values with.
_RENDERED = r"^[0-9.:+\-EZ]+$"
_RENDERED_WORDS = pa.array(["TRUE", "FALSE", "NAN", "INF", "-INF", "+INF", "NAT", "NONE", "<NA>"], pa.string())


def _as_array(values: pa.Array | list[Any]) -> pa.Array:
    array = values if isinstance(values, pa.Array | pa.ChunkedArray) else pa.array(values, pa.string())
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    return array


def _ascii_without_space(text: pa.Array) -> tuple[bool, bool]:
    """(every byte is ASCII, no byte is a control character or space) of a string array's bytes.

    Conservative: bytes behind nulls count too, which can only send the caller down the general path.
    """
    buffers = text.buffers()
    if len(text) == 0 or buffers[2] is None:
        return True, True
    offsets = np.frombuffer(buffers[1], dtype=np.int32, count=len(text) + 1, offset=text.offset * 4)
    data = np.frombuffer(buffers[2], dtype=np.uint8)[offsets[0]:offsets[-1]]
    if not len(data):
        return True, True
    return bool(data.max() < 0x80), not bool((data <= 0x20).any())


def leak_canonical(values: pa.Array | list[Any]) -> pa.Array:
    """White space removed, upper case (nulls stay null)."""
    text = pc.cast(_as_array(values), pa.string())
    ascii_only, no_space = _ascii_without_space(text)
    if ascii_only:
        # Within ASCII the white space pattern is exactly \t \n \v \f \r and space (all <= 0x20), and
        # upper-casing is ASCII's: the same result as below, without a regex pass when nothing is spaced.
        stripped = text if no_space else pc.replace_substring_regex(text, pattern=_WHITESPACE, replacement="")
        return pc.ascii_upper(stripped)
    return pc.utf8_upper(pc.replace_substring_regex(text, pattern=_WHITESPACE, replacement=""))


@dataclass
class IdentifierSample:
    """Canonical raw identifiers (in memory only) and value-free facts about them."""

    exact: pa.Array = field(default_factory=lambda: pa.array([], pa.string()))
    patterns: list[str] = field(default_factory=list)
    drawn: int = 0
    too_short: int = 0
    shortest_pattern: int = 0  # characters of the shortest identifier in ``patterns`` (0: unknown)
    columns: list[dict[str, Any]] = field(default_factory=list)  # {"dataset", "column", "drawn"}

    @classmethod
    def from_values(cls, values: list[Any], columns: list[dict[str, Any]] | None = None) -> IdentifierSample:
        canonical = leak_canonical(pa.array([None if v is None else str(v) for v in values], pa.string()))
        lengths = pc.fill_null(pc.utf8_length(canonical), 0)
        digits = pc.fill_null(pc.match_substring_regex(canonical, pattern=r"^[0-9]+$"), False)
        minimum = pc.if_else(digits, MIN_NUMERIC, MIN_EXACT)
        long_enough = pc.greater_equal(lengths, minimum)
        usable = pc.unique(pc.filter(canonical, long_enough))
        too_short = int(pc.sum(pc.and_(pc.is_valid(canonical), pc.invert(long_enough))).as_py() or 0)
        long_ones = pc.filter(usable, pc.greater_equal(pc.utf8_length(usable), MIN_SUBSTRING)).to_pylist()
        patterns = ["|".join(re.escape(v) for v in long_ones[i:i + _CHUNK])
                    for i in range(0, len(long_ones), _CHUNK)]
        return cls(exact=usable, patterns=patterns, drawn=len(values), too_short=too_short,
                   shortest_pattern=min((len(v) for v in long_ones), default=0), columns=list(columns or []))

    @property
    def searched(self) -> int:
        return len(self.exact)

    @property
    def could_be_rendered(self) -> bool:
        """Whether some identifier searched for could be the text of a number, date, time or boolean (as pyarrow
        or pandas renders one, canonicalised); if none could, a column of those types cannot leak one."""
        if not len(self.exact):
            return False
        rendered = pc.match_substring_regex(self.exact, pattern=_RENDERED)
        words = pc.is_in(self.exact, value_set=_RENDERED_WORDS)
        return bool(pc.any(pc.or_(pc.fill_null(rendered, False), pc.fill_null(words, False))).as_py())

    def leaked(self, values: list[str] | pa.Array, *, substring: bool) -> np.ndarray:
        """True where a value equals (or contains) one of the identifiers, after canonicalisation."""
        array = _as_array(values)
        if len(array) > 2 * _DICTIONARY_PROBE and pa.types.is_string(array.type):
            # Few distinct values (codes, labels): search each distinct value once.
            probe = pc.dictionary_encode(array.slice(0, _DICTIONARY_PROBE))
            if len(probe.dictionary) * 4 < _DICTIONARY_PROBE:
                encoded = pc.dictionary_encode(array)
                if len(encoded.dictionary) * 4 < len(array):
                    if not len(encoded.dictionary):  # all null
                        return np.zeros(len(array), dtype=bool)
                    distinct = self._leaked(encoded.dictionary, substring)
                    indices = encoded.indices
                    hit: np.ndarray = distinct[np.asarray(pc.fill_null(indices, 0).to_numpy(zero_copy_only=False))]
                    if indices.null_count:
                        hit &= np.asarray(indices.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
                    return hit
        return self._leaked(array, substring)

    def _leaked(self, array: pa.Array, substring: bool) -> np.ndarray:
        canonical = leak_canonical(array)
        hit = np.asarray(pc.fill_null(pc.is_in(canonical, value_set=self.exact), False)
                         .to_numpy(zero_copy_only=False), dtype=bool)
        if not substring or not self.patterns:
            return hit
        # A value shorter than every searched identifier cannot contain one.
        candidates = canonical
        rows = None
        if self.shortest_pattern > 1:
            long = np.asarray(pc.fill_null(pc.greater_equal(pc.utf8_length(canonical), self.shortest_pattern), False)
                              .to_numpy(zero_copy_only=False), dtype=bool)
            if not long.any():
                return hit
            if not long.all():
                rows = np.flatnonzero(long)
                candidates = canonical.take(pa.array(rows))
        found = np.zeros(len(candidates), dtype=bool)
        for pattern in self.patterns:
            found |= np.asarray(pc.fill_null(pc.match_substring_regex(candidates, pattern=pattern), False)
                                .to_numpy(zero_copy_only=False), dtype=bool)
        if rows is None:
            hit |= found
        else:
            hit[rows] |= found
        return hit

    def facts(self) -> dict[str, Any]:
        """Value-free: how many identifiers were drawn, searched for, too short to search."""
        return {"drawn": self.drawn, "searched": self.searched, "too_short": self.too_short,
                "columns": list(self.columns)}


_REGISTRY: dict[str, IdentifierSample] = {}
_LOCK = threading.Lock()


def register(sample: IdentifierSample) -> str:
    token = "source-identifiers-" + secrets.token_hex(8)
    with _LOCK:
        _REGISTRY[token] = sample
    return token


def unregister(token: str) -> None:
    with _LOCK:
        _REGISTRY.pop(token, None)


def lookup(token: str) -> IdentifierSample:
    with _LOCK:
        sample = _REGISTRY.get(token)
    if sample is None:
        raise ContractExtractsError("the identifier sample of the leak check is not available in this process")
    return sample


def draw_identifiers(engine: sa.Engine, draws: Sequence[tuple[str, str, sa.Select[Any]]], *,
                     per_column: int = PER_COLUMN) -> IdentifierSample:
    """Draw up to ``per_column`` non-null values of each (dataset, column, one-column SELECT) from the source."""
    values: list[Any] = []
    columns: list[dict[str, Any]] = []
    with engine.connect() as conn:
        for dataset, name, statement in draws:
            column = statement.selected_columns[0]
            drawn = [row[0] for row in conn.execute(statement.where(column.is_not(None)).limit(per_column))]
            values.extend(drawn)
            columns.append({"dataset": dataset, "column": name, "drawn": len(drawn)})
    return IdentifierSample.from_values(values, columns)
