"""``contract-extracts audit …`` as operators and auditors use it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import text

import cli as cli
from audit.keys import open_ledger

from .test_ledger import fill, raw


@pytest.fixture
def main(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from delivery.signing import new_signing_key

    for name in ("CONTRACT_EXTRACTS_LEDGER_URL", "CONTRACT_EXTRACTS_LEDGER_KEY", "CONTRACT_EXTRACTS_LEDGER_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CONTRACT_EXTRACTS_HOME", str(tmp_path / "state"))
    new_signing_key(tmp_path / "sender.key", tmp_path / "sender.pub")
    monkeypatch.setenv("CONTRACT_EXTRACTS_SIGNING_KEY_FILE", str(tmp_path / "sender.key"))
    monkeypatch.setattr(cli, "_AREA_MODULES", tuple(dict.fromkeys((*cli._AREA_MODULES, "audit"))))
    with open_ledger() as ledger:
        fill(ledger)
    return cli.main


def test_checkpoint_then_verify_then_truncate(main, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cp = tmp_path / "head-2026-11-25.json"
    assert main(["audit", "checkpoint", str(cp)]) == 0
    assert "checkpoint of head #6" in capsys.readouterr().err
    assert main(["audit", "verify", "--checkpoint", str(cp), "--sender-key", str(tmp_path / "sender.pub")]) == 0
    out = capsys.readouterr().out
    assert "ledger ok (unkeyed): 7 records" in out and f"checkpoint ok: {cp}" in out
    assert main(["audit", "checkpoint", str(cp)]) == 2, "never overwrite"
    capsys.readouterr()
    url = f"sqlite:///{tmp_path / 'state' / 'ledger.sqlite'}"
    with raw(url) as conn:
        conn.execute(text("DELETE FROM audit_ledger WHERE seq >= 5"))
    assert main(["audit", "verify"]) == 0
    capsys.readouterr()
    assert main(["audit", "verify", "--checkpoint", str(cp)]) == 1  # default key: the configured signing key
    assert "ledger BROKEN: records 5 to 6 are missing" in capsys.readouterr().err


def test_export_and_show(main, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "export.csv"
    assert main(["audit", "export", "--format", "csv", "--out", str(out), "--contract", "c-1"]) == 0
    assert "exported 5 records" in capsys.readouterr().err
    assert out.read_text().count("\n") == 6
    assert main(["audit", "show", "--action", "exported", "--json"]) == 0
    shown = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert shown[0]["actor"] == "bob"  # the fixture's own "exported" record
    assert shown[-1]["details"]["records"] == 5 and shown[-1]["actor"].startswith("cli:")
    assert main(["audit", "show", "--delivery", "d-1"]) == 0
    assert capsys.readouterr().out.count("\n") == 4


def test_new_key(main, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "new-key", str(tmp_path / "ledger.key")]) == 0
    assert (tmp_path / "ledger.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "ledger.key").read_text().strip() not in capsys.readouterr().out
