"""`contract-extracts keys …` (cli/keys.py): files 0600, only public parts and key ids printed."""

from __future__ import annotations

import argparse
import os
import stat
from pathlib import Path

import pytest

from cli import keys as keys_cli
from cli import main


def test_rotation_workflow_prints_ids_only(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = tmp_path / "master-2026.key", tmp_path / "master-2027.key"
    assert main(["keys", "new-master", str(old)]) == 0
    assert main(["keys", "new-master", str(new)]) == 0
    secrets = [old.read_text().strip(), new.read_text().strip()]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in (old, new))
    printed = capsys.readouterr().out
    ids = [line.rsplit("key id ", 1)[1] for line in printed.splitlines()]
    assert len(ids) == 2 and all(len(i) == 16 for i in ids)

    monkeypatch.delenv("CONTRACT_EXTRACTS_MASTER_KEY", raising=False)
    monkeypatch.setenv("CONTRACT_EXTRACTS_MASTER_KEY_FILE", f"{old}{os.pathsep}{new}")
    monkeypatch.setenv("CONTRACT_EXTRACTS_MASTER_KEY_ID", ids[1])
    assert main(["keys", "id"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(ids[0]) and "current" not in out[0]
    assert out[1].startswith(f"{ids[1]}  current")
    assert main(["keys", "id", "--file", str(old)]) == 0
    assert capsys.readouterr().out.startswith(ids[0])
    assert not any(s in printed or s in "\n".join(out) for s in secrets)


def test_key_id_of_a_badly_protected_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "m.key"
    assert main(["keys", "new-master", str(path)]) == 0
    os.chmod(path, 0o644)
    secret = path.read_text().strip()
    with pytest.raises(Exception) as info:
        keys_cli._ids(argparse.Namespace(file=[str(path)]))
    assert "chmod 600" in str(info.value) and secret not in str(info.value)
