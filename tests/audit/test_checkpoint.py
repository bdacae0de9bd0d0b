"""Signed checkpoints catch what the table alone cannot: truncation and wholesale rewrites.

A checkpoint covers its own ``checkpoint_written`` record, so deleting the tail including that record is
caught too. Runs on SQLite and PostgreSQL (``backend_url``, see conftest.py).
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text

from audit.checkpoint import (
    CHECKPOINT_ACTION,
    CHECKPOINT_FAILED_ACTION,
    FileSink,
    StoreSpec,
    UploadSink,
    checkpoint_name,
    parse_store,
    read_checkpoint,
    write_checkpoint,
    write_checkpoint_to,
)
from audit.ledger import canonical_json
from core.errors import ConfigError, LedgerError, VerificationError
from delivery.signing import fingerprint

from .test_ledger import KEY, auditor_hash, fill, raw, raw_rows


@pytest.fixture
def signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def checkpoint(ledger, key, path: Path):
    write_checkpoint(ledger, key, str(path), actor="cli:auditor")
    return read_checkpoint(path, key.public_key())


def _rewrite(url: str, from_seq: int, actor: str = "mallory", key: bytes | None = None) -> None:
    """An attacker with write access (and, keyed, the key) re-creates the chain from ``from_seq`` on."""
    rows = raw_rows(url)
    prev = rows[from_seq - 2]["hash"] if from_seq > 1 else "0" * 64
    with raw(url) as conn:
        for row in rows[from_seq - 1:]:
            row["actor"] = actor
            row["prev_hash"] = prev
            row["hash"] = auditor_hash(prev, row, key)
            conn.execute(text("UPDATE audit_ledger SET actor = :a, prev_hash = :p, hash = :h WHERE seq = :s"),
                         {"a": row["actor"], "p": row["prev_hash"], "h": row["hash"], "s": row["seq"]})
            prev = row["hash"]


def test_checkpoint_file_is_signed_and_covers_its_own_record(make_ledger, signing_key, tmp_path: Path) -> None:
    ledger = make_ledger()
    fill(ledger)
    path = tmp_path / "head.json"
    cp = checkpoint(ledger, signing_key, path)
    recorded = ledger.head()
    assert recorded.action == CHECKPOINT_ACTION and recorded.seq == 7
    assert (cp.seq, cp.hash) == (7, recorded.hash), "the checkpoint is of its own record"
    assert recorded.details_obj() == {"destination": str(path), "signer": fingerprint(signing_key.public_key()),
                                      "keyed": False, "covers": "this record",
                                      "format": "contract-extracts/ledger-checkpoint/v2"}
    document = json.loads(path.read_text())
    body = document["checkpoint"]
    assert body["format"] == "contract-extracts/ledger-checkpoint/v2" and body["keyed"] is False
    assert body["head_at"] == recorded.at and body["table"] == "audit_ledger"
    assert body["signer"].startswith("SHA256:")
    signing_key.public_key().verify(base64.b64decode(document["signature"]), canonical_json(body).encode())
    ledger.append(actor="a", action="later", contract=None, delivery=None, details={})
    result = ledger.verify(anchors=[cp.anchor()])
    assert result.ok and result.head_seq == 8, "a ledger that grew still extends the checkpoint"
    with pytest.raises(LedgerError, match="never overwrites"):
        write_checkpoint(ledger, signing_key, str(path), actor="x")
    assert ledger.head().seq == 8, "a refused destination leaves no record"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_checkpoint_signature_checks_with_openssl(make_ledger, signing_key, tmp_path: Path) -> None:
    ledger = make_ledger()
    fill(ledger)
    path = tmp_path / "head.json"
    checkpoint(ledger, signing_key, path)
    document = json.loads(path.read_text())
    (tmp_path / "body").write_bytes(json.dumps(document["checkpoint"], sort_keys=True, separators=(",", ":"),
                                               ensure_ascii=False).encode())
    (tmp_path / "sig").write_bytes(base64.b64decode(document["signature"]))
    (tmp_path / "pub.pem").write_bytes(signing_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    subprocess.run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(tmp_path / "pub.pem"), "-rawin",
                    "-in", str(tmp_path / "body"), "-sigfile", str(tmp_path / "sig")], check=True, capture_output=True)


def test_truncated_tail_is_named(make_ledger, backend_url, signing_key, tmp_path: Path) -> None:
    ledger = make_ledger()
    fill(ledger)
    cp = checkpoint(ledger, signing_key, tmp_path / "head.json")  # record 7 is the checkpoint's own
    with raw(backend_url) as conn:
        conn.execute(text("DELETE FROM audit_ledger WHERE seq > 4"))
    assert ledger.verify().ok, "the table alone cannot tell"
    result = ledger.verify(anchors=[cp.anchor()])
    assert (result.ok, result.first_broken_seq) == (False, 5)
    assert result.reason == (f"records 5 to 7 are missing: the ledger ends at record 4, but checkpoint {tmp_path}/"
                             f"head.json (head 7 at {cp.at}) recorded head 7 (the ledger was truncated)")


def test_emptied_table_is_named(make_ledger, backend_url, signing_key, tmp_path: Path) -> None:
    ledger = make_ledger()
    fill(ledger)
    cp = checkpoint(ledger, signing_key, tmp_path / "head.json")
    with raw(backend_url) as conn:
        conn.execute(text("DELETE FROM audit_ledger"))
    result = ledger.verify(anchors=[cp.anchor()])
    assert result.first_broken_seq == 1 and result.reason.startswith("records 1 to 7 are missing: the ledger ends at "
                                                                      "record 0")


@pytest.mark.parametrize("key", [None, KEY], ids=["unkeyed", "keyed"])
def test_deleting_the_tail_including_the_checkpoint_record_is_detected(make_ledger, backend_url, signing_key,
                                                                      tmp_path: Path, key) -> None:
    """The newest checkpoint and everything after it deleted: the checkpoint file names its own record."""
    ledger = make_ledger(key=key)
    fill(ledger)
    cp = checkpoint(ledger, signing_key, tmp_path / "head.json")
    fill(ledger)  # records 8 to 13 after the checkpoint
    with raw(backend_url) as conn:
        conn.execute(text("DELETE FROM audit_ledger WHERE seq >= 7"))
    assert ledger.verify().ok, "the table alone cannot tell"
    result = ledger.verify(anchors=[cp.anchor()])
    assert result.first_broken_seq == 7
    assert result.reason.startswith("record 7 is missing: the ledger ends at record 6")


@pytest.mark.parametrize("from_seq", [1, 4], ids=["whole-table", "from-record-4"])
def test_recomputed_unkeyed_chain_is_caught_by_a_checkpoint(make_ledger, backend_url, signing_key, tmp_path: Path,
                                                            from_seq: int) -> None:
    ledger = make_ledger()
    fill(ledger)
    cp = checkpoint(ledger, signing_key, tmp_path / "head.json")
    _rewrite(backend_url, from_seq)
    assert ledger.verify().ok, "a recomputed SHA-256 chain verifies from the table alone"
    result = ledger.verify(anchors=[cp.anchor()])
    assert (result.ok, result.first_broken_seq) == (False, 7)
    assert result.reason.startswith("record 7: hash differs from checkpoint")
    assert "rewritten" in result.reason


def test_chain_recomputed_with_the_key_is_caught_by_a_checkpoint(make_ledger, backend_url, signing_key,
                                                                 tmp_path: Path) -> None:
    """An insider holding the ledger key rewrites history: the keyed chain verifies, the checkpoint does not."""
    ledger = make_ledger(key=KEY)
    fill(ledger)
    cp = checkpoint(ledger, signing_key, tmp_path / "head.json")
    _rewrite(backend_url, 3, key=KEY)
    assert ledger.verify().ok
    assert ledger.verify(anchors=[cp.anchor()]).first_broken_seq == 7


def test_recomputed_unkeyed_chain_is_caught_in_keyed_mode(make_ledger, backend_url) -> None:
    ledger = make_ledger(key=KEY)
    fill(ledger)
    _rewrite(backend_url, 4)
    result = ledger.verify()
    assert (result.first_broken_seq, result.reason) == (4, "record 4: hash does not match its content")


def test_several_checkpoints_narrow_down_a_rewrite(make_ledger, backend_url, signing_key, tmp_path: Path) -> None:
    ledger = make_ledger()
    fill(ledger)
    early = checkpoint(ledger, signing_key, tmp_path / "early.json")  # record 7
    fill(ledger)
    late = checkpoint(ledger, signing_key, tmp_path / "late.json")  # record 14
    _rewrite(backend_url, 10)
    result = ledger.verify(anchors=[late.anchor(), early.anchor()])
    assert result.first_broken_seq == 14 and "late.json" in result.reason
    _rewrite(backend_url, 2)
    result = ledger.verify(anchors=[late.anchor(), early.anchor()])
    assert result.first_broken_seq == 7 and "early.json" in result.reason


def test_altered_or_foreign_checkpoint_is_refused(make_ledger, signing_key, tmp_path: Path) -> None:
    ledger = make_ledger()
    fill(ledger)
    path = tmp_path / "head.json"
    write_checkpoint(ledger, signing_key, str(path), actor="x")
    with pytest.raises(VerificationError, match="signature does not verify"):
        read_checkpoint(path, Ed25519PrivateKey.generate().public_key())
    document = json.loads(path.read_text())
    document["checkpoint"]["seq"] = 3
    path.write_text(json.dumps(document))
    with pytest.raises(VerificationError, match="signature does not verify"):
        read_checkpoint(path, signing_key.public_key())
    path.write_text("{}")
    with pytest.raises(VerificationError, match="not a contract-extracts/ledger-checkpoint/v2"):
        read_checkpoint(path, signing_key.public_key())


def test_version_1_checkpoints_still_verify(make_ledger, signing_key, tmp_path: Path) -> None:
    """A v1 file (the head before its record, signer in the old form) written before this version."""
    ledger = make_ledger()
    records = fill(ledger)
    body = {"format": "contract-extracts/ledger-checkpoint/v1", "seq": 6, "hash": records[-1].hash,
            "head_at": records[-1].at, "at": records[-1].at, "ledger": ledger.location, "table": "audit_ledger",
            "keyed": False, "signer": "ed25519:" + "0" * 32}
    signature = base64.b64encode(signing_key.sign(canonical_json(body).encode())).decode()
    path = tmp_path / "v1.json"
    path.write_text(json.dumps({"checkpoint": body, "signature": signature}))
    cp = read_checkpoint(path, signing_key.public_key())
    assert ledger.verify(anchors=[cp.anchor()]).ok


def test_checkpoint_of_an_empty_ledger(make_ledger, signing_key, tmp_path: Path) -> None:
    ledger = make_ledger()
    cp = checkpoint(ledger, signing_key, tmp_path / "head.json")
    assert cp.seq == 1 and ledger.verify(anchors=[cp.anchor()]).ok


def test_a_failed_write_is_recorded(make_ledger, signing_key, tmp_path: Path) -> None:
    ledger = make_ledger()
    fill(ledger)

    def refuse(_local: Path) -> str:
        raise LedgerError("the store refused the upload")
    with pytest.raises(LedgerError, match="refused the upload"):
        write_checkpoint_to(ledger, signing_key, UploadSink("x.json", "sftp://archive/x.json", refuse), actor="t")
    written, failed = ledger.records()[-2:]
    assert written.action == CHECKPOINT_ACTION and failed.action == CHECKPOINT_FAILED_ACTION
    assert failed.details_obj() == {"checkpoint_seq": written.seq, "destination": "sftp://archive/x.json",
                                    "reason": "the store refused the upload"}


def test_upload_sink_gets_the_signed_document(make_ledger, signing_key, tmp_path: Path) -> None:
    ledger = make_ledger()
    fill(ledger)
    received = tmp_path / "second-store"
    received.mkdir()

    def upload(local: Path) -> str:
        target = received / local.name
        target.write_bytes(local.read_bytes())
        return str(target)
    name = checkpoint_name()
    record = write_checkpoint_to(ledger, signing_key, UploadSink(name, f"sftp://archive/{name}", upload), actor="t")
    cp = read_checkpoint(received / name, signing_key.public_key())
    assert (cp.seq, cp.hash) == (record.seq, record.hash)
    folder = tmp_path / "folder-store"
    folder.mkdir()
    record = write_checkpoint_to(ledger, signing_key, FileSink(folder / checkpoint_name()), actor="t")
    [written] = list(folder.iterdir())
    assert read_checkpoint(written, signing_key.public_key()).seq == record.seq


@pytest.mark.parametrize(("value", "expected"), [
    ("/mnt/archive/checkpoints", StoreSpec(kind="path", path=Path("/mnt/archive/checkpoints"))),
    ("sftp://audit_archive/checkpoints/ledger", StoreSpec(kind="sftp", connection="audit_archive",
                                                          segments=("checkpoints", "ledger"))),
    ("sftp://audit_archive", StoreSpec(kind="sftp", connection="audit_archive")),
])
def test_store_setting(value: str, expected: StoreSpec) -> None:
    assert parse_store(value) == expected


@pytest.mark.parametrize("value", ["relative/folder", "", "sftp:///x", "sftp://conn/../etc"])
def test_bad_store_setting_is_a_config_error(value: str) -> None:
    with pytest.raises(ConfigError, match="CONTRACT_EXTRACTS_CHECKPOINT_STORE"):
        parse_store(value)
