"""Fixtures for the command-line tests (``workspace`` and ``gate_ws`` are shared, in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest

from cli import main


@pytest.fixture
def cli_main() -> Callable[[Sequence[str] | None], int]:
    """``contract-extracts`` as people call it: arguments in, exit code out."""
    return main
