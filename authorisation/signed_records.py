"""Judging one signed approval record, whatever it approves (a contract or a source catalogue).

An approval counts only when the approver is in the current registry with the role and key it signed
with, that key was already recorded in the ledger's registry history when the approval was recorded,
the statement is not dated after its record, the SSHSIG signature verifies, and no later withdrawal
covers it. ``signature_problem`` says which of these fails, in words, or returns None.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Protocol

from audit.ledger import LedgerRecord
from authorisation import approver_keys
from authorisation.registry import Registry, RegistryState, state_before
from core.errors import VerificationError

CLOCK_SKEW = dt.timedelta(minutes=5)


class SignedStatement(Protocol):
    """What every approval statement has: who signed it, in which role, when, and the bytes signed."""

    @property
    def approver(self) -> str: ...

    @property
    def role(self) -> str: ...

    @property
    def signed_at(self) -> str: ...

    def message(self) -> bytes: ...


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


def normalise_time(value: str) -> str:
    moment = dt.datetime.fromisoformat(value)
    if moment.tzinfo is None:
        raise ValueError("signed-at needs a time zone")
    return moment.astimezone(dt.UTC).isoformat(timespec="microseconds")


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
