"""The ``local`` transport: a per-contractor drop folder, written atomically and exactly once.

The package is copied to a hidden temporary name in the destination folder, fsynced, checked
against its sha256, then hard-linked to its final name (``link`` fails if the name exists, so two
racing deliveries cannot overwrite each other) and the temporary name removed. A reader of the
folder sees either no package or a complete one.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from core.errors import DeliveryError, value_free
from core.paths import fsync_dir, safe_segment, within
from delivery.package import CHUNK, sha256_file


@dataclass(frozen=True)
class Receipt:
    transport: str
    path: str
    sha256: str
    bytes: int
    already_delivered: bool


def deliver_local(package: Path, *, drop_root: Path, folder: str, expected_sha256: str) -> Receipt:
    safe_segment(package.name, "package name")
    drop_root.mkdir(parents=True, exist_ok=True)
    dest_dir = within(drop_root, folder, "delivery.path")
    dest_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
    final = dest_dir / package.name
    if final.exists():
        return _existing(final, expected_sha256)
    tmp = dest_dir / f".{package.name}.partial-{secrets.token_hex(4)}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        with os.fdopen(fd, "wb") as out, package.open("rb") as src:
            while chunk := src.read(CHUNK):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        sha, size = sha256_file(tmp)
        if sha != expected_sha256:
            raise DeliveryError(f"copy of {package.name} in the drop folder does not match its sha256")
        try:
            os.link(tmp, final)
        except FileExistsError:
            return _existing(final, expected_sha256)
        fsync_dir(dest_dir)
    except OSError as exc:
        raise DeliveryError(f"writing to the drop folder failed ({exc.strerror or value_free(exc)})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return Receipt(transport="local", path=str(final), sha256=sha, bytes=size, already_delivered=False)


def _existing(final: Path, expected_sha256: str) -> Receipt:
    sha, size = sha256_file(final)
    if sha != expected_sha256:
        raise DeliveryError(f"{final.name} already exists in the drop folder with different content; "
                            "refusing to overwrite it")
    return Receipt(transport="local", path=str(final), sha256=sha, bytes=size, already_delivered=True)
