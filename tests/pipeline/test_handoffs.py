"""Hand-offs between stages: every typed value survives its staging file and XCom unchanged, and a file
or XCom value of another hand-off format is refused with a clear, value-free error."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path

import pytest

from core.errors import ContractExtractsError
from disclosure.result import (
    FORMAT,
    AggregateTable,
    AssessedDataset,
    BlockedDataset,
    DisclosureResult,
    DisclosureSettings,
    GeneralisedColumn,
    Grossing,
    NotAssessed,
    SampleFraction,
    TableColumn,
    TreatmentStep,
    TreatmentSummary,
)
from disclosure.risk import Measures, RiskDriver
from extract.incremental import Window
from extract.partitioning import PartitionRange
from extract.result import ExtractResult, SampledDataset, SampleSummary, StagedColumn, StagedDataset
from masking.sampling import SampleResult
from pipeline import handoffs
from pipeline.handoffs import (
    DISCLOSURE,
    EXTRACT,
    HANDOFF_KEY,
    PACKAGE,
    PARTITIONS,
    VALIDATION,
    HandoffFormatError,
    PackageInfo,
    PartitionPlan,
    StagingState,
    ValidationOutcome,
)

DELIVERY = "20260301T110000Z-0123abcd"


def extract_result() -> ExtractResult:
    column = StagedColumn(name="nino", type="string", treatment="pseudonymise", pseudonym=True,
                          source_not_null=True, description="Pseudonym: 32 lower-case hex characters.")
    return ExtractResult(
        key_id="k-2026-01",
        datasets=(StagedDataset(name="claimants", file="data/claimants.parquet", rows=388,
                                columns=(column, StagedColumn(name="region", type="string", treatment="keep",
                                                              pseudonym=False, source_not_null=False,
                                                              description="As in the source."))),),
        sample=SampleSummary(entity="person", fraction_requested=0.5, max_records=None, population=800,
                             sample_size=388, fraction_delivered=0.485,
                             datasets=(SampledDataset(name="claimants", population_rows=800, rows=388),)),
        windows=(Window("claimants", "id", 800, 1024, full=False),
                 Window("payments", "paid_at", dt.datetime(2026, 2, 1, 2, 0, tzinfo=dt.UTC), None, full=True),
                 Window("awards", "amount", Decimal("10.50"), Decimal("99.99"), full=False),
                 Window("dates", "day", None, dt.date(2026, 2, 28), full=True)),
    )


def measures(records: int, population: dict[str, object] | None = None, average_risk: float = 0.123457) -> Measures:
    # disclosure.json holds average_risk to 6 decimals (Measures.to_dict), so a value read back has 6.
    return Measures(records=records, key=("date_of_birth", "region"), k=5, classes=40, k_anonymity=2,
                    records_below_k=7, sample_uniques=3, average_risk=average_risk, l_diversity={"benefit_code": 2},
                    records_below_l=0, l=2, population=population)


def disclosure_result(average_risk: float = 0.123457) -> DisclosureResult:
    generalised = GeneralisedColumn(column="date_of_birth", level=1, of=3, description="bands of width 5")
    treatment = TreatmentSummary(
        generalised=(generalised,),
        steps=(TreatmentStep(column="date_of_birth", level=1, records_below_k_after=4, suppression_needed_before=9),),
        suppressed_records=4, suppressed_share=0.005, suppressed_values={"date_of_birth": 0, "region": 4},
        suppression_rounds=1, ceiling=0.05, feasible=True)
    table = AggregateTable(
        name="by_region", dataset="claimants", by=("region",), unit="record", measures=("count",), margins=True,
        threshold=10, rounding=5, dominance=0.5, grossed=Grossing(by="inverse sampling fraction", factor=2.061856),
        cells=12, published=10, suppressed_small=1, suppressed_dominance=0, suppressed_secondary=1, rows=12,
        file="data/by_region.parquet", schema=(TableColumn(name="count", type="int64", description="Records."),))
    return DisclosureResult(
        microdata=True, assessed=True,
        sample=SampleFraction(fraction=0.5, population=800, size=388, used_fraction=0.485),
        settings=DisclosureSettings(k=5, l=2, max_suppressed=0.05, generalise=True,
                                    quasi_identifiers=("date_of_birth", "region"), contractor_holds=(),
                                    sensitive=("benefit_code",), key=("date_of_birth", "region")),
        datasets=(AssessedDataset(name="claimants", file="data/claimants.parquet", rows=388,
                                  key=("date_of_birth", "region"), sensitive=("benefit_code",),
                                  before=measures(388, average_risk=average_risk),
                                  after=measures(388, {"fraction": 0.485, "dis": 0.1}, average_risk),
                                  treatment=treatment, changed=True),),
        not_assessed=(NotAssessed(name="payments", reason="no key variable in this dataset"),),
        aggregates=(table,),
    )


def blocked_result() -> DisclosureResult:
    return DisclosureResult(
        microdata=True, assessed=True, success=False,
        blocked=BlockedDataset(dataset="claimants", k=10, l=None, records=800, ceiling=0.05,
                               suppression_needed_records=800, suppression_needed_share=1.0, feasible=True,
                               suppression_needed_values={"region": 800}, generalised=(),
                               drivers=(RiskDriver(column="region", records_below_k=800,
                                                   records_below_k_without_it=585, distinct_values=9),),
                               before=measures(800)))


def json_round_trip(data: dict[str, object]) -> dict[str, object]:
    """What a reader sees after the value went through a JSON file."""
    loaded: dict[str, object] = json.loads(json.dumps(data, sort_keys=True))
    return loaded


def canonical(data: dict[str, object]) -> str:
    """As the manifest serialises (delivery.package.manifest_bytes): sorted keys."""
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False)


@pytest.fixture
def state(tmp_path: Path) -> StagingState:
    return StagingState(tmp_path, DELIVERY)


@pytest.mark.parametrize(("kind", "value"), [
    (EXTRACT, extract_result()),
    (EXTRACT, ExtractResult(key_id="k-1", datasets=())),
    (DISCLOSURE, disclosure_result()),
    (DISCLOSURE, blocked_result()),
    (DISCLOSURE, DisclosureResult(microdata=False, assessed=False, microdata_removed=("claimants",))),
    (VALIDATION, ValidationOutcome({"success": True, "datasets": [{"dataset": "claimants", "rows": 388}]})),
    (PACKAGE, PackageInfo(package="C-1_d.tar.age", sha256="ab" * 32, bytes=1024, manifest_sha256="cd" * 32,
                          format="age", recipients=({"name": "analyst", "fingerprint": "age:00"},))),
    (PACKAGE, PackageInfo(package="C-1_d.tar.age", sha256="ab" * 32, bytes=None, manifest_sha256=None,
                          format="openpgp", recipients=None, already_delivered=True)),
    (PARTITIONS, PartitionPlan(
        snapshot="00000003-0000001B-1",
        sample=SampleResult(entity="person", fraction=0.5, max_records=None, limit=2**63, population=800,
                            sample_size=388),
        parts=(PartitionRange("claimants", 0, 2, "id", None, 400, high_water=800),
               PartitionRange("claimants", 1, 2, "id", 400, None, high_water=800)),
        windows=(Window("claimants", "id", None, 800, full=True),), population_rows={"claimants": 800})),
    (PARTITIONS, PartitionPlan(snapshot=None, sample=None, parts=(), windows=None, population_rows={})),
], ids=["extract", "extract-minimal", "disclosure", "disclosure-blocked", "disclosure-aggregates-only",
        "validation", "package", "package-already-delivered", "partitions", "partitions-minimal"])
def test_every_handoff_survives_its_staging_file(state: StagingState, kind: handoffs.StateFile[object],
                                                 value: object) -> None:
    state.write(kind, value)
    assert state.read(kind) == value
    # The file holds the value's own JSON object plus the hand-off format, nothing else.
    written = json.loads((state.staging / kind.name).read_text(encoding="utf-8"))
    assert written.pop(HANDOFF_KEY) == kind.format
    assert written == json_round_trip(kind.encode(value))


def test_documents_read_back_are_byte_identical(state: StagingState) -> None:
    """disclosure.json and the extract's sample and windows go into the signed manifest: reading them back
    must give exactly the JSON that was written (types included: 800 stays an int, 0.485 a float)."""
    disclosure = disclosure_result(average_risk=0.1234567891)
    state.write(DISCLOSURE, disclosure)
    assert canonical(state.read(DISCLOSURE).to_dict()) == canonical(disclosure.to_dict())
    extract = extract_result()
    state.write(EXTRACT, extract)
    assert canonical(state.read(EXTRACT).to_dict()) == canonical(extract.to_dict())
    doc = json_round_trip(disclosure_result().to_dict())
    assert DisclosureResult.from_dict(doc).to_dict() == doc


@pytest.mark.parametrize("stamp", [None, "contract-extracts/handoff/extract/v0", "contract-extracts/handoff/extract/v2",
                                   "contract-extracts/handoff/package/v1"], ids=["unstamped", "older", "newer",
                                                                                 "another-kind"])
def test_a_file_of_another_format_is_refused_with_a_clear_error(state: StagingState, stamp: str | None) -> None:
    data = extract_result().to_dict()
    if stamp is not None:
        data[HANDOFF_KEY] = stamp
    (state.staging / EXTRACT.name).write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(HandoffFormatError) as refused:
        state.read(EXTRACT)
    message = str(refused.value)
    assert "extract.json" in message and DELIVERY in message and EXTRACT.format in message
    assert "run the delivery again from the start" in message
    assert "k-2026-01" not in message and "claimants" not in message  # names formats, never content


def test_a_file_that_is_not_a_json_object_is_refused(state: StagingState) -> None:
    (state.staging / PACKAGE.name).write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(HandoffFormatError, match="not a JSON object"):
        state.read(PACKAGE)


def test_a_missing_file_says_which_stage_did_not_finish(state: StagingState) -> None:
    assert state.read_if_present(VALIDATION) is None
    with pytest.raises(ContractExtractsError, match=r"validation\.json is missing .* an earlier stage did not finish"):
        state.read(VALIDATION)


def test_a_disclosure_document_of_another_format_is_refused() -> None:
    doc = disclosure_result().to_dict()
    doc["format"] = "contract-extracts/disclosure/v2"
    with pytest.raises(ContractExtractsError, match=FORMAT):
        DisclosureResult.from_dict(doc)


def test_partition_tasks_travel_through_xcom_and_other_values_are_refused() -> None:
    plan = PartitionPlan(snapshot=None, sample=None, parts=(
        PartitionRange("claimants", 0, 2, "id", None, 5), PartitionRange("claimants", 1, 2, "id", 5, None)),
        windows=None, population_rows={})
    parts = json_round_trip(handoffs.partitions_xcom(plan))["parts"]
    assert isinstance(parts, list)
    tasks = [handoffs.partition_task(p) for p in parts]
    assert [plan.part(t) for t in tasks] == list(plan.parts)
    with pytest.raises(HandoffFormatError, match="partition task"):
        handoffs.partition_task({"dataset": "claimants", "index": 0})  # from a plan of another version
    with pytest.raises(HandoffFormatError):
        handoffs.partition_task({**parts[0], HANDOFF_KEY: "contract-extracts/handoff/partition-task/v2"})


def test_xcom_values_hold_names_counts_and_hashes_only() -> None:
    assert handoffs.extract_xcom(extract_result()) == {
        "datasets": [{"name": "claimants", "rows": 388}], "sample": {"population": 800, "sample_size": 388}}
    assert handoffs.disclosure_xcom(disclosure_result()) == {
        "assessed": True, "datasets": [{"name": "claimants", "k_anonymity": 2, "suppressed_records": 4}],
        "aggregates": [{"name": "by_region", "cells": 12, "published": 10}]}
    plan = PartitionPlan(snapshot="00000003-0000001B-1",
                         sample=SampleResult(entity="person", fraction=0.5, max_records=None, limit=12345,
                                             population=800, sample_size=388),
                         parts=(PartitionRange("claimants", 0, 1, "id", None, None, high_water=800),),
                         windows=None, population_rows={"claimants": 800})
    xcom = json.dumps(handoffs.partitions_xcom(plan))
    assert "12345" not in xcom and "0000001B" not in xcom  # the rank limit and the snapshot stay in staging
