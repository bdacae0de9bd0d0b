"""One installable distribution: its top-level names are ours alone, and `pip install .` gives a working CLI.

The stages are top-level packages (design.md, Layout), so a name such as ``extract`` or ``audit`` must not be
taken by anything installed beside us, nor by the standard library, nor by any distribution the constraints
file pins; and a clean virtual environment with only the wheel and its pinned dependencies must run the CLI.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

WHEEL = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["hatch"]["build"]["targets"][
    "wheel"]
TOP_LEVEL = sorted(p.rsplit("/", 1)[-1] for p in WHEEL["packages"])
DISTRIBUTION = "contract-extracts"


def _pinned_distributions() -> list[str]:
    text = (REPO / "constraints.txt").read_text(encoding="utf-8")
    return sorted({m.group(1) for m in re.finditer(r"^([A-Za-z0-9._-]+)==", text, re.MULTILINE)})


def _top_level_names(dist: importlib.metadata.Distribution) -> set[str]:
    """Import names a distribution installs, from its RECORD (top_level.txt is optional and often absent)."""
    names: set[str] = set()
    for file in dist.files or []:
        parts = file.parts
        if not parts or parts[0].endswith((".dist-info", ".egg-info", ".data")) or parts[0] in ("..", "__pycache__"):
            continue
        first = parts[0]
        if len(parts) == 1:
            if first.endswith(".py"):
                names.add(first[:-3])
            elif first.endswith((".so", ".pyd")):
                names.add(first.split(".", 1)[0])
        else:
            names.add(first)
    return names


def test_the_wheel_lists_every_stage_and_the_glue() -> None:
    assert {"core", "contracts", "extract", "masking", "disclosure", "validation", "delivery", "audit",
            "pipeline", "cli", "airflow_glue"} <= set(TOP_LEVEL)
    for package in WHEEL["packages"]:
        assert (REPO / package / "__init__.py").is_file(), package


@pytest.mark.parametrize("name", TOP_LEVEL)
def test_top_level_name_resolves_to_this_project(name: str) -> None:
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.origin is not None, f"{name} does not import"
    assert Path(spec.origin).resolve().is_relative_to(REPO), f"{name} resolves to {spec.origin}, not this project"
    assert name not in sys.stdlib_module_names, f"{name} is a standard library module"
    others = [d for d in importlib.metadata.packages_distributions().get(name, []) if d != DISTRIBUTION]
    assert others == [], f"installed distributions also provide {name}: {others}"


def test_no_pinned_distribution_installs_one_of_our_names() -> None:
    pinned = _pinned_distributions()
    assert len(pinned) > 100  # the whole Airflow / Great Expectations tree
    clashes = {}
    checked = 0
    for name in pinned:
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # pinned for another platform or extra: nothing of it is installed to shadow us
        if dist.metadata["Name"].lower().replace("_", "-") == DISTRIBUTION:
            continue
        checked += 1
        taken = _top_level_names(dist) & set(TOP_LEVEL)
        if taken:
            clashes[name] = sorted(taken)
    assert checked > 100
    assert clashes == {}


@pytest.mark.slow
def test_pip_install_in_a_clean_venv_gives_a_working_cli(tmp_path: Path) -> None:
    """Build the wheel, install it with the pinned dependencies into a new venv, run the CLI outside the repo."""
    uv = shutil.which("uv") or str(REPO / ".tools" / "bin" / "uv")
    if not Path(uv).exists():
        pytest.skip("uv is installed by `make venv`")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    dist_dir = tmp_path / "dist"
    subprocess.run([uv, "build", "--wheel", "-q", "-o", str(dist_dir), str(REPO)], check=True, env=env, timeout=300)
    (wheel,) = dist_dir.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        roots = {n.split("/", 1)[0] for n in archive.namelist() if not n.split("/", 1)[0].endswith(".dist-info")}
        assert roots == set(TOP_LEVEL)
        assert "airflow_glue/templates/base.html.j2" in archive.namelist()
        # The build hook compiled masking's OpenSSL extension into the masking package (hatch_build.py).
        assert [n for n in archive.namelist() if re.fullmatch(r"masking/_hmac_native\.[^/]+\.so", n)]
        assert not [n for n in archive.namelist() if n.startswith(("tests/", "configs/", "src/"))]
    venv = tmp_path / "venv"
    subprocess.run([uv, "venv", "-q", "-p", sys.executable, str(venv)], check=True, env=env, timeout=120)
    subprocess.run([uv, "pip", "install", "-q", "-p", str(venv / "bin" / "python"), "-c", str(REPO / "constraints.txt"),
                    str(wheel)], check=True, env=env, timeout=600)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    cli = venv / "bin" / "contract-extracts"
    helped = subprocess.run([str(cli), "--help"], cwd=outside, env=env, capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and "contract-extracts" in helped.stdout
    checked = subprocess.run([str(cli), "check", str(REPO / "configs" / "contracts" / "C-DEMO-001.yaml")], cwd=outside,
                             env=env, capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith("ok ")
    where = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import extract, masking.hashing, airflow_glue.builder; print(extract.__file__); "
                            "print(masking.hashing.BACKEND)"],
                           cwd=outside, env=env, capture_output=True, text=True, timeout=120, check=True)
    module_file, backend = where.stdout.split()
    assert Path(module_file).is_relative_to(venv)
    assert backend == "native"
