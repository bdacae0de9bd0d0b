"""``contract-extracts approve | revoke | status | approvers``: signed approvals of contracts.

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
import getpass
import json
import sys
from pathlib import Path


def _actor() -> str:
    return f"cli:{getpass.getuser()}"


def _contract_path(value: str) -> Path:
    from core.settings import load_settings

    path = Path(value)
    if path.suffix in (".yaml", ".yml"):
        return path
    return load_settings().contracts_dir / f"{value}.yaml"


def _registry():
    from authorisation.registry import load_registry, registry_path
    from core.settings import load_settings

    return load_registry(registry_path(load_settings().config_dir))


def _approve(args: argparse.Namespace) -> int:
    from audit.keys import open_ledger
    from authorisation import sshsig
    from authorisation.approvals import Statement, approve, assess, make_statement, refusal
    from contracts.loading import load_contract
    from core.errors import AuthorisationError

    path = _contract_path(args.contract)
    contract = load_contract(path)
    registry = _registry()
    if args.print_statement:
        sys.stdout.write(make_statement(contract, registry, args.by, args.role).text())
        print(f"sign it with: ssh-keygen -Y sign -n {sshsig.APPROVAL_NAMESPACE} -f YOUR_KEY FILE, then run "
              "approve again with --statement FILE --signature FILE.sig", file=sys.stderr)
        return 0
    private_key = statement = signature = None
    if args.key:
        private_key = sshsig.load_private_key(Path(args.key))
    elif args.statement and args.signature:
        statement = Statement.parse(Path(args.statement).read_text(encoding="utf-8"))
        signature = Path(args.signature).read_text(encoding="ascii")
    else:
        raise AuthorisationError("give --key KEY, or --statement FILE and --signature FILE (or --print-statement)")
    entry = registry.get(args.by)
    with open_ledger() as ledger:
        record = approve(contract=contract, registry=registry, ledger=ledger, approver=args.by, role=args.role,
                         actor=_actor(), note=args.note, private_key=private_key, statement=statement,
                         signature=signature, contract_file=path.absolute())
        reason = refusal(contract, assess(contract, registry, ledger))
    details = record.details_obj()
    title = entry.role_title if entry else args.role
    print(f"approved {contract.contract} (content sha256 {details['content_sha256']}) as {args.by} ({title}, key "
          f"{details['fingerprint']}): ledger record #{record.seq}")
    print(f"approvals of {contract.contract}: " + ("sufficient for a run" if reason is None else f"not yet: {reason}"))
    return 0


def _revoke(args: argparse.Namespace) -> int:
    from audit.keys import open_ledger
    from authorisation.approvals import revoke
    from contracts.loading import load_contract
    from core.errors import ConfigError

    path = _contract_path(args.contract)
    contract = registry = None
    try:
        contract = load_contract(path)
        registry = _registry()
    except ConfigError:
        pass  # withdrawing needs neither a valid file nor a registry: it only takes authority away
    contract_id = contract.contract if contract else path.stem
    with open_ledger() as ledger:
        record = revoke(contract=contract, contract_id=contract_id, ledger=ledger, actor=_actor(),
                        approver=args.by, reason=args.reason, registry=registry)
    withdrawn = record.details_obj()["withdrawn"]
    whose = f"{args.by}'s approvals" if args.by else "all approvals"
    print(f"withdrew {whose} of {contract_id} (records {', '.join(f'#{s}' for s in withdrawn) or 'none counted'}): "
          f"ledger record #{record.seq}. Runs need a new approval")
    return 0


def _status(args: argparse.Namespace) -> int:
    from audit.keys import open_ledger
    from authorisation.approvals import assess, refusal
    from authorisation.gate import date_refusal
    from authorisation.registry import registry_history
    from contracts.loading import load_contract

    path = _contract_path(args.contract)
    contract = load_contract(path)
    registry = _registry()
    with open_ledger() as ledger:
        assessment = assess(contract, registry, ledger)
        history = registry_history(ledger)
    today = dt.datetime.now(dt.UTC).date()
    reason = date_refusal(contract, today) or refusal(contract, assessment)
    latest = history[-1] if history else None
    recorded = latest is not None and latest.sha256 == registry.sha256
    if args.json:
        print(json.dumps({
            "contract": contract.contract, "file": str(path), "content_sha256": assessment.content_sha256,
            "authorised": reason is None, "reason": reason,
            "registry": {"file": str(registry.path), "sha256": registry.sha256,
                         "recorded_seq": latest.seq if recorded and latest else None},
            "approvals": [{"seq": v.seq, "at": v.at, "actor": v.actor, "approver": v.approver, "role": v.role,
                           "fingerprint": v.fingerprint, "content_sha256": v.content_sha256, "counts": v.counts,
                           "current": v.current, "problem": v.problem, "changes": list(v.changes), "note": v.note}
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
        else:
            verdict = "does not count: approved other content; changed since: " + "; ".join(v.changes)
        print(f"    {who}\n           {verdict}" + (f"\n           note: {v.note}" if v.note else ""))
    if reason is None:
        print(f"  gate:           a run of {contract.contract} would be authorised now")
        return 0
    print(f"  gate:           a run would be REFUSED: {reason}")
    return 1


def _approvers(args: argparse.Namespace) -> int:
    from authorisation.registry import ROLES

    if args.approvers_command == "new-key":
        from authorisation.registry import NAME_PATTERN
        from authorisation.sshsig import new_approver_key
        from core.errors import ConfigError

        if args.role not in ROLES or not NAME_PATTERN.match(args.name):
            raise ConfigError(f"--role must be one of {', '.join(ROLES)} and --name letters, digits, '.', '_', "
                              "'-' or '@'", key="approvers new-key")

        private = Path(args.private)
        public = new_approver_key(private, Path(str(private) + ".pub"), args.name)
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


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("approve", help="approve a contract's exact content with a registered approver's key")
    p.add_argument("contract", help="contract id or path to its YAML file")
    p.add_argument("--by", required=True, metavar="NAME", help="the approver's name in the registry")
    p.add_argument("--role", required=True, help="the approver's role (as registered)")
    p.add_argument("--note", help="free text recorded with the approval (no personal data)")
    p.add_argument("--key", help="the approver's private key: OpenSSH (ssh-keygen -t ed25519) or PEM, mode 0600")
    p.add_argument("--print-statement", action="store_true", help="print the statement to sign with ssh-keygen")
    p.add_argument("--statement", help="a statement made with --print-statement …")
    p.add_argument("--signature", help="… and its signature by 'ssh-keygen -Y sign -n contract-extracts-approval'")
    p.set_defaults(func=_approve)

    p = subparsers.add_parser("revoke", help="withdraw approvals of a contract (no signature needed)")
    p.add_argument("contract", help="contract id or path to its YAML file")
    p.add_argument("--by", metavar="NAME", help="withdraw only this approver's approvals (default: all)")
    p.add_argument("--reason", help="why (recorded)")
    p.set_defaults(func=_revoke)

    p = subparsers.add_parser("status", help="what is approved, by whom, and whether the file changed since")
    p.add_argument("contract", help="contract id or path to its YAML file")
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
