"""Every aggregate table a disclosure test builds is attacked when the test ends (tests.disclosure.table_attacks).

Tables come from ``disclosure.tables.build_table`` whichever way a test reaches it (directly, or through the
pipeline's disclosure stage); each ``TableResult`` built is kept, and after the test the intruder's ratio,
grossing, differencing and linear-programming attacks run on its published table, judged against its true cells.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from disclosure import tables


@pytest.fixture(autouse=True)
def attack_every_table(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    built: list[Any] = []
    original = tables.TableResult.__init__

    def keep(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        built.append(self)

    monkeypatch.setattr(tables.TableResult, "__init__", keep)
    yield built
    monkeypatch.undo()
    if built:
        from tests.disclosure.table_attacks import attack_result  # noqa: PLC0415 - deferred: scipy, when tables exist

        for result in built:
            attack_result(result)
