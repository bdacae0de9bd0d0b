"""The nightly ledger checkpoint written to an SFTP second store (a real sshd, pinned host key, atomic upload)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from airflow_glue.audit import write_nightly_checkpoint
from audit.checkpoint import CHECKPOINT_ACTION, CHECKPOINT_FAILED_ACTION, read_checkpoint
from audit.opening import ensure_ledger_key, open_ledger
from core.settings import load_settings
from delivery.sftp import RemotePathError
from delivery.signing import load_public_key, new_signing_key
from tests.audit.test_ledger import fill

from .conftest import SSHServer


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in list(os.environ):
        if name.startswith(("CONTRACT_EXTRACTS", "AIRFLOW_CONN", "AIRFLOW_VAR")):
            monkeypatch.delenv(name)
    home = tmp_path / "state"
    monkeypatch.setenv("CONTRACT_EXTRACTS_HOME", str(home))
    (home / "keys").mkdir(parents=True)
    new_signing_key(home / "keys" / "sender.key", home / "keys" / "sender.pub")
    monkeypatch.setenv("CONTRACT_EXTRACTS_SIGNING_KEY_FILE", str(home / "keys" / "sender.key"))
    ensure_ledger_key(load_settings())
    with open_ledger() as ledger:
        fill(ledger)
    return home


def test_checkpoint_uploaded_to_sftp(state: Path, sshd: SSHServer, monkeypatch: pytest.MonkeyPatch) -> None:
    (sshd.root / "checkpoints").mkdir()
    monkeypatch.setenv("AIRFLOW_CONN_AUDIT_ARCHIVE", sshd.connection_json())
    monkeypatch.setenv("CONTRACT_EXTRACTS_CHECKPOINT_STORE", "sftp://audit_archive/checkpoints")
    result = write_nightly_checkpoint()
    [uploaded] = list((sshd.root / "checkpoints").iterdir())
    assert result["destination"] == f"sftp://audit_archive/checkpoints/{uploaded.name}"
    cp = read_checkpoint(uploaded, load_public_key(state / "keys" / "sender.pub"))
    with open_ledger() as ledger:
        head = ledger.head()
        assert head.action == CHECKPOINT_ACTION and (cp.seq, cp.hash) == (head.seq, head.hash)
        assert ledger.verify(anchors=[cp.anchor()]).ok
    assert not [p for p in (sshd.root / "checkpoints").iterdir() if ".partial-" in p.name]


def test_missing_remote_folder_is_recorded_as_failed(state: Path, sshd: SSHServer,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_AUDIT_ARCHIVE", sshd.connection_json())
    monkeypatch.setenv("CONTRACT_EXTRACTS_CHECKPOINT_STORE", "sftp://audit_archive/missing")
    with pytest.raises(RemotePathError, match="does not exist"):
        write_nightly_checkpoint()
    with open_ledger() as ledger:
        written, failed = ledger.records()[-2:]
        assert (written.action, failed.action) == (CHECKPOINT_ACTION, CHECKPOINT_FAILED_ACTION)
        assert "does not exist" in failed.details_obj()["reason"]
