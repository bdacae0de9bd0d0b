"""Receipts: the ledger head inside every signed manifest makes truncation and rewriting below it detectable.

The attacker can write to the ledger database (and, keyed, holds the ledger key), but not recall the
manifests contractors hold. Runs on SQLite and PostgreSQL (``backend_url``, see conftest.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text

from audit.ledger import Ledger
from audit.receipts import head_for_manifest, read_receipt
from core.errors import VerificationError
from delivery.package import manifest_bytes

from .test_checkpoint import _rewrite
from .test_ledger import KEY, fill, raw


@pytest.fixture
def sender() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def deliver(ledger: Ledger, sender: Ed25519PrivateKey, folder: Path, n: int) -> Path:
    """What a contractor keeps of one delivery: manifest.json (with the ledger head) and manifest.sig."""
    folder.mkdir(parents=True)
    manifest = {"format": "contract-extracts/package/v2", "contract": "C-DEMO-001",
                "delivery": f"20261125T02000{n}Z-1a2b3c4d", "ledger": head_for_manifest(ledger), "files": []}
    body = manifest_bytes(manifest)
    (folder / "manifest.json").write_bytes(body)
    (folder / "manifest.sig").write_bytes(sender.sign(body))
    ledger.append(actor="pipeline", action="delivered", contract="C-DEMO-001", delivery=manifest["delivery"],
                  details={"n": n})
    return folder / "manifest.json"


@pytest.mark.parametrize("key", [None, KEY], ids=["unkeyed", "keyed"])
def test_truncation_below_a_receipt_is_detected(make_ledger, backend_url, sender, tmp_path: Path, key) -> None:
    ledger = make_ledger(key=key)
    fill(ledger)
    receipt = read_receipt(deliver(ledger, sender, tmp_path / "d1", 1), [sender.public_key()])
    assert receipt.seq == 6
    fill(ledger)
    assert ledger.verify(anchors=[receipt.anchor()]).ok
    with raw(backend_url) as conn:
        conn.execute(text("DELETE FROM audit_ledger WHERE seq >= 5"))
    assert ledger.verify().ok, "the table alone cannot tell"
    result = ledger.verify(anchors=[receipt.anchor()])
    assert result.first_broken_seq == 5
    assert "records 5 to 6 are missing" in result.reason and "receipt" in result.reason
    assert "C-DEMO-001 delivery 20261125T020001Z-1a2b3c4d" in result.reason


@pytest.mark.parametrize("key", [None, KEY], ids=["unkeyed", "keyed"])
def test_rewrite_with_recomputed_hashes_is_detected_by_the_receipt(make_ledger, backend_url, sender,
                                                                  tmp_path: Path, key) -> None:
    """Even an insider with the ledger key, who rewrites a record and recomputes every later hash."""
    ledger = make_ledger(key=key)
    fill(ledger)
    manifest = deliver(ledger, sender, tmp_path / "d1", 1)
    fill(ledger)
    _rewrite(backend_url, 3, key=key)
    assert ledger.verify().ok, "the recomputed chain verifies from the table (and the key) alone"
    result = ledger.verify(anchors=[read_receipt(manifest, [sender.public_key()]).anchor()])
    assert result.first_broken_seq == 6
    assert result.reason.startswith("record 6: hash differs from receipt")


def test_any_number_of_receipts(make_ledger, backend_url, sender, tmp_path: Path) -> None:
    ledger = make_ledger()
    receipts = []
    for n in range(1, 5):
        fill(ledger)
        receipts.append(read_receipt(deliver(ledger, sender, tmp_path / f"d{n}", n), [sender.public_key()]))
    assert [r.seq for r in receipts] == [6, 13, 20, 27]
    _rewrite(backend_url, 15)  # between the second and the third receipt
    result = ledger.verify(anchors=[r.anchor() for r in receipts])
    assert result.first_broken_seq == 20 and "20261125T020003Z" in result.reason


def test_receipt_must_be_signed_by_the_sender(make_ledger, sender, tmp_path: Path) -> None:
    ledger = make_ledger()
    fill(ledger)
    manifest = deliver(ledger, sender, tmp_path / "d1", 1)
    with pytest.raises(VerificationError, match="does not verify with the sender key"):
        read_receipt(manifest, [Ed25519PrivateKey.generate().public_key()])
    forged = json.loads(manifest.read_text())
    forged["ledger"]["seq"] = 2
    manifest.write_bytes(manifest_bytes(forged))
    with pytest.raises(VerificationError, match="does not verify"):
        read_receipt(manifest, [sender.public_key()])


def test_a_folder_and_a_manifest_without_receipt(make_ledger, sender, tmp_path: Path) -> None:
    ledger = make_ledger()
    fill(ledger)
    folder = deliver(ledger, sender, tmp_path / "d1", 1).parent
    assert read_receipt(folder, [sender.public_key()]).seq == 6
    old = tmp_path / "v1"
    old.mkdir()
    body = manifest_bytes({"format": "contract-extracts/package/v1", "contract": "C-DEMO-001",
                           "delivery": "20261125T020000Z-1a2b3c4d"})
    (old / "manifest.json").write_bytes(body)
    (old / "manifest.sig").write_bytes(sender.sign(body))
    with pytest.raises(VerificationError, match="holds no ledger receipt"):
        read_receipt(old / "manifest.json", [sender.public_key()])
    with pytest.raises(VerificationError, match="cannot read"):
        read_receipt(tmp_path / "nowhere" / "manifest.json", [sender.public_key()])
