"""``contract-extracts audit …``: verify, show, export, checkpoint the ledger; record acknowledgements.

    contract-extracts audit verify [--checkpoint FILE]... [--receipt MANIFEST]... [--sender-key PUB]
    contract-extracts audit show [--contract ID] [--action A] [--since T] [--delivery D] [--json]
    contract-extracts audit export --format jsonl|csv [--out FILE] [--contract ID] [--action A] [--since T]
    contract-extracts audit checkpoint FILE          (FILE '-' writes to stdout)
    contract-extracts audit acknowledge FILE [--signature SIG]   (a recipient's signed acknowledgement)
    contract-extracts audit reconcile [--contract ID]             (settle crashed runs, sweep their staging)
    contract-extracts audit new-key [FILE]           (0600; default $CONTRACT_EXTRACTS_HOME/keys/ledger.key)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from audit.acknowledgements import import_acknowledgement
from audit.checkpoint import Checkpoint, read_checkpoint, write_checkpoint
from audit.export import export
from audit.opening import LEDGER_KEY_FILE_ENV, default_key_file, new_ledger_key_file, open_ledger
from audit.receipts import Receipt, read_receipt
from cli.arguments import actor
from core.settings import load_settings
from delivery.sftp import env_sftp_endpoint
from delivery.signing import load_public_key, load_signing_key
from pipeline.recovery import recover


def _sender_public(path: str | None) -> Ed25519PublicKey:
    if path:
        return load_public_key(Path(path))
    return load_signing_key().public_key()


def _verify(args: argparse.Namespace) -> int:
    checkpoints: list[Checkpoint] = []
    receipts: list[Receipt] = []
    if args.checkpoint or args.receipt:
        public = _sender_public(args.sender_key)
        checkpoints = [read_checkpoint(Path(f), public) for f in args.checkpoint or ()]
        receipts = [read_receipt(Path(f), [public]) for f in args.receipt or ()]
    with open_ledger() as ledger:
        result = ledger.verify(anchors=[*(c.anchor() for c in checkpoints), *(r.anchor() for r in receipts)])
        mode = "keyed" if ledger.keyed else "unkeyed"
    if not result.ok:
        print(f"ledger BROKEN: {result.reason}", file=sys.stderr)
        return 1
    print(f"ledger ok ({mode}): {result.records} records, head #{result.head_seq} {result.head_hash}")
    for c in checkpoints:
        print(f"checkpoint ok: {c.source} (head #{c.seq} of {c.at}) is part of the chain")
    for r in receipts:
        print(f"receipt ok: {r.source} ({r.contract} delivery {r.delivery}, head #{r.seq}) is part of the chain")
    if mode == "unkeyed":
        print("note: this ledger is unkeyed; without checkpoints and receipts a rewrite with recomputed hashes "
              "would not show", file=sys.stderr)
    return 0


def _show(args: argparse.Namespace) -> int:
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
    with open_ledger() as ledger:
        result = export(ledger, fmt=args.format, out=args.out, actor=actor(), contract=args.contract,
                        action=args.action, since=args.since, delivery=args.delivery)
    print(f"exported {result.records} records to {result.destination} (sha256 {result.sha256}); recorded as "
          f"ledger record #{result.record.seq}", file=sys.stderr)
    return 0


def _checkpoint(args: argparse.Namespace) -> int:
    key = load_signing_key()
    with open_ledger() as ledger:
        record = write_checkpoint(ledger, key, args.file, actor=actor())
    details = record.details_obj()
    print(f"checkpoint of record #{record.seq} {record.hash} (this checkpoint's own record) written to "
          f"{details['destination']}, signed by {details['signer']}; keep it away from the database",
          file=sys.stderr)
    return 0


def _acknowledge(args: argparse.Namespace) -> int:
    with open_ledger() as ledger:
        imported = import_acknowledgement(ledger, Path(args.file), actor=actor(),
                                          signature_path=Path(args.signature) if args.signature else None)
    details = imported.record.details_obj()
    what = "recorded as" if imported.new else "already recorded as"
    print(f"acknowledgement of {imported.record.contract} delivery {imported.record.delivery} by "
          f"{details['recipient']} ({details['recipient_key']}, verified {details['verified_at']}) {what} ledger "
          f"record #{imported.record.seq}")
    return 0


def _reconcile(args: argparse.Namespace) -> int:
    settings = load_settings()
    with open_ledger(settings) as ledger:
        report = recover(ledger, staging_root=settings.staging_dir, actor=actor(), contract=args.contract,
                         resolve_sftp=lambda conn: env_sftp_endpoint(conn, config_dir=settings.config_dir),
                         reconciled_by="audit reconcile")
    for contract, delivery in report.delivered:
        print(f"delivered (found at its destination, now recorded): {contract} {delivery}")
    for contract, delivery in report.abandoned:
        print(f"abandoned (the run ended without delivering): {contract} {delivery}")
    for swept in report.swept:
        print(f"removed staging {swept['staging']} ({swept['files']} files, {swept['bytes']} bytes): {swept['reason']}")
    if report.intents_settled or report.partials_removed:
        print(f"settled {report.intents_settled} unpublished intents; removed {report.partials_removed} partial files")
    for problem in report.skipped:
        print(f"NOT reconciled (try again): {problem}", file=sys.stderr)
    if not (report.delivered or report.abandoned or report.swept or report.intents_settled or report.skipped):
        print("nothing to reconcile: every run has ended and no staging folder is left behind")
    return 1 if report.skipped else 0


def _new_key(args: argparse.Namespace) -> int:
    path = Path(args.file) if args.file else default_key_file(load_settings())
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    new_ledger_key_file(path)
    where = "found there automatically" if not args.file else f"every writer and verifier sets {LEDGER_KEY_FILE_ENV}"
    print(f"wrote ledger key {path} (mode 0600; {where}). Use it for a NEW ledger; an existing unkeyed chain "
          "cannot switch modes")
    return 0


def _dispatch(args: argparse.Namespace) -> int:
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "verify": _verify, "show": _show, "export": _export, "checkpoint": _checkpoint,
        "acknowledge": _acknowledge, "reconcile": _reconcile, "new-key": _new_key}
    return commands[args.audit_command](args)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("audit", help="the audit ledger: verify, show, export, checkpoint")
    audit = p.add_subparsers(dest="audit_command", required=True)

    v = audit.add_parser("verify", help="recompute the hash chain; name the first broken record")
    v.add_argument("--checkpoint", action="append", metavar="FILE",
                   help="a signed checkpoint the ledger must still extend (repeatable)")
    v.add_argument("--receipt", action="append", metavar="MANIFEST",
                   help="manifest.json of a delivered package (manifest.sig beside it), whose signed ledger head "
                        "the ledger must still extend (repeatable)")
    v.add_argument("--sender-key", help="sender's Ed25519 public key (PEM or OpenSSH line) that signed the "
                                        "checkpoints and manifests (default: the configured signing key)")

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

    a = audit.add_parser("acknowledge", help="record a recipient's signed acknowledgement of a delivery")
    a.add_argument("file", help="the acknowledgement statement (<package>.ack)")
    a.add_argument("--signature", help="its SSH signature (default: FILE.sig)")

    r = audit.add_parser("reconcile", help="settle runs that crashed (destination checked against the ledger) "
                                           "and remove staging folders of dead runs")
    r.add_argument("--contract", help="only this contract's deliveries (staging is swept for all)")

    k = audit.add_parser("new-key", help="write a new ledger HMAC key file (0600) for keyed mode")
    k.add_argument("file", nargs="?", help="default: $CONTRACT_EXTRACTS_HOME/keys/ledger.key")
    p.set_defaults(func=_dispatch)
