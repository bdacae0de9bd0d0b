"""End to end through real Airflow (`airflow dags test`), as a newcomer and a contractor would see it.

`contract-extracts demo` runs both demo contracts; the packages then decrypt with the Debian `age`
CLI and with `contract-extracts decrypt`; tampering makes `decrypt` refuse; the same person carries
unrelated pseudonyms in the two contractors' packages; a repeat demo run adds a delivery, reuses the
approval and overwrites nothing; a contract naming a column the source lacks, or changed since its
approval, fails its DAG run with a `blocked` record and nothing in the drop folder; a partitioned
contract delivers from PostgreSQL.

The demo state is made once per session (`demo_state`, tests/conftest.py) and only read here. The DAG runs of
changed contracts each work on their own copy of it and start together, in the background, when this module's
first such test asks for them: each run is mostly one process starting Airflow, its execution API and Great
Expectations, so the machine's cores run them side by side in little more than the time of one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import shutil
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pyrage
import pytest
import yaml
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from audit.ledger import Ledger
from audit.opening import load_ledger_key
from contracts.catalogue import catalogue_path
from demo.runner import DEMO_RUN_CONF, airflow_environment, approve_demo_contracts
from demo.synthetic import write_demo_source
from tests.conftest import REPO, airflow_uri, temporary_database
from tests.e2e.demo_state import (
    CLI,
    REPEATED_CONTRACT,
    DemoState,
    approvals_authorising,
    approvals_recorded,
    approvals_reused,
    copy_state,
    demo_env,
    sha256_of,
)
from tests.ui import servers

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


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


def test_demo_prints_packages_and_summary(demo_state: DemoState) -> None:
    first = demo_state.first
    assert "audit ledger:" in first.stdout and "chain verified" in first.stdout
    assert "age -d -i" in first.stdout
    assert "approved by demo-approver (Information Asset Manager)" in first.stdout
    assert first.stdout.count("authorised by: demo-approver (information-asset-manager, approval #") == 2
    assert all(Path(p).exists() and Path(i).exists() for p, i in first.deliveries)
    assert Path(first.sender_key).exists()


def test_second_demo_run_makes_new_deliveries_and_overwrites_nothing(demo_state: DemoState) -> None:
    first, second = demo_state.first.deliveries, demo_state.second.deliveries
    assert [Path(p).name.split("_")[0] for p, _ in second] == [REPEATED_CONTRACT]
    assert {p for p, _ in first}.isdisjoint({p for p, _ in second})
    assert all(Path(p).exists() for p, _ in first + second)
    assert {p: sha256_of(p) for p, _ in first} == demo_state.first_digests, "a first-run package was rewritten"


def test_packages_decrypt_with_the_age_cli_and_verify_with_our_cli(demo_state: DemoState, tmp_path: Path) -> None:
    sender = demo_state.first.sender_key
    for n, (package, identity) in enumerate(demo_state.first.deliveries):
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
def test_one_flipped_byte_makes_decrypt_refuse(demo_state: DemoState, tmp_path: Path, where: float) -> None:
    package, identity = demo_state.first.deliveries[0]
    data = bytearray(Path(package).read_bytes())
    data[int(len(data) * where)] ^= 0x01
    tampered = tmp_path / "tampered.tar.age"
    tampered.write_bytes(bytes(data))
    out = tmp_path / "out"
    proc = subprocess.run([CLI, "decrypt", str(tampered), "--identity", identity, "--sender-key",
                           demo_state.first.sender_key, "--out", str(out)], capture_output=True, text=True,
                          check=False)
    assert proc.returncode != 0
    assert "error:" in proc.stderr
    assert not out.exists()
    assert not list(tmp_path.glob(".out.incoming-*"))


def test_tampered_manifest_is_refused(demo_state: DemoState, tmp_path: Path) -> None:
    package, identity = demo_state.first.deliveries[0]
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
    proc = subprocess.run([CLI, "decrypt", str(forged), "--identity", identity, "--sender-key",
                           demo_state.first.sender_key, "--out", str(tmp_path / "out")], capture_output=True,
                          text=True, check=False)
    assert proc.returncode != 0 and "signature" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_same_person_has_unrelated_pseudonyms_in_the_two_contracts(demo_state: DemoState, tmp_path: Path) -> None:
    columns = {}
    for n, (package, identity) in enumerate(demo_state.first.deliveries):
        out = tmp_path / f"p{n}"
        age_decrypt(package, identity, out)
        contract = Path(package).name.split("_")[0]
        columns[contract] = set(pq.read_table(out / "data" / "claimants.parquet").column("nino").to_pylist())
    assert columns["C-DEMO-001"] and columns["C-DEMO-002"]
    assert columns["C-DEMO-001"].isdisjoint(columns["C-DEMO-002"]), "no pseudonym may be shared"

    home = demo_state.home
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


def test_audit_ledger_verifies_after_the_demo(demo_state: DemoState) -> None:
    env = demo_env(demo_state.home)
    proc = subprocess.run([CLI, "audit", "verify"], env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    shown = subprocess.run([CLI, "audit", "show", "--contract", "C-DEMO-001", "--action", "delivered"], env=env,
                           capture_output=True, text=True, check=True).stdout
    assert shown.count("delivered") == 2


def test_second_demo_run_reuses_the_approvals(demo_state: DemoState) -> None:
    first, second = demo_state.first.stdout, demo_state.second.stdout
    signed = approvals_recorded(first)
    assert set(signed) == {"C-DEMO-001", "C-DEMO-002"}
    assert approvals_authorising(first) == signed
    assert second.count("already approved by demo-approver") == 1
    assert approvals_recorded(second) == {}, "the repeat run signed a new approval"
    assert approvals_reused(second) == {REPEATED_CONTRACT: signed[REPEATED_CONTRACT]}
    assert approvals_authorising(second) == {REPEATED_CONTRACT: signed[REPEATED_CONTRACT]}


# ---- DAG runs of changed contracts, each on its own copy of the demo state -------------------------------------


@dataclass
class BackgroundDagTest:
    """`airflow dags test contract_c_demo_002` running on a private copy of the demo state, output in ``log``."""

    home: Path
    drop_before: list[Path]
    log: Path
    proc: subprocess.Popen[bytes]

    def finish(self, timeout: float) -> tuple[int, str]:
        """Wait for the run; its exit status and output."""
        code = self.proc.wait(timeout=timeout)
        return code, self.log.read_text(errors="replace")

    def drop(self) -> list[Path]:
        """The packages in the drop folder now."""
        return sorted((self.home / "drop").rglob("*.tar.age"))

    def audit_show(self, *args: str) -> str:
        return subprocess.run([CLI, "audit", "show", "--contract", "C-DEMO-002", *args, "--json"],
                              env=demo_env(self.home), capture_output=True, text=True, check=True).stdout


def start_changed_demo_002(demo: DemoState, root: Path, change: Callable[[dict[str, Any]], None], *, approve: bool,
                           connections: dict[str, str] | None = None,
                           change_catalogue: Callable[[dict[str, Any]], None] | None = None) -> BackgroundDagTest:
    """Copy the demo state, change C-DEMO-002 (and its source's catalogue, with ``change_catalogue``), approve the
    changes when ``approve``, and start the contract's DAG run."""
    home = copy_state(demo.home, root / "state")
    config_dir = root / "configs"  # the demo's configuration (approvers, source catalogues), with the changed contract
    shutil.copytree(home / "demo" / "configs", config_dir, ignore=shutil.ignore_patterns("contracts"))
    (config_dir / "contracts").mkdir()
    data = yaml.safe_load((home / "demo" / "configs" / "contracts" / "C-DEMO-002.yaml").read_text())
    change(data)
    if change_catalogue:
        catalogue_file = catalogue_path(config_dir, data["source"]["connection"])
        catalogue = yaml.safe_load(catalogue_file.read_text())
        change_catalogue(catalogue)
        catalogue_file.write_text(yaml.safe_dump(catalogue, sort_keys=False))
    contract = config_dir / "contracts" / "C-DEMO-002.yaml"
    contract.write_text(yaml.safe_dump(data, sort_keys=False))
    if approve:  # the gate runs only approved content: approve the change so the run gets past authorise
        # The demo's ledger is keyed (make demo wrote <home>/keys/ledger.key): approve with that key.
        with Ledger(f"sqlite:///{home / 'ledger.sqlite'}",
                    key=load_ledger_key(env={"CONTRACT_EXTRACTS_HOME": str(home)})) as ledger:
            approve_demo_contracts([contract], config_dir / "approvers.yaml", home / "keys" / "demo-approver", ledger)
    keys = {"master": home / "keys" / "master.key", "signing": home / "keys" / "sender-signing.key"}
    connections = connections or {"demo_claims": f"sqlite:///{home / 'demo' / 'claims.sqlite'}"}
    env = airflow_environment(home=home, dags_dir=REPO / "dags", config_dir=config_dir, keys=keys,
                              connections=connections, base=demo_env(home))
    drop_before = sorted((home / "drop").rglob("*.tar.age"))
    log = root / "dags-test.log"
    proc = servers.start(["airflow", "dags", "test", "contract_c_demo_002", "--conf", json.dumps(DEMO_RUN_CONF)],
                         env, log)
    return BackgroundDagTest(home=home, drop_before=drop_before, log=log, proc=proc)


def _add_column(name: str) -> Callable[[dict[str, Any]], None]:
    return lambda data: data["datasets"][0]["columns"].update({name: {"treatment": "keep"}})


def _start_unapproved_change(demo: DemoState, root: Path, _stack: ExitStack) -> BackgroundDagTest:
    return start_changed_demo_002(demo, root, _add_column("sex"), approve=False)  # a real column, not approved


def _start_missing_column(demo: DemoState, root: Path, _stack: ExitStack) -> BackgroundDagTest:
    def catalogue_shoe_size(catalogue: dict[str, Any]) -> None:  # catalogued (so approvable), but not in the table
        catalogue["tables"]["claimants"]["columns"]["shoe_size"] = {"class": "other", "description": "Shoe size."}

    return start_changed_demo_002(demo, root, _add_column("shoe_size"), approve=True,
                                  change_catalogue=catalogue_shoe_size)


def _start_partitioned_from_postgresql(demo: DemoState, root: Path, stack: ExitStack) -> BackgroundDagTest:
    url = stack.enter_context(temporary_database("postgresql"))
    write_demo_source(url, n_people=800)

    def partitioned(data: dict[str, Any]) -> None:
        data["datasets"][0]["partition"] = {"column": "id", "parts": 3}

    # The demo's catalogued source, demo_claims, is the same synthetic data in PostgreSQL here.
    return start_changed_demo_002(demo, root, partitioned, approve=True,
                                  connections={"demo_claims": airflow_uri(url)})


@dataclass
class DagTests:
    """The background DAG runs by name, and why any of them could not be started."""

    started: dict[str, BackgroundDagTest] = field(default_factory=dict)
    not_started: dict[str, BaseException] = field(default_factory=dict)

    def __getitem__(self, name: str) -> BackgroundDagTest:
        if name in self.not_started:
            raise self.not_started[name]
        return self.started[name]


DAG_TESTS: dict[str, Callable[[DemoState, Path, ExitStack], BackgroundDagTest]] = {
    "unapproved-change": _start_unapproved_change,
    "missing-column": _start_missing_column,
    "partitioned-postgresql": _start_partitioned_from_postgresql,
}


@pytest.fixture(scope="module")
def dag_tests(demo_state: DemoState, request: pytest.FixtureRequest,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[DagTests]:
    """The DAG runs named by the `dag_test` markers of the selected tests, all started at once."""
    wanted = {marker.args[0] for item in request.session.items for marker in item.iter_markers("dag_test")}
    runs = DagTests()
    with ExitStack() as stack:
        try:
            for name, start in DAG_TESTS.items():
                if name in wanted:
                    try:
                        runs.started[name] = start(demo_state, tmp_path_factory.mktemp(name), stack)
                    except (Exception, pytest.fail.Exception) as exc:  # fails that one test, not the others
                        runs.not_started[name] = exc
            yield runs
        finally:
            for run in runs.started.values():  # whatever a failed test left running, with anything it started
                servers.stop(run.proc)


@pytest.mark.dag_test("unapproved-change")
def test_dag_run_of_an_unapproved_change_is_blocked_at_authorise(dag_tests: DagTests) -> None:
    run = dag_tests["unapproved-change"]
    code, _output = run.finish(timeout=300)
    assert code != 0
    assert run.drop() == run.drop_before, "nothing may be delivered"
    last = json.loads(run.audit_show("--action", "blocked").splitlines()[-1])
    assert last["details"]["stage"] == "authorise"
    assert "changed since approval" in last["details"]["reason"] and "column sex added" in last["details"]["reason"]


@pytest.mark.dag_test("missing-column")
def test_dag_run_with_a_column_missing_from_the_source_is_blocked(dag_tests: DagTests) -> None:
    run = dag_tests["missing-column"]
    code, _output = run.finish(timeout=300)
    assert code != 0
    assert run.drop() == run.drop_before, "nothing may be delivered"
    blocked = run.audit_show("--action", "blocked")
    assert "shoe_size" in blocked and '"stage": "extract"' in blocked
    assert not list((run.home / "staging").rglob("*.parquet")), "staging is removed after a failed run"


@pytest.mark.integration
@pytest.mark.dag_test("partitioned-postgresql")
def test_partitioned_delivery_from_postgresql_through_airflow(dag_tests: DagTests,
                                                              tmp_path: Path) -> None:
    """Mapped partition tasks read one exported snapshot, held by a process that outlives the plan task."""
    run = dag_tests["partitioned-postgresql"]
    code, output = run.finish(timeout=400)
    assert code == 0, output[-6000:]
    (package,) = set(run.drop()) - set(run.drop_before)
    delivery = package.name.removesuffix(".tar.age").split("_", 1)[1]
    actions = [json.loads(line)["action"] for line in run.audit_show().splitlines()
               if json.loads(line)["delivery"] == delivery]
    assert "partitions_planned" in actions and "snapshot_released" in actions and "delivered" in actions
    out = tmp_path / "out"
    subprocess.run([CLI, "decrypt", str(package),
                    "--identity", str(run.home / "demo" / "identities" / "borealis-analyst.txt"),
                    "--sender-key", str(run.home / "keys" / "sender-signing.pub"), "--out", str(out)], check=True,
                   capture_output=True)
    assert pq.read_table(out / "data" / "claimants.parquet").num_rows == 800
