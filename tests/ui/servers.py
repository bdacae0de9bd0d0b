"""Start and stop Airflow processes (servers, background DAG runs) for end-to-end tests, always cleaning up.

Each server runs in its own session (process group), so stopping it reaches every child it forked
(gunicorn/uvicorn workers, executors, Celery pool processes) by that group's id, and nothing else.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(*, also: tuple[int, ...] = ()) -> int:
    """A free port on 127.0.0.1 below the kernel's ephemeral range, with ``port + offset`` free for each offset.

    A port taken from the ephemeral range (``bind(0)``) can be handed to an outgoing connection (the many
    connections `airflow db migrate` opens) before the server binds it; below that range only listeners compete.
    """
    low, _ = _ephemeral_range()
    top = max(low - 1 - max(also, default=0), 10_001)
    for _ in range(200):
        port = random.randint(10_000, top)
        if all(_bindable(port + offset) for offset in (0, *also)):
            return port
    raise RuntimeError("no free port pair below the ephemeral port range")


def start(cmd: list[str], env: dict[str, str], log_file: Path) -> subprocess.Popen[bytes]:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log:
        # SIGINT is reset to default in the child (a background job would otherwise ignore it).
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop(proc: subprocess.Popen[bytes], *, grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL, to the process group this test started (by its id only).

    Every Airflow component shuts down cleanly on SIGTERM; `airflow standalone`'s parent waits forever
    after SIGINT once its children are gone, so SIGINT is not used.
    """
    pgid = proc.pid  # start_new_session: the child leads its own group
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None and not _group_alive(pgid):
            break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            proc.poll()
            if proc.returncode is not None and not _group_alive(pgid):
                break
            time.sleep(0.2)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def wait_http(url: str, *, timeout: float, procs: list[subprocess.Popen], log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
                raise RuntimeError(f"{p.args} exited with {p.returncode} while waiting for {url}\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise TimeoutError(f"{url} not ready after {timeout:.0f}s\n{tail}")


def http(method: str, url: str, *, token: str | None = None, body: dict | None = None,
         timeout: float = 30) -> tuple[int, dict | str]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read().decode(errors="replace")
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw


def token(base: str, username: str, password: str) -> str:
    status, body = http("POST", f"{base}/auth/token", body={"username": username, "password": password})
    assert status in (200, 201), (status, body)
    return body["access_token"]
