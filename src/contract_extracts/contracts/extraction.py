"""How a dataset is read from its source, beyond the allow-list: partitioning, incremental windows.

Declared here so contracts can already name them; a run refuses options the pipeline cannot honour.
"""

from __future__ import annotations

from pydantic import Field

from contract_extracts.contracts.base import COLUMN, Strict


class Partition(Strict):
    """Split a large table into ranges of ``column`` read by parallel tasks."""

    column: str = Field(pattern=COLUMN)
    parts: int = Field(default=4, ge=1, le=256)


class Incremental(Strict):
    """Deliver only rows whose ``column`` (updated_at or an increasing id) moved past the last delivery."""

    column: str = Field(pattern=COLUMN)
