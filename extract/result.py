"""What the extract stage hands on: the staged (masked) datasets, the sample drawn, the windows read.

Value-free: names, types, treatments, counts and window marks (key values or timestamps), never a
data value. ``to_dict`` gives the JSON object of the staging file ``extract.json`` (without the
pipeline's hand-off format tag, ``pipeline.handoffs``); its ``sample`` and ``windows`` also go into
the manifest's ``extract`` section and the ``extract_done`` ledger record.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from extract.incremental import Window


@dataclass(frozen=True)
class StagedColumn:
    """One delivered column: its Arrow type (as text) and what masking did to it."""

    name: str
    type: str
    treatment: str  # the contract's treatment name (keep, pseudonymise, generalise, …)
    pseudonym: bool
    source_not_null: bool  # every delivered value is non-null (the source column is NOT NULL, kept so)
    description: str  # the treatment in plain words, for the codebook

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "treatment": self.treatment, "pseudonym": self.pseudonym,
                "source_not_null": self.source_not_null, "description": self.description}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StagedColumn:
        return cls(name=str(data["name"]), type=str(data["type"]), treatment=str(data["treatment"]),
                   pseudonym=bool(data["pseudonym"]), source_not_null=bool(data["source_not_null"]),
                   description=str(data["description"]))


@dataclass(frozen=True)
class StagedDataset:
    """One staged dataset file (``file`` is relative to the staging folder: ``data/<name>.parquet``)."""

    name: str
    file: str
    rows: int
    columns: tuple[StagedColumn, ...]

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "file": self.file, "rows": self.rows,
                "columns": [c.to_dict() for c in self.columns]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StagedDataset:
        return cls(name=str(data["name"]), file=str(data["file"]), rows=int(data["rows"]),
                   columns=tuple(StagedColumn.from_dict(c) for c in data["columns"]))


@dataclass(frozen=True)
class SampledDataset:
    """Rows of one dataset matching the contract's filters (``population_rows``) and of the sample (``rows``)."""

    name: str
    population_rows: int | None
    rows: int

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "population_rows": self.population_rows, "rows": self.rows}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SampledDataset:
        population = data["population_rows"]
        return cls(name=str(data["name"]), population_rows=None if population is None else int(population),
                   rows=int(data["rows"]))


@dataclass(frozen=True)
class SampleSummary:
    """The keyed sample the extract drew: sizes in distinct entities (for grossing), rows per dataset.

    Public figures only; the rank limit that applies the draw again stays in the partition plan.
    """

    entity: str
    fraction_requested: float | None
    max_records: int | None
    population: int
    sample_size: int
    fraction_delivered: float | None
    datasets: tuple[SampledDataset, ...]

    def population_rows(self, dataset: str) -> int | None:
        return next((d.population_rows for d in self.datasets if d.name == dataset), None)

    def to_dict(self) -> dict[str, Any]:
        return {"entity": self.entity, "fraction_requested": self.fraction_requested,
                "max_records": self.max_records, "population": self.population, "sample_size": self.sample_size,
                "fraction_delivered": self.fraction_delivered, "datasets": [d.to_dict() for d in self.datasets]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SampleSummary:
        return cls(entity=str(data["entity"]), fraction_requested=data["fraction_requested"],
                   max_records=data["max_records"], population=int(data["population"]),
                   sample_size=int(data["sample_size"]), fraction_delivered=data["fraction_delivered"],
                   datasets=tuple(SampledDataset.from_dict(d) for d in data["datasets"]))


@dataclass(frozen=True)
class ExtractResult:
    """Everything the later stages need from the extract (``extract.json``)."""

    key_id: str  # the master key the pseudonyms were made with (an id, never the key)
    datasets: tuple[StagedDataset, ...]
    sample: SampleSummary | None = None
    windows: tuple[Window, ...] | None = None  # None: the contract is not incremental

    @property
    def incremental(self) -> bool:
        """Whether this delivery carries only changed rows (a full refresh of an incremental contract does not)."""
        return bool(self.windows) and not all(w.full for w in self.windows or ())

    def dataset(self, name: str) -> StagedDataset | None:
        return next((d for d in self.datasets if d.name == name), None)

    def windows_list(self) -> list[dict[str, Any]] | None:
        """The windows as stored (marks as tagged strings), or None."""
        return None if self.windows is None else [w.to_dict() for w in self.windows]

    def to_dict(self) -> dict[str, Any]:
        return {"key_id": self.key_id, "datasets": [d.to_dict() for d in self.datasets],
                "sample": None if self.sample is None else self.sample.to_dict(), "windows": self.windows_list()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExtractResult:
        sample, windows = data["sample"], data["windows"]
        return cls(key_id=str(data["key_id"]), datasets=tuple(StagedDataset.from_dict(d) for d in data["datasets"]),
                   sample=None if sample is None else SampleSummary.from_dict(sample),
                   windows=None if windows is None else tuple(Window.from_dict(w) for w in windows))
