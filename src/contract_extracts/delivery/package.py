"""Build the package a contractor receives (format v1, docs/formats.md).

``<contract>_<delivery>.tar.age``: a tar holding ``manifest.json``, ``manifest.sig`` (Ed25519 over the
manifest bytes), ``codebook.md`` and ``data/<dataset>.parquet``, encrypted with age to every recipient
of the contract. The plaintext tar exists only inside the private staging folder and is removed as
soon as the encrypted file is written; encryption streams (pyrage ``encrypt_file``), so memory does
not grow with the package.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pyrage
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contract_extracts.core.errors import DeliveryError
from contract_extracts.delivery.recipients import parse_recipients

PACKAGE_FORMAT = "contract-extracts/package/v1"
CHUNK = 1 << 20


@dataclass(frozen=True)
class PackageFile:
    """A file that goes into the package, with what the manifest says about it."""

    arcname: str
    path: Path
    rows: int | None = None
    schema: tuple[dict, ...] | None = None


@dataclass(frozen=True)
class BuiltPackage:
    path: Path
    sha256: str
    bytes: int
    manifest_sha256: str


def package_name(contract_id: str, delivery_id: str) -> str:
    return f"{contract_id}_{delivery_id}.tar.age"


def sha256_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def file_entries(files: list[PackageFile]) -> list[dict]:
    """Manifest entries: path, bytes, sha256, and rows/schema for data files."""
    entries = []
    for f in files:
        sha, size = sha256_file(f.path)
        entry: dict = {"path": f.arcname, "bytes": size, "sha256": sha}
        if f.rows is not None:
            entry["rows"] = f.rows
        if f.schema is not None:
            entry["schema"] = list(f.schema)
        entries.append(entry)
    return entries


def manifest_bytes(manifest: dict) -> bytes:
    return (json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def build_package(*, staging_dir: Path, name: str, manifest: dict, files: list[PackageFile],
                  signing_key: Ed25519PrivateKey, recipients: list[str], created_epoch: int) -> BuiltPackage:
    """Write ``staging_dir/name`` (encrypted). ``manifest`` must already list ``files`` (file_entries)."""
    body = manifest_bytes(manifest)
    signature = signing_key.sign(body)
    tar_path = staging_dir / (name.removesuffix(".age") + ".plain")
    out_path = staging_dir / name
    try:
        with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
            _add_bytes(tar, "manifest.json", body, created_epoch)
            _add_bytes(tar, "manifest.sig", signature, created_epoch)
            for f in files:
                info = tar.gettarinfo(str(f.path), arcname=f.arcname)
                _normalise(info, created_epoch)
                with f.path.open("rb") as fh:
                    tar.addfile(info, fh)
        try:
            pyrage.encrypt_file(str(tar_path), str(out_path), parse_recipients(recipients))
        except pyrage.EncryptError:
            raise DeliveryError("age encryption failed") from None
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
