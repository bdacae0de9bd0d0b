"""The `contract-extracts` command line as people use it: exit codes, messages, nothing secret printed."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from audit.ledger import Ledger
from cli import main
from core.settings import load_settings
from tests.conftest import REPO, Workspace


def test_check_accepts_the_demo_contracts(capsys: pytest.CaptureFixture[str]) -> None:
    files = sorted(str(p) for p in (REPO / "configs" / "contracts").glob("*.yaml"))
    assert main(["check", *files]) == 0
    out = capsys.readouterr().out
    assert out.count("ok  ") == len(files)
    assert "catalogue demo_claims; population: claimant of claimants (restricts payments)" in out


def test_check_reports_every_bad_file_and_goes_on(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "C-BAD-1.yaml"
    bad.write_text((REPO / "configs" / "contracts" / "C-DEMO-002.yaml").read_text()
                   .replace("contract: C-DEMO-002", "contract: C-BAD-1") + "colour: blue\n")
    good = REPO / "configs" / "contracts" / "C-DEMO-001.yaml"
    assert main(["check", str(bad), str(good)]) == 1
    captured = capsys.readouterr()
    assert "C-BAD-1.yaml" in captured.err and "unknown key 'colour'" in captured.err and "Fix:" in captured.err
    assert f"ok  {good}" in captured.out and "1 of 2 file(s) have problems" in captured.err


def test_keys_commands_print_public_parts_only(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    master = tmp_path / "master.key"
    assert main(["keys", "new-master", str(master)]) == 0
    assert oct(master.stat().st_mode & 0o777) == "0o600"
    secret = master.read_text().strip()
    monkeypatch.setenv("CONTRACT_EXTRACTS_MASTER_KEY_FILE", str(master))
    monkeypatch.delenv("CONTRACT_EXTRACTS_MASTER_KEY", raising=False)
    assert main(["keys", "id"]) == 0
    identity = tmp_path / "id.txt"
    assert main(["keys", "new-recipient", str(identity)]) == 0
    assert main(["keys", "new-signing", str(tmp_path / "s.key"), str(tmp_path / "s.pub")]) == 0
    out = capsys.readouterr().out
    assert secret not in out
    assert "AGE-SECRET-KEY" not in out and "PRIVATE KEY" not in out
    assert "age1" in out and "fingerprint SHA256:" in out and "ssh-keygen -lf" in out
    assert main(["keys", "new-master", str(master)]) == 2, "never overwrite a key file"


def test_audit_verify_names_the_first_broken_record(workspace: Workspace,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    ledger = Ledger(load_settings().ledger_url)
    for n in range(5):
        ledger.append(actor="pytest", action="run_started", contract="C-DEMO-001", delivery=f"d{n}",
                      details={"n": n})
    ledger.close()
    assert main(["audit", "verify"]) == 0
    assert main(["audit", "show", "--contract", "C-DEMO-001"]) == 0
    assert capsys.readouterr().out.count("run_started") == 6 - 1  # 5 records listed (+ verify line)
    with sqlite3.connect(workspace.home / "ledger.sqlite") as db:
        db.execute("UPDATE audit_ledger SET actor = 'mallory' WHERE seq = 3")
    assert main(["audit", "verify"]) == 1
    assert "record 3" in capsys.readouterr().err
