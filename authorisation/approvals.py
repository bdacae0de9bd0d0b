"""Signed approvals of a contract's exact content, their withdrawal, and their assessment.

An approval is an SSHSIG signature (namespace ``contract-extracts-approval``) by a registered
approver's Ed25519 key over a short statement::

    contract-extracts approval v1
    contract: C-2026-017
    content-sha256: 3fa9…                     # content_hash(contract): the canonical form, not the YAML text
    approver: jane.doe
    role: information-asset-manager
    signed-at: 2026-11-25T09:12:03.123456+00:00

recorded in the ledger as a ``contract_approved`` record (the statement's fields, the armoured
signature, the key fingerprint, the registry hash and part digests for explaining later changes).
``approval_revoked`` withdraws approvals: those of one approver or of everyone, recorded before it or
signed before it (so an old signature cannot be replayed after a withdrawal).

Whether an approval *counts* is decided here, from the ledger and the current registry, by the same
function for the gate and for ``status``.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit.ledger import Ledger, LedgerRecord
from authorisation import sshsig
from authorisation.content import (
    changed_keys,
    content_parts,
    describe_changes,
    describe_recipient_changes,
    recipient_digests,
)
from authorisation.registry import (
    IAM_ROLE,
    NAME_PATTERN,
    ROLES,
    Registry,
    RegistryState,
    registry_history,
    state_before,
    sync_registry,
)
from contracts.base import CONTRACT_ID
from contracts.loading import content_hash
from contracts.model import Contract
from core.errors import AuthorisationError, KeyError_, VerificationError

APPROVED = "contract_approved"
REVOKED = "approval_revoked"
STATEMENT_HEADER = "contract-extracts approval v1"
CLOCK_SKEW = dt.timedelta(minutes=5)
_FIELDS = ("contract", "content-sha256", "approver", "role", "signed-at")


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


def _normalise_time(value: str) -> str:
    moment = dt.datetime.fromisoformat(value)
    if moment.tzinfo is None:
        raise ValueError("signed-at needs a time zone")
    return moment.astimezone(dt.UTC).isoformat(timespec="microseconds")


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

    def text(self) -> str:
        return (f"{STATEMENT_HEADER}\ncontract: {self.contract}\ncontent-sha256: {self.content_sha256}\n"
                f"approver: {self.approver}\nrole: {self.role}\nsigned-at: {self.signed_at}\n")

    def message(self) -> bytes:
        return self.text().encode("utf-8")

    @classmethod
    def parse(cls, text: str) -> Statement:
        """Read a statement file; it must be exactly what ``text()`` renders (what was signed)."""
        lines = text.split("\n")
        if len(lines) != len(_FIELDS) + 2 or lines[0] != STATEMENT_HEADER or lines[-1] != "":
            raise VerificationError(f"not an approval statement (expected {len(_FIELDS) + 1} lines starting with "
                                    f"{STATEMENT_HEADER!r}). Fix: make it with 'contract-extracts approve … "
                                    "--print-statement'")
        values = {}
        for line, name in zip(lines[1:-1], _FIELDS, strict=True):
            prefix = f"{name}: "
            if not line.startswith(prefix):
                raise VerificationError(f"approval statement: expected the line '{name}: …'")
            values[name] = line[len(prefix):]
        statement = cls(contract=values["contract"], content_sha256=values["content-sha256"],
                        approver=values["approver"], role=values["role"], signed_at=values["signed-at"])
        try:
            if _normalise_time(statement.signed_at) != statement.signed_at:
                raise ValueError
        except ValueError:
            raise VerificationError("approval statement: signed-at must be an ISO 8601 UTC time like "
                                    "2026-11-25T09:12:03.123456+00:00") from None
        if (not re.fullmatch(CONTRACT_ID, statement.contract) or not NAME_PATTERN.match(statement.approver)
                or statement.role not in ROLES or not re.fullmatch(r"[0-9a-f]{64}", statement.content_sha256)):
            raise VerificationError("approval statement: a field has a value that is not allowed (contract id, "
                                    "64 hex digits, registered approver name, known role)")
        if statement.text() != text:
            raise VerificationError("approval statement is not in its canonical form")
        return statement


# --------------------------------------------------------------------------------------------------
# Assessing the approvals of one contract
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApprovalView:
    """One ``contract_approved`` record, judged against the current contract and registry."""

    seq: int
    at: str
    actor: str
    approver: str
    role: str
    content_sha256: str
    fingerprint: str
    note: str | None
    signature_ok: bool  # registered key, right role, signature verifies, not withdrawn
    problem: str | None  # why it does not count (None when it counts or only the content differs)
    current: bool  # approves the contract's current content
    changes: tuple[str, ...] = ()  # what changed since (when not current)
    recipients_changed: str | None = None
    parts: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def counts(self) -> bool:
        return self.signature_ok and self.current

    def summary(self) -> dict[str, Any]:
        return {"seq": self.seq, "approver": self.approver, "role": self.role, "fingerprint": self.fingerprint}


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


def assess(contract: Contract, registry: Registry, ledger: Ledger) -> Assessment:
    """Judge every approval of ``contract`` recorded in ``ledger`` against its current content."""
    records = [*ledger.records(contract=contract.contract, action=APPROVED),
               *ledger.records(contract=contract.contract, action=REVOKED)]
    return assess_records(contract, registry, sorted(records, key=lambda r: r.seq), registry_history(ledger))


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
    try:
        d = record.details_obj()
        statement = Statement(contract=contract_id, content_sha256=str(d["content_sha256"]),
                              approver=str(d["approver"]), role=str(d["role"]), signed_at=str(d["signed_at"]))
        signature, fingerprint = str(d["signature"]), str(d["fingerprint"])
        approved_parts = d.get("parts") if isinstance(d.get("parts"), dict) else {}
        approved_recipients = d.get("recipients") if isinstance(d.get("recipients"), dict) else {}
        note = d.get("note") if isinstance(d.get("note"), str) else None
    except (KeyError, TypeError, ValueError):
        return ApprovalView(seq=record.seq, at=record.at, actor=record.actor, approver="?", role="?",
                            content_sha256="?", fingerprint="?", note=None, signature_ok=False,
                            problem="the approval record is malformed", current=False)
    problem = _problem(record, statement, signature, fingerprint, registry, history, revocations)
    current = statement.content_sha256 == digest
    changes: tuple[str, ...] = ()
    recipients_changed = None
    if not current:
        changes = tuple(describe_changes(approved_parts, parts)) or ("the content (details not recorded)",)
        if "recipients" in changed_keys(approved_parts, parts):
            recipients_changed = describe_recipient_changes(approved_recipients, recipients)
    return ApprovalView(seq=record.seq, at=record.at, actor=record.actor, approver=statement.approver,
                        role=statement.role, content_sha256=statement.content_sha256, fingerprint=fingerprint,
                        note=note, signature_ok=problem is None, problem=problem, current=current,
                        changes=changes, recipients_changed=recipients_changed, parts=approved_parts)


def _problem(record: LedgerRecord, statement: Statement, signature: str, fingerprint: str, registry: Registry,
             history: list[RegistryState], revocations: list[LedgerRecord]) -> str | None:
    """Why this approval does not count (ignoring whether it covers the current content), or None."""
    name = statement.approver
    approver = registry.get(name)
    if approver is None:
        return f"{name} is not in the approver registry"
    if approver.role != statement.role:
        return f"{name} is registered as {approver.role}, but approved as {statement.role}"
    if approver.fingerprint != fingerprint:
        return f"signed with key {fingerprint}, but the registry lists {approver.fingerprint} for {name}"
    state = state_before(history, record.seq)
    if state is None or state.approvers.get(name) != (approver.role, approver.fingerprint):
        return (f"{name}'s key ({approver.role}) was not in the registry recorded in the ledger when the approval "
                "was recorded (registered later)")
    try:
        signed_at = _normalise_time(statement.signed_at)
        recorded_at = dt.datetime.fromisoformat(record.at)
    except ValueError:
        return "the approval's signed-at time is not valid"
    if dt.datetime.fromisoformat(signed_at) > recorded_at + CLOCK_SKEW:
        return "the statement is dated after the record (signed-at in the future)"
    try:
        sshsig.verify(signature, statement.message(), approver.key)
    except VerificationError as exc:
        return str(exc)
    for revocation in revocations:
        try:
            r = revocation.details_obj()
        except ValueError:
            continue
        if r.get("approver") not in (None, name):
            continue
        if revocation.seq > record.seq or signed_at <= revocation.at:
            why = f" ({r['reason']})" if isinstance(r.get("reason"), str) and r.get("reason") else ""
            return f"withdrawn by record #{revocation.seq}{why}"
    return None


def refusal(contract: Contract, assessment: Assessment) -> str | None:
    """Why the gate refuses ``contract`` on its approvals, or None when they suffice."""
    c = contract.contract
    counting = assessment.counting
    short = assessment.content_sha256[:12]
    fix = (f"Fix: an approver reviews the contract and runs 'contract-extracts approve {c} --by NAME --role ROLE "
           "--key KEY' (see 'contract-extracts status " + c + "')")
    if not counting:
        signed = [v for v in assessment.approvals if v.signature_ok and not v.current]
        if signed:
            latest = signed[0]
            if latest.recipients_changed is not None:
                return (f"contract {c}: the recipient list changed since approval #{latest.seq} by {latest.approver} "
                        f"({latest.recipients_changed}); the content needs a new approval. {fix}")
            return (f"contract {c} changed since approval #{latest.seq} by {latest.approver}: "
                    f"{'; '.join(latest.changes)}. Every change needs a new approval. {fix}")
        invalid = [v for v in assessment.approvals if not v.signature_ok]
        if invalid:
            problems = "; ".join(f"#{v.seq} by {v.approver}: {v.problem}" for v in invalid[:5])
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
                   signed_at: str | None = None) -> Statement:
    """The statement ``approver`` signs for ``contract``'s current content (checks name and role)."""
    entry = registry.get(approver)
    if entry is None:
        known = ", ".join(a.name for a in registry.approvers) or "none"
        raise AuthorisationError(f"{approver!r} is not in the approver registry {registry.path} (registered: {known}). "
                                 "Fix: register the approver's public key there first (the change is recorded)")
    if role != entry.role:
        raise AuthorisationError(f"{approver} is registered as {entry.role}, not {role}. Fix: use --role {entry.role}")
    return Statement(contract=contract.contract, content_sha256=content_hash(contract), approver=approver,
                     role=role, signed_at=signed_at or _now())


def approve(*, contract: Contract, registry: Registry, ledger: Ledger, approver: str, role: str, actor: str,
            note: str | None = None, private_key: Ed25519PrivateKey | None = None,
            statement: Statement | None = None, signature: str | None = None,
            contract_file: Path | None = None) -> LedgerRecord:
    """Sign (or take a signature of) the approval statement, check it, and record it in the ledger."""
    expected = make_statement(contract, registry, approver, role)
    entry = registry.get(approver)
    assert entry is not None
    if private_key is not None:
        if sshsig.ApproverKey(private_key.public_key()) != entry.key:
            raise KeyError_(f"this private key ({sshsig.ApproverKey(private_key.public_key()).fingerprint}) is not "
                            f"{approver}'s registered key ({entry.fingerprint})")
        statement = expected
        signature = sshsig.sign(private_key, statement.message())
    elif statement is None or signature is None:
        raise AuthorisationError("an approval needs a private key, or a statement and its signature")
    else:
        if (statement.contract, statement.approver, statement.role) != (expected.contract, approver, role):
            raise AuthorisationError("the statement names another contract, approver or role than this command")
        if statement.content_sha256 != expected.content_sha256:
            raise AuthorisationError(f"the statement approves content sha256 {statement.content_sha256[:12]}…, but "
                                     f"{contract.contract} now has {expected.content_sha256[:12]}…: the contract "
                                     "changed after the statement was made. Fix: review it and sign a new statement")
        if dt.datetime.fromisoformat(statement.signed_at) > dt.datetime.now(dt.UTC) + CLOCK_SKEW:
            raise AuthorisationError("the statement is dated in the future. Fix: make a new one")
    try:
        sshsig.verify(signature, statement.message(), entry.key)
    except VerificationError as exc:
        raise AuthorisationError(f"approval signature refused: {exc}") from None
    for record in ledger.records(contract=contract.contract, action=REVOKED):
        who = record.details_obj().get("approver")
        if who in (None, approver) and statement.signed_at <= record.at:
            raise AuthorisationError(f"the statement was signed before approvals were withdrawn (record "
                                     f"#{record.seq}); it would not count. Fix: sign a new statement")
    sync_registry(ledger, registry, actor)
    return ledger.append(actor=actor, action=APPROVED, contract=contract.contract, delivery=None, details={
        "approver": approver,
        "role": role,
        "content_sha256": statement.content_sha256,
        "signed_at": statement.signed_at,
        "fingerprint": entry.fingerprint,
        "namespace": sshsig.APPROVAL_NAMESPACE,
        "signature": signature,
        "registry_sha256": registry.sha256,
        "parts": content_parts(contract),
        "recipients": recipient_digests(contract),
        "unmasked": [f"{u.dataset}.{u.column}" for u in contract.unmasked],
        "note": note,
        "contract_file": str(contract_file) if contract_file else None,
    })


def revoke(*, contract: Contract | None, contract_id: str, ledger: Ledger, actor: str, approver: str | None = None,
           reason: str | None = None, registry: Registry | None = None) -> LedgerRecord:
    """Withdraw the approvals of ``contract_id`` (of one approver, or all). Needs no signature: it only takes
    authority away."""
    withdrawn: list[int] = []
    if contract is not None and registry is not None:
        withdrawn = [v.seq for v in assess(contract, registry, ledger).approvals
                     if v.signature_ok and approver in (None, v.approver)]
    return ledger.append(actor=actor, action=REVOKED, contract=contract_id, delivery=None, details={
        "approver": approver, "reason": reason, "withdrawn": withdrawn})
