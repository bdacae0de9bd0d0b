"""Signed approvals of a source catalogue's exact content, their withdrawal, and their assessment.

A catalogue (``contracts.catalogue``) is approved exactly like a contract (docs/catalogue.md): its owner,
a registered Information Asset Manager, signs a short statement with their approver key (SSHSIG,
namespace ``contract-extracts-approval``)::

    contract-extracts catalogue approval v1
    catalogue: claims_db
    content-sha256: 3fa9…                     # Catalogue.content_sha256: the canonical form, not the YAML text
    approver: jane.doe
    role: information-asset-manager
    signed-at: 2026-11-25T09:12:03.123456+00:00

The first line differs from a contract's statement, so neither can stand for the other. The ledger gets a
``catalogue_approved`` record (``contract`` empty) holding the statement's fields, the signature, the
registry hash and the catalogue's whole canonical content (names, classes and descriptions, no data
values): contract approvals pin a catalogue hash, and the gate compares the classes pinned with the
current ones (``pinned_classes``, which re-checks that the recorded content hashes to the pin).
``catalogue_approval_revoked`` withdraws approvals of a catalogue.

A catalogue counts for runs when its current content has an approval that verifies and is by its
``owner``, registered as an Information Asset Manager.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit.ledger import Ledger, LedgerRecord
from authorisation import approver_keys
from authorisation.registry import (
    IAM_ROLE,
    NAME_PATTERN,
    ROLES,
    Registry,
    RegistryState,
    registry_history,
    sync_registry,
)
from authorisation.signed_records import CLOCK_SKEW, normalise_time, now, signature_problem
from contracts.base import CONN_ID
from contracts.catalogue import Catalogue, canonical_sha256
from core.errors import AuthorisationError, KeyMaterialError, VerificationError

CATALOGUE_APPROVED = "catalogue_approved"
CATALOGUE_REVOKED = "catalogue_approval_revoked"
STATEMENT_HEADER = "contract-extracts catalogue approval v1"
_FIELDS = ("catalogue", "content-sha256", "approver", "role", "signed-at")


@dataclass(frozen=True)
class CatalogueStatement:
    source: str
    content_sha256: str
    approver: str
    role: str
    signed_at: str

    def text(self) -> str:
        return (f"{STATEMENT_HEADER}\ncatalogue: {self.source}\ncontent-sha256: {self.content_sha256}\n"
                f"approver: {self.approver}\nrole: {self.role}\nsigned-at: {self.signed_at}\n")

    def message(self) -> bytes:
        return self.text().encode("utf-8")

    @classmethod
    def parse(cls, text: str) -> CatalogueStatement:
        """Read a statement file; it must be exactly what ``text()`` renders (what was signed)."""
        lines = text.split("\n")
        if len(lines) != len(_FIELDS) + 2 or lines[0] != STATEMENT_HEADER or lines[-1] != "":
            raise VerificationError(f"not a catalogue approval statement (expected {len(_FIELDS) + 1} lines "
                                    f"starting with {STATEMENT_HEADER!r}). Fix: make it with 'contract-extracts "
                                    "approve CATALOGUE.yaml … --print-statement'")
        values = {}
        for line, name in zip(lines[1:-1], _FIELDS, strict=True):
            prefix = f"{name}: "
            if not line.startswith(prefix):
                raise VerificationError(f"catalogue approval statement: expected the line '{name}: …'")
            values[name] = line[len(prefix):]
        statement = cls(source=values["catalogue"], content_sha256=values["content-sha256"],
                        approver=values["approver"], role=values["role"], signed_at=values["signed-at"])
        try:
            if normalise_time(statement.signed_at) != statement.signed_at:
                raise ValueError
        except ValueError:
            raise VerificationError("catalogue approval statement: signed-at must be an ISO 8601 UTC time like "
                                    "2026-11-25T09:12:03.123456+00:00") from None
        if (not re.fullmatch(CONN_ID, statement.source) or not NAME_PATTERN.match(statement.approver)
                or statement.role not in ROLES or not re.fullmatch(r"[0-9a-f]{64}", statement.content_sha256)):
            raise VerificationError("catalogue approval statement: a field has a value that is not allowed")
        if statement.text() != text:
            raise VerificationError("catalogue approval statement is not in its canonical form")
        return statement


@dataclass(frozen=True)
class CatalogueApprovalView:
    """One ``catalogue_approved`` record, judged against the current catalogue and registry."""

    seq: int
    at: str
    approver: str
    role: str
    content_sha256: str
    fingerprint: str
    signature_ok: bool
    problem: str | None
    current: bool
    note: str | None = None

    @property
    def counts(self) -> bool:
        return self.signature_ok and self.current

    def summary(self) -> dict[str, Any]:
        return {"seq": self.seq, "approver": self.approver, "role": self.role, "fingerprint": self.fingerprint}


@dataclass(frozen=True)
class CatalogueAssessment:
    source: str
    content_sha256: str
    owner: str
    approvals: tuple[CatalogueApprovalView, ...]  # newest first

    @property
    def counting(self) -> list[CatalogueApprovalView]:
        return [v for v in self.approvals if v.counts]


def _records(ledger: Ledger, action: str, source: str) -> list[LedgerRecord]:
    out = []
    for record in ledger.records(action=action):
        try:
            if record.details_obj().get("catalogue") == source:
                out.append(record)
        except ValueError:
            continue
    return out


def assess_catalogue(catalogue: Catalogue, registry: Registry, ledger: Ledger) -> CatalogueAssessment:
    """Judge every approval of ``catalogue`` recorded in ``ledger`` against its current content."""
    history = registry_history(ledger)
    revocations = _records(ledger, CATALOGUE_REVOKED, catalogue.source)
    digest = catalogue.content_sha256
    views = [_view(r, catalogue, digest, registry, history, revocations)
             for r in _records(ledger, CATALOGUE_APPROVED, catalogue.source)]
    views.sort(key=lambda v: v.seq, reverse=True)
    return CatalogueAssessment(source=catalogue.source, content_sha256=digest, owner=catalogue.owner,
                               approvals=tuple(views))


def _view(record: LedgerRecord, catalogue: Catalogue, digest: str, registry: Registry, history: list[RegistryState],
          revocations: list[LedgerRecord]) -> CatalogueApprovalView:
    try:
        d = record.details_obj()
        statement = CatalogueStatement(source=catalogue.source, content_sha256=str(d["content_sha256"]),
                                       approver=str(d["approver"]), role=str(d["role"]),
                                       signed_at=str(d["signed_at"]))
        signature, fingerprint = str(d["signature"]), str(d["fingerprint"])
        note = d.get("note") if isinstance(d.get("note"), str) else None
    except (KeyError, TypeError, ValueError):
        return CatalogueApprovalView(seq=record.seq, at=record.at, approver="?", role="?", content_sha256="?",
                                     fingerprint="?", signature_ok=False, problem="the approval record is malformed",
                                     current=False)
    problem = signature_problem(record, statement, signature, fingerprint, registry, history, revocations)
    if problem is None and statement.approver != catalogue.owner:
        problem = f"{statement.approver} is not the catalogue's owner ({catalogue.owner})"
    if problem is None and statement.role != IAM_ROLE:
        problem = f"a catalogue is approved by its owner as {ROLES[IAM_ROLE]}, not as {statement.role}"
    return CatalogueApprovalView(seq=record.seq, at=record.at, approver=statement.approver, role=statement.role,
                                 content_sha256=statement.content_sha256, fingerprint=fingerprint,
                                 signature_ok=problem is None, problem=problem,
                                 current=statement.content_sha256 == digest, note=note)


def catalogue_refusal(catalogue: Catalogue, assessment: CatalogueAssessment) -> str | None:
    """Why no contract may read the catalogue's source now (its approvals), or None when it is approved."""
    if assessment.counting:
        return None
    source, short = catalogue.source, assessment.content_sha256[:12]
    fix = (f"Fix: the owner {catalogue.owner} reviews configs/sources/{source}.yaml and runs 'contract-extracts "
           f"approve configs/sources/{source}.yaml --by {catalogue.owner} --role {IAM_ROLE} --key KEY'")
    stale = [v for v in assessment.approvals if v.signature_ok and not v.current]
    if stale:
        return (f"the source catalogue {source} changed since approval #{stale[0].seq} by {stale[0].approver} (now "
                f"sha256 {short}…); every catalogue change needs its owner's approval. {fix}")
    invalid = [v for v in assessment.approvals if not v.signature_ok]
    if invalid:
        problems = "; ".join(f"#{v.seq} by {v.approver}: {v.problem}" for v in invalid[:5])
        return f"the source catalogue {source} has no valid approval of its current content: {problems}. {fix}"
    return f"the source catalogue {source} has no approval of its current content (sha256 {short}…). {fix}"


def make_catalogue_statement(catalogue: Catalogue, registry: Registry, approver: str, role: str,
                             signed_at: str | None = None) -> CatalogueStatement:
    """The statement ``approver`` signs for the catalogue's current content (checks owner, name and role)."""
    entry = registry.get(approver)
    if entry is None:
        known = ", ".join(a.name for a in registry.approvers) or "none"
        raise AuthorisationError(f"{approver!r} is not in the approver registry {registry.path} (registered: {known}). "
                                 "Fix: register the approver's public key there first (the change is recorded)")
    if role != entry.role:
        raise AuthorisationError(f"{approver} is registered as {entry.role}, not {role}. Fix: use --role {entry.role}")
    if approver != catalogue.owner:
        raise AuthorisationError(f"the source catalogue {catalogue.source} is owned by {catalogue.owner}; only its "
                                 f"owner approves it. Fix: {catalogue.owner} approves it, or the catalogue names its "
                                 "new owner (a change the new owner approves)")
    if role != IAM_ROLE:
        raise AuthorisationError(f"a source catalogue is approved by an {ROLES[IAM_ROLE]}; {approver} is registered as "
                                 f"{entry.role}. Fix: the catalogue's owner must be registered with role {IAM_ROLE}")
    return CatalogueStatement(source=catalogue.source, content_sha256=catalogue.content_sha256, approver=approver,
                              role=role, signed_at=signed_at or now())


def approve_catalogue(*, catalogue: Catalogue, registry: Registry, ledger: Ledger, approver: str, role: str,
                      actor: str, note: str | None = None, private_key: Ed25519PrivateKey | None = None,
                      statement: CatalogueStatement | None = None, signature: str | None = None,
                      catalogue_file: Path | None = None) -> LedgerRecord:
    """Sign (or take a signature of) the catalogue's statement, check it, and record it in the ledger."""
    expected = make_catalogue_statement(catalogue, registry, approver, role)
    entry = registry.get(approver)
    assert entry is not None
    if private_key is not None:
        offered = approver_keys.ApproverKey(private_key.public_key())
        if offered != entry.key:
            raise KeyMaterialError(f"this private key ({offered.fingerprint}) is not {approver}'s registered key "
                                   f"({entry.fingerprint})")
        statement = expected
        signature = approver_keys.sign(private_key, statement.message())
    elif statement is None or signature is None:
        raise AuthorisationError("an approval needs a private key, or a statement and its signature")
    else:
        if (statement.source, statement.approver, statement.role) != (catalogue.source, approver, role):
            raise AuthorisationError("the statement names another catalogue, approver or role than this command")
        if statement.content_sha256 != expected.content_sha256:
            raise AuthorisationError(f"the statement approves content sha256 {statement.content_sha256[:12]}…, but the "
                                     f"catalogue {catalogue.source} now has {expected.content_sha256[:12]}…. Fix: "
                                     "review it and sign a new statement")
        if dt.datetime.fromisoformat(statement.signed_at) > dt.datetime.now(dt.UTC) + CLOCK_SKEW:
            raise AuthorisationError("the statement is dated in the future. Fix: make a new one")
    try:
        approver_keys.verify(signature, statement.message(), entry.key)
    except VerificationError as exc:
        raise AuthorisationError(f"approval signature refused: {exc}") from None
    for record in _records(ledger, CATALOGUE_REVOKED, catalogue.source):
        who = record.details_obj().get("approver")
        if who in (None, approver) and statement.signed_at <= record.at:
            raise AuthorisationError(f"the statement was signed before approvals were withdrawn (record "
                                     f"#{record.seq}); it would not count. Fix: sign a new statement")
    sync_registry(ledger, registry, actor)
    return ledger.append(actor=actor, action=CATALOGUE_APPROVED, contract=None, delivery=None, details={
        "catalogue": catalogue.source,
        "approver": approver,
        "role": role,
        "content_sha256": statement.content_sha256,
        "signed_at": statement.signed_at,
        "fingerprint": entry.fingerprint,
        "namespace": approver_keys.APPROVAL_NAMESPACE,
        "signature": signature,
        "registry_sha256": registry.sha256,
        "owner": catalogue.owner,
        # The whole approved content (no data values: names, classes, descriptions): contract approvals pin its
        # hash, and the gate compares the classes pinned with today's (pinned_classes re-checks the hash).
        "content": catalogue.canonical(),
        "note": note,
        "catalogue_file": str(catalogue_file) if catalogue_file else None,
    })


def revoke_catalogue(*, source: str, ledger: Ledger, actor: str, approver: str | None = None,
                     reason: str | None = None, catalogue: Catalogue | None = None,
                     registry: Registry | None = None) -> LedgerRecord:
    """Withdraw the approvals of the catalogue of ``source`` (of one approver, or all): every contract reading
    that source is refused until the owner approves it again."""
    withdrawn: list[int] = []
    if catalogue is not None and registry is not None:
        withdrawn = [v.seq for v in assess_catalogue(catalogue, registry, ledger).approvals
                     if v.signature_ok and approver in (None, v.approver)]
    return ledger.append(actor=actor, action=CATALOGUE_REVOKED, contract=None, delivery=None, details={
        "catalogue": source, "approver": approver, "reason": reason, "withdrawn": withdrawn})


def pinned_classes(ledger: Ledger, source: str, content_sha256: str) -> dict[str, dict[str, str]] | None:
    """The classes of the catalogue content ``content_sha256``, from an approval record whose recorded content
    hashes to it (so a forged record cannot stand in); None when no such record exists."""
    for record in reversed(_records(ledger, CATALOGUE_APPROVED, source)):
        try:
            content = record.details_obj().get("content")
            if not isinstance(content, dict) or canonical_sha256(content) != content_sha256:
                continue
            return Catalogue.from_canonical(content).classes()
        except ValueError:
            continue
    return None
