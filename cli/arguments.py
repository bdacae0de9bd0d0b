"""What several subcommands read from their arguments and the session: the contract file, the acting user."""

from __future__ import annotations

import getpass
from pathlib import Path

from core.settings import load_settings


def actor() -> str:
    """Who the ledger records as acting: the local user, marked as coming through the CLI."""
    return f"cli:{getpass.getuser()}"


def contract_path(value: str) -> Path:
    """A contract given as a path to its YAML file, or as its id (a file in the configured contracts folder)."""
    path = Path(value)
    if path.suffix in (".yaml", ".yml"):
        return path
    return load_settings().contracts_dir / f"{value}.yaml"
