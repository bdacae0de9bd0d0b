"""Recipients and the delivery transport as written in a contract."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from contract_extracts.contracts.base import SLUG, Strict


class Recipient(Strict):
    name: str = Field(pattern=SLUG)
    age: str = Field(description="age X25519 public key, age1…")

    @field_validator("age")
    @classmethod
    def _age_key(cls, value: str) -> str:
        import pyrage

        try:
            pyrage.x25519.Recipient.from_str(value)
        except Exception:
            raise ValueError("not a valid age X25519 public key (expected 'age1…', 62 characters)") from None
        return value

    @property
    def public_key(self) -> str:
        return self.age


class Delivery(Strict):
    transport: Literal["local"] = "local"
    path: str | None = Field(default=None, description="folder under the drop root; default: contractor slug")
