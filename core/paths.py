"""Paths that cannot escape their root, and private (0700) directories for plaintext staging."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from core.errors import ConfigError

SAFE_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def safe_segment(value: str, what: str) -> str:
    """Return ``value`` if it is a single harmless path segment (no separators, no '..')."""
    if not SAFE_SEGMENT.match(value) or ".." in value:
        raise ConfigError(
            f"{what} {value!r} is not a safe file name segment",
            fix="use letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    return value


def within(root: Path, relative: str | os.PathLike[str], what: str) -> Path:
    """Resolve ``relative`` under ``root``; refuse absolute paths and anything escaping ``root``."""
    rel = Path(relative)
    if rel.is_absolute():
        raise ConfigError(f"{what} {str(relative)!r} must be relative to {root}",
                          fix="remove the leading '/'")
    if any(part == ".." for part in rel.parts):
        raise ConfigError(f"{what} {str(relative)!r} must not contain '..'", fix="use a plain relative path")
    for part in rel.parts:
        safe_segment(part, what)
    root_resolved = root.resolve()
    target = (root_resolved / rel).resolve()
    if target != root_resolved and root_resolved not in target.parents:
        raise ConfigError(f"{what} {str(relative)!r} escapes {root}", fix="use a path inside the root")
    return target


def make_private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) with mode 0700 and check nobody else can read it."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def remove_tree(path: Path) -> None:
    """Remove a staging tree; missing is fine (cleanup runs also after failures)."""
    shutil.rmtree(path, ignore_errors=True)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
