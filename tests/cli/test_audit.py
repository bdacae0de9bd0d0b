"""``contract-extracts audit …`` as operators and auditors use it (the ledger keyed by default)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from sqlalchemy import text

from audit.opening import open_ledger
from audit.receipts import head_for_manifest
from cli import main as cli_main
from delivery.package import manifest_bytes
from delivery.signing import load_signing_key, new_signing_key
from tests.audit.test_checkpoint import _rewrite
from tests.audit.test_ledger import fill, raw

Main = Callable[[Sequence[str] | None], int]


@pytest.fixture
def main(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Main:
    for name in ("CONTRACT_EXTRACTS_LEDGER_URL", "CONTRACT_EXTRACTS_LEDGER_KEY", "CONTRACT_EXTRACTS_LEDGER_KEY_FILE",
                 "CONTRACT_EXTRACTS_INSECURE_UNKEYED_LEDGER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CONTRACT_EXTRACTS_HOME", str(tmp_path / "state"))
    new_signing_key(tmp_path / "sender.key", tmp_path / "sender.pub")
    monkeypatch.setenv("CONTRACT_EXTRACTS_SIGNING_KEY_FILE", str(tmp_path / "sender.key"))
    assert cli_main(["audit", "new-key"]) == 0  # $CONTRACT_EXTRACTS_HOME/keys/ledger.key, found automatically
    with open_ledger() as ledger:
        assert ledger.keyed
        fill(ledger)
    return cli_main


def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'state' / 'ledger.sqlite'}"


def test_without_a_key_the_ledger_does_not_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("CONTRACT_EXTRACTS_LEDGER_URL", "CONTRACT_EXTRACTS_LEDGER_KEY", "CONTRACT_EXTRACTS_LEDGER_KEY_FILE",
                 "CONTRACT_EXTRACTS_INSECURE_UNKEYED_LEDGER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CONTRACT_EXTRACTS_HOME", str(tmp_path / "state"))
    assert cli_main(["audit", "verify"]) == 2
    err = capsys.readouterr().err
    assert "keyed by default" in err and "audit new-key" in err and "Traceback" not in err
    monkeypatch.setenv("CONTRACT_EXTRACTS_INSECURE_UNKEYED_LEDGER", "1")
    assert cli_main(["audit", "verify"]) == 0
    captured = capsys.readouterr()
    assert "ledger ok (unkeyed)" in captured.out and "unkeyed" in captured.err


def test_checkpoint_then_verify_then_truncate(main: Main, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cp = tmp_path / "head-2026-11-25.json"
    assert main(["audit", "checkpoint", str(cp)]) == 0
    assert "checkpoint of record #7" in capsys.readouterr().err
    assert main(["audit", "verify", "--checkpoint", str(cp), "--sender-key", str(tmp_path / "sender.pub")]) == 0
    out = capsys.readouterr().out
    assert "ledger ok (keyed): 7 records" in out and f"checkpoint ok: {cp}" in out
    assert main(["audit", "checkpoint", str(cp)]) == 2, "never overwrite"
    capsys.readouterr()
    with raw(url(tmp_path)) as conn:  # the tail, checkpoint record included
        conn.execute(text("DELETE FROM audit_ledger WHERE seq >= 5"))
    assert main(["audit", "verify"]) == 0
    capsys.readouterr()
    assert main(["audit", "verify", "--checkpoint", str(cp)]) == 1  # default key: the configured signing key
    assert "ledger BROKEN: records 5 to 7 are missing" in capsys.readouterr().err


def _receipt(tmp_path: Path, name: str) -> Path:
    """A delivered package's manifest.json + manifest.sig, as the contractor keeps them."""
    folder = tmp_path / name
    folder.mkdir()
    with open_ledger() as ledger:
        body = manifest_bytes({"format": "contract-extracts/package/v2", "contract": "C-DEMO-001",
                               "delivery": "20261125T020000Z-1a2b3c4d", "ledger": head_for_manifest(ledger)})
        fill(ledger)
    (folder / "manifest.json").write_bytes(body)
    (folder / "manifest.sig").write_bytes(load_signing_key(tmp_path / "sender.key").sign(body))
    return folder / "manifest.json"


def test_receipts_detect_truncation_and_rewriting(main: Main, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    first, second = _receipt(tmp_path, "first"), _receipt(tmp_path, "second")
    assert main(["audit", "verify", "--receipt", str(first), "--receipt", str(second)]) == 0
    out = capsys.readouterr().out
    assert f"receipt ok: {first} (C-DEMO-001 delivery 20261125T020000Z-1a2b3c4d, head #6)" in out
    assert "head #12" in out
    key = bytes.fromhex((tmp_path / "state" / "keys" / "ledger.key").read_text().strip())
    _rewrite(url(tmp_path), 8, key=key)  # an insider with the ledger key rewrites history after the first receipt
    assert main(["audit", "verify"]) == 0, "the keyed chain alone still verifies"
    capsys.readouterr()
    assert main(["audit", "verify", "--receipt", str(first)]) == 0
    assert main(["audit", "verify", "--receipt", str(first), "--receipt", str(second)]) == 1
    assert "record 12: hash differs from receipt" in capsys.readouterr().err
    with raw(url(tmp_path)) as conn:
        conn.execute(text("DELETE FROM audit_ledger WHERE seq >= 3"))
    assert main(["audit", "verify", "--receipt", str(first)]) == 1
    assert "records 3 to 6 are missing" in capsys.readouterr().err


def test_export_and_show(main: Main, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
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


def test_new_key(main: Main, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "new-key", str(tmp_path / "ledger.key")]) == 0
    assert (tmp_path / "ledger.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "ledger.key").read_text().strip() not in capsys.readouterr().out
    assert main(["audit", "new-key"]) == 2, "the default key file exists: never overwritten"
