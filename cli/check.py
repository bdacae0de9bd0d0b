"""``contract-extracts check [FILES...] [--source]``: every problem of contract and catalogue files, before approval.

For a contract: the file and the model (every error, not only the first), then the source's catalogue
(``--catalogue FILE``, else ``sources/<connection>.yaml`` of the contract file's own configuration tree, else
of the configured folder): every rule
the catalogue imposes, and notes (quasi-identifiers delivered without a risk assessment). With
``--source`` it also reads the source's schema through the connection (``AIRFLOW_CONN_<ID>``): every column
exists, with a type its treatment accepts (``masking.source_check``). For a catalogue file: the file.

Problems go to stderr, one per line, each naming the file, the key and the fix; the exit code is 1 when
any file has a problem.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

from contracts.base import is_system_database
from contracts.catalogue import (
    SOURCES_DIR,
    Catalogue,
    catalogue_file_problems,
    catalogue_key_variables,
    catalogue_path,
    is_catalogue_document,
    population_plan,
)
from contracts.catalogue import catalogue_problems as contract_catalogue_problems
from contracts.loading import contract_file_problems, discover_contract_files, read_yaml_file
from contracts.model import Contract
from core.connections import env_connection_url
from core.errors import ConfigError, ContractError, ContractExtractsError, value_free
from core.settings import load_settings
from extract.sources import create_source_engine
from masking.source_check import source_problems


def _is_catalogue(path: Path) -> bool:
    try:
        return is_catalogue_document(read_yaml_file(path, kind="a configuration file"))
    except ConfigError:
        return False


def _check_catalogue_file(path: Path) -> tuple[list[str], str]:
    catalogue, problems = catalogue_file_problems(path)
    if catalogue is None or problems:
        return [str(p) for p in problems], ""
    columns = sum(len(t.columns) for t in catalogue.tables.values())
    identifiers = sum(len(catalogue.identifiers(t)) for t in catalogue.tables)
    return [], (f"catalogue {catalogue.source}: {len(catalogue.tables)} table(s), {columns} column(s), "
                f"{identifiers} identifier(s); owner {catalogue.owner}")


def _catalogue_for(contract: Contract, contract_file: Path, override: Path | None) -> tuple[Catalogue | None,
                                                                                          list[str]]:
    """The catalogue to check against: ``--catalogue``, else the one of the contract file's own configuration tree
    (``<tree>/contracts/X.yaml`` → ``<tree>/sources/<connection>.yaml``), else the configured folder's."""
    configured = catalogue_path(load_settings().config_dir, contract.source.connection)
    beside = catalogue_path(contract_file.absolute().parent.parent, contract.source.connection)
    path = override or (beside if beside.is_file() else configured)
    if not path.is_file():
        return None, [str(ConfigError(f"source {contract.source.connection!r} has no catalogue", file=str(path),
                                      key="source.connection",
                                      fix="the source's Information Asset Manager writes and approves its catalogue "
                                          "(docs/catalogue.md); nothing can be read from an uncatalogued source"))]
    catalogue, problems = catalogue_file_problems(path)
    return catalogue, [str(p) for p in problems]


def _check_contract_file(path: Path, args: argparse.Namespace) -> tuple[list[str], str, list[str]]:
    """(problems, summary, notes) of one contract file."""
    contract, errors = contract_file_problems(path)
    problems = [str(e) for e in errors]
    if contract is None:
        return problems, "", []
    file = str(path)
    catalogue, catalogue_errors = _catalogue_for(contract, path, Path(args.catalogue) if args.catalogue else None)
    problems += catalogue_errors
    notes: list[str] = []
    if catalogue is not None and not catalogue_errors:
        problems += [str(ContractError(p.message, file=file, key=p.key, fix=p.fix))
                     for p in contract_catalogue_problems(contract, catalogue)]
        keys = catalogue_key_variables(contract, catalogue)
        if keys and contract.disclosure is None:
            notes.append(f"delivers catalogued quasi-identifiers ({', '.join(keys)}) without a risk assessment; "
                         "add 'disclosure:' to assess them (they are its key variables by default)")
        elif keys and contract.disclosure is not None:
            added = [k for k in keys if k not in contract.disclosure.key_columns]
            if added:
                notes.append(f"the risk assessment's key also takes the catalogued quasi-identifiers "
                             f"{', '.join(added)}")
    if args.source and not problems:
        problems += _source_problems(contract, file, catalogue)
    summary = (f"{contract.contract}: {len(contract.datasets)} dataset(s), "
               f"{sum(len(d.columns) for d in contract.datasets)} column(s), {len(contract.recipients)} recipient(s)")
    if catalogue is not None and not problems:
        plan = population_plan(contract, catalogue)
        summary += f"; catalogue {catalogue.source}"
        if plan is not None:
            restricted = ", ".join(plan.restricted) or "no other dataset"
            summary += f"; population: {plan.entity} of {plan.dataset} (restricts {restricted})"
        if args.source:
            summary += "; source checked"
    return problems, summary, notes


def _source_problems(contract: Contract, file: str, catalogue: Catalogue | None) -> list[str]:
    url = env_connection_url(contract.source.connection)
    if is_system_database(url.database):
        return [str(ContractError(f"the connection's database {url.database!r} belongs to the database system",
                                  file=file, key="source.connection", fix="connect to the database of the data"))]
    engine = create_source_engine(url)
    try:
        found = source_problems(contract, engine, catalogue=catalogue, reference_date=dt.datetime.now(dt.UTC).date())
    except Exception as exc:  # a driver's message may quote values: name the type only
        if isinstance(exc, ContractExtractsError):
            raise
        return [str(ContractError(f"the source could not be read ({type(exc).__name__})", file=file,
                                  key="source.connection", fix="check the connection (AIRFLOW_CONN_<ID>)"))]
    finally:
        engine.dispose()
    return [str(ContractError(p.message, file=file, key=p.key, fix=p.fix)) for p in found]


def run_check(args: argparse.Namespace) -> int:
    settings = load_settings()
    files = [Path(f) for f in args.files] or [*discover_contract_files(settings.contracts_dir),
                                              *sorted((settings.config_dir / SOURCES_DIR).glob("*.yaml"))]
    if not files:
        print("no contract files found", file=sys.stderr)
        return 1
    failed = 0
    for path in files:
        notes: list[str] = []
        try:
            if _is_catalogue(path):
                problems, summary = _check_catalogue_file(path)
            else:
                problems, summary, notes = _check_contract_file(path, args)
        except ContractExtractsError as exc:
            problems, summary = [str(exc)], ""
        except Exception as exc:  # a defect must not print a traceback nor stop the other files' checks
            problems, summary = [str(ConfigError(f"could not be checked ({value_free(exc)})", file=str(path),
                                                 fix="report this problem; the other files are checked"))], ""
        if problems:
            failed += 1
            print(f"FAIL  {path}  ({len(problems)} problem(s))", file=sys.stderr)
            for problem in problems:
                print(f"  - {problem}", file=sys.stderr)
            continue
        print(f"ok  {path}  ({summary})")
        for note in notes:
            print(f"    note: {note}")
    if failed:
        print(f"{failed} of {len(files)} file(s) have problems; nothing with a problem can be approved or run",
              file=sys.stderr)
    return 1 if failed else 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("check", help="check contract and catalogue files: every problem, against the source's "
                                            "catalogue (default: every contract and catalogue in the config dir)")
    p.add_argument("files", nargs="*", help="contract files or source catalogue files")
    p.add_argument("--source", action="store_true",
                   help="also read the source's schema (AIRFLOW_CONN_<ID>): every column exists with a type its "
                        "treatment accepts")
    p.add_argument("--catalogue", metavar="FILE", help="check contracts against this catalogue file instead of "
                                                       "configs/sources/<connection>.yaml")
    p.set_defaults(func=run_check)
