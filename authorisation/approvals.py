"""Signed approvals of a contract's exact content, their withdrawal, and their assessment.

An approval is an SSHSIG signature (namespace ``contract-extracts-approval``) by a registered
approver's Ed25519 key over a short statement::

    contract-extracts approval v2
    contract: C-2026-017
    content-sha256: 3fa9…                     # content_hash(contract): the canonical form, not the YAML text
    catalogue-sha256: 8c1d…                   # the source catalogue the contract was approved against
    approver: jane.doe
    role: information-asset-manager
    signed-at: 2026-11-25T09:12:03.123456+00:00

(v1 statements, made before source catalogues, have no ``catalogue-sha256`` line; they still verify, but
pin no catalogue, so they no longer count: the contract needs a new approval.) A contract is approved
only while it passes its source catalogue (``contracts.catalogue.catalogue_problems``) and that catalogue's
current content is approved by its owner (``authorisation.catalogue_approvals``). When the catalogue
changes later, an approval keeps counting unless the change loosens the class of a column of a table the
contract reads (``contracts.catalogue.loosened``).

recorded in the ledger as a ``contract_approved`` record (the statement's fields, the armoured
signature, the key fingerprint, the registry hash and part digests for explaining later changes).
``approval_revoked`` withdraws approvals: those of one approver or of everyone, recorded before it or
signed before it (so an old signature cannot be replayed after a withdrawal).

Whether an approval *counts* is decided here, from the ledger and the current registry, by the same
function for the gate and for ``status``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit.ledger import Ledger, LedgerRecord
from authorisation.catalogue_approvals import assess_catalogue, catalogue_refusal, pinned_classes
from authorisation.content import (
    changed_keys,
    content_parts,
    describe_changes,
    describe_recipient_changes,
    recipient_digests,
)
from authorisation.registry import IAM_ROLE, ROLES, Registry, RegistryState, registry_history
from authorisation.signed_records import (
    SignedApprovalView,
    StatementForm,
    invalid_approvals,
    judge_record,
    now,
    read_statement,
    record_approval,
    registered_approver,
    withdrawn_approvals,
)
from contracts.base import CONTRACT_ID
from contracts.catalogue import Catalogue, catalogue_problems, contract_tables, loosened
from contracts.loading import content_hash
from contracts.model import Contract
from core.errors import AuthorisationError

APPROVED = "contract_approved"
REVOKED = "approval_revoked"
STATEMENT_HEADER_V1 = "contract-extracts approval v1"
STATEMENT_HEADER = "contract-extracts approval v2"
_FORM = StatementForm(header=STATEMENT_HEADER,
                      fields=("contract", "content-sha256", "catalogue-sha256", "approver", "role", "signed-at"),
                      subject_pattern=CONTRACT_ID, kind="approval statement",
                      make_with="contract-extracts approve … --print-statement",
                      allowed="contract id, 64 hex digits, registered approver name, known role")
_FORM_V1 = dataclasses.replace(_FORM, header=STATEMENT_HEADER_V1,
                               fields=("contract", "content-sha256", "approver", "role", "signed-at"))


# --------------------------------------------------------------------------------------------------
# The signed statement
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Statement:
    contract: str
    content_sha256: str
    approver: str
    role: str
    signed_at: str
    catalogue_sha256: str | None = None  # None: a v1 statement, made before source catalogues

    def text(self) -> str:
        if self.catalogue_sha256 is None:
            return _FORM_V1.render((self.contract, self.content_sha256, self.approver, self.role, self.signed_at))
        return _FORM.render((self.contract, self.content_sha256, self.catalogue_sha256, self.approver, self.role,
                             self.signed_at))

    def message(self) -> bytes:
        return self.text().encode("utf-8")

    @classmethod
    def parse(cls, text: str) -> Statement:
        """Read a statement file; it must be exactly what ``text()`` renders (what was signed)."""
        values = read_statement(text, [_FORM, _FORM_V1])
        return cls(contract=values["contract"], content_sha256=values["content-sha256"], approver=values["approver"],
                   role=values["role"], signed_at=values["signed-at"], catalogue_sha256=values.get("catalogue-sha256"))


# --------------------------------------------------------------------------------------------------
# Assessing the approvals of one contract
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ApprovalView(SignedApprovalView):
    """One ``contract_approved`` record, judged against the current contract and registry."""

    actor: str
    changes: tuple[str, ...] = ()  # what changed since (when not current)
    recipients_changed: str | None = None
    parts: dict[str, str] = field(default_factory=dict, repr=False)
    catalogue_sha256: str | None = None  # the source catalogue content it was approved against
    catalogue_problem: str | None = None  # why the catalogue's change since then voids it (assessed with one)

    @property
    def counts(self) -> bool:
        return self.signature_ok and self.current and self.catalogue_problem is None


@dataclass(frozen=True)
class Assessment:
    contract: str
    content_sha256: str
    registry_sha256: str
    approvals: tuple[ApprovalView, ...]  # newest first

    @property
    def counting(self) -> list[ApprovalView]:
        """The approvals that count, one per approver (the newest)."""
        seen: set[str] = set()
        out = []
        for view in self.approvals:
            if view.counts and view.approver not in seen:
                seen.add(view.approver)
                out.append(view)
        return out


def assess(contract: Contract, registry: Registry, ledger: Ledger, catalogue: Catalogue | None = None) -> Assessment:
    """Judge every approval of ``contract`` recorded in ``ledger`` against its current content.

    With ``catalogue`` (the source's current catalogue) an approval also needs its catalogue pin to hold:
    the catalogue is unchanged since, or changed without loosening a class of the tables the contract reads.
    """
    records = [*ledger.records(contract=contract.contract, action=APPROVED),
               *ledger.records(contract=contract.contract, action=REVOKED)]
    assessment = assess_records(contract, registry, sorted(records, key=lambda r: r.seq), registry_history(ledger))
    if catalogue is None:
        return assessment
    pinned: dict[str, dict[str, dict[str, str]] | None] = {}
    views = []
    for view in assessment.approvals:
        problem = None
        if view.signature_ok and view.current:
            problem = _pin_problem(view.catalogue_sha256, contract, catalogue, ledger, pinned)
        views.append(dataclasses.replace(view, catalogue_problem=problem))
    return dataclasses.replace(assessment, approvals=tuple(views))


def _pin_problem(pin: str | None, contract: Contract, catalogue: Catalogue, ledger: Ledger,
                 cache: dict[str, dict[str, dict[str, str]] | None]) -> str | None:
    """Why the catalogue's change since the approval's pin voids the approval, or None."""
    if pin is None:
        return ("approved before source catalogues (it pins no catalogue); the contract needs a new approval "
                f"against catalogue {catalogue.source}")
    if pin == catalogue.content_sha256:
        return None
    if pin not in cache:
        cache[pin] = pinned_classes(ledger, catalogue.source, pin)
    before = cache[pin]
    if before is None:
        return (f"approved against catalogue content sha256 {pin[:12]}…, which no approval of catalogue "
                f"{catalogue.source} in the ledger records; the contract needs a new approval")
    changes = loosened(before, catalogue.classes(), contract_tables(contract))
    if changes:
        shown = "; ".join(changes[:5]) + (f"; and {len(changes) - 5} more" if len(changes) > 5 else "")
        return (f"the source catalogue {catalogue.source} loosened since this approval ({shown}); every contract "
                "reading those tables needs a new approval")
    return None


def assess_records(contract: Contract, registry: Registry, records: list[LedgerRecord],
                   history: list[RegistryState]) -> Assessment:
    digest = content_hash(contract)
    parts = content_parts(contract)
    recipients = recipient_digests(contract)
    revocations = [r for r in records if r.action == REVOKED and r.contract == contract.contract]
    views = []
    for record in records:
        if record.action == APPROVED and record.contract == contract.contract:
            views.append(_view(record, contract.contract, digest, parts, recipients, registry, history, revocations))
    views.sort(key=lambda v: v.seq, reverse=True)
    return Assessment(contract=contract.contract, content_sha256=digest, registry_sha256=registry.sha256,
                      approvals=tuple(views))


def _view(record: LedgerRecord, contract_id: str, digest: str, parts: dict[str, str],
          recipients: dict[str, str], registry: Registry, history: list[RegistryState],
          revocations: list[LedgerRecord]) -> ApprovalView:
    def statement_of(d: dict[str, Any]) -> Statement:
        pin = d.get("catalogue")
        return Statement(contract=contract_id, content_sha256=str(d["content_sha256"]), approver=str(d["approver"]),
                         role=str(d["role"]), signed_at=str(d["signed_at"]),
                         catalogue_sha256=str(pin["sha256"]) if isinstance(pin, dict) else None)

    recorded = judge_record(record, statement_of, registry, history, revocations)
    if recorded is None:
        return ApprovalView.malformed(record, actor=record.actor)
    statement, d = recorded.statement, recorded.details
    recorded_parts, recorded_recipients = d.get("parts"), d.get("recipients")
    approved_parts: dict[str, str] = recorded_parts if isinstance(recorded_parts, dict) else {}
    approved_recipients: dict[str, str] = recorded_recipients if isinstance(recorded_recipients, dict) else {}
    current = statement.content_sha256 == digest
    changes: tuple[str, ...] = ()
    recipients_changed = None
    if not current:
        changes = tuple(describe_changes(approved_parts, parts)) or ("the content (details not recorded)",)
        if "recipients" in changed_keys(approved_parts, parts):
            recipients_changed = describe_recipient_changes(approved_recipients, recipients)
    return ApprovalView(seq=record.seq, at=record.at, actor=record.actor, approver=statement.approver,
                        role=statement.role, content_sha256=statement.content_sha256,
                        fingerprint=recorded.fingerprint, note=recorded.note, signature_ok=recorded.problem is None,
                        problem=recorded.problem, current=current, changes=changes,
                        recipients_changed=recipients_changed, parts=approved_parts,
                        catalogue_sha256=statement.catalogue_sha256)


def refusal(contract: Contract, assessment: Assessment) -> str | None:
    """Why the gate refuses ``contract`` on its approvals, or None when they suffice."""
    c = contract.contract
    counting = assessment.counting
    short = assessment.content_sha256[:12]
    fix = (f"Fix: an approver reviews the contract and runs 'contract-extracts approve {c} --by NAME --role ROLE "
           "--key KEY' (see 'contract-extracts status " + c + "')")
    if not counting:
        voided = [v for v in assessment.approvals if v.signature_ok and v.current and v.catalogue_problem]
        if voided:
            latest = voided[0]
            return f"contract {c}: approval #{latest.seq} by {latest.approver} no longer counts: " \
                   f"{latest.catalogue_problem}. {fix}"
        signed = [v for v in assessment.approvals if v.signature_ok and not v.current]
        if signed:
            latest = signed[0]
            if latest.recipients_changed is not None:
                return (f"contract {c}: the recipient list changed since approval #{latest.seq} by {latest.approver} "
                        f"({latest.recipients_changed}); the content needs a new approval. {fix}")
            return (f"contract {c} changed since approval #{latest.seq} by {latest.approver}: "
                    f"{'; '.join(latest.changes)}. Every change needs a new approval. {fix}")
        problems = invalid_approvals(assessment.approvals)
        if problems:
            return f"contract {c} has no valid approval for its current content (sha256 {short}…): {problems}. {fix}"
        return f"contract {c} has no approval for its current content (sha256 {short}…). {fix}"
    if contract.unmasked:
        approvers = {v.approver for v in counting}
        iam = [v for v in counting if v.role == IAM_ROLE]
        if len(approvers) < 2 or not iam:
            columns = ", ".join(f"{u.dataset}.{u.column}" for u in contract.unmasked)
            have = ", ".join(f"{v.approver} ({v.role})" for v in counting)
            return (f"contract {c} delivers unmasked columns ({columns}), which need approvals of its current content "
                    f"by two different approvers, one of them an {ROLES[IAM_ROLE]}; it has: {have}. "
                    "Fix: a second approver (or an Information Asset Manager) approves it")
    return None


# --------------------------------------------------------------------------------------------------
# Writing approvals and withdrawals
# --------------------------------------------------------------------------------------------------


def make_statement(contract: Contract, registry: Registry, approver: str, role: str,
                   signed_at: str | None = None, *, catalogue: Catalogue) -> Statement:
    """The statement ``approver`` signs for ``contract``'s current content against ``catalogue`` (checks name,
    role, and that the contract passes its catalogue: a contract that breaks it cannot be approved)."""
    registered_approver(registry, approver, role)
    problems = catalogue_problems(contract, catalogue)
    if problems:
        listed = "; ".join(f"{p.key}: {p.message}" for p in problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise AuthorisationError(f"contract {contract.contract} breaks its source catalogue {catalogue.source}: "
                                 f"{listed}{more}. Nothing was approved. Fix: correct the contract (see "
                                 f"'contract-extracts check {contract.contract}')")
    return Statement(contract=contract.contract, content_sha256=content_hash(contract), approver=approver,
                     role=role, signed_at=signed_at or now(), catalogue_sha256=catalogue.content_sha256)


def approve(*, contract: Contract, catalogue: Catalogue, registry: Registry, ledger: Ledger, approver: str, role: str,
            actor: str, note: str | None = None, private_key: Ed25519PrivateKey | None = None,
            statement: Statement | None = None, signature: str | None = None,
            contract_file: Path | None = None) -> LedgerRecord:
    """Sign (or take a signature of) the approval statement, check it, and record it in the ledger.

    ``catalogue`` is the source's current catalogue: the contract must pass it, and its current content must
    be approved by its owner; the approval pins its hash.
    """
    expected = make_statement(contract, registry, approver, role, catalogue=catalogue)
    catalogue_reason = catalogue_refusal(catalogue, assess_catalogue(catalogue, registry, ledger))
    if catalogue_reason is not None:
        raise AuthorisationError(f"contract {contract.contract} cannot be approved against an unapproved catalogue: "
                                 f"{catalogue_reason}")

    def mismatch(given: Statement) -> str | None:
        if (given.contract, given.approver, given.role) != (expected.contract, approver, role):
            return "the statement names another contract, approver or role than this command"
        if given.content_sha256 != expected.content_sha256:
            return (f"the statement approves content sha256 {given.content_sha256[:12]}…, but {contract.contract} "
                    f"now has {expected.content_sha256[:12]}…: the contract changed after the statement was made. "
                    "Fix: review it and sign a new statement")
        if given.catalogue_sha256 != expected.catalogue_sha256:
            pinned = ("no source catalogue" if given.catalogue_sha256 is None
                      else f"catalogue content sha256 {given.catalogue_sha256[:12]}…")
            return (f"the statement pins {pinned}, but catalogue {catalogue.source} now has "
                    f"{catalogue.content_sha256[:12]}…. Fix: make and sign a new statement (--print-statement)")
        return None

    return record_approval(
        ledger, registry, expected, action=APPROVED, contract=contract.contract, actor=actor, private_key=private_key,
        statement=statement, signature=signature, mismatch=mismatch,
        revocations=ledger.records(contract=contract.contract, action=REVOKED), details={
            "parts": content_parts(contract),
            "recipients": recipient_digests(contract),
            "unmasked": [f"{u.dataset}.{u.column}" for u in contract.unmasked],
            "catalogue": {"source": catalogue.source, "sha256": catalogue.content_sha256},
            "note": note,
            "contract_file": str(contract_file) if contract_file else None,
        })


def revoke(*, contract: Contract | None, contract_id: str, ledger: Ledger, actor: str, approver: str | None = None,
           reason: str | None = None, registry: Registry | None = None) -> LedgerRecord:
    """Withdraw the approvals of ``contract_id`` (of one approver, or all). Needs no signature: it only takes
    authority away."""
    withdrawn: list[int] = []
    if contract is not None and registry is not None:
        withdrawn = withdrawn_approvals(assess(contract, registry, ledger).approvals, approver)
    return ledger.append(actor=actor, action=REVOKED, contract=contract_id, delivery=None, details={
        "approver": approver, "reason": reason, "withdrawn": withdrawn})
