"""What an approval covers, part by part, so a refusal can say *what* changed since the approval.

The approval itself signs ``content_hash(contract)`` (SHA-256 of the whole canonical form): any change
anywhere needs a new approval. The part digests recorded next to it are only for explaining the
difference in words ("the recipient list", "dataset claimants: column shoe_size added").
"""

from __future__ import annotations

import hashlib
from typing import Any

from audit.ledger import canonical_json
from contracts.loading import canonical_form
from contracts.model import Contract

_LABELS = {
    "recipients": "the recipient list",
    "sample": "the sample",
    "unmasked": "the unmasked columns",
    "valid": "the validity dates",
    "security_assurance": "the security assurance",
    "legal_gateway": "the legal gateway",
    "business_case": "the business case",
    "source": "the source connection",
    "linkage": "the linkage",
    "disclosure": "the disclosure settings",
    "delivery": "the delivery settings",
    "incremental": "the incremental settings",
    "schedule": "the schedule",
    "contract": "the contract id",
    "contractor": "the contractor",
    "title": "the title",
}


def _digest(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()[:16]


def content_parts(contract: Contract) -> dict[str, str]:
    """Short digests of every part of the canonical form (top-level keys; datasets column by column)."""
    data = canonical_form(contract)
    parts = {key: _digest(value) for key, value in data.items() if key != "datasets"}
    for dataset in data["datasets"]:
        name = dataset["name"]
        columns = dataset.get("columns", [])
        parts[f"datasets.{name}.columns"] = _digest([c["column"] for c in columns])
        for column in columns:
            parts[f"datasets.{name}.column.{column['column']}"] = _digest(column)
        parts[f"datasets.{name}.filter"] = _digest(dataset.get("filter"))
        parts[f"datasets.{name}.table"] = _digest(dataset.get("table"))
        rest = {k: v for k, v in dataset.items() if k not in ("name", "columns", "filter", "table")}
        parts[f"datasets.{name}.other"] = _digest(rest)
    return parts


def recipient_digests(contract: Contract) -> dict[str, str]:
    """Recipient name -> digest of its entry (name and key): says who was added, removed or re-keyed."""
    return {r["name"]: _digest(r) for r in canonical_form(contract)["recipients"]}


def describe_recipient_changes(before: dict[str, str], after: dict[str, str]) -> str:
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    rekeyed = sorted(n for n in set(after) & set(before) if after[n] != before[n])
    words = []
    if added:
        words.append("added " + ", ".join(added))
    if removed:
        words.append("removed " + ", ".join(removed))
    if rekeyed:
        words.append("new key for " + ", ".join(rekeyed))
    return "; ".join(words) or "changed"


def changed_keys(before: dict[str, str], after: dict[str, str]) -> set[str]:
    return {k for k in set(before) | set(after) if before.get(k) != after.get(k)}


def describe_changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Plain words for every part that differs (empty when the parts are equal)."""
    keys = changed_keys(before, after)
    words: list[str] = []
    datasets: dict[str, list[str]] = {}
    for key in sorted(keys):
        if not key.startswith("datasets."):
            words.append(_LABELS.get(key, f"'{key}'"))
            continue
        _, name, kind, *rest = key.split(".", 3)
        datasets.setdefault(name, [])
        if kind == "column":
            column = rest[0]
            if column not in _columns(before, name):
                datasets[name].append(f"column {column} added")
            elif column not in _columns(after, name):
                datasets[name].append(f"column {column} removed")
            else:
                datasets[name].append(f"treatment of column {column} changed")
        elif kind == "filter":
            datasets[name].append("filters changed")
        elif kind == "table":
            datasets[name].append("source table changed")
        elif kind == "other":
            datasets[name].append("settings changed")
    for name, changes in sorted(datasets.items()):
        in_before = f"datasets.{name}.columns" in before
        in_after = f"datasets.{name}.columns" in after
        if not in_before:
            words.append(f"dataset {name} added")
        elif not in_after:
            words.append(f"dataset {name} removed")
        else:
            if f"datasets.{name}.columns" in keys and not any(c.startswith("column ") and not c.endswith(
                    "changed") for c in changes):
                changes.append("column order changed")
            words.append(f"dataset {name}: " + ", ".join(changes))
    return words


def _columns(parts: dict[str, str], dataset: str) -> set[str]:
    prefix = f"datasets.{dataset}.column."
    return {k[len(prefix):] for k in parts if k.startswith(prefix)}
