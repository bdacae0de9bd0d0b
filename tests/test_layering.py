"""Stage packages are plain Python: importing them never imports Airflow (design.md, Layout)."""

from __future__ import annotations

import subprocess
import sys

STAGE_PACKAGES = [
    "contract_extracts.core", "contract_extracts.contracts", "contract_extracts.extract",
    "contract_extracts.masking", "contract_extracts.validation", "contract_extracts.delivery",
    "contract_extracts.audit", "contract_extracts.pipeline", "contract_extracts.demo",
    "contract_extracts.cli",
]


def test_stage_packages_do_not_import_airflow() -> None:
    import pkgutil

    import contract_extracts

    modules = [m.name for m in pkgutil.walk_packages(contract_extracts.__path__, "contract_extracts.")
               if not m.name.startswith("contract_extracts.airflow_glue")]
    assert set(STAGE_PACKAGES) <= set(modules)
    code = ("import importlib, sys\n"
            f"for name in {modules!r}: importlib.import_module(name)\n"
            "print('airflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "False"
