"""What the disclosure stage hands on: the value-free ``disclosure.json`` document, as typed values.

``DisclosureResult.to_dict`` gives the document (``FORMAT``, described in ``disclosure.assess``); it
goes unchanged into the staging file, the operator's report and the manifest's ``disclosure``
section, and ``from_dict`` reads it back (refusing any other format). Counts, shares, thresholds and
column names only: never a data value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from core.errors import ContractExtractsError
from disclosure.ptable import PTable
from disclosure.risk import Measures, RiskDriver, TrueKeyMeasures

FORMAT = "contract-extracts/disclosure/v1"


@dataclass(frozen=True)
class SampleFraction:
    """The sample behind the data: sizes as recorded, and the realised fraction used for the estimates."""

    fraction: float | None
    population: float | None
    size: float | None
    used_fraction: float

    def to_dict(self) -> dict[str, Any]:
        return {"fraction": self.fraction, "population": self.population, "size": self.size,
                "used_fraction": self.used_fraction}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SampleFraction:
        return cls(fraction=data["fraction"], population=data["population"], size=data["size"],
                   used_fraction=data["used_fraction"])


@dataclass(frozen=True)
class DisclosureSettings:
    """The contract's disclosure rule as applied."""

    k: int
    l: int | None  # noqa: E741 - the established name (l-diversity)
    max_suppressed: float
    generalise: bool
    quasi_identifiers: tuple[str, ...]
    contractor_holds: tuple[str, ...]
    sensitive: tuple[str, ...]
    key: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"k": self.k, "l": self.l, "max_suppressed": self.max_suppressed, "generalise": self.generalise,
                "quasi_identifiers": list(self.quasi_identifiers), "contractor_holds": list(self.contractor_holds),
                "sensitive": list(self.sensitive), "key": list(self.key)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DisclosureSettings:
        return cls(k=data["k"], l=data["l"], max_suppressed=data["max_suppressed"], generalise=data["generalise"],
                   quasi_identifiers=tuple(data["quasi_identifiers"]),
                   contractor_holds=tuple(data["contractor_holds"]), sensitive=tuple(data["sensitive"]),
                   key=tuple(data["key"]))


@dataclass(frozen=True)
class GeneralisedColumn:
    """A key column coarsened for every record: to ``level`` of a hierarchy ``of`` levels deep."""

    column: str
    level: int
    of: int
    description: str

    def to_dict(self) -> dict[str, Any]:
        return {"column": self.column, "level": self.level, "of": self.of, "description": self.description}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GeneralisedColumn:
        return cls(column=data["column"], level=data["level"], of=data["of"], description=data["description"])


@dataclass(frozen=True)
class TreatmentStep:
    """One generalisation step the planner took, and what it left to suppress."""

    column: str
    level: int
    records_below_k_after: int
    suppression_needed_before: int

    def to_dict(self) -> dict[str, Any]:
        return {"column": self.column, "level": self.level, "records_below_k_after": self.records_below_k_after,
                "suppression_needed_before": self.suppression_needed_before}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TreatmentStep:
        return cls(column=data["column"], level=data["level"], records_below_k_after=data["records_below_k_after"],
                   suppression_needed_before=data["suppression_needed_before"])


@dataclass(frozen=True)
class TreatmentSummary:
    """What treatment did to one dataset: columns coarsened, values suppressed (counts only)."""

    generalised: tuple[GeneralisedColumn, ...]
    steps: tuple[TreatmentStep, ...]
    suppressed_records: int
    suppressed_share: float
    suppressed_values: Mapping[str, int]  # key column → values suppressed in it
    suppression_rounds: int
    ceiling: float
    feasible: bool

    def to_dict(self) -> dict[str, Any]:
        return {"generalised": [g.to_dict() for g in self.generalised], "steps": [s.to_dict() for s in self.steps],
                "suppressed_records": self.suppressed_records, "suppressed_share": self.suppressed_share,
                "suppressed_values": dict(self.suppressed_values), "suppression_rounds": self.suppression_rounds,
                "ceiling": self.ceiling, "feasible": self.feasible}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TreatmentSummary:
        return cls(generalised=tuple(GeneralisedColumn.from_dict(g) for g in data["generalised"]),
                   steps=tuple(TreatmentStep.from_dict(s) for s in data["steps"]),
                   suppressed_records=data["suppressed_records"], suppressed_share=data["suppressed_share"],
                   suppressed_values=dict(data["suppressed_values"]), suppression_rounds=data["suppression_rounds"],
                   ceiling=data["ceiling"], feasible=data["feasible"])


@dataclass(frozen=True)
class AssessedDataset:
    """A microdata dataset assessed (and treated) against the contract's rule."""

    name: str
    file: str
    rows: int
    key: tuple[str, ...]
    sensitive: tuple[str, ...]
    before: Measures
    after: Measures
    treatment: TreatmentSummary
    changed: bool

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "file": self.file, "rows": self.rows, "key": list(self.key),
                "sensitive": list(self.sensitive), "before": self.before.to_dict(), "after": self.after.to_dict(),
                "treatment": self.treatment.to_dict(), "changed": self.changed}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AssessedDataset:
        return cls(name=data["name"], file=data["file"], rows=data["rows"], key=tuple(data["key"]),
                   sensitive=tuple(data["sensitive"]), before=Measures.from_dict(data["before"]),
                   after=Measures.from_dict(data["after"]), treatment=TreatmentSummary.from_dict(data["treatment"]),
                   changed=data["changed"])


@dataclass(frozen=True)
class NotAssessed:
    name: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "reason": self.reason}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NotAssessed:
        return cls(name=data["name"], reason=data["reason"])


@dataclass(frozen=True)
class Grossing:
    """How a table's figures are grossed to the population: by a weight ``column`` or by ``factor``."""

    by: str  # "weight" or "inverse sampling fraction"
    column: str | None = None
    factor: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"by": self.by, **({"column": self.column} if self.column is not None else {}),
                **({"factor": self.factor} if self.factor is not None else {})}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Grossing:
        return cls(by=data["by"], column=data.get("column"), factor=data.get("factor"))


@dataclass(frozen=True)
class TableColumn:
    """A column of an aggregate table, described for the codebook."""

    name: str
    type: str
    description: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "description": self.description}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TableColumn:
        return cls(name=data["name"], type=data["type"], description=data["description"])


@dataclass(frozen=True)
class InformationLoss:
    """How far a table's published counts are from the true (grossed) counts.

    ``expected_*`` follow from the protection's public parameters (rounding base, ptable) and go to the
    recipient; ``realised_*`` are measured on the table's own cells and stay with the operator (with few
    cells they would narrow down the true counts). A withheld cell deviates by its whole true count.
    """

    method: str  # "suppression" or "cell_key"
    cells: int
    withheld: int
    expected_absolute_deviation: float
    max_absolute_deviation: float
    realised_mean_absolute_deviation: float | None = None
    realised_mean_absolute_deviation_published: float | None = None

    def to_dict(self, *, recipient: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method, "cells": self.cells, "withheld": self.withheld,
                               "expected_absolute_deviation": self.expected_absolute_deviation,
                               "max_absolute_deviation": self.max_absolute_deviation}
        if not recipient:
            out["realised_mean_absolute_deviation"] = self.realised_mean_absolute_deviation
            out["realised_mean_absolute_deviation_published"] = self.realised_mean_absolute_deviation_published
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InformationLoss:
        return cls(method=data["method"], cells=data["cells"], withheld=data["withheld"],
                   expected_absolute_deviation=data["expected_absolute_deviation"],
                   max_absolute_deviation=data["max_absolute_deviation"],
                   realised_mean_absolute_deviation=data.get("realised_mean_absolute_deviation"),
                   realised_mean_absolute_deviation_published=data.get("realised_mean_absolute_deviation_published"))


@dataclass(frozen=True)
class AggregateTable:
    """A safe aggregate table written to ``file`` (``data/<name>.parquet``), with its rule and counts."""

    name: str
    dataset: str
    by: tuple[str, ...]
    unit: str
    measures: tuple[str, ...]
    margins: bool
    threshold: int
    rounding: int
    dominance: float
    grossed: Grossing | None
    cells: int
    published: int
    suppressed_small: int
    suppressed_dominance: int
    suppressed_secondary: int
    rows: int
    file: str
    schema: tuple[TableColumn, ...]
    protection: str = "suppression"  # or "cell_key"
    count_rounding: int | None = None  # the base published counts are multiples of (suppression)
    ptable: PTable | None = None  # the perturbation table (cell_key)
    information_loss: InformationLoss | None = None
    interval_audit: bool = False  # withheld cells were audited against linear-programming bounds

    def to_dict(self, *, recipient: bool = False) -> dict[str, Any]:
        return {"name": self.name, "dataset": self.dataset, "by": list(self.by), "unit": self.unit,
                "measures": list(self.measures), "margins": self.margins, "threshold": self.threshold,
                "rounding": self.rounding, "dominance": self.dominance,
                "grossed": None if self.grossed is None else self.grossed.to_dict(), "cells": self.cells,
                "published": self.published, "suppressed_small": self.suppressed_small,
                "suppressed_dominance": self.suppressed_dominance, "suppressed_secondary": self.suppressed_secondary,
                "rows": self.rows, "file": self.file, "schema": [c.to_dict() for c in self.schema],
                "protection": self.protection, "count_rounding": self.count_rounding,
                "ptable": None if self.ptable is None else self.ptable.to_dict(),
                "information_loss": (None if self.information_loss is None
                                     else self.information_loss.to_dict(recipient=recipient)),
                "interval_audit": self.interval_audit}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AggregateTable:
        grossed = data["grossed"]
        return cls(name=data["name"], dataset=data["dataset"], by=tuple(data["by"]), unit=data["unit"],
                   measures=tuple(data["measures"]), margins=data["margins"], threshold=data["threshold"],
                   rounding=data["rounding"], dominance=data["dominance"],
                   grossed=None if grossed is None else Grossing.from_dict(grossed), cells=data["cells"],
                   published=data["published"], suppressed_small=data["suppressed_small"],
                   suppressed_dominance=data["suppressed_dominance"],
                   suppressed_secondary=data["suppressed_secondary"], rows=data["rows"], file=data["file"],
                   schema=tuple(TableColumn.from_dict(c) for c in data["schema"]),
                   protection=data.get("protection", "suppression"), count_rounding=data.get("count_rounding"),
                   ptable=None if data.get("ptable") is None else PTable.from_dict(data["ptable"]),
                   information_loss=(None if data.get("information_loss") is None
                                     else InformationLoss.from_dict(data["information_loss"])),
                   interval_audit=bool(data.get("interval_audit", False)))


@dataclass(frozen=True)
class BlockedDataset:
    """Why a dataset cannot be made safe within the contract's limits, naming the drivers of the risk."""

    dataset: str
    k: int
    l: int | None  # noqa: E741 - the established name (l-diversity)
    records: int
    ceiling: float
    suppression_needed_records: int
    suppression_needed_share: float
    feasible: bool
    suppression_needed_values: Mapping[str, int]
    generalised: tuple[GeneralisedColumn, ...]
    drivers: tuple[RiskDriver, ...]
    before: Measures

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "k": self.k, "l": self.l, "records": self.records, "ceiling": self.ceiling,
                "suppression_needed_records": self.suppression_needed_records,
                "suppression_needed_share": self.suppression_needed_share, "feasible": self.feasible,
                "suppression_needed_values": dict(self.suppression_needed_values),
                "generalised": [g.to_dict() for g in self.generalised],
                "drivers": [d.to_dict() for d in self.drivers], "before": self.before.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BlockedDataset:
        return cls(dataset=data["dataset"], k=data["k"], l=data["l"], records=data["records"],
                   ceiling=data["ceiling"], suppression_needed_records=data["suppression_needed_records"],
                   suppression_needed_share=data["suppression_needed_share"], feasible=data["feasible"],
                   suppression_needed_values=dict(data["suppression_needed_values"]),
                   generalised=tuple(GeneralisedColumn.from_dict(g) for g in data["generalised"]),
                   drivers=tuple(RiskDriver.from_dict(d) for d in data["drivers"]),
                   before=Measures.from_dict(data["before"]))


@dataclass(frozen=True)
class RiskView:
    """k and l of one dataset as one kind of intruder sees them (``wildcard`` or ``true_key``)."""

    k_anonymity: int | None
    records_below_k: int
    uniques: int
    average_risk: float
    l_diversity: Mapping[str, int | None]
    records_below_l: int | None

    def to_dict(self) -> dict[str, Any]:
        return {"k_anonymity": self.k_anonymity, "records_below_k": self.records_below_k, "uniques": self.uniques,
                "average_risk": round(self.average_risk, 6), "l_diversity": dict(self.l_diversity),
                "records_below_l": self.records_below_l}

    @classmethod
    def wildcard(cls, m: Measures) -> RiskView:
        return cls(k_anonymity=m.k_anonymity, records_below_k=m.records_below_k, uniques=m.sample_uniques,
                   average_risk=m.average_risk, l_diversity=dict(m.l_diversity), records_below_l=m.records_below_l)

    @classmethod
    def true_key(cls, m: TrueKeyMeasures) -> RiskView:
        return cls(k_anonymity=m.k_anonymity, records_below_k=m.records_below_k, uniques=m.uniques,
                   average_risk=m.average_risk, l_diversity=dict(m.l_diversity), records_below_l=m.records_below_l)


@dataclass(frozen=True)
class DatasetRisk:
    """One delivered dataset in the risk report: the key, k and l both ways, uniques and what was suppressed."""

    name: str
    records: int
    key: tuple[str, ...]
    sensitive: tuple[str, ...]
    k: int
    l: int | None  # noqa: E741 - the established name (l-diversity)
    uniques_before: int  # records unique on the key before treatment (true-key view)
    wildcard: RiskView  # after treatment, nulls as wildcards
    true_key: RiskView | None  # after treatment, for an intruder who knows the targets' real key values
    generalised: tuple[str, ...]  # "column: description"
    suppressed_records: int
    suppressed_values: Mapping[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "records": self.records, "key": list(self.key), "sensitive": list(self.sensitive),
                "k": self.k, "l": self.l, "uniques_before": self.uniques_before,
                "wildcard": self.wildcard.to_dict(),
                "true_key": None if self.true_key is None else self.true_key.to_dict(),
                "generalised": list(self.generalised), "suppressed_records": self.suppressed_records,
                "suppressed_values": dict(self.suppressed_values)}


@dataclass(frozen=True)
class TableRisk:
    """One aggregate table in the risk report: how it is protected and what that costs."""

    name: str
    protection: str
    cells: int
    published: int
    suppressed: int
    count_rounding: int | None
    ptable: Mapping[str, Any] | None  # the ptable's parameters (cell_key)
    information_loss: InformationLoss | None

    def to_dict(self, *, recipient: bool = False) -> dict[str, Any]:
        return {"name": self.name, "protection": self.protection, "cells": self.cells, "published": self.published,
                "suppressed": self.suppressed, "count_rounding": self.count_rounding,
                "ptable": None if self.ptable is None else dict(self.ptable),
                "information_loss": (None if self.information_loss is None
                                     else self.information_loss.to_dict(recipient=recipient))}


@dataclass(frozen=True)
class RiskReport:
    """What a researcher and an IAM need to judge the delivery's disclosure risk (counts only, no data values)."""

    datasets: tuple[DatasetRisk, ...]
    tables: tuple[TableRisk, ...]
    not_assessed: tuple[NotAssessed, ...]

    def to_dict(self, *, recipient: bool = False) -> dict[str, Any]:
        return {"datasets": [d.to_dict() for d in self.datasets],
                "tables": [t.to_dict(recipient=recipient) for t in self.tables],
                "not_assessed": [n.to_dict() for n in self.not_assessed]}


def _dataset_risk(d: AssessedDataset, settings: DisclosureSettings | None) -> DatasetRisk:
    before = d.before.true_key.uniques if d.before.true_key else d.before.sample_uniques
    return DatasetRisk(
        name=d.name, records=d.rows, key=d.key, sensitive=d.sensitive,
        k=settings.k if settings else d.after.k, l=d.after.l, uniques_before=before,
        wildcard=RiskView.wildcard(d.after),
        true_key=None if d.after.true_key is None else RiskView.true_key(d.after.true_key),
        generalised=tuple(f"{g.column}: {g.description}" for g in d.treatment.generalised),
        suppressed_records=d.treatment.suppressed_records, suppressed_values=dict(d.treatment.suppressed_values))


def _table_risk(a: AggregateTable) -> TableRisk:
    return TableRisk(name=a.name, protection=a.protection, cells=a.cells, published=a.published,
                     suppressed=a.cells - a.published if a.protection == "suppression" else 0,
                     count_rounding=a.count_rounding,
                     ptable=None if a.ptable is None else a.ptable.parameters(),
                     information_loss=a.information_loss)


@dataclass(frozen=True)
class DisclosureResult:
    """The disclosure stage's outcome for one delivery (``disclosure.json``)."""

    microdata: bool  # whether record-level data is delivered (False: aggregate tables only)
    assessed: bool  # whether the microdata was assessed against a k (and l) rule
    success: bool = True
    sample: SampleFraction | None = None
    settings: DisclosureSettings | None = None
    datasets: tuple[AssessedDataset, ...] = ()
    not_assessed: tuple[NotAssessed, ...] = ()
    aggregates: tuple[AggregateTable, ...] = ()
    microdata_removed: tuple[str, ...] = ()
    blocked: BlockedDataset | None = None
    format: str = field(default=FORMAT)

    def assessed_dataset(self, name: str) -> AssessedDataset | None:
        return next((d for d in self.datasets if d.name == name), None)

    def risk_report(self) -> RiskReport:
        """The readable risk report (derived from the rest of the document, so never read back)."""
        return RiskReport(datasets=tuple(_dataset_risk(d, self.settings) for d in self.datasets),
                          tables=tuple(_table_risk(a) for a in self.aggregates), not_assessed=self.not_assessed)

    def to_dict(self, *, recipient: bool = False) -> dict[str, Any]:
        """The document; ``recipient``: as the manifest carries it (no operator-only figures)."""
        doc: dict[str, Any] = {
            "format": self.format, "success": self.success, "microdata": self.microdata,
            "sample": None if self.sample is None else self.sample.to_dict(), "assessed": self.assessed,
            "settings": None if self.settings is None else self.settings.to_dict(),
            "datasets": [d.to_dict() for d in self.datasets], "not_assessed": [n.to_dict() for n in self.not_assessed],
            "aggregates": [a.to_dict(recipient=recipient) for a in self.aggregates],
            "microdata_removed": list(self.microdata_removed),
            "risk_report": self.risk_report().to_dict(recipient=recipient),
        }
        if self.blocked is not None:
            doc["blocked"] = self.blocked.to_dict()
        return doc

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DisclosureResult:
        if data.get("format") != FORMAT:
            raise ContractExtractsError(f"the disclosure document is not in the format {FORMAT} this version "
                                        "reads; nothing is packaged. Fix: run the delivery again from the start")
        sample, settings, blocked = data["sample"], data["settings"], data.get("blocked")
        return cls(format=FORMAT, success=data["success"], microdata=data["microdata"], assessed=data["assessed"],
                   sample=None if sample is None else SampleFraction.from_dict(sample),
                   settings=None if settings is None else DisclosureSettings.from_dict(settings),
                   datasets=tuple(AssessedDataset.from_dict(d) for d in data["datasets"]),
                   not_assessed=tuple(NotAssessed.from_dict(n) for n in data["not_assessed"]),
                   aggregates=tuple(AggregateTable.from_dict(a) for a in data["aggregates"]),
                   microdata_removed=tuple(data["microdata_removed"]),
                   blocked=None if blocked is None else BlockedDataset.from_dict(blocked))
