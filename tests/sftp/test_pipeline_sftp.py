"""The deliver stage over a real SFTP server: receipts in the ledger, exactly once, fail-closed refusals,
packages that the recipients open with age (X25519 and SSH keys) and gpg."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml
from sqlalchemy.engine import make_url

from audit.ledger import Ledger
from core.errors import ConfigError, DeliveryError
from core.settings import load_settings
from delivery.recipients import new_identity_file
from delivery.sftp import HostKeyRejected, RetryPolicy
from delivery.verify import verify_package
from demo.synthetic import write_demo_source
from pipeline.stages import STAGES, Pipeline, RunContext
from tests.authorisation.helpers import approve_for_tests
from tests.conftest import Workspace
from tests.delivery.keyhelpers import gpg_decrypt, make_openpgp_recipient, make_ssh_key, stop_gpg_agent

from .conftest import SSHServer, _keygen

CONTRACT = "C-DEMO-002"
CONN = "acme_sftp"


@pytest.fixture
def source(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'claims.sqlite'}"
    write_demo_source(url, n_people=200)
    return url


@pytest.fixture
def inbound(sshd: SSHServer) -> Path:
    (sshd.root / "inbound").mkdir()
    return sshd.root / "inbound"


def use_sftp(workspace: Workspace, recipients: list[dict] | None = None, path: str = "/inbound") -> None:
    file = workspace.contracts_dir / f"{CONTRACT}.yaml"
    data = yaml.safe_load(file.read_text())
    data["delivery"] = {"transport": "sftp", "connection": CONN, "path": path}
    if recipients is not None:
        data["recipients"] = recipients
    file.write_text(yaml.safe_dump(data, sort_keys=False))


def pipeline(workspace: Workspace, source: str, run_key: str | None = None, **overrides) -> Pipeline:
    # The authorise gate runs only signed approvals of the current content: approve what the test runs.
    approve_for_tests(workspace.config_dir, workspace.home, [workspace.contracts_dir / f"{CONTRACT}.yaml"])
    ctx = RunContext(contract_path=workspace.contracts_dir / f"{CONTRACT}.yaml", settings=load_settings(),
                     actor="pytest", run_key=run_key or f"test/{uuid.uuid4()}",
                     run_after=dt.datetime(2026, 11, 25, 2, tzinfo=dt.UTC),
                     resolve_connection=lambda _c: make_url(source),
                     sftp_retry=RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.02),
                     **{"trigger": {"system": "pytest"}, **overrides})
    return Pipeline(ctx)


def records(delivery: str) -> list[tuple[str, dict]]:
    ledger = Ledger(load_settings().ledger_url)
    try:
        return [(r.action, r.details_obj()) for r in ledger.records(delivery=delivery)]
    finally:
        ledger.close()


def test_sftp_delivery_round_trip_with_age_and_ssh_recipients(workspace: Workspace, source: str, sshd: SSHServer,
                                                              inbound: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN.upper()}", sshd.connection_json())
    ssh_dir = tmp_path / "analyst-ssh"
    ssh_dir.mkdir()
    ssh_line = make_ssh_key(ssh_dir / "id_ed25519")
    age_identity = workspace.identities / "borealis-analyst.txt"
    age_public = next(line.split(": ")[1] for line in age_identity.read_text().splitlines() if "public key" in line)
    use_sftp(workspace, [{"name": "borealis-analyst", "age": age_public}, {"name": "ssh-analyst", "ssh": ssh_line}])
    run = pipeline(workspace, source)
    result = run.run_all()
    name = result["package"]["package"]
    assert name.endswith(".tar.age")
    assert sorted(p.name for p in inbound.iterdir()) == [name]
    package = inbound / name
    actions = [a for a, _ in records(run.delivery_id)]
    assert actions.count("delivered") == 1 and "blocked" not in actions
    assert actions.index("validation_passed") < actions.index("delivered") < actions.index("run_completed")
    receipt = dict(records(run.delivery_id))["delivered"]
    assert receipt["transport"] == "sftp" and receipt["connection"] == CONN
    assert receipt["server"] == f"127.0.0.1:{sshd.port}" and receipt["host_key"].startswith("SHA256:")
    assert receipt["path"] == str(package.resolve())
    assert receipt["sha256"] == hashlib.sha256(package.read_bytes()).hexdigest()
    assert [r["name"] for r in receipt["recipients"]] == ["borealis-analyst", "ssh-analyst"]
    assert receipt["recipients"][1]["fingerprint"].startswith("ssh:SHA256:")
    # Both recipients open it with the age CLI; our verify agrees.
    for identity in (age_identity, ssh_dir / "id_ed25519"):
        plain = subprocess.run(["age", "-d", "-i", str(identity), str(package)], capture_output=True, check=True,
                               timeout=60).stdout
        out = tmp_path / f"by-{identity.name}"
        out.mkdir()
        subprocess.run(["tar", "-x", "-C", str(out)], input=plain, check=True, timeout=60)
        sums = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=out, capture_output=True, timeout=60)
        assert sums.returncode == 0
        manifest = json.loads((out / "manifest.json").read_bytes())
        assert manifest["recipients"] == receipt["recipients"]
        verified = verify_package(package, identity=identity, sender_key=workspace.keys["public"])
        assert verified.ssh_signature_verified and verified.checksums_file


def test_retried_task_and_rerun_dag_never_send_a_second_copy(workspace: Workspace, source: str, sshd: SSHServer,
                                                             inbound: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN.upper()}", sshd.connection_json())
    use_sftp(workspace)
    run_key = f"dag/{uuid.uuid4()}"
    first = pipeline(workspace, source, run_key)
    for stage in ("authorise", "extract", "validate", "package", "deliver"):
        getattr(first, stage)()
    assert first.deliver()["already_delivered"] is True  # the deliver task retried
    first.record()
    first.cleanup()
    # The whole DAG run cleared and run again: same run, same delivery id.
    again = pipeline(workspace, source, run_key)
    assert again.delivery_id == first.delivery_id
    try:
        for stage in STAGES:
            getattr(again, stage)()
    finally:
        again.cleanup()
    assert len(list(inbound.iterdir())) == 1
    actions = [a for a, _ in records(first.delivery_id)]
    assert actions.count("delivered") == 1 and "blocked" not in actions


def test_crash_after_the_rename_before_the_ledger_is_recognised(workspace: Workspace, source: str, sshd: SSHServer,
                                                                inbound: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN.upper()}", sshd.connection_json())
    use_sftp(workspace)
    run = pipeline(workspace, source)
    for stage in ("authorise", "extract", "validate", "package"):
        getattr(run, stage)()
    info = json.loads((run.staging / "package.json").read_text())
    # The package reached the server but the worker died before writing the `delivered` record.
    (inbound / info["package"]).write_bytes((run.staging / info["package"]).read_bytes())
    result = run.deliver()
    assert result["already_delivered"] is True
    delivered = [d for a, d in records(run.delivery_id) if a == "delivered"]
    assert len(delivered) == 1 and delivered[0]["already_present"] is True
    run.cleanup()
    assert len(list(inbound.iterdir())) == 1


def test_host_key_mismatch_is_blocked_and_nothing_is_sent(workspace: Workspace, source: str, sshd: SSHServer,
                                                          inbound: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN.upper()}",
                       sshd.connection_json(host_key=_keygen(tmp_path / "impostor")))
    use_sftp(workspace)
    run = pipeline(workspace, source)
    with pytest.raises(HostKeyRejected):
        run.run_all()
    blocked = [d for a, d in records(run.delivery_id) if a == "blocked"]
    assert blocked and blocked[-1]["stage"] == "deliver" and "not the pinned" in blocked[-1]["reason"]
    assert "delivered" not in [a for a, _ in records(run.delivery_id)]
    assert list(inbound.iterdir()) == []
    assert not run.staging.exists()


@pytest.mark.parametrize(("setup", "error", "reason"), [
    pytest.param(lambda s, w: w.update(path="/missing"), DeliveryError, "does not exist", id="missing-folder"),
    pytest.param(lambda s, w: w.update(login="nobody"), DeliveryError, "refused the credentials",
                 id="wrong-credentials"),
    pytest.param(lambda s, w: w.update(recipients=["age1…"]), ConfigError, "recipients come from the contract",
                 id="recipient-in-connection-extras"),
])
def test_refusals_are_blocked_with_a_clear_reason(workspace: Workspace, source: str, sshd: SSHServer, inbound: Path,
                                                  monkeypatch: pytest.MonkeyPatch, setup, error, reason) -> None:
    wanted: dict = {}
    setup(sshd, wanted)
    path = wanted.pop("path", "/inbound")
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN.upper()}", sshd.connection_json(**wanted))
    use_sftp(workspace, path=path)
    run = pipeline(workspace, source)
    with pytest.raises(error, match=reason):
        run.run_all()
    blocked = [d for a, d in records(run.delivery_id) if a == "blocked"]
    assert blocked and blocked[-1]["stage"] == "deliver" and reason in blocked[-1]["reason"]
    assert list(inbound.iterdir()) == []


def test_recipients_come_from_the_contract_only(workspace: Workspace, source: str, sshd: SSHServer, inbound: Path,
                                                tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN.upper()}", sshd.connection_json())
    intruder = new_identity_file(tmp_path / "intruder.txt")
    for name in ("CONTRACT_EXTRACTS_RECIPIENTS", "AGE_RECIPIENT", "CONTRACT_EXTRACTS_EXTRA_RECIPIENT"):
        monkeypatch.setenv(name, intruder)
    use_sftp(workspace)
    run = pipeline(workspace, source, trigger={"system": "pytest", "recipients": [intruder],
                                                "params": {"recipient": intruder}})
    result = run.run_all()
    package = inbound / result["package"]["package"]
    header = package.read_bytes().split(b"\n---", 1)[0].decode()
    stanzas = [line.split()[1] for line in header.splitlines() if line.startswith("-> ")]
    assert [s for s in stanzas if not s.endswith("-grease")] == ["X25519"], "exactly the contract's one recipient"
    with pytest.raises(Exception, match="decryption failed"):
        verify_package(package, identity=tmp_path / "intruder.txt", sender_key=workspace.keys["public"])


def test_openpgp_contract_delivers_a_gpg_package(workspace: Workspace, source: str, sshd: SSHServer, inbound: Path,
                                                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN.upper()}", sshd.connection_json())
    analyst = make_openpgp_recipient(tmp_path / "analyst-gnupg")
    try:
        key_dir = workspace.config_dir / "recipients" / "borealis"
        key_dir.mkdir(parents=True)
        (key_dir / "analyst.asc").write_text(analyst.armored)
        use_sftp(workspace, [{"name": "gpg-analyst", "openpgp": "borealis/analyst.asc",
                              "fingerprint": analyst.fingerprint}])
        run = pipeline(workspace, source)
        result = run.run_all()
        package = inbound / result["package"]["package"]
        assert package.name.endswith(".tar.gpg")
        out = tmp_path / "by-gpg"
        out.mkdir()
        subprocess.run(["tar", "-x", "-C", str(out)], input=gpg_decrypt(analyst.home, package), check=True, timeout=60)
        sums = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=out, capture_output=True, timeout=60)
        assert sums.returncode == 0
        receipt = dict(records(run.delivery_id))["delivered"]
        assert receipt["format"] == "openpgp"
        assert receipt["recipients"] == [{"name": "gpg-analyst", "fingerprint": f"openpgp:{analyst.fingerprint}"}]
    finally:
        stop_gpg_agent(analyst.home)


def test_mixed_formats_are_blocked_at_package(workspace: Workspace, source: str, sshd: SSHServer, inbound: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN.upper()}", sshd.connection_json())
    file = workspace.contracts_dir / f"{CONTRACT}.yaml"
    age_key = yaml.safe_load(file.read_text())["recipients"][0]["age"]
    use_sftp(workspace, [{"name": "a", "age": age_key},
                         {"name": "b", "openpgp": "b.asc", "fingerprint": "76AF833A0057B510FD013C50C8814DF768E363A2"}])
    # Refused when the contract is loaded (model check) or, at the latest, when the package is built.
    try:
        run = pipeline(workspace, source)
    except ConfigError as exc:
        assert "mix age/ssh keys with OpenPGP" in str(exc)
        return
    with pytest.raises(ConfigError, match=r"mix(es)? age/ssh"):
        run.run_all()
    blocked = [d for a, d in records(run.delivery_id) if a == "blocked"]
    assert blocked[-1]["stage"] in ("authorise", "package")
    assert list(inbound.iterdir()) == []
