"""A real delivery's signed manifest is a receipt of the (keyed) ledger, and names the sender by one fingerprint."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import uuid
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from audit.opening import ensure_ledger_key, open_ledger
from cli import main as cli_main
from core.settings import load_settings
from delivery.signing import load_public_key, ssh_public_line
from delivery.trust import identity_store
from demo.synthetic import write_demo_source
from pipeline.stages import Pipeline, RunContext
from tests.audit.test_checkpoint import _rewrite
from tests.authorisation.helpers import approve_for_tests
from tests.conftest import Workspace


def test_manifest_carries_the_ledger_head_and_detects_rewrites(workspace: Workspace, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("CONTRACT_EXTRACTS_INSECURE_UNKEYED_LEDGER", raising=False)
    key_file = ensure_ledger_key(load_settings())
    contract = workspace.contracts_dir / "C-DEMO-002.yaml"
    approve_for_tests(workspace.config_dir, workspace.home, [contract])
    source = f"sqlite:///{tmp_path / 'claims.sqlite'}"
    write_demo_source(source, n_people=150)
    pipeline = Pipeline(RunContext(contract_path=contract, settings=load_settings(), actor="pytest",
                                   run_key=f"test/{uuid.uuid4()}", run_after=dt.datetime.now(dt.UTC),
                                   resolve_connection=lambda _c: make_url(source), trigger={"system": "pytest"}))
    result = pipeline.run_all()
    package = next((workspace.home / "drop").rglob(result["package"]["package"]))

    # The recipient trusts the sender key beside their identity and decrypts with the default checks.
    identity = workspace.identities / "borealis-analyst.txt"
    openssh = tmp_path / "sender-signing.ssh.pub"
    openssh.write_text(ssh_public_line(load_public_key(workspace.keys["public"])) + "\n")
    identity_store(identity).write_text(openssh.read_text())
    out = tmp_path / "received"
    assert cli_main(["decrypt", str(package), "--identity", str(identity), "--out", str(out)]) == 0
    assert "ledger receipt: the sender's audit ledger stood at record #" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "contract-extracts/package/v2"
    printed = subprocess.run(["ssh-keygen", "-lf", str(openssh)], capture_output=True, text=True, check=True,
                             timeout=30).stdout.split()[1]
    assert manifest["sender"]["fingerprint"] == printed  # one fingerprint: what ssh-keygen prints

    with open_ledger() as ledger:
        assert ledger.keyed
        records = ledger.records()
        head = next(r for r in records if r.seq == manifest["ledger"]["seq"])
        assert head.hash == manifest["ledger"]["hash"]
        assert head.delivery == pipeline.delivery_id and head.action == "validation_passed"
        delivered = next(r for r in records if r.action == "delivered" and r.delivery == pipeline.delivery_id)
        assert delivered.details_obj()["sender"] == printed
        assert delivered.details_obj()["intent_seq"] == next(
            r.seq for r in records if r.action == "delivery_intent" and r.delivery == pipeline.delivery_id)

    receipt = ["audit", "verify", "--receipt", str(out / "manifest.json"), "--sender-key", str(openssh)]
    assert cli_main(receipt) == 0
    assert "receipt ok" in capsys.readouterr().out
    # An insider with the ledger key rewrites an approval record and recomputes every later hash.
    assert key_file is not None
    _rewrite(load_settings().ledger_url, 2, key=bytes.fromhex(key_file.read_text().strip()))
    assert cli_main(["audit", "verify"]) == 0, "the keyed chain alone still verifies"
    capsys.readouterr()
    assert cli_main(receipt) == 1
    assert f"record {manifest['ledger']['seq']}: hash differs from receipt" in capsys.readouterr().err
