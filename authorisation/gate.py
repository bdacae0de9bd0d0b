"""The approval gate the ``authorise`` stage calls: no valid approval of the current content, no run.

Rules (docs/audit.md, "The gate"):

1. The contract needs at least one approval of its *current* content (``content_hash``) whose SSHSIG
   signature verifies with the key the registry lists for that approver, in the role it lists, whose
   key was already recorded in the ledger's registry history when the approval was recorded, and
   which no later withdrawal covers.
2. A contract with ``unmasked`` columns needs two such approvals by different approvers (different
   names; the registry refuses a key shared by two names), at least one by an Information Asset
   Manager.
3. The registry is recorded in the ledger (``approvers_changed``) whenever its hash differs from the
   last recorded one, before anything is decided.

Dates and the security assurance are checked by the stage itself, before this gate.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audit.ledger import Ledger
from authorisation.approvals import assess, refusal
from authorisation.registry import load_registry, registry_path, sync_registry
from contracts.model import Contract
from core.errors import AuthorisationError, ConfigError

AUTHORISED = "authorised"


@dataclass(frozen=True)
class Authorisation:
    """The approvals a run relies on (for the ``authorised`` ledger record)."""

    contract_sha256: str
    registry_sha256: str
    approvals: tuple[dict[str, Any], ...]

    def details(self) -> dict[str, Any]:
        return {"contract_hash": self.contract_sha256, "registry_sha256": self.registry_sha256,
                "approvals": list(self.approvals)}


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
    assessment = assess(contract, registry, ledger)
    reason = refusal(contract, assessment)
    if reason is not None:
        raise AuthorisationError(reason)
    return Authorisation(contract_sha256=assessment.content_sha256, registry_sha256=registry.sha256,
                         approvals=tuple(v.summary() for v in assessment.counting))
