"""Environment settings. Paths and URLs only: keys are read by ``masking.keys`` / ``delivery.signing``.

Every setting is an environment variable so Airflow workers, the CLI and tests agree:

CONTRACT_EXTRACTS_HOME         state folder (default ./.state): staging, drop, ledger, demo files
CONTRACT_EXTRACTS_CONFIG_DIR   folder holding contracts/ (default ./configs)
CONTRACT_EXTRACTS_STAGING_DIR  private plaintext staging root (default $HOME/staging)
CONTRACT_EXTRACTS_DROP_DIR     local drop folder root (default $HOME/drop)
CONTRACT_EXTRACTS_LEDGER_URL   SQLAlchemy URL of the audit ledger (default sqlite:///$HOME/ledger.sqlite)
CONTRACT_EXTRACTS_BATCH_ROWS   rows per Arrow record batch (default 65536)
CONTRACT_EXTRACTS_LEDGER_KEY_FILE  0600 file with the ledger's HMAC key (keyed mode; see audit.opening)
CONTRACT_EXTRACTS_PSQL         psql client for the fast PostgreSQL route, or "off" (read by extract.postgres)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from core.errors import ConfigError


@dataclass(frozen=True)
class Settings:
    home: Path
    config_dir: Path
    staging_dir: Path
    drop_dir: Path
    ledger_url: str
    batch_rows: int
    ledger_key_file: Path | None = None

    @property
    def contracts_dir(self) -> Path:
        return self.config_dir / "contracts"


def load_settings(env: dict[str, str] | None = None) -> Settings:
    env = dict(os.environ if env is None else env)
    home = Path(env.get("CONTRACT_EXTRACTS_HOME") or Path.cwd() / ".state").absolute()
    config_dir = Path(env.get("CONTRACT_EXTRACTS_CONFIG_DIR") or Path.cwd() / "configs").absolute()
    staging = Path(env.get("CONTRACT_EXTRACTS_STAGING_DIR") or home / "staging").absolute()
    drop = Path(env.get("CONTRACT_EXTRACTS_DROP_DIR") or home / "drop").absolute()
    ledger_url = env.get("CONTRACT_EXTRACTS_LEDGER_URL") or f"sqlite:///{home / 'ledger.sqlite'}"
    raw_batch = env.get("CONTRACT_EXTRACTS_BATCH_ROWS", "65536")
    try:
        batch_rows = int(raw_batch)
        if batch_rows < 1:
            raise ValueError
    except ValueError:
        raise ConfigError("must be a positive whole number", key="CONTRACT_EXTRACTS_BATCH_ROWS",
                          fix="set it to e.g. 65536 or unset it") from None
    ledger_key_file = env.get("CONTRACT_EXTRACTS_LEDGER_KEY_FILE")
    return Settings(home=home, config_dir=config_dir, staging_dir=staging, drop_dir=drop,
                    ledger_url=ledger_url, batch_rows=batch_rows,
                    ledger_key_file=Path(ledger_key_file).absolute() if ledger_key_file else None)
