"""Delivery subcommands for recipients and senders.

    contract-extracts verify  PACKAGE [--identity FILE] [--sender-key KEY]... [--out DIR] [--acknowledge ...]
    contract-extracts decrypt PACKAGE --out DIR [--identity FILE] [--sender-key KEY]...
    contract-extracts sender-key PEM [--openssh FILE] [--allowed-signers FILE] [--trust FILE]

Both check the package's signature by default: the sender key comes from ``--sender-key`` (PEM or an
OpenSSH ``ssh-ed25519`` line, repeatable), else the trust store beside the identity
(``<identity>.senders``), else the user's store (``~/.config/contract-extracts/sender-keys``; see
``delivery.trust``). Without one they refuse, unless ``--insecure-skip-signature-check`` is given (which
says so loudly). ``verify`` decrypts as a stream and writes no plaintext; with ``--out`` it also unpacks
(like ``decrypt``). ``--identity`` is an age identity file or an unencrypted OpenSSH private key
(ed25519/rsa) for ``.tar.age``; ``.tar.gpg`` packages are decrypted by ``gpg`` with the recipient's
keyring (``--gnupg-home`` or ``$GNUPGHOME``). ``--acknowledge`` writes a statement signed with the
recipient's SSH key that the data owner imports with ``audit acknowledge`` (``delivery.acknowledgement``).
``sender-key`` prints the sender key's fingerprint (``SHA256:…``, as ``ssh-keygen -lf`` prints it), its
OpenSSH form and an ``allowed_signers`` line.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

from core.errors import VerificationError
from delivery.acknowledgement import (
    NAMESPACE,
    Acknowledgement,
    load_ack_key,
    recipient_key_fingerprint,
    write_acknowledgement,
)
from delivery.signing import (
    compare_command,
    fingerprint,
    load_public_key,
    ssh_allowed_signers_line,
    ssh_public_line,
)
from delivery.trust import add_to_store, default_store
from delivery.verify import Expected, VerifiedPackage, decrypt_package, verify_package

SKIP_FLAG = "--insecure-skip-signature-check"


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def _warn_unverified() -> None:
    print(f"WARNING: {SKIP_FLAG}: the package's signature was NOT checked. Anyone who knows your public key "
          "could have made this package; do not rely on its contents until it is verified with the sender's "
          "key (--sender-key).", file=sys.stderr)


def _report(result: VerifiedPackage, *, verb: str) -> None:
    m = result.manifest
    where = f" into {result.out_dir} (folder 0700, files 0600)" if result.out_dir else ""
    print(f"{verb} {m['contract']} delivery {m['delivery']} ({result.encryption}){where}")
    for name in result.removed_leftovers:
        print(f"removed {name}: unverified files left by an interrupted decrypt")
    for entry in m["files"]:
        rows = f", {entry['rows']} rows" if "rows" in entry else ""
        print(f"  ok  {entry['path']}  sha256 {entry['sha256'][:16]}…{rows}")
    if result.checksums_file:
        print("SHA256SUMS: agrees with the manifest")
    if result.recipient:
        print(f"recipient: {result.recipient['name']} ({result.recipient['fingerprint']}) is listed in the manifest")
    if result.signature_verified:
        print(f"signature: verified (manifest.sig, Ed25519) by sender key {result.sender_fingerprint} "
              f"from {result.trust_source}")
        if result.ssh_signature_verified:
            print("ssh signature: verified (manifest.sshsig, namespace contract-extracts-manifest)")
    else:
        _warn_unverified()
    ledger = m.get("ledger")
    if isinstance(ledger, dict) and "seq" in ledger:
        print(f"ledger receipt: the sender's audit ledger stood at record #{ledger['seq']} "
              f"({str(ledger.get('hash', ''))[:16]}…) when this package was made; keep manifest.json")


def _expect(args: argparse.Namespace) -> Expected | None:
    if bool(args.contract) != bool(args.delivery):
        raise VerificationError("--contract and --delivery go together: give both, or neither (then the "
                                "package's file name says which delivery it should be)")
    return Expected(args.contract, args.delivery) if args.contract else None


def _check(args: argparse.Namespace, out: str | None) -> VerifiedPackage:
    if args.insecure_skip_signature_check and not args.sender_key:
        _warn_unverified()
    if args.acknowledge and args.insecure_skip_signature_check:
        raise VerificationError(f"--acknowledge cannot be combined with {SKIP_FLAG}: only a verified package "
                                "can be acknowledged")
    identity, expect = _path(args.identity), _expect(args)
    sender_keys = [Path(k) for k in args.sender_key or ()]
    skip, gnupg_home = bool(args.insecure_skip_signature_check), _path(args.gnupg_home)
    if out:
        return decrypt_package(Path(args.package), identity=identity, out_dir=Path(out), sender_keys=sender_keys,
                               skip_signature_check=skip, gnupg_home=gnupg_home, expect=expect)
    return verify_package(Path(args.package), identity=identity, sender_keys=sender_keys,
                          skip_signature_check=skip, gnupg_home=gnupg_home, expect=expect)


def _acknowledge(args: argparse.Namespace, result: VerifiedPackage) -> None:
    key_file = _path(args.ack_key) or _path(args.identity)
    if key_file is None:
        raise VerificationError("--acknowledge needs your SSH key (the one listed as a recipient in the "
                                "contract): pass --ack-key ~/.ssh/id_ed25519")
    key = load_ack_key(key_file)
    named = recipient_key_fingerprint(key.public_key())
    entry = next((r for r in result.manifest.get("recipients", []) if r.get("fingerprint") == named), None)
    if entry is None:
        raise VerificationError(f"your SSH key {named} is not a recipient of this delivery; an acknowledgement "
                                "must be signed with the key pinned in the contract. Fix: --ack-key with that key")
    if result.sender_fingerprint is None or result.package_sha256 is None or result.manifest_sha256 is None:
        raise VerificationError("only a verified package can be acknowledged")
    package = Path(args.package)
    ack = Acknowledgement(
        contract=result.manifest["contract"], delivery=result.manifest["delivery"], package=package.name,
        package_sha256=result.package_sha256, manifest_sha256=result.manifest_sha256,
        recipient=str(entry.get("name", "")), recipient_key=named, sender_key=result.sender_fingerprint,
        verified_at=dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat())
    out = Path(args.ack_out) if args.ack_out else Path(f"{package.name}.ack")
    signature = write_acknowledgement(ack, out, None if args.ack_unsigned else key)
    if signature is None:
        print(f"acknowledgement statement written to {out}; sign it with: ssh-keygen -Y sign -n {NAMESPACE} "
              f"-f {key_file} {out}   (writes {out}.sig); then send both files to the sender")
    else:
        print(f"acknowledgement written to {out} and {signature} (signed by {named}); send both files to the "
              "sender, who records them with: contract-extracts audit acknowledge " + out.name)


def _check_report_acknowledge(args: argparse.Namespace, verb: str) -> int:
    result = _check(args, args.out)
    _report(result, verb=verb)
    if args.acknowledge:
        _acknowledge(args, result)
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    return _check_report_acknowledge(args, "verified")


def _cmd_decrypt(args: argparse.Namespace) -> int:
    return _check_report_acknowledge(args, "decrypted")


def _cmd_sender_key(args: argparse.Namespace) -> int:
    public = load_public_key(Path(args.public))
    line = ssh_allowed_signers_line(public, args.identity)
    print(f"fingerprint: {fingerprint(public)}")
    print(f"openssh: {ssh_public_line(public)}")
    print(f"allowed_signers: {line}")
    if args.openssh:
        Path(args.openssh).write_text(ssh_public_line(public) + "\n", encoding="ascii")
        print(f"wrote {args.openssh}; the recipient compares the fingerprint with: {compare_command(args.openssh)}")
    if args.allowed_signers:
        Path(args.allowed_signers).write_text(line + "\n", encoding="ascii")
        print(f"wrote {args.allowed_signers}")
    if args.trust is not None:
        store = Path(args.trust) if args.trust else default_store()
        added = add_to_store(store, public)
        print(f"{'added to' if added else 'already in'} sender trust store {store} "
              f"(list its fingerprints with: ssh-keygen -lf {store})")
    return 0


def _package_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("package", help="the .tar.age or .tar.gpg file")
    p.add_argument("--identity", help="age identity file or OpenSSH private key (for .tar.age)")
    p.add_argument("--sender-key", action="append", metavar="KEY",
                   help="sender's Ed25519 public key (PEM, or an OpenSSH 'ssh-ed25519' line), received with the "
                        "contract (repeatable; default: <identity>.senders, then "
                        "~/.config/contract-extracts/sender-keys)")
    p.add_argument(SKIP_FLAG, action="store_true",
                   help="DANGEROUS: accept a package without checking who signed it (prints a warning)")
    p.add_argument("--contract", help="the contract id you expect (with --delivery; default: from the file name)")
    p.add_argument("--delivery", help="the delivery id you expect (with --contract)")
    p.add_argument("--gnupg-home", help="GnuPG home holding your secret key (for .tar.gpg; default $GNUPGHOME)")
    p.add_argument("--acknowledge", action="store_true",
                   help="after every check passed, write an acknowledgement signed with your SSH key")
    p.add_argument("--ack-key", help="your Ed25519 SSH private key listed as a recipient (default: --identity)")
    p.add_argument("--ack-out", help="acknowledgement file to create (default ./<package>.ack; signature: .sig)")
    p.add_argument("--ack-unsigned", action="store_true",
                   help=f"write only the statement, to sign with 'ssh-keygen -Y sign -n {NAMESPACE}'")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("verify", help="check a received package: signatures, recipients, checksums "
                                             "(nothing written unless --out)")
    _package_args(p)
    p.add_argument("--out", help="also unpack into this new or empty folder, only if every check passes")
    p.set_defaults(func=_cmd_verify)

    p = subparsers.add_parser("decrypt", help="decrypt a package, verify signature and checksums, unpack it")
    _package_args(p)
    p.add_argument("--out", required=True, help="folder to create (must be new or empty)")
    p.set_defaults(func=_cmd_decrypt)

    p = subparsers.add_parser("sender-key", help="print the sender key's fingerprint, OpenSSH form and "
                                                 "allowed_signers line")
    p.add_argument("public", help="sender-signing.pub (PEM) or its OpenSSH line")
    p.add_argument("--identity", default="sender@contract-extracts",
                   help="principal name for the allowed_signers line (default sender@contract-extracts)")
    p.add_argument("--openssh", help="also write the OpenSSH public key line to this file (for ssh-keygen -lf)")
    p.add_argument("--allowed-signers", help="also write the allowed_signers line to this file")
    p.add_argument("--trust", nargs="?", const="", metavar="STORE",
                   help="recipient side: add the key to a sender trust store (default "
                        "~/.config/contract-extracts/sender-keys)")
    p.set_defaults(func=_cmd_sender_key)
