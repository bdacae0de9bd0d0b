"""What the ``authorise`` stage checks before a run: validity dates, then approvals. No pass, no run.

``date_refusal``: the contract's validity dates and the contractor's security assurance.

``check_approvals`` is the approval gate (docs/audit.md, "The gate"):

1. The contract needs at least one approval of its *current* content (``content_hash``) whose SSHSIG
   signature verifies with the key the registry lists for that approver, in the role it lists, whose
   key was already recorded in the ledger's registry history when the approval was recorded, and
   which no later withdrawal covers.
2. A contract with ``unmasked`` columns needs two such approvals by different approvers (different
   names; the registry refuses a key shared by two names), at least one by an Information Asset
   Manager.
3. The registry is recorded in the ledger (``approvers_changed``) whenever its hash differs from the
   last recorded one, before anything is decided.
4. The source has a catalogue (``configs/sources/<connection>.yaml``) whose current content its owner
   approved; the contract passes it (every rule of ``contracts.catalogue.catalogue_problems``); and the
   contract's approvals pin a catalogue content that the current one does not loosen for the tables the
   contract reads (docs/catalogue.md). A contract approved before catalogues needs a new approval.

The stage checks the dates first, before the gate.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audit.ledger import Ledger
from authorisation.approvals import assess, refusal
from authorisation.catalogue_approvals import assess_catalogue, catalogue_refusal
from authorisation.registry import load_registry, registry_path, sync_registry
from contracts.catalogue import Catalogue, catalogue_problems, load_catalogue_for
from contracts.model import Contract
from core.errors import AuthorisationError, ConfigError

AUTHORISED = "authorised"


@dataclass(frozen=True)
class Authorisation:
    """The approvals a run relies on (for the ``authorised`` ledger record)."""

    contract_sha256: str
    registry_sha256: str
    approvals: tuple[dict[str, Any], ...]
    catalogue: dict[str, Any] | None = None  # source, file, sha256, approvals of the catalogue relied on

    def details(self) -> dict[str, Any]:
        out: dict[str, Any] = {"contract_hash": self.contract_sha256, "registry_sha256": self.registry_sha256,
                               "approvals": list(self.approvals)}
        if self.catalogue is not None:
            out["catalogue"] = dict(self.catalogue)
        return out


def date_refusal(contract: Contract, today: dt.date) -> str | None:
    """Why ``contract`` may not run on ``today`` (validity dates, security assurance), or None."""
    if today < contract.valid.from_:
        return f"contract {contract.contract} is not valid before {contract.valid.from_.isoformat()}"
    if today > contract.valid.until:
        return f"contract {contract.contract} expired on {contract.valid.until.isoformat()}"
    if today > contract.security_assurance.expires:
        return (f"security assurance {contract.security_assurance.reference} of {contract.contractor} expired on "
                f"{contract.security_assurance.expires.isoformat()}")
    return None


def check_approvals(contract: Contract, *, ledger: Ledger, config_dir: Path, actor: str) -> Authorisation:
    """Return the approvals that authorise ``contract`` now, or raise ``AuthorisationError`` saying why not."""
    path = registry_path(config_dir)
    try:
        registry = load_registry(path)
    except ConfigError as exc:
        raise AuthorisationError(f"contract {contract.contract} cannot be authorised: the approver registry is "
                                 f"unusable: {exc}") from None
    sync_registry(ledger, registry, actor)
    catalogue, catalogue_file = source_catalogue(contract, config_dir)
    catalogue_assessment = assess_catalogue(catalogue, registry, ledger)
    reason = catalogue_refusal(catalogue, catalogue_assessment)
    if reason is not None:
        raise AuthorisationError(f"contract {contract.contract} cannot be authorised: {reason}")
    assessment = assess(contract, registry, ledger, catalogue)
    reason = refusal(contract, assessment)
    if reason is not None:
        raise AuthorisationError(reason)
    return Authorisation(contract_sha256=assessment.content_sha256, registry_sha256=registry.sha256,
                         approvals=tuple(v.summary() for v in assessment.counting),
                         catalogue={"source": catalogue.source, "file": str(catalogue_file),
                                    "sha256": catalogue.content_sha256,
                                    "approvals": [v.summary() for v in catalogue_assessment.counting]})


def source_catalogue(contract: Contract, config_dir: Path) -> tuple[Catalogue, Path]:
    """The contract's source catalogue, refused (``AuthorisationError``) when it is missing or invalid or the
    contract breaks it: every problem is named, with its key and fix."""
    try:
        catalogue, path = load_catalogue_for(contract, config_dir)
    except ConfigError as exc:
        raise AuthorisationError(f"contract {contract.contract} cannot be authorised: its source catalogue is "
                                 f"unusable: {exc}") from None
    problems = catalogue_problems(contract, catalogue)
    if problems:
        listed = "; ".join(f"{p.key}: {p.message} (Fix: {p.fix})" for p in problems[:5])
        more = f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
        raise AuthorisationError(f"contract {contract.contract} breaks its source catalogue {path}: {listed}{more}. "
                                 "Nothing was extracted")
    return catalogue, path
