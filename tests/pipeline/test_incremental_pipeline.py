"""Incremental deliveries through the real pipeline: the first delivery is full, later ones carry only new
rows, a failed night is caught up, nothing is sent twice, and a full refresh re-sends everything."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
import yaml
from sqlalchemy.engine import make_url

from core.errors import AuthorisationError
from core.settings import load_settings
from delivery.verify import decrypt_package
from demo.synthetic import write_demo_source
from pipeline.stages import Pipeline, RunContext
from tests.authorisation.helpers import approve_for_tests
from tests.conftest import Workspace, temporary_database

CONTRACT = "C-DEMO-002"


def make_incremental(workspace: Workspace, parts: int | None = None, **extra) -> Path:
    path = workspace.contracts_dir / f"{CONTRACT}.yaml"
    data = yaml.safe_load(path.read_text())
    # An increasing column that is not an identifier: an identifier's marks would reach the ledger and the
    # manifest (the catalogue refuses incremental on claimants.id).
    data["incremental"] = {"column": "claim_start"}
    data.update(extra)
    if parts:
        for dataset in data["datasets"]:
            if dataset["name"] == "claimants":
                dataset["partition"] = {"column": "id", "parts": parts}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    approve_for_tests(workspace.config_dir, workspace.home, [path])
    return path


def pipeline(workspace: Workspace, url: str, **trigger) -> Pipeline:
    ctx = RunContext(contract_path=workspace.contracts_dir / f"{CONTRACT}.yaml", settings=load_settings(),
                     actor="pytest", run_key=f"test/{uuid.uuid4()}", run_after=dt.datetime.now(dt.UTC),
                     resolve_connection=lambda _c: make_url(url), trigger={"system": "pytest", **trigger})
    return Pipeline(ctx)


def delivered_ninos(workspace: Workspace, result: dict, tmp_path: Path) -> list[str]:
    package = next((workspace.home / "drop").rglob(result["package"]["package"]))
    out = tmp_path / result["delivery_id"]
    decrypt_package(package, identity=workspace.identities / "borealis-analyst.txt", out_dir=out,
                    sender_key=workspace.keys["public"])
    manifest_kind = __import__("json").loads((out / "manifest.json").read_text())["extract"]["kind"]
    return [manifest_kind, *pq.read_table(out / "data" / "claimants.parquet").column("nino").to_pylist()]


def add_claimants(url: str, start: int, count: int) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        row = dict(conn.execute(sa.text("SELECT * FROM claimants WHERE id = 1")).mappings().one())
        for i in range(start, start + count):
            conn.execute(sa.text("INSERT INTO claimants (id, nino, first_name, last_name, date_of_birth, sex, "
                                 "postcode, region, benefit_code, weekly_amount, claim_start, claim_end) VALUES "
                                 "(:id, :nino, :first_name, :last_name, :date_of_birth, :sex, :postcode, :region, "
                                 ":benefit_code, :weekly_amount, :claim_start, :claim_end)"),
                         {**row, "id": i, "nino": f"ZX{i:06d}A"[:9],
                          "claim_start": dt.date(2027, 1, 1) + dt.timedelta(days=i)})
    engine.dispose()


@contextmanager
def source_url(kind: str, tmp_path: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'claims.sqlite'}"
        return
    with temporary_database(kind) as url:
        yield url


@pytest.mark.parametrize(("kind", "parts"), [("sqlite", None), ("sqlite", 3), ("postgresql", 3)],
                         ids=["sqlite", "sqlite-3-partitions", "postgresql-3-partitions-shared-snapshot"])
def test_incremental_windows_through_the_pipeline(workspace: Workspace, tmp_path: Path, kind: str,
                                                  parts: int | None) -> None:
    with source_url(kind, tmp_path) as url:
        incremental_nights(workspace, tmp_path, url, parts)


def incremental_nights(workspace: Workspace, tmp_path: Path, url: str, parts: int | None) -> None:
    write_demo_source(url, n_people=300)
    make_incremental(workspace, parts)

    first = delivered_ninos(workspace, pipeline(workspace, url).run_all(), tmp_path)
    assert first[0] == "full" and len(first) - 1 == 300

    add_claimants(url, 1001, 5)
    second = delivered_ninos(workspace, pipeline(workspace, url).run_all(), tmp_path)
    assert second[0] == "incremental" and len(second) - 1 == 5

    # A failed night: extracted but never delivered, so the mark must not move.
    add_claimants(url, 2001, 7)
    failed = pipeline(workspace, url)
    failed.authorise()
    if parts:
        for part in failed.plan_partitions()["parts"]:
            failed.extract_partition(part)
    failed.extract()
    failed.cleanup()
    caught_up = delivered_ninos(workspace, pipeline(workspace, url).run_all(), tmp_path)
    assert caught_up[0] == "incremental" and len(caught_up) - 1 == 7

    nothing_new = delivered_ninos(workspace, pipeline(workspace, url).run_all(), tmp_path)
    assert len(nothing_new) - 1 == 0

    delivered = first[1:] + second[1:] + caught_up[1:]
    assert len(delivered) == len(set(delivered)) == 312, "every row once, none twice"

    refresh = delivered_ninos(workspace, pipeline(workspace, url, full_refresh=True).run_all(), tmp_path)
    assert refresh[0] == "full" and len(refresh) - 1 == 312
    assert set(refresh[1:]) == set(delivered), "pseudonyms are stable under linkage: contract"


def test_incremental_with_bottom_k_sampling_is_refused(workspace: Workspace, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'claims.sqlite'}"
    write_demo_source(url, n_people=50)
    make_incremental(workspace, sample={"entity": "person", "fraction": 0.5, "max_records": 10})
    with pytest.raises(AuthorisationError, match="max_records"):
        pipeline(workspace, url).run_all()
