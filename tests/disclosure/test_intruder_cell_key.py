"""Cell-key perturbation end to end: real aggregate deliveries, recomputed from the documented formulas.

The test holds the master key, so it recomputes every person's record key (HKDF info
"contract-extracts/v1/record-key/<source connection>", first byte of HMAC-SHA256 over "person" 0x00 NINO), every
cell's key (sum mod 256) and every published count (the ptable printed in docs/disclosure.md), and compares
with what the recipient decrypted. The same cell must get the same noise in every release and every contract over
the source (so averaging releases gains nothing), no 1s or 2s may be published, and the intruder's attacks must
not pin a small cell down.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from demo.synthetic import write_demo_source
from disclosure.ptable import DEFAULT_PTABLE
from masking.keys import derive_key, load_master_key_file
from masking.sampling import fraction_cut, ranks
from tests.conftest import Workspace
from tests.disclosure.intruder import RECIPIENT, edit_contract, pipeline, receive, run_through
from tests.disclosure.table_attacks import TrueCell, attack, cell_key

PEOPLE = 4000
TABLE = {"name": "people_by_region_benefit", "dataset": "claimants", "by": ["region", "benefit_code"],
         "measures": ["count"], "unit": "nino", "protection": "cell_key"}
BY_YEAR = {"name": "people_by_year_region", "dataset": "claimants", "by": ["date_of_birth", "region"],
           "measures": ["count"], "unit": "nino", "protection": "cell_key"}  # about 5 people a cell: 1s and 2s


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('source') / 'claims.sqlite'}"
    write_demo_source(url, n_people=PEOPLE)
    return url


def people(url: str, where: str = "") -> list[dict[str, Any]]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(sa.text(
            f"SELECT id, nino, region, benefit_code, date_of_birth FROM claimants {where}"))]
    engine.dispose()
    for r in rows:
        r["date_of_birth"] = int(str(r["date_of_birth"])[:4])  # the contract generalises it to the year
    return rows


def record_key(workspace: Workspace, nino: str) -> int:
    """The documented formula, by hand."""
    master = load_master_key_file(workspace.keys["master"]).secret
    secret = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                  info=b"contract-extracts/v1/record-key/demo_claims").derive(master)
    canonical = "".join(nino.split()).upper()
    return hmac.new(secret, b"person\x00" + canonical.encode(), hashlib.sha256).digest()[0]


def expected_table(workspace: Workspace, rows: list[dict[str, Any]], by: list[str],
                   factor: float = 1.0) -> tuple[dict, dict]:
    """(cell → published count, cell → truth) from the formulas; cells perturbed to 0 are absent."""
    units: dict[tuple, set[str]] = defaultdict(set)
    for r in rows:
        for mask in range(1 << len(by)):
            units[tuple(("T", None) if (mask >> j) & 1 else ("v", r[d]) for j, d in enumerate(by))].add(r["nino"])
    keys = {n: record_key(workspace, n) for r in rows for n in [r["nino"]]}
    published, truth = {}, {}
    for cell, members in units.items():
        key = sum(keys[n] for n in members) % 256
        value = DEFAULT_PTABLE.perturb(len(members), key)
        truth[cell] = TrueCell(units=len(members), count=len(members) * factor, nonempty={})
        if value:
            published[cell] = round(value * factor)
    return published, truth


def received_tables(workspace: Workspace, run, out: Path, contract: str) -> dict[str, tuple[dict, dict, Any]]:
    """Per table: (cell → published count, its manifest summary, the table); also "_folder"."""
    received = receive(workspace, run, out, recipient=RECIPIENT.get(contract, RECIPIENT["C-DEMO-002"]))
    manifest = json.loads((received / "manifest.json").read_text())
    out_tables: dict[str, Any] = {"_folder": received}
    for summary in manifest["disclosure"]["aggregates"]:
        table = pq.read_table(received / summary["file"])
        out_tables[summary["name"]] = ({cell_key(r, summary["by"]): r["count"] for r in table.to_pylist()},
                                       summary, table)
    return out_tables


def test_same_cells_same_noise_in_every_release_and_contract(workspace: Workspace, source: str,
                                                             tmp_path: Path) -> None:
    change = lambda d: d.update(aggregates=[TABLE, BY_YEAR], microdata=False)  # noqa: E731
    edit_contract(workspace, "C-DEMO-002", change)
    edit_contract(workspace, "C-DEMO-002", change, as_id="C-DEMO-003")  # another contract, the same people
    releases = []
    for i, contract in enumerate(("C-DEMO-002", "C-DEMO-002", "C-DEMO-003")):
        run = pipeline(workspace, contract, source)
        run_through(run)
        releases.append((run, received_tables(workspace, run, tmp_path / f"release{i}", contract)))
    rows = people(source)
    solved = 0
    for spec in (TABLE, BY_YEAR):
        first = releases[0][1][spec["name"]][0]
        for _run, tables in releases[1:]:
            assert tables[spec["name"]][0] == first, "the same cell gets the same noise in every release and contract"
        expected, truth = expected_table(workspace, rows, spec["by"])
        assert first == expected, "published counts follow the documented formulas"
        deviations = [first[c] - truth[c].units for c in first]
        assert any(deviations), "the noise is real"
        assert all(abs(d) <= DEFAULT_PTABLE.max_noise for d in deviations)
        assert not {1, 2} & set(first.values())
        solved += attack(releases[0][1][spec["name"]][2], releases[0][1][spec["name"]][1], truth)["lp"]
    assert solved > 0, "the LP attack ran on the small cells"
    small = [c for c, t in truth.items() if t.units in (1, 2)]
    assert small, "the year-by-region table has cells of 1 and 2"
    assert all(c not in first or first[c] >= 3 for c in small)

    run, tables = releases[0]
    _cells, summary, _table = tables[TABLE["name"]]
    assert summary["protection"] == "cell_key" and summary["ptable"]["rows"][0] == {"i": 0, "j": [0], "keys": [256]}
    loss = summary["information_loss"]
    assert loss["method"] == "cell_key" and "realised_mean_absolute_deviation" not in loss, \
        "the recipient gets the expected deviation, not the realised one"
    published, truth = expected_table(workspace, rows, TABLE["by"])
    report_dir = workspace.home / "reports" / "C-DEMO-002" / run.delivery_id
    report = json.loads((report_dir / "disclosure.json").read_text())
    realised = report["aggregates"][0]["information_loss"]["realised_mean_absolute_deviation"]
    total = sum(abs(published[c] - t.units) if c in published else t.units for c, t in truth.items())
    assert realised == pytest.approx(total / len(truth), abs=1e-6)
    assert "cell-key perturbation" in (report_dir / "index.html").read_text()
    codebook = (tables["_folder"] / "codebook.md").read_text()
    assert "cell-key perturbation" in codebook and "No count between 1 and 2" in codebook


def test_a_grossed_sample_delivery_perturbs_before_grossing(workspace: Workspace, source: str,
                                                            tmp_path: Path) -> None:
    table = {**TABLE, "by": ["region"]}
    edit_contract(workspace, "C-DEMO-001", lambda d: d.update(
        aggregates=[table], microdata=False, sample={"entity": "claimant", "fraction": 0.25}))
    run = pipeline(workspace, "C-DEMO-001", source)
    run_through(run)
    received = receive(workspace, run, tmp_path / "sampled", recipient=RECIPIENT["C-DEMO-001"])
    summary = json.loads((received / "manifest.json").read_text())["disclosure"]["aggregates"][0]
    published = {cell_key(r, ["region"]): r["count"] for r in pq.read_table(received / summary["file"]).to_pylist()}
    population = people(source, "WHERE claim_start >= '2016-01-01'")
    master = load_master_key_file(workspace.keys["master"])
    valid, drawn = ranks(pa.array([r["id"] for r in population], pa.int64()), canonicaliser="integer",
                         key=derive_key(master.secret, "sample", "C-DEMO-001"), entity="claimant")
    assert valid.all()
    kept = [r for r, rank in zip(population, drawn.tolist(), strict=True) if rank < fraction_cut(0.25)]
    factor = len(population) / len(kept)
    assert summary["grossed"]["factor"] == pytest.approx(factor, rel=1e-6)
    expected, truth = expected_table(workspace, kept, ["region"], factor)
    assert published == expected
    attack(pq.read_table(received / summary["file"]), summary, truth)


@pytest.mark.parametrize("treated", [False, True], ids=["microdata-as-masked", "microdata-treated"])
def test_record_keys_never_leave_staging(workspace: Workspace, source: str, tmp_path: Path, treated: bool) -> None:
    """Microdata delivered beside a cell-key table: the staging-only record keys are gone from every file."""
    disclosure = ({"quasi_identifiers": ["date_of_birth", "region"], "k": 3, "generalise": True,
                   "hierarchies": {"date_of_birth": {"bands": [5, 10]}}} if treated else None)
    edit_contract(workspace, "C-DEMO-002", lambda d: d.update(
        aggregates=[TABLE], **({"disclosure": disclosure} if disclosure else {})))
    seen: dict[str, list[str]] = {}
    run = pipeline(workspace, "C-DEMO-002", source)
    run_through(run, after_extract=lambda r: seen.update(
        staged=pq.read_schema(r.staging / "data" / "claimants.parquet").names))
    assert "__record_key__nino" in seen["staged"], "the extract staged the record keys"
    received = receive(workspace, run, tmp_path / "out", recipient=RECIPIENT["C-DEMO-002"])
    names = pq.read_schema(received / "data" / "claimants.parquet").names
    assert names == ["nino", "date_of_birth", "region", "benefit_code"]
    for path in received.rglob("*"):
        if path.is_file():
            assert b"__record_key" not in path.read_bytes(), path.name
    manifest = json.loads((received / "manifest.json").read_text())
    if treated:
        assert manifest["disclosure"]["datasets"][0]["changed"]
