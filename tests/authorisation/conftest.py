"""Fixtures for the approval gate (``gate_ws`` and ``ledger_url`` are shared, in tests/conftest.py)."""

from __future__ import annotations

import pytest

from demo.synthetic import write_demo_source


@pytest.fixture(scope="module")
def source_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A small synthetic claims source, shared read-only by the tests of a module."""
    url = f"sqlite:///{tmp_path_factory.mktemp('source') / 'claims.sqlite'}"
    write_demo_source(url, n_people=200)
    return url
