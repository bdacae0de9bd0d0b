"""``make ui``: Airflow (``airflow standalone``) on the demo state, to look at it in a browser.

Runs on the state folder ``make demo`` left (``$CONTRACT_EXTRACTS_HOME``, default ``.state``): its Airflow
metadata, keys, demo contracts, SQLite source and audit ledger, with this checkout's DAGs and the "Contract
deliveries" plugin. The UI listens on 127.0.0.1 only (``AIRFLOW_UI_PORT``, default 8080); one local user,
``admin``, whose generated password is kept in ``<state>/airflow/ui-passwords.json`` (0600) and printed. Ctrl-C
stops every component. Local viewing only: production runs the components separately (docs/deploy.md).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sys
from pathlib import Path

from core.settings import load_settings
from demo.runner import airflow_environment, repo_root

PORT_ENV = "AIRFLOW_UI_PORT"
USER = "admin"


def _port() -> int:
    value = os.environ.get(PORT_ENV) or "8080"
    if not value.isdigit() or not 1024 <= int(value) <= 65535:
        raise SystemExit(f"{PORT_ENV}={value!r} is not a port number from 1024 to 65535")
    port = int(value)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise SystemExit(f"port {port} on 127.0.0.1 is in use; choose another: make ui {PORT_ENV}=8081") from None
    return port


def password_file(airflow_home: Path) -> Path:
    """The local user's password file (made once, 0600), in the format Airflow's simple auth manager reads."""
    path = airflow_home / "ui-passwords.json"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump({USER: secrets.token_urlsafe(12)}, handle)
    return path


def ui_environment(home: Path, port: int) -> dict[str, str]:
    """The environment ``airflow standalone`` runs with: the demo's, plus plugins, API address and login."""
    root = repo_root()
    keys = {"master": home / "keys" / "master.key", "signing": home / "keys" / "sender-signing.key"}
    env = airflow_environment(home=home, dags_dir=root / "dags", config_dir=home / "demo" / "configs", keys=keys,
                              connections={"demo_claims": f"sqlite:///{home / 'demo' / 'claims.sqlite'}"})
    base = f"http://127.0.0.1:{port}"
    env.update({
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(root / "plugins"),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": base,
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(password_file(home / "airflow")),
    })
    return env


def main() -> int:
    home = load_settings().home
    missing = [p for p in (home / "airflow" / ".migrated", home / "demo" / "configs" / "contracts",
                           home / "demo" / "claims.sqlite") if not p.exists()]
    if missing:
        print(f"no demo state in {home} (missing {missing[0]}): run `make demo` first", file=sys.stderr)
        return 1
    port = _port()
    env = ui_environment(home, port)
    password = json.loads(Path(env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]).read_text())[USER]
    print(f"Airflow on the demo state {home}\n"
          f"  open http://127.0.0.1:{port}/ and sign in as {USER} / {password}\n"
          f"  (password kept in {env['AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE']})\n"
          f"  Browse > Contract deliveries: contracts, deliveries, blocked and skipped runs, the audit ledger\n"
          f"  Ctrl-C stops it", flush=True)
    # This process becomes `airflow standalone` (Ctrl-C then reaches it, and it stops every component it started).
    airflow = str(Path(sys.executable).parent / "airflow")
    os.execve(airflow, [airflow, "standalone"], env)  # noqa: S606 - a fixed argument list, no shell


if __name__ == "__main__":
    sys.exit(main())
