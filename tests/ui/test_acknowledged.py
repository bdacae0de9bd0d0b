"""The deliveries table shows which recipients acknowledged a delivery (``delivery_acknowledged`` records)."""

from __future__ import annotations

import datetime as dt

from airflow_glue import overview as ov
from airflow_glue.ui import _environment
from audit.acknowledgements import ACK_ACTION
from audit.ledger import Ledger
from core.settings import load_settings
from tests.ui.conftest import UiWorld


def test_acknowledged_deliveries_are_shown(ui_world: UiWorld) -> None:
    settings = load_settings()
    source = ov.LedgerSource()
    try:
        before = ov.build_overview(settings.contracts_dir, settings.ledger_url, source, today=dt.date(2027, 1, 1))
        assert [d.acknowledged for d in before.deliveries] == [[]]
        delivery = before.deliveries[0].delivery
        with Ledger(settings.ledger_url) as ledger:
            ledger.append(actor="cli:owner", action=ACK_ACTION, contract="C-DEMO-001", delivery=delivery,
                          details={"recipient": "acme-analyst", "recipient_key": "ssh:SHA256:" + "A" * 43})
        after = ov.build_overview(settings.contracts_dir, settings.ledger_url, source, today=dt.date(2027, 1, 1))
    finally:
        source.close()
    (row,) = after.deliveries
    assert row.acknowledged == ["acme-analyst"]
    macros = _environment().get_template("_macros.html.j2").module
    html = str(macros.deliveries_table(after.deliveries, "/contract-deliveries"))
    assert "acknowledged by acme-analyst" in html
    assert "acknowledged by" not in str(macros.deliveries_table(before.deliveries, "/x"))
