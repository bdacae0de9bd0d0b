"""``contract-extracts``: the same stage functions as the DAGs, for people.

    contract-extracts check [FILES...]
    contract-extracts run CONTRACT
    contract-extracts decrypt | verify | sender-key       (delivery: see cli/delivery.py)
    contract-extracts audit verify | audit show [--contract ID] [--action A] [--since T]
    contract-extracts keys new-master FILE | keys id | keys new-recipient FILE | keys new-signing PRIV PUB
    contract-extracts demo [--people N]
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import importlib
import sys
import uuid
from pathlib import Path

from core.errors import ContractExtractsError

# Modules under cli that add subcommands through ``register(subparsers)``.
_AREA_MODULES: tuple[str, ...] = ("delivery", "approvals", "audit", "keys")


def _cmd_check(args: argparse.Namespace) -> int:
    from contracts.loading import discover_contract_files, load_contract
    from core.settings import load_settings

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
    from core.settings import load_settings

    path = Path(value)
    if path.suffix in (".yaml", ".yml"):
        return path
    return load_settings().contracts_dir / f"{value}.yaml"


def _cmd_run(args: argparse.Namespace) -> int:
    from core.connections import env_connection_url
    from core.settings import load_settings
    from pipeline.stages import Pipeline, RunContext

    path = _resolve_contract_path(args.contract)
    ctx = RunContext(contract_path=path, settings=load_settings(), actor=f"cli:{getpass.getuser()}",
                     run_key=f"cli/{uuid.uuid4()}", run_after=dt.datetime.now(dt.UTC),
                     resolve_connection=env_connection_url, trigger={"system": "cli"})
    pipeline = Pipeline(ctx)
    print(f"delivery {pipeline.delivery_id} of {path.stem}")
    result = pipeline.run_all()
    print(f"delivered {result['package']['package']} sha256 {result['package']['sha256']}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from demo.runner import run_demo

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


    # `audit` lives in cli/audit.py; registered here until it is listed in _AREA_MODULES.
    if "audit" not in _AREA_MODULES:
        importlib.import_module("cli.audit").register(sub)

    p = sub.add_parser("demo", help="set up and run both demo contracts through Airflow")
    p.add_argument("--people", type=int, default=100_000, help="synthetic claimants (default 100000)")
    p.set_defaults(func=_cmd_demo)

    # Further areas register their own subcommands (one module each, so they evolve independently).
    for module in _AREA_MODULES:
        importlib.import_module(f"cli.{module}").register(sub)
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
