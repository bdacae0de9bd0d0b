"""OpenPGP recipients: encrypt the package tar with GnuPG (python-gnupg) in a throwaway keyring.

Every run imports the contract's OpenPGP keys into a fresh, private GNUPGHOME inside the staging
folder, checks that each pinned fingerprint is there (a key file holding another key is refused),
usable (not revoked or expired, can encrypt), and encrypts to exactly those fingerprints in one
pass, without compression (``-z 0``: Parquet is compressed already; gpg's default zlib runs at
~40 MB/s against ~350 MB/s without). The keyring is deleted afterwards. Nothing is read from the
user's own keyring, and no key can be added except through the contract.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import gnupg

from core.errors import ConfigError, DeliveryError, KeyMaterialError
from core.paths import make_private_dir, within

if TYPE_CHECKING:  # types only: delivery/ needs no contract model at run time
    from contracts.delivery import Recipient

GPG_BINARY = "gpg"


def key_text(recipient: Recipient, key_dir: Path) -> str:
    """The armored key of an OpenPGP recipient: inline, or read from ``key_dir`` (configs/recipients)."""
    value = recipient.openpgp or ""
    if value.startswith("-----BEGIN"):
        return value
    path = within(key_dir, value, f"recipients[{recipient.name}].openpgp")
    try:
        return path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        raise ConfigError("OpenPGP key file cannot be read as ASCII-armored text",
                          key=f"recipients[{recipient.name}].openpgp",
                          fix=f"put the recipient's armored public key at {path}") from None


def encrypt_openpgp(plain: Path, out: Path, recipients: list[Recipient], *, key_dir: Path,
                    work_dir: Path) -> None:
    home = make_private_dir(work_dir / f".gnupg-{secrets.token_hex(4)}")
    try:
        gpg = gnupg.GPG(gpgbinary=GPG_BINARY, gnupghome=str(home))
        fingerprints = []
        for recipient in recipients:
            fpr = recipient.fingerprint or ""
            imported = gpg.import_keys(key_text(recipient, key_dir))
            if fpr not in {f.upper() for f in (imported.fingerprints or [])}:
                raise KeyMaterialError(f"the OpenPGP key of recipient {recipient.name} does not hold the pinned "
                                       f"fingerprint {fpr}; the key was changed or replaced. Fix: restore the "
                                       "approved key, or change the contract's key and fingerprint and get it "
                                       "approved again")
            _check_usable(gpg, recipient.name, fpr)
            fingerprints.append(fpr)
        result = gpg.encrypt_file(str(plain), fingerprints, output=str(out), armor=False, always_trust=True,
                                  extra_args=["-z", "0", "--no-encrypt-to", "--no-default-recipient"])
        if not result.ok:
            out.unlink(missing_ok=True)
            raise DeliveryError(f"OpenPGP encryption failed (gpg status: {result.status or 'none'})")
    finally:
        _remove_home(home)


def _check_usable(gpg: gnupg.GPG, name: str, fpr: str) -> None:
    keys = [k for k in gpg.list_keys(keys=[fpr]) if k.get("fingerprint", "").upper() == fpr]
    if not keys:
        raise KeyMaterialError(f"the OpenPGP key of recipient {name} ({fpr}) was not imported")
    key = keys[0]
    validity = key.get("trust", "")
    if validity == "r":
        raise KeyMaterialError(f"the OpenPGP key of recipient {name} ({fpr}) is revoked")
    if validity == "e":
        raise KeyMaterialError(f"the OpenPGP key of recipient {name} ({fpr}) has expired")
    if "E" not in key.get("cap", ""):
        raise KeyMaterialError(f"the OpenPGP key of recipient {name} ({fpr}) has no usable encryption (sub)key")


def _remove_home(home: Path) -> None:
    # Import and encryption start no agent, but stop one if a gpg configuration did.
    if any(p.name.startswith("S.") for p in home.iterdir()) and shutil.which("gpgconf"):
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True, timeout=30,
                       check=False)
    shutil.rmtree(home, ignore_errors=True)
