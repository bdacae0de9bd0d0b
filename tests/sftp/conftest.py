"""A real OpenSSH server for the SFTP tests: /usr/sbin/sshd on a random loopback port.

Every server gets a fresh temporary host key, an authorized_keys file holding a fresh client key,
``Subsystem sftp internal-sftp`` (optionally with flags, e.g. ``-R`` for a read-only server), no PAM, no
StrictModes, no chroot, and a remote root folder under ``tmp_path``. It runs as the current user (root
here, with key-only login allowed). The fixture stops it after the test.
"""

from __future__ import annotations

import getpass
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.ui.servers import free_port

SSHD = "/usr/sbin/sshd"


@dataclass
class SSHServer:
    port: int
    host_key_line: str          # "ssh-ed25519 AAAA…" (no host name): the pin
    host_key_file: Path
    client_key: Path            # private key the server accepts
    root: Path                  # remote delivery root (an ordinary folder on this machine)
    user: str
    log: Path
    proc: subprocess.Popen = field(repr=False)

    def extra(self, **overrides) -> dict:
        extra = {"host_key": self.host_key_line, "key_file": str(self.client_key), "root": str(self.root),
                 "conn_timeout": 10}
        extra.update(overrides)
        return {k: v for k, v in extra.items() if v is not None}

    def connection_json(self, **overrides) -> str:
        login = overrides.pop("login", self.user)
        return json.dumps({"conn_type": "sftp", "host": "127.0.0.1", "port": self.port, "login": login,
                           "extra": self.extra(**overrides)})

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def _keygen(path: Path, kind: str = "ed25519") -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "", "-f", str(path)], check=True,
                   timeout=60)
    parts = path.with_suffix(".pub").read_text().split()
    return f"{parts[0]} {parts[1]}"


def start_sshd(folder: Path, *, sftp_flags: str = "", file_size_limit: int | None = None) -> SSHServer:
    if not Path(SSHD).exists():
        pytest.fail("OpenSSH server is not installed: apt-get install openssh-server", pytrace=False)
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    host_key = folder / "ssh_host_ed25519_key"
    host_key_line = _keygen(host_key)
    client_key = folder / "client_ed25519"
    (folder / "authorized_keys").write_text(_keygen(client_key) + "\n")
    root = folder / "remote"
    root.mkdir(exist_ok=True)
    log = folder / "sshd.log"
    user = getpass.getuser()

    def limits() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # over the limit, write() fails with EFBIG
        if file_size_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    for _ in range(5):
        port = free_port()
        config = folder / "sshd_config"
        config.write_text("\n".join([
            f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {host_key}", f"PidFile {folder / 'sshd.pid'}",
            f"AuthorizedKeysFile {folder / 'authorized_keys'}", "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "UsePAM no", "StrictModes no", f"AllowUsers {user}", f"Subsystem sftp internal-sftp {sftp_flags}",
            "AllowTcpForwarding no", "X11Forwarding no", "PermitTTY no", "MaxStartups 50", "LogLevel VERBOSE",
            "",
        ]))
        with log.open("ab") as out:
            proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=out, stderr=subprocess.STDOUT,
                                    preexec_fn=limits)  # for the rlimit
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                    if s.recv(4).startswith(b"SSH-"):
                        return SSHServer(port=port, host_key_line=host_key_line, host_key_file=host_key,
                                         client_key=client_key, root=root, user=user, log=log, proc=proc)
            except OSError:
                time.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
    pytest.fail(f"sshd did not start; see {log}:\n{log.read_text()[-2000:]}", pytrace=False)


@pytest.fixture
def sshd_factory(tmp_path: Path) -> Iterator[Callable[..., SSHServer]]:
    servers: list[SSHServer] = []

    def make(name: str = "sshd", **kwargs) -> SSHServer:
        server = start_sshd(tmp_path / name, **kwargs)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def sshd(sshd_factory) -> SSHServer:
    return sshd_factory()


def pytest_configure(config: pytest.Config) -> None:  # pragma: no cover - environment check only
    if shutil.which("ssh-keygen") is None:
        raise pytest.UsageError("ssh-keygen is needed for the SFTP tests (apt-get install openssh-client)")
