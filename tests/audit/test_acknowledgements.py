"""Recorded access: a recipient acknowledges a verified delivery with their SSH key; the data owner records it.

The statement is made by `contract-extracts verify --acknowledge` (or signed by `ssh-keygen -Y sign` itself),
checked by `ssh-keygen -Y verify` with nothing of ours, and imported with `contract-extracts audit acknowledge`
against the `delivered` record, whose recipient list pins the key. Forged and mismatched ones are refused.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from audit.acknowledgements import ACK_ACTION, acknowledged, import_acknowledgement
from audit.opening import open_ledger
from cli import main as cli_main
from core.errors import LedgerError, VerificationError
from core.sshsig import parse_openssh_line
from delivery.acknowledgement import (
    NAMESPACE,
    Acknowledgement,
    load_ack_key,
    parse_statement,
    recipient_key_fingerprint,
    sign,
    verify_acknowledgement,
)
from delivery.package import manifest_bytes, sha256_file
from delivery.recipients import new_identity_file
from delivery.signing import new_signing_key
from tests.delivery.conftest import Keys, Sent, build_demo_package
from tests.delivery.keyhelpers import make_ssh_key


@dataclass(frozen=True)
class World:
    sent: Sent
    lead_key: Path  # the recipient's SSH private key (pinned in the contract as "acme-lead")
    lead_public: str
    folder: Path


@pytest.fixture
def main(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[Sequence[str] | None], int]:
    for name in ("CONTRACT_EXTRACTS_LEDGER_URL", "CONTRACT_EXTRACTS_LEDGER_KEY", "CONTRACT_EXTRACTS_LEDGER_KEY_FILE",
                 "CONTRACT_EXTRACTS_INSECURE_UNKEYED_LEDGER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CONTRACT_EXTRACTS_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("CONTRACT_EXTRACTS_SENDER_KEYS", str(tmp_path / "no-store"))
    assert cli_main(["audit", "new-key"]) == 0  # keyed, with the default key file
    return cli_main


@pytest.fixture
def world(tmp_path: Path, main) -> World:
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    identity = keys_dir / "analyst.txt"
    recipient = new_identity_file(identity)
    new_signing_key(keys_dir / "sender.pem", keys_dir / "sender.pub", keys_dir / "sender.ssh.pub")
    keys = Keys(identity=identity, recipient=recipient, signing_private=keys_dir / "sender.pem",
                signing_public=keys_dir / "sender.pub", signing_openssh=keys_dir / "sender.ssh.pub")
    lead_public = make_ssh_key(keys_dir / "lead_ed25519")
    sent = build_demo_package(tmp_path / "staging", keys, ssh_signature=True,
                              recipients={"acme-analyst": recipient, "acme-lead": lead_public})
    with open_ledger() as ledger:  # what the pipeline records when it delivers the package
        ledger.append(actor="scheduler", action="delivered", contract=sent.manifest["contract"],
                      delivery=sent.manifest["delivery"], details={
                          "package": sent.path.name, "sha256": sent.built.sha256,
                          "manifest_sha256": hashlib.sha256(manifest_bytes(sent.manifest)).hexdigest(),
                          "recipients": sent.manifest["recipients"], "transport": "local"})
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    return World(sent=sent, lead_key=keys_dir / "lead_ed25519", lead_public=lead_public, folder=inbox)


def acknowledge(main, world: World, *extra: str) -> Path:
    ack = world.folder / f"{world.sent.path.name}.ack"
    assert main(["verify", str(world.sent.path), "--identity", str(world.lead_key), "--sender-key",
                 str(world.sent.keys.signing_public), "--acknowledge", "--ack-out", str(ack), *extra]) == 0
    return ack


def ssh_keygen_verify(world: World, ack: Path, signature: Path,
                      principal: str = "acme-lead") -> subprocess.CompletedProcess[str]:
    """`ssh-keygen -Y verify` with an allowed_signers file naming the pinned key as acme-lead."""
    allowed = world.folder / "allowed_signers"
    allowed.write_text(f'acme-lead namespaces="{NAMESPACE}" {world.lead_public}\n')
    with ack.open("rb") as statement:
        return subprocess.run(["ssh-keygen", "-Y", "verify", "-f", str(allowed), "-I", principal, "-n", NAMESPACE,
                               "-s", str(signature)], stdin=statement, capture_output=True, text=True, timeout=60)


def test_round_trip_with_ssh_keygen(main, world: World, capsys: pytest.CaptureFixture[str]) -> None:
    ack = acknowledge(main, world)
    out = capsys.readouterr().out
    assert "acknowledgement written to" in out and "contract-extracts audit acknowledge" in out
    signature = ack.with_name(ack.name + ".sig")
    statement = parse_statement(ack.read_text())
    assert (statement.contract, statement.recipient) == ("C-DEMO-001", "acme-lead")
    assert statement.package_sha256 == sha256_file(world.sent.path)[0]
    assert statement.sender_key == world.sent.manifest["sender"]["fingerprint"]
    # The data owner (or an auditor) checks it with OpenSSH alone.
    checked = ssh_keygen_verify(world, ack, signature)
    assert checked.returncode == 0 and "Good" in checked.stdout + checked.stderr, checked.stderr
    assert ssh_keygen_verify(world, ack, signature, principal="someone-else").returncode != 0
    altered = world.folder / "altered.ack"
    altered.write_text(ack.read_text().replace("acme-lead", "acme-boss"))
    assert ssh_keygen_verify(world, altered, signature).returncode != 0
    # And records it against the delivery.
    assert main(["audit", "acknowledge", str(ack)]) == 0
    assert "by acme-lead" in capsys.readouterr().out
    with open_ledger() as ledger:
        [record] = ledger.records(action=ACK_ACTION)
        details = record.details_obj()
        assert details["recipient_key"] == world.sent.manifest["recipients"][1]["fingerprint"]
        assert details["signature"] == signature.read_text()  # an auditor can re-check it with ssh-keygen
        assert acknowledged(ledger.records()) == {("C-DEMO-001", world.sent.manifest["delivery"]): ["acme-lead"]}
        assert ledger.verify().ok and ledger.keyed
    assert main(["audit", "acknowledge", str(ack)]) == 0
    assert "already recorded" in capsys.readouterr().out
    with open_ledger() as ledger:
        assert len(ledger.records(action=ACK_ACTION)) == 1


def test_statement_signed_by_ssh_keygen_itself(main, world: World, capsys: pytest.CaptureFixture[str]) -> None:
    ack = acknowledge(main, world, "--ack-unsigned")
    assert not ack.with_name(ack.name + ".sig").exists()
    assert "ssh-keygen -Y sign -n contract-extracts-acknowledgement" in capsys.readouterr().out
    subprocess.run(["ssh-keygen", "-Y", "sign", "-n", NAMESPACE, "-f", str(world.lead_key), str(ack)],
                   check=True, capture_output=True, timeout=60)
    assert main(["audit", "acknowledge", str(ack)]) == 0
    with open_ledger() as ledger:
        assert len(ledger.records(action=ACK_ACTION)) == 1


def test_an_age_only_recipient_cannot_acknowledge_with_a_foreign_key(main, world: World, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    stranger = tmp_path / "stranger_ed25519"
    make_ssh_key(stranger)
    assert main(["verify", str(world.sent.path), "--identity", str(world.sent.keys.identity), "--sender-key",
                 str(world.sent.keys.signing_public), "--acknowledge", "--ack-key", str(stranger),
                 "--ack-out", str(world.folder / "x.ack")]) == 2
    assert "is not a recipient of this delivery" in capsys.readouterr().err
    assert not (world.folder / "x.ack").exists()


def _resign(world: World, ack: Path, change: dict[str, str], key_file: Path) -> None:
    """Someone edits the statement and signs it with ``key_file`` (in-process, like ssh-keygen -Y sign)."""
    original = parse_statement(ack.read_text())
    values = {**original.__dict__, **change}
    forged = Acknowledgement(**values)
    ack.write_text(forged.statement())
    ack.with_name(ack.name + ".sig").write_text(sign(forged, load_ack_key(key_file)))


def test_forged_or_mismatched_acknowledgements_are_refused(main, world: World, tmp_path: Path) -> None:
    ack = acknowledge(main, world)
    signature = ack.with_name(ack.name + ".sig")
    good_statement, good_signature = ack.read_text(), signature.read_text()

    def refused(match: str, exc: type[Exception] = VerificationError) -> None:
        with open_ledger() as ledger, pytest.raises(exc, match=match):
            import_acknowledgement(ledger, ack, actor="pytest")
        ack.write_text(good_statement)
        signature.write_text(good_signature)

    ack.write_text(good_statement.replace("recipient: acme-lead", "recipient: acme-boss"))
    refused("does not verify")  # altered after signing
    stranger = tmp_path / "stranger_ed25519"
    stranger_public = make_ssh_key(stranger)
    stranger_fp = recipient_key_fingerprint(parse_openssh_line(stranger_public))
    _resign(world, ack, {"recipient_key": stranger_fp}, stranger)
    refused("not a recipient key of delivery")  # a key that is not pinned for this delivery
    _resign(world, ack, {}, stranger)
    refused("signed by key")  # names the pinned key, signed by another
    _resign(world, ack, {"package_sha256": "0" * 64}, world.lead_key)
    refused("not the package we sent")
    _resign(world, ack, {"delivery": "20270101T000000Z-00000000"}, world.lead_key)
    refused("no delivered record", LedgerError)
    _resign(world, ack, {"recipient": "acme-analyst"}, world.lead_key)
    refused("belongs to recipient 'acme-lead'")
    _resign(world, ack, {"verified_at": "2020-01-01T00:00:00+00:00"}, world.lead_key)
    refused("before the delivery")
    _resign(world, ack, {"verified_at": "2099-01-01T00:00:00+00:00"}, world.lead_key)
    refused("in the future")
    signature.write_text(good_signature.replace("A", "B", 3))
    refused("not valid")
    with open_ledger() as ledger:
        assert ledger.records(action=ACK_ACTION) == []
        imported = import_acknowledgement(ledger, ack, actor="pytest")
        assert imported.new


def test_statement_format_is_strict() -> None:
    text = Acknowledgement(contract="C-DEMO-001", delivery="20261125T020000Z-1a2b3c4d",
                           package="C-DEMO-001_20261125T020000Z-1a2b3c4d.tar.age", package_sha256="a" * 64,
                           manifest_sha256="b" * 64, recipient="acme-lead",
                           recipient_key="ssh:SHA256:" + "A" * 43, sender_key="SHA256:" + "B" * 43,
                           verified_at="2026-11-25T09:12:03+00:00").statement()
    assert text.splitlines()[0] == "contract-extracts acknowledgement v1" and text.endswith("\n")
    assert parse_statement(text).recipient == "acme-lead"
    for bad in (text.replace("\n", "\r\n"), text + "extra: 1\n", text.rstrip("\n"),
                text.replace("recipient: acme-lead", "recipient: acme lead"), text.replace("package:", "pkg:")):
        with pytest.raises(VerificationError):
            parse_statement(bad)
    with pytest.raises(VerificationError):
        verify_acknowledgement(text, "not a signature")
