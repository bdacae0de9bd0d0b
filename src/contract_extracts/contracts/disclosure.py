"""Disclosure control and unmasked columns as written in a contract."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from contract_extracts.contracts.base import COLUMN, NAME, Strict


class Disclosure(Strict):
    quasi_identifiers: list[Annotated[str, Field(pattern=COLUMN)]] = Field(default_factory=list)
    k: int = Field(default=10, ge=2)
    contractor_holds: list[Annotated[str, Field(pattern=COLUMN)]] = Field(default_factory=list)


class Unmasked(Strict):
    dataset: str = Field(pattern=NAME)
    column: str = Field(pattern=COLUMN)
    business_requirement: str = Field(min_length=10)
