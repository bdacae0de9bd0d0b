"""Progress lines of a pass over a dataset: rows, rows/s, elapsed, and share done and ETA only with an estimate."""

from __future__ import annotations

import logging

import pytest

from masking.progress import ProgressUpdate, RowProgress, listening


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_line_every_interval_and_one_at_the_end(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    caplog.set_level(logging.INFO, logger="masking.progress")
    progress = RowProgress("claimants", estimate=1_000_000, every=15.0, clock=clock)
    for _ in range(10):  # 100,000 rows every 5 s: 20,000 rows/s
        clock.now += 5.0
        progress.add(100_000)
    final = progress.finish()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4, lines  # at 15 s, 30 s, 45 s, and the end
    assert lines[0] == "dataset claimants: 300,000 of ~1,000,000 rows (30%), 20,000 rows/s, 15.0 s elapsed, " \
                       "about 35.0 s left"
    assert lines[-1] == "dataset claimants: 1,000,000 of ~1,000,000 rows (100%), 20,000 rows/s, 50.0 s elapsed, done"
    assert final.rows == 1_000_000 and final.eta is None


def test_without_an_estimate_there_is_no_share_and_no_eta() -> None:
    update = ProgressUpdate("payments", "extract", rows=250_000, elapsed=125.0, estimate=None)
    assert update.share is None and update.eta is None
    assert update.line() == "dataset payments: 250,000 rows, 2,000 rows/s, 2 min 05 s elapsed"


def test_a_low_estimate_never_shows_more_than_all_nor_a_negative_eta() -> None:
    update = ProgressUpdate("claimants", "sample", rows=1_200, elapsed=2.0, estimate=1_000)
    assert update.share == 1.0 and update.eta is None
    assert update.line().startswith("dataset claimants (sample pass): 1,200 of ~1,000 rows (100%)")


def test_listeners_see_every_update_and_a_failing_one_changes_nothing() -> None:
    seen: list[ProgressUpdate] = []

    def broken(_update: ProgressUpdate) -> None:
        raise RuntimeError("display gone")

    clock = Clock()
    with listening(seen.append), listening(broken):
        progress = RowProgress("claimants", clock=clock)
        for _ in range(3):
            clock.now += 1
            progress.add(10)
        progress.finish()
    RowProgress("after", clock=clock).add(5)  # not listened to any more
    assert [u.rows for u in seen] == [0, 10, 20, 30, 30] and seen[-1].done
    assert {u.dataset for u in seen} == {"claimants"}
