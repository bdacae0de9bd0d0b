"""Delivery subcommands for recipients and senders.

    contract-extracts verify PACKAGE --sender-key PEM [--identity FILE] [--gnupg-home DIR] [--out DIR]
    contract-extracts decrypt PACKAGE --out DIR [--identity FILE] [--sender-key PEM] [--gnupg-home DIR]
    contract-extracts sender-key PEM [--allowed-signers FILE]

``verify`` decrypts as a stream and checks the signatures (``manifest.sig`` and ``manifest.sshsig``),
every checksum and ``SHA256SUMS`` without writing any plaintext; with ``--out`` it also unpacks (like
``decrypt``, but the sender key is required). ``--identity`` is an age identity file or an unencrypted
OpenSSH private key (ed25519/rsa) for ``.tar.age``; ``.tar.gpg`` packages are decrypted by ``gpg`` with
the recipient's keyring (``--gnupg-home`` or ``$GNUPGHOME``). ``sender-key`` prints the sender key's
fingerprint, OpenSSH form and an ``allowed_signers`` line for ``ssh-keygen -Y verify``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def _report(result, *, verb: str) -> None:
    m = result.manifest
    where = f" into {result.out_dir}" if result.out_dir else ""
    print(f"{verb} {m['contract']} delivery {m['delivery']} ({result.encryption}){where}")
    for entry in m["files"]:
        rows = f", {entry['rows']} rows" if "rows" in entry else ""
        print(f"  ok  {entry['path']}  sha256 {entry['sha256'][:16]}…{rows}")
    if result.checksums_file:
        print("SHA256SUMS: agrees with the manifest")
    if result.signature_verified:
        print("signature: verified (manifest.sig, Ed25519, by the sender key)")
        if result.ssh_signature_verified:
            print("ssh signature: verified (manifest.sshsig, namespace contract-extracts-manifest)")
    else:
        print("signature: NOT VERIFIED - pass --sender-key to prove the package came from the sender",
              file=sys.stderr)


def _cmd_verify(args: argparse.Namespace) -> int:
    from delivery.verify import decrypt_package, verify_package

    if args.out:
        result = decrypt_package(Path(args.package), identity=_path(args.identity), out_dir=Path(args.out),
                                 sender_key=Path(args.sender_key), gnupg_home=_path(args.gnupg_home))
    else:
        result = verify_package(Path(args.package), identity=_path(args.identity),
                                sender_key=Path(args.sender_key), gnupg_home=_path(args.gnupg_home))
    _report(result, verb="verified")
    return 0


def _cmd_decrypt(args: argparse.Namespace) -> int:
    from delivery.verify import decrypt_package

    result = decrypt_package(Path(args.package), identity=_path(args.identity), out_dir=Path(args.out),
                             sender_key=_path(args.sender_key), gnupg_home=_path(args.gnupg_home))
    _report(result, verb="decrypted")
    return 0


def _cmd_sender_key(args: argparse.Namespace) -> int:
    from delivery.signing import (
        fingerprint,
        load_public_key,
        ssh_allowed_signers_line,
        ssh_public_line,
    )

    public = load_public_key(Path(args.public))
    line = ssh_allowed_signers_line(public, args.identity)
    print(f"fingerprint: {fingerprint(public)}")
    print(f"openssh: {ssh_public_line(public)}")
    print(f"allowed_signers: {line}")
    if args.allowed_signers:
        Path(args.allowed_signers).write_text(line + "\n", encoding="ascii")
        print(f"wrote {args.allowed_signers}")
    return 0


def _package_args(p: argparse.ArgumentParser, *, sender_required: bool) -> None:
    p.add_argument("package", help="the .tar.age or .tar.gpg file")
    p.add_argument("--identity", help="age identity file or OpenSSH private key (for .tar.age)")
    p.add_argument("--sender-key", required=sender_required,
                   help="sender's Ed25519 public key (PEM), received with the contract")
    p.add_argument("--gnupg-home", help="GnuPG home holding your secret key (for .tar.gpg; default $GNUPGHOME)")


def register(subparsers) -> None:  # argparse's private _SubParsersAction
    p = subparsers.add_parser("verify", help="check a received package: signatures, checksums (nothing written "
                                             "unless --out)")
    _package_args(p, sender_required=True)
    p.add_argument("--out", help="also unpack into this new or empty folder, only if every check passes")
    p.set_defaults(func=_cmd_verify)

    if "decrypt" not in subparsers.choices:  # until cli/__init__.py hands `decrypt` over to this module
        p = subparsers.add_parser("decrypt", help="decrypt a package, verify signature and checksums, unpack it")
        _package_args(p, sender_required=False)
        p.add_argument("--out", required=True, help="folder to create (must be new or empty)")
        p.set_defaults(func=_cmd_decrypt)

    p = subparsers.add_parser("sender-key", help="print the sender key's fingerprint, OpenSSH form and "
                                                 "allowed_signers line")
    p.add_argument("public", help="sender-signing.pub (PEM)")
    p.add_argument("--identity", default="sender@contract-extracts",
                   help="principal name for the allowed_signers line (default sender@contract-extracts)")
    p.add_argument("--allowed-signers", help="also write the allowed_signers line to this file")
    p.set_defaults(func=_cmd_sender_key)
