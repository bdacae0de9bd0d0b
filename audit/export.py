"""Export ledger records for auditors (JSON Lines or CSV); the export is itself recorded as an access.

Both formats carry every stored field (``seq, at, actor, action, contract, delivery, details,
prev_hash, hash``) so a complete export reproduces the chain: in JSON Lines ``details`` is the JSON
object, in CSV the exact stored text. The ``exported`` record (who, which filters, how many records,
the sha256 of the exported bytes, where they went) is appended *before* the bytes leave, so there is
no unrecorded export.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from audit.ledger import Ledger, LedgerRecord
from core.errors import LedgerError

EXPORT_ACTION = "exported"
FIELDS = ("seq", "at", "actor", "action", "contract", "delivery", "details", "prev_hash", "hash")
Format = Literal["jsonl", "csv"]


@dataclass(frozen=True)
class ExportResult:
    records: int
    sha256: str
    destination: str
    record: LedgerRecord


def render(records: list[LedgerRecord], fmt: Format) -> bytes:
    if fmt == "jsonl":
        lines = []
        for r in records:
            obj = {"seq": r.seq, "at": r.at, "actor": r.actor, "action": r.action, "contract": r.contract,
                   "delivery": r.delivery, "details": r.details_obj(), "prev_hash": r.prev_hash, "hash": r.hash}
            lines.append(json.dumps(obj, ensure_ascii=False) + "\n")
        return "".join(lines).encode("utf-8")
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(FIELDS)
        for r in records:
            writer.writerow([r.seq, r.at, r.actor, r.action, r.contract or "", r.delivery or "", r.details,
                             r.prev_hash, r.hash])
        return buffer.getvalue().encode("utf-8")
    raise LedgerError(f"unknown export format {fmt!r}; use jsonl or csv")


def export(ledger: Ledger, *, fmt: Format, out: str, actor: str, contract: str | None = None,
           action: str | None = None, since: str | None = None, delivery: str | None = None) -> ExportResult:
    """Write the matching records to ``out`` (a new file, or ``-`` for stdout) after recording the export."""
    records = ledger.records(contract=contract, action=action, since=since, delivery=delivery)
    data = render(records, fmt)
    digest = hashlib.sha256(data).hexdigest()
    path = None if out == "-" else Path(out)
    fd = None
    if path is not None:  # create the file first: a refused destination must not leave an "exported" record
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise LedgerError(f"{path} already exists; an export never overwrites a file") from None
        except OSError as exc:
            raise LedgerError(f"cannot create {path} ({exc.strerror})") from None
    try:
        record = ledger.append(actor=actor, action=EXPORT_ACTION, contract=contract, delivery=delivery, details={
            "format": fmt,
            "filters": {"contract": contract, "action": action, "since": since, "delivery": delivery},
            "records": len(records),
            "first_seq": records[0].seq if records else None,
            "last_seq": records[-1].seq if records else None,
            "sha256": digest,
            "destination": str(path) if path is not None else "stdout",
        })
    except BaseException:
        if fd is not None and path is not None:
            os.close(fd)
            path.unlink(missing_ok=True)
        raise
    if fd is not None and path is not None:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    else:
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    return ExportResult(records=len(records), sha256=digest, destination=str(path) if path else "stdout",
                        record=record)
