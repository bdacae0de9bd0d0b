"""Recipient kinds in the contract (age, ssh, openpgp), their pins and fingerprints, delivery paths."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from contracts.delivery import Delivery, Recipient
from contracts.loading import canonical_form, contract_from_mapping, load_contract
from core.errors import ConfigError, ContractError
from delivery.recipients import (
    fingerprint_of,
    new_identity_file,
    package_format,
    recipient_fingerprint,
)

from .keyhelpers import make_ssh_key

REPO = Path(__file__).resolve().parents[2]
FPR = "76AF833A0057B510FD013C50C8814DF768E363A2"


def demo_mapping() -> dict:
    return yaml.safe_load((REPO / "configs" / "contracts" / "C-DEMO-001.yaml").read_text())


def with_recipients(recipients: list[dict], delivery: dict | None = None) -> dict:
    data = demo_mapping()
    data["recipients"] = recipients
    if delivery is not None:
        data["delivery"] = delivery
    return data


@pytest.fixture
def ssh_ed25519(tmp_path: Path) -> str:
    return make_ssh_key(tmp_path / "id_ed25519")


def test_content_hash_of_an_age_only_contract_is_unchanged_by_the_new_kinds() -> None:
    # Approvals are made over the content hash: unset new fields must not appear in the canonical form.
    contract = load_contract(REPO / "configs" / "contracts" / "C-DEMO-001.yaml")
    dumped = contract.model_dump(mode="json", by_alias=True)
    assert dumped["recipients"] == [{"name": "acme-analyst", "age": contract.recipients[0].age}]
    assert dumped["delivery"] == {"transport": "local", "path": "acme-research"}
    canonical = canonical_form(contract)
    assert canonical["recipients"] == dumped["recipients"] and canonical["delivery"] == dumped["delivery"]


def test_ssh_recipients_are_accepted_and_fingerprinted_like_ssh_keygen(tmp_path: Path, ssh_ed25519: str) -> None:
    rsa = make_ssh_key(tmp_path / "id_rsa", "rsa", 3072)
    contract = contract_from_mapping(with_recipients([{"name": "ed", "ssh": ssh_ed25519},
                                                      {"name": "rsa", "ssh": rsa}]), "test")
    assert [r.kind for r in contract.recipients] == ["ssh", "ssh"]
    assert package_format(contract.recipients) == "age"
    for recipient, pub in zip(contract.recipients, ("id_ed25519.pub", "id_rsa.pub"), strict=True):
        printed = subprocess.run(["ssh-keygen", "-lf", str(tmp_path / pub)], capture_output=True, text=True,
                                 check=True).stdout.split()[1]
        assert fingerprint_of(recipient) == f"ssh:{printed}"


def test_age_fingerprint_is_unchanged(tmp_path: Path) -> None:
    key = new_identity_file(tmp_path / "id.txt")
    assert fingerprint_of(Recipient(name="a", age=key)) == recipient_fingerprint(key)


@pytest.mark.parametrize(("recipient", "message"), [
    ({"name": "x"}, "exactly one key"),
    ({"name": "x", "age": "AGE", "ssh": "ssh-ed25519 AAAA"}, "not a valid age"),
    ({"name": "x", "openpgp": "keys/x.asc"}, "needs 'fingerprint'"),
    ({"name": "x", "openpgp": "../x.asc", "fingerprint": FPR}, "plain relative path"),
    ({"name": "x", "openpgp": "/etc/x.asc", "fingerprint": FPR}, "plain relative path"),
    ({"name": "x", "openpgp": "x.asc", "fingerprint": "1234"}, r"40 \(v4\) or 64"),
    ({"name": "x", "ssh": "ssh-dss AAAAB3NzaC1kc3MAAACBAP8="}, "not supported"),
    ({"name": "x", "ssh": "ecdsa-sha2-nistp256 AAAAE2VjZHNh"}, "not supported"),
    ({"name": "x", "ssh": "ssh-ed25519 not-base64!"}, "base64"),
], ids=["no-key", "two-keys", "openpgp-without-pin", "openpgp-dot-dot", "openpgp-absolute", "short-fingerprint",
        "dsa", "ecdsa", "bad-base64"])
def test_bad_recipients_are_refused(recipient: dict, message: str) -> None:
    with pytest.raises(ContractError, match=message):
        contract_from_mapping(with_recipients([recipient]), "test")


def test_fingerprint_on_an_age_recipient_is_refused(tmp_path: Path) -> None:
    key = new_identity_file(tmp_path / "id.txt")
    with pytest.raises(ContractError, match="belongs to openpgp"):
        contract_from_mapping(with_recipients([{"name": "x", "age": key, "fingerprint": FPR}]), "test")


def test_short_rsa_key_is_refused(tmp_path: Path) -> None:
    weak = make_ssh_key(tmp_path / "weak", "rsa", 1024)
    with pytest.raises(ContractError, match="2048"):
        contract_from_mapping(with_recipients([{"name": "x", "ssh": weak}]), "test")


def test_same_ssh_key_twice_is_refused(ssh_ed25519: str) -> None:
    other_comment = ssh_ed25519.rsplit(" ", 1)[0] + " someone-else"
    with pytest.raises(ContractError, match="share one key"):
        contract_from_mapping(with_recipients([{"name": "a", "ssh": ssh_ed25519},
                                               {"name": "b", "ssh": other_comment}]), "test")


def test_openpgp_fingerprint_is_normalised() -> None:
    spaced = " ".join(FPR[i:i + 4] for i in range(0, 40, 4)).lower()
    recipient = Recipient(name="x", openpgp="acme/analyst.asc", fingerprint=spaced)
    assert recipient.fingerprint == FPR
    assert fingerprint_of(recipient) == f"openpgp:{FPR}"
    assert recipient.format == "openpgp"


def test_mixing_age_and_openpgp_recipients_is_refused(tmp_path: Path) -> None:
    key = new_identity_file(tmp_path / "id.txt")
    recipients = [Recipient(name="a", age=key), Recipient(name="b", openpgp="b.asc", fingerprint=FPR)]
    with pytest.raises(ConfigError, match="mixes age/ssh recipients with OpenPGP"):
        package_format(recipients)


@pytest.mark.parametrize("path", ["/inbound", "inbound", "/acme/inbound", "/", None])
def test_sftp_paths_are_under_the_root(path: str | None) -> None:
    delivery = Delivery(transport="sftp", connection="acme_sftp", path=path)
    assert all(".." not in s and "/" not in s for s in delivery.segments())


@pytest.mark.parametrize("path", ["../x", "/../x", "a/../../x", "a//b", "./a", "a b", "a;rm", ".hidden",
                                  "a\\b", "ü"])
def test_odd_delivery_paths_are_refused(path: str) -> None:
    with pytest.raises(ValueError, match="folder names"):
        Delivery(transport="sftp", connection="acme_sftp", path=path)


def test_delivery_transport_fields() -> None:
    with pytest.raises(ValueError, match="needs 'connection'"):
        Delivery(transport="sftp", path="/inbound")
    with pytest.raises(ValueError, match="belongs to transport sftp"):
        Delivery(transport="local", connection="x")
    with pytest.raises(ValueError, match="relative to the drop folder"):
        Delivery(transport="local", path="/abs")
    with pytest.raises(ValueError):
        Delivery(transport="sftp", connection="bad id!")
    assert Delivery(transport="sftp", connection="acme_sftp", path="/inbound").segments() == ["inbound"]
