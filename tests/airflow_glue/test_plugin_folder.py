"""Airflow's plugin loader imports every .py file below plugins/ as a top-level module named after the file.

Without plugins/.airflowignore that would put airflow_glue/secrets.py in place of Python's `secrets` (Celery
workloads then fail with "module 'secrets' has no attribute 'token_hex'") and airflow_glue/audit.py in place of
our `audit` package, in every Airflow process. Only the plugin file itself may be loaded from the folder.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO

_LOAD = """
import json, sys
from airflow._shared.plugins_manager.plugins_manager import _load_plugins_from_plugin_directory
import secrets as stdlib_secrets
import audit as our_audit
plugins, errors = _load_plugins_from_plugin_directory(sys.argv[1])
print(json.dumps({
    "plugins": sorted(type(p).__name__ for p in plugins),
    "errors": sorted(errors),
    "secrets_is_stdlib": sys.modules["secrets"] is stdlib_secrets and hasattr(sys.modules["secrets"], "token_hex"),
    "audit_is_ours": sys.modules["audit"] is our_audit,
    "glue_files_loaded": sorted(n for n, m in sys.modules.items()
                                if "airflow_glue" in (getattr(m, "__file__", "") or "")
                                and not n.startswith("airflow_glue")),
}))
"""


def test_only_the_plugin_file_is_loaded_and_nothing_is_shadowed() -> None:
    out = subprocess.run([sys.executable, "-c", _LOAD, str(REPO / "plugins")], capture_output=True, text=True,
                         check=True, timeout=180, cwd=REPO)
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded == {"plugins": ["ContractDeliveriesPlugin"], "errors": [], "secrets_is_stdlib": True,
                      "audit_is_ours": True, "glue_files_loaded": []}
