"""Crash recovery over a real SFTP server: a killed upload, a kill after the remote rename, and a run whose
transport gave up all leave the server with exactly one package per delivery id, named in the ledger, and no
``.partial`` upload after the next run."""

from __future__ import annotations

import signal
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from audit.ledger import Ledger
from core.settings import load_settings
from delivery.package import sha256_file
from demo.synthetic import write_demo_source
from tests.authorisation.helpers import approve_for_tests
from tests.conftest import Workspace
from tests.pipeline.test_recovery import run

from .conftest import SSHServer

CONTRACT = "C-DEMO-002"
CONN = "acme_sftp"

PRELUDE = r"""
import os, signal, sys
import paramiko
import delivery.sftp as sftp

_point = os.environ.get("KILL_AT", "")
def _die(where):
    sys.stdout.write(f"killed at {where}\n")
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)

_upload = sftp._upload
def _interposed_upload(session, package, tmp, progress):
    _upload(session, package, tmp, progress)  # the whole package is in .<name>.partial-<random> on the server
    if _point == "during:upload":
        _die(_point)
sftp._upload = _interposed_upload

_rename = paramiko.SFTPClient.rename
def _interposed_rename(self, old, new):
    _rename(self, old, new)
    if _point == "after:remote-rename":
        _die(_point)
paramiko.SFTPClient.rename = _interposed_rename

_verify = sftp._verify_remote
def _interposed_verify(session, tmp, expected, size):
    if _point == "transport-gives-up":  # the connection drops after each upload: retried, then given up
        session.client.get_transport().close()
        raise sftp._Transient("connection lost (test)")
    return _verify(session, tmp, expected, size)
sftp._verify_remote = _interposed_verify
"""


@pytest.fixture
def sftp_workspace(workspace: Workspace, sshd: SSHServer, tmp_path: Path,
                   monkeypatch: pytest.MonkeyPatch) -> tuple[Workspace, str, Path]:
    (sshd.root / "inbound").mkdir()
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN.upper()}", sshd.connection_json())
    file = workspace.contracts_dir / f"{CONTRACT}.yaml"
    data = yaml.safe_load(file.read_text())
    data["delivery"] = {"transport": "sftp", "connection": CONN, "path": "/inbound"}
    file.write_text(yaml.safe_dump(data, sort_keys=False))
    approve_for_tests(workspace.config_dir, workspace.home, [file])
    source = f"sqlite:///{tmp_path / 'claims.sqlite'}"
    write_demo_source(source, n_people=200)
    return workspace, source, sshd.root / "inbound"


def test_sftp_kills_and_give_ups_are_reconciled(sftp_workspace: tuple[Workspace, str, Path]) -> None:
    workspace, source, inbound = sftp_workspace
    outcomes: dict[str, str] = {}
    for point in ("during:upload", "after:remote-rename"):
        code, delivery, output = run(workspace, source, point, contract=CONTRACT, prelude=PRELUDE)
        assert code == -signal.SIGKILL and f"killed at {point}" in output, output
        outcomes[point] = delivery
        if point == "during:upload":
            assert [p for p in inbound.iterdir() if ".partial-" in p.name], "the killed upload left a partial file"
    code, delivery, output = run(workspace, source, "transport-gives-up", contract=CONTRACT, prelude=PRELUDE)
    assert code != 0 and "failed 2 times" in output, output
    outcomes["transport-gives-up"] = delivery
    assert [p for p in inbound.iterdir() if ".partial-" in p.name], "a given-up upload left a partial file"
    code, final, output = run(workspace, source, None, contract=CONTRACT, prelude=PRELUDE)
    assert code == 0, output

    assert not [p for p in inbound.iterdir() if ".partial-" in p.name], sorted(inbound.iterdir())
    with Ledger(load_settings().ledger_url) as ledger:
        assert ledger.verify().ok
        by = defaultdict(list)
        for r in ledger.records(contract=CONTRACT):
            by[r.delivery].append(r)
    files = {p.name.removeprefix(f"{CONTRACT}_").removesuffix(".tar.age"): p for p in inbound.iterdir()}
    assert set(files) == {outcomes["after:remote-rename"], final}, "one package per delivery that published"
    for delivery, package in files.items():
        delivered = [r.details_obj() for r in by[delivery] if r.action == "delivered"]
        assert len(delivered) == 1 and delivered[0]["sha256"] == sha256_file(package)[0]
    renamed = [r.details_obj() for r in by[outcomes["after:remote-rename"]] if r.action == "delivered"]
    assert renamed[0]["reconciled"] is True and renamed[0]["transport"] == "sftp"
    upload = [r.action for r in by[outcomes["during:upload"]]]
    assert "abandoned" in upload and "intent_settled" in upload and "delivered" not in upload
    gave_up = by[outcomes["transport-gives-up"]]
    assert "blocked" in [r.action for r in gave_up]
    settled = [r.details_obj() for r in gave_up if r.action == "intent_settled"]
    assert len(settled) == 1 and settled[0]["partials_removed"] == 1
    assert settled[0]["outcome"].startswith("not published")
