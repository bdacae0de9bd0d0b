"""Files that hold keys: created 0600 without a world-readable moment, never overwritten, and refused
when group or others can read them. Shared by masking (master keys), delivery (signing keys, identities),
authorisation (approver keys) and audit (the ledger key)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from core.errors import KeyMaterialError

__all__ = ["check_private_file", "write_private_file"]


def check_private_file(path: Path, what: str) -> None:
    """Refuse key files that group or others can read or write."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise KeyMaterialError(f"{what} file {path} does not exist") from None
    except OSError as exc:
        raise KeyMaterialError(f"{what} file {path} cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise KeyMaterialError(f"{what} file {path} is not a regular file")
    if st.st_mode & 0o077:
        raise KeyMaterialError(f"{what} file {path} has permissions {stat.S_IMODE(st.st_mode):04o}; "
                               f"it must be readable by its owner only. Fix: chmod 600 {path}")


def write_private_file(path: Path, content: bytes) -> None:
    """Create ``path`` with mode 0600 (never world-readable, not even briefly); refuse to overwrite."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyMaterialError(f"{path} already exists; refusing to overwrite a key file. Fix: choose a new "
                               "file name or move the old file away deliberately") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(content)
        fh.flush()
        os.fsync(fh.fileno())
