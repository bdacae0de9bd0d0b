"""The state folder `contract-extracts demo` leaves behind, made once per test session for every test that reads it.

The first run makes both demo contracts' deliveries in a fresh state folder. The second runs the same command in
the same folder from a checkout that holds only C-DEMO-001's template: that proves a repeat run keeps the keys,
source and Airflow metadata, reuses the signed approval and adds a delivery without overwriting one, for one
`airflow dags test` instead of two. Tests that change a state folder (more DAG runs, more ledger records) work on
their own copy of it (`copy_state`), so every reader sees exactly what the two demo runs left.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
CLI = str(Path(sys.executable).parent / "contract-extracts")
REPEATED_CONTRACT = "C-DEMO-001"


def demo_env(home: Path, checkout: Path = REPO) -> dict[str, str]:
    """This process's environment without Airflow or project settings, pointed at ``home`` and ``checkout``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "CONTRACT_EXTRACTS"))}
    env.update(CONTRACT_EXTRACTS_HOME=str(home), CONTRACT_EXTRACTS_REPO=str(checkout))
    return env


@dataclass(frozen=True)
class DemoRun:
    """What one `contract-extracts demo` printed: the whole stdout, each (package, identity), the sender's key."""

    stdout: str
    deliveries: list[tuple[str, str]]
    sender_key: str


@dataclass(frozen=True)
class DemoState:
    """A state folder after two demo runs; ``first_digests`` are the first run's packages' sha256 before the second."""

    home: Path
    first: DemoRun
    second: DemoRun
    first_digests: dict[str, str]


def run_demo(home: Path, *, checkout: Path = REPO, contracts: int = 2) -> DemoRun:
    proc = subprocess.run([CLI, "demo", "--people", "1500"], env=demo_env(home, checkout), capture_output=True,
                          text=True, timeout=600, check=False, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    lines = proc.stdout.splitlines()
    packages = [line.removeprefix("package: ") for line in lines if line.startswith("package: ")]
    identities = [line.removeprefix("identity: ") for line in lines if line.startswith("identity: ")]
    senders = [line.removeprefix("sender-key: ") for line in lines if line.startswith("sender-key: ")]
    assert len(packages) == len(identities) == contracts and len(senders) == 1, proc.stdout
    return DemoRun(proc.stdout, list(zip(packages, identities, strict=True)), senders[0])


def one_contract_checkout(root: Path, contract: str) -> Path:
    """A checkout as `contract-extracts demo` reads one ($CONTRACT_EXTRACTS_REPO), whose only template is ``contract``.

    Links to this repository's dags/, to everything in its configs/ but the contract templates, and to the one.
    """
    configs = root / "configs"
    (configs / "contracts").mkdir(parents=True)
    (root / "dags").symlink_to(REPO / "dags", target_is_directory=True)
    for entry in (REPO / "configs").iterdir():
        if entry.name != "contracts":
            (configs / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    name = f"{contract}.yaml"
    (configs / "contracts" / name).symlink_to(REPO / "configs" / "contracts" / name)
    return root


def sha256_of(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def make_demo_state(root: Path) -> DemoState:
    home = root / "state"
    first = run_demo(home)
    digests = {package: sha256_of(package) for package, _identity in first.deliveries}
    checkout = one_contract_checkout(root / "checkout", REPEATED_CONTRACT)
    second = run_demo(home, checkout=checkout, contracts=1)
    return DemoState(home=home, first=first, second=second, first_digests=digests)


def copy_state(home: Path, target: Path) -> Path:
    """A private copy of a demo state folder, for a test that adds to it.

    Not airflow.cfg: Airflow wrote the original's absolute paths (its metadata database among them) into it, and
    writes a fresh one for the copy's own AIRFLOW_HOME on first use.
    """
    shutil.copytree(home, target, symlinks=True, ignore=shutil.ignore_patterns("airflow.cfg"))
    return target


_APPROVAL_RECORDED = re.compile(r"^  (C-DEMO-\d+): content sha256 \S+ approved by .*ledger record #(\d+)$")
_APPROVAL_REUSED = re.compile(r"^  (C-DEMO-\d+): content sha256 \S+ already approved by demo-approver "
                              r"\(ledger record #(\d+)\)$")
_DELIVERY = re.compile(r"^(C-DEMO-\d+) → .*: delivery \S+$")
_AUTHORISED_BY = re.compile(r"^  authorised by: demo-approver \(information-asset-manager, approval #(\d+)\)$")


def approvals_recorded(stdout: str) -> dict[str, int]:
    """Contract → ledger record of the approval a demo run signed and recorded."""
    return {m[1]: int(m[2]) for m in map(_APPROVAL_RECORDED.match, stdout.splitlines()) if m}


def approvals_reused(stdout: str) -> dict[str, int]:
    """Contract → ledger record of the earlier approval a demo run found still counting (and did not sign again)."""
    return {m[1]: int(m[2]) for m in map(_APPROVAL_REUSED.match, stdout.splitlines()) if m}


def approvals_authorising(stdout: str) -> dict[str, int]:
    """Contract → the approval record its delivery's authorise step cited, from a demo run's summary."""
    cited: dict[str, int] = {}
    contract = None
    for line in stdout.splitlines():
        if delivery := _DELIVERY.match(line):
            contract = delivery[1]
        elif (authorised := _AUTHORISED_BY.match(line)) and contract:
            cited[contract] = int(authorised[1])
    return cited
