"""Partitioned extraction through the real pipeline: the same delivered data as an unpartitioned run
(byte-equal after sorting, sampling included), and on PostgreSQL one snapshot for every partition even
while the source is written to."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
import yaml
from sqlalchemy.engine import make_url

from core.settings import load_settings
from delivery.verify import decrypt_package
from demo.synthetic import write_demo_source
from masking import engine as masking_engine
from pipeline.stages import Pipeline, RunContext
from tests.authorisation.helpers import approve_for_tests
from tests.conftest import Workspace, temporary_database

CONTRACT = "C-DEMO-001"


def set_partitions(workspace: Workspace, parts: int | str | None, sample: dict | None) -> None:
    path = workspace.contracts_dir / f"{CONTRACT}.yaml"
    data = yaml.safe_load(path.read_text())
    for dataset, column in (("claimants", "id"), ("payments", "claimant_id")):
        spec = next(d for d in data["datasets"] if d["name"] == dataset)
        if parts == "auto":  # the primary key, one part per 150 rows of the table's statistics
            spec["partition"] = {"parts": "auto", "rows_per_part": 150} if dataset == "claimants" else {
                "column": column, "parts": "auto", "rows_per_part": 10_000}
        elif parts:
            spec["partition"] = {"column": column, "parts": parts}
        else:
            spec.pop("partition", None)
    if sample:
        data["sample"] = sample
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    approve_for_tests(workspace.config_dir, workspace.home, [path])


def pipeline(workspace: Workspace, url: str) -> Pipeline:
    ctx = RunContext(contract_path=workspace.contracts_dir / f"{CONTRACT}.yaml", settings=load_settings(),
                     actor="pytest", run_key=f"test/{uuid.uuid4()}", run_after=dt.datetime.now(dt.UTC),
                     resolve_connection=lambda _c: make_url(url), trigger={"system": "pytest"},
                     today=dt.date(2026, 11, 25))
    return Pipeline(ctx)


def delivered(workspace: Workspace, result: dict, out: Path) -> dict[str, pa.Table]:
    package = next((workspace.home / "drop").rglob(result["package"]["package"]))
    decrypt_package(package, identity=workspace.identities / "acme-analyst.txt", out_dir=out,
                    sender_key=workspace.keys["public"])
    tables = {}
    for name in ("claimants", "payments"):
        table = pq.read_table(out / "data" / f"{name}.parquet")
        tables[name] = table.sort_by([(c, "ascending") for c in table.column_names])
    return tables


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration),
                        pytest.param("mariadb", marks=pytest.mark.integration)])
def source(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'claims.sqlite'}"
        write_demo_source(url, n_people=600)
        yield url
        return
    with temporary_database(request.param) as url:
        write_demo_source(url, n_people=600)
        yield url


@pytest.mark.parametrize(("sample", "parts"), [
    (None, 3), ({"entity": "claimant", "fraction": 0.5, "max_records": 200}, 3), (None, "auto")],
    ids=["full", "sampled", "automatic-parts-on-the-primary-key"])
def test_partitioned_run_delivers_exactly_the_unpartitioned_data(workspace: Workspace, source: str,
                                                                 tmp_path: Path, sample, parts) -> None:
    set_partitions(workspace, None, sample)
    whole = delivered(workspace, pipeline(workspace, source).run_all(), tmp_path / "whole")
    set_partitions(workspace, parts, sample)
    parted_pipeline = pipeline(workspace, source)
    if parts == "auto":
        parted_pipeline.authorise()
        planned = parted_pipeline.plan_partitions()["parts"]
        assert sum(p["dataset"] == "claimants" for p in planned) >= 3  # 600 people, 150 rows per part
        assert sum(p["dataset"] == "payments" for p in planned) == 1
        parted_pipeline.cleanup()
        parted_pipeline = pipeline(workspace, source)
    parted = delivered(workspace, parted_pipeline.run_all(), tmp_path / "parted")
    for name in whole:
        assert parted[name].num_rows == whole[name].num_rows > 0
        assert parted[name].equals(whole[name]), name
    if sample:
        assert 0 < len(set(whole["claimants"].column("id").to_pylist())) <= 200  # at most max_records people
    assert not parted_pipeline.staging.exists()


@pytest.mark.integration
def test_writes_during_a_partitioned_run_do_not_reach_the_delivery(workspace: Workspace, tmp_path: Path) -> None:
    with temporary_database("postgresql") as url:
        write_demo_source(url, n_people=500)
        set_partitions(workspace, None, None)
        before = delivered(workspace, pipeline(workspace, url).run_all(), tmp_path / "before")

        set_partitions(workspace, 4, None)
        run = pipeline(workspace, url)
        run.authorise()
        parts = run.plan_partitions()["parts"]
        assert len(parts) == 8
        engine = sa.create_engine(url)
        with engine.begin() as conn:  # the source changes after the snapshot was taken
            conn.execute(sa.text("DELETE FROM payments WHERE claimant_id > 400"))
            conn.execute(sa.text("DELETE FROM claimants WHERE id > 400"))
            conn.execute(sa.text("UPDATE claimants SET benefit_code = 'XX' WHERE id <= 100"))
        engine.dispose()
        for part in parts:
            run.extract_partition(part)
        for stage in ("extract", "disclosure", "validate", "package", "deliver", "record"):
            getattr(run, stage)()
        run.cleanup()
        package = next((workspace.home / "drop").rglob(f"*{run.delivery_id}*"))
        out = tmp_path / "during"
        decrypt_package(package, identity=workspace.identities / "acme-analyst.txt", out_dir=out,
                        sender_key=workspace.keys["public"])
        for name in ("claimants", "payments"):
            table = pq.read_table(out / "data" / f"{name}.parquet")
            table = table.sort_by([(c, "ascending") for c in table.column_names])
            assert table.equals(before[name]), f"{name} must equal the snapshot, not the changed source"


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["postgresql", "mariadb"])
def test_an_unpartitioned_run_reads_every_dataset_from_one_snapshot(workspace: Workspace, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    """Writes committed between reading two datasets reach neither (PostgreSQL: one exported snapshot;
    MariaDB: one consistent-snapshot transaction reading the datasets in turn)."""
    with temporary_database(kind) as url:
        write_demo_source(url, n_people=500)
        set_partitions(workspace, None, None)
        before = delivered(workspace, pipeline(workspace, url).run_all(), tmp_path / "before")

        real = masking_engine.write_masked
        changed = []

        def write_then_change_the_source(*args, **kwargs):
            rows = real(*args, **kwargs)
            if not changed:  # after the first dataset is staged, before the second is read
                writer = sa.create_engine(url)
                with writer.begin() as conn:
                    conn.execute(sa.text("DELETE FROM payments WHERE claimant_id > 400"))
                    conn.execute(sa.text("DELETE FROM claimants WHERE id > 400"))
                    conn.execute(sa.text("UPDATE claimants SET benefit_code = 'XX' WHERE id <= 100"))
                writer.dispose()
                changed.append(True)
            return rows

        monkeypatch.setattr(masking_engine, "write_masked", write_then_change_the_source)
        during = delivered(workspace, pipeline(workspace, url).run_all(), tmp_path / "during")
        assert changed
        for name in ("claimants", "payments"):
            assert during[name].equals(before[name]), f"{name} must equal the snapshot, not the changed source"
