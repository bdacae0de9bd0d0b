"""Column treatments and sampling as written in a contract (the masking engine applies them)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from contract_extracts.contracts.base import ENTITY, Strict

Canonicaliser = Literal["nino", "text", "integer"]


class Pseudonymise(Strict):
    treatment: Literal["pseudonymise"]
    entity: str = Field(pattern=ENTITY, description="namespace: equal entity names join within a contract")
    canonicalise: Canonicaliser = "text"


class Generalise(Strict):
    treatment: Literal["generalise"]
    to: Literal["year"]


class Keep(Strict):
    treatment: Literal["keep"]


Treatment = Annotated[Pseudonymise | Generalise | Keep, Field(discriminator="treatment")]
TREATMENT_NAMES = ("pseudonymise", "generalise", "keep")


class Sample(Strict):
    fraction: float | None = Field(default=None, gt=0, le=1)
    max_records: int | None = Field(default=None, gt=0)
