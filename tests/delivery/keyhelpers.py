"""Recipient keys made by the standard tools, as a contractor would: gpg and ssh-keygen."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class OpenPGPRecipient:
    home: Path          # the recipient's own GNUPGHOME (holds the secret key, no passphrase)
    fingerprint: str
    armored: str


def make_openpgp_recipient(home: Path, uid: str = "Analyst <analyst@example.org>") -> OpenPGPRecipient:
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    env = {**os.environ, "GNUPGHOME": str(home)}
    subprocess.run(["gpg", "--batch", "--quiet", "--pinentry-mode", "loopback", "--passphrase", "",
                    "--quick-generate-key", uid, "default", "default", "never"],
                   check=True, env=env, capture_output=True, timeout=120)
    listing = subprocess.run(["gpg", "--batch", "--with-colons", "--list-keys", uid], check=True, env=env,
                             capture_output=True, text=True, timeout=60).stdout
    fpr = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
    armored = subprocess.run(["gpg", "--batch", "--armor", "--export", fpr], check=True, env=env,
                             capture_output=True, text=True, timeout=60).stdout
    return OpenPGPRecipient(home=home, fingerprint=fpr, armored=armored)


def stop_gpg_agent(home: Path) -> None:
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True, timeout=30,
                   check=False)


def gpg_decrypt(home: Path, package: Path) -> bytes:
    env = {**os.environ, "GNUPGHOME": str(home)}
    return subprocess.run(["gpg", "--batch", "--quiet", "--decrypt", str(package)], check=True, env=env,
                          capture_output=True, timeout=120).stdout


def make_ssh_key(path: Path, kind: str = "ed25519", bits: int | None = None) -> str:
    """Write an unencrypted OpenSSH key pair; return the public key line."""
    cmd = ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "analyst@example.org", "-f", str(path)]
    if bits:
        cmd[4:4] = ["-b", str(bits)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    return path.with_suffix(".pub").read_text().strip()
