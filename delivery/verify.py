"""Recipient side: decrypt a package, verify signatures and every checksum, then (only then) place it.

The package is decrypted as a stream (age through pyrage, or ``gpg --decrypt`` for ``.tar.gpg`` with the
recipient's own keyring) straight into a tar reader: nothing but the unpacked members is written, and
``verify_package`` writes nothing at all (it only hashes). ``decrypt_package`` unpacks into a private
(0700) folder ``.<out>.incoming-<pid>-<random>`` beside the output folder; the output folder (0700,
files 0600) receives the files only after every check has passed, so a refused package leaves nothing
in it. A folder left by a killed ``decrypt`` (its process is gone) is removed by the next ``decrypt``
into the same parent folder. Tar members are read one by one and written by us: only plain files with
the expected names are accepted (no links, devices, absolute paths or '..').

Checks, all by default:

- a trusted sender key is known (``delivery.trust``: ``--sender-key``, the store beside the identity,
  the user's store); without one nothing is decrypted, unless the caller explicitly skips the signature
  check (``--insecure-skip-signature-check``);
- decryption completed (age/OpenPGP integrity); age and gpg failures are reported as what they are;
- ``manifest.sig`` (and ``manifest.sshsig`` when present) verify with a trusted sender key, and the
  manifest names that key's fingerprint;
- the manifest lists this identity (age, ssh or OpenPGP key) among the recipients: a genuine package of
  another contract re-encrypted to you is refused;
- the manifest lists exactly the files present with their sha256 and size, and ``SHA256SUMS`` (when
  present) agrees with it;
- the contract and delivery in the manifest are the ones expected: given by the caller, or read from a
  file name ``<contract>_<delivery>.tar.(age|gpg)``; a file with any other name is refused unless the
  caller says which delivery it should be.
"""

from __future__ import annotations

import hashlib
import io
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
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pyrage
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from core import sshsig
from core.errors import VerificationError
from delivery.package import CHECKSUMS, CHUNK, sha256_file
from delivery.recipients import load_identities, recipient_fingerprint, ssh_fingerprint
from delivery.signing import ssh_verify
from delivery.trust import SenderTrust, no_trusted_key, resolve_trust

ACCEPTED_FORMATS = ("contract-extracts/package/v1", "contract-extracts/package/v2")
"""Manifest formats this verifier reads (v2: OpenSSH sender fingerprint and the ledger receipt)."""

_MEMBER = re.compile(r"^(manifest\.json|manifest\.sig|manifest\.sshsig|SHA256SUMS|codebook\.md"
                     r"|data/[a-z][a-z0-9_]{0,62}\.parquet)$")
_SIGNATURE_FILES = ("manifest.json", "manifest.sig", "manifest.sshsig")
_KEPT_IN_MEMORY = (*_SIGNATURE_FILES, CHECKSUMS)
_MAX_SMALL_FILE = 16 << 20
_CONTRACT_ID = r"[A-Z][A-Z0-9-]*"
_DELIVERY_ID = r"[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}"
_PACKAGE_NAME = re.compile(rf"^(?P<contract>{_CONTRACT_ID})_(?P<delivery>{_DELIVERY_ID})\.tar\.(age|gpg)$")
_SUMS_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")
_INCOMING = re.compile(r"^\..+\.incoming-(?P<pid>[0-9]+)-[0-9a-f]{8}$")
_LEGACY_INCOMING = re.compile(r"^\..+\.incoming-[0-9a-f]{8}$")
_LEGACY_INCOMING_AGE_S = 3600.0
AGE_MAGIC = b"age-encryption.org/v1\n"
AGE_ARMOR = b"-----BEGIN AGE ENCRYPTED FILE-----"
PGP_ARMOR = b"-----BEGIN PGP MESSAGE-----"
GPG_BINARY = "gpg"


@dataclass(frozen=True)
class Expected:
    """The delivery a recipient expects a package to be (when its file name does not say)."""

    contract: str
    delivery: str


@dataclass(frozen=True)
class VerifiedPackage:
    out_dir: Path | None
    manifest: dict[str, Any]
    files: tuple[str, ...]
    signature_verified: bool
    ssh_signature_verified: bool = False
    checksums_file: bool = False
    encryption: str = "age"
    sender_fingerprint: str | None = None  # the trusted key that verified manifest.sig
    trust_source: str | None = None
    recipient: dict[str, str] | None = None  # the manifest's entry for this identity
    package_sha256: str | None = None  # of the encrypted file, as read
    manifest_sha256: str | None = None
    removed_leftovers: tuple[str, ...] = ()


@dataclass
class _Contents:
    names: set[str]
    digests: dict[str, tuple[str, int]]
    small: dict[str, bytes]


@dataclass
class _Decryption:
    """What the decryption learnt besides the plaintext: whose key opened it, and the file's hash."""

    encryption: str
    recipient_fingerprints: set[str] = field(default_factory=set)
    package_sha256: str | None = None


def package_encryption(package: Path) -> str:
    """``age`` or ``openpgp``: from the name (``.age``/``.gpg``), else from the first bytes.

    A ``.age`` file without the age header is an age error (damaged header), never handed to gpg.
    """
    with package.open("rb") as fh:
        head = fh.read(64)
    is_age = head.startswith(AGE_MAGIC) or head.startswith(AGE_ARMOR)
    name = package.name.lower()
    if name.endswith(".age"):
        if not is_age:
            raise VerificationError("age decryption failed: the file does not begin with the age header "
                                    "('age-encryption.org/v1'): the header is damaged or this is not an age file")
        return "age"
    if name.endswith((".gpg", ".pgp", ".asc")):
        return "openpgp"
    if is_age:
        return "age"
    if head.startswith(PGP_ARMOR) or (head and head[0] & 0x80):
        return "openpgp"
    raise VerificationError("the package is neither an age file (no 'age-encryption.org/v1' header) nor an "
                            "OpenPGP message: damaged, or not a package")


def decrypt_package(package: Path, *, identity: Path | None, out_dir: Path, sender_key: Path | None = None,
                    sender_keys: Sequence[Path] = (), trust: SenderTrust | None = None,
                    skip_signature_check: bool = False, gnupg_home: Path | None = None,
                    expect: Expected | None = None) -> VerifiedPackage:
    """Decrypt, verify and unpack into ``out_dir`` (new or empty); nothing is placed unless all checks pass."""
    _check_inputs(package)
    trusted = _trust(sender_key, sender_keys, trust, identity, skip_signature_check)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise VerificationError(f"output folder {out_dir} exists and is not empty; choose a new folder")
    parent = out_dir.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    removed = sweep_incoming(parent)
    work = parent / f".{out_dir.name}.incoming-{os.getpid()}-{secrets.token_hex(4)}"
    work.mkdir(mode=0o700)
    try:
        os.chmod(work, 0o700)
        files_dir = work / "files"
        files_dir.mkdir(mode=0o700)
        os.chmod(files_dir, 0o700)
        decryption, contents = _read(package, identity, gnupg_home, files_dir)
        result = _check(package, contents, decryption, trusted, expect)
        _place(files_dir, out_dir)
        return _result(result, contents, decryption, trusted, out_dir=out_dir, removed=removed)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def verify_package(package: Path, *, identity: Path | None, sender_key: Path | None = None,
                   sender_keys: Sequence[Path] = (), trust: SenderTrust | None = None,
                   skip_signature_check: bool = False, gnupg_home: Path | None = None,
                   expect: Expected | None = None) -> VerifiedPackage:
    """Decrypt as a stream and check everything without writing any plaintext to disk."""
    _check_inputs(package)
    trusted = _trust(sender_key, sender_keys, trust, identity, skip_signature_check)
    decryption, contents = _read(package, identity, gnupg_home, None)
    result = _check(package, contents, decryption, trusted, expect)
    return _result(result, contents, decryption, trusted, out_dir=None, removed=())


def _result(checked: _Checked, contents: _Contents, decryption: _Decryption, trusted: SenderTrust | None, *,
            out_dir: Path | None, removed: tuple[str, ...]) -> VerifiedPackage:
    return VerifiedPackage(out_dir=out_dir, manifest=checked.manifest, files=tuple(sorted(contents.names)),
                           signature_verified=checked.sender is not None, ssh_signature_verified=checked.ssh_ok,
                           checksums_file=CHECKSUMS in contents.names, encryption=decryption.encryption,
                           sender_fingerprint=checked.sender, trust_source=trusted.source if trusted else None,
                           recipient=checked.recipient, package_sha256=decryption.package_sha256,
                           manifest_sha256=hashlib.sha256(contents.small["manifest.json"]).hexdigest(),
                           removed_leftovers=removed)


def _trust(sender_key: Path | None, sender_keys: Sequence[Path], trust: SenderTrust | None,
           identity: Path | None, skip: bool) -> SenderTrust | None:
    """The trusted keys, decided before anything is decrypted; refuse when there are none (fail closed)."""
    if trust is not None:
        return trust
    files = [*([sender_key] if sender_key is not None else []), *sender_keys]
    if skip and not files:
        return None  # the caller chose to skip the check (and said so loudly); stores are not consulted
    found = resolve_trust(files, identity)
    if found is None:
        raise no_trusted_key(identity)
    return found


def _check_inputs(package: Path) -> None:
    if not package.is_file():
        raise VerificationError(f"package {package} does not exist")


# ---- leftovers of killed runs ---------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def sweep_incoming(parent: Path) -> tuple[str, ...]:
    """Remove ``.<out>.incoming-*`` folders of ``decrypt`` runs that died (unverified plaintext)."""
    removed = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return ()
    now = time.time()
    for entry in entries:
        match = _INCOMING.match(entry.name)
        if match is not None:
            dead = int(match.group("pid")) != os.getpid() and not _pid_alive(int(match.group("pid")))
        elif _LEGACY_INCOMING.match(entry.name):  # written before the pid was in the name
            try:
                dead = now - entry.lstat().st_mtime > _LEGACY_INCOMING_AGE_S
            except OSError:
                continue
        else:
            continue
        if dead and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
            if not entry.exists():
                removed.append(entry.name)
    return tuple(sorted(removed))


# ---- decryption as a stream -----------------------------------------------------------------------


def _read(package: Path, identity: Path | None, gnupg_home: Path | None,
          files_dir: Path | None) -> tuple[_Decryption, _Contents]:
    encryption = package_encryption(package)
    decryption = _Decryption(encryption=encryption)
    if encryption == "age":
        if identity is None:
            raise VerificationError("an age package needs --identity (age identity file or SSH private key)")
        identities = load_identities(identity)
        decryption.recipient_fingerprints = _identity_fingerprints(identity, identities)
        opener = _age_stream(package, identities, decryption)
    else:
        decryption.package_sha256 = sha256_file(package)[0]
        opener = _gpg_stream(package, gnupg_home, decryption)
    with opener as stream:
        contents = _unpack(stream, files_dir)
    return decryption, contents


def _identity_fingerprints(path: Path, identities: list[Any]) -> set[str]:
    """The manifest fingerprints of the keys in an identity file (age X25519, or an OpenSSH key)."""
    out: set[str] = set()
    for identity in identities:
        if isinstance(identity, pyrage.x25519.Identity):
            out.add(recipient_fingerprint(str(identity.to_public())))
    if out:
        return out
    try:
        private = serialization.load_ssh_private_key(path.read_bytes(), password=None)
        line = private.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                 serialization.PublicFormat.OpenSSH).decode("ascii")
    except (ValueError, TypeError, AttributeError, OSError, UnicodeDecodeError):
        raise VerificationError(f"identity file {path}: cannot tell which public key it belongs to, so the "
                                "recipient list cannot be checked") from None
    return {ssh_fingerprint(line)}


class _HashingReader(io.RawIOBase):
    """Hashes the encrypted file as pyrage reads it, so the sha256 is of exactly what was decrypted."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self.digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._raw.read(len(buffer))
        buffer[:len(data)] = data
        self.digest.update(data)
        return len(data)


def _age_error(exc: BaseException) -> VerificationError:
    # pyrage's messages are fixed texts (no content): classify them, say it in our words.
    text = str(exc)
    if "No matching keys" in text:
        reason = "no key in the identity file opens it: the package was not encrypted to you, or its header is damaged"
    elif "header" in text.lower() or "age format" in text.lower():  # e.g. "Header MAC is invalid"
        reason = "the age header is damaged"
    else:
        reason = "the encrypted content is damaged or truncated"
    return VerificationError(f"age decryption failed: {reason}")


@contextmanager
def _age_stream(package: Path, identities: list[Any], decryption: _Decryption) -> Iterator[IO[bytes]]:
    read_fd, write_fd = os.pipe()
    reader = os.fdopen(read_fd, "rb", buffering=CHUNK)
    writer = os.fdopen(write_fd, "wb", buffering=CHUNK)
    failure: list[BaseException] = []
    hashing: list[_HashingReader] = []

    def pump() -> None:
        try:
            with package.open("rb") as src:
                source = _HashingReader(src)
                hashing.append(source)
                pyrage.decrypt_io(source, writer, identities)
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
            raise _age_error(failure[0]) from None
        raise
    reader.close()
    thread.join()
    if failure:
        raise _age_error(failure[0])
    decryption.package_sha256 = hashing[0].digest.hexdigest()


def _gpg_error(status: str) -> VerificationError:
    if "NO_SECKEY" in status and "DECRYPTION_KEY" not in status:
        reason = "the package was not encrypted to a secret key in this keyring"
    elif "NODATA" in status or "ENC_TO" not in status:
        reason = "the file is not an OpenPGP message, or its header is damaged"
    else:
        reason = "the encrypted content is damaged or truncated (integrity check failed)"
    return VerificationError(f"gpg decryption failed: {reason}")


@contextmanager
def _gpg_stream(package: Path, gnupg_home: Path | None, decryption: _Decryption) -> Iterator[IO[bytes]]:
    if shutil.which(GPG_BINARY) is None:
        raise VerificationError("gpg is not installed; it is needed to decrypt an OpenPGP (.tar.gpg) package")
    env = dict(os.environ)
    if gnupg_home is not None:
        env["GNUPGHOME"] = str(gnupg_home)
    with tempfile.TemporaryDirectory(prefix="ce-gpg-status-") as status_dir, \
            tempfile.TemporaryFile() as errors:
        status_file = Path(status_dir) / "status"
        cmd = [GPG_BINARY, "--quiet", "--no-verbose", "--status-file", str(status_file), "--decrypt", str(package)]
        if not sys.stdin.isatty():
            cmd[1:1] = ["--batch"]
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors, env=env)
        stdout = proc.stdout
        assert stdout is not None

        def finish() -> None:
            _drain(stdout)
            stdout.close()
            code = proc.wait()
            status = status_file.read_text(encoding="utf-8", errors="replace") if status_file.exists() else ""
            if code != 0:
                raise _gpg_error(status) from None
            for line in status.splitlines():
                parts = line.split()
                if len(parts) >= 4 and parts[1] == "DECRYPTION_KEY":
                    decryption.recipient_fingerprints.add(f"openpgp:{parts[3].upper()}")

        try:
            yield stdout
        except BaseException:
            # Let gpg finish: a stream cut short by a failed integrity check reads as a broken tar.
            finish()
            raise
        finish()


def _drain(stream: IO[bytes]) -> None:
    while stream.read(CHUNK):
        pass


def _unpack(stream: IO[bytes], dest: Path | None) -> _Contents:
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


def _copy(src: IO[bytes], name: str, dest: Path | None, contents: _Contents) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    keep = name in _KEPT_IN_MEMORY
    kept = bytearray()
    out = None
    if dest is not None:
        target = dest / name
        if not target.parent.exists():
            target.parent.mkdir(mode=0o700)
            os.chmod(target.parent, 0o700)
        out = os.fdopen(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")
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


@dataclass(frozen=True)
class _Checked:
    manifest: dict[str, Any]
    sender: str | None
    ssh_ok: bool
    recipient: dict[str, str] | None


def _check(package: Path, contents: _Contents, decryption: _Decryption, trusted: SenderTrust | None,
           expect: Expected | None) -> _Checked:
    names = contents.names
    for required in ("manifest.json", "manifest.sig"):
        if required not in names:
            raise VerificationError(f"package has no {required}")
    body = contents.small["manifest.json"]
    sender: str | None = None
    ssh_ok = False
    signer: Ed25519PublicKey | None = None
    if trusted is not None:
        signer = _signed_by(trusted, body, contents.small["manifest.sig"])
        sender = sshsig.fingerprint(signer)
        if "manifest.sshsig" in names:
            ssh_verify(signer, body, contents.small["manifest.sshsig"])
            ssh_ok = True
    try:
        manifest = json.loads(body)
    except ValueError:
        raise VerificationError("manifest.json is not valid JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") not in ACCEPTED_FORMATS:
        raise VerificationError(f"manifest format is not one of {', '.join(ACCEPTED_FORMATS)}")
    if signer is not None:
        _check_sender_named(manifest, signer)
    recipient = _check_recipient(manifest, decryption)
    listed: dict[str, dict[str, Any]] = {}
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
    _check_name(package, manifest, expect)
    return _Checked(manifest=manifest, sender=sender, ssh_ok=ssh_ok, recipient=recipient)


def _signed_by(trusted: SenderTrust, body: bytes, signature: bytes) -> Ed25519PublicKey:
    for key in trusted.keys:
        try:
            key.verify(signature, body)
        except InvalidSignature:
            continue
        return key
    raise VerificationError(f"manifest signature does not verify with any trusted sender key "
                            f"({', '.join(trusted.fingerprints())}, from {trusted.source}): the package was "
                            "altered or not signed by this sender")


def _legacy_fingerprint(public: Ed25519PublicKey) -> str:
    """How package format v1 named the sender key (``ed25519:`` + 32 hex of SHA-256 of the raw key)."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:32]


def _check_sender_named(manifest: dict[str, Any], signer: Ed25519PublicKey) -> None:
    sender = manifest.get("sender")
    named = sender.get("fingerprint") if isinstance(sender, dict) else None
    if named not in (sshsig.fingerprint(signer), _legacy_fingerprint(signer)):
        raise VerificationError(f"the manifest names sender key {str(named)[:80]!r} but was signed by "
                                f"{sshsig.fingerprint(signer)}")


def _check_recipient(manifest: dict[str, Any], decryption: _Decryption) -> dict[str, str] | None:
    recipients = manifest.get("recipients")
    if not isinstance(recipients, list) or not all(
            isinstance(r, dict) and isinstance(r.get("fingerprint"), str) for r in recipients):
        raise VerificationError("manifest.json has no valid list of recipients")
    ours = decryption.recipient_fingerprints
    if not ours:
        raise VerificationError("cannot tell which key decrypted the package, so the recipient list cannot be "
                                "checked")
    for entry in recipients:
        if entry["fingerprint"] in ours:
            return {"name": str(entry.get("name", "")), "fingerprint": entry["fingerprint"]}
    listed = ", ".join(f"{r.get('name')} ({r['fingerprint']})" for r in recipients)[:400]
    raise VerificationError(f"this package was not made for you: its manifest lists the recipients {listed}, "
                            f"not your key {', '.join(sorted(ours))}. It may be another delivery's package "
                            "re-encrypted to you; do not use it")


def _check_sums(text: bytes, listed: dict[str, dict[str, Any]]) -> None:
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


def _check_name(package: Path, manifest: dict[str, Any], expect: Expected | None) -> None:
    """The manifest's contract and delivery are the expected ones, whatever the file is called."""
    contract, delivery = manifest.get("contract"), manifest.get("delivery")
    if not isinstance(contract, str) or not re.fullmatch(_CONTRACT_ID, contract) \
            or not isinstance(delivery, str) or not re.fullmatch(_DELIVERY_ID, delivery):
        raise VerificationError("manifest.json has no valid contract and delivery id")
    holds = f"contract {contract} delivery {delivery}"
    if expect is not None:
        if (expect.contract, expect.delivery) != (contract, delivery):
            raise VerificationError(f"the package holds {holds}, not the expected contract {expect.contract} "
                                    f"delivery {expect.delivery}: an old or swapped package")
        return
    match = _PACKAGE_NAME.match(package.name)
    if match is None:
        raise VerificationError(f"package file {package.name[:120]!r} is not named <contract>_<delivery>.tar.age "
                                f"(or .tar.gpg), so nothing says which delivery it should be; it holds {holds}. "
                                "Fix: pass --contract and --delivery with the delivery you expect (from the "
                                "sender's notice), or use the file under the name it was delivered with")
    if match.group("contract") != contract or match.group("delivery") != delivery:
        raise VerificationError(f"package file {package.name} holds {holds}: renamed or swapped package")


def _place(files_dir: Path, out_dir: Path) -> None:
    if not out_dir.exists():
        os.rename(files_dir, out_dir)
        return
    os.chmod(out_dir, 0o700)
    for child in files_dir.iterdir():
        os.rename(child, out_dir / child.name)
