"""Cutting PostgreSQL CSV into row-aligned pieces: every cut falls between rows, nothing lost or added."""

from __future__ import annotations

import csv
import io

from hypothesis import given, settings
from hypothesis import strategies as st

from extract.postgres import csv_pieces

FIELDS = st.one_of(st.none(), st.text(alphabet=st.sampled_from(['a', '"', "\n", "\r", ",", "é", "x", " "]),
                                      max_size=12))


def postgres_csv(rows: list[list[str | None]]) -> bytes:
    """CSV as PostgreSQL writes it: NULL is an unquoted empty field; values quoted when needed."""
    out = io.StringIO()
    for row in rows:
        fields = []
        for value in row:
            if value is None:
                fields.append("")
            elif value == "" or any(c in value for c in '",\n\r') or value.strip() != value:
                fields.append('"' + value.replace('"', '""') + '"')
            else:
                fields.append(value)
        out.write(",".join(fields) + "\n")
    return out.getvalue().encode("utf-8")


def reader(data: bytes):
    stream = io.BytesIO(data)
    return stream.read


def parse(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))


@settings(max_examples=300, deadline=None)
@given(rows=st.lists(st.lists(FIELDS, min_size=3, max_size=3), max_size=40),
       block=st.integers(min_value=1, max_value=64))
def test_pieces_end_on_row_boundaries_and_lose_nothing(rows: list, block: int) -> None:
    data = postgres_csv(rows)
    pieces = list(csv_pieces(reader(data), block))
    assert b"".join(pieces) == data
    assert all(pieces)
    assert sum(len(parse(p)) for p in pieces) == len(rows)  # no row is split across two pieces
    assert [r for p in pieces for r in parse(p)] == parse(data)


def test_an_empty_stream_gives_no_pieces() -> None:
    assert list(csv_pieces(reader(b""), 8)) == []


def test_a_value_longer_than_a_block_stays_whole() -> None:
    data = postgres_csv([["1", "line\n" * 100, "x"], ["2", "y", "z"]])
    pieces = list(csv_pieces(reader(data), 16))
    assert [len(parse(p)) for p in pieces] == [1, 1]

