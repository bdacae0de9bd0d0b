"""The SFTP transport against a real OpenSSH server: pinning, atomic upload, retries, refusals, paths."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from airflow_glue.transports import airflow_sftp_endpoint
from core.errors import ConfigError
from delivery.sftp import (
    AuthenticationFailed,
    HostKeyRejected,
    PackageConflict,
    RemotePathError,
    RemotePermissionDenied,
    RemoteWriteFailed,
    RetryPolicy,
    TransportUnavailable,
    connect,
    deliver_sftp,
    env_sftp_endpoint,
    key_fingerprint,
)

from .conftest import SSHServer, _keygen

NAME = "C-DEMO-001_20261125T020000Z-1a2b3c4d.tar.age"
REPO = Path(__file__).resolve().parents[2]


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def no_wait(attempts: int = 4) -> RetryPolicy:
    return RetryPolicy(attempts=attempts, base_delay=0.01, max_delay=0.05, sleep=Sleeps())


def endpoint(server: SSHServer, **overrides):
    return env_sftp_endpoint("acme_sftp", {"AIRFLOW_CONN_ACME_SFTP": server.connection_json(**overrides)})


def make_package(tmp_path: Path, size: int = 4_000_000, name: str = NAME) -> tuple[Path, str]:
    folder = tmp_path / "staging"
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_bytes(b"age-encryption.org/v1\n" + os.urandom(size))
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def remote_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.fixture
def inbound(sshd: SSHServer) -> Path:
    folder = sshd.root / "inbound"
    folder.mkdir()
    return folder


def test_round_trip_and_exactly_once(sshd: SSHServer, inbound: Path, tmp_path: Path) -> None:
    package, sha = make_package(tmp_path)
    first = deliver_sftp(package, endpoint=endpoint(sshd), segments=["inbound"], expected_sha256=sha)
    assert (first.already_delivered, first.attempts, first.bytes) == (False, 1, package.stat().st_size)
    assert first.path == f"{inbound.resolve()}/{NAME}"
    assert first.host_key.startswith("SHA256:") and first.verified_by == "sha256 read back"
    assert (inbound / NAME).read_bytes() == package.read_bytes()
    assert remote_files(inbound) == [NAME]
    second = deliver_sftp(package, endpoint=endpoint(sshd), segments=["inbound"], expected_sha256=sha)
    assert second.already_delivered is True
    assert remote_files(inbound) == [NAME]


def test_host_key_matches_ssh_keygen_fingerprint(sshd: SSHServer, inbound: Path) -> None:
    session = connect(endpoint(sshd))
    try:
        printed = subprocess.run(["ssh-keygen", "-lf", str(sshd.host_key_file) + ".pub"], capture_output=True,
                                 text=True, check=True).stdout.split()[1]

        assert key_fingerprint(session.host_key) == printed
    finally:
        session.close()


def test_changed_host_key_is_refused(sshd: SSHServer, inbound: Path, tmp_path: Path) -> None:
    other = _keygen(tmp_path / "other_host_key")
    package, sha = make_package(tmp_path)
    started = time.monotonic()
    with pytest.raises(HostKeyRejected, match=r"not the pinned|not pinned") as info:
        deliver_sftp(package, endpoint=endpoint(sshd, host_key=other), segments=["inbound"], expected_sha256=sha,
                     policy=no_wait())
    assert time.monotonic() - started < 10, "a host key failure is terminal: no retries"
    assert "nothing was sent" in str(info.value)
    assert remote_files(inbound) == []


def test_unpinned_or_unchecked_host_keys_are_refused(sshd: SSHServer) -> None:
    with pytest.raises(ConfigError, match="pins no host key"):
        endpoint(sshd, host_key=None)
    for flag in ("no_host_key_check", "allow_host_key_change"):
        with pytest.raises(ConfigError, match="host key checking off"):
            endpoint(sshd, **{flag: "true"})


def test_known_hosts_file_under_the_config_folder_pins_the_key(sshd: SSHServer, inbound: Path,
                                                               tmp_path: Path) -> None:
    config = tmp_path / "configs"
    (config / "known_hosts").mkdir(parents=True)
    (config / "known_hosts" / "acme").write_text(f"[127.0.0.1]:{sshd.port} {sshd.host_key_line}\n")
    env = {"AIRFLOW_CONN_ACME_SFTP": sshd.connection_json(host_key=None, known_hosts="known_hosts/acme")}
    ep = env_sftp_endpoint("acme_sftp", env, config_dir=config)
    package, sha = make_package(tmp_path, 1000)
    assert deliver_sftp(package, endpoint=ep, segments=["inbound"], expected_sha256=sha).already_delivered is False
    # A known_hosts file without this server, or outside the config folder, is refused.
    (config / "known_hosts" / "other").write_text(f"example.org {sshd.host_key_line}\n")
    with pytest.raises(ConfigError, match="has no entry"):
        env_sftp_endpoint("acme_sftp", {"AIRFLOW_CONN_ACME_SFTP": sshd.connection_json(
            host_key=None, known_hosts="known_hosts/other")}, config_dir=config)
    with pytest.raises(ConfigError):
        env_sftp_endpoint("acme_sftp", {"AIRFLOW_CONN_ACME_SFTP": sshd.connection_json(
            host_key=None, known_hosts="../elsewhere")}, config_dir=config)


def test_wrong_credentials_fail_fast(sshd: SSHServer, inbound: Path, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger"
    _keygen(stranger)
    package, sha = make_package(tmp_path, 1000)
    started = time.monotonic()
    with pytest.raises(AuthenticationFailed, match="refused the credentials"):
        deliver_sftp(package, endpoint=endpoint(sshd, key_file=str(stranger)), segments=["inbound"],
                     expected_sha256=sha, policy=no_wait())
    assert time.monotonic() - started < 10
    with pytest.raises(AuthenticationFailed):
        deliver_sftp(package, endpoint=endpoint(sshd, login="nobody"), segments=["inbound"], expected_sha256=sha,
                     policy=no_wait())
    assert remote_files(inbound) == []


def test_missing_remote_folder_is_terminal(sshd: SSHServer, tmp_path: Path) -> None:
    package, sha = make_package(tmp_path, 1000)
    policy = no_wait()
    with pytest.raises(RemotePathError, match="does not exist"):
        deliver_sftp(package, endpoint=endpoint(sshd), segments=["inbound"], expected_sha256=sha, policy=policy)
    assert policy.sleep == []
    assert not (sshd.root / "inbound").exists(), "the transport never creates the contractor's folders"


def test_read_only_server_is_refused_and_nothing_is_left(sshd_factory, tmp_path: Path) -> None:
    server = sshd_factory("ro", sftp_flags="-R")
    (server.root / "inbound").mkdir()
    package, sha = make_package(tmp_path, 1000)
    with pytest.raises(RemotePermissionDenied, match="permission denied"):
        deliver_sftp(package, endpoint=endpoint(server), segments=["inbound"], expected_sha256=sha,
                     policy=no_wait())
    assert remote_files(server.root / "inbound") == []


def test_full_disk_is_refused_and_the_partial_upload_removed(sshd_factory, tmp_path: Path) -> None:
    # The server process may write at most 1 MB per file (RLIMIT_FSIZE): writes past it fail with EFBIG,
    # which the SFTP server reports like a full disk.
    server = sshd_factory("full", file_size_limit=1_000_000)
    (server.root / "inbound").mkdir()
    package, sha = make_package(tmp_path, 3_000_000)
    with pytest.raises(RemoteWriteFailed, match="disk full"):
        deliver_sftp(package, endpoint=endpoint(server), segments=["inbound"], expected_sha256=sha,
                     policy=no_wait())
    assert remote_files(server.root / "inbound") == []


def test_different_file_at_the_final_name_is_never_overwritten(sshd: SSHServer, inbound: Path,
                                                               tmp_path: Path) -> None:
    (inbound / NAME).write_bytes(b"someone else's file")
    package, sha = make_package(tmp_path, 1000)
    with pytest.raises(PackageConflict, match="refusing to overwrite"):
        deliver_sftp(package, endpoint=endpoint(sshd), segments=["inbound"], expected_sha256=sha, policy=no_wait())
    assert (inbound / NAME).read_bytes() == b"someone else's file"
    assert remote_files(inbound) == [NAME]


def test_server_down_is_retried_with_backoff_then_reported(sshd: SSHServer, tmp_path: Path) -> None:
    ep = endpoint(sshd)
    sshd.stop()
    package, sha = make_package(tmp_path, 1000)
    sleeps = Sleeps()
    policy = RetryPolicy(attempts=4, base_delay=1.0, max_delay=3.0, sleep=sleeps)
    with pytest.raises(TransportUnavailable, match="failed 4 times") as info:
        deliver_sftp(package, endpoint=ep, segments=["inbound"], expected_sha256=sha, policy=policy)
    assert "Unable to connect" in str(info.value)
    assert len(sleeps) == 3
    assert 0.5 <= sleeps[0] <= 1.0 and 1.0 <= sleeps[1] <= 2.0 and 1.5 <= sleeps[2] <= 3.0


def test_dropped_connection_mid_upload_is_retried(sshd: SSHServer, inbound: Path, tmp_path: Path) -> None:
    package, sha = make_package(tmp_path, 6_000_000)
    dropped: list[int] = []
    seen_partial: list[list[str]] = []

    def drop_once(session, sent: int) -> None:
        if not dropped and sent >= 2_000_000:
            dropped.append(sent)
            seen_partial.append(remote_files(inbound))
            session.client.get_transport().sock.close()  # the network goes away mid-write

    receipt = deliver_sftp(package, endpoint=endpoint(sshd), segments=["inbound"], expected_sha256=sha,
                           policy=no_wait(), progress=drop_once)
    assert dropped and receipt.attempts == 2 and receipt.already_delivered is False
    assert NAME not in seen_partial[0] and any(".partial-" in n for n in seen_partial[0])
    assert remote_files(inbound) == [NAME], "the dead attempt's partial file is cleaned up"
    assert hashlib.sha256((inbound / NAME).read_bytes()).hexdigest() == sha


KILLER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from delivery.sftp import deliver_sftp, env_sftp_endpoint
    package, sha, limit = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    def kill(session, sent):
        if sent >= limit:
            os.kill(os.getpid(), signal.SIGKILL)
    deliver_sftp(package, endpoint=env_sftp_endpoint("acme_sftp"), segments=["inbound"], expected_sha256=sha,
                 progress=kill)
""")


def test_killed_upload_leaves_no_partial_file_at_the_final_name(sshd: SSHServer, inbound: Path,
                                                                tmp_path: Path) -> None:
    package, sha = make_package(tmp_path, 6_000_000)
    env = {**os.environ, "AIRFLOW_CONN_ACME_SFTP": sshd.connection_json()}
    for limit in (1, 3_000_000):  # killed right after opening the temporary file, and half-way
        proc = subprocess.run([sys.executable, "-c", KILLER, str(package), sha, str(limit)], env=env,
                              capture_output=True, timeout=120)
        assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
        assert NAME not in remote_files(inbound)
    time.sleep(0.2)
    # The retry (a new process, a re-run task) completes, removes the stale partial, and sends one copy.
    receipt = deliver_sftp(package, endpoint=endpoint(sshd), segments=["inbound"], expected_sha256=sha)
    assert receipt.already_delivered is False
    assert remote_files(inbound) == [NAME]
    assert hashlib.sha256((inbound / NAME).read_bytes()).hexdigest() == sha


@pytest.mark.parametrize("segments", [[".."], ["inbound", ".."], ["/etc"], ["a b"], [".hidden"], ["in\nbound"]])
def test_odd_segments_are_refused(sshd: SSHServer, inbound: Path, tmp_path: Path, segments: list[str]) -> None:
    package, sha = make_package(tmp_path, 1000)
    with pytest.raises(ConfigError):
        deliver_sftp(package, endpoint=endpoint(sshd), segments=segments, expected_sha256=sha)
    assert [p for p in sshd.root.parent.rglob(NAME)] == []


def test_symlink_out_of_the_root_is_refused(sshd: SSHServer, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (sshd.root / "inbound").symlink_to(outside)
    package, sha = make_package(tmp_path, 1000)
    with pytest.raises(RemotePathError, match="outside the root"):
        deliver_sftp(package, endpoint=endpoint(sshd), segments=["inbound"], expected_sha256=sha)
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("root", ["relative/path", "/srv/../etc", "/srv/./x"])
def test_odd_roots_are_refused(sshd: SSHServer, root: str) -> None:
    with pytest.raises(ConfigError, match="root"):
        endpoint(sshd, root=root)


def test_connection_extras_cannot_add_recipients(sshd: SSHServer) -> None:
    for extra in ({"recipients": ["age1…"]}, {"extra_recipient": "age1…"}, {"age": "age1…"}):
        with pytest.raises(ConfigError, match="recipients come from the contract only"):
            endpoint(sshd, **extra)


def test_uri_form_and_password_are_read(sshd: SSHServer) -> None:
    extra = json.dumps({"host_key": sshd.host_key_line, "root": str(sshd.root)})
    uri = f"sftp://user:p%40ss@127.0.0.1:{sshd.port}/?__extra__={quote(extra)}"
    ep = env_sftp_endpoint("acme_sftp", {"AIRFLOW_CONN_ACME_SFTP": uri})
    assert (ep.username, ep.password, ep.port, ep.root) == ("user", "p@ss", sshd.port, str(sshd.root))
    assert "p@ss" not in repr(ep)
    with pytest.raises(ConfigError, match="is not defined"):
        env_sftp_endpoint("acme_sftp", {})


def test_airflow_resolver_reads_the_same_connection(sshd: SSHServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_ACME_SFTP", sshd.connection_json())
    ours, theirs = endpoint(sshd), airflow_sftp_endpoint("acme_sftp")
    assert (theirs.host, theirs.port, theirs.username, theirs.root) == (ours.host, ours.port, ours.username, ours.root)
    assert [k.asbytes() for k in theirs.host_keys] == [k.asbytes() for k in ours.host_keys]
    session = connect(theirs)
    session.close()
    monkeypatch.setenv("AIRFLOW_CONN_ACME_SFTP", sshd.connection_json(no_host_key_check="true", host_key=None))
    with pytest.raises(ConfigError, match="host key checking off"):
        airflow_sftp_endpoint("acme_sftp")
