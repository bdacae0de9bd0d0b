"""The machinery every signed approval shares, whatever it approves (a contract or a source catalogue).

An approval is a short statement (a first line naming its kind, then ``name: value`` lines for the subject,
its content hash, the approver, their role and the signing time), signed with the approver's registered
key and recorded in the ledger with the signature. ``StatementForm`` renders and reads one kind of
statement; ``record_approval`` signs or checks one and records it; ``judge_record`` reads a record back
and judges it.

An approval counts only when the approver is in the current registry with the role and key it signed
with, that key was already recorded in the ledger's registry history when the approval was recorded,
the statement is not dated after its record, the SSHSIG signature verifies, and no later withdrawal
covers it. ``signature_problem`` says which of these fails, in words, or returns None.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, Self, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit.ledger import Ledger, LedgerRecord
from authorisation import approver_keys
from authorisation.registry import (
    NAME_PATTERN,
    ROLES,
    Approver,
    Registry,
    RegistryState,
    state_before,
    sync_registry,
)
from core.errors import AuthorisationError, KeyMaterialError, VerificationError

CLOCK_SKEW = dt.timedelta(minutes=5)
_SHA256 = re.compile(r"[0-9a-f]{64}")


class SignedStatement(Protocol):
    """What every approval statement has: who signed it, in which role, when, the content hash it approves, and
    the bytes signed."""

    @property
    def approver(self) -> str: ...

    @property
    def role(self) -> str: ...

    @property
    def signed_at(self) -> str: ...

    @property
    def content_sha256(self) -> str: ...

    def message(self) -> bytes: ...


StatementT = TypeVar("StatementT", bound=SignedStatement)


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


def normalise_time(value: str) -> str:
    moment = dt.datetime.fromisoformat(value)
    if moment.tzinfo is None:
        raise ValueError("signed-at needs a time zone")
    return moment.astimezone(dt.UTC).isoformat(timespec="microseconds")


# --------------------------------------------------------------------------------------------------
# The statement's text
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StatementForm:
    """One kind of statement: its first line and its field lines, in order (the text is what is signed)."""

    header: str
    fields: tuple[str, ...]  # the subject's field first; every field ending in "-sha256" holds 64 hex digits
    subject_pattern: str  # what the subject's value must fully match
    kind: str  # how messages name it, e.g. "approval statement"
    make_with: str  # the command that prints one
    allowed: str = ""  # the allowed values in words, for the message refusing one ("" says nothing more)

    def render(self, values: Sequence[str]) -> str:
        return self.header + "\n" + "".join(f"{name}: {value}\n"
                                            for name, value in zip(self.fields, values, strict=True))


def read_statement(text: str, forms: Sequence[StatementForm]) -> dict[str, str]:
    """The field values of ``text``, which must be exactly what one of ``forms`` renders (picked by its first
    line; the first form is the current one, the one messages describe)."""
    current = forms[0]
    lines = text.split("\n")
    form = next((f for f in forms if lines[0] == f.header), current)
    article = "an" if current.kind[0] in "aeiou" else "a"
    if len(lines) != len(form.fields) + 2 or lines[0] != form.header or lines[-1] != "":
        raise VerificationError(f"not {article} {current.kind} (expected {len(current.fields) + 1} lines starting "
                                f"with {current.header!r}). Fix: make it with '{current.make_with}'")
    values = {}
    for line, name in zip(lines[1:-1], form.fields, strict=True):
        prefix = f"{name}: "
        if not line.startswith(prefix):
            raise VerificationError(f"{form.kind}: expected the line '{name}: …'")
        values[name] = line[len(prefix):]
    try:
        if normalise_time(values["signed-at"]) != values["signed-at"]:
            raise ValueError
    except ValueError:
        raise VerificationError(f"{form.kind}: signed-at must be an ISO 8601 UTC time like "
                                "2026-11-25T09:12:03.123456+00:00") from None
    hashes = [value for name, value in values.items() if name.endswith("-sha256")]
    if (not re.fullmatch(form.subject_pattern, values[form.fields[0]]) or not NAME_PATTERN.match(values["approver"])
            or values["role"] not in ROLES or not all(_SHA256.fullmatch(h) for h in hashes)):
        raise VerificationError(f"{form.kind}: a field has a value that is not allowed"
                                + (f" ({form.allowed})" if form.allowed else ""))
    if form.render(list(values.values())) != text:
        raise VerificationError(f"{form.kind} is not in its canonical form")
    return values


# --------------------------------------------------------------------------------------------------
# Making an approval record
# --------------------------------------------------------------------------------------------------


def registered_approver(registry: Registry, approver: str, role: str) -> Approver:
    """The registry's entry of ``approver``, who must be registered with ``role``."""
    entry = registry.get(approver)
    if entry is None:
        known = ", ".join(a.name for a in registry.approvers) or "none"
        raise AuthorisationError(f"{approver!r} is not in the approver registry {registry.path} (registered: {known}). "
                                 "Fix: register the approver's public key there first (the change is recorded)")
    if role != entry.role:
        raise AuthorisationError(f"{approver} is registered as {entry.role}, not {role}. Fix: use --role {entry.role}")
    return entry


def record_approval(ledger: Ledger, registry: Registry, expected: StatementT, *, action: str, contract: str | None,
                    actor: str, private_key: Ed25519PrivateKey | None, statement: StatementT | None,
                    signature: str | None, mismatch: Callable[[StatementT], str | None],
                    revocations: Sequence[LedgerRecord], details: dict[str, Any]) -> LedgerRecord:
    """Sign (or take a signature of) the approval statement, check it, and record it in the ledger as ``action``
    with the statement's fields, the signature and what checks it, and the subject's ``details``.

    ``expected``: the statement this command makes; ``mismatch`` says why a given ``statement`` is not it (or
    None); ``revocations``: the withdrawals of approvals of the same subject.
    """
    entry = registered_approver(registry, expected.approver, expected.role)
    statement, signature = _sign_or_check(expected, entry, private_key=private_key, statement=statement,
                                          signature=signature, mismatch=mismatch)
    _check_not_withdrawn(statement, revocations)
    sync_registry(ledger, registry, actor)
    # The ledger writes details with sorted keys, so the subject's details may come after the common ones.
    return ledger.append(actor=actor, action=action, contract=contract, delivery=None, details={
        "approver": statement.approver,
        "role": statement.role,
        "content_sha256": statement.content_sha256,
        "signed_at": statement.signed_at,
        "fingerprint": entry.fingerprint,
        "namespace": approver_keys.APPROVAL_NAMESPACE,
        "signature": signature,
        "registry_sha256": registry.sha256,
        **details,
    })


def _sign_or_check(expected: StatementT, entry: Approver, *, private_key: Ed25519PrivateKey | None,
                   statement: StatementT | None, signature: str | None,
                   mismatch: Callable[[StatementT], str | None]) -> tuple[StatementT, str]:
    """The statement to record and its signature, verified against ``entry``'s registered key: ``expected``
    signed here with ``private_key``, or a given statement and signature (``mismatch`` says why it is not the
    statement this command expects, or None; it must not be dated in the future)."""
    if private_key is not None:
        offered = approver_keys.ApproverKey(private_key.public_key())
        if offered != entry.key:
            raise KeyMaterialError(f"this private key ({offered.fingerprint}) is not {entry.name}'s registered key "
                                   f"({entry.fingerprint})")
        statement = expected
        signature = approver_keys.sign(private_key, statement.message())
    elif statement is None or signature is None:
        raise AuthorisationError("an approval needs a private key, or a statement and its signature")
    else:
        problem = mismatch(statement)
        if problem is not None:
            raise AuthorisationError(problem)
        if dt.datetime.fromisoformat(statement.signed_at) > dt.datetime.now(dt.UTC) + CLOCK_SKEW:
            raise AuthorisationError("the statement is dated in the future. Fix: make a new one")
    try:
        approver_keys.verify(signature, statement.message(), entry.key)
    except VerificationError as exc:
        raise AuthorisationError(f"approval signature refused: {exc}") from None
    return statement, signature


def _check_not_withdrawn(statement: SignedStatement, revocations: Sequence[LedgerRecord]) -> None:
    """Refuse a statement signed before a withdrawal that covers its approver: it would never count."""
    for record in revocations:
        who = record.details_obj().get("approver")
        if who in (None, statement.approver) and statement.signed_at <= record.at:
            raise AuthorisationError(f"the statement was signed before approvals were withdrawn (record "
                                     f"#{record.seq}); it would not count. Fix: sign a new statement")


def withdrawn_approvals(views: Sequence[SignedApprovalView], approver: str | None) -> list[int]:
    """The records of the approvals a withdrawal of ``approver``'s (None: everyone's) approvals takes back."""
    return [v.seq for v in views if v.signature_ok and approver in (None, v.approver)]


# --------------------------------------------------------------------------------------------------
# Judging an approval record
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SignedApprovalView:
    """One approval record, judged against the current registry (and its subject's current content)."""

    seq: int
    at: str
    approver: str
    role: str
    content_sha256: str
    fingerprint: str
    signature_ok: bool  # registered key, right role, signature verifies, not withdrawn
    problem: str | None  # why it does not count (None when it counts or only the content differs)
    current: bool  # approves the subject's current content
    note: str | None = None

    @classmethod
    def malformed(cls, record: LedgerRecord, **fields: Any) -> Self:
        return cls(seq=record.seq, at=record.at, approver="?", role="?", content_sha256="?", fingerprint="?",
                   signature_ok=False, problem="the approval record is malformed", current=False, **fields)

    def summary(self) -> dict[str, Any]:
        return {"seq": self.seq, "approver": self.approver, "role": self.role, "fingerprint": self.fingerprint}


@dataclass(frozen=True)
class RecordedApproval(Generic[StatementT]):
    """What an approval record holds, read back, and why its signature does not count (None when it does)."""

    statement: StatementT
    fingerprint: str
    note: str | None
    details: dict[str, Any]
    problem: str | None


def judge_record(record: LedgerRecord, statement_of: Callable[[dict[str, Any]], StatementT], registry: Registry,
                 history: list[RegistryState],
                 revocations: Sequence[LedgerRecord]) -> RecordedApproval[StatementT] | None:
    """Read an approval record (``statement_of`` rebuilds its statement from the details) and judge its
    signature; None when the record is malformed."""
    try:
        details = record.details_obj()
        statement = statement_of(details)
        signature, fingerprint = str(details["signature"]), str(details["fingerprint"])
    except (KeyError, TypeError, ValueError):
        return None
    note = details.get("note") if isinstance(details.get("note"), str) else None
    problem = signature_problem(record, statement, signature, fingerprint, registry, history, revocations)
    return RecordedApproval(statement=statement, fingerprint=fingerprint, note=note, details=details, problem=problem)


def invalid_approvals(views: Sequence[SignedApprovalView]) -> str | None:
    """The problems of the first five approvals whose signature does not count, or None when there are none."""
    invalid = [v for v in views if not v.signature_ok]
    return "; ".join(f"#{v.seq} by {v.approver}: {v.problem}" for v in invalid[:5]) if invalid else None


def signature_problem(record: LedgerRecord, statement: SignedStatement, signature: str, fingerprint: str,
                      registry: Registry, history: list[RegistryState],
                      revocations: Sequence[LedgerRecord]) -> str | None:
    """Why this approval does not count (ignoring whether it covers the current content), or None.

    ``revocations``: the withdrawal records that may cover it (of the same contract or catalogue).
    """
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
        signed_at = normalise_time(statement.signed_at)
        recorded_at = dt.datetime.fromisoformat(record.at)
    except ValueError:
        return "the approval's signed-at time is not valid"
    if dt.datetime.fromisoformat(signed_at) > recorded_at + CLOCK_SKEW:
        return "the statement is dated after the record (signed-at in the future)"
    try:
        approver_keys.verify(signature, statement.message(), approver.key)
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
