"""Fixtures for the approval gate: a workspace whose ledger is SQLite or a fresh PostgreSQL database.

PostgreSQL is the production ledger, so an unreachable server FAILS these tests (never skips):
start it with ``bash scripts/ensure-services.sh``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import cli as cli
from demo.synthetic import write_demo_source
from tests.conftest import Workspace, temporary_database


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty ledger database on each back end (test ids ``[sqlite]`` and ``[postgresql]``)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.sqlite'}"
        return
    with temporary_database("postgresql") as url:
        yield url


@pytest.fixture
def gate_ws(workspace: Workspace, ledger_url: str, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    """The shared ``workspace`` (keys, rendered demo contracts) with its ledger on ``ledger_url``."""
    monkeypatch.setenv("CONTRACT_EXTRACTS_LEDGER_URL", ledger_url)
    monkeypatch.delenv("CONTRACT_EXTRACTS_LEDGER_KEY", raising=False)
    monkeypatch.delenv("CONTRACT_EXTRACTS_LEDGER_KEY_FILE", raising=False)
    return workspace


@pytest.fixture(scope="module")
def source_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A small synthetic claims source, shared read-only by the tests of a module."""
    url = f"sqlite:///{tmp_path_factory.mktemp('source') / 'claims.sqlite'}"
    write_demo_source(url, n_people=200)
    return url


@pytest.fixture
def cli_main(monkeypatch: pytest.MonkeyPatch):
    """``cli.main`` with the approvals and audit subcommands registered."""
    wanted = tuple(dict.fromkeys((*cli._AREA_MODULES, "approvals", "audit")))
    monkeypatch.setattr(cli, "_AREA_MODULES", wanted)
    return cli.main
