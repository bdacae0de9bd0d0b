"""The contractor's view of real deliveries of the demo contracts and their test variants (issue 13, "Done when").

The test plays the contractor with the standard tools only (``age -d | tar x``), then looks at everything in
the package as bytes and as Parquet (values and the footer's statistics) and, holding the source the way an
auditor would, checks two promises:

* no delivered value, no Parquet statistic and no byte string of the package equals a raw identifier of the
  source (every catalogued identifier column of the tables read: NINO, names, postcode, ids);
* no delivered row belongs to someone outside the contract's population (its defining dataset's filter and
  sample), and every row of the population's people is there (the semi-join loses nothing).

Pseudonyms are mapped back to source rows with the contract's pseudonym key (the auditor's key, recomputed from
the master key by the documented formula), never with the pipeline's own code.
"""

from __future__ import annotations

import copy
import datetime as dt
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
import yaml
from sqlalchemy.engine import make_url

from contracts.catalogue import load_catalogue
from core.settings import load_settings
from demo.synthetic import write_demo_source
from pipeline.stages import Pipeline, RunContext
from tests.authorisation.helpers import approve_for_tests
from tests.conftest import Workspace, temporary_database
from tests.masking.vectors import expected_contract_key, expected_pseudonym

PEOPLE = 600
DISCLOSURE = {"quasi_identifiers": ["date_of_birth", "region"], "k": 3, "sensitive": ["benefit_code"],
              "generalise": True, "hierarchies": {"date_of_birth": {"bands": [5, 10, 20, 40]}}}


def _sampled(d: dict) -> None:
    d["sample"] = {"entity": "claimant", "fraction": 0.5}


def _partitioned(d: dict) -> None:
    d["datasets"][1]["partition"] = {"parts": 3}


def _with_disclosure(d: dict) -> None:
    d["disclosure"] = copy.deepcopy(DISCLOSURE)


def _by_person(d: dict) -> None:
    d["datasets"][0]["filter"] = {"benefit_code": {"in": ["SP", "PIP", "AA"]}}


VARIANTS: dict[str, tuple[str, Callable[[dict], None] | None, str]] = {
    "demo-1": ("C-DEMO-001", None, "sqlite"),
    "demo-2": ("C-DEMO-002", None, "sqlite"),
    "demo-1-sampled": ("C-DEMO-001", _sampled, "sqlite"),
    "demo-1-partitioned": ("C-DEMO-001", _partitioned, "sqlite"),
    "demo-2-filtered-and-treated": ("C-DEMO-002", lambda d: (_by_person(d), _with_disclosure(d)), "sqlite"),
    "demo-1-postgresql": ("C-DEMO-001", _partitioned, "postgresql"),
    "demo-1-mariadb": ("C-DEMO-001", None, "mysql"),
}
CONTRACTOR = {"C-DEMO-001": ("acme-research", "acme-analyst"), "C-DEMO-002": ("borealis-analytics",
                                                                               "borealis-analyst")}


@contextmanager
def source(kind: str, tmp_path: Path) -> Iterator[str]:
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'claims.sqlite'}"
        write_demo_source(url, n_people=PEOPLE)
        yield url
        return
    with temporary_database("postgresql" if kind == "postgresql" else "mariadb") as url:
        if kind == "mysql":
            url = url + "?charset=utf8mb4"
        write_demo_source(url, n_people=PEOPLE)
        yield url


def rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text(sql))]
    finally:
        engine.dispose()


def canonical(value: Any) -> str:
    return "".join(str(value).split()).upper()


def deliver(workspace: Workspace, contract: str, url: str) -> Path:
    path = workspace.contracts_dir / f"{contract}.yaml"
    approve_for_tests(workspace.config_dir, workspace.home, [path])
    ctx = RunContext(contract_path=path, settings=load_settings(), actor="pytest", run_key=f"test/{uuid.uuid4()}",
                     run_after=dt.datetime.now(dt.UTC), resolve_connection=lambda _c: make_url(url),
                     trigger={"system": "pytest"})
    result = Pipeline(ctx).run_all()
    folder, _ = CONTRACTOR[contract]
    return workspace.home / "drop" / folder / result["package"]["package"]


def open_as_contractor(workspace: Workspace, contract: str, package: Path, out: Path) -> Path:
    """``age -d -i identity package | tar -x``: the contractor's standard tools, nothing of ours."""
    out.mkdir()
    _, recipient = CONTRACTOR[contract]
    age = subprocess.Popen(["age", "-d", "-i", str(workspace.identities / f"{recipient}.txt"), str(package)],
                           stdout=subprocess.PIPE)
    tar = subprocess.run(["tar", "-x", "-C", str(out)], stdin=age.stdout, capture_output=True, check=False)
    assert age.wait() == 0 and tar.returncode == 0, tar.stderr
    return out


@pytest.mark.parametrize(("contract", "change", "kind"), [
    pytest.param(*v, id=k, marks=[pytest.mark.integration] if v[2] != "sqlite" else [])
    for k, v in VARIANTS.items()])
def test_the_contractor_finds_no_raw_identifier_and_no_one_outside_the_population(
        workspace: Workspace, tmp_path: Path, contract: str, change: Callable[[dict], None] | None,
        kind: str) -> None:
    path = workspace.contracts_dir / f"{contract}.yaml"
    data = yaml.safe_load(path.read_text())
    if change is not None:
        change(data)
        path.write_text(yaml.safe_dump(data, sort_keys=False))
    with source(kind, tmp_path) as url:
        package = deliver(workspace, contract, url)
        out = open_as_contractor(workspace, contract, package, tmp_path / "received")
        catalogue = load_catalogue(workspace.config_dir / "sources" / "demo_claims.yaml")
        raw = raw_identifiers(url, catalogue)
        files = sorted(out.rglob("*"))
        parquet_files = [f for f in files if f.suffix == ".parquet"]
        assert parquet_files, files
        no_raw_identifier(files, parquet_files, raw, catalogue, data)
        population_only(workspace, contract, data, url, out)
        codebook_from_the_catalogue(out / "codebook.md", data)


def codebook_from_the_catalogue(codebook: Path, contract: dict) -> None:
    """What each column means comes from the data owner's catalogue: descriptions, units, codes, population."""
    text = codebook.read_text()
    assert "| Column | Type | Meaning | Treatment |" in text
    assert "| `nino` | string | National Insurance number. |" in text
    assert "One row per claimant (a person with a claim to one benefit)." in text
    if contract["contract"] == "C-DEMO-001":
        assert "- Population: the claimants selected by dataset claimants; payments hold records of those " \
               "claimants only." in text
        assert "Weekly amount awarded. Unit: GBP per week." in text
        assert "- `sex`: F = Female; M = Male" in text and "- `benefit_code`: SP = State Pension;" in text
    else:
        assert "- Population: the persons selected by dataset claimants." in text


def raw_identifiers(url: str, catalogue: Any) -> dict[str, set[str]]:
    """Every value of every catalogued identifier column of the source: {column: set of raw texts}."""
    found: dict[str, set[str]] = {}
    for table in catalogue.tables:
        for column in catalogue.identifiers(table):
            found[f"{table}.{column}"] = {str(r[0]) for r in rows(url, f"SELECT {column} FROM {table}")
                                          if r[0] is not None}
    assert all(found.values()) and len(found) == 7
    return found


def no_raw_identifier(files: list[Path], parquet_files: list[Path], raw: dict[str, set[str]], catalogue: Any,
                      contract: dict) -> None:
    every = {canonical(v) for values in raw.values() for v in values}
    # 1. Values: every delivered value of every column, as text.
    for parquet in parquet_files:
        table = pq.read_table(parquet)
        for name in table.column_names:
            delivered = {canonical(v) for v in table.column(name).to_pylist() if v is not None}
            leaked = delivered & every
            assert not leaked, f"{parquet.name}.{name}: {len(leaked)} raw identifier(s) delivered"
    # 2. The footer: no statistics of identifier columns at all; no statistic anywhere equal to an identifier.
    by_dataset = {d["name"]: d for d in contract["datasets"]}
    for parquet in parquet_files:
        metadata = pq.ParquetFile(parquet).metadata
        dataset = by_dataset.get(parquet.stem)
        protected = set() if dataset is None else {
            c for c in dataset["columns"] if (col := catalogue.column(dataset["table"], c)) is not None
            and col.class_ in ("identifier", "free_text")}
        for g in range(metadata.num_row_groups):
            group = metadata.row_group(g)
            for i in range(group.num_columns):
                chunk = group.column(i)
                stats = chunk.statistics
                if stats is None or not stats.has_min_max:
                    continue
                assert chunk.path_in_schema not in protected, f"{parquet.name}: statistics of {chunk.path_in_schema}"
                assert canonical(stats.min) not in every and canonical(stats.max) not in every
    # 3. Bytes: no raw identifier text (long enough not to occur by chance) in any file of the package.
    needles = sorted({v.encode() for values in raw.values() for v in values if len(v) >= 6})
    assert len(needles) > 100
    for file in files:
        if file.is_file():
            content = file.read_bytes()
            assert not [n for n in needles if n in content], f"{file.name} holds raw identifier text"


def population_only(workspace: Workspace, contract: str, data: dict, url: str, out: Path) -> None:
    master = bytes.fromhex(workspace.keys["master"].read_text().strip())
    key = expected_contract_key(master, "pseudonym", contract)
    population = data["population"]
    defining = next(d for d in data["datasets"] if d["name"] == population["dataset"])
    people = rows(url, "SELECT id, nino, claim_start, benefit_code FROM claimants")
    if population["entity"] == "claimant":
        identify = {expected_pseudonym(key, "claimant", str(r[0])): r for r in people}
        column = "id"
    else:
        identify = {expected_pseudonym(key, "person", canonical(r[1])): r for r in people}
        column = "nino"

    def selected(row: tuple[Any, ...]) -> bool:
        for name, condition in (defining.get("filter") or {}).items():
            value = {"claim_start": row[2], "benefit_code": row[3]}[name]
            if isinstance(value, str) and name == "claim_start":
                value = dt.date.fromisoformat(value[:10])
            for op, bound in condition.items():
                if op == "gte" and not value >= bound:
                    return False
                if op == "in" and value not in bound:
                    return False
        return True

    delivered_people = pq.read_table(out / "data" / f"{defining['name']}.parquet").column(column).to_pylist()
    members = [identify[p] for p in delivered_people]  # KeyError: a pseudonym of nobody in the source
    assert all(selected(m) for m in members), "a delivered claimant is outside the population's filter"
    if "sample" not in data:
        assert len(members) == sum(1 for r in people if selected(r)), "the whole population is delivered"
    if any(d["name"] == "payments" for d in data["datasets"]):
        member_ids = {m[0] for m in members}
        payments = pq.read_table(out / "data" / "payments.parquet").column("claimant_id").to_pylist()
        payers = [identify[p][0] for p in payments]
        outside = [p for p in payers if p not in member_ids]
        assert not outside, f"{len(outside)} payment(s) of people outside the population"
        source_payments = [r[0] for r in rows(url, "SELECT claimant_id FROM payments") if r[0] in member_ids]
        assert len(payments) == len(source_payments), "every payment of the population, and no other"
        assert len(payments) < len(rows(url, "SELECT id FROM payments")), "the filter excluded some payments"
