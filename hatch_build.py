"""Build hook (hatchling): compiles ``masking._hmac_native``, OpenSSL's HMAC-SHA256 over Arrow buffers.

- Wheel builds (``pip install .``, ``uv build``, the Docker image) compile it into a temporary folder and put
  it into the wheel as ``masking/_hmac_native.<abi tag>.so``; the wheel is then tagged for this interpreter
  and platform.
- Editable installs (``make venv``) compile it into ``masking/`` itself, where the editable install imports
  the package from (git ignores it there).

It needs a C compiler, Python's headers and OpenSSL's (Debian: gcc, python3.11-dev, libssl-dev; ``make
build-deps`` and the Dockerfile install them) and links the system ``libcrypto``. When it cannot be compiled
the build still succeeds without it, with a warning, and ``masking.hashing`` uses its pure-Python fallback
(its INFO log line says which backend hashes). ``CONTRACT_EXTRACTS_REQUIRE_NATIVE=1`` makes a failed compile
fail the build instead (for images and CI that must not silently lose the native path).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface
from setuptools import Distribution, Extension
from setuptools.command.build_ext import build_ext

MODULE = "masking._hmac_native"
SOURCE = Path("masking") / "_hmac_native.c"
REQUIRE_ENV = "CONTRACT_EXTRACTS_REQUIRE_NATIVE"


def _openssl_dirs() -> tuple[list[str], list[str]]:
    """OpenSSL's include and library folders from pkg-config, where it knows them (Debian: the defaults)."""
    try:
        flags = subprocess.run(["pkg-config", "--cflags-only-I", "--libs-only-L", "libcrypto"], capture_output=True,
                               text=True, check=True, timeout=30).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return [], []
    return [f[2:] for f in flags if f.startswith("-I")], [f[2:] for f in flags if f.startswith("-L")]


def compile_extension(root: Path, build_dir: Path) -> Path:
    """Compile the extension with setuptools' compiler setup (honours CC, CFLAGS, LDFLAGS); its path."""
    include_dirs, library_dirs = _openssl_dirs()
    extension = Extension(MODULE, sources=[str(root / SOURCE)], libraries=["crypto"], include_dirs=include_dirs,
                          library_dirs=library_dirs)
    command = build_ext(Distribution({"name": "contract-extracts-native", "ext_modules": [extension]}))
    command.build_lib = str(build_dir / "lib")
    command.build_temp = str(build_dir / "temp")
    command.ensure_finalized()
    command.run()
    return Path(command.get_ext_fullpath(MODULE))


def in_place_path(root: Path) -> Path:
    return root / "masking" / f"_hmac_native{sysconfig.get_config_var('EXT_SUFFIX')}"


class NativeHashingBuildHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel":
            return
        root = Path(self.root)
        self._build_dir = Path(tempfile.mkdtemp(prefix="contract-extracts-native-"))
        editable = version == "editable"
        target = in_place_path(root)
        try:
            built = compile_extension(root, self._build_dir)
        except Exception as exc:  # no compiler, no headers, no libcrypto: install without the extension
            if os.environ.get(REQUIRE_ENV) == "1":
                raise
            if editable:
                target.unlink(missing_ok=True)  # a stale build must not outlive the source it was built from
            self.app.display_warning(f"{MODULE} was not compiled ({type(exc).__name__}: {exc}); keyed hashing "
                                     "will use the pure-Python fallback. Install a C compiler and OpenSSL's "
                                     "headers (Debian: gcc libssl-dev) and reinstall for the native path.")
            return
        if editable:
            staged = target.with_name(target.name + ".new")
            shutil.copyfile(built, staged)
            os.replace(staged, target)  # atomic: a process that has the old one loaded keeps a valid mapping
            self.app.display_info(f"{MODULE} compiled into {target.relative_to(root)}")
            return
        build_data["force_include"][str(built)] = f"masking/{built.name}"
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        self.app.display_info(f"{MODULE} compiled into the wheel")

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        build_dir = getattr(self, "_build_dir", None)
        if build_dir is not None:
            shutil.rmtree(build_dir, ignore_errors=True)

    def clean(self, versions: list[str]) -> None:
        for built in (Path(self.root) / "masking").glob("_hmac_native*.so"):
            built.unlink()
