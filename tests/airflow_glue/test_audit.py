"""The nightly ``ledger_checkpoint`` DAG: a signed checkpoint of its own record, written to a second store.

One real ``airflow dags test`` run proves the DAG file, the task and the store work together; the function it
calls is tested directly for the refusals. The SFTP store is tested against a real sshd in tests/sftp.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from airflow_glue.audit import STORE_VARIABLE, write_nightly_checkpoint
from audit.checkpoint import CHECKPOINT_ACTION, read_checkpoint
from audit.ledger import Ledger
from audit.opening import ensure_ledger_key, load_ledger_key, open_ledger
from core.errors import ConfigError
from core.settings import load_settings
from delivery.signing import load_public_key, new_signing_key
from demo.runner import migrate_airflow_db
from tests.audit.test_ledger import fill, raw
from tests.conftest import REPO


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in list(os.environ):
        if name.startswith("CONTRACT_EXTRACTS") or name.startswith("AIRFLOW_VAR"):
            monkeypatch.delenv(name)
    home = tmp_path / "state"
    monkeypatch.setenv("CONTRACT_EXTRACTS_HOME", str(home))
    (home / "keys").mkdir(parents=True)
    new_signing_key(home / "keys" / "sender.key", home / "keys" / "sender.pub")
    monkeypatch.setenv("CONTRACT_EXTRACTS_SIGNING_KEY_FILE", str(home / "keys" / "sender.key"))
    ensure_ledger_key(load_settings())  # keyed, as make demo and production are
    with open_ledger() as ledger:
        fill(ledger)
    return home


def test_checkpoint_goes_to_the_folder_store(state: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "second-store"
    store.mkdir()
    monkeypatch.setenv("CONTRACT_EXTRACTS_CHECKPOINT_STORE", str(store))
    result = write_nightly_checkpoint()
    [written] = list(store.iterdir())
    assert written.name.startswith("ledger-checkpoint-") and result["destination"] == str(written)
    cp = read_checkpoint(written, load_public_key(state / "keys" / "sender.pub"))
    with open_ledger() as ledger:
        head = ledger.head()
        assert head.action == CHECKPOINT_ACTION and (cp.seq, cp.hash) == (head.seq, head.hash) == (7, result["hash"])
        assert ledger.verify(anchors=[cp.anchor()]).ok
    with raw(load_settings().ledger_url) as conn:  # the tail including the checkpoint record
        conn.execute(text("DELETE FROM audit_ledger WHERE seq >= 6"))
    with open_ledger() as ledger:
        assert ledger.verify().ok
        assert ledger.verify(anchors=[cp.anchor()]).first_broken_seq == 6


def test_no_store_or_a_bad_store_fails_naming_the_fix(state: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=STORE_VARIABLE):
        write_nightly_checkpoint()
    monkeypatch.setenv("CONTRACT_EXTRACTS_CHECKPOINT_STORE", "relative/folder")
    with pytest.raises(ConfigError, match="absolute folder"):
        write_nightly_checkpoint()
    monkeypatch.setenv("CONTRACT_EXTRACTS_CHECKPOINT_STORE", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="does not exist"):
        write_nightly_checkpoint()
    with open_ledger() as ledger:
        assert ledger.count() == 6, "nothing recorded for a checkpoint that could not be written"


def test_the_dag_runs_in_airflow(state: Path, tmp_path: Path) -> None:
    store = tmp_path / "second-store"
    store.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(AIRFLOW_HOME=str(tmp_path / "airflow"), AIRFLOW__CORE__DAGS_FOLDER=str(REPO / "dags"),
               AIRFLOW__CORE__LOAD_EXAMPLES="False", AIRFLOW__CORE__UNIT_TEST_MODE="False",
               CONTRACT_EXTRACTS_CONFIG_DIR=str(REPO / "configs"),
               AIRFLOW_VAR_CONTRACT_EXTRACTS_CHECKPOINT_STORE=str(store),  # the Airflow Variable, from the env
               PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    migrate_airflow_db(env, tmp_path / "migrate.log")
    proc = subprocess.run(["airflow", "dags", "test", "ledger_checkpoint"], env=env, capture_output=True, text=True,
                          timeout=300, check=False, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [written] = list(store.iterdir())
    cp = read_checkpoint(written, load_public_key(state / "keys" / "sender.pub"))
    with Ledger(load_settings().ledger_url, key=load_ledger_key()) as ledger:
        head = ledger.head()
        assert head.action == CHECKPOINT_ACTION and head.actor == "dag_test"  # who triggered it
        assert head.details_obj()["destination"] == str(written)
        assert (cp.seq, cp.hash) == (head.seq, head.hash)
        assert ledger.verify(anchors=[cp.anchor()]).ok
