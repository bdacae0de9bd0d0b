"""The process handling of deploy/celery-local.sh, without Airflow: launch, liveness and stop by recorded id."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import REPO

SCRIPT = REPO / "deploy" / "celery-local.sh"


def _bash(body: str, state: Path) -> subprocess.CompletedProcess[str]:
    script = f'set -euo pipefail\nsource "{SCRIPT}"\nPIDS="{state}/pids"; LOGS="{state}/logs"\n' \
             f'mkdir -p "$PIDS" "$LOGS"\n{body}'
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120, check=False,
                          env={"PATH": "/usr/bin:/bin", "CONTRACT_EXTRACTS_HOME": str(state)})


def test_a_component_counts_as_alive_from_the_moment_it_is_launched(tmp_path: Path) -> None:
    # Right after `setsid cmd &` the child may not have made its own group yet; the start-up check once took
    # that moment for a crash (CI). Check at once (no forking `$(cat ...)` to give the child time), many times.
    result = _bash('''
missed=0
for i in $(seq 1 200); do
  launch a sleep 2
  read -r pid <"$PIDS/a.pid"
  alive "$pid" || missed=$((missed + 1))
  kill -KILL "$pid" 2>/dev/null || true
done
echo "missed=$missed"
''', tmp_path)
    assert result.returncode == 0, result.stderr
    assert "missed=0" in result.stdout


def test_a_dead_component_is_reported_with_the_end_of_its_log_but_not_its_passwords(tmp_path: Path) -> None:
    result = _bash('''
launch api-server bash -c 'echo "bind failed: address already in use"; echo "Password for user admin: s3cret"; exit 1'
sleep 1
alive "$(cat "$PIDS/api-server.pid")" || exited api-server
''', tmp_path)
    assert result.returncode == 1
    assert "address already in use" in result.stderr
    assert "api-server exited during start-up" in result.stderr
    assert "s3cret" not in result.stderr


def test_stop_ends_every_launched_group_and_removes_the_pid_files(tmp_path: Path) -> None:
    result = _bash('''
launch worker bash -c 'sleep 60 & sleep 60'
launch server sleep 60
sleep 0.5
groups="$(cat "$PIDS"/*.pid)"
stop
for g in $groups; do kill -0 -- "-$g" 2>/dev/null && echo "alive: $g"; done
ls "$PIDS"
''', tmp_path)
    assert result.returncode == 0, result.stderr
    assert "celery-local: stopped" in result.stdout
    assert "alive:" not in result.stdout
