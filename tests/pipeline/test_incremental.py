"""Incremental windows: marks come only from delivered deliveries, failed nights are caught up,
nothing is sent twice, and marks round-trip through the ledger with their types."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from audit.ledger import Ledger
from core.errors import SourceError
from extract.incremental import (
    Window,
    current_upper,
    decode_mark,
    encode_mark,
    plan_window,
    window_clause,
)
from pipeline.incremental import previous_marks


@pytest.mark.parametrize("value", [
    42, Decimal("10.50"), dt.date(2026, 11, 25), dt.datetime(2026, 11, 25, 2, 0, tzinfo=dt.UTC),
    dt.datetime(2026, 11, 25, 2, 0, 0, 123456)], ids=["int", "decimal", "date", "aware-datetime", "naive-datetime"])
def test_marks_round_trip_with_their_type(value) -> None:
    assert decode_mark(encode_mark(value)) == value
    assert type(decode_mark(encode_mark(value))) is type(value)


def test_unsupported_marks_are_refused() -> None:
    with pytest.raises(SourceError):
        encode_mark(True)
    with pytest.raises(SourceError):
        encode_mark("text")


def record_night(ledger: Ledger, delivery: str, window: Window, delivered: bool) -> None:
    ledger.append(actor="t", action="run_started", contract="C-1", delivery=delivery, details={})
    ledger.append(actor="t", action="extract_done", contract="C-1", delivery=delivery,
                  details={"windows": [window.to_dict()]})
    ledger.append(actor="t", action="delivered" if delivered else "blocked", contract="C-1", delivery=delivery,
                  details={})


def test_failed_night_is_caught_up_and_nothing_is_sent_twice(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'src.sqlite'}")
    metadata = sa.MetaData()
    table = sa.Table("t", metadata, sa.Column("id", sa.Integer, primary_key=True), sa.Column("v", sa.Integer))
    metadata.create_all(engine)
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    sent: list[int] = []

    def night(delivery: str, new_ids: range, delivered: bool, full: bool = False) -> None:
        with engine.begin() as conn:
            if new_ids:
                conn.execute(table.insert(), [{"id": i, "v": i} for i in new_ids])
            _, previous = previous_marks(ledger, "C-1")
            window = plan_window("t", "id", previous.get("t"), current_upper(conn, table, "id", None),
                                 full_refresh=full)
            stmt = sa.select(table.c.id)
            clause = window_clause(table, window)
            if clause is not None:
                stmt = stmt.where(clause)
            ids = [row[0] for row in conn.execute(stmt)]
        record_night(ledger, delivery, window, delivered)
        if delivered:
            sent.extend(ids)

    night("d1", range(1, 11), delivered=True)      # first night: full
    night("d2", range(11, 21), delivered=False)    # fails: mark must not move
    night("d3", range(21, 31), delivered=True)     # catches up 11..30
    night("d4", range(0), delivered=True)          # nothing new: empty window
    assert sorted(sent) == list(range(1, 31))
    assert len(sent) == len(set(sent)), "no row may be sent twice"
    night("d5", range(31, 33), delivered=True, full=True)  # full refresh re-sends everything
    assert sent.count(5) == 2 and sent.count(32) == 1
    ledger.close()
    engine.dispose()


def test_a_column_going_backwards_is_refused() -> None:
    previous = Window("t", "id", None, 100, full=True)
    with pytest.raises(SourceError, match="went backwards"):
        plan_window("t", "id", previous, 50, full_refresh=False)
    assert plan_window("t", "id", previous, 50, full_refresh=True).full
