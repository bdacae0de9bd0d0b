"""``contract-extracts approve | revoke | status | approvers`` as approvers and auditors use them."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.authorisation.helpers import approver_key_file, write_registry
from tests.conftest import Workspace

IAM = ["--by", "test-iam", "--role", "information-asset-manager"]
needs_ssh_keygen = pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs OpenSSH ssh-keygen")


@pytest.fixture
def ws(gate_ws: Workspace) -> Workspace:
    write_registry(gate_ws.config_dir, gate_ws.home)
    return gate_ws


def catalogue_file(ws: Workspace) -> str:
    return str(ws.config_dir / "sources" / "demo_claims.yaml")


@pytest.fixture
def approved_catalogue(ws: Workspace, cli_main, capsys: pytest.CaptureFixture[str]) -> str:
    """The demo source's catalogue, approved by its owner through the command line."""
    key = str(approver_key_file(ws.home, "test-iam"))
    assert cli_main(["approve", catalogue_file(ws), *IAM, "--key", key]) == 0
    capsys.readouterr()
    return catalogue_file(ws)


def test_approve_then_status(ws: Workspace, cli_main, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["status", "C-DEMO-001"]) == 1
    out = capsys.readouterr().out
    assert "approvals:      none" in out and "would be REFUSED" in out and "has no approval" in out
    assert "catalogue:      demo_claims sha256 " in out

    key = str(approver_key_file(ws.home, "test-iam"))
    # The contract cannot be approved before its source catalogue: its owner approves that first.
    assert cli_main(["approve", "C-DEMO-001", *IAM, "--key", key]) == 2
    assert "cannot be approved against an unapproved catalogue" in capsys.readouterr().err
    assert cli_main(["status", catalogue_file(ws)]) == 1
    assert "every contract reading this source is REFUSED" in capsys.readouterr().out
    assert cli_main(["approve", catalogue_file(ws), *IAM, "--key", key]) == 0
    out = capsys.readouterr().out
    assert "approved source catalogue demo_claims (content sha256 " in out and "approved for runs" in out
    assert cli_main(["status", catalogue_file(ws)]) == 0
    assert "COUNTS: approves the current content" in capsys.readouterr().out

    assert cli_main(["approve", "C-DEMO-001", *IAM, "--key", key, "--note", "BC-DEMO-4411 reviewed"]) == 0
    out = capsys.readouterr().out
    assert "approved C-DEMO-001 (content sha256 " in out and "as test-iam (Information Asset Manager" in out
    assert "against catalogue demo_claims sha256 " in out
    assert "sufficient for a run" in out

    assert cli_main(["status", "C-DEMO-001"]) == 0
    out = capsys.readouterr().out
    assert "COUNTS: approves the current content" in out and "note: BC-DEMO-4411 reviewed" in out
    assert "would be authorised now" in out and "recorded in the ledger as #1" in out

    assert cli_main(["status", "C-DEMO-001", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["authorised"] is True and [a["approver"] for a in status["approvals"]] == ["test-iam"]
    assert status["approvals"][0]["counts"] is True and status["registry"]["recorded_seq"] == 1
    assert status["catalogue"]["source"] == "demo_claims"
    assert status["approvals"][0]["catalogue_sha256"] == status["catalogue"]["sha256"]


def test_status_says_what_changed_and_revoke(ws: Workspace, cli_main, approved_catalogue: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    key = str(approver_key_file(ws.home, "test-iam"))
    assert cli_main(["approve", "C-DEMO-002", *IAM, "--key", key]) == 0
    path = ws.contracts_dir / "C-DEMO-002.yaml"
    data = yaml.safe_load(path.read_text())
    data["datasets"][0]["columns"]["sex"] = {"treatment": "keep"}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    capsys.readouterr()
    assert cli_main(["status", "C-DEMO-002"]) == 1
    out = capsys.readouterr().out
    assert "does not count: approved other content; changed since: dataset claimants: column sex added" in out

    assert cli_main(["approve", "C-DEMO-002", *IAM, "--key", key]) == 0
    assert cli_main(["revoke", "C-DEMO-002", "--by", "test-iam", "--reason", "assurance lapsed"]) == 0
    out = capsys.readouterr().out
    assert "withdrew test-iam's approvals of C-DEMO-002 (records #" in out
    assert cli_main(["status", "C-DEMO-002"]) == 1
    assert "withdrawn by record" in capsys.readouterr().out


def test_errors_are_reported_not_raised(ws: Workspace, cli_main, approved_catalogue: str,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["approve", "C-DEMO-001", *IAM]) == 2
    assert "--key KEY, or --statement FILE" in capsys.readouterr().err
    other = str(approver_key_file(ws.home, "test-approver"))
    assert cli_main(["approve", "C-DEMO-001", *IAM, "--key", other]) == 2
    assert "is not test-iam's registered key" in capsys.readouterr().err
    assert cli_main(["approve", "C-DEMO-001", "--by", "nobody", "--role", "approver", "--key", other]) == 2
    assert "not in the approver registry" in capsys.readouterr().err
    # Only the catalogue's owner approves it, as an Information Asset Manager.
    assert cli_main(["approve", approved_catalogue, "--by", "test-approver", "--role", "approver", "--key",
                     other]) == 2
    assert "owned by test-iam; only its owner approves it" in capsys.readouterr().err


@needs_ssh_keygen
def test_ssh_keygen_workflow_and_auditor_check(ws: Workspace, cli_main, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    # The catalogue's owner signs it with plain OpenSSH too.
    catalogue_statement = tmp_path / "catalogue.txt"
    assert cli_main(["approve", catalogue_file(ws), *IAM, "--print-statement"]) == 0
    catalogue_statement.write_text(capsys.readouterr().out)
    assert catalogue_statement.read_text().startswith("contract-extracts catalogue approval v1\ncatalogue: "
                                                      "demo_claims\n")
    subprocess.run(["ssh-keygen", "-Y", "sign", "-n", "contract-extracts-approval", "-f",
                    str(approver_key_file(ws.home, "test-iam")), str(catalogue_statement)], check=True,
                   capture_output=True)
    assert cli_main(["approve", catalogue_file(ws), *IAM, "--statement", str(catalogue_statement), "--signature",
                     f"{catalogue_statement}.sig"]) == 0
    assert "approved for runs" in capsys.readouterr().out

    # The approver signs with plain OpenSSH; the tool never sees the private key.
    statement = tmp_path / "approval.txt"
    assert cli_main(["approve", "C-DEMO-001", *IAM, "--print-statement"]) == 0
    statement.write_text(capsys.readouterr().out)
    subprocess.run(["ssh-keygen", "-Y", "sign", "-n", "contract-extracts-approval", "-f",
                    str(approver_key_file(ws.home, "test-iam")), str(statement)], check=True, capture_output=True)
    assert cli_main(["approve", "C-DEMO-001", *IAM, "--statement", str(statement), "--signature",
                     f"{statement}.sig"]) == 0
    assert "sufficient for a run" in capsys.readouterr().out

    # An auditor checks the recorded approval with OpenSSH alone.
    assert cli_main(["approvers", "allowed-signers"]) == 0
    (tmp_path / "allowed_signers").write_text(capsys.readouterr().out)
    assert cli_main(["audit", "show", "--action", "contract_approved", "--json"]) == 0
    record = json.loads(capsys.readouterr().out.splitlines()[-1])
    d = record["details"]
    text = (f"contract-extracts approval v2\ncontract: {record['contract']}\ncontent-sha256: {d['content_sha256']}\n"
            f"catalogue-sha256: {d['catalogue']['sha256']}\napprover: {d['approver']}\nrole: {d['role']}\n"
            f"signed-at: {d['signed_at']}\n")
    assert text == statement.read_text()
    (tmp_path / "recorded.sig").write_text(d["signature"])
    proc = subprocess.run(["ssh-keygen", "-Y", "verify", "-f", str(tmp_path / "allowed_signers"), "-I", d["approver"],
                           "-n", "contract-extracts-approval", "-s", str(tmp_path / "recorded.sig")],
                          input=text.encode(), capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_approvers_commands(ws: Workspace, cli_main, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["approvers", "list"]) == 0
    out = capsys.readouterr().out
    assert "test-iam" in out and "Information Asset Manager" in out and "SHA256:" in out
    assert cli_main(["approvers", "new-key", str(tmp_path / "jane"), "--name", "jane.doe",
                     "--role", "information-asset-manager"]) == 0
    out = capsys.readouterr().out
    assert "- name: jane.doe" in out and "ssh-ed25519 " in out and "PRIVATE" not in out
    assert (tmp_path / "jane").stat().st_mode & 0o777 == 0o600 and (tmp_path / "jane.pub").exists()


def test_revoking_the_catalogue_refuses_its_contracts(ws: Workspace, cli_main, approved_catalogue: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    key = str(approver_key_file(ws.home, "test-iam"))
    assert cli_main(["approve", "C-DEMO-002", *IAM, "--key", key]) == 0
    assert cli_main(["status", "C-DEMO-002"]) == 0
    capsys.readouterr()
    assert cli_main(["revoke", approved_catalogue, "--reason", "classification under review"]) == 0
    assert "withdrew all approvals of source catalogue demo_claims" in capsys.readouterr().out
    assert cli_main(["status", "C-DEMO-002"]) == 1
    assert "withdrawn by record" in capsys.readouterr().out
    assert cli_main(["status", approved_catalogue, "--json"]) == 1
    status = json.loads(capsys.readouterr().out)
    assert status["approved"] is False and "withdrawn by record" in status["approvals"][0]["problem"]
