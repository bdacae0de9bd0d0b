"""Signed checkpoints catch what the table alone cannot: truncation and wholesale rewrites.

Runs on SQLite and PostgreSQL (``backend_url``, see conftest.py).
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

from audit.checkpoint import CHECKPOINT_ACTION, read_checkpoint, write_checkpoint
from audit.ledger import canonical_json
from core.errors import LedgerError, VerificationError

from .test_ledger import KEY, auditor_hash, fill, raw, raw_rows


@pytest.fixture
def signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def checkpoint(ledger, key, path: Path):
    write_checkpoint(ledger, key, str(path), actor="cli:auditor")
    return read_checkpoint(path, key.public_key())


def _rewrite_unkeyed(url: str, from_seq: int, actor: str = "mallory") -> None:
    """An attacker with write access re-creates the chain from ``from_seq`` on, with valid SHA-256 hashes."""
    rows = raw_rows(url)
    prev = rows[from_seq - 2]["hash"] if from_seq > 1 else "0" * 64
    with raw(url) as conn:
        for row in rows[from_seq - 1:]:
            row["actor"] = actor
            row["prev_hash"] = prev
            row["hash"] = auditor_hash(prev, row)
            conn.execute(text("UPDATE audit_ledger SET actor = :a, prev_hash = :p, hash = :h WHERE seq = :s"),
                         {"a": row["actor"], "p": row["prev_hash"], "h": row["hash"], "s": row["seq"]})
            prev = row["hash"]


def test_checkpoint_file_is_signed_and_recorded(make_ledger, signing_key, tmp_path: Path) -> None:
    ledger = make_ledger()
    records = fill(ledger)
    path = tmp_path / "head.json"
    cp = checkpoint(ledger, signing_key, path)
    assert (cp.seq, cp.hash) == (6, records[-1].hash)
    document = json.loads(path.read_text())
    body = document["checkpoint"]
    assert body["format"] == "contract-extracts/ledger-checkpoint/v1" and body["keyed"] is False
    assert body["head_at"] == records[-1].at and body["table"] == "audit_ledger"
    signing_key.public_key().verify(base64.b64decode(document["signature"]), canonical_json(body).encode())
    recorded = ledger.head()
    assert recorded.action == CHECKPOINT_ACTION and recorded.seq == 7
    assert recorded.details_obj()["seq"] == 6 and recorded.details_obj()["file"] == str(path)
    result = ledger.verify(anchors=[cp.anchor()])
    assert result.ok and result.head_seq == 7, "a ledger that grew still extends the checkpoint"
    with pytest.raises(LedgerError, match="never overwrites"):
        write_checkpoint(ledger, signing_key, str(path), actor="x")


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
    cp = checkpoint(ledger, signing_key, tmp_path / "head.json")  # head 6; record 7 notes the checkpoint
    with raw(backend_url) as conn:
        conn.execute(text("DELETE FROM audit_ledger WHERE seq > 4"))
    assert ledger.verify().ok, "the table alone cannot tell"
    result = ledger.verify(anchors=[cp.anchor()])
    assert (result.ok, result.first_broken_seq) == (False, 5)
    assert result.reason == (f"records 5 to 6 are missing: the ledger ends at record 4, but checkpoint {tmp_path}/"
                             f"head.json (head 6 at {cp.at}) recorded head 6 (the ledger was truncated)")


def test_emptied_table_is_named(make_ledger, backend_url, signing_key, tmp_path: Path) -> None:
    ledger = make_ledger()
    fill(ledger)
    cp = checkpoint(ledger, signing_key, tmp_path / "head.json")
    with raw(backend_url) as conn:
        conn.execute(text("DELETE FROM audit_ledger"))
    result = ledger.verify(anchors=[cp.anchor()])
    assert result.first_broken_seq == 1 and result.reason.startswith("records 1 to 6 are missing: the ledger ends at "
                                                                      "record 0")


def test_one_record_truncated(make_ledger, backend_url, signing_key, tmp_path: Path) -> None:
    ledger = make_ledger()
    fill(ledger)
    cp = checkpoint(ledger, signing_key, tmp_path / "head.json")
    with raw(backend_url) as conn:
        conn.execute(text("DELETE FROM audit_ledger WHERE seq >= 6"))
    assert ledger.verify(anchors=[cp.anchor()]).reason.startswith("record 6 is missing: the ledger ends at record 5")


@pytest.mark.parametrize("from_seq", [1, 4], ids=["whole-table", "from-record-4"])
def test_recomputed_unkeyed_chain_is_caught_by_a_checkpoint(make_ledger, backend_url, signing_key, tmp_path: Path,
                                                            from_seq: int) -> None:
    ledger = make_ledger()
    fill(ledger)
    cp = checkpoint(ledger, signing_key, tmp_path / "head.json")
    _rewrite_unkeyed(backend_url, from_seq)
    assert ledger.verify().ok, "a recomputed SHA-256 chain verifies from the table alone"
    result = ledger.verify(anchors=[cp.anchor()])
    assert (result.ok, result.first_broken_seq) == (False, 6)
    assert result.reason.startswith("record 6: hash differs from checkpoint")
    assert "rewritten" in result.reason


def test_recomputed_unkeyed_chain_is_caught_in_keyed_mode(make_ledger, backend_url) -> None:
    ledger = make_ledger(key=KEY)
    fill(ledger)
    _rewrite_unkeyed(backend_url, 4)
    result = ledger.verify()
    assert (result.first_broken_seq, result.reason) == (4, "record 4: hash does not match its content")


def test_several_checkpoints_narrow_down_a_rewrite(make_ledger, backend_url, signing_key, tmp_path: Path) -> None:
    ledger = make_ledger()
    fill(ledger)
    early = checkpoint(ledger, signing_key, tmp_path / "early.json")  # head 6, record 7 notes it
    fill(ledger)
    late = checkpoint(ledger, signing_key, tmp_path / "late.json")  # head 13
    _rewrite_unkeyed(backend_url, 10)
    result = ledger.verify(anchors=[late.anchor(), early.anchor()])
    assert result.first_broken_seq == 13 and "late.json" in result.reason
    _rewrite_unkeyed(backend_url, 2)
    result = ledger.verify(anchors=[late.anchor(), early.anchor()])
    assert result.first_broken_seq == 6 and "early.json" in result.reason


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
    with pytest.raises(VerificationError, match="not a contract-extracts/ledger-checkpoint/v1 file"):
        read_checkpoint(path, signing_key.public_key())


def test_checkpoint_of_an_empty_ledger(make_ledger, signing_key, tmp_path: Path) -> None:
    ledger = make_ledger()
    cp = checkpoint(ledger, signing_key, tmp_path / "head.json")
    assert cp.seq == 0 and ledger.verify(anchors=[cp.anchor()]).ok
