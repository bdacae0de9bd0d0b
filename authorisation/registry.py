"""The approver registry: who may approve contracts, in which role, with which public key.

``<config dir>/approvers.yaml`` (public keys only, never a private key)::

    approvers:
      - name: jane.doe                      # letters, digits, '.', '_', '-', '@'
        role: information-asset-manager     # see ROLES
        key: "ssh-ed25519 AAAAC3Nz… jane@laptop"      # an OpenSSH line or a PEM public key …
      - name: sam.lee
        role: approver
        key_file: approvers/sam.lee.pub     # … or a file, relative to this registry's folder

The registry's hash covers every approver's name, role and key (not the file layout), and is recorded
in the audit ledger whenever it changes (``approvers_changed``), so the ledger shows who could approve
at any point in time.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audit.ledger import Ledger, LedgerRecord, canonical_json
from authorisation.approver_keys import ApproverKey, parse_public_key
from contracts.loading import read_yaml_file
from core.errors import ConfigError, KeyMaterialError

REGISTRY_FILE = "approvers.yaml"
REGISTRY_FORMAT = "contract-extracts/approvers/v1"
REGISTRY_ACTION = "approvers_changed"

IAM_ROLE = "information-asset-manager"
ROLES: dict[str, str] = {
    IAM_ROLE: "Information Asset Manager",
    "information-asset-owner": "Information Asset Owner",
    "data-protection-officer": "Data Protection Officer",
    "approver": "Approver",
}
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


@dataclass(frozen=True)
class Approver:
    name: str
    role: str
    key: ApproverKey

    @property
    def fingerprint(self) -> str:
        return self.key.fingerprint

    @property
    def role_title(self) -> str:
        return ROLES.get(self.role, self.role)

    def summary(self) -> dict[str, str]:
        """What the ledger records about an approver (public facts only)."""
        return {"name": self.name, "role": self.role, "fingerprint": self.fingerprint}


@dataclass(frozen=True)
class Registry:
    path: Path
    approvers: tuple[Approver, ...]

    def get(self, name: str) -> Approver | None:
        for approver in self.approvers:
            if approver.name == name:
                return approver
        return None

    def canonical(self) -> dict[str, Any]:
        return {"format": REGISTRY_FORMAT, "approvers": [
            {"name": a.name, "role": a.role, "key": a.key.openssh, "fingerprint": a.fingerprint}
            for a in sorted(self.approvers, key=lambda a: a.name)]}

    @property
    def sha256(self) -> str:
        return hashlib.sha256(canonical_json(self.canonical()).encode("utf-8")).hexdigest()

    def allowed_signers(self) -> str:
        """An OpenSSH ``allowed_signers`` file, so ``ssh-keygen -Y verify`` can check approvals."""
        return "".join(f'{a.name} namespaces="contract-extracts-approval" {a.key.openssh}\n'
                       for a in sorted(self.approvers, key=lambda a: a.name))


def registry_path(config_dir: Path) -> Path:
    return config_dir / REGISTRY_FILE


def load_registry(path: Path) -> Registry:
    """Read and check the registry. Errors name the file, the entry and the fix."""
    file = str(path)
    if not path.is_file():
        raise ConfigError("the approver registry does not exist", file=file,
                          fix="create it (see docs/audit.md, 'Approvers'); without it no contract can be "
                              "approved and every run is refused")
    data = read_yaml_file(path, kind="a registry", error=ConfigError)
    if not isinstance(data, dict) or set(data) - {"approvers"} or not isinstance(data.get("approvers"), list):
        raise ConfigError("expected a mapping with one key, 'approvers', holding a list", file=file,
                          key="approvers", fix="see docs/audit.md, 'Approvers'")
    approvers: list[Approver] = []
    for index, entry in enumerate(data["approvers"]):
        approvers.append(_approver(entry, f"approvers[{index}]", path))
    seen_names: set[str] = set()
    seen_keys: dict[ApproverKey, str] = {}
    for approver in approvers:
        if approver.name in seen_names:
            raise ConfigError(f"approver {approver.name!r} is listed twice", file=file, key="approvers",
                              fix="list every approver once")
        seen_names.add(approver.name)
        if approver.key in seen_keys:
            raise ConfigError(f"approvers {seen_keys[approver.key]!r} and {approver.name!r} share one key", file=file,
                              key="approvers", fix="every approver needs their own key: two approvals must "
                                                   "mean two people")
        seen_keys[approver.key] = approver.name
    return Registry(path=path, approvers=tuple(approvers))


def _approver(entry: Any, where: str, path: Path) -> Approver:
    file = str(path)
    allowed = {"name", "role", "key", "key_file"}
    if not isinstance(entry, dict):
        raise ConfigError("an approver must be a mapping (name, role, key or key_file)", file=file, key=where,
                          fix="see docs/audit.md, 'Approvers'")
    unknown = sorted(str(k) for k in set(entry) - allowed)
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r}", file=file, key=where,
                          fix=f"allowed keys: {', '.join(sorted(allowed))}")
    name, role = entry.get("name"), entry.get("role")
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ConfigError("name is missing or has characters that are not allowed", file=file, key=f"{where}.name",
                          fix="use letters, digits, '.', '_', '-' or '@' (at most 64), e.g. jane.doe")
    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r}" if isinstance(role, str) else "role is missing", file=file,
                          key=f"{where}.role", fix=f"use one of: {', '.join(ROLES)}")
    if ("key" in entry) == ("key_file" in entry):
        raise ConfigError("give exactly one of 'key' and 'key_file'", file=file, key=where,
                          fix="paste the public key into 'key', or name its .pub file in 'key_file'")
    if "key" in entry:
        if not isinstance(entry["key"], str):
            raise ConfigError("key must be text", file=file, key=f"{where}.key", fix="quote the key")
        text, source = entry["key"], f"{file}: {where}.key"
    else:
        key_file = entry["key_file"]
        relative = isinstance(key_file, str) and key_file and not Path(key_file).is_absolute()
        if not relative or ".." in Path(key_file).parts:
            raise ConfigError("key_file must be a relative path inside the registry's folder", file=file,
                              key=f"{where}.key_file", fix="e.g. approvers/jane.doe.pub")
        target = path.parent / key_file
        try:
            text = target.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError):
            raise ConfigError(f"cannot read the public key file {key_file}", file=file, key=f"{where}.key_file",
                              fix="check the path (relative to the registry's folder)") from None
        source = f"{target}"
    try:
        key = parse_public_key(text, source)
    except KeyMaterialError as exc:
        raise ConfigError(str(exc), file=file, key=where) from None
    return Approver(name=name, role=role, key=key)


# --------------------------------------------------------------------------------------------------
# The registry's history, as recorded in the ledger
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RegistryState:
    """The registry as recorded by one ``approvers_changed`` record."""

    seq: int
    sha256: str
    approvers: dict[str, tuple[str, str]]  # name -> (role, fingerprint)


def registry_history(ledger: Ledger) -> list[RegistryState]:
    """Every recorded registry state, oldest first (malformed records are skipped: they vouch for no one)."""
    states = []
    for record in ledger.records(action=REGISTRY_ACTION):
        state = _state(record)
        if state is not None:
            states.append(state)
    return states


def _state(record: LedgerRecord) -> RegistryState | None:
    try:
        details = record.details_obj()
        approvers = {a["name"]: (a["role"], a["fingerprint"]) for a in details["approvers"]}
        return RegistryState(seq=record.seq, sha256=str(details["registry_sha256"]), approvers=approvers)
    except (KeyError, TypeError, ValueError):
        return None


def state_before(history: list[RegistryState], seq: int) -> RegistryState | None:
    """The registry in force when record ``seq`` was written (the last state recorded before it)."""
    found = None
    for state in history:
        if state.seq < seq:
            found = state
        else:
            break
    return found


def sync_registry(ledger: Ledger, registry: Registry, actor: str) -> LedgerRecord | None:
    """Record the registry in the ledger if it differs from the last recorded state; return the new record.

    Two processes noticing the same change at once may both record it; the second record is redundant
    but harmless (equal hash, empty change lists).
    """
    history = registry_history(ledger)
    last = history[-1] if history else None
    if last is not None and last.sha256 == registry.sha256:
        return None
    now = {a.name: (a.role, a.fingerprint) for a in registry.approvers}
    before = last.approvers if last is not None else {}
    return ledger.append(actor=actor, action=REGISTRY_ACTION, contract=None, delivery=None, details={
        "registry_sha256": registry.sha256,
        "file": str(registry.path),
        "approvers": [a.summary() for a in sorted(registry.approvers, key=lambda a: a.name)],
        "added": sorted(set(now) - set(before)),
        "removed": sorted(set(before) - set(now)),
        "changed": sorted(n for n in set(now) & set(before) if now[n] != before[n]),
        "previous_sha256": last.sha256 if last is not None else None,
    })
