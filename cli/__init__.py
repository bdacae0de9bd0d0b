"""``contract-extracts``: the same stage functions as the DAGs, for people.

    contract-extracts check [FILES...] [--source]        (contracts and source catalogues: cli/check.py)
    contract-extracts run CONTRACT
    contract-extracts decrypt | verify | sender-key       (delivery: see cli/delivery.py)
    contract-extracts audit verify | show | export | checkpoint | acknowledge | reconcile | new-key   (cli/audit.py)
    contract-extracts keys new-master FILE | keys id | keys new-recipient FILE | keys new-signing PRIV PUB
    contract-extracts demo [--people N]
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import gc
import sys
import uuid
from collections.abc import Callable, Sequence

from cli import approvals, audit, check, delivery, keys, progress
from cli.arguments import actor, contract_path
from cli.run import run_delivery
from core.connections import env_connection_url
from core.errors import ContractExtractsError
from core.settings import load_settings
from demo.runner import run_demo
from pipeline.stages import Pipeline, RunContext

Command = Callable[[argparse.Namespace], int]
"""What a subcommand's ``func`` default is: the parsed arguments in, the exit code out."""


def _cmd_run(args: argparse.Namespace) -> int:
    path = contract_path(args.contract)
    ctx = RunContext(contract_path=path, settings=load_settings(), actor=actor(),
                     run_key=f"cli/{uuid.uuid4()}", run_after=dt.datetime.now(dt.UTC),
                     resolve_connection=env_connection_url, trigger={"system": "cli"})
    pipeline = Pipeline(ctx)
    print(f"delivery {pipeline.delivery_id} of {path.stem}", flush=True)
    with progress.shown_on(sys.stderr):  # a bar per dataset on a terminal, plain lines otherwise
        result = run_delivery(pipeline)  # GX imported while a child runs the stages before the gate
    print(f"delivered {result['package']['package']} sha256 {result['package']['sha256']}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(people=args.people)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="contract-extracts", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    check.register(sub)

    p = sub.add_parser("run", help="run one delivery now, without Airflow (source from AIRFLOW_CONN_<ID>)")
    p.add_argument("contract", help="contract id or path to its YAML file")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("demo", help="set up and run both demo contracts through Airflow")
    p.add_argument("--people", type=int, default=100_000, help="synthetic claimants (default 100000)")
    p.set_defaults(func=_cmd_demo)

    # Each area registers its own subcommands (one module each, so they evolve independently).
    for area in (delivery, approvals, audit, keys):
        area.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # At exit the interpreter's last garbage collections walk every object still alive (GX and its
    # dependencies: ~0.7 s of a small delivery); freezing them first skips that walk. It skips nothing
    # else: exit handlers still run (logging's flush included) and objects are still released; only the
    # search for cycles among objects the process is about to drop anyway is left out.
    atexit.register(gc.freeze)
    args = build_parser().parse_args(argv)
    command: Command = args.func
    try:
        return command(args)
    except ContractExtractsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
