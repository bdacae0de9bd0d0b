"""Build the package a contractor receives (format v1, docs/formats.md, docs/delivery.md).

``<contract>_<delivery>.tar.age`` (or ``.tar.gpg`` for OpenPGP recipients): a tar holding
``manifest.json``, ``manifest.sig`` (Ed25519 over the manifest bytes), optionally ``manifest.sshsig``
(the same key, OpenSSH SSHSIG format), ``codebook.md``, ``data/<dataset>.parquet`` and ``SHA256SUMS``
(``sha256sum -c`` format, itself listed in the signed manifest), encrypted to every recipient of the
contract in one pass. The plaintext tar exists only inside the private staging folder and is removed
as soon as the encrypted file is written; encryption streams (pyrage ``encrypt_file``, gpg reading a
file), so memory does not grow with the package.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyrage
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from core.errors import DeliveryError
from delivery.recipients import parse_recipients
from delivery.signing import SSHSIG_NAMESPACE, ssh_sign

PACKAGE_FORMAT = "contract-extracts/package/v2"
"""v2: the sender key is named by its OpenSSH fingerprint (``SHA256:…``) and the manifest carries the audit
ledger's head (``ledger``: seq and hash). v1 packages still verify (delivery.verify.ACCEPTED_FORMATS)."""
CHUNK = 1 << 20
CHECKSUMS = "SHA256SUMS"
SUFFIXES = {"age": ".tar.age", "openpgp": ".tar.gpg"}


@dataclass(frozen=True)
class PackageFile:
    """A file that goes into the package, with what the manifest says about it."""

    arcname: str
    path: Path
    rows: int | None = None
    schema: tuple[dict[str, Any], ...] | None = None


@dataclass(frozen=True)
class BuiltPackage:
    path: Path
    sha256: str
    bytes: int
    manifest_sha256: str


def package_name(contract_id: str, delivery_id: str, fmt: str = "age") -> str:
    return f"{contract_id}_{delivery_id}{SUFFIXES[fmt]}"


def sha256_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def file_entries(files: list[PackageFile]) -> list[dict[str, Any]]:
    """Manifest entries: path, bytes, sha256, and rows/schema for data files."""
    entries = []
    for f in files:
        sha, size = sha256_file(f.path)
        entry: dict[str, Any] = {"path": f.arcname, "bytes": size, "sha256": sha}
        if f.rows is not None:
            entry["rows"] = f.rows
        if f.schema is not None:
            entry["schema"] = list(f.schema)
        entries.append(entry)
    return entries


def checksums_file(staging_dir: Path, files: list[PackageFile]) -> PackageFile:
    """Write ``SHA256SUMS`` (``sha256sum -c`` format) for ``files`` and return it as a package file.

    It goes into the manifest's file list like any other file, so the signature covers it.
    """
    lines = []
    for f in files:
        if any(c in f.arcname for c in "\n\\"):  # pragma: no cover - arcnames are our own safe names
            raise DeliveryError(f"file name {f.arcname!r} cannot be listed in {CHECKSUMS}")
        lines.append(f"{sha256_file(f.path)[0]}  {f.arcname}\n")
    path = staging_dir / CHECKSUMS
    path.write_text("".join(lines), encoding="utf-8")
    return PackageFile(arcname=CHECKSUMS, path=path)


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    return (json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


Encryptor = Callable[[Path, Path], None]
"""``encrypt(plain_tar, out_path)``: writes the encrypted package (age by default, OpenPGP for gpg)."""


def age_encryptor(recipients: list[str]) -> Encryptor:
    parsed = parse_recipients(recipients)

    def encrypt(plain: Path, out: Path) -> None:
        try:
            pyrage.encrypt_file(str(plain), str(out), parsed)
        except pyrage.EncryptError:
            raise DeliveryError("age encryption failed") from None
    return encrypt


def build_package(*, staging_dir: Path, name: str, manifest: dict[str, Any], files: list[PackageFile],
                  signing_key: Ed25519PrivateKey, recipients: list[str] | None = None, created_epoch: int,
                  encrypt: Encryptor | None = None, ssh_signature: bool = False) -> BuiltPackage:
    """Write ``staging_dir/name`` (encrypted). ``manifest`` must already list ``files`` (file_entries).

    ``recipients`` are age keys (``age1…`` or OpenSSH lines) unless ``encrypt`` is given.
    ``ssh_signature`` adds ``manifest.sshsig`` beside ``manifest.sig``.
    """
    if encrypt is None:
        if not recipients:
            raise DeliveryError("a package needs at least one recipient")
        encrypt = age_encryptor(recipients)
    body = manifest_bytes(manifest)
    signature = signing_key.sign(body)
    tar_path = staging_dir / f".{name}.plain"
    out_path = staging_dir / name
    try:
        with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
            _add_bytes(tar, "manifest.json", body, created_epoch)
            _add_bytes(tar, "manifest.sig", signature, created_epoch)
            if ssh_signature:
                _add_bytes(tar, "manifest.sshsig", ssh_sign(signing_key, body, SSHSIG_NAMESPACE), created_epoch)
            for f in files:
                info = tar.gettarinfo(str(f.path), arcname=f.arcname)
                _normalise(info, created_epoch)
                with f.path.open("rb") as fh:
                    tar.addfile(info, fh)
        try:
            encrypt(tar_path, out_path)
        except BaseException:
            out_path.unlink(missing_ok=True)
            raise
        with out_path.open("rb") as fh:
            os.fsync(fh.fileno())
    finally:
        tar_path.unlink(missing_ok=True)
    sha, size = sha256_file(out_path)
    return BuiltPackage(path=out_path, sha256=sha, bytes=size, manifest_sha256=hashlib.sha256(body).hexdigest())


def _add_bytes(tar: tarfile.TarFile, arcname: str, data: bytes, mtime: int) -> None:
    info = tarfile.TarInfo(arcname)
    info.size = len(data)
    _normalise(info, mtime)
    tar.addfile(info, io.BytesIO(data))


def _normalise(info: tarfile.TarInfo, mtime: int) -> None:
    # No local user names, ids or permissions leak into the package; times are the delivery's.
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o644
    info.mtime = mtime
