"""How a dataset is read from its source, beyond the allow-list: partitioning, incremental windows.

Declared here so contracts can already name them; a run refuses options the pipeline cannot honour.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_serializer

from contracts.base import COLUMN, Strict

MAX_PARTS = 256


class Partition(Strict):
    """Split a large table into ranges of ``column`` read by parallel tasks.

    ``column`` unset: the table's single-column primary key. ``parts: auto``: one part per
    ``rows_per_part`` rows of the table's size as its statistics give it (read when the run plans).
    """

    column: str | None = Field(default=None, pattern=COLUMN)
    parts: int | Literal["auto"] = Field(default=4)
    rows_per_part: int = Field(default=2_000_000, ge=1)

    @field_validator("parts", mode="before")
    @classmethod
    def _parts_in_range(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("parts must be a whole number or 'auto', not true/false")
        if isinstance(value, int) and not 1 <= value <= MAX_PARTS:
            raise ValueError(f"parts must be a whole number from 1 to {MAX_PARTS}, or 'auto'")
        return value

    @model_serializer(mode="wrap")
    def _serialise(self, handler: Any) -> dict[str, Any]:
        # Options added later stay out of the canonical form while unset, so approvals of contracts
        # written before them still match.
        data: dict[str, Any] = handler(self)
        if "column" not in self.model_fields_set:
            data.pop("column", None)
        if "rows_per_part" not in self.model_fields_set:
            data.pop("rows_per_part", None)
        return data


class Incremental(Strict):
    """Deliver only rows whose ``column`` (updated_at or an increasing id) moved past the last delivery."""

    column: str = Field(pattern=COLUMN)
