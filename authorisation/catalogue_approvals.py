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

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit.ledger import Ledger, LedgerRecord
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
from contracts.base import CONN_ID
from contracts.catalogue import Catalogue, canonical_sha256
from core.errors import AuthorisationError

CATALOGUE_APPROVED = "catalogue_approved"
CATALOGUE_REVOKED = "catalogue_approval_revoked"
STATEMENT_HEADER = "contract-extracts catalogue approval v1"
FORM = StatementForm(header=STATEMENT_HEADER,
                     fields=("catalogue", "content-sha256", "approver", "role", "signed-at"),
                     subject_pattern=CONN_ID, kind="catalogue approval statement",
                     make_with="contract-extracts approve CATALOGUE.yaml … --print-statement")


@dataclass(frozen=True)
class CatalogueStatement:
    source: str
    content_sha256: str
    approver: str
    role: str
    signed_at: str

    def text(self) -> str:
        return FORM.render((self.source, self.content_sha256, self.approver, self.role, self.signed_at))

    def message(self) -> bytes:
        return self.text().encode("utf-8")

    @classmethod
    def parse(cls, text: str) -> CatalogueStatement:
        """Read a statement file; it must be exactly what ``text()`` renders (what was signed)."""
        values = read_statement(text, [FORM])
        return cls(source=values["catalogue"], content_sha256=values["content-sha256"],
                   approver=values["approver"], role=values["role"], signed_at=values["signed-at"])


@dataclass(frozen=True, kw_only=True)
class CatalogueApprovalView(SignedApprovalView):
    """One ``catalogue_approved`` record, judged against the current catalogue and registry."""

    @property
    def counts(self) -> bool:
        return self.signature_ok and self.current


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
    def statement_of(d: dict[str, Any]) -> CatalogueStatement:
        return CatalogueStatement(source=catalogue.source, content_sha256=str(d["content_sha256"]),
                                  approver=str(d["approver"]), role=str(d["role"]), signed_at=str(d["signed_at"]))

    recorded = judge_record(record, statement_of, registry, history, revocations)
    if recorded is None:
        return CatalogueApprovalView.malformed(record)
    statement, problem = recorded.statement, recorded.problem
    if problem is None and statement.approver != catalogue.owner:
        problem = f"{statement.approver} is not the catalogue's owner ({catalogue.owner})"
    if problem is None and statement.role != IAM_ROLE:
        problem = f"a catalogue is approved by its owner as {ROLES[IAM_ROLE]}, not as {statement.role}"
    return CatalogueApprovalView(seq=record.seq, at=record.at, approver=statement.approver, role=statement.role,
                                 content_sha256=statement.content_sha256, fingerprint=recorded.fingerprint,
                                 signature_ok=problem is None, problem=problem,
                                 current=statement.content_sha256 == digest, note=recorded.note)


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
    problems = invalid_approvals(assessment.approvals)
    if problems:
        return f"the source catalogue {source} has no valid approval of its current content: {problems}. {fix}"
    return f"the source catalogue {source} has no approval of its current content (sha256 {short}…). {fix}"


def make_catalogue_statement(catalogue: Catalogue, registry: Registry, approver: str, role: str,
                             signed_at: str | None = None) -> CatalogueStatement:
    """The statement ``approver`` signs for the catalogue's current content (checks owner, name and role)."""
    entry = registered_approver(registry, approver, role)
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

    def mismatch(given: CatalogueStatement) -> str | None:
        if (given.source, given.approver, given.role) != (catalogue.source, approver, role):
            return "the statement names another catalogue, approver or role than this command"
        if given.content_sha256 != expected.content_sha256:
            return (f"the statement approves content sha256 {given.content_sha256[:12]}…, but the catalogue "
                    f"{catalogue.source} now has {expected.content_sha256[:12]}…. Fix: review it and sign a new "
                    "statement")
        return None

    return record_approval(
        ledger, registry, expected, action=CATALOGUE_APPROVED, contract=None, actor=actor, private_key=private_key,
        statement=statement, signature=signature, mismatch=mismatch,
        revocations=_records(ledger, CATALOGUE_REVOKED, catalogue.source), details={
            "catalogue": catalogue.source,
            "owner": catalogue.owner,
            # The whole approved content (no data values: names, classes, descriptions): contract approvals pin
            # its hash, and the gate compares the classes pinned with today's (pinned_classes re-checks the hash).
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
        withdrawn = withdrawn_approvals(assess_catalogue(catalogue, registry, ledger).approvals, approver)
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
