"""What one stage hands the next, and the one place it is written to and read from staging files and XCom.

Stages run as separate processes (Airflow tasks, possibly on other hosts, possibly after an upgrade)
and hand over through small value-free JSON files in the delivery's private staging folder; XCom
carries only what a task shows or passes on: names, counts, paths and hashes, never a data value.

The values are typed and frozen; each knows its JSON object (``to_dict``/``from_dict``, next to the
type: ``extract.result.ExtractResult``, ``disclosure.result.DisclosureResult`` and the pipeline's own
below). This module decides everything about carrying them: the file each one lives in, the hand-off
format it is stamped with (``HANDOFF_KEY``), and what each stage returns as its XCom value. A file or
XCom value stamped with another format (or none) is refused with a clear error instead of misread: a
delivery started by another version of the code is run again from the start.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from core.errors import ContractExtractsError
from disclosure.result import DisclosureResult
from extract.incremental import Window
from extract.partitioning import PartitionRange
from extract.result import ExtractResult
from masking.sampling import SampleResult

HANDOFF_KEY = "handoff"
_FORMAT = "contract-extracts/handoff/{name}/v1"

T = TypeVar("T")


class HandoffFormatError(ContractExtractsError):
    """A staging file or XCom value was written in a hand-off format this version does not read."""


# ---- the pipeline's own hand-offs -------------------------------------------------------------------


@dataclass(frozen=True)
class ValidationOutcome:
    """The release gate's ``validation.json`` (value-free), as the package stage receives it."""

    document: Mapping[str, Any]  # goes into the manifest unchanged

    @property
    def success(self) -> bool:
        return bool(self.document.get("success"))

    def to_dict(self) -> dict[str, Any]:
        return dict(self.document)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ValidationOutcome:
        return cls(document=dict(data))


@dataclass(frozen=True)
class PackageInfo:
    """The package built for a delivery (or, on a re-run, the one already delivered)."""

    package: str  # file name in the staging folder
    sha256: str
    bytes: int | None
    manifest_sha256: str | None
    format: str  # age or openpgp
    recipients: tuple[Mapping[str, str], ...] | None
    already_delivered: bool = False

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "package": self.package, "sha256": self.sha256, "bytes": self.bytes,
            "manifest_sha256": self.manifest_sha256, "format": self.format,
            "recipients": None if self.recipients is None else [dict(r) for r in self.recipients]}
        if self.already_delivered:
            out["already_delivered"] = True
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PackageInfo:
        recipients = data.get("recipients")
        return cls(package=data["package"], sha256=data["sha256"], bytes=data.get("bytes"),
                   manifest_sha256=data.get("manifest_sha256"), format=data.get("format") or "age",
                   recipients=None if recipients is None else tuple(dict(r) for r in recipients),
                   already_delivered=bool(data.get("already_delivered")))


@dataclass(frozen=True)
class PartitionPlan:
    """One snapshot, one sample draw and one set of windows for every partition of a delivery."""

    snapshot: str | None  # the exported snapshot partitions import (PostgreSQL), else None
    sample: SampleResult | None  # with the rank limit: private to staging, never in XCom
    parts: tuple[PartitionRange, ...]
    windows: tuple[Window, ...] | None
    population_rows: Mapping[str, int | None]  # per dataset, rows matching the filters (sampled contracts)

    def dataset_parts(self, dataset: str) -> list[PartitionRange]:
        return sorted((p for p in self.parts if p.dataset == dataset), key=lambda p: p.index)

    def part(self, task: PartitionTask) -> PartitionRange | None:
        return next((p for p in self.parts if p.dataset == task.dataset and p.index == task.index), None)

    def to_dict(self) -> dict[str, Any]:
        return {"snapshot": self.snapshot, "sample": None if self.sample is None else self.sample.to_state(),
                "parts": [p.to_dict() for p in self.parts],
                "windows": None if self.windows is None else [w.to_dict() for w in self.windows],
                "population_rows": dict(self.population_rows)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PartitionPlan:
        sample, windows = data["sample"], data["windows"]
        return cls(snapshot=data["snapshot"], sample=None if sample is None else SampleResult.from_state(sample),
                   parts=tuple(PartitionRange.from_dict(p) for p in data["parts"]),
                   windows=None if windows is None else tuple(Window.from_dict(w) for w in windows),
                   population_rows=dict(data["population_rows"]))


@dataclass(frozen=True)
class PartitionTask:
    """One key range to extract (an Airflow mapped task's argument): which dataset, which range."""

    dataset: str
    index: int


# ---- staging files ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StateFile(Generic[T]):
    """Where a hand-off lives in the staging folder, its format, and how it maps to JSON."""

    name: str
    format: str
    encode: Callable[[T], dict[str, Any]]
    decode: Callable[[Mapping[str, Any]], T]


EXTRACT = StateFile[ExtractResult]("extract.json", _FORMAT.format(name="extract"),
                                   ExtractResult.to_dict, ExtractResult.from_dict)
PARTITIONS = StateFile[PartitionPlan]("partitions.json", _FORMAT.format(name="partitions"),
                                      PartitionPlan.to_dict, PartitionPlan.from_dict)
DISCLOSURE = StateFile[DisclosureResult]("disclosure.json", _FORMAT.format(name="disclosure"),
                                         DisclosureResult.to_dict, DisclosureResult.from_dict)
VALIDATION = StateFile[ValidationOutcome]("validation.json", _FORMAT.format(name="validation"),
                                          ValidationOutcome.to_dict, ValidationOutcome.from_dict)
PACKAGE = StateFile[PackageInfo]("package.json", _FORMAT.format(name="package"),
                                 PackageInfo.to_dict, PackageInfo.from_dict)


class StagingState:
    """The hand-off files of one delivery's staging folder."""

    def __init__(self, staging: Path, delivery_id: str) -> None:
        self.staging = staging
        self.delivery_id = delivery_id

    def exists(self, kind: StateFile[Any]) -> bool:
        return (self.staging / kind.name).exists()

    def write(self, kind: StateFile[T], value: T) -> None:
        data = {**kind.encode(value), HANDOFF_KEY: kind.format}
        (self.staging / kind.name).write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")

    def read(self, kind: StateFile[T]) -> T:
        path = self.staging / kind.name
        if not path.exists():
            raise ContractExtractsError(f"staging file {kind.name} is missing for delivery {self.delivery_id}; "
                                        "an earlier stage did not finish")
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise HandoffFormatError(f"staging file {kind.name} of delivery {self.delivery_id} is not a JSON "
                                     "object; nothing further runs. Fix: run the delivery again from the start")
        check_format(data, kind.format, f"staging file {kind.name} of delivery {self.delivery_id}")
        return kind.decode({k: v for k, v in data.items() if k != HANDOFF_KEY})

    def read_if_present(self, kind: StateFile[T]) -> T | None:
        return self.read(kind) if self.exists(kind) else None


def check_format(data: Mapping[str, Any], expected: str, what: str) -> None:
    """Refuse ``data`` unless it is stamped with ``expected`` (value-free message: it names formats only)."""
    if data.get(HANDOFF_KEY) != expected:
        raise HandoffFormatError(f"{what} was not written in the hand-off format {expected} this version reads "
                                 "(another version of contract-extracts started the delivery); nothing further "
                                 "runs. Fix: run the delivery again from the start")


# ---- XCom values (what each Airflow task returns: small, value-free) -------------------------------------

PARTITION_TASK = _FORMAT.format(name="partition-task")


def authorised_xcom(contract: str, delivery_id: str, contract_hash: str) -> dict[str, Any]:
    return {"contract": contract, "delivery_id": delivery_id, "contract_hash": contract_hash}


def extract_xcom(result: ExtractResult) -> dict[str, Any]:
    out: dict[str, Any] = {"datasets": [{"name": d.name, "rows": d.rows} for d in result.datasets]}
    if result.sample is not None:
        out["sample"] = {"population": result.sample.population, "sample_size": result.sample.sample_size}
    return out


def partitions_xcom(plan: PartitionPlan) -> dict[str, Any]:
    """``parts``: one value per partition, the argument of one mapped ``extract_partition`` task."""
    return {"parts": [{"dataset": p.dataset, "index": p.index, HANDOFF_KEY: PARTITION_TASK} for p in plan.parts]}


def partition_task(value: Mapping[str, Any]) -> PartitionTask:
    """The partition a mapped task was given (refused unless it came from this version's plan)."""
    check_format(value, PARTITION_TASK, "the partition task's argument")
    return PartitionTask(dataset=str(value["dataset"]), index=int(value["index"]))


def partition_done_xcom(task: PartitionTask, rows: int) -> dict[str, Any]:
    return {"dataset": task.dataset, "index": task.index, "rows": rows}


def disclosure_xcom(result: DisclosureResult) -> dict[str, Any]:
    return {"assessed": result.assessed,
            "datasets": [{"name": d.name, "k_anonymity": d.after.enforced_k_anonymity,
                          "suppressed_records": d.treatment.suppressed_records} for d in result.datasets],
            "aggregates": [{"name": a.name, "cells": a.cells, "published": a.published} for a in result.aggregates]}


def validation_xcom(expectations: int, report: Path | None) -> dict[str, Any]:
    return {"success": True, "expectations": expectations, **({"report": str(report)} if report else {})}


def package_xcom(info: PackageInfo) -> dict[str, Any]:
    return info.to_dict()


def delivered_xcom(path: str, sha256: str, already_delivered: bool) -> dict[str, Any]:
    return {"path": path, "sha256": sha256, "already_delivered": already_delivered}


def completed_summary(result: ExtractResult, info: PackageInfo) -> dict[str, Any]:
    """The ``run_completed`` ledger record of a delivery, also the ``record`` task's XCom value."""
    return {"datasets": [{"name": d.name, "rows": d.rows, "columns": len(d.columns)} for d in result.datasets],
            "package": info.package, "sha256": info.sha256}
