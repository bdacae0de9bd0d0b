"""Keyed by default: the ledger key from the environment, a 0600 file or the default file, never the repo;
without one the ledger does not open unless unkeyed is chosen explicitly."""

from __future__ import annotations

from pathlib import Path

import pytest

from audit.opening import ensure_ledger_key, load_ledger_key, new_ledger_key_file, open_ledger
from core.errors import KeyMaterialError, LedgerError
from core.settings import load_settings

HEX = "11" * 32


def env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"CONTRACT_EXTRACTS_HOME": str(tmp_path), **extra}


def test_no_key_is_refused_unless_unkeyed_is_chosen(tmp_path: Path) -> None:
    with pytest.raises(KeyMaterialError, match="keyed by default") as info:
        load_ledger_key(env=env(tmp_path))
    assert f"contract-extracts audit new-key {tmp_path / 'keys' / 'ledger.key'}" in str(info.value)
    assert "CONTRACT_EXTRACTS_INSECURE_UNKEYED_LEDGER=1" in str(info.value)
    assert load_ledger_key(env=env(tmp_path, CONTRACT_EXTRACTS_INSECURE_UNKEYED_LEDGER="1")) is None
    assert load_settings(env(tmp_path)).ledger_key_file is None


def test_default_key_file_is_found_and_made_once(tmp_path: Path) -> None:
    settings = load_settings(env(tmp_path))
    made = ensure_ledger_key(settings, env=env(tmp_path))
    assert made == tmp_path / "keys" / "ledger.key" and made.stat().st_mode & 0o777 == 0o600
    assert ensure_ledger_key(settings, env=env(tmp_path)) is None, "never a second key"
    key = load_ledger_key(env=env(tmp_path))
    assert key == bytes.fromhex(made.read_text().strip())
    # A key file exists: the unkeyed flag does not turn keyed mode off.
    assert load_ledger_key(env=env(tmp_path, CONTRACT_EXTRACTS_INSECURE_UNKEYED_LEDGER="1")) == key
    # A configured key wins, and no default file is made beside it.
    other = tmp_path / "elsewhere"
    assert ensure_ledger_key(load_settings(env(other, CONTRACT_EXTRACTS_LEDGER_KEY=HEX)),
                             env=env(other, CONTRACT_EXTRACTS_LEDGER_KEY=HEX)) is None
    assert not (other / "keys").exists()


def test_key_from_environment_and_from_file(tmp_path: Path) -> None:
    assert load_ledger_key(env=env(tmp_path, CONTRACT_EXTRACTS_LEDGER_KEY=HEX)) == bytes.fromhex(HEX)
    path = tmp_path / "ledger.key"
    new_ledger_key_file(path)
    assert path.stat().st_mode & 0o777 == 0o600
    e = env(tmp_path, CONTRACT_EXTRACTS_LEDGER_KEY_FILE=str(path))
    assert load_settings(e).ledger_key_file == path
    key = load_ledger_key(env=e)
    assert key == bytes.fromhex(path.read_text().strip()) and len(key) == 32
    with pytest.raises(KeyMaterialError, match="already exists"):
        new_ledger_key_file(path)


@pytest.mark.parametrize(("content", "mode", "fragment"), [
    (HEX, 0o644, "chmod 600"),
    ("not-hex", 0o600, "malformed"),
    ("ab" * 16, 0o600, "malformed"),
])
def test_bad_key_files_are_refused_without_echo(tmp_path: Path, content: str, mode: int, fragment: str) -> None:
    path = tmp_path / "ledger.key"
    path.write_text(content)
    path.chmod(mode)
    with pytest.raises(KeyMaterialError, match=fragment) as info:
        load_ledger_key(env=env(tmp_path, CONTRACT_EXTRACTS_LEDGER_KEY_FILE=str(path)))
    assert content not in str(info.value)


def test_open_ledger_is_keyed_when_configured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTRACT_EXTRACTS_HOME", str(tmp_path))
    monkeypatch.delenv("CONTRACT_EXTRACTS_LEDGER_URL", raising=False)
    monkeypatch.delenv("CONTRACT_EXTRACTS_LEDGER_KEY_FILE", raising=False)
    monkeypatch.setenv("CONTRACT_EXTRACTS_LEDGER_KEY", HEX)
    with open_ledger() as ledger:
        assert ledger.keyed
        ledger.append(actor="a", action="b", contract=None, delivery=None, details={})
    monkeypatch.delenv("CONTRACT_EXTRACTS_LEDGER_KEY")
    with pytest.raises(KeyMaterialError, match="no ledger key"):
        open_ledger()
    monkeypatch.setenv("CONTRACT_EXTRACTS_INSECURE_UNKEYED_LEDGER", "1")
    with open_ledger() as ledger:  # a process without the key: verify fails, appends are refused
        assert not ledger.keyed
        assert ledger.verify().first_broken_seq == 1
        with pytest.raises(LedgerError, match="refusing to append"):
            ledger.append(actor="a", action="b", contract=None, delivery=None, details={})
