"""Stage packages are plain Python: importing them never imports Airflow (design.md, Layout).

Only ``dags/`` and the one glue package, ``plugins/airflow_glue``, may import Airflow.
"""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGE_PACKAGES = ["core", "contracts", "authorisation", "extract", "masking", "disclosure", "validation",
                  "delivery", "audit", "pipeline", "demo", "cli"]
GLUE_PACKAGE = "airflow_glue"


def _modules(package: str) -> list[str]:
    path = ROOT / package
    return [package] + [m.name for m in pkgutil.walk_packages([str(path)], f"{package}.")]


def test_stage_packages_do_not_import_airflow() -> None:
    modules = [name for package in STAGE_PACKAGES for name in _modules(package)]
    assert len(modules) > len(STAGE_PACKAGES)
    code = ("import importlib, sys\n"
            f"for name in {modules!r}: importlib.import_module(name)\n"
            "print(sorted(m for m in sys.modules if m == 'airflow' or m.startswith('airflow.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=180,
                         cwd=ROOT)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("package", STAGE_PACKAGES)
def test_no_stage_source_names_airflow_or_the_glue(package: str) -> None:
    """Also catches imports inside functions, which importing the modules would not execute."""
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            offenders += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names
                          if n.split(".")[0] in ("airflow", GLUE_PACKAGE)]
    assert offenders == []
