"""SFTP transport: pinned host keys, atomic no-overwrite upload, retries on transient errors only.

Plain paramiko; no Airflow here. The connection comes in as an ``SFTPEndpoint``, built by
``endpoint_from_connection`` from an Airflow connection's fields: outside Airflow from
``AIRFLOW_CONN_<ID>`` (``env_sftp_endpoint``), inside Airflow by ``airflow_glue.transports`` through the
SFTP provider. Both read the same fields with the same rules:

- host key pinned: extra ``host_key`` ("ssh-ed25519 AAAA…", as in the SFTP provider) and/or
  ``known_hosts`` (a known_hosts file, relative paths under the config folder). An unknown or
  changed host key refuses the connection; ``no_host_key_check`` / ``allow_host_key_change`` are refused;
  system and user known_hosts files, the SSH agent and ~/.ssh keys are never consulted;
- credentials: ``key_file`` or ``private_key`` (+ ``private_key_passphrase``) or the password;
- extra ``root``: the absolute remote folder every delivery path is under (default: the login's
  start folder). The contract's ``delivery.path`` is folder names under it; '..', odd characters and
  symlinks that lead outside the root are refused;
- nothing in a connection can add a recipient: extras that name recipients are refused.

Upload (one attempt): connect → check the folder (exists, is a folder, inside the root) → if the final
name exists, hash it: same sha256 → already delivered, else refuse (never overwrite) → remove our stale
``.<name>.partial-*`` files → write ``.<name>.partial-<random>`` (created exclusively) → compare the
remote size, then the sha256 (server-side ``check-file`` where offered, otherwise read back and hash) →
``rename`` to the final name. SFTP v3 rename never replaces an existing file (OpenSSH implements it with
link(2)+unlink(2)); ``posix-rename@openssh.com``, which does replace, is never used. So the final name
holds a complete, verified package or nothing, whatever is killed when.

Transient failures (refused or dropped connection, timeouts, size/checksum mismatch after a dropped
write) are retried with exponential backoff; terminal ones (host key, authentication, permission,
missing folder, a different file at the final name, the server refusing writes) fail at once with a
``DeliveryError`` subclass that says what to fix.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import io
import json
import os
import posixpath
import random
import re
import secrets
import socket
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import parse_qsl, unquote, urlsplit

import paramiko

from core.errors import ConfigError, DeliveryError, value_free
from core.paths import safe_segment, within
from delivery.package import CHUNK

REMOTE_CHUNK = 256 * 1024
PARTIAL = ".partial-"


# ---- errors ---------------------------------------------------------------------------------------


class TransportError(DeliveryError):
    """A terminal SFTP failure: retrying will not help until something is fixed."""


class HostKeyRejected(TransportError):
    """The server's host key is not the pinned one (unknown or changed)."""


class AuthenticationFailed(TransportError):
    """The server refused our credentials."""


class RemotePermissionDenied(TransportError):
    """The server refused an operation on the delivery folder."""


class RemotePathError(TransportError):
    """The delivery folder is missing, not a folder, or outside the root."""


class RemoteWriteFailed(TransportError):
    """The server accepted the file but failed to store it (disk full, quota, file size limit)."""


class PackageConflict(TransportError):
    """A different file already has the package's final name; it is never overwritten."""


class TransportUnavailable(DeliveryError):
    """Transient failures went on for every attempt (server down, network, dropped connections)."""


class _Transient(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# ---- the endpoint -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SFTPEndpoint:
    conn_id: str
    host: str
    port: int
    username: str
    host_keys: tuple[paramiko.PKey, ...]
    root: str | None = None
    password: str | None = field(default=None, repr=False)
    pkey: paramiko.PKey | None = field(default=None, repr=False)
    timeout: float = 30.0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    def pinned_fingerprints(self) -> list[str]:
        return [key_fingerprint(k) for k in self.host_keys]


def key_fingerprint(key: paramiko.PKey) -> str:
    digest = base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode("ascii").rstrip("=")
    return f"SHA256:{digest}"


_REFUSED_FLAGS = ("no_host_key_check", "allow_host_key_change", "ignore_hostkey_verification")
_PRIVATE_KEY_CLASSES: tuple[type[paramiko.PKey], ...] = (paramiko.Ed25519Key, paramiko.RSAKey, paramiko.ECDSAKey)


def endpoint_from_connection(conn_id: str, *, conn_type: str | None, host: str | None, port: int | None,
                             login: str | None, password: str | None, extra: Mapping[str, Any] | None,
                             config_dir: Path | None = None) -> SFTPEndpoint:
    """The one reading of an SFTP connection, shared by the CLI/tests and Airflow."""
    key = f"connection {conn_id!r}"
    extra = dict(extra or {})
    if conn_type and conn_type.lower() not in ("sftp", "ssh"):
        raise ConfigError(f"has type {conn_type!r}, not sftp", key=key, fix="use an sftp (or ssh) connection")
    if not host:
        raise ConfigError("has no host", key=key, fix="set the SFTP server's host name")
    if not login:
        raise ConfigError("has no login", key=key, fix="set the user name on the SFTP server")
    for flag in _REFUSED_FLAGS:
        if str(extra.get(flag, "")).lower() == "true":
            raise ConfigError(f"turns host key checking off ({flag})", key=key,
                              fix="remove it and pin the server's key with extra host_key or known_hosts")
    for name in extra:
        if "recipient" in name.lower() or name.lower() in ("age", "openpgp", "identity"):
            raise ConfigError(f"has extra {name!r}: recipients come from the contract only", key=key,
                              fix="remove it; recipients are changed in the contract, with a new approval")
    try:
        port_number = int(port) if port else 22
    except (TypeError, ValueError):
        raise ConfigError("has a port that is not a number", key=key, fix="set e.g. 22") from None
    endpoint_host = str(host)
    name = endpoint_host if port_number == 22 else f"[{endpoint_host}]:{port_number}"
    host_keys = list(_pinned_host_keys(extra, name, key, config_dir))
    if not host_keys:
        raise ConfigError("pins no host key", key=key,
                          fix="add extra host_key (e.g. the line from 'ssh-keyscan -t ed25519 HOST', without "
                              "the host name) or known_hosts (a known_hosts file holding the server)")
    pkey = _private_key(extra, key, config_dir)
    if pkey is None and not password:
        raise ConfigError("has no credentials", key=key,
                          fix="set extra key_file or private_key (preferred), or a password")
    root = extra.get("root")
    if root is not None:
        root = _check_root(str(root), key)
    try:
        timeout = float(extra.get("conn_timeout") or extra.get("timeout") or 30)
    except (TypeError, ValueError):
        raise ConfigError("has a conn_timeout that is not a number", key=key, fix="set seconds, e.g. 30") from None
    return SFTPEndpoint(conn_id=conn_id, host=endpoint_host, port=port_number, username=str(login),
                        host_keys=tuple(host_keys), root=root, password=password or None, pkey=pkey,
                        timeout=timeout)


def _pinned_host_keys(extra: Mapping[str, Any], name: str, key: str, config_dir: Path | None) -> list[paramiko.PKey]:
    keys: list[paramiko.PKey] = []
    value = extra.get("host_key")
    if value:
        keys.append(_parse_host_key(str(value), key))
    known = extra.get("known_hosts")
    if known:
        path = _config_path(str(known), config_dir, key, "known_hosts")
        try:
            entries = paramiko.HostKeys(str(path))
        except (OSError, paramiko.SSHException):
            raise ConfigError(f"names known_hosts file {path} that cannot be read", key=key,
                              fix="check the path (relative paths are under the config folder)") from None
        found = entries.lookup(name)
        if not found:
            raise ConfigError(f"known_hosts file {path} has no entry for {name}", key=key,
                              fix=f"add the server's key for {name} (ssh-keyscan -p PORT HOST)")
        keys.extend(found[t] for t in found)
    return keys


def _parse_host_key(value: str, key: str) -> paramiko.PKey:
    parts = value.split()
    try:
        if len(parts) >= 2:
            key_type, data = parts[0], base64.b64decode(parts[1], validate=True)
        else:
            data = base64.b64decode(parts[0], validate=True)
            key_type = paramiko.Message(data).get_text()
        return paramiko.PKey.from_type_string(key_type, data)
    except Exception:
        raise ConfigError("has a host_key that is not an OpenSSH public key", key=key,
                          fix="use 'ssh-ed25519 AAAA…' as printed by ssh-keyscan (without the host name)") from None


def _private_key(extra: Mapping[str, Any], key: str, config_dir: Path | None) -> paramiko.PKey | None:
    passphrase = extra.get("private_key_passphrase") or None
    if extra.get("private_key") and extra.get("key_file"):
        raise ConfigError("sets both key_file and private_key", key=key, fix="keep one of them")
    if extra.get("private_key"):
        text = str(extra["private_key"])
        where = "extra private_key"
    elif extra.get("key_file"):
        path = _config_path(str(extra["key_file"]), config_dir, key, "key_file")
        try:
            text = path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError):
            raise ConfigError(f"names key_file {path} that cannot be read", key=key,
                              fix="check the path and its permissions") from None
        where = f"key_file {path}"
    else:
        return None
    for cls in _PRIVATE_KEY_CLASSES:
        try:
            return cls.from_private_key(io.StringIO(text), password=passphrase)
        except (paramiko.SSHException, ValueError):
            continue
    raise ConfigError(f"{where} is not an Ed25519, RSA or ECDSA private key (or its passphrase is wrong)",
                      key=key, fix="use an OpenSSH/PEM private key and the right private_key_passphrase")


def _config_path(value: str, config_dir: Path | None, key: str, what: str) -> Path:
    path = Path(value)
    if path.is_absolute():
        return path
    if config_dir is None:
        raise ConfigError(f"has a relative {what} path and no config folder to resolve it", key=key,
                          fix="give an absolute path")
    return within(config_dir, value, f"{key} {what}")


def _check_root(root: str, key: str) -> str:
    parts = root.split("/")
    if not root.startswith("/") or any(p in (".", "..") for p in parts) or "\\" in root or "\x00" in root:
        raise ConfigError("has a root that is not a plain absolute path", key=key,
                          fix="set extra root to e.g. /srv/sftp/acme (no '..')")
    return posixpath.normpath(root)


def env_sftp_endpoint(conn_id: str, env: Mapping[str, str] | None = None,
                      config_dir: Path | None = None) -> SFTPEndpoint:
    """Resolve an SFTP connection from ``AIRFLOW_CONN_<ID>`` (JSON or URI form), as Airflow would."""
    env = os.environ if env is None else env
    name = "AIRFLOW_CONN_" + conn_id.upper().replace("-", "_").replace(".", "_")
    value = env.get(name)
    key = f"connection {conn_id!r}"
    if not value:
        raise ConfigError(f"is not defined (looked for environment variable {name})", key=key,
                          fix=f"define the Airflow connection {conn_id!r} or export {name}")
    if value.lstrip().startswith("{"):
        try:
            data = json.loads(value)
            if not isinstance(data, dict):
                raise ValueError
        except ValueError:
            raise ConfigError("is not valid connection JSON", key=key, fix="check the JSON syntax") from None
        json_extra = data.get("extra") or {}
        if isinstance(json_extra, str):
            try:
                json_extra = json.loads(json_extra)
            except ValueError:
                raise ConfigError("has extra that is not JSON", key=key, fix="give extra as an object") from None
        return endpoint_from_connection(conn_id, conn_type=data.get("conn_type"), host=data.get("host"),
                                        port=data.get("port"), login=data.get("login"),
                                        password=data.get("password"), extra=json_extra, config_dir=config_dir)
    parts = urlsplit(value)
    if not parts.scheme or not parts.hostname:
        raise ConfigError("is neither a URI nor Airflow connection JSON", key=key,
                          fix="use JSON: {\"conn_type\": \"sftp\", \"host\": …, \"extra\": {\"host_key\": …}}")
    extra: dict[str, Any] = {}
    for k, v in parse_qsl(parts.query, keep_blank_values=True):
        if k == "__extra__":
            try:
                extra.update(json.loads(v))
            except ValueError:
                raise ConfigError("has __extra__ that is not JSON", key=key, fix="check the URI") from None
        else:
            extra[k] = v
    try:
        port = parts.port
    except ValueError:
        raise ConfigError("has a port that is not a number", key=key, fix="set e.g. 22") from None
    return endpoint_from_connection(conn_id, conn_type=parts.scheme.replace("-", "_"), host=parts.hostname,
                                    port=port, login=unquote(parts.username) if parts.username else None,
                                    password=unquote(parts.password) if parts.password else None,
                                    extra=extra, config_dir=config_dir)


# ---- connecting ---------------------------------------------------------------------------------------


class _RefuseUnknownHostKey(paramiko.MissingHostKeyPolicy):  # type: ignore[misc]  # paramiko is untyped
    def __init__(self, endpoint: SFTPEndpoint) -> None:
        self.endpoint = endpoint

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise HostKeyRejected(
            f"SFTP server {self.endpoint.address} ({self.endpoint.conn_id}) offered host key "
            f"{key.get_name()} {key_fingerprint(key)}, which is not pinned (pinned: "
            f"{', '.join(self.endpoint.pinned_fingerprints())}); nothing was sent. Fix: if the server's key "
            "really changed, verify the new key with its operator and update the connection's host_key")


@dataclass
class Session:
    client: paramiko.SSHClient
    sftp: paramiko.SFTPClient
    host_key: paramiko.PKey

    def close(self) -> None:
        for closer in (self.sftp.close, self.client.close):
            with contextlib.suppress(Exception):  # closing a dead session
                closer()

    @property
    def alive(self) -> bool:
        transport = self.client.get_transport()
        return bool(transport and transport.is_active())


Connect = Callable[[SFTPEndpoint], Session]
Progress = Callable[[Session, int], None]
"""``progress(session, bytes_sent)``, called after every chunk written."""


def connect(endpoint: SFTPEndpoint) -> Session:
    """Open an SFTP session, accepting only a pinned host key."""
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(_RefuseUnknownHostKey(endpoint))
    host_keys = client.get_host_keys()
    for key in endpoint.host_keys:
        host_keys.add(endpoint.known_hosts_name, key.get_name(), key)
    try:
        client.connect(endpoint.host, port=endpoint.port, username=endpoint.username, password=endpoint.password,
                       pkey=endpoint.pkey, look_for_keys=False, allow_agent=False, timeout=endpoint.timeout,
                       banner_timeout=endpoint.timeout, auth_timeout=endpoint.timeout,
                       channel_timeout=endpoint.timeout)
        transport = client.get_transport()
        assert transport is not None
        host_key = transport.get_remote_server_key()
        sftp = client.open_sftp()
        sftp.get_channel().settimeout(max(endpoint.timeout, 60.0))
    except HostKeyRejected:
        client.close()
        raise
    except paramiko.BadHostKeyException as exc:
        client.close()
        raise HostKeyRejected(
            f"SFTP server {endpoint.address} ({endpoint.conn_id}) offered host key {exc.key.get_name()} "
            f"{key_fingerprint(exc.key)}, not the pinned {key_fingerprint(exc.expected_key)}: the key changed or "
            "someone is in between; nothing was sent. Fix: verify the server's key with its operator before "
            "changing the pin") from None
    except paramiko.AuthenticationException:
        client.close()
        raise AuthenticationFailed(f"SFTP server {endpoint.address} refused the credentials of connection "
                                   f"{endpoint.conn_id!r} for user {endpoint.username!r}. Fix: check the key "
                                   "or password and that the server lists our public key") from None
    except (OSError, EOFError, paramiko.SSHException) as exc:
        client.close()
        raise _Transient(f"cannot connect to {endpoint.address}: {_describe(exc)}") from None
    return Session(client=client, sftp=sftp, host_key=host_key)


def _describe(exc: BaseException) -> str:
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    text = re.sub(r"\s+", " ", text)[:160]
    return f"{value_free(exc)}: {text}" if text else value_free(exc)


# ---- the upload -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    base_delay: float = 2.0
    max_delay: float = 60.0
    sleep: Callable[[float], None] = time.sleep

    def delay(self, attempt: int) -> float:
        value = min(self.max_delay, self.base_delay * (2.0 ** (attempt - 1)))
        return value * (0.5 + random.random() / 2)  # noqa: S311 - jitter, not security


@dataclass(frozen=True)
class SFTPReceipt:
    path: str
    sha256: str
    bytes: int
    already_delivered: bool
    host_key: str
    attempts: int
    verified_by: str


def remote_folder(root: str, segments: list[str]) -> str:
    for part in segments:
        safe_segment(part, "delivery.path")
    return posixpath.join(root, *segments) if segments else root


def deliver_sftp(package: Path, *, endpoint: SFTPEndpoint, segments: list[str], expected_sha256: str,
                 policy: RetryPolicy | None = None, connector: Connect = connect,
                 progress: Progress | None = None,
                 log: Callable[[str], None] | None = None) -> SFTPReceipt:
    """Upload ``package`` into ``root/segments`` atomically and exactly once (see the module doc)."""
    safe_segment(package.name, "package name")
    for part in segments:
        safe_segment(part, "delivery.path")
    policy = policy or RetryPolicy()
    size = package.stat().st_size
    last = ""
    for attempt in range(1, policy.attempts + 1):
        try:
            return _attempt(package, size, endpoint, segments, expected_sha256, connector, progress, attempt)
        except _Transient as exc:
            last = exc.reason
            if attempt == policy.attempts:
                break
            delay = policy.delay(attempt)
            if log:
                log(f"SFTP attempt {attempt} of {policy.attempts} to {endpoint.address} failed ({exc.reason}); "
                    f"retrying in {delay:.1f}s")
            policy.sleep(delay)
    raise TransportUnavailable(f"SFTP delivery to {endpoint.address} ({endpoint.conn_id}) failed {policy.attempts} "
                               f"times; last: {last}. Nothing is at the final name")


def _attempt(package: Path, size: int, endpoint: SFTPEndpoint, segments: list[str], expected: str,
             connector: Connect, progress: Progress | None, attempt: int) -> SFTPReceipt:
    session = connector(endpoint)
    tmp: str | None = None
    try:
        sftp = session.sftp
        folder = _folder(session, endpoint, segments)
        final = f"{folder}/{package.name}"
        fingerprint = key_fingerprint(session.host_key)
        existing = _existing(session, final, expected, size)
        if existing is not None:
            return SFTPReceipt(path=final, sha256=expected, bytes=existing, already_delivered=True,
                               host_key=fingerprint, attempts=attempt, verified_by="sha256 read back")
        _remove_stale(session, folder, package.name)
        tmp = f"{folder}/.{package.name}{PARTIAL}{secrets.token_hex(6)}"
        _upload(session, package, tmp, progress)
        verified_by = _verify_remote(session, tmp, expected, size)
        try:
            sftp.rename(tmp, final)  # SSH_FXP_RENAME: fails if ``final`` exists; never posix-rename
        except OSError as exc:
            raced = _existing(session, final, expected, size)
            if raced is not None:
                return SFTPReceipt(path=final, sha256=expected, bytes=raced, already_delivered=True,
                                   host_key=fingerprint, attempts=attempt, verified_by="sha256 read back")
            _raise_remote(session, exc, f"renaming the upload to {final}")
        tmp = None
        st = _stat(session, final, "checking the delivered package")
        if st is None or st.st_size != size:
            raise _Transient("the package is not at its final name after the rename")
        return SFTPReceipt(path=final, sha256=expected, bytes=size, already_delivered=False,
                           host_key=fingerprint, attempts=attempt, verified_by=verified_by)
    finally:
        if tmp is not None and session.alive:
            with contextlib.suppress(Exception):  # best effort; the next attempt removes stale partials
                session.sftp.remove(tmp)
        session.close()


def _folder(session: Session, endpoint: SFTPEndpoint, segments: list[str]) -> str:
    sftp = session.sftp
    try:
        root = endpoint.root or sftp.normalize(".")
        root_real = sftp.normalize(root)
    except OSError as exc:
        _raise_remote(session, exc, f"resolving the remote root {endpoint.root or '.'}", missing=RemotePathError(
            f"remote root {endpoint.root} does not exist on {endpoint.address}. Fix: correct extra root of "
            f"connection {endpoint.conn_id!r}"))
    target = remote_folder(root, segments)
    st = _stat(session, target, f"checking the delivery folder {target}")
    if st is None:
        raise RemotePathError(f"delivery folder {target} does not exist on {endpoint.address}; nothing was sent. "
                              "Fix: ask the server's operator to create it, or correct delivery.path")
    if not stat.S_ISDIR(st.st_mode or 0):
        raise RemotePathError(f"delivery path {target} on {endpoint.address} is not a folder")
    try:
        real: str = sftp.normalize(target)
    except OSError as exc:
        _raise_remote(session, exc, f"resolving {target}")
    if real != root_real and not real.startswith(root_real.rstrip("/") + "/"):
        raise RemotePathError(f"delivery folder {target} resolves outside the root {root_real} on "
                              f"{endpoint.address} (a symbolic link?); refusing to deliver there")
    return real


def _stat(session: Session, path: str, doing: str) -> paramiko.SFTPAttributes | None:
    try:
        return session.sftp.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        _raise_remote(session, exc, doing)


def _existing(session: Session, final: str, expected: str, size: int) -> int | None:
    """Size of an identical package already at ``final``; None if absent; refuse a different one."""
    st = _stat(session, final, f"checking {final}")
    if st is None:
        return None
    if st.st_size == size and _remote_sha256(session, final) == expected:
        return size
    raise PackageConflict(f"{final} already exists on the server with different content; refusing to overwrite "
                          "it or send a second copy. Fix: find out where that file came from; the delivery "
                          "needs a new delivery id")


def _remove_stale(session: Session, folder: str, name: str) -> int:
    """Remove our ``.<name>.partial-*`` files in ``folder``; return how many there were."""
    prefix = f".{name}{PARTIAL}"
    try:
        stale = [n for n in session.sftp.listdir(folder) if n.startswith(prefix)]
    except OSError as exc:
        _raise_remote(session, exc, f"listing {folder}")
    for entry in stale:
        try:
            session.sftp.remove(f"{folder}/{entry}")
        except FileNotFoundError:
            pass
        except OSError as exc:
            _raise_remote(session, exc, f"removing a stale partial upload in {folder}")
    return len(stale)


def _upload(session: Session, package: Path, tmp: str, progress: Progress | None) -> None:
    sent = 0
    out = None
    try:
        with package.open("rb") as src:
            out = session.sftp.open(tmp, "wbx", bufsize=REMOTE_CHUNK)
            out.set_pipelined(True)
            while chunk := src.read(REMOTE_CHUNK):
                out.write(chunk)
                sent += len(chunk)
                if progress is not None:
                    progress(session, sent)
            out.close()
    except (OSError, EOFError, paramiko.SSHException) as exc:
        if out is not None:
            out._closed = True  # the handle goes with the session; do not let the GC try to close it again
        _raise_remote(session, exc, f"writing {tmp}", write=True)


def _verify_remote(session: Session, tmp: str, expected: str, size: int) -> str:
    st = _stat(session, tmp, f"checking {tmp}")
    if st is None or st.st_size != size:
        got = st.st_size if st else "no"
        if session.alive:
            # Pipelined write errors are not reported back by paramiko; a short file on a live
            # connection means the server failed to store what it was sent.
            raise RemoteWriteFailed(f"the SFTP server stored {got} of {size} bytes of the upload: disk full, quota "
                                    "or file size limit? The partial upload was removed; nothing is at the final "
                                    "name")
        raise _Transient(f"the uploaded file has {got} bytes, expected {size}")
    try:
        with session.sftp.open(tmp, "rb") as fh:
            digest = fh.check("sha256", 0, 0, 0).hex()
        by = "server check-file sha256"
    except OSError:
        if not session.alive:
            raise _Transient("connection lost while verifying the upload") from None
        digest = _remote_sha256(session, tmp)
        by = "sha256 read back"
    if digest != expected:
        raise _Transient("the uploaded file's sha256 differs from the package (corrupted in transit)")
    return by


def _remote_sha256(session: Session, path: str) -> str:
    digest = hashlib.sha256()
    try:
        with session.sftp.open(path, "rb", bufsize=REMOTE_CHUNK) as fh:
            fh.prefetch()
            while chunk := fh.read(CHUNK):
                digest.update(chunk)
    except (OSError, EOFError, paramiko.SSHException) as exc:
        _raise_remote(session, exc, f"reading back {path}")
    return digest.hexdigest()


def _raise_remote(session: Session, exc: BaseException, doing: str, *, write: bool = False,
                  missing: DeliveryError | None = None) -> NoReturn:
    """Classify a failure: a dead connection is transient; an SFTP status from a live server is terminal."""
    if not session.alive or isinstance(exc, (EOFError, socket.timeout, TimeoutError, ConnectionError)) \
            or (isinstance(exc, paramiko.SSHException) and not isinstance(exc, paramiko.SFTPError)):
        raise _Transient(f"connection lost while {doing}: {_describe(exc)}") from None
    if isinstance(exc, PermissionError) or getattr(exc, "errno", None) == errno.EACCES:
        raise RemotePermissionDenied(f"the SFTP server refused {doing} (permission denied). Fix: give the "
                                     "connection's user write access to the delivery folder") from None
    if isinstance(exc, FileNotFoundError):
        raise (missing or RemotePathError(f"not found while {doing}")) from None
    if write:
        raise RemoteWriteFailed(f"the SFTP server failed while {doing} ({_describe(exc)}): disk full, quota or "
                                "file size limit? The partial upload was removed; nothing is at the final "
                                "name") from None
    raise TransportError(f"the SFTP server failed while {doing}: {_describe(exc)}") from None




# ---- reconciliation (pipeline.recovery) ------------------------------------------------------------


@dataclass(frozen=True)
class RemoteState:
    """What is at a package's destination: the final path, the sha256 of a file there (None: nothing), and
    how many of our ``.<name>.partial-*`` leftovers were removed."""

    path: str
    sha256: str | None
    partials_removed: int


def inspect_destination(endpoint: SFTPEndpoint, segments: list[str], name: str, *,
                        remove_partials: bool = True, connector: Connect = connect) -> RemoteState:
    """Look at a package's final name and remove its partial uploads (after a killed or abandoned delivery)."""
    safe_segment(name, "package name")
    try:
        session = connector(endpoint)
    except _Transient as exc:
        raise TransportUnavailable(f"SFTP server {endpoint.address} ({endpoint.conn_id}) is unreachable: "
                                   f"{exc.reason}") from None
    try:
        try:
            folder = _folder(session, endpoint, segments)
            final = f"{folder}/{name}"
            st = _stat(session, final, f"checking {final}")
            sha = _remote_sha256(session, final) if st is not None else None
            removed = _remove_stale(session, folder, name) if remove_partials else 0
        except _Transient as exc:
            raise TransportUnavailable(f"SFTP server {endpoint.address} ({endpoint.conn_id}): {exc.reason}") from None
        return RemoteState(path=final, sha256=sha, partials_removed=removed)
    finally:
        session.close()
