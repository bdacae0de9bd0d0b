"""``make demo``: keys, a synthetic SQLite source, the demo contracts, real Airflow runs, a summary.

Everything lives in the state folder ($CONTRACT_EXTRACTS_HOME, default ./.state), never in the repo:
    keys/master.key, keys/sender-signing.key (0600), keys/sender-signing.pub
    demo/claims.sqlite                        the synthetic source
    demo/identities/<recipient>.txt           each demo contractor's age identity (0600)
    demo/configs/contracts/*.yaml             the demo contracts with those identities as recipients
    keys/demo-approver (0600), .pub           the demo approver's OpenSSH Ed25519 key
    demo/configs/approvers.yaml               the approver registry with the demo approver's public key
    demo/configs/sources/demo_claims.yaml     the demo source's catalogue (a copy of configs/sources/)
    airflow/                                  AIRFLOW_HOME (SQLite metadata)
    drop/<contractor>/                        delivered packages
    ledger.sqlite                             the audit ledger
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from audit.ledger import Ledger, VerifyResult
from audit.opening import ensure_ledger_key, open_ledger
from authorisation.approvals import approve, assess
from authorisation.approver_keys import ApproverKey, load_private_key, new_approver_key
from authorisation.catalogue_approvals import approve_catalogue, assess_catalogue
from authorisation.registry import load_registry
from contracts.catalogue import SOURCES_DIR, load_catalogue, load_catalogue_for
from contracts.loading import (
    contract_from_mapping,
    discover_contract_files,
    load_contract,
    parse_yaml,
)
from contracts.model import Contract
from core.settings import load_settings
from delivery.recipients import load_identities, new_identity_file
from delivery.signing import compare_command, fingerprint, load_public_key, new_signing_key, ssh_public_line
from delivery.trust import add_to_store, identity_store
from demo.synthetic import write_demo_source
from masking.keys import new_master_key_file

DeliverySummary = dict[str, Any]
"""What the ledger says of one demo delivery (delivery id, records, blocked reason, package, recipients)."""

DEMO_PREFIX = "C-DEMO-"


def repo_root() -> Path:
    """The checkout holding dags/ and configs/ (the demo runs from a source checkout)."""
    env = os.environ.get("CONTRACT_EXTRACTS_REPO")
    if env:
        return Path(env).absolute()
    here = Path(__file__).resolve()
    for parent in [Path.cwd(), *here.parents]:
        if (parent / "dags" / "contract_deliveries.py").exists() and (parent / "configs").is_dir():
            return parent
    raise SystemExit("cannot find the project checkout (dags/ and configs/); run from the repo root")


def ensure_keys(home: Path) -> dict[str, Path]:
    keys_dir = home / "keys"
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    master = keys_dir / "master.key"
    signing = keys_dir / "sender-signing.key"
    public = keys_dir / "sender-signing.pub"
    if not master.exists():
        new_master_key_file(master)
    openssh = keys_dir / "sender-signing.ssh.pub"
    if not signing.exists():
        new_signing_key(signing, public, openssh)
    elif not openssh.exists():  # a state folder from before the OpenSSH form was written
        openssh.write_text(ssh_public_line(load_public_key(public)) + "\n", encoding="ascii")
    return {"master": master, "signing": signing, "public": public, "openssh": openssh}


def trust_sender_beside(identities: list[Path], openssh: Path) -> None:
    """Give each demo recipient the sender's key in its trust store (``<identity>.senders``), as a real
    recipient would after comparing the fingerprint: ``decrypt`` then verifies without ``--sender-key``."""
    public = load_public_key(openssh)
    for identity in identities:
        add_to_store(identity_store(identity), public)


def render_demo_contracts(template_dir: Path, out_dir: Path, identities_dir: Path) -> list[Path]:
    """Copy the demo contracts, swapping each recipient's key for a locally generated demo identity."""
    out_dir.mkdir(parents=True, exist_ok=True)
    identities_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    rendered = []
    for template in discover_contract_files(template_dir):
        if not template.stem.startswith(DEMO_PREFIX):
            continue
        data = parse_yaml(template.read_text(encoding="utf-8"), str(template))
        for recipient in data.get("recipients", []):
            identity = identities_dir / f"{recipient['name']}.txt"
            if identity.exists():
                recipient["age"] = _public_key_of(identity)
            else:
                recipient["age"] = new_identity_file(identity)
        contract_from_mapping(data, str(template))  # still a valid contract
        target = out_dir / template.name
        header = (f"# Rendered by `make demo` from configs/contracts/{template.name}: recipients are the\n"
                  f"# demo identities in {identities_dir}. Edit the template, not this file.\n")
        target.write_text(header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
        load_contract(target)
        rendered.append(target)
    return rendered


DEMO_APPROVER = "demo-approver"


def render_demo_approvers(template: Path, out: Path, keys_dir: Path) -> Path:
    """Copy the approver registry, with the demo approver's key generated locally (private half 0600 in keys/).

    Other entries are copied with their key files inlined, so the rendered registry stands alone.
    """
    private = keys_dir / DEMO_APPROVER
    if not private.exists():
        keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        new_approver_key(private, keys_dir / f"{DEMO_APPROVER}.pub", f"{DEMO_APPROVER} (make demo)")
    demo_key = ApproverKey(load_private_key(private).public_key())
    entries = []
    for approver in load_registry(template).approvers:
        key = demo_key if approver.name == DEMO_APPROVER else approver.key
        entries.append({"name": approver.name, "role": approver.role, "key": f"{key.openssh} {approver.name}"})
    out.parent.mkdir(parents=True, exist_ok=True)
    header = (f"# Rendered by `make demo` from configs/approvers.yaml: {DEMO_APPROVER}'s key is the one in\n"
              f"# {private}.pub. Public keys only. Edit the template, not this file.\n")
    out.write_text(header + yaml.safe_dump({"approvers": entries}, sort_keys=False), encoding="utf-8")
    load_registry(out)
    return private


def render_demo_catalogues(template_dir: Path, out_dir: Path) -> list[Path]:
    """Copy the source catalogues (``configs/sources/*.yaml``) into the demo's configuration folder."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rendered = []
    for template in sorted(template_dir.glob("*.yaml")):
        target = out_dir / template.name
        target.write_text(template.read_text(encoding="utf-8"), encoding="utf-8")
        load_catalogue(target)
        rendered.append(target)
    return rendered


def approve_demo_contracts(contracts: list[Path], registry_file: Path, private: Path, ledger: Ledger) -> None:
    """Approve the demo source's catalogue, then each demo contract's current content against it, as the demo
    approver, visibly (skip what already counts)."""
    registry = load_registry(registry_file)
    approver = registry.get(DEMO_APPROVER)
    if approver is None:
        raise SystemExit(f"{registry_file} lists no {DEMO_APPROVER}; the demo cannot approve its contracts")
    print(f"approving the demo catalogue and contracts as {approver.name} ({approver.role_title}, key "
          f"{approver.fingerprint}; registry {registry_file}) ...", flush=True)
    key = load_private_key(private)
    approved: set[str] = set()
    for path in contracts:
        contract = load_contract(path)
        catalogue, catalogue_file = load_catalogue_for(contract, registry_file.parent)
        if catalogue.source not in approved:
            approved.add(catalogue.source)
            current = assess_catalogue(catalogue, registry, ledger).counting
            if current:
                print(f"  catalogue {catalogue.source}: content sha256 {catalogue.content_sha256[:16]}… already "
                      f"approved by its owner (ledger record #{current[0].seq})")
            else:
                record = approve_catalogue(catalogue=catalogue, registry=registry, ledger=ledger,
                                           approver=approver.name, role=approver.role, actor=f"demo:{approver.name}",
                                           note="approved by make demo", private_key=key,
                                           catalogue_file=catalogue_file)
                print(f"  catalogue {catalogue.source}: content sha256 {catalogue.content_sha256[:16]}… approved by "
                      f"its owner {approver.name}, signature recorded as ledger record #{record.seq}")
        counting = [v for v in assess(contract, registry, ledger, catalogue).counting if v.approver == approver.name]
        if counting:
            print(f"  {contract.contract}: content sha256 {counting[0].content_sha256[:16]}… already approved by "
                  f"{approver.name} (ledger record #{counting[0].seq})")
            continue
        record = approve(contract=contract, catalogue=catalogue, registry=registry, ledger=ledger,
                         approver=approver.name, role=approver.role, actor=f"demo:{approver.name}",
                         note="approved by make demo", private_key=key, contract_file=path)
        print(f"  {contract.contract}: content sha256 {record.details_obj()['content_sha256'][:16]}… approved by "
              f"{approver.name} ({approver.role_title}), signature recorded as ledger record #{record.seq}")
    print(f"  (see: contract-extracts status <contract> with CONTRACT_EXTRACTS_CONFIG_DIR={registry_file.parent})")


def _public_key_of(identity: Path) -> str:
    return str(load_identities(identity)[0].to_public())


def airflow_environment(*, home: Path, dags_dir: Path, config_dir: Path, keys: dict[str, Path],
                        connections: dict[str, str], base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for `airflow` commands: local metadata, our DAGs only, keys by file."""
    env = dict(os.environ if base is None else base)
    venv_bin = str(Path(sys.executable).parent)
    env.update({
        "PATH": venv_bin + os.pathsep + env.get("PATH", ""),
        "AIRFLOW_HOME": str(home / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags_dir),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "CONTRACT_EXTRACTS_HOME": str(home),
        "CONTRACT_EXTRACTS_CONFIG_DIR": str(config_dir),
        "CONTRACT_EXTRACTS_MASTER_KEY_FILE": str(keys["master"]),
        "CONTRACT_EXTRACTS_SIGNING_KEY_FILE": str(keys["signing"]),
        "GX_ANALYTICS_ENABLED": "false",
        "PYTHONDONTWRITEBYTECODE": "",
    })
    env.pop("PYTHONDONTWRITEBYTECODE")
    for conn_id, uri in connections.items():
        env["AIRFLOW_CONN_" + conn_id.upper()] = uri
    return env


def migrate_airflow_db(env: dict[str, str], log_file: Path) -> None:
    stamp = Path(env["AIRFLOW_HOME"]) / ".migrated"
    if stamp.exists():
        return
    Path(env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    _run(["airflow", "db", "migrate"], env, log_file, "airflow db migrate")
    stamp.touch()


# `airflow dags test` makes a manual run, which needs a delivery reference and a reason (docs/operators.md).
DEMO_RUN_CONF = {"delivery_reference": "DEMO-1", "reason": "make demo: the demo's deliveries"}


def run_dag_test(dag_id: str, env: dict[str, str], log_file: Path) -> int:
    return _run(["airflow", "dags", "test", dag_id, "--conf", json.dumps(DEMO_RUN_CONF)], env, log_file,
                f"airflow dags test {dag_id}", check=False)


def _run(cmd: list[str], env: dict[str, str], log_file: Path, label: str, check: bool = True) -> int:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with log_file.open("wb") as log:  # the log of the latest run
        proc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
    print(f"  {label}: exit {proc.returncode} in {time.monotonic() - started:.0f}s (log: {log_file})",
          flush=True)
    if check and proc.returncode != 0:
        raise SystemExit(f"{label} failed; see {log_file}")
    return proc.returncode


def delivery_summary(ledger: Ledger, contract_id: str, after_seq: int) -> DeliverySummary | None:
    """The newest delivery of ``contract_id`` recorded after ``after_seq``, from the ledger alone."""
    records = [r for r in ledger.records(contract=contract_id) if r.seq > after_seq]
    started = [r for r in records if r.action == "run_started"]
    if not started:
        return None
    delivery = started[-1].delivery
    mine = [r for r in records if r.delivery == delivery]
    summary: DeliverySummary = {"delivery": delivery, "records": len(mine), "blocked": None}
    for r in mine:
        details = r.details_obj()
        if r.action == "blocked":
            summary["blocked"] = f"{details.get('stage')}: {details.get('reason')}"
        elif r.action == "authorised":
            summary["approvals"] = details.get("approvals", [])
        elif r.action == "extract_done":
            summary["datasets"] = details["datasets"]
        elif r.action == "delivered":
            summary.update(package=details["path"], sha256=details["sha256"],
                           recipients=[x["name"] for x in details["recipients"]])
    return summary


def run_demo(people: int = 100_000) -> int:
    root = repo_root()
    settings = load_settings()
    home = settings.home
    home.mkdir(parents=True, exist_ok=True)
    print(f"state folder: {home}")
    keys = ensure_keys(home)
    made = ensure_ledger_key(settings)
    if made is not None:
        print(f"wrote the audit ledger key {made} (0600): the ledger is keyed (HMAC-SHA256)")
    source = home / "demo" / "claims.sqlite"
    if not source.exists():
        print(f"generating the synthetic source ({people} fake claimants) ...", flush=True)
        source.parent.mkdir(parents=True, exist_ok=True)
        partial = source.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        counts = write_demo_source(f"sqlite:///{partial}", n_people=people)
        partial.rename(source)
        print("  " + ", ".join(f"{t}: {n} rows" for t, n in counts.items()))
    config_dir = home / "demo" / "configs"
    identities_dir = home / "demo" / "identities"
    contracts = render_demo_contracts(root / "configs" / "contracts", config_dir / "contracts", identities_dir)
    trust_sender_beside(sorted(identities_dir.glob("*.txt")), keys["openssh"])
    render_demo_catalogues(root / "configs" / SOURCES_DIR, config_dir / SOURCES_DIR)
    env = airflow_environment(home=home, dags_dir=root / "dags", config_dir=config_dir, keys=keys,
                              connections={"demo_claims": f"sqlite:///{source}"})
    logs = home / "demo" / "logs"
    print("preparing Airflow metadata (first run only) ...", flush=True)
    migrate_airflow_db(env, logs / "airflow-db-migrate.log")
    approver_key = render_demo_approvers(root / "configs" / "approvers.yaml", config_dir / "approvers.yaml",
                                         home / "keys")
    ledger = open_ledger(settings)
    results: list[tuple[Contract, int, DeliverySummary | None]] = []
    try:
        approve_demo_contracts(contracts, config_dir / "approvers.yaml", approver_key, ledger)
        for path in contracts:
            contract = load_contract(path)
            head = ledger.head()
            before = head.seq if head is not None else 0
            print(f"running {contract.dag_id} ({contract.contract}, {contract.contractor}) ...", flush=True)
            code = run_dag_test(contract.dag_id, env, logs / f"{contract.dag_id}.log")
            results.append((contract, code, delivery_summary(ledger, contract.contract, before)))
        total = ledger.count()
        verified = ledger.verify()
    finally:
        ledger.close()
    return _print_summary(results, identities_dir, keys, total, verified)


def _print_summary(results: list[tuple[Contract, int, DeliverySummary | None]], identities_dir: Path,
                   keys: dict[str, Path], total: int, verified: VerifyResult) -> int:
    failed = False
    print("\n=== deliveries ===")
    for contract, code, summary in results:
        if not summary or summary.get("blocked") or "package" not in summary or code != 0:
            failed = True
            reason = (summary or {}).get("blocked") or f"airflow exit {code}"
            print(f"{contract.contract}: NOT delivered ({reason})")
            continue
        datasets = ", ".join(f"{d['name']} {d['rows']} rows × {len(d['columns'])} columns"
                             for d in summary["datasets"])
        print(f"{contract.contract} → {contract.contractor}: delivery {summary['delivery']}")
        print(f"  data: {datasets}")
        print(f"  recipients: {', '.join(summary['recipients'])}")
        approvals = summary.get("approvals") or []
        print("  authorised by: " + (", ".join(f"{a['approver']} ({a['role']}, approval #{a['seq']})"
                                               for a in approvals) or "-"))
        print(f"  audit records for this delivery: {summary['records']}")
        identity = identities_dir / f"{contract.recipients[0].name}.txt"
        received = identities_dir.parent / "received" / f"{contract.contract}_{summary['delivery']}"
        print(f"  decrypt with age:  mkdir -p {received}-age && age -d -i {identity} {summary['package']} "
              f"| tar -x -C {received}-age")
        print(f"  decrypt + verify:  contract-extracts decrypt {summary['package']} --identity {identity} "
              f"--out {received}   (sender key trusted in {identity_store(identity)})")
    print(f"\naudit ledger: {total} records, chain {'verified' if verified.ok else 'BROKEN: ' + str(verified.reason)}")
    print()
    for contract, _code, summary in results:
        if summary and "package" in summary and not summary.get("blocked"):
            print(f"package: {summary['package']}")
            print(f"identity: {identities_dir / (contract.recipients[0].name + '.txt')}")
    print(f"sender-key: {keys['public']}")
    print(f"sender-key fingerprint: {fingerprint(load_public_key(keys['public']))} "
          f"(a recipient compares it with: {compare_command(str(keys['openssh']))})")
    return 1 if failed or not verified.ok else 0
