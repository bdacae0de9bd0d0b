"""Incremental deliveries: each delivery carries the rows whose ``column`` moved past the last mark.

The mark of a dataset is the upper end of the window of the newest *delivered* delivery of the
contract: it is read from that delivery's ``extract_done`` ledger record, and only deliveries that also
have a ``delivered`` record count. So a night that fails (blocked, crashed, never delivered) leaves the
mark where it was and the next run catches up; a delivered window is never sent again. The windows
themselves (and how they narrow a query) are ``extract.incremental``.
"""

from __future__ import annotations

from audit.ledger import Ledger
from extract.incremental import Window


def previous_marks(ledger: Ledger, contract_id: str) -> tuple[str | None, dict[str, Window]]:
    """(delivery id, windows by dataset) of the newest delivered delivery of the contract."""
    delivered = [r.delivery for r in ledger.records(contract=contract_id, action="delivered")]
    for delivery in reversed(delivered):
        for record in ledger.records(delivery=delivery, action="extract_done"):
            if record.contract != contract_id:
                continue
            windows = record.details_obj().get("windows")
            if windows:
                return delivery, {w["dataset"]: Window.from_dict(w) for w in windows}
    return None, {}
