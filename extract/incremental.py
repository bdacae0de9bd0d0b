"""Incremental windows: which rows of a dataset one delivery reads (``mark < column <= upper``).

A window is ``mark < column <= upper`` where ``mark`` is the upper end of the newest *delivered*
window of the dataset (``pipeline.incremental.previous_marks`` reads it from the ledger) and ``upper``
is the column's maximum when the extract starts (on PostgreSQL read in the delivery's snapshot, like
the rows; for partitioned datasets planned once and applied by every partition). Rows updated later
carry a later value and go in a later window. Marks are key values or timestamps, not personal data;
they are stored (ledger, staging, manifest) as tagged strings that decode to the same type. Deletions
in the source cannot travel in an incremental window (nothing is left to select): a periodic full
refresh (a trigger parameter, recorded with its reason) re-sends the whole current extract.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from core.errors import SourceError


@dataclass(frozen=True)
class Window:
    dataset: str
    column: str
    after: Any | None  # exclusive lower bound; None: from the beginning
    upto: Any | None  # inclusive upper bound; None: the table is empty
    full: bool

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "column": self.column, "after": encode_mark(self.after),
                "upto": encode_mark(self.upto), "full": self.full}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Window:
        return cls(data["dataset"], data["column"], decode_mark(data["after"]), decode_mark(data["upto"]),
                   bool(data["full"]))


def encode_mark(value: Any) -> str | None:
    """A value as a tagged string that decodes to the same type (JSON has no dates or decimals)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise SourceError("a boolean column cannot be an incremental mark")
    if isinstance(value, dt.datetime):
        return "datetime:" + value.isoformat()
    if isinstance(value, dt.date):
        return "date:" + value.isoformat()
    if isinstance(value, int):
        return f"int:{value}"
    if isinstance(value, Decimal):
        return f"decimal:{value}"
    raise SourceError(f"an incremental mark must be an integer, decimal, date or timestamp, not "
                      f"{type(value).__name__}")


def decode_mark(text: str | None) -> Any:
    if text is None:
        return None
    kind, _, raw = text.partition(":")
    if kind == "datetime":
        return dt.datetime.fromisoformat(raw)
    if kind == "date":
        return dt.date.fromisoformat(raw)
    if kind == "int":
        return int(raw)
    if kind == "decimal":
        return Decimal(raw)
    raise SourceError("the ledger holds an incremental mark of an unknown kind")


def current_upper(conn: sa.Connection, table: sa.Table, column: str,
                  where: sa.ColumnElement[bool] | None) -> Any:
    stmt = sa.select(sa.func.max(table.c[column]))
    if where is not None:
        stmt = stmt.where(where)
    return conn.execute(stmt).scalar_one()


def plan_window(dataset: str, column: str, previous: Window | None, upper: Any, *, full_refresh: bool) -> Window:
    if full_refresh or previous is None or previous.upto is None:
        return Window(dataset, column, None, upper, full=True)
    after = previous.upto
    if upper is not None and upper < after:
        raise SourceError(f"dataset {dataset!r}: the incremental column {column!r} went backwards since the last "
                          "delivery; refusing an incremental window (ask for a full refresh)")
    return Window(dataset, column, after, upper if upper is not None else after, full=False)


def window_clause(table: sa.Table, window: Window) -> sa.ColumnElement[bool] | None:
    col = table.c[window.column]
    clauses = []
    if window.after is not None:
        clauses.append(col > window.after)
    if window.upto is not None:
        clauses.append(col <= window.upto)
    elif not window.full:
        return sa.false()
    return sa.and_(*clauses) if clauses else None
