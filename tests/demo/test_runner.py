"""``make demo``'s set-up without Airflow: the demo catalogue and contracts rendered, approved, and authorised."""

from __future__ import annotations

from pathlib import Path

import pytest

from audit.ledger import Ledger
from authorisation.catalogue_approvals import CATALOGUE_APPROVED
from authorisation.run_checks import check_approvals
from contracts.catalogue import SOURCES_DIR, load_catalogue
from contracts.loading import load_contract
from demo.runner import (
    approve_demo_contracts,
    render_demo_approvers,
    render_demo_catalogues,
    render_demo_contracts,
)
from tests.conftest import REPO


def test_the_demo_approves_its_catalogue_then_its_contracts(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "configs"
    contracts = render_demo_contracts(REPO / "configs" / "contracts", config / "contracts", tmp_path / "ids")
    catalogues = render_demo_catalogues(REPO / "configs" / SOURCES_DIR, config / SOURCES_DIR)
    assert [c.name for c in catalogues] == ["demo_claims.yaml"]
    assert load_catalogue(catalogues[0]) == load_catalogue(REPO / "configs" / SOURCES_DIR / "demo_claims.yaml")
    key = render_demo_approvers(REPO / "configs" / "approvers.yaml", config / "approvers.yaml", tmp_path / "keys")
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    try:
        approve_demo_contracts(contracts, config / "approvers.yaml", key, ledger)
        out = capsys.readouterr().out
        assert "catalogue demo_claims: content sha256 " in out and "approved by its owner demo-approver" in out
        assert out.index("catalogue demo_claims") < out.index("C-DEMO-001: content sha256")
        for path in contracts:
            authorised = check_approvals(load_contract(path), ledger=ledger, config_dir=config, actor="pytest")
            assert authorised.catalogue is not None and authorised.catalogue["source"] == "demo_claims"
        approve_demo_contracts(contracts, config / "approvers.yaml", key, ledger)  # a second `make demo`
        again = capsys.readouterr().out
        assert again.count("already approved") == 3
        assert len(ledger.records(action=CATALOGUE_APPROVED)) == 1
    finally:
        ledger.close()
