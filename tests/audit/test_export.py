"""Exports reproduce the chain for an auditor, and every export is itself recorded before it leaves."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

import pytest

from audit.export import EXPORT_ACTION, export
from core.errors import LedgerError

from .test_ledger import KEY, auditor_check, fill


@pytest.mark.parametrize("key", [None, KEY], ids=["sha256", "hmac"])
def test_jsonl_export_reproduces_the_chain(make_ledger, tmp_path: Path, key) -> None:
    ledger = make_ledger(key=key)
    fill(ledger)
    out = tmp_path / "ledger.jsonl"
    result = export(ledger, fmt="jsonl", out=str(out), actor="cli:auditor")
    data = out.read_bytes()
    assert (result.records, result.sha256) == (6, hashlib.sha256(data).hexdigest())
    rows = [json.loads(line) for line in data.decode().splitlines()]
    for row in rows:
        row["details"] = json.dumps(row["details"], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    auditor_check(rows, key)
    recorded = ledger.head()
    assert (recorded.seq, recorded.action, recorded.actor) == (7, EXPORT_ACTION, "cli:auditor")
    assert recorded.details_obj() == {
        "format": "jsonl", "filters": {"contract": None, "action": None, "since": None, "delivery": None},
        "records": 6, "first_seq": 1, "last_seq": 6, "sha256": result.sha256, "destination": str(out)}
    assert out.stat().st_mode & 0o777 == 0o600
    assert ledger.verify().ok


def test_csv_export_keeps_the_stored_text(make_ledger, tmp_path: Path) -> None:
    ledger = make_ledger()
    fill(ledger)
    out = tmp_path / "ledger.csv"
    export(ledger, fmt="csv", out=str(out), actor="cli:auditor")
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert list(rows[0]) == ["seq", "at", "actor", "action", "contract", "delivery", "details", "prev_hash", "hash"]
    for row in rows:
        row["seq"] = int(row["seq"])
        row["contract"] = row["contract"] or None
        row["delivery"] = row["delivery"] or None
    auditor_check(rows)


def test_filtered_export_is_recorded_against_the_contract(make_ledger, tmp_path: Path,
                                                          capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    ledger = make_ledger()
    fill(ledger)
    result = export(ledger, fmt="jsonl", out="-", actor="cli:auditor", contract="c-1", action="delivered")
    printed = capsysbinary.readouterr().out
    assert [json.loads(line)["seq"] for line in printed.decode().splitlines()] == [5]
    assert result.sha256 == hashlib.sha256(printed).hexdigest() and result.destination == "stdout"
    recorded = ledger.head()
    assert recorded.contract == "c-1" and recorded.details_obj()["filters"]["action"] == "delivered"


def test_export_never_overwrites_and_records_nothing_then(make_ledger, tmp_path: Path) -> None:
    ledger = make_ledger()
    fill(ledger)
    out = tmp_path / "exists.jsonl"
    out.write_text("keep me")
    with pytest.raises(LedgerError, match="never overwrites"):
        export(ledger, fmt="jsonl", out=str(out), actor="x")
    assert out.read_text() == "keep me" and ledger.count() == 6
    with pytest.raises(LedgerError, match="cannot create"):
        export(ledger, fmt="csv", out=str(tmp_path / "missing" / "x.csv"), actor="x")
    assert ledger.count() == 6
