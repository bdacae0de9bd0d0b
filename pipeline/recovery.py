"""Crash recovery: every published package is named in the ledger, every run ends, nothing is left behind.

The protocol (docs/delivery.md, "Exactly once, after any crash"):

1. **Ownership.** A delivery's staging folder ``<staging root>/<contract>/<delivery>`` (every level 0700)
   holds ``.owner.lock``. Every process working on the delivery holds a shared ``flock`` on it for as long
   as it works (the CLI for the whole run, an Airflow task for its stage; mapped partition tasks together).
   The kernel drops the lock when the process dies, ``kill -9`` included, so "nobody holds the lock" means
   "nobody is working on it now". ``.owner.json`` says who took it last (pid, host), for people.
2. **Intent before publishing.** The deliver stage appends ``delivery_intent`` (package name, sha256,
   bytes, transport and destination) *before* anything is written at the destination. So a package never
   exists at its final name without a ledger record naming it. ``delivered`` (after the atomic publish)
   names the intent it settles.
3. **Reconciliation** at the start of every run (for the run's contract) and by ``contract-extracts audit
   reconcile`` (every contract): a delivery that is not live (lock free and, for Airflow runs whose tasks
   are separate processes, no activity for ``stale_after``) and has an unsettled intent is checked at its
   destination: the intent's package at the final name with its sha256 → ``delivered`` (``reconciled``);
   otherwise its ``.partial`` leftovers are removed and ``intent_settled`` says so. A run that never
   reached ``delivered`` or ``blocked`` gets ``abandoned``. Every ``run_started`` therefore ends in
   ``delivered``, ``blocked`` or ``abandoned``.
4. **Sweeping.** Each run also removes the staging folders of dead runs (lock free, and the run ended, or
   its process is gone, or it was idle longer than ``stale_after``) and records ``staging_swept`` for each.

A retried Airflow task keeps its delivery id (``delivery_id_for``), finds its intent (same sha256: publish
again is idempotent) or the ``delivered`` record, and never sends a second package. Nothing here imports
Airflow; the records hold names, paths, counts, hashes and times only.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import shutil
import socket
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audit.ledger import Ledger, LedgerRecord
from core.errors import ContractExtractsError, StageFailed, value_free
from core.paths import safe_segment
from delivery.package import sha256_file
from delivery.sftp import PARTIAL, SFTPEndpoint, inspect_destination

log = logging.getLogger(__name__)

INTENT = "delivery_intent"
DELIVERED = "delivered"
INTENT_SETTLED = "intent_settled"
ABANDONED = "abandoned"
BLOCKED = "blocked"
RUN_STARTED = "run_started"
STAGING_SWEPT = "staging_swept"
SKIPPED = "skipped"  # a run that by design delivered nothing (airflow_glue.run_policy): ended, not abandoned
TERMINAL = (DELIVERED, BLOCKED, ABANDONED, SKIPPED)
LOCK_FILE = ".owner.lock"
OWNER_FILE = ".owner.json"
STALE_AFTER_ENV = "CONTRACT_EXTRACTS_ABANDON_AFTER_HOURS"
DEFAULT_STALE_AFTER = dt.timedelta(hours=24)
_YOUNG = dt.timedelta(minutes=5)

ResolveSFTP = Callable[[str], SFTPEndpoint]


def stale_after(env: dict[str, str] | None = None) -> dt.timedelta:
    """How long an Airflow run may sit idle between tasks before reconciliation calls it abandoned."""
    value = (os.environ if env is None else env).get(STALE_AFTER_ENV)
    if not value:
        return DEFAULT_STALE_AFTER
    try:
        hours = float(value)
        if hours <= 0:
            raise ValueError
    except ValueError:
        raise ContractExtractsError(f"{STALE_AFTER_ENV} must be a positive number of hours, e.g. 24") from None
    return dt.timedelta(hours=hours)


# ---- staging: private folders and their owners -----------------------------------------------------


def private_tree(root: Path, path: Path) -> Path:
    """Create ``path`` under ``root`` with every level from ``root`` down 0700 (existing levels too)."""
    root = root.absolute()
    path = path.absolute()
    relative = path.relative_to(root)
    current = root
    for part in (None, *relative.parts):
        if part is not None:
            current = current / part
        current.mkdir(parents=part is None, exist_ok=True, mode=0o700)
        st = current.lstat()
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
            raise StageFailed(f"staging path {current} is not a plain folder")
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.chmod(current, 0o700)
    return path


@dataclass
class Claim:
    """A shared lock on a delivery's staging folder, held while this process works on the delivery."""

    staging: Path
    fd: int | None

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None


def claim(staging: Path, *, contract: str, delivery: str, mode: str) -> Claim:
    """Hold a shared lock on ``staging``'s lock file (the folder must exist); record who took it.

    Raises StageFailed when the folder was swept meanwhile (the lock file is no longer the one at the path).
    """
    lock_path = staging / LOCK_FILE
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except FileNotFoundError:
        raise StageFailed(f"staging folder of delivery {delivery} is gone (removed as abandoned, or by cleanup); "
                          "nothing was delivered by this attempt. Fix: run the delivery again") from None
    fcntl.flock(fd, fcntl.LOCK_SH)
    try:
        same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
    except FileNotFoundError:
        same = False
    if not same:
        os.close(fd)
        raise StageFailed(f"staging folder of delivery {delivery} was removed as abandoned while this process "
                          "waited for it; nothing was delivered by this attempt. Fix: run the delivery again")
    owner = {"pid": os.getpid(), "host": socket.gethostname()[:100], "mode": mode, "contract": contract,
             "delivery": delivery, "at": _now().isoformat(timespec="seconds")}
    tmp = staging / f"{OWNER_FILE}.{os.getpid()}"
    with contextlib.suppress(OSError):  # who owns it is for people; the lock is what counts
        tmp.write_text(json.dumps(owner), encoding="utf-8")
        os.chmod(tmp, 0o600)
        os.replace(tmp, staging / OWNER_FILE)
    return Claim(staging=staging, fd=fd)


@contextlib.contextmanager
def _exclusive(staging: Path) -> Iterator[bool]:
    """Yield True while holding the staging folder's lock exclusively (nobody works on it), else False."""
    lock_path = staging / LOCK_FILE
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_NOFOLLOW)
    except FileNotFoundError:
        yield True  # a folder from before locks existed, or one whose owner never got as far
        return
    except OSError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def is_live(staging: Path) -> bool:
    """True while some process holds the delivery's staging lock."""
    if not staging.is_dir():
        return False
    with _exclusive(staging) as free:
        return not free


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# ---- what the ledger says about one delivery ---------------------------------------------------------


@dataclass
class DeliveryRecords:
    contract: str
    delivery: str
    records: list[LedgerRecord] = field(default_factory=list)

    def actions(self) -> set[str]:
        return {r.action for r in self.records}

    @property
    def terminal(self) -> LedgerRecord | None:
        return next((r for r in self.records if r.action in TERMINAL), None)

    @property
    def mode(self) -> str:
        """``task`` for Airflow runs (stages in separate processes), else ``process`` (one process, the CLI)."""
        for r in self.records:
            if r.action == RUN_STARTED:
                trigger = r.details_obj().get("trigger")
                if isinstance(trigger, dict) and trigger.get("system") == "airflow":
                    return "task"
        return "process"

    def unsettled_intents(self) -> list[LedgerRecord]:
        if DELIVERED in self.actions():
            return []
        settled = {r.details_obj().get("intent_seq") for r in self.records if r.action == INTENT_SETTLED}
        return [r for r in self.records if r.action == INTENT and r.seq not in settled]

    def last_activity(self) -> dt.datetime:
        return max(dt.datetime.fromisoformat(r.at) for r in self.records)


def by_delivery(records: Iterable[LedgerRecord]) -> dict[tuple[str, str], DeliveryRecords]:
    out: dict[tuple[str, str], DeliveryRecords] = {}
    for r in records:
        if r.contract is None or r.delivery is None:
            continue
        out.setdefault((r.contract, r.delivery), DeliveryRecords(r.contract, r.delivery)).records.append(r)
    return out


# ---- the destination ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Found:
    """What reconciliation found at an intent's destination."""

    path: str
    sha256: str | None
    partials_removed: int


def intent_destination(transport: str, *, package: str, path: Path | None = None, connection: str | None = None,
                       segments: list[str] | None = None) -> dict[str, Any]:
    """The destination part of a ``delivery_intent`` record: enough to check it without the contract file."""
    if transport == "sftp":
        return {"transport": "sftp", "connection": connection, "segments": list(segments or []),
                "package": package}
    assert path is not None
    return {"transport": "local", "path": str(path), "package": package}


def inspect(intent: dict[str, Any], resolve_sftp: ResolveSFTP | None) -> Found:
    """Look at an intent's final name (sha256 of what is there) and remove its partial files."""
    package = safe_segment(str(intent.get("package")), "package name")
    if intent.get("transport") == "sftp":
        if resolve_sftp is None:
            raise ContractExtractsError("an SFTP destination needs its connection to be checked")
        state = inspect_destination(resolve_sftp(str(intent.get("connection"))),
                                    [str(s) for s in intent.get("segments") or []], package)
        return Found(path=state.path, sha256=state.sha256, partials_removed=state.partials_removed)
    final = Path(str(intent.get("path")))
    if final.name != package:
        raise ContractExtractsError(f"intent names path {final} for package {package}")
    removed = 0
    if final.parent.is_dir():
        for partial in final.parent.glob(f".{package}{PARTIAL}*"):
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
                removed += 1
    sha = sha256_file(final)[0] if final.is_file() else None
    return Found(path=str(final), sha256=sha, partials_removed=removed)


# ---- reconciliation ------------------------------------------------------------------------------------


@dataclass
class Report:
    delivered: list[tuple[str, str]] = field(default_factory=list)
    abandoned: list[tuple[str, str]] = field(default_factory=list)
    intents_settled: int = 0
    partials_removed: int = 0
    skipped: list[str] = field(default_factory=list)  # deliveries whose destination could not be checked
    swept: list[dict[str, Any]] = field(default_factory=list)


def _is_live(group: DeliveryRecords, staging_root: Path, now: dt.datetime, idle: dt.timedelta) -> bool:
    staging = staging_root / group.contract / group.delivery
    if is_live(staging):
        return True
    if group.mode == "task":  # between two Airflow tasks nobody holds the lock: judge by the last sign of life
        last = group.last_activity()
        owner = staging / OWNER_FILE
        with contextlib.suppress(OSError):
            last = max(last, dt.datetime.fromtimestamp(owner.stat().st_mtime, dt.UTC))
        return now - last < idle
    return False


def settle(ledger: Ledger, group: DeliveryRecords, *, actor: str, resolve_sftp: ResolveSFTP | None,
           report: Report, reconciled_by: str) -> bool:
    """Settle the delivery's open intents; True if it is (now) delivered."""
    intents = group.unsettled_intents()
    delivered = False
    for intent in reversed(intents):  # the newest intent is the one a retry would have published
        details = intent.details_obj()
        found = inspect(details, resolve_sftp)
        report.partials_removed += found.partials_removed
        if not delivered and found.sha256 is not None and found.sha256 == details.get("sha256"):
            record = ledger.append(actor=actor, action=DELIVERED, contract=group.contract, delivery=group.delivery,
                                   details={**details, "path": found.path, "intent_seq": intent.seq,
                                            "reconciled": True, "reconciled_by": reconciled_by,
                                            "partials_removed": found.partials_removed})
            group.records.append(record)
            report.delivered.append((group.contract, group.delivery))
            delivered = True
            continue
        if found.sha256 is None:
            outcome = "not published: nothing at the final name"
        elif found.sha256 == details.get("sha256"):
            outcome = "published, and settled by the newer intent's delivered record"
        else:
            outcome = "not published: a different file is at the final name (left untouched)"
        record = ledger.append(actor=actor, action=INTENT_SETTLED, contract=group.contract, delivery=group.delivery,
                               details={"intent_seq": intent.seq, "package": details.get("package"),
                                        "outcome": outcome, "path": found.path,
                                        "partials_removed": found.partials_removed, "reconciled_by": reconciled_by})
        group.records.append(record)
        report.intents_settled += 1
    return delivered


def reconcile(ledger: Ledger, *, staging_root: Path, actor: str, resolve_sftp: ResolveSFTP | None,
              contract: str | None = None, skip: Iterable[str] = (), reconciled_by: str = "run start",
              idle: dt.timedelta | None = None, now: dt.datetime | None = None,
              report: Report | None = None) -> Report:
    """Settle every dead delivery (of ``contract``, or all): intents checked at their destination, runs ended."""
    report = report or Report()
    idle = idle or stale_after()
    now = now or _now()
    skipped = set(skip)
    for group in by_delivery(ledger.records(contract=contract)).values():
        if group.delivery in skipped:
            continue
        open_run = RUN_STARTED in group.actions() and group.terminal is None
        if not open_run and not group.unsettled_intents():
            continue
        if _is_live(group, staging_root, now, idle):
            continue
        try:
            delivered = settle(ledger, group, actor=actor, resolve_sftp=resolve_sftp, report=report,
                               reconciled_by=reconciled_by)
        except ContractExtractsError as exc:  # e.g. the SFTP server is down: try again next time
            report.skipped.append(f"{group.contract} {group.delivery}: {exc}")
            log.warning("could not reconcile delivery %s of %s: %s", group.delivery, group.contract, exc)
            continue
        if open_run and not delivered:
            last = group.last_activity()
            why = ("its process is gone" if group.mode == "process"
                   else f"no activity since {last.isoformat(timespec='seconds')}")
            ledger.append(actor=actor, action=ABANDONED, contract=group.contract, delivery=group.delivery,
                          details={"reason": f"the run ended without delivering: {why}; nothing is at the "
                                             "destination", "last_record": max(r.seq for r in group.records),
                                   "reconciled_by": reconciled_by})
            report.abandoned.append((group.contract, group.delivery))
    return report


# ---- sweeping staging --------------------------------------------------------------------------------


def _size(folder: Path) -> tuple[int, int]:
    files = size = 0
    for entry in folder.rglob("*"):
        with contextlib.suppress(OSError):
            st = entry.lstat()
            if stat.S_ISREG(st.st_mode):
                files += 1
                size += st.st_size
    return files, size


def sweep_staging(ledger: Ledger, *, staging_root: Path, actor: str, keep: Iterable[Path] = (),
                  idle: dt.timedelta | None = None, now: dt.datetime | None = None,
                  report: Report | None = None) -> Report:
    """Remove the staging folders of dead runs and record each removal (``staging_swept``)."""
    report = report or Report()
    idle = idle or stale_after()
    now = now or _now()
    kept = {p.absolute() for p in keep}
    if not staging_root.is_dir():
        return report
    groups: dict[tuple[str, str], DeliveryRecords] | None = None
    for contract_dir in sorted(staging_root.iterdir()):
        if contract_dir.is_symlink() or not contract_dir.is_dir():
            continue
        for folder in sorted(contract_dir.iterdir()):
            if folder.absolute() in kept or folder.is_symlink() or not folder.is_dir():
                continue
            if groups is None:
                groups = by_delivery(ledger.records())
            group = groups.get((contract_dir.name, folder.name))
            with _exclusive(folder) as free:
                if not free:
                    continue  # someone is working on it
                reason = _dead_reason(folder, group, now, idle)
                if reason is None:
                    continue
                files, size = _size(folder)
                shutil.rmtree(folder, ignore_errors=True)
            if folder.exists():
                log.error("could not remove the staging folder %s", folder)
                continue
            entry = {"staging": str(folder), "reason": reason, "files": files, "bytes": size}
            ledger.append(actor=actor, action=STAGING_SWEPT, contract=contract_dir.name, delivery=folder.name,
                          details=entry)
            report.swept.append(entry)
    return report


def _dead_reason(folder: Path, group: DeliveryRecords | None, now: dt.datetime, idle: dt.timedelta) -> str | None:
    """Why nobody will come back for this staging folder (its lock is free), or None if someone may."""
    if group is not None and group.terminal is not None:
        # An Airflow run still needs its staging after ``delivered``: its record task reads it (between tasks
        # nobody holds the lock), so it has ended only with ``run_completed``, or else by the idle rule below.
        still_recording = (group.mode == "task" and group.terminal.action == DELIVERED
                           and "run_completed" not in group.actions())
        if not still_recording:
            return f"the run ended ({group.terminal.action}) but its staging folder was left behind"
    if group is None and not (folder / OWNER_FILE).exists():
        # Nothing recorded and nobody named: a run may be creating it this very moment; give it time.
        with contextlib.suppress(OSError):
            if now - dt.datetime.fromtimestamp(folder.stat().st_mtime, dt.UTC) < _YOUNG:
                return None
    mode = group.mode if group is not None else "process"
    owner: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        owner = json.loads((folder / OWNER_FILE).read_text(encoding="utf-8"))
    if mode == "process" or owner.get("mode") == "process":
        return f"its process is gone (pid {owner.get('pid', '?')} on {owner.get('host', '?')})"
    try:
        last = dt.datetime.fromtimestamp(max(folder.stat().st_mtime, (folder / OWNER_FILE).stat().st_mtime), dt.UTC)
    except OSError:
        last = dt.datetime.fromtimestamp(folder.stat().st_mtime, dt.UTC)
    if group is not None:
        last = max(last, group.last_activity())
    if now - last >= idle:
        return f"no activity since {last.isoformat(timespec='seconds')}"
    return None


def recover(ledger: Ledger, *, staging_root: Path, actor: str, resolve_sftp: ResolveSFTP | None,
            contract: str | None = None, skip: Iterable[str] = (), keep: Iterable[Path] = (),
            reconciled_by: str = "run start") -> Report:
    """Reconcile, then sweep: what each run does first and ``audit reconcile`` does on demand."""
    report = reconcile(ledger, staging_root=staging_root, actor=actor, resolve_sftp=resolve_sftp, contract=contract,
                       skip=skip, reconciled_by=reconciled_by)
    try:
        sweep_staging(ledger, staging_root=staging_root, actor=actor, keep=keep, report=report)
    except OSError as exc:  # never let housekeeping hide the run's own outcome
        log.error("sweeping staging failed: %s", value_free(exc))
    return report
