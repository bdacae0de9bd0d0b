"""Recipients and the delivery transport as written in a contract.

Recipient kinds (exactly one key per recipient):

- ``age``: an age X25519 public key ``age1…``; the key itself is the pin.
- ``ssh``: an OpenSSH public key line (``ssh-ed25519 …`` or ``ssh-rsa …``, RSA ≥ 2048 bits), used as an
  age recipient; the key itself is the pin.
- ``openpgp``: an ASCII-armored OpenPGP public key, or a path under ``configs/recipients/`` holding one,
  pinned by ``fingerprint`` (the primary key's full fingerprint). The package is encrypted with GnuPG
  to that fingerprint only; a key file that does not hold it is refused at packaging time.

age and ssh recipients share one ``.tar.age`` package; OpenPGP recipients get one ``.tar.gpg``. A
contract uses one format: mixing age/ssh with OpenPGP recipients is an error (docs/delivery.md).

Fields that are unset are left out of the serialised model, so contracts written before these kinds
existed keep their content hash (approvals are made over it).
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any, Literal

import pyrage
from pydantic import Field, field_validator, model_serializer, model_validator

from contracts.base import CONN_ID, SLUG, Strict

SSH_KEY_TYPES = ("ssh-ed25519", "ssh-rsa")
MIN_RSA_BITS = 2048
ARMOR_HEADER = "-----BEGIN PGP PUBLIC KEY BLOCK-----"
ARMOR_FOOTER = "-----END PGP PUBLIC KEY BLOCK-----"
_KEY_PATH_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_REMOTE_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_FINGERPRINT = re.compile(r"^([0-9A-F]{40}|[0-9A-F]{64})$")


def _drop_unset(data: dict[str, Any], optional: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if not (k in optional and v is None)}


def _ssh_blob(value: str) -> tuple[str, bytes]:
    parts = value.split()
    if len(parts) < 2:
        raise ValueError("not an OpenSSH public key line (expected 'ssh-ed25519 AAAA…' or 'ssh-rsa AAAA…')")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the OpenSSH public key is not valid base64") from None
    return parts[0], blob


def _rsa_bits(blob: bytes) -> int:
    # wire format: string "ssh-rsa", mpint e, mpint n
    fields = []
    offset = 0
    for _ in range(3):
        length = int.from_bytes(blob[offset:offset + 4], "big")
        fields.append(blob[offset + 4:offset + 4 + length])
        offset += 4 + length
    return int.from_bytes(fields[2], "big").bit_length()


class Recipient(Strict):
    name: str = Field(pattern=SLUG)
    age: str | None = Field(default=None, description="age X25519 public key, age1…")
    ssh: str | None = Field(default=None, description="OpenSSH public key line: ssh-ed25519 … or ssh-rsa …")
    openpgp: str | None = Field(default=None, description="armored OpenPGP public key, or a file under "
                                                          "configs/recipients/")
    fingerprint: str | None = Field(default=None, description="OpenPGP primary key fingerprint (the pin)")

    @field_validator("age")
    @classmethod
    def _age_key(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            pyrage.x25519.Recipient.from_str(value)
        except Exception:
            raise ValueError("not a valid age X25519 public key (expected 'age1…', 62 characters)") from None
        return value

    @field_validator("ssh")
    @classmethod
    def _ssh_key(cls, value: str | None) -> str | None:
        if value is None:
            return value
        value = value.strip()
        kind, blob = _ssh_blob(value)
        if kind not in SSH_KEY_TYPES:
            raise ValueError(f"SSH key type {kind!r} is not supported; use one of {', '.join(SSH_KEY_TYPES)}")
        if kind == "ssh-rsa" and _rsa_bits(blob) < MIN_RSA_BITS:
            raise ValueError(f"RSA keys need at least {MIN_RSA_BITS} bits")
        try:
            pyrage.ssh.Recipient.from_str(value)
        except Exception:
            raise ValueError("not a valid OpenSSH public key for age") from None
        return value

    @field_validator("openpgp")
    @classmethod
    def _openpgp_key(cls, value: str | None) -> str | None:
        if value is None:
            return value
        text = value.strip()
        if text.startswith("-----BEGIN"):
            if not text.startswith(ARMOR_HEADER) or ARMOR_FOOTER not in text:
                raise ValueError("an inline OpenPGP key must be one ASCII-armored public key block")
            return text + "\n"
        parts = text.split("/")
        if text.startswith("/") or any(p in ("", ".", "..") or not _KEY_PATH_SEGMENT.match(p) for p in parts):
            raise ValueError("an OpenPGP key file must be a plain relative path under configs/recipients/ "
                             "(letters, digits, '.', '_', '-'; no '..' or leading '/')")
        return text

    @field_validator("fingerprint")
    @classmethod
    def _fingerprint(cls, value: str | None) -> str | None:
        if value is None:
            return value
        normal = value.replace(" ", "").upper()
        if not _FINGERPRINT.match(normal):
            raise ValueError("an OpenPGP fingerprint is 40 (v4) or 64 (v5/v6) hex digits")
        return normal

    @model_validator(mode="after")
    def _one_key(self) -> Recipient:
        given = [k for k in ("age", "ssh", "openpgp") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("a recipient needs exactly one key: age, ssh or openpgp")
        if self.openpgp is not None and self.fingerprint is None:
            raise ValueError("an openpgp recipient needs 'fingerprint' (the primary key fingerprint it is "
                             "pinned to)")
        if self.openpgp is None and self.fingerprint is not None:
            raise ValueError("'fingerprint' belongs to openpgp recipients; age and ssh keys are their own pin")
        return self

    @model_serializer(mode="wrap")
    def _serialise(self, handler: Any) -> dict[str, Any]:
        return _drop_unset(handler(self), ("age", "ssh", "openpgp", "fingerprint"))

    @property
    def kind(self) -> Literal["age", "ssh", "openpgp"]:
        if self.age is not None:
            return "age"
        if self.ssh is not None:
            return "ssh"
        return "openpgp"

    @property
    def format(self) -> Literal["age", "openpgp"]:
        """Package format this recipient needs: ``age`` (age and ssh keys) or ``openpgp``."""
        return "openpgp" if self.kind == "openpgp" else "age"

    @property
    def public_key(self) -> str:
        """What identifies the key (duplicate check): the key itself, or the pinned OpenPGP fingerprint."""
        if self.age is not None:
            return self.age
        if self.ssh is not None:
            kind, blob = _ssh_blob(self.ssh)
            return f"{kind} {base64.b64encode(blob).decode('ascii')}"
        return f"openpgp:{self.fingerprint}"


class Delivery(Strict):
    transport: Literal["local", "sftp"] = "local"
    connection: str | None = Field(default=None, pattern=CONN_ID,
                                   description="Airflow connection id of the SFTP server (sftp only)")
    path: str | None = Field(default=None, description="local: folder under the drop root (default: "
                                                        "contractor slug); sftp: folder under the "
                                                        "connection's root (default: the root)")

    @field_validator("path")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is None:
            return value
        body = value[1:] if value.startswith("/") else value
        if body == "":
            return value
        for part in body.split("/"):
            if part in ("", ".", "..") or not _REMOTE_SEGMENT.match(part):
                raise ValueError("a delivery path is folder names separated by '/' (letters, digits, '.', "
                                 "'_', '-'; no '..', empty or hidden parts)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Delivery:
        if self.transport == "sftp" and not self.connection:
            raise ValueError("transport sftp needs 'connection' (the Airflow connection id of the server)")
        if self.transport == "local" and self.connection:
            raise ValueError("'connection' belongs to transport sftp")
        if self.transport == "local" and self.path is not None and self.path.startswith("/"):
            raise ValueError("a local delivery path is relative to the drop folder; remove the leading '/'")
        return self

    @model_serializer(mode="wrap")
    def _serialise(self, handler: Any) -> dict[str, Any]:
        return _drop_unset(handler(self), ("connection",))

    def segments(self) -> list[str]:
        """The path as folder names (a leading '/' names the root itself, never anything above it)."""
        if not self.path:
            return []
        return [p for p in self.path.split("/") if p]
