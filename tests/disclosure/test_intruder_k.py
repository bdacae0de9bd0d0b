"""k that holds for an intruder who knows the target, on real pipeline output.

The intruder knows every target's real key values (year of birth, region, and for one contract the benefit they
claim: the contractor holds it), reads in the codebook how the key was coarsened, and counts the published records
that could be the target: each key value equal to the target's or suppressed (null). With nulls read as
wildcards, a group of at-risk records that all lose the same value looks safe (the issue's k=10 contract reported
k=16 while 9 suppressed people had 9 candidates); an intruder with the real values is not fooled. Every target
must have at least k candidates (and at least l distinct sensitive values among them), and the manifest must
report both views honestly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from demo.synthetic import write_demo_source
from tests.conftest import Workspace
from tests.disclosure.intruder import RECIPIENT, edit_contract, pipeline, pseudonyms_of, receive, run_through

PEOPLE = 3000
BANDS = {"date_of_birth": {"bands": [5, 10, 20]}}
CONTRACTS = {
    "k10": {"quasi_identifiers": ["date_of_birth", "region"], "k": 10, "generalise": True, "hierarchies": BANDS},
    "k3": {"quasi_identifiers": ["date_of_birth", "region"], "contractor_holds": ["benefit_code"], "k": 3,
           "generalise": True, "hierarchies": BANDS},
    "k5-l2": {"quasi_identifiers": ["date_of_birth", "region"], "sensitive": ["benefit_code"], "k": 5, "l": 2,
              "generalise": True, "hierarchies": BANDS},
}


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('source') / 'claims.sqlite'}"
    write_demo_source(url, n_people=PEOPLE)
    return url


def targets(url: str) -> dict[str, dict[str, Any]]:
    """What the intruder knows about every person: the real values, from the source."""
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT nino, date_of_birth, region, benefit_code FROM claimants")).all()
    engine.dispose()
    return {nino: {"date_of_birth": int(str(dob)[:4]), "region": region, "benefit_code": benefit}
            for nino, dob, region, benefit in rows}


def coarsen(value: int, generalised: list[dict[str, Any]], column: str) -> int:
    """The intruder applies the published coarsening (from the manifest) to the target's real value."""
    for g in generalised:
        if g["column"] == column and g["level"]:
            width = BANDS[column]["bands"][g["level"] - 1]
            return value // width * width
    return value


def candidates(real: np.ndarray, published: np.ndarray) -> np.ndarray:
    """Per target (row of ``real``): published records whose every key value is equal or suppressed (-1)."""
    match = np.ones((len(real), len(published)), dtype=bool)
    for j in range(real.shape[1]):
        match &= (published[None, :, j] == -1) | (published[None, :, j] == real[:, None, j])
    return match


def encode(published: list[list[Any]], real: list[list[Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Both sides as integer codes, one vocabulary per key column (a suppressed value is -1)."""
    pub = np.empty((len(published[0]), len(published)), dtype=np.int64)
    tru = np.empty((len(real[0]), len(real)), dtype=np.int64)
    for j, (p, r) in enumerate(zip(published, real, strict=True)):
        codes: dict[Any, int] = {}
        pub[:, j] = [-1 if v is None else codes.setdefault(v, len(codes)) for v in p]
        tru[:, j] = [codes.setdefault(v, len(codes)) for v in r]
    return pub, tru


@pytest.mark.parametrize("name", list(CONTRACTS))
def test_every_target_has_k_candidates_for_an_intruder_who_knows_it(workspace: Workspace, source: str,
                                                                    tmp_path: Path, name: str) -> None:
    setting = CONTRACTS[name]
    edit_contract(workspace, "C-DEMO-002", lambda d: d.update(disclosure=setting))
    run = pipeline(workspace, "C-DEMO-002", source)
    run_through(run)
    out = receive(workspace, run, tmp_path / name, recipient=RECIPIENT["C-DEMO-002"])
    manifest = json.loads((out / "manifest.json").read_text())
    (dataset,) = manifest["disclosure"]["datasets"]
    key = dataset["key"]
    k, level = setting["k"], setting.get("l")
    assert set(key) == set(setting["quasi_identifiers"]) | set(setting.get("contractor_holds", []))

    published = pq.read_table(out / "data" / "claimants.parquet")
    people = targets(source)
    # Who each delivered row is does not matter to the count, but the test checks it covers everyone delivered.
    ninos = list(people)
    by_pseudonym = dict(zip(pseudonyms_of(workspace, "C-DEMO-002", ninos, entity="person", canonicaliser="nino"),
                            ninos, strict=True))
    delivered = [by_pseudonym[p] for p in published.column("nino").to_pylist()]
    assert len(set(delivered)) == published.num_rows == PEOPLE

    generalised = dataset["treatment"]["generalised"]
    real_columns = [[coarsen(people[n][c], generalised, c) if c == "date_of_birth" else people[n][c]
                     for n in delivered] for c in key]
    pub_columns = [published.column(c).to_pylist() for c in key]
    pub, real = encode(pub_columns, real_columns)
    match = candidates(real, pub)
    counts = match.sum(axis=1)
    suppressed = (pub == -1).any(axis=1)
    assert suppressed.any(), "the contract needed suppression (otherwise this test proves little)"
    assert counts.min() >= k, f"{int((counts < k).sum())} targets have fewer than k={k} candidates"
    # The targets whose own record lost a value are the ones the wildcard view used to misjudge.
    assert counts[suppressed].min() >= k

    if level is not None:
        benefit = np.asarray(published.column("benefit_code").to_pylist(), dtype=object)
        distinct = [len(set(benefit[row].tolist()) - {None}) for row in match]
        assert min(distinct) >= level

    # The manifest reports both views, and the true-key view is exactly what the intruder found.
    after = dataset["after"]
    true_key = after["true_key"]
    assert true_key["k_anonymity"] == int(counts.min())
    assert true_key["records_below_k"] == 0 and after["records_below_k"] == 0
    assert after["k_anonymity"] >= true_key["k_anonymity"]
    assert true_key["uniques"] == int((counts == 1).sum()) == 0
    report = manifest["disclosure"]["risk_report"]["datasets"][0]
    assert report["true_key"]["k_anonymity"] == true_key["k_anonymity"]
    assert report["wildcard"]["k_anonymity"] == after["k_anonymity"]
    assert report["suppressed_records"] == int(suppressed.sum())
    codebook = (out / "codebook.md").read_text()
    assert "intruder who knows" in codebook and "### Risk summary" in codebook
    # The operator's report shows the same risk report, with counts and names only: no data value.
    folder = workspace.home / "reports" / "C-DEMO-002" / run.delivery_id
    pages = {name: (folder / name).read_text() for name in ("index.html", "risk.html")}
    values = {str(v) for t in people.values() for v in (t["region"], t["benefit_code"])} | set(people)
    for name, page in pages.items():
        assert "Disclosure risk" in page and "intruder knows the person" in page, name
        assert not any(v in page for v in values), f"{name} holds a data value"
    # The recipient's copies: the manifest's risk report and the codebook's risk summary, no data value either.
    summary = codebook.split("### Risk summary", 1)[1].split("\n#", 1)[0]
    assert "| " in summary, "the risk summary is a table"
    for name, text in (("manifest risk_report", json.dumps(manifest["disclosure"]["risk_report"])),
                       ("codebook risk summary", summary)):
        assert str(k) in text, name
        assert not any(v in text for v in values), f"{name} holds a data value"
