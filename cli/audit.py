"""``contract-extracts audit …``: verify, show, export, checkpoint the ledger; make a ledger key.

    contract-extracts audit verify [--checkpoint FILE]... [--sender-key PUB]
    contract-extracts audit show [--contract ID] [--action A] [--since T] [--delivery D] [--json]
    contract-extracts audit export --format jsonl|csv [--out FILE] [--contract ID] [--action A] [--since T]
    contract-extracts audit checkpoint FILE          (FILE '-' writes to stdout)
    contract-extracts audit new-key FILE             (a 0600 ledger key for keyed mode)
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path


def _actor() -> str:
    return f"cli:{getpass.getuser()}"


def _sender_public(path: str | None):
    from delivery.signing import load_public_key, load_signing_key

    if path:
        return load_public_key(Path(path))
    return load_signing_key().public_key()


def _verify(args: argparse.Namespace) -> int:
    from audit.checkpoint import read_checkpoint
    from audit.keys import open_ledger

    checkpoints = []
    if args.checkpoint:
        public = _sender_public(args.sender_key)
        checkpoints = [read_checkpoint(Path(f), public) for f in args.checkpoint]
    with open_ledger() as ledger:
        result = ledger.verify(anchors=[c.anchor() for c in checkpoints])
        mode = "keyed" if ledger.keyed else "unkeyed"
    if not result.ok:
        print(f"ledger BROKEN: {result.reason}", file=sys.stderr)
        return 1
    print(f"ledger ok ({mode}): {result.records} records, head #{result.head_seq} {result.head_hash}")
    for c in checkpoints:
        print(f"checkpoint ok: {c.source} (head #{c.seq} of {c.at}) is part of the chain")
    return 0


def _show(args: argparse.Namespace) -> int:
    from audit.keys import open_ledger

    with open_ledger() as ledger:
        records = ledger.records(contract=args.contract, action=args.action, since=args.since,
                                 delivery=args.delivery)
    for r in records:
        if args.json:
            print(json.dumps({"seq": r.seq, "at": r.at, "actor": r.actor, "action": r.action,
                              "contract": r.contract, "delivery": r.delivery,
                              "details": r.details_obj(), "hash": r.hash}, ensure_ascii=False))
        else:
            print(f"#{r.seq:<5} {r.at}  {r.action:<18} {r.contract or '-':<12} {r.delivery or '-':<26} "
                  f"{r.actor}  {r.details}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from audit.export import export
    from audit.keys import open_ledger

    with open_ledger() as ledger:
        result = export(ledger, fmt=args.format, out=args.out, actor=_actor(), contract=args.contract,
                        action=args.action, since=args.since, delivery=args.delivery)
    print(f"exported {result.records} records to {result.destination} (sha256 {result.sha256}); recorded as "
          f"ledger record #{result.record.seq}", file=sys.stderr)
    return 0


def _checkpoint(args: argparse.Namespace) -> int:
    from audit.checkpoint import write_checkpoint
    from audit.keys import open_ledger
    from delivery.signing import load_signing_key

    key = load_signing_key()
    with open_ledger() as ledger:
        record = write_checkpoint(ledger, key, args.file, actor=_actor())
    details = record.details_obj()
    print(f"checkpoint of head #{details['seq']} {details['hash']} written to {details['file']}, signed by "
          f"{details['signer']}; keep it away from the database (recorded as #{record.seq})", file=sys.stderr)
    return 0


def _new_key(args: argparse.Namespace) -> int:
    from audit.keys import LEDGER_KEY_FILE_ENV, new_ledger_key_file

    new_ledger_key_file(Path(args.file))
    print(f"wrote ledger key {args.file} (mode 0600). Use it for a NEW ledger (every writer and verifier sets "
          f"{LEDGER_KEY_FILE_ENV}); an existing unkeyed chain cannot switch modes")
    return 0


def _dispatch(args: argparse.Namespace) -> int:
    return {"verify": _verify, "show": _show, "export": _export, "checkpoint": _checkpoint,
            "new-key": _new_key}[args.audit_command](args)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("audit", help="the audit ledger: verify, show, export, checkpoint")
    audit = p.add_subparsers(dest="audit_command", required=True)

    v = audit.add_parser("verify", help="recompute the hash chain; name the first broken record")
    v.add_argument("--checkpoint", action="append", metavar="FILE",
                   help="a signed checkpoint the ledger must still extend (repeatable)")
    v.add_argument("--sender-key", help="sender's Ed25519 public key (PEM) that signed the checkpoints "
                                        "(default: the configured signing key)")

    show = audit.add_parser("show", help="list ledger records")
    show.add_argument("--contract")
    show.add_argument("--action")
    show.add_argument("--since", help="ISO 8601 time")
    show.add_argument("--delivery")
    show.add_argument("--json", action="store_true", help="one JSON object per line")

    e = audit.add_parser("export", help="export records as JSON Lines or CSV (recorded in the ledger)")
    e.add_argument("--format", choices=("jsonl", "csv"), required=True)
    e.add_argument("--out", default="-", help="new file to write (default: stdout)")
    e.add_argument("--contract")
    e.add_argument("--action")
    e.add_argument("--since", help="ISO 8601 time")
    e.add_argument("--delivery")

    c = audit.add_parser("checkpoint", help="write the signed chain head to FILE ('-': stdout) to keep elsewhere")
    c.add_argument("file")

    k = audit.add_parser("new-key", help="write a new ledger HMAC key file (0600) for keyed mode")
    k.add_argument("file")
    p.set_defaults(func=_dispatch)
