"""Which sender keys a recipient trusts, so that checking a package's signature is the default.

A package proves where it comes from only if the recipient checks ``manifest.sig`` against a key they
received *outside* the package. ``contract-extracts decrypt`` and ``verify`` therefore refuse to place or
pass a package unless a trusted sender key is found, in this order:

1. ``--sender-key FILE`` (repeatable): a PEM public key or one OpenSSH ``ssh-ed25519 AAAA…`` line;
2. the trust store beside the identity: ``<identity file>.senders`` (e.g. ``key.txt.senders`` or
   ``~/.ssh/id_ed25519.senders``);
3. the user's trust store: ``$CONTRACT_EXTRACTS_SENDER_KEYS``, else
   ``$XDG_CONFIG_HOME/contract-extracts/sender-keys`` (default ``~/.config/contract-extracts/sender-keys``).

A trust store is a text file of OpenSSH public key lines (``ssh-ed25519 AAAA… comment``), one per
trusted sender key, ``#`` comments allowed: the same format ``ssh-keygen -lf FILE`` reads, so the
recipient can print the fingerprints it holds and compare them with the ones the sender read out. A
store that group or others can write is refused (anyone who can add a line could forge packages).

The only way past a missing key is the loudly named ``--insecure-skip-signature-check``.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from core import sshsig
from core.errors import VerificationError
from delivery.signing import load_public_key

SENDER_KEYS_ENV = "CONTRACT_EXTRACTS_SENDER_KEYS"
IDENTITY_STORE_SUFFIX = ".senders"
_MAX_STORE_BYTES = 64 * 1024


@dataclass(frozen=True)
class SenderTrust:
    """The sender keys a check accepts, and where they came from (for messages)."""

    keys: tuple[Ed25519PublicKey, ...]
    source: str

    def fingerprints(self) -> list[str]:
        return [sshsig.fingerprint(k) for k in self.keys]


def default_store(env: Mapping[str, str] | None = None) -> Path:
    """The user's trust store path (it may not exist)."""
    env = os.environ if env is None else env
    if env.get(SENDER_KEYS_ENV):
        return Path(env[SENDER_KEYS_ENV]).expanduser()
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base).expanduser() / "contract-extracts" / "sender-keys"


def identity_store(identity: Path) -> Path:
    """The trust store beside an identity file: ``<identity>.senders``."""
    return identity.with_name(identity.name + IDENTITY_STORE_SUFFIX)


def read_store(path: Path) -> SenderTrust:
    """Load a trust store file; refuse one others can write, a malformed line, or an empty store."""
    try:
        st = path.stat()
    except OSError as exc:
        raise VerificationError(f"sender trust store {path} cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise VerificationError(f"sender trust store {path} is not a regular file")
    if st.st_mode & 0o022:
        raise VerificationError(f"sender trust store {path} can be written by group or others (mode "
                                f"{stat.S_IMODE(st.st_mode):04o}), so anyone could add a key to it. "
                                f"Fix: chmod 644 {path}")
    if st.st_size > _MAX_STORE_BYTES:
        raise VerificationError(f"sender trust store {path} is larger than {_MAX_STORE_BYTES} bytes")
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        raise VerificationError(f"sender trust store {path} is not ASCII text") from None
    keys: list[Ed25519PublicKey] = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            keys.append(sshsig.parse_openssh_line(line))
        except VerificationError as exc:
            raise VerificationError(f"sender trust store {path} line {number}: {exc}. Fix: one "
                                    "'ssh-ed25519 AAAA… comment' line per trusted sender key") from None
    if not keys:
        raise VerificationError(f"sender trust store {path} holds no key. Fix: add the sender's "
                                "'ssh-ed25519 AAAA…' line, or remove the empty file")
    return SenderTrust(keys=tuple(keys), source=f"trust store {path}")


def resolve_trust(sender_keys: Sequence[Path] = (), identity: Path | None = None,
                  env: Mapping[str, str] | None = None) -> SenderTrust | None:
    """The trusted sender keys from ``--sender-key`` files, else the stores; None when there are none."""
    if sender_keys:
        keys = tuple(load_public_key(p) for p in sender_keys)
        return SenderTrust(keys=keys, source="--sender-key " + ", ".join(str(p) for p in sender_keys))
    candidates = ([identity_store(identity)] if identity is not None else []) + [default_store(env)]
    for store in candidates:
        if store.exists():
            return read_store(store)
    return None


def no_trusted_key(identity: Path | None, env: Mapping[str, str] | None = None) -> VerificationError:
    """The refusal when no sender key is trusted: where we looked, and the fix."""
    places = ([str(identity_store(identity))] if identity is not None else []) + [str(default_store(env))]
    return VerificationError(
        "refusing: no trusted sender key, so the package's signature cannot be checked and anyone who knows "
        "your public key could have made it. Fix: pass --sender-key sender-signing.pub (received with the "
        f"contract, not with the package), or put the sender's 'ssh-ed25519 AAAA…' line in {' or '.join(places)} "
        "and compare its fingerprint ('ssh-keygen -lf FILE') with the one the sender gave you")


def add_to_store(path: Path, public: Ed25519PublicKey, comment: str = "contract-extracts-sender") -> bool:
    """Append ``public`` to a trust store (created 0644, its folder 0700 when new); False if already there."""
    line = sshsig.openssh_line(public, comment)
    if path.exists():
        existing = read_store(path)
        if any(sshsig.key_blob(k) == sshsig.key_blob(public) for k in existing.keys):
            return False
    else:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    with os.fdopen(fd, "a", encoding="ascii") as fh:
        fh.write(line + "\n")
    return True
