"""Receipts: the ledger head every package carries inside its signed manifest.

When a package is made, its manifest (format ``contract-extracts/package/v2``) records the ledger head
at that moment, ``"ledger": {"seq": N, "hash": "<hash of record N>"}``, and the sender signs the
manifest. Every contractor therefore holds a signed statement of what the ledger's record N was.
``contract-extracts audit verify --receipt manifest.json`` (any number) proves that the ledger still
*extends* each receipt: record N exists and has exactly that hash, which through the chain fixes every
record before it. Truncating the ledger below a receipt, or rewriting any record at or below it (even
with every later hash recomputed, even with the ledger key), is detected; the receipts are held by
people outside the data owner, so they cannot all be recalled.

A receipt is read from a decrypted package: ``manifest.json`` with ``manifest.sig`` beside it (or the
folder holding both), and checked with the sender's public key before it is believed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from audit.ledger import GENESIS, Anchor, Ledger
from core import sshsig
from core.errors import VerificationError

RECEIPT_FIELD = "ledger"
"""The manifest field holding the receipt."""
_HASH = re.compile(r"^[0-9a-f]{64}$")
_MAX_MANIFEST_BYTES = 16 << 20


@dataclass(frozen=True)
class Receipt:
    seq: int
    hash: str
    contract: str
    delivery: str
    source: str

    def anchor(self) -> Anchor:
        return Anchor(seq=self.seq, hash=self.hash,
                      label=f"receipt {self.source} (contract {self.contract} delivery {self.delivery}, "
                            f"head {self.seq})")


def head_for_manifest(ledger: Ledger) -> dict[str, Any]:
    """The ``ledger`` field of a manifest being made now: the current head (seq 0 and 64 zeros when empty)."""
    head = ledger.head()
    return {"seq": head.seq if head else 0, "hash": head.hash if head else GENESIS}


def _files(path: Path) -> tuple[Path, Path]:
    if path.is_dir():
        return path / "manifest.json", path / "manifest.sig"
    beside = path.with_name("manifest.sig")
    if path.name == "manifest.json" or not path.with_name(path.name + ".sig").exists():
        return path, beside
    return path, path.with_name(path.name + ".sig")


def read_receipt(path: Path, senders: Sequence[Ed25519PublicKey]) -> Receipt:
    """Load a manifest's receipt after checking ``manifest.sig`` with one of the ``senders``' keys."""
    manifest_path, signature_path = _files(path)
    try:
        body = manifest_path.read_bytes()
        signature = signature_path.read_bytes()
    except OSError as exc:
        raise VerificationError(f"receipt {path}: cannot read {exc.filename} ({exc.strerror}); give manifest.json "
                                "of a decrypted package, with manifest.sig beside it") from None
    if len(body) > _MAX_MANIFEST_BYTES:
        raise VerificationError(f"receipt {path}: manifest.json is implausibly large")
    for key in senders:
        try:
            key.verify(signature, body)
            break
        except InvalidSignature:
            continue
    else:
        raise VerificationError(f"receipt {path}: manifest.sig does not verify with the sender key "
                                f"{', '.join(sshsig.fingerprint(k) for k in senders)}: altered, or signed by "
                                "another key")
    try:
        manifest = json.loads(body)
        field = manifest[RECEIPT_FIELD]
        seq, head_hash = field["seq"], field["hash"]
        contract, delivery = str(manifest["contract"]), str(manifest["delivery"])
    except (ValueError, KeyError, TypeError):
        raise VerificationError(f"receipt {path}: the manifest holds no ledger receipt (only packages of format "
                                "contract-extracts/package/v2 and later carry one)") from None
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0 or not isinstance(head_hash, str) \
            or not _HASH.match(head_hash):
        raise VerificationError(f"receipt {path}: the manifest's ledger receipt is malformed")
    return Receipt(seq=seq, hash=head_hash, contract=contract, delivery=delivery, source=str(path))
