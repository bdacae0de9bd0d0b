"""The whole pipeline without Airflow, against SQLite and the real PostgreSQL and MariaDB servers.

Checks the promises that matter most: only the contract's columns leave, no raw identifier survives
anywhere in the package, and every refusal is fail-closed (exception, `blocked` ledger record, nothing
in the drop folder, staging removed).
"""

from __future__ import annotations

import copy
import datetime as dt
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
import yaml
from sqlalchemy.engine import make_url

from audit.ledger import Ledger
from contracts import load_contract
from core.errors import (
    AuthorisationError,
    ContractError,
    SourceError,
    ValidationFailed,
)
from core.settings import load_settings
from delivery.verify import decrypt_package
from demo.synthetic import write_demo_source
from pipeline.stages import Pipeline, RunContext
from tests.authorisation.helpers import approve_for_tests, demo_catalogue, write_catalogue
from tests.conftest import Workspace, temporary_database

PEOPLE = 400


def approve_current(workspace: Workspace, path: Path) -> None:
    """The gate runs only signed approvals of the current content: approve what the test runs."""
    try:
        load_contract(path)
        approve_for_tests(workspace.config_dir, workspace.home, [path])
    except (ContractError, AuthorisationError):
        return  # an invalid file (or one breaking its catalogue) cannot be approved; its run is blocked anyway


def make_pipeline(workspace: Workspace, contract: str, source_url: str, *, approved: bool = True,
                  **overrides) -> Pipeline:
    path = workspace.contracts_dir / f"{contract}.yaml"
    if approved:
        approve_current(workspace, path)
    ctx = RunContext(contract_path=path, settings=load_settings(), actor="pytest",
                     run_key=f"test/{uuid.uuid4()}", run_after=dt.datetime.now(dt.UTC),
                     resolve_connection=lambda _conn_id: make_url(source_url),
                     trigger={"system": "pytest"}, **overrides)
    return Pipeline(ctx)


@pytest.fixture
def sqlite_source(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'claims.sqlite'}"
    write_demo_source(url, n_people=PEOPLE)
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration),
                        pytest.param("mariadb", marks=pytest.mark.integration)])
def any_source(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'claims.sqlite'}"
        write_demo_source(url, n_people=PEOPLE)
        yield url
        return
    with temporary_database(request.param) as url:
        write_demo_source(url, n_people=PEOPLE)
        yield url


def source_ninos(url: str) -> list[str]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        values = [row[0] for row in conn.execute(sa.text("SELECT nino FROM claimants"))]
    engine.dispose()
    return values


def ledger_actions(workspace: Workspace, delivery: str) -> list[tuple[str, dict]]:
    ledger = Ledger(load_settings().ledger_url)
    try:
        return [(r.action, r.details_obj()) for r in ledger.records(delivery=delivery)]
    finally:
        ledger.close()


def drop_files(workspace: Workspace) -> list[Path]:
    drop = workspace.home / "drop"
    return [p for p in drop.rglob("*") if p.is_file()] if drop.exists() else []


def test_delivers_exactly_the_contract_columns_and_no_raw_identifier(workspace: Workspace, any_source: str,
                                                                     tmp_path: Path) -> None:
    pipeline = make_pipeline(workspace, "C-DEMO-001", any_source)
    result = pipeline.run_all()
    package = workspace.home / "drop" / "acme-research" / result["package"]["package"]
    assert package.exists()
    assert not pipeline.staging.exists(), "plaintext staging must be removed after the run"

    out = tmp_path / "received"
    verified = decrypt_package(package, identity=workspace.identities / "acme-analyst.txt", out_dir=out,
                               sender_key=workspace.keys["public"])
    assert verified.signature_verified
    contract = load_contract(workspace.contracts_dir / "C-DEMO-001.yaml")
    for dataset in contract.datasets:
        table = pq.read_table(out / "data" / f"{dataset.name}.parquet")
        assert table.column_names == list(dataset.columns)
    claimants = pq.read_table(out / "data" / "claimants.parquet")
    assert all(re.fullmatch(r"[0-9a-f]{32}", v) for v in claimants.column("nino").to_pylist())
    assert claimants.column("date_of_birth").to_pylist()[0] in range(1930, 2010)

    # No raw NINO anywhere: not in any column of any file (in any spacing or case), nor in the text files.
    raw = {n.replace(" ", "").upper() for n in source_ninos(any_source)}
    assert len(raw) == PEOPLE
    delivered_text: set[str] = set()
    for parquet in (out / "data").glob("*.parquet"):
        for column in pq.read_table(parquet).columns:
            delivered_text.update(str(v).replace(" ", "").upper() for v in column.to_pylist() if v is not None)
    assert not raw & delivered_text
    for text_file in ("manifest.json", "codebook.md"):
        content = (out / text_file).read_text().upper()
        assert not any(n in content for n in raw)

    actions = [a for a, _ in ledger_actions(workspace, pipeline.delivery_id)]
    assert actions == ["run_started", "authorised", "extract_done", "validation_passed", "delivery_intent",
                       "delivered", "run_completed", "staging_removed"]


def test_pseudonyms_join_across_datasets_of_one_contract(workspace: Workspace, sqlite_source: str,
                                                         tmp_path: Path) -> None:
    result = make_pipeline(workspace, "C-DEMO-001", sqlite_source).run_all()
    out = tmp_path / "received"
    decrypt_package(workspace.home / "drop" / "acme-research" / result["package"]["package"],
                    identity=workspace.identities / "acme-analyst.txt", out_dir=out,
                    sender_key=workspace.keys["public"])
    claimant_ids = set(pq.read_table(out / "data" / "claimants.parquet").column("id").to_pylist())
    payment_ids = set(pq.read_table(out / "data" / "payments.parquet").column("claimant_id").to_pylist())
    assert claimant_ids & payment_ids, "entity 'claimant' must give equal pseudonyms in both datasets"


def rewrite_contract(workspace: Workspace, contract: str, change) -> None:
    path = workspace.contracts_dir / f"{contract}.yaml"
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def assert_blocked(workspace: Workspace, pipeline: Pipeline, stage: str, reason_part: str) -> None:
    records = ledger_actions(workspace, pipeline.delivery_id)
    blocked = [d for a, d in records if a == "blocked"]
    assert blocked, f"no blocked record, got {[a for a, _ in records]}"
    assert blocked[-1]["stage"] == stage
    assert reason_part in blocked[-1]["reason"]
    assert "delivered" not in [a for a, _ in records]
    assert drop_files(workspace) == []
    assert not pipeline.staging.exists()


def _drop_column(data: dict) -> None:
    data["datasets"][0]["columns"]["shoe_size"] = {"treatment": "keep"}


def _drop_table(data: dict) -> None:
    data["datasets"][0]["table"] = "no_such_table"


def _catalogue_column(data: dict) -> None:
    """The catalogue lists a column the source does not have (the source drifted from it)."""
    data["tables"]["claimants"]["columns"]["shoe_size"] = {"class": "other", "description": "Shoe size."}


def _catalogue_table(data: dict) -> None:
    data["tables"]["no_such_table"] = copy.deepcopy(data["tables"]["claimants"])


def _expire(data: dict) -> None:
    data["valid"] = {"from": dt.date(2020, 1, 1), "until": dt.date(2021, 1, 1)}


def _assurance_expired(data: dict) -> None:
    data["security_assurance"]["expires"] = dt.date(2021, 1, 1)


@pytest.mark.parametrize(("change", "catalogue", "error", "stage", "reason"), [
    pytest.param(_drop_column, _catalogue_column, SourceError, "extract", "shoe_size", id="column-not-in-source"),
    pytest.param(_drop_table, _catalogue_table, SourceError, "extract", "no_such_table", id="table-not-in-source"),
    pytest.param(_drop_column, None, AuthorisationError, "authorise", "'shoe_size' of table 'claimants' is not in "
                 "the source catalogue", id="column-not-in-catalogue"),
    pytest.param(_drop_table, None, AuthorisationError, "authorise", "table 'no_such_table' is not in the source "
                 "catalogue", id="table-not-in-catalogue"),
    pytest.param(_expire, None, AuthorisationError, "authorise", "expired", id="contract-expired"),
    pytest.param(_assurance_expired, None, AuthorisationError, "authorise", "security assurance",
                 id="assurance-expired"),
])
def test_refusals_are_fail_closed(workspace: Workspace, sqlite_source: str, change, catalogue, error, stage,
                                  reason) -> None:
    if catalogue is not None:
        data = demo_catalogue()
        catalogue(data)
        write_catalogue(workspace.config_dir, data)
    rewrite_contract(workspace, "C-DEMO-001", change)
    pipeline = make_pipeline(workspace, "C-DEMO-001", sqlite_source)
    with pytest.raises(error) as excinfo:
        pipeline.run_all()
    assert reason in str(excinfo.value)
    assert_blocked(workspace, pipeline, stage, reason)


@pytest.mark.parametrize(("change", "reason"), [
    pytest.param(lambda d: d.update(shoe_size=44), "unknown key 'shoe_size'", id="unknown-key"),
    pytest.param(lambda d: d["datasets"][0]["columns"].update(first_name=None), "no treatment",
                 id="column-without-treatment"),
])
def test_invalid_contract_file_is_blocked_at_authorise(workspace: Workspace, sqlite_source: str, change,
                                                       reason: str) -> None:
    rewrite_contract(workspace, "C-DEMO-001", change)
    pipeline = make_pipeline(workspace, "C-DEMO-001", sqlite_source)
    with pytest.raises(ContractError) as excinfo:
        pipeline.run_all()
    message = str(excinfo.value)
    assert "C-DEMO-001.yaml" in message and "Fix:" in message and reason in message
    actions = [a for a, _ in ledger_actions(workspace, pipeline.delivery_id)]
    assert actions[:2] == ["run_started", "blocked"]
    assert drop_files(workspace) == []


def test_contract_changed_during_the_run_is_blocked(workspace: Workspace, sqlite_source: str) -> None:
    pipeline = make_pipeline(workspace, "C-DEMO-001", sqlite_source)
    pipeline.authorise()
    rewrite_contract(workspace, "C-DEMO-001", lambda d: d["datasets"][0]["columns"].update(
        postcode={"treatment": "keep"}))
    with pytest.raises(AuthorisationError, match="changed on disk"):
        pipeline.extract()
    pipeline.cleanup()
    assert_blocked(workspace, pipeline, "extract", "changed on disk")


def test_validation_failure_blocks_delivery(workspace: Workspace, sqlite_source: str) -> None:
    # A NOT NULL identifier that is blank canonicalises to null: the not-null expectation must fail.
    engine = sa.create_engine(sqlite_source)
    with engine.begin() as conn:
        for claimant_id, blank in ((1, " "), (2, "  "), (3, "\t")):
            conn.execute(sa.text("UPDATE claimants SET nino = :blank WHERE id = :id"),
                         {"blank": blank, "id": claimant_id})
    engine.dispose()
    pipeline = make_pipeline(workspace, "C-DEMO-002", sqlite_source)
    with pytest.raises(ValidationFailed) as excinfo:
        pipeline.run_all()
    assert "expect_column_values_to_not_be_null" in str(excinfo.value)
    assert "3 unexpected" in str(excinfo.value)
    assert_blocked(workspace, pipeline, "validate", "expect_column_values_to_not_be_null")
    assert "validation_failed" in [a for a, _ in ledger_actions(workspace, pipeline.delivery_id)]


def test_delivery_is_exactly_once(workspace: Workspace, sqlite_source: str) -> None:
    pipeline = make_pipeline(workspace, "C-DEMO-002", sqlite_source)
    for stage in ("authorise", "extract", "validate", "package", "deliver"):
        getattr(pipeline, stage)()
    again = pipeline.deliver()  # a retried deliver task
    assert again["already_delivered"] is True
    pipeline.record()
    pipeline.cleanup()
    assert len(drop_files(workspace)) == 1
    actions = [a for a, _ in ledger_actions(workspace, pipeline.delivery_id)]
    assert actions.count("delivered") == 1


def test_foreign_errors_are_reduced_to_their_type(workspace: Workspace, tmp_path: Path) -> None:
    # A source URL that cannot be opened: the message of the driver must not reach ledger or exception.
    bad = f"sqlite:///{tmp_path / 'missing-dir' / 'x.sqlite'}"
    pipeline = make_pipeline(workspace, "C-DEMO-002", bad)
    with pytest.raises(Exception) as excinfo:
        pipeline.run_all()
    assert "OperationalError" in str(excinfo.value)
    assert "missing-dir" not in str(excinfo.value)
    blocked = [d for a, d in ledger_actions(workspace, pipeline.delivery_id) if a == "blocked"]
    assert blocked and "missing-dir" not in str(blocked)
