"""Signed checkpoints of the ledger, kept away from the database; each one covers its own record.

A table alone cannot prove it was not truncated, nor (unkeyed, or by someone holding the key) that it was
not rewritten with a freshly computed chain. A checkpoint can: ``audit checkpoint FILE`` first appends a
``checkpoint_written`` record (where the checkpoint goes, who signs it), then writes that record's seq and
hash, signed with the sender's Ed25519 key (``CONTRACT_EXTRACTS_SIGNING_KEY_FILE``), to FILE. Because the
checkpoint names its own record, deleting the tail of the ledger *including* the ``checkpoint_written``
record is detected too. Keep the file elsewhere (another host, a ticket, an e-mail to the auditor; the
nightly ``ledger_checkpoint`` DAG writes one to a second store, a folder or an SFTP server). Later,
``audit verify --checkpoint FILE`` proves the ledger still *extends* it: record ``seq`` exists with exactly
that hash, which through the chain fixes every record before it.

File (JSON)::

    {"checkpoint": {"format": "contract-extracts/ledger-checkpoint/v2", "seq": 1234, "hash": "…",
                    "head_at": "…", "at": "…", "ledger": "postgresql+psycopg://…", "table": "audit_ledger",
                    "keyed": true, "signer": "SHA256:…"},
     "signature": "<base64 Ed25519 signature of the canonical JSON of 'checkpoint'>"}

v2 (this version): ``seq``/``hash`` are the ``checkpoint_written`` record itself and ``signer`` is the
OpenSSH fingerprint. v1 files (the head *before* the record, ``signer`` as ``ed25519:<hex>``) still verify.
The canonical JSON is ``json.dumps(checkpoint, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``
in UTF-8, the same rule as ledger bodies, so the signature checks with OpenSSL too (docs/audit.md).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import json
import os
import posixpath
import secrets
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from audit.ledger import GENESIS, Anchor, Ledger, LedgerRecord, canonical_json
from core.errors import ConfigError, ContractExtractsError, LedgerError, VerificationError, value_free
from core.settings import load_settings
from delivery.package import sha256_file
from delivery.sftp import SFTPEndpoint, deliver_sftp, env_sftp_endpoint
from delivery.signing import fingerprint

CHECKPOINT_FORMAT = "contract-extracts/ledger-checkpoint/v2"
ACCEPTED_FORMATS = ("contract-extracts/ledger-checkpoint/v1", CHECKPOINT_FORMAT)
CHECKPOINT_ACTION = "checkpoint_written"
CHECKPOINT_FAILED_ACTION = "checkpoint_failed"
STORE_ENV = "CONTRACT_EXTRACTS_CHECKPOINT_STORE"
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


class Sink(Protocol):
    """Where a checkpoint goes: ``destination`` is recorded before ``write`` is called."""

    destination: str

    def write(self, text: str) -> None: ...

    def discard(self) -> None: ...


class FileSink:
    """A new local file, created (exclusively, 0644) before the ledger record names it."""

    def __init__(self, path: Path) -> None:
        try:
            self._fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            raise LedgerError(f"{path} already exists; a checkpoint never overwrites a file. Fix: choose a new "
                              "name (e.g. with the date)") from None
        except OSError as exc:
            raise LedgerError(f"cannot create {path} ({exc.strerror})") from None
        self.path = path
        self.destination = str(path)

    def write(self, text: str) -> None:
        assert self._fd is not None
        fd, self._fd = self._fd, None
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())

    def discard(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.path.unlink(missing_ok=True)


class StdoutSink:
    destination = "stdout"

    def write(self, text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    def discard(self) -> None:
        pass


Uploader = Callable[[Path], str]
"""``upload(local_file) -> remote path``: puts the file at its final name atomically (e.g. delivery.sftp)."""


class UploadSink:
    """A second store reached by an upload (SFTP): the document is written to a private temp file first."""

    def __init__(self, name: str, destination: str, upload: Uploader) -> None:
        self.name = name
        self.destination = destination
        self._upload = upload

    def write(self, text: str) -> None:
        with tempfile.TemporaryDirectory(prefix="ce-checkpoint-") as folder:
            local = Path(folder) / self.name
            local.write_text(text, encoding="utf-8")
            self._upload(local)

    def discard(self) -> None:
        pass


def checkpoint_name(now: dt.datetime | None = None) -> str:
    """``ledger-checkpoint-<UTC time>-<random>.json``: a new name every time, sortable by time."""
    when = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"ledger-checkpoint-{when}-{secrets.token_hex(3)}.json"


@dataclass(frozen=True)
class StoreSpec:
    """A second store: a local folder, or an SFTP connection and folder (``sftp://<conn id>/<folder>``)."""

    kind: str  # "path" | "sftp"
    path: Path | None = None
    connection: str | None = None
    segments: tuple[str, ...] = ()


def parse_store(value: str, key: str = STORE_ENV) -> StoreSpec:
    """Read the checkpoint store setting; a clear ConfigError for anything else."""
    text = value.strip()
    if text.startswith("sftp://"):
        rest = text[len("sftp://"):]
        conn, _, folder = rest.partition("/")
        segments = tuple(s for s in posixpath.normpath("/" + folder).split("/") if s) if folder else ()
        if not conn or any(s in ("..", ".") for s in folder.split("/")):
            raise ConfigError("is not sftp://<connection id>/<folder>", key=key,
                              fix="e.g. sftp://audit_archive/checkpoints (the folder is under the connection's root)")
        return StoreSpec(kind="sftp", connection=conn, segments=segments)
    path = Path(text)
    if not text or not path.is_absolute():
        raise ConfigError("must be an absolute folder path or sftp://<connection id>/<folder>", key=key,
                          fix="e.g. /mnt/audit-archive/checkpoints, on another disk or host than the ledger")
    return StoreSpec(kind="path", path=path)


def sink_for(spec: StoreSpec, resolve_sftp: Callable[[str], SFTPEndpoint] | None = None) -> Sink:
    """A new checkpoint file in the second store: a local folder (which must exist), or an SFTP folder
    (pinned host key, atomic no-overwrite upload, ``delivery.sftp``)."""
    name = checkpoint_name()
    if spec.kind == "path":
        assert spec.path is not None
        if not spec.path.is_dir():
            raise ConfigError(f"folder {spec.path} does not exist", key=STORE_ENV,
                              fix="create it (on another disk or host than the ledger) or correct the setting")
        return FileSink(spec.path / name)
    conn = spec.connection or ""
    resolve = resolve_sftp or (lambda c: env_sftp_endpoint(c, config_dir=load_settings().config_dir))

    def upload(local: Path) -> str:
        sent = deliver_sftp(local, endpoint=resolve(conn), segments=list(spec.segments),
                            expected_sha256=sha256_file(local)[0])
        return sent.path
    return UploadSink(name, f"sftp://{conn}/{'/'.join((*spec.segments, name))}", upload)


def make_checkpoint(ledger: Ledger, signing_key: Ed25519PrivateKey,
                    head: LedgerRecord | None = None) -> tuple[dict[str, Any], str]:
    """The signed checkpoint document of ``head`` (default: the current head), and its JSON text."""
    if head is None:
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


def write_checkpoint_to(ledger: Ledger, signing_key: Ed25519PrivateKey, sink: Sink, *, actor: str) -> LedgerRecord:
    """Record the checkpoint, then write the signed document of that very record to ``sink``.

    If writing fails after the record, a ``checkpoint_failed`` record says so (the destination holds
    nothing); the error propagates.
    """
    try:
        record = ledger.append(actor=actor, action=CHECKPOINT_ACTION, contract=None, delivery=None, details={
            "destination": sink.destination, "signer": fingerprint(signing_key.public_key()),
            "keyed": ledger.keyed, "covers": "this record", "format": CHECKPOINT_FORMAT})
    except BaseException:
        sink.discard()
        raise
    _document, text = make_checkpoint(ledger, signing_key, head=record)
    try:
        sink.write(text)
    except BaseException as exc:
        sink.discard()
        reason = str(exc) if isinstance(exc, ContractExtractsError) else value_free(exc)
        with contextlib.suppress(Exception):  # the write's own error is what the caller must see
            ledger.append(actor=actor, action=CHECKPOINT_FAILED_ACTION, contract=None, delivery=None,
                          details={"checkpoint_seq": record.seq, "destination": sink.destination,
                                   "reason": reason[:300]})
        raise
    return record


def write_checkpoint(ledger: Ledger, signing_key: Ed25519PrivateKey, out: str, *, actor: str) -> LedgerRecord:
    """Write a checkpoint to ``out`` (a new file, or ``-`` for stdout); return its ``checkpoint_written`` record."""
    sink: Sink = StdoutSink() if out == "-" else FileSink(Path(out))
    return write_checkpoint_to(ledger, signing_key, sink, actor=actor)


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
        if (body["format"] not in ACCEPTED_FORMATS or not isinstance(seq, int) or seq < 0
                or not isinstance(head_hash, str) or len(head_hash) != 64 or not isinstance(at, str)):
            raise ValueError
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, binascii.Error):
        raise VerificationError(f"checkpoint {path} is not a {CHECKPOINT_FORMAT} (or v1) file") from None
    try:
        public_key.verify(signature, canonical_json(body).encode("utf-8"))
    except InvalidSignature:
        raise VerificationError(f"checkpoint {path}: the signature does not verify with the sender key "
                                f"{fingerprint(public_key)}: the file was altered or signed by another key") from None
    return Checkpoint(seq=seq, hash=head_hash, at=at, body=body, source=str(path))
