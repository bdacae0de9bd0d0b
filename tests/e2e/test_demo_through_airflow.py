"""End to end through real Airflow (`airflow dags test`), as a newcomer and a contractor would see it.

`contract-extracts demo` runs both demo contracts; the packages then decrypt with the Debian `age`
CLI and with `contract-extracts decrypt`; tampering makes `decrypt` refuse; the same person carries
unrelated pseudonyms in the two contractors' packages; a contract naming a column the source lacks
fails its DAG run with a `blocked` record and nothing in the drop folder.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tests.conftest import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
CLI = str(Path(sys.executable).parent / "contract-extracts")


def demo_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "CONTRACT_EXTRACTS"))}
    env.update(CONTRACT_EXTRACTS_HOME=str(home), CONTRACT_EXTRACTS_REPO=str(REPO))
    return env


def run_demo(home: Path) -> tuple[subprocess.CompletedProcess, list[tuple[str, str]], str]:
    proc = subprocess.run([CLI, "demo", "--people", "1500"], env=demo_env(home), capture_output=True,
                          text=True, timeout=600, check=False, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    lines = proc.stdout.splitlines()
    packages = [line.removeprefix("package: ") for line in lines if line.startswith("package: ")]
    identities = [line.removeprefix("identity: ") for line in lines if line.startswith("identity: ")]
    senders = [line.removeprefix("sender-key: ") for line in lines if line.startswith("sender-key: ")]
    assert len(packages) == len(identities) == 2 and len(senders) == 1, proc.stdout
    return proc, list(zip(packages, identities, strict=True)), senders[0]


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("demo") / "state"
    first = run_demo(home)
    second = run_demo(home)
    return home, first, second


def pseudonym(master: bytes, contract: str, entity: str, value: str) -> str:
    """design.md, format v1, computed independently of the code under test."""
    info = f"contract-extracts/v1/pseudonym/{contract}".encode()
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(master)
    canonical = "".join(value.split()).upper()
    return hmac.new(key, f"{entity}\x00{canonical}".encode(), hashlib.sha256).hexdigest()[:32]


def age_decrypt(package: str, identity: str, out: Path) -> None:
    assert shutil.which("age"), "the Debian 'age' CLI is needed (make test installs it)"
    out.mkdir()
    plain = subprocess.run(["age", "-d", "-i", identity, package], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=plain, check=True)


def test_demo_prints_packages_and_summary(demo_runs) -> None:
    _home, (proc, deliveries, sender), _second = demo_runs
    assert "audit ledger:" in proc.stdout and "chain verified" in proc.stdout
    assert "age -d -i" in proc.stdout
    assert "approved by demo-approver (Information Asset Manager)" in proc.stdout
    assert proc.stdout.count("authorised by: demo-approver (information-asset-manager, approval #") == 2
    assert all(Path(p).exists() and Path(i).exists() for p, i in deliveries)
    assert Path(sender).exists()


def test_second_demo_run_makes_new_deliveries_and_overwrites_nothing(demo_runs) -> None:
    _home, (_p1, first, _s1), (_p2, second, _s2) = demo_runs
    assert {p for p, _ in first}.isdisjoint({p for p, _ in second})
    assert all(Path(p).exists() for p, _ in first + second)


def test_packages_decrypt_with_the_age_cli_and_verify_with_our_cli(demo_runs, tmp_path: Path) -> None:
    _home, (_proc, deliveries, sender), _second = demo_runs
    for n, (package, identity) in enumerate(deliveries):
        by_age = tmp_path / f"age{n}"
        age_decrypt(package, identity, by_age)
        assert (by_age / "manifest.json").exists() and (by_age / "codebook.md").exists()
        ours = tmp_path / f"ours{n}"
        out = subprocess.run([CLI, "decrypt", package, "--identity", identity, "--sender-key", sender,
                              "--out", str(ours)], capture_output=True, text=True, check=False)
        assert out.returncode == 0, out.stderr
        assert "signature: verified" in out.stdout
        for f in by_age.rglob("*"):
            if f.is_file():
                assert f.read_bytes() == (ours / f.relative_to(by_age)).read_bytes()
        if shutil.which("openssl"):
            subprocess.run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", sender, "-rawin", "-in",
                            str(ours / "manifest.json"), "-sigfile", str(ours / "manifest.sig")],
                           check=True, capture_output=True)


@pytest.mark.parametrize("where", [0.1, 0.5, 0.9], ids=["near-start", "middle", "near-end"])
def test_one_flipped_byte_makes_decrypt_refuse(demo_runs, tmp_path: Path, where: float) -> None:
    _home, (_proc, deliveries, sender), _second = demo_runs
    package, identity = deliveries[0]
    data = bytearray(Path(package).read_bytes())
    data[int(len(data) * where)] ^= 0x01
    tampered = tmp_path / "tampered.tar.age"
    tampered.write_bytes(bytes(data))
    out = tmp_path / "out"
    proc = subprocess.run([CLI, "decrypt", str(tampered), "--identity", identity, "--sender-key", sender,
                           "--out", str(out)], capture_output=True, text=True, check=False)
    assert proc.returncode != 0
    assert "error:" in proc.stderr
    assert not out.exists()
    assert not list(tmp_path.glob(".out.incoming-*"))


def test_tampered_manifest_is_refused(demo_runs, tmp_path: Path) -> None:
    import pyrage

    _home, (_proc, deliveries, sender), _second = demo_runs
    package, identity = deliveries[0]
    plain = tmp_path / "plain"
    age_decrypt(package, identity, plain)
    manifest = plain / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"linkage": "contract"', '"linkage": "delivery"'))
    members = sorted(str(f.relative_to(plain)) for f in plain.rglob("*") if f.is_file())
    tar = subprocess.run(["tar", "-c", "-C", str(plain), *members], capture_output=True, check=True).stdout
    recipient = next(line.split(": ")[1] for line in Path(identity).read_text().splitlines()
                     if line.startswith("# public key"))
    forged = tmp_path / "forged.tar.age"
    forged.write_bytes(pyrage.encrypt(tar, [pyrage.x25519.Recipient.from_str(recipient)]))
    proc = subprocess.run([CLI, "decrypt", str(forged), "--identity", identity, "--sender-key", sender,
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, check=False)
    assert proc.returncode != 0 and "signature" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_same_person_has_unrelated_pseudonyms_in_the_two_contracts(demo_runs, tmp_path: Path) -> None:
    home, (_proc, deliveries, _sender), _second = demo_runs
    columns = {}
    for n, (package, identity) in enumerate(deliveries):
        out = tmp_path / f"p{n}"
        age_decrypt(package, identity, out)
        contract = Path(package).name.split("_")[0]
        columns[contract] = set(pq.read_table(out / "data" / "claimants.parquet").column("nino").to_pylist())
    assert columns["C-DEMO-001"] and columns["C-DEMO-002"]
    assert columns["C-DEMO-001"].isdisjoint(columns["C-DEMO-002"]), "no pseudonym may be shared"

    master = bytes.fromhex((home / "keys" / "master.key").read_text().strip())
    with sqlite3.connect(home / "demo" / "claims.sqlite") as db:
        ninos = [row[0] for row in db.execute(
            "SELECT nino FROM claimants WHERE claim_start >= '2016-01-01' ORDER BY id LIMIT 50")]
    assert len(ninos) == 50
    for nino in ninos:
        first, second = (pseudonym(master, c, "person", nino) for c in ("C-DEMO-001", "C-DEMO-002"))
        assert first in columns["C-DEMO-001"]
        assert second in columns["C-DEMO-002"]
        assert first != second
        spaced = f"{nino[:2].lower()} {nino[2:4]} {nino[4:6]} {nino[6:8]} {nino[8:].lower()}"
        assert pseudonym(master, "C-DEMO-001", "person", spaced) == first


def test_audit_ledger_verifies_after_the_demo(demo_runs) -> None:
    home, *_ = demo_runs
    env = demo_env(home)
    proc = subprocess.run([CLI, "audit", "verify"], env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    shown = subprocess.run([CLI, "audit", "show", "--contract", "C-DEMO-001", "--action", "delivered"], env=env,
                           capture_output=True, text=True, check=True).stdout
    assert shown.count("delivered") == 2


def test_second_demo_run_reuses_the_approvals(demo_runs) -> None:
    _home, _first, (proc, _deliveries, _sender) = demo_runs
    assert proc.stdout.count("already approved by demo-approver") == 2


def run_failing_demo_002(home: Path, config_dir: Path, change, *, approve: bool) -> str:
    """Run a changed C-DEMO-002 through `airflow dags test`; assert it fails and delivers nothing.

    Returns the contract's `blocked` ledger records as JSON lines.
    """
    from audit.ledger import Ledger
    from demo.runner import airflow_environment, approve_demo_contracts

    (config_dir / "contracts").mkdir(parents=True)
    shutil.copy(home / "demo" / "configs" / "approvers.yaml", config_dir / "approvers.yaml")
    data = yaml.safe_load((home / "demo" / "configs" / "contracts" / "C-DEMO-002.yaml").read_text())
    change(data)
    contract = config_dir / "contracts" / "C-DEMO-002.yaml"
    contract.write_text(yaml.safe_dump(data, sort_keys=False))
    if approve:  # the gate runs only approved content: approve the change so the run gets past authorise
        with Ledger(f"sqlite:///{home / 'ledger.sqlite'}") as ledger:
            approve_demo_contracts([contract], config_dir / "approvers.yaml", home / "keys" / "demo-approver", ledger)
    keys = {"master": home / "keys" / "master.key", "signing": home / "keys" / "sender-signing.key"}
    env = airflow_environment(home=home, dags_dir=REPO / "dags", config_dir=config_dir, keys=keys,
                              connections={"demo_claims": f"sqlite:///{home / 'demo' / 'claims.sqlite'}"},
                              base=demo_env(home))
    drop_before = sorted((home / "drop").rglob("*.tar.age"))
    proc = subprocess.run(["airflow", "dags", "test", "contract_c_demo_002"], env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode != 0
    assert sorted((home / "drop").rglob("*.tar.age")) == drop_before, "nothing may be delivered"
    return subprocess.run([CLI, "audit", "show", "--contract", "C-DEMO-002", "--action", "blocked", "--json"],
                          env=demo_env(home), capture_output=True, text=True, check=True).stdout


def test_dag_run_of_an_unapproved_change_is_blocked_at_authorise(demo_runs, tmp_path: Path) -> None:
    home, *_ = demo_runs
    blocked = run_failing_demo_002(  # a real column, but not approved
        home, tmp_path / "configs", lambda d: d["datasets"][0]["columns"].update(sex={"treatment": "keep"}),
        approve=False)
    last = json.loads(blocked.splitlines()[-1])
    assert last["details"]["stage"] == "authorise"
    assert "changed since approval" in last["details"]["reason"] and "column sex added" in last["details"]["reason"]


def test_dag_run_with_a_column_missing_from_the_source_is_blocked(demo_runs, tmp_path: Path) -> None:
    home, *_ = demo_runs
    blocked = run_failing_demo_002(
        home, tmp_path / "configs", lambda d: d["datasets"][0]["columns"].update(shoe_size={"treatment": "keep"}),
        approve=True)
    assert "shoe_size" in blocked and '"stage": "extract"' in blocked
    assert not list((home / "staging").rglob("*.parquet")), "staging is removed after a failed run"


@pytest.mark.integration
def test_partitioned_delivery_from_postgresql_through_airflow(demo_runs, tmp_path: Path) -> None:
    """Mapped partition tasks read one exported snapshot, held by a process that outlives the plan task."""
    from audit.ledger import Ledger
    from demo.runner import airflow_environment, approve_demo_contracts
    from demo.synthetic import write_demo_source
    from tests.conftest import airflow_uri, temporary_database

    home, *_ = demo_runs
    with temporary_database("postgresql") as url:
        write_demo_source(url, n_people=800)
        config_dir = tmp_path / "configs"
        (config_dir / "contracts").mkdir(parents=True)
        shutil.copy(home / "demo" / "configs" / "approvers.yaml", config_dir / "approvers.yaml")
        data = yaml.safe_load((home / "demo" / "configs" / "contracts" / "C-DEMO-002.yaml").read_text())
        data["source"] = {"connection": "demo_pg"}
        data["datasets"][0]["partition"] = {"column": "id", "parts": 3}
        contract = config_dir / "contracts" / "C-DEMO-002.yaml"
        contract.write_text(yaml.safe_dump(data, sort_keys=False))
        with Ledger(f"sqlite:///{home / 'ledger.sqlite'}") as ledger:
            approve_demo_contracts([contract], config_dir / "approvers.yaml", home / "keys" / "demo-approver", ledger)
        keys = {"master": home / "keys" / "master.key", "signing": home / "keys" / "sender-signing.key"}
        env = airflow_environment(home=home, dags_dir=REPO / "dags", config_dir=config_dir, keys=keys,
                                  connections={"demo_pg": airflow_uri(url)}, base=demo_env(home))
        drop_before = set((home / "drop").rglob("*.tar.age"))
        proc = subprocess.run(["airflow", "dags", "test", "contract_c_demo_002"], env=env, capture_output=True,
                              text=True, timeout=400, check=False)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        new = set((home / "drop").rglob("*.tar.age")) - drop_before
        assert len(new) == 1
        shown = subprocess.run([CLI, "audit", "show", "--contract", "C-DEMO-002", "--json"], env=demo_env(home),
                               capture_output=True, text=True, check=True).stdout
        delivery = new.pop().name.removesuffix(".tar.age").split("_", 1)[1]
        actions = [json.loads(line)["action"] for line in shown.splitlines()
                   if json.loads(line)["delivery"] == delivery]
        assert "partitions_planned" in actions and "snapshot_released" in actions and "delivered" in actions
        out = tmp_path / "out"
        subprocess.run([CLI, "decrypt", str(next(p for p in (home / "drop").rglob(f"*{delivery}*"))),
                        "--identity", str(home / "demo" / "identities" / "borealis-analyst.txt"),
                        "--sender-key", str(home / "keys" / "sender-signing.pub"), "--out", str(out)], check=True,
                       capture_output=True)
        assert pq.read_table(out / "data" / "claimants.parquet").num_rows == 800
