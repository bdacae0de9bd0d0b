"""``contract-extracts approve | revoke | status | approvers``: signed approvals of contracts and catalogues.

CONTRACT is a contract id or file; a source catalogue file (``configs/sources/<connection>.yaml``) is
approved, withdrawn and shown the same way, by its owner (docs/catalogue.md).

    contract-extracts approve CONTRACT --by NAME --role ROLE [--note TEXT] --key KEY
    contract-extracts approve CONTRACT --by NAME --role ROLE --print-statement > approval.txt
        ssh-keygen -Y sign -n contract-extracts-approval -f ~/.ssh/id_ed25519 approval.txt
    contract-extracts approve CONTRACT --by NAME --role ROLE [--note TEXT] --statement approval.txt \\
        --signature approval.txt.sig
    contract-extracts revoke CONTRACT [--by NAME] [--reason TEXT]
    contract-extracts status CONTRACT [--json]
    contract-extracts approvers list | allowed-signers | new-key PRIVATE --name NAME
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit.ledger import LedgerRecord
from audit.opening import open_ledger
from authorisation import approver_keys
from authorisation.approvals import Statement, approve, assess, make_statement, refusal, revoke
from authorisation.catalogue_approvals import (
    CatalogueStatement,
    approve_catalogue,
    assess_catalogue,
    catalogue_refusal,
    make_catalogue_statement,
    revoke_catalogue,
)
from authorisation.registry import NAME_PATTERN, ROLES, Registry, load_registry, registry_history, registry_path
from authorisation.run_checks import date_refusal
from cli.arguments import actor, contract_path
from contracts.catalogue import Catalogue, is_catalogue_document, load_catalogue, load_catalogue_for
from contracts.loading import load_contract, read_yaml_file
from contracts.model import Contract
from core.errors import AuthorisationError, ConfigError
from core.settings import load_settings

Approved = TypeVar("Approved", Contract, Catalogue)


def _registry() -> Registry:
    return load_registry(registry_path(load_settings().config_dir))


def _catalogue_file(value: str) -> Path | None:
    """The catalogue file ``value`` names, or None when it names a contract."""
    path = Path(value)
    if path.suffix not in (".yaml", ".yml") or not path.is_file():
        return None
    try:
        return path if is_catalogue_document(read_yaml_file(path, kind="a configuration file")) else None
    except ConfigError:
        return None


def _catalogue(contract: Contract) -> Catalogue:
    return load_catalogue_for(contract, load_settings().config_dir)[0]


def _approve(args: argparse.Namespace) -> int:
    catalogue_file = _catalogue_file(args.contract)
    if catalogue_file is not None:
        return _approve_catalogue(args, catalogue_file)
    path = contract_path(args.contract)
    contract = load_contract(path)
    registry = _registry()
    catalogue = _catalogue(contract)
    if args.print_statement:
        sys.stdout.write(make_statement(contract, registry, args.by, args.role, catalogue=catalogue).text())
        print(f"sign it with: ssh-keygen -Y sign -n {approver_keys.APPROVAL_NAMESPACE} -f YOUR_KEY FILE, then run "
              "approve again with --statement FILE --signature FILE.sig", file=sys.stderr)
        return 0
    private_key, text, signature = _signed_input(args)
    statement = Statement.parse(text) if text is not None else None
    entry = registry.get(args.by)
    with open_ledger() as ledger:
        record = approve(contract=contract, catalogue=catalogue, registry=registry, ledger=ledger, approver=args.by,
                         role=args.role, actor=actor(), note=args.note, private_key=private_key, statement=statement,
                         signature=signature, contract_file=path.absolute())
        reason = refusal(contract, assess(contract, registry, ledger, catalogue))
    details = record.details_obj()
    title = entry.role_title if entry else args.role
    print(f"approved {contract.contract} (content sha256 {details['content_sha256']}, against catalogue "
          f"{catalogue.source} sha256 {catalogue.content_sha256[:16]}…) as {args.by} ({title}, key "
          f"{details['fingerprint']}): ledger record #{record.seq}")
    print(f"approvals of {contract.contract}: " + ("sufficient for a run" if reason is None else f"not yet: {reason}"))
    return 0


def _signed_input(args: argparse.Namespace) -> tuple[Ed25519PrivateKey | None, str | None, str | None]:
    """(private key, statement text, signature) from --key, or --statement and --signature."""
    if args.key:
        return approver_keys.load_private_key(Path(args.key)), None, None
    if args.statement and args.signature:
        return None, Path(args.statement).read_text(encoding="utf-8"), Path(args.signature).read_text(encoding="ascii")
    raise AuthorisationError("give --key KEY, or --statement FILE and --signature FILE (or --print-statement)")


def _approve_catalogue(args: argparse.Namespace, path: Path) -> int:
    catalogue = load_catalogue(path)
    registry = _registry()
    if args.print_statement:
        sys.stdout.write(make_catalogue_statement(catalogue, registry, args.by, args.role).text())
        print(f"sign it with: ssh-keygen -Y sign -n {approver_keys.APPROVAL_NAMESPACE} -f YOUR_KEY FILE, then run "
              "approve again with --statement FILE --signature FILE.sig", file=sys.stderr)
        return 0
    private_key, text, signature = _signed_input(args)
    statement = CatalogueStatement.parse(text) if text is not None else None
    with open_ledger() as ledger:
        record = approve_catalogue(catalogue=catalogue, registry=registry, ledger=ledger, approver=args.by,
                                   role=args.role, actor=actor(), note=args.note, private_key=private_key,
                                   statement=statement, signature=signature, catalogue_file=path.absolute())
        reason = catalogue_refusal(catalogue, assess_catalogue(catalogue, registry, ledger))
    print(f"approved source catalogue {catalogue.source} (content sha256 {catalogue.content_sha256}) as {args.by} "
          f"(key {record.details_obj()['fingerprint']}): ledger record #{record.seq}")
    print(f"catalogue {catalogue.source}: " + ("approved for runs" if reason is None else f"not yet: {reason}"))
    return 0


def _revoke(args: argparse.Namespace) -> int:
    catalogue_file = _catalogue_file(args.contract)
    if catalogue_file is not None:
        return _revoke_catalogue(args, catalogue_file)
    path = contract_path(args.contract)
    contract, registry = _withdrawal_inputs(load_contract, path)
    contract_id = contract.contract if contract else path.stem
    with open_ledger() as ledger:
        record = revoke(contract=contract, contract_id=contract_id, ledger=ledger, actor=actor(),
                        approver=args.by, reason=args.reason, registry=registry)
    print(f"{_withdrawal(args, record, contract_id)} Runs need a new approval")
    return 0


def _revoke_catalogue(args: argparse.Namespace, path: Path) -> int:
    catalogue, registry = _withdrawal_inputs(load_catalogue, path)
    source = catalogue.source if catalogue else path.stem
    with open_ledger() as ledger:
        record = revoke_catalogue(source=source, ledger=ledger, actor=actor(), approver=args.by, reason=args.reason,
                                  catalogue=catalogue, registry=registry)
    print(f"{_withdrawal(args, record, f'source catalogue {source}')} No contract reading {source} runs until its "
          "owner approves the catalogue again")
    return 0


def _withdrawal_inputs(load: Callable[[Path], Approved], path: Path) -> tuple[Approved | None, Registry | None]:
    """The file's contract or catalogue and the registry (the registry only with the file), None when unusable:
    withdrawing needs neither a valid file nor a registry, as it only takes authority away."""
    try:
        loaded = load(path)
    except ConfigError:
        return None, None
    try:
        return loaded, _registry()
    except ConfigError:
        return loaded, None


def _withdrawal(args: argparse.Namespace, record: LedgerRecord, subject: str) -> str:
    """What the withdrawal ``record`` took back: "withdrew all approvals of C-1 (records #3, #5): ledger record #9."."""
    whose = f"{args.by}'s approvals" if args.by else "all approvals"
    records = ", ".join(f"#{seq}" for seq in record.details_obj()["withdrawn"]) or "none counted"
    return f"withdrew {whose} of {subject} (records {records}): ledger record #{record.seq}."


def _catalogue_status(args: argparse.Namespace, path: Path) -> int:
    catalogue = load_catalogue(path)
    registry = _registry()
    with open_ledger() as ledger:
        assessment = assess_catalogue(catalogue, registry, ledger)
    reason = catalogue_refusal(catalogue, assessment)
    if args.json:
        print(json.dumps({
            "catalogue": catalogue.source, "file": str(path), "owner": catalogue.owner,
            "content_sha256": assessment.content_sha256, "approved": reason is None, "reason": reason,
            "approvals": [{"seq": v.seq, "at": v.at, "approver": v.approver, "role": v.role,
                           "fingerprint": v.fingerprint, "content_sha256": v.content_sha256, "counts": v.counts,
                           "current": v.current, "problem": v.problem, "note": v.note} for v in assessment.approvals],
        }, ensure_ascii=False, indent=2))
        return 0 if reason is None else 1
    print(f"source catalogue {catalogue.source}  {catalogue.title} (owner {catalogue.owner})")
    print(f"  file:           {path}")
    print(f"  content sha256: {assessment.content_sha256}")
    print("  approvals:" + ("      none" if not assessment.approvals else ""))
    for v in assessment.approvals:
        verdict = ("COUNTS: approves the current content" if v.counts else
                   f"does not count: {v.problem}" if v.problem else "does not count: approved other content")
        print(f"    #{v.seq:<5} {v.at[:19]}Z  {v.approver} ({v.role}) key {v.fingerprint}\n           {verdict}")
    print("  gate:           " + ("contracts reading this source may be authorised" if reason is None
                                  else f"every contract reading this source is REFUSED: {reason}"))
    return 0 if reason is None else 1


def _status(args: argparse.Namespace) -> int:
    catalogue_file = _catalogue_file(args.contract)
    if catalogue_file is not None:
        return _catalogue_status(args, catalogue_file)
    path = contract_path(args.contract)
    contract = load_contract(path)
    registry = _registry()
    catalogue: Catalogue | None = None
    catalogue_reason: str | None = None
    try:
        catalogue = _catalogue(contract)
    except ConfigError as exc:
        catalogue_reason = f"its source catalogue is unusable: {exc}"
    with open_ledger() as ledger:
        assessment = assess(contract, registry, ledger, catalogue)
        history = registry_history(ledger)
        if catalogue is not None:
            catalogue_reason = catalogue_refusal(catalogue, assess_catalogue(catalogue, registry, ledger))
    today = dt.datetime.now(dt.UTC).date()
    reason = date_refusal(contract, today) or catalogue_reason or refusal(contract, assessment)
    latest = history[-1] if history else None
    recorded = latest is not None and latest.sha256 == registry.sha256
    if args.json:
        print(json.dumps({
            "contract": contract.contract, "file": str(path), "content_sha256": assessment.content_sha256,
            "authorised": reason is None, "reason": reason,
            "registry": {"file": str(registry.path), "sha256": registry.sha256,
                         "recorded_seq": latest.seq if recorded and latest else None},
            "catalogue": None if catalogue is None else {"source": catalogue.source,
                                                         "sha256": catalogue.content_sha256},
            "approvals": [{"seq": v.seq, "at": v.at, "actor": v.actor, "approver": v.approver, "role": v.role,
                           "fingerprint": v.fingerprint, "content_sha256": v.content_sha256, "counts": v.counts,
                           "current": v.current, "problem": v.problem or v.catalogue_problem,
                           "catalogue_sha256": v.catalogue_sha256, "changes": list(v.changes), "note": v.note}
                          for v in assessment.approvals],
        }, ensure_ascii=False, indent=2))
        return 0 if reason is None else 1
    print(f"{contract.contract}  {contract.title} → {contract.contractor}")
    print(f"  file:           {path}")
    print(f"  content sha256: {assessment.content_sha256}")
    print(f"  valid:          {contract.valid.from_} to {contract.valid.until}; assurance "
          f"{contract.security_assurance.reference} expires {contract.security_assurance.expires}")
    if contract.unmasked:
        columns = ", ".join(f"{u.dataset}.{u.column}" for u in contract.unmasked)
        print(f"  unmasked:       {columns} (needs two approvers, one an Information Asset Manager)")
    if recorded and latest is not None:
        state = f"recorded in the ledger as #{latest.seq}"
    else:
        last = f"#{latest.seq}" if latest is not None else "never"
        state = f"differs from the last recorded state ({last}); the next approve or run records it"
    print(f"  registry:       {registry.path} sha256 {registry.sha256[:16]}… ({state})")
    if catalogue is not None:
        print(f"  catalogue:      {catalogue.source} sha256 {catalogue.content_sha256[:16]}… (owner {catalogue.owner})")
    if not assessment.approvals:
        print("  approvals:      none")
    else:
        print("  approvals:")
    for v in assessment.approvals:
        who = f"#{v.seq:<5} {v.at[:19]}Z  {v.approver} ({v.role}) key {v.fingerprint}"
        if v.counts:
            verdict = "COUNTS: approves the current content"
        elif v.problem:
            verdict = f"does not count: {v.problem}"
        elif v.catalogue_problem:
            verdict = f"does not count: {v.catalogue_problem}"
        else:
            verdict = "does not count: approved other content; changed since: " + "; ".join(v.changes)
        print(f"    {who}\n           {verdict}" + (f"\n           note: {v.note}" if v.note else ""))
    if reason is None:
        print(f"  gate:           a run of {contract.contract} would be authorised now")
        return 0
    print(f"  gate:           a run would be REFUSED: {reason}")
    return 1


def _approvers(args: argparse.Namespace) -> int:
    if args.approvers_command == "new-key":
        if args.role not in ROLES or not NAME_PATTERN.match(args.name):
            raise ConfigError(f"--role must be one of {', '.join(ROLES)} and --name letters, digits, '.', '_', "
                              "'-' or '@'", key="approvers new-key")

        private = Path(args.private)
        public = approver_keys.new_approver_key(private, Path(str(private) + ".pub"), args.name)
        print(f"wrote {private} (0600, keep it private) and {private}.pub. Add to the registry "
              "(approvers.yaml):")
        print(f"  - name: {args.name}\n    role: {args.role}\n    key: \"{public.openssh} {args.name}\"")
        return 0
    registry = _registry()
    if args.approvers_command == "allowed-signers":
        sys.stdout.write(registry.allowed_signers())
        return 0
    print(f"{registry.path} (sha256 {registry.sha256}):")
    for a in registry.approvers:
        print(f"  {a.name:<24} {a.role:<28} {a.fingerprint}   {ROLES[a.role]}")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("approve", help="approve a contract's (or a source catalogue's) exact content with a "
                                              "registered approver's key")
    p.add_argument("contract", help="contract id or path to its YAML file, or a source catalogue file")
    p.add_argument("--by", required=True, metavar="NAME", help="the approver's name in the registry")
    p.add_argument("--role", required=True, help="the approver's role (as registered)")
    p.add_argument("--note", help="free text recorded with the approval (no personal data)")
    p.add_argument("--key", help="the approver's private key: OpenSSH (ssh-keygen -t ed25519) or PEM, mode 0600")
    p.add_argument("--print-statement", action="store_true", help="print the statement to sign with ssh-keygen")
    p.add_argument("--statement", help="a statement made with --print-statement …")
    p.add_argument("--signature", help="… and its signature by 'ssh-keygen -Y sign -n contract-extracts-approval'")
    p.set_defaults(func=_approve)

    p = subparsers.add_parser("revoke", help="withdraw approvals of a contract or catalogue (no signature needed)")
    p.add_argument("contract", help="contract id or path to its YAML file, or a source catalogue file")
    p.add_argument("--by", metavar="NAME", help="withdraw only this approver's approvals (default: all)")
    p.add_argument("--reason", help="why (recorded)")
    p.set_defaults(func=_revoke)

    p = subparsers.add_parser("status", help="what is approved, by whom, and whether the file changed since")
    p.add_argument("contract", help="contract id or path to its YAML file, or a source catalogue file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_status)

    p = subparsers.add_parser("approvers", help="the approver registry")
    sub = p.add_subparsers(dest="approvers_command", required=True)
    sub.add_parser("list", help="list registered approvers, roles and key fingerprints")
    sub.add_parser("allowed-signers", help="print an OpenSSH allowed_signers file (for ssh-keygen -Y verify)")
    k = sub.add_parser("new-key", help="make an Ed25519 approver key pair (OpenSSH format)")
    k.add_argument("private")
    k.add_argument("--name", required=True)
    k.add_argument("--role", default="approver")
    p.set_defaults(func=_approvers)
