"""Recording a recipient's acknowledgement of a delivery (``contract-extracts audit acknowledge FILE``).

The recipient's statement and its SSHSIG signature (``delivery.acknowledgement``) are checked against
the delivery as the ledger recorded it, then recorded as ``delivery_acknowledged``:

- the signature verifies, in the namespace ``contract-extracts-acknowledgement``, with the key it
  carries, and that key's fingerprint is the statement's ``recipient-key``;
- the ledger has a ``delivered`` record for the statement's contract and delivery, whose recipients
  (name and fingerprint, pinned in the contract when the package was made, and listed in its signed
  manifest) include exactly that key under that name: so the signature is checked against the pinned key;
- the package and manifest sha256 in the statement are the ones the ledger recorded as delivered;
- ``verified-at`` is not before the delivery and not in the future (5 minutes of clock skew).

Importing the same statement twice records it once. The record holds names, hashes, fingerprints, the
time and the armoured signature (so an auditor can re-check it with ``ssh-keygen -Y verify``), never data.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from audit.ledger import Ledger, LedgerRecord
from core.errors import LedgerError, VerificationError
from delivery.acknowledgement import MAX_STATEMENT_BYTES, NAMESPACE, verify_acknowledgement

ACK_ACTION = "delivery_acknowledged"
DELIVERED_ACTION = "delivered"
_SKEW = dt.timedelta(minutes=5)
_MAX_SIGNATURE_BYTES = 4096


@dataclass(frozen=True)
class Imported:
    record: LedgerRecord
    new: bool  # False: the same statement was already recorded (this record)


def _read(path: Path, what: str, limit: int) -> str:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise VerificationError(f"{what} {path} cannot be read ({exc.strerror})") from None
    if len(raw) > limit:
        raise VerificationError(f"{what} {path} is too large to be one")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise VerificationError(f"{what} {path} is not UTF-8 text") from None


def delivered_record(ledger: Ledger, contract: str, delivery: str) -> LedgerRecord | None:
    """The ``delivered`` record of one delivery (the last, if a reconciliation wrote one after a crash)."""
    found = [r for r in ledger.records(delivery=delivery, action=DELIVERED_ACTION) if r.contract == contract]
    return found[-1] if found else None


def import_acknowledgement(ledger: Ledger, statement_path: Path, *, actor: str,
                           signature_path: Path | None = None,
                           now: dt.datetime | None = None) -> Imported:
    """Check an acknowledgement against the ledger's record of the delivery and record it."""
    signature_path = signature_path or statement_path.with_name(statement_path.name + ".sig")
    statement = _read(statement_path, "acknowledgement", MAX_STATEMENT_BYTES)
    signature = _read(signature_path, "signature", _MAX_SIGNATURE_BYTES)
    try:
        ack, _signer = verify_acknowledgement(statement, signature)
    except VerificationError as exc:
        raise VerificationError(f"acknowledgement {statement_path} is not valid: {exc}") from None
    delivered = delivered_record(ledger, ack.contract, ack.delivery)
    if delivered is None:
        raise LedgerError(f"acknowledgement {statement_path}: the ledger has no delivered record for contract "
                          f"{ack.contract} delivery {ack.delivery}; nothing was recorded")
    details = delivered.details_obj()
    if details.get("sha256") != ack.package_sha256:
        raise VerificationError(f"acknowledgement {statement_path} is for a package with sha256 "
                                f"{ack.package_sha256[:16]}…, but delivery {ack.delivery} delivered "
                                f"{str(details.get('sha256'))[:16]}…: not the package we sent")
    if details.get("manifest_sha256") not in (None, ack.manifest_sha256):
        raise VerificationError(f"acknowledgement {statement_path}: its manifest sha256 differs from the one "
                                f"delivery {ack.delivery} recorded")
    recipients = details.get("recipients") or []
    pinned = [r for r in recipients if isinstance(r, dict) and r.get("fingerprint") == ack.recipient_key]
    if not pinned:
        raise VerificationError(f"acknowledgement {statement_path} is signed by {ack.recipient_key}, which is not "
                                f"a recipient key of delivery {ack.delivery} (recipients: "
                                f"{', '.join(str(r.get('fingerprint')) for r in recipients if isinstance(r, dict))})")
    if pinned[0].get("name") != ack.recipient:
        raise VerificationError(f"acknowledgement {statement_path} names recipient {ack.recipient!r}, but the key "
                                f"belongs to recipient {pinned[0].get('name')!r} of this delivery")
    verified = ack.verified_time()
    now = now or dt.datetime.now(dt.UTC)
    if verified > now + _SKEW:
        raise VerificationError(f"acknowledgement {statement_path} is dated in the future ({ack.verified_at})")
    if verified < dt.datetime.fromisoformat(delivered.at) - _SKEW:
        raise VerificationError(f"acknowledgement {statement_path} is dated {ack.verified_at}, before the delivery "
                                f"was made ({delivered.at})")
    statement_sha256 = hashlib.sha256(statement.encode("utf-8")).hexdigest()
    for record in ledger.records(delivery=ack.delivery, action=ACK_ACTION):
        if record.contract == ack.contract and record.details_obj().get("statement_sha256") == statement_sha256:
            return Imported(record=record, new=False)
    record = ledger.append(actor=actor, action=ACK_ACTION, contract=ack.contract, delivery=ack.delivery, details={
        "recipient": ack.recipient,
        "recipient_key": ack.recipient_key,
        "package": ack.package,
        "package_sha256": ack.package_sha256,
        "manifest_sha256": ack.manifest_sha256,
        "sender_key": ack.sender_key,
        "verified_at": ack.verified_at,
        "delivered_seq": delivered.seq,
        "statement_sha256": statement_sha256,
        "namespace": NAMESPACE,
        "signature": signature,
        "file": statement_path.name,
    })
    return Imported(record=record, new=True)


def acknowledged(records: Iterable[LedgerRecord]) -> dict[tuple[str, str], list[str]]:
    """(contract, delivery) → names of the recipients whose acknowledgement is recorded, in order."""
    out: dict[tuple[str, str], list[str]] = {}
    for record in records:
        if record.action != ACK_ACTION or record.contract is None or record.delivery is None:
            continue
        name = str(record.details_obj().get("recipient") or "?")
        names = out.setdefault((record.contract, record.delivery), [])
        if name not in names:
            names.append(name)
    return out
