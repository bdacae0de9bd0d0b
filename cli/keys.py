"""``contract-extracts keys …``: make and inspect keys. Files are written 0600; only public parts and ids print.

    contract-extracts keys new-master FILE           a new 32-byte master key; prints its key id
    contract-extracts keys id [--file FILE]...       key ids of the configured (or given) master keys
    contract-extracts keys new-recipient FILE        a new age identity; prints its public key
    contract-extracts keys new-signing PRIVATE PUBLIC  a new Ed25519 sender key pair; prints its fingerprint

Rotation (docs/masking.md): make a new master key, give workers both files
(``CONTRACT_EXTRACTS_MASTER_KEY_FILE=old.key:new.key``), name the current one
(``CONTRACT_EXTRACTS_MASTER_KEY_ID``), and pin ``key_id`` in contracts that must keep their pseudonyms.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from delivery.recipients import new_identity_file
from delivery.signing import compare_command, fingerprint, new_signing_key
from masking.keys import FileKeySource, KeySource, default_key_source, new_master_key_file


def _new_master(args: argparse.Namespace) -> int:
    master = new_master_key_file(Path(args.file))
    print(f"wrote master key {args.file} (mode 0600), key id {master.key_id}")
    return 0


def _ids(args: argparse.Namespace) -> int:
    source: KeySource = FileKeySource(tuple(Path(f) for f in args.file), {}) if args.file else default_key_source()
    keyring = source.load()
    try:
        current = keyring.current.key_id
    except Exception:
        current = None
    for key in keyring.keys:
        mark = "  current" if key.key_id == current else ""
        print(f"{key.key_id}{mark}  ({key.source})")
    return 0


def _new_recipient(args: argparse.Namespace) -> int:
    public = new_identity_file(Path(args.file))
    print(f"wrote age identity {args.file} (mode 0600); public key (give this to the sender):")
    print(public)
    return 0


def _new_signing(args: argparse.Namespace) -> int:
    public_path = Path(args.public)
    openssh = public_path.with_name(public_path.name.removesuffix(".pub") + ".ssh.pub")
    public = new_signing_key(Path(args.private), public_path, openssh)
    print(f"wrote signing key {args.private} (mode 0600), public key {args.public} (PEM) and {openssh} (OpenSSH); "
          f"fingerprint {fingerprint(public)} (recipients compare it with: {compare_command(str(openssh))})")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("keys", help="generate and inspect keys (only public parts and ids are printed)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    keys = p.add_subparsers(dest="keys_command", required=True)
    k = keys.add_parser("new-master", help="write a new 32-byte master key file (0600), print its key id")
    k.add_argument("file")
    k.set_defaults(func=_new_master)
    k = keys.add_parser("id", help="print the key ids of the configured master keys (the current one marked)")
    k.add_argument("--file", action="append", default=[],
                   help="read this master key file instead of the configured source (repeatable)")
    k.set_defaults(func=_ids)
    k = keys.add_parser("new-recipient", help="write a new age identity file (0600), print its public key")
    k.add_argument("file")
    k.set_defaults(func=_new_recipient)
    k = keys.add_parser("new-signing", help="write a new Ed25519 sender signing key pair")
    k.add_argument("private")
    k.add_argument("public")
    k.set_defaults(func=_new_signing)
