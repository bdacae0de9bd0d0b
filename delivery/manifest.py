"""``manifest.json``: what a package holds and where it comes from (format v1, docs/formats.md).

The manifest lists every file of the package with its size, SHA-256 and (for data) rows and schema,
and carries the value-free records of the run: the extract (kind, incremental windows, sample), the
release gate's ``validation.json`` and the disclosure document. The sender signs its exact bytes
(``delivery.package.manifest_bytes``); nothing in it is a data value.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from contracts.model import Contract
from delivery.package import PACKAGE_FORMAT, PackageFile, checksums_file, file_entries
from delivery.signing import fingerprint
from disclosure.report import manifest_section, microdata_included, package_files
from disclosure.result import DisclosureResult
from extract.result import ExtractResult

CODEBOOK = "codebook.md"


def package_contents(staging: Path, extract: ExtractResult, disclosure: DisclosureResult | None) -> list[PackageFile]:
    """The files of the package, in order: the codebook, the microdata (unless aggregates only), the
    aggregate tables, and ``SHA256SUMS`` over all of them (written now, into ``staging``)."""
    files = [PackageFile(arcname=CODEBOOK, path=staging / CODEBOOK)]
    for ds in extract.datasets if microdata_included(disclosure) else ():
        files.append(PackageFile(
            arcname=ds.file, path=staging / ds.file, rows=ds.rows,
            schema=tuple({"name": c.name, "type": c.type, "treatment": c.treatment} for c in ds.columns)))
    for table in package_files(disclosure):  # aggregate tables: data/<name>.parquet
        files.append(PackageFile(arcname=table.arcname, path=staging / table.arcname, rows=table.rows,
                                 schema=table.schema))
    files.append(checksums_file(staging, files))
    return files


def build_manifest(*, contract: Contract, delivery_id: str, created: dt.datetime, extract: ExtractResult,
                   validation: Mapping[str, Any], disclosure: DisclosureResult | None, files: list[PackageFile],
                   sender: Ed25519PublicKey, recipients: list[dict[str, str]],
                   ledger_head: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The manifest object (``files`` must already exist: they are hashed here).

    ``ledger_head`` is the audit ledger's head when the package is made (``audit.receipts``): inside the signed
    manifest it is every contractor's receipt of the ledger (format v2).
    """
    manifest: dict[str, Any] = {
        "format": PACKAGE_FORMAT,
        "contract": contract.contract,
        "title": contract.title,
        "contractor": contract.contractor,
        "delivery": delivery_id,
        "created_at": created.isoformat(),
        "key_id": extract.key_id,
        "linkage": contract.linkage,
        "extract": {"kind": "incremental" if extract.incremental else "full",
                    "windows": extract.windows_list(),
                    "sample": None if extract.sample is None else extract.sample.to_dict()},
        "sender": {"signature": "ed25519", "fingerprint": fingerprint(sender)},
        "recipients": recipients,
        "files": file_entries(files),
        "validation": dict(validation),
        "disclosure": manifest_section(disclosure),
    }
    if ledger_head is not None:
        manifest["ledger"] = dict(ledger_head)
    return manifest
