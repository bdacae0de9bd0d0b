"""Recipient side: decrypt a package, verify signature and every checksum, then (only then) place it.

Everything is unpacked into a private temporary folder beside the output folder; the output folder
receives the files only after every check has passed, so a refused package leaves nothing in it.
Tar members are read one by one and written by us: only plain files with the expected names are
accepted (no links, devices, absolute paths or '..').
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pyrage

from contract_extracts.core.errors import VerificationError
from contract_extracts.delivery.package import CHUNK, PACKAGE_FORMAT, sha256_file
from contract_extracts.delivery.recipients import load_identities
from contract_extracts.delivery.signing import load_public_key, verify_signature

_MEMBER = re.compile(r"^(manifest\.json|manifest\.sig|codebook\.md|data/[a-z][a-z0-9_]{0,62}\.parquet)$")


@dataclass(frozen=True)
class VerifiedPackage:
    out_dir: Path
    manifest: dict
    files: tuple[str, ...]
    signature_verified: bool


def decrypt_package(package: Path, *, identity: Path, out_dir: Path,
                    sender_key: Path | None = None) -> VerifiedPackage:
    if not package.is_file():
        raise VerificationError(f"package {package} does not exist")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise VerificationError(f"output folder {out_dir} exists and is not empty; choose a new folder")
    identities = load_identities(identity)
    public = load_public_key(sender_key) if sender_key else None
    parent = out_dir.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    work = parent / f".{out_dir.name}.incoming-{secrets.token_hex(4)}"
    work.mkdir(mode=0o700)
    try:
        plain = work / "package.tar"
        try:
            pyrage.decrypt_file(str(package), str(plain), identities)
        except Exception:
            raise VerificationError("decryption failed: the package is damaged or was not encrypted to "
                                    "this identity") from None
        files_dir = work / "files"
        files_dir.mkdir()
        names = _unpack(plain, files_dir)
        plain.unlink()
        manifest = _check(files_dir, names, public)
        _place(files_dir, out_dir)
        return VerifiedPackage(out_dir=out_dir, manifest=manifest, files=tuple(sorted(names)),
                               signature_verified=public is not None)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _unpack(tar_path: Path, dest: Path) -> set[str]:
    names: set[str] = set()
    try:
        with tarfile.open(tar_path, "r:") as tar:
            for member in tar:
                if not member.isreg() or not _MEMBER.match(member.name) or member.name in names:
                    raise VerificationError(f"package holds an unexpected entry {member.name[:80]!r}")
                names.add(member.name)
                target = dest / member.name
                target.parent.mkdir(exist_ok=True)
                src = tar.extractfile(member)
                if src is None:  # pragma: no cover - isreg() members always have data
                    raise VerificationError(f"package entry {member.name!r} has no data")
                with src, target.open("xb") as out:
                    while chunk := src.read(CHUNK):
                        out.write(chunk)
    except tarfile.TarError:
        raise VerificationError("decrypted content is not a valid tar archive") from None
    return names


def _check(files_dir: Path, names: set[str], public) -> dict:
    for required in ("manifest.json", "manifest.sig"):
        if required not in names:
            raise VerificationError(f"package has no {required}")
    body = (files_dir / "manifest.json").read_bytes()
    if public is not None:
        verify_signature(public, body, (files_dir / "manifest.sig").read_bytes())
    try:
        manifest = json.loads(body)
    except ValueError:
        raise VerificationError("manifest.json is not valid JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != PACKAGE_FORMAT:
        raise VerificationError(f"manifest format is not {PACKAGE_FORMAT}")
    listed: dict[str, dict] = {}
    entries = manifest.get("files")
    if not isinstance(entries, list):
        raise VerificationError("manifest.json has no list of files")
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str) or entry["path"] in listed:
            raise VerificationError("manifest.json has a malformed or duplicate file entry")
        listed[entry["path"]] = entry
    unlisted = names - set(listed) - {"manifest.json", "manifest.sig"}
    if unlisted:
        raise VerificationError(f"package holds files the manifest does not list: {', '.join(sorted(unlisted))}")
    for path, entry in listed.items():
        if path not in names:
            raise VerificationError(f"file {path} listed in the manifest is missing from the package")
        sha, size = sha256_file(files_dir / path)
        if sha != entry.get("sha256") or size != entry.get("bytes"):
            raise VerificationError(f"file {path} does not match its checksum in the manifest")
    return manifest


def _place(files_dir: Path, out_dir: Path) -> None:
    if not out_dir.exists():
        os.rename(files_dir, out_dir)
        return
    for child in files_dir.iterdir():
        os.rename(child, out_dir / child.name)
