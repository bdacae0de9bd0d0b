"""A real package built in ``tmp_path`` (small Parquet file, codebook, signed manifest, age to one recipient),
plus helpers to forge packages the way an attacker or a broken transfer would."""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pyrage
import pytest

from delivery.package import (
    PACKAGE_FORMAT,
    BuiltPackage,
    PackageFile,
    build_package,
    file_entries,
    package_name,
)
from delivery.recipients import load_identities, new_identity_file, recipient_fingerprint, ssh_fingerprint
from delivery.signing import fingerprint, load_signing_key, new_signing_key

CONTRACT = "C-DEMO-001"
DELIVERY = "20261125T020000Z-1a2b3c4d"
CREATED_EPOCH = 1_795_572_000  # 2026-11-25T02:00:00Z


@dataclass(frozen=True)
class Keys:
    identity: Path
    recipient: str
    signing_private: Path
    signing_public: Path
    signing_openssh: Path  # the same public key as one 'ssh-ed25519 AAAA…' line


@dataclass(frozen=True)
class Sent:
    built: BuiltPackage
    manifest: dict
    plaintext: dict[str, bytes]  # arcname → exact bytes put into the package
    keys: Keys

    @property
    def path(self) -> Path:
        return self.built.path


@pytest.fixture(autouse=True)
def no_user_trust_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The user's sender trust store, pointed into the test folder (absent unless a test writes it)."""
    store = tmp_path / "user-config" / "sender-keys"
    monkeypatch.setenv("CONTRACT_EXTRACTS_SENDER_KEYS", str(store))
    return store


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    folder = tmp_path / "keys"
    identity = folder / "contractor-identity.txt"
    recipient = new_identity_file(identity)
    private, public = folder / "sender-signing.pem", folder / "sender-signing.pub"
    openssh = folder / "sender-signing.ssh.pub"
    new_signing_key(private, public, openssh)
    return Keys(identity=identity, recipient=recipient, signing_private=private, signing_public=public,
                signing_openssh=openssh)


def build_demo_package(staging: Path, keys: Keys, *, contract: str = CONTRACT, delivery: str = DELIVERY,
                       recipients: dict[str, str] | None = None, ssh_signature: bool = False,
                       ledger: dict[str, object] | None = None) -> Sent:
    """A genuine package (signed with the sender key in ``keys``), by default to ``keys.recipient`` only.

    ``recipients`` maps names to age (``age1…``) or OpenSSH public keys; all are listed and encrypted to.
    """
    recipients = recipients or {"acme-analyst": keys.recipient}
    staging.mkdir(parents=True, exist_ok=True, mode=0o700)
    (staging / "data").mkdir(exist_ok=True)
    table = pa.table({
        "nino": pa.array(["7de50191d49ba4bba05a61eb3893daeb", None, "0123456789abcdef0123456789abcdef"]),
        "date_of_birth": pa.array([1980, 1991, None], pa.int32()),
        "region": pa.array(["North", "South", "East"]),
    })
    parquet = staging / "data" / "claimants.parquet"
    pq.write_table(table, parquet, compression="zstd")
    codebook = staging / "codebook.md"
    codebook.write_text("# Codebook\n\n- nino: pseudonym\n- date_of_birth: year\n- region: as held\n",
                        encoding="utf-8")
    files = [
        PackageFile(arcname="codebook.md", path=codebook),
        PackageFile(arcname="data/claimants.parquet", path=parquet, rows=table.num_rows,
                    schema=({"name": "nino", "type": "string", "treatment": "pseudonymise"},
                            {"name": "date_of_birth", "type": "int32", "treatment": "generalise"},
                            {"name": "region", "type": "string", "treatment": "keep"})),
    ]
    signing_key = load_signing_key(keys.signing_private)
    manifest = {
        "format": PACKAGE_FORMAT,
        "contract": contract,
        "title": "Benefit uptake evaluation (demo)",
        "contractor": "Acme Research Ltd",
        "delivery": delivery,
        "created_at": "2026-11-25T02:00:00+00:00",
        "key_id": "fa0cde5e86539aca",
        "linkage": "contract",
        "extract": {"kind": "full", "sample": None},
        "sender": {"signature": "ed25519", "fingerprint": fingerprint(signing_key.public_key())},
        "recipients": [{"name": name, "fingerprint": ssh_fingerprint(key) if key.startswith("ssh-")
                        else recipient_fingerprint(key)} for name, key in recipients.items()],
        "files": file_entries(files),
        "validation": {"success": True, "expectations": 3},
        "disclosure": {"assessed": False, "note": "test"},
    }
    if ledger is not None:
        manifest["ledger"] = ledger
    built = build_package(staging_dir=staging, name=package_name(contract, delivery), manifest=manifest,
                          files=files, signing_key=signing_key, recipients=list(recipients.values()),
                          created_epoch=CREATED_EPOCH, ssh_signature=ssh_signature)
    plaintext = {f.arcname: f.path.read_bytes() for f in files}
    return Sent(built=built, manifest=manifest, plaintext=plaintext, keys=keys)


@pytest.fixture
def sent(tmp_path: Path, keys: Keys) -> Sent:
    return build_demo_package(tmp_path / "staging", keys)


# ---- forging ------------------------------------------------------------------------------------


def read_members(package: Path, identity: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    """Decrypt with pyrage and return the tar members in order (for re-packing altered copies)."""
    plain = pyrage.decrypt(package.read_bytes(), load_identities(identity))
    out = []
    with tarfile.open(fileobj=io.BytesIO(plain), mode="r:") as tar:
        for member in tar:
            fh = tar.extractfile(member)
            out.append((member, fh.read() if fh else b""))
    return out


def write_forged(path: Path, recipient: str, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    """Tar ``members`` (TarInfo with the data to store) and encrypt to ``recipient``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if info.isreg():
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    path.write_bytes(pyrage.encrypt(buffer.getvalue(), [pyrage.x25519.Recipient.from_str(recipient)]))
    return path


def regular(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    return info, data
