"""What the "Contract deliveries" UI page shows, computed from the contract files and the audit ledger.

Plain Python (no Airflow import) so it is unit-testable on its own; ``ui.py`` renders it. Only
metadata ever leaves this module: contract attributes and treatments, ledger actions, counts, names,
hashes and paths. The ledger holds no data values by design, and nothing here reads a package or a
source.

Approval state comes from ``authorisation`` (the same ``assess``/``refusal`` the run's
gate uses: signatures checked against the approver registry, withdrawals applied), read-only: the UI
never records anything. Without a config folder to find the registry in, approval records are read as
they are; without any, a contract shows "no approval recorded".
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from audit.acknowledgements import acknowledged
from audit.ledger import Ledger, LedgerRecord, VerifyResult
from audit.opening import load_ledger_key
from authorisation.approvals import assess, refusal
from authorisation.catalogue_approvals import assess_catalogue, catalogue_refusal
from authorisation.registry import load_registry, registry_path
from contracts.catalogue import load_catalogue_for
from contracts.column_treatments import Treatment
from contracts.loading import content_hash, discover_contract_files, load_contract
from contracts.model import Contract
from core.errors import ConfigError, ContractExtractsError, value_free
from masking.column_plans import ColumnPlan, describe
from validation.operator_report import REPORT_INDEX, existing_report

EXPIRY_WARNING_DAYS = 30
RECENT_LIMIT = 25
APPROVAL_ACTIONS = ("contract_approved", "approved")
REVOCATION_ACTIONS = ("approval_revoked",)
# Keys an approval record may use for the content hash it covers (read defensively in the fallback).
_HASH_KEYS = ("content_sha256", "contract_hash", "content_hash", "hash", "sha256")
_VERIFY_CACHE_SECONDS = 60.0

OK, WARN, BAD, INFO = "ok", "warn", "bad", "info"
_SEVERITY = {BAD: 3, WARN: 2, INFO: 1, OK: 0}


# ---- value types handed to the templates ------------------------------------------------------------


@dataclass(frozen=True)
class Badge:
    label: str
    level: str  # ok | warn | bad | info
    title: str = ""


@dataclass(frozen=True)
class Approval:
    state: str  # approved | changed | incomplete | invalid | none
    label: str
    by: str | None = None
    role: str | None = None
    at: str | None = None
    approved_hash: str | None = None


@dataclass(frozen=True)
class DeliveryRow:
    at: str
    contract: str
    delivery: str
    rows: int | None
    datasets: list[dict[str, Any]]
    recipients: list[str]
    sha256: str
    transport: str
    path: str
    package: str
    dag_id: str | None = None
    run_id: str | None = None
    trigger: dict[str, Any] = field(default_factory=dict)
    acknowledged: list[str] = field(default_factory=list)  # recipients whose signed acknowledgement is recorded


@dataclass(frozen=True)
class BlockedRow:
    """A run that ended without a delivery: ``blocked`` (refused, failed) or ``skipped`` (by design)."""

    at: str
    contract: str | None
    delivery: str | None
    stage: str
    reason: str
    actor: str
    dag_id: str | None = None
    run_id: str | None = None
    trigger: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ContractRow:
    contract: Contract
    file: str
    digest: str
    badges: list[Badge]
    approval: Approval
    last_delivery: DeliveryRow | None

    @property
    def status(self) -> Badge:
        """The most severe badge: what the overview's status column shows first."""
        return max(self.badges, key=lambda b: _SEVERITY[b.level])


@dataclass(frozen=True)
class LedgerStatus:
    available: bool
    backend: str
    records: int = 0
    head_seq: int = 0
    head_hash: str = ""
    head_at: str | None = None
    ok: bool | None = None
    first_broken_seq: int | None = None
    reason: str | None = None
    checked_at: str | None = None
    note: str | None = None


@dataclass(frozen=True)
class Overview:
    contracts: list[ContractRow]
    broken_files: list[str]
    deliveries: list[DeliveryRow]
    blocked: list[BlockedRow]
    ledger: LedgerStatus
    generated_at: str
    skipped: list[BlockedRow] = field(default_factory=list)


@dataclass(frozen=True)
class ContractDetail:
    row: ContractRow
    approvals: list[LedgerRecord]
    deliveries: list[DeliveryRow]
    blocked: list[BlockedRow]
    ledger: LedgerStatus
    skipped: list[BlockedRow] = field(default_factory=list)


@dataclass(frozen=True)
class RunDetail:
    dag_id: str
    run_id: str
    contract: str | None
    delivery: str | None
    records: list[LedgerRecord]
    outcome: Badge
    trigger: dict[str, Any]
    ledger: LedgerStatus
    report: str | None = None  # the release-gate report's index page, when the run wrote one


# ---- contract status ------------------------------------------------------------------------------


def contract_badges(contract: Contract, approval: Approval, today: dt.date) -> list[Badge]:
    """Validity, security assurance and approval of one contract, as badges (worst first when sorted)."""
    badges: list[Badge] = []
    if today > contract.valid.until:
        badges.append(Badge("expired", BAD, f"the contract ended on {contract.valid.until.isoformat()}"))
    elif today < contract.valid.from_:
        badges.append(Badge("not yet valid", WARN, f"the contract starts on {contract.valid.from_.isoformat()}"))
    sa = contract.security_assurance
    left = (sa.expires - today).days
    if left < 0:
        badges.append(Badge("assurance expired", BAD, f"{sa.framework} {sa.reference} expired on "
                                                      f"{sa.expires.isoformat()}"))
    elif left <= EXPIRY_WARNING_DAYS:
        badges.append(Badge(f"assurance expires in {left} day{'s' if left != 1 else ''}", WARN,
                            f"{sa.framework} {sa.reference} expires on {sa.expires.isoformat()}"))
    if approval.state == "approved":
        badges.append(Badge("approved", OK, approval.label))
    elif approval.state == "changed":
        badges.append(Badge("changed since approval", BAD, approval.label))
    elif approval.state == "incomplete":
        badges.append(Badge("needs another approval", BAD, approval.label))
    elif approval.state == "invalid":
        badges.append(Badge("approval not valid", BAD, approval.label))
    else:
        badges.append(Badge("no approval recorded", WARN, approval.label))
    return sorted(badges, key=lambda b: -_SEVERITY[b.level])


def approval_from_records(records: Iterable[LedgerRecord], digest: str) -> Approval:
    """Fallback without an approver registry: the newest approval record decides (signatures unchecked)."""
    latest: LedgerRecord | None = None
    for record in records:
        if record.action in APPROVAL_ACTIONS:
            latest = record
        elif record.action in REVOCATION_ACTIONS:
            latest = None
    if latest is None:
        return Approval("none", "no approval recorded in the ledger")
    details = _details(latest)
    approved_hash = next((str(details[k]) for k in _HASH_KEYS if isinstance(details.get(k), str)), None)
    by = _text(details.get("approver") or details.get("by") or latest.actor)
    role = _text(details.get("role"))
    who = by + (f" ({role})" if role else "")
    if approved_hash == digest:
        return Approval("approved", f"approved by {who} on {short_time(latest.at)}", by, role, latest.at,
                        approved_hash)
    return Approval("changed", f"the file changed after {who} approved it on {short_time(latest.at)}; "
                               "it needs a new approval", by, role, latest.at, approved_hash)


def approval_from_authorisation(contract: Contract, ledger: Ledger, config_dir: Path) -> Approval:
    """The gate's own verdict on the approvals, with the registry in ``config_dir``."""
    try:
        registry = load_registry(registry_path(config_dir))
    except ContractExtractsError as exc:
        return Approval("invalid", f"the approver registry is unusable, so no approval can count: {exc}")
    # The source catalogue, as the gate judges it: approved by its owner, and the approvals' pins.
    try:
        catalogue = load_catalogue_for(contract, config_dir)[0]
    except ContractExtractsError as exc:
        return Approval("invalid", f"the source catalogue is unusable, so no approval can count: {exc}")
    catalogue_reason = catalogue_refusal(catalogue, assess_catalogue(catalogue, registry, ledger))
    if catalogue_reason is not None:
        return Approval("invalid", catalogue_reason)
    assessment = assess(contract, registry, ledger, catalogue)
    reason = refusal(contract, assessment)
    counting = assessment.counting
    if counting and reason is None:
        names = ", ".join(f"{v.approver} ({v.role})" for v in counting)
        newest = counting[0]
        return Approval("approved", f"approved by {names}; latest on {short_time(newest.at)} (record #{newest.seq})",
                        newest.approver, newest.role, newest.at, assessment.content_sha256)
    if counting:
        return Approval("incomplete", reason or "more approvals are needed")
    if any(v.signature_ok and not v.current for v in assessment.approvals):
        return Approval("changed", reason or "the contract changed since it was approved")
    if assessment.approvals:
        return Approval("invalid", reason or "no approval counts")
    return Approval("none", "no approval recorded in the ledger")


def approval_for(contract: Contract, digest: str, ledger: Ledger | None, config_dir: Path | None = None) -> Approval:
    if ledger is None:
        return Approval("none", "no approval recorded (there is no ledger yet)")
    if config_dir is not None:
        return approval_from_authorisation(contract, ledger, config_dir)
    return approval_from_records(_approval_records(ledger, contract.contract), digest)


def _approval_records(ledger: Ledger, contract_id: str) -> list[LedgerRecord]:
    out: list[LedgerRecord] = []
    for action in APPROVAL_ACTIONS + REVOCATION_ACTIONS:
        out += ledger.records(contract=contract_id, action=action)
    return sorted(out, key=lambda r: r.seq)


# ---- ledger helpers -------------------------------------------------------------------------------


def _details(record: LedgerRecord) -> dict[str, Any]:
    try:
        value = record.details_obj()
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def short_time(at: str | None) -> str:
    """'2026-11-25T01:05:55.123456+00:00' → '2026-11-25 01:05 UTC' (unparseable text is returned as is)."""
    if not at:
        return ""
    try:
        moment = dt.datetime.fromisoformat(at)
    except ValueError:
        return at
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC)
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def delivery_row(delivered: LedgerRecord, related: list[LedgerRecord]) -> DeliveryRow:
    """One delivery from its ``delivered`` record plus the other records of the same delivery."""
    d = _details(delivered)
    datasets: list[dict[str, Any]] = []
    trigger: dict[str, Any] = {}
    for record in related:
        if record.contract != delivered.contract:
            continue
        if record.action == "extract_done":
            datasets = [x for x in _details(record).get("datasets", []) if isinstance(x, dict)]
        elif record.action == "run_started":
            t = _details(record).get("trigger")
            trigger = t if isinstance(t, dict) else {}
    rows = sum(int(x.get("rows") or 0) for x in datasets) if datasets else None
    recipients = [str(r.get("name", "?")) if isinstance(r, dict) else str(r) for r in d.get("recipients", [])]
    return DeliveryRow(
        at=delivered.at, contract=delivered.contract or "", delivery=delivered.delivery or "", rows=rows,
        datasets=[{"name": str(x.get("name", "?")), "rows": x.get("rows")} for x in datasets],
        recipients=recipients, sha256=_text(d.get("sha256")), transport=_text(d.get("transport")),
        path=_text(d.get("path")), package=_text(d.get("package")),
        dag_id=_text(trigger.get("dag_id")) or None, run_id=_text(trigger.get("run_id")) or None,
        trigger={k: v for k, v in trigger.items() if isinstance(v, (str, int, float, bool))},
        acknowledged=acknowledged(related).get((delivered.contract or "", delivered.delivery or ""), []),
    )


def blocked_row(record: LedgerRecord, started: LedgerRecord | None = None) -> BlockedRow:
    """A ``blocked`` or ``skipped`` record, with the Airflow run (from its ``run_started`` trigger) when known."""
    d = _details(record)
    trigger = _details(started).get("trigger") if started is not None else None
    t: dict[str, Any] = trigger if isinstance(trigger, dict) else {}
    return BlockedRow(at=record.at, contract=record.contract, delivery=record.delivery,
                      stage=_text(d.get("stage")) or ("skipped" if record.action == "skipped" else "?"),
                      reason=_text(d.get("reason")), actor=record.actor,
                      dag_id=_text(t.get("dag_id")) or None, run_id=_text(t.get("run_id")) or None,
                      trigger={k: v for k, v in t.items() if isinstance(v, (str, int, float, bool))})


def _run_started_of(ledger: Ledger, record: LedgerRecord) -> LedgerRecord | None:
    if not record.delivery:
        return None
    return next((r for r in ledger.records(delivery=record.delivery, action="run_started")
                 if r.contract == record.contract), None)


def deliveries(ledger: Ledger, *, contract: str | None = None, limit: int = RECENT_LIMIT) -> list[DeliveryRow]:
    """The newest ``limit`` deliveries (newest first), each with its row counts and trigger."""
    delivered = ledger.records(contract=contract, action="delivered")[-limit:]
    out = []
    for record in reversed(delivered):
        related = ledger.records(delivery=record.delivery) if record.delivery else []
        out.append(delivery_row(record, related))
    return out


def blocked_runs(ledger: Ledger, *, contract: str | None = None, limit: int = RECENT_LIMIT,
                 action: str = "blocked") -> list[BlockedRow]:
    """The newest ``limit`` runs that ended ``blocked`` (or, with ``action="skipped"``, were skipped)."""
    return [blocked_row(r, _run_started_of(ledger, r))
            for r in reversed(ledger.records(contract=contract, action=action)[-limit:])]


# ---- the ledger, opened once per process ----------------------------------------------------------


class LedgerSource:
    """Opens the ledger lazily (never creating a missing SQLite file) and caches ``verify`` briefly.

    The UI runs in the API server, a long-lived process: one ``Ledger`` (one connection pool) per URL,
    and a full-chain verification at most once a minute per head, so reloading the page stays cheap.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ledgers: dict[str, Ledger] = {}
        self._verified: dict[str, tuple[float, int, str, VerifyResult, str]] = {}
        self._problems: dict[str, str] = {}

    def open(self, url: str) -> Ledger | None:
        if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
            path = Path(url.removeprefix("sqlite:///").split("?", 1)[0])
            if not path.exists():
                return None  # no delivery has run yet: do not create an empty ledger from the UI
        with self._lock:
            ledger = self._ledgers.get(url)
            if ledger is None:
                try:
                    key = load_ledger_key()  # keyed as the workers write it: the chain verifies
                except ContractExtractsError as exc:  # e.g. no ledger key configured for the API server
                    self._problems[url] = str(exc)
                    return None
                ledger = Ledger(url, key=key)
                self._ledgers[url] = ledger
            return ledger

    def status(self, url: str, ledger: Ledger | None) -> LedgerStatus:
        backend = url.split(":", 1)[0].split("+", 1)[0]
        if ledger is None:
            return LedgerStatus(available=False, backend=backend,
                                note=self._problems.get(url) or "no ledger yet: no delivery has run")
        head = ledger.head()
        if head is None:
            return LedgerStatus(available=True, backend=backend, ok=True, head_hash="0" * 64,
                                note="the ledger is empty")
        now = time.monotonic()
        with self._lock:
            cached = self._verified.get(url)
        if cached and cached[1] == head.seq and cached[2] == head.hash and now - cached[0] < _VERIFY_CACHE_SECONDS:
            result, checked = cached[3], cached[4]
        else:
            result = ledger.verify()
            checked = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
            with self._lock:
                self._verified[url] = (now, head.seq, head.hash, result, checked)
        return LedgerStatus(available=True, backend=backend, records=result.records, head_seq=result.head_seq,
                            head_hash=result.head_hash, head_at=head.at, ok=result.ok,
                            first_broken_seq=result.first_broken_seq, reason=result.reason, checked_at=checked)

    def close(self) -> None:
        with self._lock:
            for ledger in self._ledgers.values():
                ledger.close()
            self._ledgers.clear()
            self._verified.clear()


# ---- contracts ------------------------------------------------------------------------------------


def load_contracts(contracts_dir: Path) -> tuple[dict[str, tuple[Path, Contract]], list[str]]:
    """Valid contracts by id (sorted) and one message per file that does not load."""
    good: dict[str, tuple[Path, Contract]] = {}
    broken: list[str] = []
    for path in discover_contract_files(contracts_dir):
        try:
            contract = load_contract(path)
        except ContractExtractsError as exc:
            broken.append(str(exc))
            continue
        except Exception as exc:  # never let one file take the page down
            broken.append(str(ConfigError(f"the file could not be loaded ({value_free(exc)})", file=str(path),
                                          fix="run `contract-extracts check` on it")))
            continue
        good[contract.contract] = (path, contract)
    return good, broken


def contract_row(path: Path, contract: Contract, ledger: Ledger | None, today: dt.date) -> ContractRow:
    digest = content_hash(contract)
    # The registry sits in the config dir, the parent of contracts/ (settings.config_dir).
    approval = approval_for(contract, digest, ledger, path.parent.parent)
    last = deliveries(ledger, contract=contract.contract, limit=1) if ledger is not None else []
    return ContractRow(contract=contract, file=path.name, digest=digest,
                       badges=contract_badges(contract, approval, today), approval=approval,
                       last_delivery=last[0] if last else None)


def build_overview(contracts_dir: Path, ledger_url: str, source: LedgerSource, *,
                   visible: Callable[[Contract], bool] = lambda _c: True, today: dt.date | None = None) -> Overview:
    today = today or dt.datetime.now(dt.UTC).date()
    contracts, broken = load_contracts(contracts_dir)
    ledger = source.open(ledger_url)
    shown = {cid: pc for cid, pc in contracts.items() if visible(pc[1])}
    rows = [contract_row(path, contract, ledger, today) for path, contract in shown.values()]
    recent: list[DeliveryRow] = []
    blocked: list[BlockedRow] = []
    skipped: list[BlockedRow] = []
    if ledger is not None:
        recent = [d for d in deliveries(ledger, limit=RECENT_LIMIT * 4) if _is_visible(d.contract, contracts, shown)]
        blocked = [b for b in blocked_runs(ledger, limit=RECENT_LIMIT * 4)
                   if _is_visible(b.contract, contracts, shown)]
        skipped = [b for b in blocked_runs(ledger, limit=RECENT_LIMIT * 4, action="skipped")
                   if _is_visible(b.contract, contracts, shown)]
    return Overview(contracts=rows, broken_files=broken, deliveries=recent[:RECENT_LIMIT],
                    blocked=blocked[:RECENT_LIMIT], ledger=source.status(ledger_url, ledger),
                    generated_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    skipped=skipped[:RECENT_LIMIT])


def _is_visible(contract_id: str | None, known: dict[str, Any], shown: dict[str, Any]) -> bool:
    """Records of a contract the user may not see are hidden; records of unknown (removed) contracts are shown."""
    return contract_id is None or contract_id in shown or contract_id not in known


def build_contract_detail(contract_id: str, contracts_dir: Path, ledger_url: str, source: LedgerSource, *,
                          today: dt.date | None = None) -> ContractDetail | None:
    today = today or dt.datetime.now(dt.UTC).date()
    contracts, _broken = load_contracts(contracts_dir)
    if contract_id not in contracts:  # looked up among the discovered files: never a path from the request
        return None
    path, contract = contracts[contract_id]
    ledger = source.open(ledger_url)
    row = contract_row(path, contract, ledger, today)
    approvals = _approval_records(ledger, contract_id) if ledger is not None else []
    return ContractDetail(
        row=row, approvals=approvals,
        deliveries=deliveries(ledger, contract=contract_id, limit=50) if ledger is not None else [],
        blocked=blocked_runs(ledger, contract=contract_id, limit=50) if ledger is not None else [],
        ledger=source.status(ledger_url, ledger),
        skipped=blocked_runs(ledger, contract=contract_id, limit=50, action="skipped") if ledger is not None else [])


def treatment_text(name: str, treatment: Treatment, linkage: str) -> str:
    """What the contract does to a column, in the codebook's words (``masking.column_plans.describe``)."""
    plan = ColumnPlan(name=name, treatment=treatment, source_type=pa.null(), output_type=pa.null(),
                      source_not_null=False)
    return describe(plan, linkage)


def contract_for_dag(dag_id: str, contracts_dir: Path) -> str | None:
    contracts, _broken = load_contracts(contracts_dir)
    return next((cid for cid, (_p, c) in contracts.items() if c.dag_id == dag_id), None)


def build_run_detail(dag_id: str, run_id: str, ledger_url: str, source: LedgerSource, *,
                     home: Path | None = None) -> RunDetail:
    """The ledger records of the delivery an Airflow run made (found through its run_started trigger).

    ``home``: the state folder holding the operator reports (``validation.operator_report``), to link the run's.
    """
    ledger = source.open(ledger_url)
    status = source.status(ledger_url, ledger)
    empty = RunDetail(dag_id=dag_id, run_id=run_id, contract=None, delivery=None, records=[],
                      outcome=Badge("no ledger record", INFO, "this run wrote nothing to the ledger (yet)"),
                      trigger={}, ledger=status)
    if ledger is None:
        return empty
    started = None
    for record in reversed(ledger.records(action="run_started")):
        trigger = _details(record).get("trigger")
        if isinstance(trigger, dict) and trigger.get("dag_id") == dag_id and trigger.get("run_id") == run_id:
            started = record
            break
    if started is None or not started.delivery:
        return empty
    records = [r for r in ledger.records(delivery=started.delivery) if r.contract == started.contract]
    actions = [r.action for r in records]
    if "blocked" in actions:
        outcome = Badge("blocked", BAD, blocked_row(next(r for r in records if r.action == "blocked")).reason)
    elif "skipped" in actions:
        outcome = Badge("skipped", INFO, blocked_row(next(r for r in records if r.action == "skipped")).reason)
    elif "run_completed" in actions:
        outcome = Badge("delivered", OK, "the package was delivered and the run recorded")
    elif "delivered" in actions:
        outcome = Badge("delivered", OK, "the package was delivered")
    elif "abandoned" in actions:
        outcome = Badge("abandoned", BAD, str(_details(next(r for r in records if r.action == "abandoned"))
                                              .get("reason") or "the run ended without delivering"))
    elif "stage_failed" in actions:
        outcome = Badge("retrying", WARN, "a stage failed and Airflow may retry it")
    else:
        outcome = Badge("in progress", INFO, "the run has not finished")
    trigger = _details(started).get("trigger")
    report = existing_report(home, started.contract or "", started.delivery) if home is not None else None
    return RunDetail(dag_id=dag_id, run_id=run_id, contract=started.contract, delivery=started.delivery,
                     records=records, outcome=outcome, trigger=trigger if isinstance(trigger, dict) else {},
                     ledger=status, report=REPORT_INDEX if report is not None else None)


def summarise_details(record: LedgerRecord) -> str:
    """A one-line, human reading of a record's details (they hold no data values by design)."""
    d = _details(record)
    a = record.action
    if a == "run_started":
        recorded = d.get("trigger")
        t: dict[str, Any] = recorded if isinstance(recorded, dict) else {}
        parts = [f"contract hash {str(d.get('contract_hash') or '')[:12]}…"] if d.get("contract_hash") else []
        for key in ("run_type", "scheduled_for", "delivery_reference", "reason", "full_refresh", "worker"):
            if t.get(key):
                parts.append(f"{key.replace('_', ' ')}: {t[key]}")
        return "; ".join(parts)
    if a == "authorised":
        approvals = [x for x in d.get("approvals", []) if isinstance(x, dict)]
        return "relying on " + (", ".join(f"approval #{x.get('seq')} by {x.get('approver')} ({x.get('role')})"
                                          for x in approvals) or "no recorded approval")
    if a == "staging_removed":
        return "plaintext staging folder removed"
    if a == "approvers_changed":
        return "approver registry recorded"
    if a == "extract_done":
        return ", ".join(f"{x.get('name')}: {x.get('rows')} rows × {len(x.get('columns', []))} columns"
                         for x in d.get("datasets", []) if isinstance(x, dict))
    if a == "validation_passed":
        return ", ".join(f"{x.get('name')}: {x.get('expectations')} expectations met"
                         for x in d.get("datasets", []) if isinstance(x, dict))
    if a == "validation_failed":
        return "; ".join(str(x) for x in d.get("failed", []))
    if a == "delivered":
        signed = f", signed by sender key {d['sender']}" if d.get("sender") else ""
        found = " — found at its destination after a crash (reconciled)" if d.get("reconciled") else ""
        return f"{d.get('transport')} → {d.get('path')} (sha256 {str(d.get('sha256', ''))[:12]}…{signed}){found}"
    if a == "delivery_intent":
        return f"about to publish {d.get('package')} (sha256 {str(d.get('sha256', ''))[:12]}…)"
    if a == "delivery_acknowledged":
        return f"acknowledged by {d.get('recipient')} (key {d.get('recipient_key')}), verified {d.get('verified_at')}"
    if a == "skipped":
        return f"nothing delivered: {d.get('reason')}"
    if a in ("abandoned", "intent_settled", "staging_swept"):
        return str(d.get("reason") or d.get("outcome") or "")[:300]
    if a == "run_completed":
        return f"package {d.get('package')}"
    if a in ("blocked", "stage_failed"):
        return f"{d.get('stage')}: {d.get('reason')}"
    if a in APPROVAL_ACTIONS:
        h = next((str(d[k]) for k in _HASH_KEYS if isinstance(d.get(k), str)), "")
        parts = [str(d["approver"]) if d.get("approver") else "", f"as {d['role']}" if d.get("role") else "",
                 f"content sha256 {h[:12]}…" if h else "", f"key {d['fingerprint']}" if d.get("fingerprint") else ""]
        return " ".join(p for p in parts if p)
    if a in REVOCATION_ACTIONS:
        who = f"approvals of {d['approver']}" if d.get("approver") else "all approvals"
        return f"withdrew {who}" + (f": {d['reason']}" if d.get("reason") else "")
    return json.dumps(d, sort_keys=True, ensure_ascii=False)[:300]
