"""Recipient side: decrypt a package, verify signatures and every checksum, then (only then) place it.

The package is decrypted as a stream (age through pyrage, or ``gpg --decrypt`` for ``.tar.gpg`` with the
recipient's own keyring) straight into a tar reader: nothing but the unpacked members is written, and
``verify_package`` writes nothing at all (it only hashes). ``decrypt_package`` unpacks into a private
temporary folder beside the output folder; the output folder receives the files only after every
check has passed, so a refused package leaves nothing in it. Tar members are read one by one and
written by us: only plain files with the expected names are accepted (no links, devices, absolute paths
or '..').

Checks: decryption completed (age/OpenPGP integrity), ``manifest.sig`` (and ``manifest.sshsig`` when
present) verify with the sender key, the manifest lists exactly the files present with their sha256 and
size, ``SHA256SUMS`` (when present; packages before it are still accepted) agrees with the manifest,
and a package named ``<contract>_<delivery>.tar.*`` holds that contract's delivery.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pyrage

from core.errors import VerificationError
from delivery.package import CHECKSUMS, CHUNK, PACKAGE_FORMAT
from delivery.recipients import load_identities
from delivery.signing import load_public_key, ssh_verify, verify_signature

_MEMBER = re.compile(r"^(manifest\.json|manifest\.sig|manifest\.sshsig|SHA256SUMS|codebook\.md"
                     r"|data/[a-z][a-z0-9_]{0,62}\.parquet)$")
_SIGNATURE_FILES = ("manifest.json", "manifest.sig", "manifest.sshsig")
_KEPT_IN_MEMORY = (*_SIGNATURE_FILES, CHECKSUMS)
_MAX_SMALL_FILE = 16 << 20
_PACKAGE_NAME = re.compile(r"^(?P<contract>[A-Z][A-Z0-9-]*)_(?P<delivery>[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8})"
                           r"\.tar\.(age|gpg)$")
_SUMS_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")
AGE_MAGIC = b"age-encryption.org/v1\n"
AGE_ARMOR = b"-----BEGIN AGE ENCRYPTED FILE-----"
GPG_BINARY = "gpg"


def _decryption_failed() -> VerificationError:
    return VerificationError("decryption failed: the package is damaged or was not encrypted to this identity")


def _gpg_failed() -> VerificationError:
    return VerificationError("decryption failed: gpg could not decrypt the package (damaged, or not encrypted "
                             "to a secret key in this keyring)")


@dataclass(frozen=True)
class VerifiedPackage:
    out_dir: Path | None
    manifest: dict
    files: tuple[str, ...]
    signature_verified: bool
    ssh_signature_verified: bool = False
    checksums_file: bool = False
    encryption: str = "age"


@dataclass
class _Contents:
    names: set[str]
    digests: dict[str, tuple[str, int]]
    small: dict[str, bytes]


def package_encryption(package: Path) -> str:
    """``age`` or ``openpgp``, from the file's first bytes."""
    with package.open("rb") as fh:
        head = fh.read(64)
    if head.startswith(AGE_MAGIC) or head.startswith(AGE_ARMOR):
        return "age"
    return "openpgp"


def decrypt_package(package: Path, *, identity: Path | None, out_dir: Path, sender_key: Path | None = None,
                    gnupg_home: Path | None = None) -> VerifiedPackage:
    """Decrypt, verify and unpack into ``out_dir`` (new or empty); nothing is placed unless all checks pass."""
    _check_inputs(package)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise VerificationError(f"output folder {out_dir} exists and is not empty; choose a new folder")
    public = load_public_key(sender_key) if sender_key else None
    parent = out_dir.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    work = parent / f".{out_dir.name}.incoming-{secrets.token_hex(4)}"
    work.mkdir(mode=0o700)
    try:
        files_dir = work / "files"
        files_dir.mkdir()
        encryption, contents = _read(package, identity, gnupg_home, files_dir)
        manifest, ssh_ok = _check(package, contents, public)
        _place(files_dir, out_dir)
        return VerifiedPackage(out_dir=out_dir, manifest=manifest, files=tuple(sorted(contents.names)),
                               signature_verified=public is not None, ssh_signature_verified=ssh_ok,
                               checksums_file=CHECKSUMS in contents.names, encryption=encryption)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def verify_package(package: Path, *, identity: Path | None, sender_key: Path | None,
                   gnupg_home: Path | None = None) -> VerifiedPackage:
    """Decrypt as a stream and check everything without writing any plaintext to disk."""
    _check_inputs(package)
    public = load_public_key(sender_key) if sender_key else None
    encryption, contents = _read(package, identity, gnupg_home, None)
    manifest, ssh_ok = _check(package, contents, public)
    return VerifiedPackage(out_dir=None, manifest=manifest, files=tuple(sorted(contents.names)),
                           signature_verified=public is not None, ssh_signature_verified=ssh_ok,
                           checksums_file=CHECKSUMS in contents.names, encryption=encryption)


def _check_inputs(package: Path) -> None:
    if not package.is_file():
        raise VerificationError(f"package {package} does not exist")


# ---- decryption as a stream -----------------------------------------------------------------------


def _read(package: Path, identity: Path | None, gnupg_home: Path | None,
          files_dir: Path | None) -> tuple[str, _Contents]:
    encryption = package_encryption(package)
    if encryption == "age":
        if identity is None:
            raise VerificationError("an age package needs --identity (age identity file or SSH private key)")
        opener = _age_stream(package, load_identities(identity))
    else:
        opener = _gpg_stream(package, gnupg_home)
    with opener as stream:
        contents = _unpack(stream, files_dir)
    return encryption, contents


@contextmanager
def _age_stream(package: Path, identities: list) -> Iterator[BinaryIO]:
    read_fd, write_fd = os.pipe()
    reader = os.fdopen(read_fd, "rb", buffering=CHUNK)
    writer = os.fdopen(write_fd, "wb", buffering=CHUNK)
    failure: list[BaseException] = []

    def pump() -> None:
        try:
            with package.open("rb") as src:
                pyrage.decrypt_io(src, writer, identities)
        except BaseException as exc:  # reported after the reader is done
            failure.append(exc)
        finally:
            with suppress(OSError):
                writer.close()

    thread = threading.Thread(target=pump, name="age-decrypt", daemon=True)
    thread.start()
    try:
        yield reader
        _drain(reader)
    except BaseException:
        reader.close()  # unblocks the pump if we stopped early
        thread.join()
        # A stream cut short by a decryption failure reads as a broken tar: report the real cause.
        if failure and not isinstance(failure[0], BrokenPipeError):
            raise _decryption_failed() from None
        raise
    reader.close()
    thread.join()
    if failure:
        raise _decryption_failed()


@contextmanager
def _gpg_stream(package: Path, gnupg_home: Path | None) -> Iterator[BinaryIO]:
    if shutil.which(GPG_BINARY) is None:
        raise VerificationError("gpg is not installed; it is needed to decrypt an OpenPGP (.tar.gpg) package")
    env = dict(os.environ)
    if gnupg_home is not None:
        env["GNUPGHOME"] = str(gnupg_home)
    cmd = [GPG_BINARY, "--quiet", "--no-verbose", "--decrypt", str(package)]
    if not sys.stdin.isatty():
        cmd[1:1] = ["--batch"]
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors, env=env)
        assert proc.stdout is not None
        try:
            yield proc.stdout
        except BaseException:
            # Let gpg finish: a stream cut short by a failed integrity check reads as a broken tar.
            _drain(proc.stdout)
            proc.stdout.close()
            if proc.wait() != 0:
                raise _gpg_failed() from None
            raise
        _drain(proc.stdout)
        proc.stdout.close()
        if proc.wait() != 0:
            raise _gpg_failed()


def _drain(stream: BinaryIO) -> None:
    while stream.read(CHUNK):
        pass


def _unpack(stream: BinaryIO, dest: Path | None) -> _Contents:
    contents = _Contents(names=set(), digests={}, small={})
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                if not member.isreg() or not _MEMBER.match(member.name) or member.name in contents.names:
                    raise VerificationError(f"package holds an unexpected entry {member.name[:80]!r}")
                if member.name in _KEPT_IN_MEMORY and member.size > _MAX_SMALL_FILE:
                    raise VerificationError(f"package entry {member.name} is implausibly large")
                contents.names.add(member.name)
                src = tar.extractfile(member)
                if src is None:  # pragma: no cover - isreg() members always have data
                    raise VerificationError(f"package entry {member.name!r} has no data")
                contents.digests[member.name] = _copy(src, member.name, dest, contents)
    except tarfile.TarError:
        raise VerificationError("decrypted content is not a valid tar archive") from None
    return contents


def _copy(src, name: str, dest: Path | None, contents: _Contents) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    keep = name in _KEPT_IN_MEMORY
    kept = bytearray()
    out = None
    if dest is not None:
        target = dest / name
        target.parent.mkdir(exist_ok=True)
        out = target.open("xb")
    try:
        with src:
            while chunk := src.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
                if keep:
                    kept += chunk
                if out is not None:
                    out.write(chunk)
    finally:
        if out is not None:
            out.close()
    if keep:
        contents.small[name] = bytes(kept)
    return digest.hexdigest(), size


# ---- checks ---------------------------------------------------------------------------------------


def _check(package: Path, contents: _Contents, public) -> tuple[dict, bool]:
    names = contents.names
    for required in ("manifest.json", "manifest.sig"):
        if required not in names:
            raise VerificationError(f"package has no {required}")
    body = contents.small["manifest.json"]
    ssh_ok = False
    if public is not None:
        verify_signature(public, body, contents.small["manifest.sig"])
        if "manifest.sshsig" in names:
            ssh_verify(public, body, contents.small["manifest.sshsig"])
            ssh_ok = True
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
    unlisted = names - set(listed) - set(_SIGNATURE_FILES)
    if unlisted:
        raise VerificationError(f"package holds files the manifest does not list: {', '.join(sorted(unlisted))}")
    for path, entry in listed.items():
        if path not in names:
            raise VerificationError(f"file {path} listed in the manifest is missing from the package")
        sha, size = contents.digests[path]
        if sha != entry.get("sha256") or size != entry.get("bytes"):
            raise VerificationError(f"file {path} does not match its checksum in the manifest")
    if CHECKSUMS in names:
        _check_sums(contents.small[CHECKSUMS], listed)
    _check_name(package, manifest)
    return manifest, ssh_ok


def _check_sums(text: bytes, listed: dict[str, dict]) -> None:
    sums: dict[str, str] = {}
    try:
        lines = text.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise VerificationError(f"{CHECKSUMS} is not UTF-8 text") from None
    for line in lines:
        match = _SUMS_LINE.match(line)
        if not match or match.group(2) in sums:
            raise VerificationError(f"{CHECKSUMS} has a malformed or duplicate line")
        sums[match.group(2)] = match.group(1)
    expected = {p: e.get("sha256") for p, e in listed.items() if p != CHECKSUMS}
    if sums != expected:
        raise VerificationError(f"{CHECKSUMS} disagrees with the manifest")


def _check_name(package: Path, manifest: dict) -> None:
    match = _PACKAGE_NAME.match(package.name)
    if match and (match.group("contract") != manifest.get("contract")
                  or match.group("delivery") != manifest.get("delivery")):
        raise VerificationError(f"package file {package.name} holds contract {manifest.get('contract')!r} "
                                f"delivery {manifest.get('delivery')!r}: renamed or swapped package")


def _place(files_dir: Path, out_dir: Path) -> None:
    if not out_dir.exists():
        os.rename(files_dir, out_dir)
        return
    for child in files_dir.iterdir():
        os.rename(child, out_dir / child.name)
