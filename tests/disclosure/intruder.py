"""The intruder's toolkit for attack tests on real pipeline output.

Runs contracts through the real ``Pipeline`` (SQLite source, no Airflow), receives the package the way a
recipient does, and re-derives what a motivated intruder (or the test, as ground truth) needs: pseudonyms under a
contract's key (the test holds the master key it generated), rank correlations, and the arithmetic of the
attacks on published tables.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from scipy import stats
from sqlalchemy.engine import make_url

from core.settings import load_settings
from delivery.verify import decrypt_package
from masking.keys import derive_key, load_master_key_file
from masking.pseudonyms import pseudonymise_array
from pipeline.stages import STAGES, Pipeline, RunContext
from tests.authorisation.helpers import approve_for_tests
from tests.conftest import Workspace

RECIPIENT = {"C-DEMO-001": ("acme-research", "acme-analyst"), "C-DEMO-002": ("borealis-analytics", "borealis-analyst")}


def edit_contract(workspace: Workspace, contract: str, change: Callable[[dict[str, Any]], None],
                  *, as_id: str | None = None) -> Path:
    """Rewrite a demo contract (optionally under another contract id, as a new file) and approve it."""
    source = workspace.contracts_dir / f"{contract}.yaml"
    data = yaml.safe_load(source.read_text())
    change(data)
    target = source
    if as_id is not None:
        data["contract"] = as_id
        target = workspace.contracts_dir / f"{as_id}.yaml"
    target.write_text(yaml.safe_dump(data, sort_keys=False))
    approve_for_tests(workspace.config_dir, workspace.home, [target])
    return target


def pipeline(workspace: Workspace, contract: str, source_url: str) -> Pipeline:
    ctx = RunContext(contract_path=workspace.contracts_dir / f"{contract}.yaml", settings=load_settings(),
                     actor="pytest", run_key=f"test/{uuid.uuid4()}", run_after=dt.datetime.now(dt.UTC),
                     resolve_connection=lambda _c: make_url(source_url), trigger={"system": "pytest"})
    return Pipeline(ctx)


def run_through(run: Pipeline, *, after_extract: Callable[[Pipeline], None] | None = None) -> None:
    """Every stage in order (partitions too), with a look at the staging folder after the extract; cleans up."""
    try:
        run.authorise()
        parts = run.plan_partitions()["parts"] if _partitioned(run) else []
        for part in parts:
            run.extract_partition(part)
        run.extract()
        if after_extract is not None:
            after_extract(run)
        for stage in STAGES[2:]:
            getattr(run, stage)()
    finally:
        run.cleanup()


def _partitioned(run: Pipeline) -> bool:
    data = yaml.safe_load(run.ctx.contract_path.read_text())
    return any("partition" in d for d in data["datasets"])


def receive(workspace: Workspace, run: Pipeline, out: Path, *, recipient: tuple[str, str]) -> Path:
    """Decrypt and verify the delivery's package as its recipient does; returns the folder it was unpacked in."""
    folder, identity = recipient
    package = next((workspace.home / "drop" / folder).glob(f"*{run.delivery_id}*"))
    decrypt_package(package, identity=workspace.identities / f"{identity}.txt", out_dir=out,
                    sender_key=workspace.keys["public"])
    return out


def pseudonyms_of(workspace: Workspace, contract: str, values: Iterable[str], *, entity: str,
                  canonicaliser: str | None) -> list[str | None]:
    """The pseudonyms a contract gives ``values`` (format v1; ``linkage: contract``): the test's ground truth."""
    master = load_master_key_file(workspace.keys["master"])
    key = derive_key(master.secret, "pseudonym", contract)
    out: list[str | None] = pseudonymise_array(pa.array(list(values), pa.string()), key=key, entity=entity,
                                               canonicaliser=canonicaliser).to_pylist()
    return out


def spearman(x: Iterable[float], y: Iterable[float]) -> float:
    rho = stats.spearmanr(np.asarray(list(x), dtype=np.float64), np.asarray(list(y), dtype=np.float64)).statistic
    return float(rho)


def read(path: Path) -> pa.Table:
    return pq.read_table(path)
