"""Every aggregate table a disclosure test builds is attacked when the test ends (tests.disclosure.table_attacks).

Tables come from ``disclosure.tables.build_table`` or ``build_tables`` whichever way a test reaches them (directly,
or through the pipeline's disclosure stage); each ``TableResult`` built is kept, and after the test the intruder's
ratio, grossing, differencing and linear-programming attacks run on its published table, judged against its true
cells. Tables built together (one delivery's tables) are also attacked together: differencing and linear
programming across the tables of one dataset and unit (``attack_results_together``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from disclosure import assess, tables


@pytest.fixture(autouse=True)
def attack_every_table(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    built: list[Any] = []
    together: list[list[Any]] = []
    original = tables.TableResult.__init__
    build_tables = tables.build_tables

    def keep(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        built.append(self)

    def keep_together(*args: Any, **kwargs: Any) -> list[Any]:
        results = build_tables(*args, **kwargs)
        together.append(results)
        return results

    monkeypatch.setattr(tables.TableResult, "__init__", keep)
    monkeypatch.setattr(tables, "build_tables", keep_together)
    monkeypatch.setattr(assess, "build_tables", keep_together)
    yield built
    monkeypatch.undo()
    if built:
        from tests.disclosure.table_attacks import (  # noqa: PLC0415 - deferred: scipy, when tables exist
            attack_result,
            attack_results_together,
        )

        for result in built:
            attack_result(result)
        for results in together:
            attack_results_together(results)
