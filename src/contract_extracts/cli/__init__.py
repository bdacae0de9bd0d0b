"""``contract-extracts``: the same stage functions as the DAGs, for people.

    contract-extracts check [FILES...]
    contract-extracts run CONTRACT
    contract-extracts decrypt PACKAGE --identity FILE --out DIR [--sender-key FILE]
    contract-extracts audit verify | audit show [--contract ID] [--action A] [--since T]
    contract-extracts keys new-master FILE | keys id | keys new-recipient FILE | keys new-signing PRIV PUB
    contract-extracts demo [--people N]
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import importlib
import json
import sys
import uuid
from pathlib import Path

from contract_extracts.core.errors import ContractExtractsError

# Modules under contract_extracts.cli that add subcommands through ``register(subparsers)``.
_AREA_MODULES: tuple[str, ...] = ()


def _cmd_check(args: argparse.Namespace) -> int:
    from contract_extracts.contracts.loading import discover_contract_files, load_contract
    from contract_extracts.core.settings import load_settings

    files = [Path(f) for f in args.files] or discover_contract_files(load_settings().contracts_dir)
    if not files:
        print("no contract files found", file=sys.stderr)
        return 1
    for path in files:
        contract = load_contract(path)  # raises on the first bad one
        columns = sum(len(d.columns) for d in contract.datasets)
        print(f"ok  {path}  ({contract.contract}: {len(contract.datasets)} dataset(s), {columns} column(s), "
              f"{len(contract.recipients)} recipient(s))")
    return 0


def _resolve_contract_path(value: str) -> Path:
    from contract_extracts.core.settings import load_settings

    path = Path(value)
    if path.suffix in (".yaml", ".yml"):
        return path
    return load_settings().contracts_dir / f"{value}.yaml"


def _cmd_run(args: argparse.Namespace) -> int:
    from contract_extracts.core.connections import env_connection_url
    from contract_extracts.core.settings import load_settings
    from contract_extracts.pipeline.stages import Pipeline, RunContext

    path = _resolve_contract_path(args.contract)
    ctx = RunContext(contract_path=path, settings=load_settings(), actor=f"cli:{getpass.getuser()}",
                     run_key=f"cli/{uuid.uuid4()}", run_after=dt.datetime.now(dt.UTC),
                     resolve_connection=env_connection_url, trigger={"system": "cli"})
    pipeline = Pipeline(ctx)
    print(f"delivery {pipeline.delivery_id} of {path.stem}")
    result = pipeline.run_all()
    print(f"delivered {result['package']['package']} sha256 {result['package']['sha256']}")
    return 0


def _cmd_decrypt(args: argparse.Namespace) -> int:
    from contract_extracts.delivery.verify import decrypt_package

    result = decrypt_package(Path(args.package), identity=Path(args.identity), out_dir=Path(args.out),
                             sender_key=Path(args.sender_key) if args.sender_key else None)
    m = result.manifest
    print(f"decrypted {m['contract']} delivery {m['delivery']} into {result.out_dir}")
    for entry in m["files"]:
        rows = f", {entry['rows']} rows" if "rows" in entry else ""
        print(f"  ok  {entry['path']}  sha256 {entry['sha256'][:16]}…{rows}")
    if result.signature_verified:
        print("signature: verified (manifest signed by the sender key)")
    else:
        print("signature: NOT VERIFIED - pass --sender-key to prove the package came from the sender",
              file=sys.stderr)
    return 0


def _cmd_audit(args: argparse.Namespace) -> int:
    from contract_extracts.audit.ledger import Ledger
    from contract_extracts.core.settings import load_settings

    ledger = Ledger(load_settings().ledger_url)
    try:
        if args.audit_command == "verify":
            result = ledger.verify()
            if result.ok:
                print(f"ledger ok: {result.records} records, head #{result.head_seq} {result.head_hash}")
                return 0
            print(f"ledger BROKEN: {result.reason}", file=sys.stderr)
            return 1
        for r in ledger.records(contract=args.contract, action=args.action, since=args.since):
            if args.json:
                print(json.dumps({"seq": r.seq, "at": r.at, "actor": r.actor, "action": r.action,
                                  "contract": r.contract, "delivery": r.delivery,
                                  "details": r.details_obj(), "hash": r.hash}, ensure_ascii=False))
            else:
                print(f"#{r.seq:<5} {r.at}  {r.action:<18} {r.contract or '-':<12} {r.delivery or '-':<26} "
                      f"{r.actor}  {r.details}")
        return 0
    finally:
        ledger.close()


def _cmd_keys(args: argparse.Namespace) -> int:
    from contract_extracts.masking import keys

    if args.keys_command == "new-master":
        master = keys.new_master_key_file(Path(args.file))
        print(f"wrote master key {args.file} (mode 0600), key id {master.key_id}")
    elif args.keys_command == "id":
        print(keys.load_master_key().key_id)
    elif args.keys_command == "new-recipient":
        from contract_extracts.delivery.recipients import new_identity_file

        public = new_identity_file(Path(args.file))
        print(f"wrote age identity {args.file} (mode 0600); public key (give this to the sender):")
        print(public)
    elif args.keys_command == "new-signing":
        from contract_extracts.delivery.signing import fingerprint, new_signing_key

        public = new_signing_key(Path(args.private), Path(args.public))
        print(f"wrote signing key {args.private} (mode 0600) and public key {args.public}; "
              f"fingerprint {fingerprint(public)}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from contract_extracts.demo.runner import run_demo

    return run_demo(people=args.people)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="contract-extracts", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check", help="validate contract files (default: every file in the config dir)")
    p.add_argument("files", nargs="*")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("run", help="run one delivery now, without Airflow (source from AIRFLOW_CONN_<ID>)")
    p.add_argument("contract", help="contract id or path to its YAML file")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("decrypt", help="decrypt a package, verify signature and checksums, unpack it")
    p.add_argument("package")
    p.add_argument("--identity", required=True, help="age identity file (AGE-SECRET-KEY-1…)")
    p.add_argument("--out", required=True, help="folder to create (must be new or empty)")
    p.add_argument("--sender-key", help="sender's Ed25519 public key (PEM) to verify manifest.sig")
    p.set_defaults(func=_cmd_decrypt)

    p = sub.add_parser("audit", help="the audit ledger")
    audit = p.add_subparsers(dest="audit_command", required=True)
    audit.add_parser("verify", help="recompute the hash chain; name the first broken record")
    show = audit.add_parser("show", help="list ledger records")
    show.add_argument("--contract")
    show.add_argument("--action")
    show.add_argument("--since", help="ISO 8601 time")
    show.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=_cmd_audit)

    p = sub.add_parser("keys", help="generate and inspect keys (only public parts and ids are printed)")
    keys = p.add_subparsers(dest="keys_command", required=True)
    k = keys.add_parser("new-master", help="write a new 32-byte master key file (0600)")
    k.add_argument("file")
    keys.add_parser("id", help="print the key id of the configured master key")
    k = keys.add_parser("new-recipient", help="write a new age identity file (0600), print its public key")
    k.add_argument("file")
    k = keys.add_parser("new-signing", help="write a new Ed25519 sender signing key pair")
    k.add_argument("private")
    k.add_argument("public")
    p.set_defaults(func=_cmd_keys)

    p = sub.add_parser("demo", help="set up and run both demo contracts through Airflow")
    p.add_argument("--people", type=int, default=100_000, help="synthetic claimants (default 100000)")
    p.set_defaults(func=_cmd_demo)

    # Further areas register their own subcommands (one module each, so they evolve independently).
    for module in _AREA_MODULES:
        importlib.import_module(f"contract_extracts.cli.{module}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ContractExtractsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
