"""Shared pieces of the contract model: the strict base class and the identifier patterns."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

CONTRACT_ID = r"^[A-Z][A-Z0-9]*(-[A-Z0-9]+)*$"
NAME = r"^[a-z][a-z0-9_]{0,62}$"
COLUMN = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"
TABLE = r"^([A-Za-z_][A-Za-z0-9_]{0,62}\.)?[A-Za-z_][A-Za-z0-9_]{0,62}$"
CONN_ID = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,249}$"
SLUG = r"^[a-z0-9][a-z0-9._-]{0,62}$"
ENTITY = r"^[a-z][a-z0-9_]{0,62}$"


class Strict(BaseModel):
    """Unknown keys are errors; models are immutable once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
