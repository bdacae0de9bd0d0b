"""Signed checkpoints of the ledger head, kept away from the database.

A table alone cannot prove it was not truncated, nor (unkeyed) that it was not rewritten wholesale
with a freshly computed chain. A checkpoint can: ``audit checkpoint FILE`` writes the head (seq and
hash) and the time, signed with the sender's Ed25519 key (``CONTRACT_EXTRACTS_SIGNING_KEY_FILE``).
Keep the file elsewhere (another host, a ticket, an e-mail to the auditor). Later,
``audit verify --checkpoint FILE`` proves the ledger still *extends* that head: record ``seq`` exists
and has exactly that hash, which through the chain fixes every record before it.

File (JSON)::

    {"checkpoint": {"format": "contract-extracts/ledger-checkpoint/v1", "seq": 1234, "hash": "…",
                    "head_at": "…", "at": "…", "ledger": "postgresql+psycopg://…", "table": "audit_ledger",
                    "keyed": true, "signer": "ed25519:…"},
     "signature": "<base64 Ed25519 signature of the canonical JSON of 'checkpoint'>"}

The canonical JSON is ``json.dumps(checkpoint, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``
in UTF-8, the same rule as ledger bodies, so the signature checks with OpenSSL too (docs/audit.md).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from audit.ledger import GENESIS, Anchor, Ledger, LedgerRecord, canonical_json
from core.errors import LedgerError, VerificationError
from delivery.signing import fingerprint

CHECKPOINT_FORMAT = "contract-extracts/ledger-checkpoint/v1"
CHECKPOINT_ACTION = "checkpoint_written"
_MAX_BYTES = 64 * 1024


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    hash: str
    at: str
    body: dict[str, Any]
    source: str

    def anchor(self) -> Anchor:
        return Anchor(seq=self.seq, hash=self.hash, label=f"checkpoint {self.source} (head {self.seq} at {self.at})")


def make_checkpoint(ledger: Ledger, signing_key: Ed25519PrivateKey) -> tuple[dict[str, Any], str]:
    """The signed checkpoint document of ``ledger``'s current head, and its JSON text."""
    head = ledger.head()
    body = {
        "format": CHECKPOINT_FORMAT,
        "seq": head.seq if head else 0,
        "hash": head.hash if head else GENESIS,
        "head_at": head.at if head else None,
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"),
        "ledger": ledger.location,
        "table": ledger.table,
        "keyed": ledger.keyed,
        "signer": fingerprint(signing_key.public_key()),
    }
    signature = signing_key.sign(canonical_json(body).encode("utf-8"))
    document = {"checkpoint": body, "signature": base64.b64encode(signature).decode("ascii")}
    return document, json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_checkpoint(ledger: Ledger, signing_key: Ed25519PrivateKey, out: str, *, actor: str) -> LedgerRecord:
    """Write a checkpoint to ``out`` (a new file, or ``-`` for stdout), then record that in the ledger."""
    document, text = make_checkpoint(ledger, signing_key)
    if out == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        destination = "stdout"
    else:
        path = Path(out)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            raise LedgerError(f"{path} already exists; a checkpoint never overwrites a file. Fix: choose a new "
                              "name (e.g. with the date)") from None
        except OSError as exc:
            raise LedgerError(f"cannot create {path} ({exc.strerror})") from None
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        destination = str(path)
    body = document["checkpoint"]
    return ledger.append(actor=actor, action=CHECKPOINT_ACTION, contract=None, delivery=None, details={
        "seq": body["seq"], "hash": body["hash"], "at": body["at"], "signer": body["signer"],
        "keyed": body["keyed"], "file": destination})


def read_checkpoint(path: Path, public_key: Ed25519PublicKey) -> Checkpoint:
    """Load a checkpoint file and check its signature with the sender's public key."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise VerificationError(f"checkpoint {path} cannot be read ({exc.strerror})") from None
    if len(raw) > _MAX_BYTES:
        raise VerificationError(f"checkpoint {path} is too large to be a checkpoint")
    try:
        document = json.loads(raw.decode("utf-8"))
        body = document["checkpoint"]
        signature = base64.b64decode(document["signature"], validate=True)
        seq, head_hash, at = body["seq"], body["hash"], body["at"]
        if (body["format"] != CHECKPOINT_FORMAT or not isinstance(seq, int) or seq < 0
                or not isinstance(head_hash, str) or len(head_hash) != 64 or not isinstance(at, str)):
            raise ValueError
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, binascii.Error):
        raise VerificationError(f"checkpoint {path} is not a {CHECKPOINT_FORMAT} file") from None
    try:
        public_key.verify(signature, canonical_json(body).encode("utf-8"))
    except InvalidSignature:
        raise VerificationError(f"checkpoint {path}: the signature does not verify with the sender key "
                                f"{fingerprint(public_key)}: the file was altered or signed by another key") from None
    return Checkpoint(seq=seq, hash=head_hash, at=at, body=body, source=str(path))
