"""Environment settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import ConfigError
from core.settings import load_settings


def test_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = load_settings({})
    assert s.home == tmp_path / ".state"
    assert s.config_dir == tmp_path / "configs"
    assert s.contracts_dir == tmp_path / "configs" / "contracts"
    assert s.staging_dir == tmp_path / ".state" / "staging"
    assert s.drop_dir == tmp_path / ".state" / "drop"
    assert s.ledger_url == f"sqlite:///{tmp_path / '.state' / 'ledger.sqlite'}"
    assert s.batch_rows == 65536


def test_overrides(tmp_path: Path) -> None:
    s = load_settings({"CONTRACT_EXTRACTS_HOME": str(tmp_path / "h"),
                       "CONTRACT_EXTRACTS_STAGING_DIR": str(tmp_path / "st"),
                       "CONTRACT_EXTRACTS_LEDGER_URL": "postgresql+psycopg://u@h/ledger",
                       "CONTRACT_EXTRACTS_BATCH_ROWS": "1000"})
    assert s.home == tmp_path / "h"
    assert s.staging_dir == tmp_path / "st"
    assert s.drop_dir == tmp_path / "h" / "drop"
    assert s.ledger_url == "postgresql+psycopg://u@h/ledger"
    assert s.batch_rows == 1000


@pytest.mark.parametrize("value", ["abc", "0", "-5", "1.5", "1e3", "10 000"],
                         ids=["word", "zero", "negative", "fraction", "exponent", "spaced"])
def test_bad_batch_rows_is_refused(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"CONTRACT_EXTRACTS_BATCH_ROWS": value})
    assert "CONTRACT_EXTRACTS_BATCH_ROWS" in str(info.value)
    assert "Fix:" in str(info.value)
