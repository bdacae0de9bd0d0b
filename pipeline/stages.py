"""The delivery pipeline, stage by stage, framework-free.

authorise → extract (+mask, streamed into staged Parquet) → disclosure → validate → package (+sign,
+encrypt) → deliver → record, and cleanup (always). The CLI and the Airflow tasks call the same methods.

Every stage reloads the contract and checks that its content hash still equals the hash recorded
when the run started, so a file edited mid-run cannot change what is delivered. Stages hand over
typed values (``pipeline.handoffs``) through small value-free JSON files in the private staging
folder; XCom carries only names, paths, counts and hashes. Every stage runs fail-closed
(``fail_closed``): nothing further runs, and the ledger gets a ``blocked`` record naming the stage and
the reason (never a data value: foreign exceptions are reduced to their type name).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import hashlib
import logging
import shutil
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import URL

# The module, not its functions: tests interpose on masking.engine.write_masked to act between two reads.
import masking.engine as masking_engine
from audit.ledger import Ledger
from audit.opening import open_ledger
from audit.receipts import head_for_manifest
from authorisation.run_checks import Authorisation, check_approvals, date_refusal
from contracts.base import is_system_database
from contracts.catalogue import (
    Catalogue,
    catalogue_key_variables,
    load_catalogue_for,
    population_plan,
    statistics_columns,
    with_catalogue_keys,
)
from contracts.disclosure import contract_aggregates, delivers_microdata
from contracts.loading import content_hash, load_contract
from contracts.model import Contract
from core.errors import (
    AuthorisationError,
    ContractExtractsError,
    DeliveryError,
    SourceError,
    StageFailed,
    ValidationFailed,
    value_free,
)
from core.paths import make_private_dir, remove_tree, safe_segment, within
from core.settings import Settings
from delivery.codebook import render_codebook
from delivery.drop_folder import deliver_local
from delivery.manifest import CODEBOOK, build_manifest, package_contents
from delivery.openpgp import encrypt_openpgp
from delivery.package import Encryptor, age_encryptor, build_package, package_name
from delivery.recipients import age_recipient_keys, manifest_recipients, package_format
from delivery.sftp import RetryPolicy, SFTPEndpoint, deliver_sftp, env_sftp_endpoint
from delivery.signing import fingerprint, load_signing_key
from disclosure.assess import ledger_details, run_disclosure
from disclosure.treatment import DisclosureBlocked
from extract.consistent_read import SourceRead, consistent_read, partition_snapshot
from extract.incremental import Window, current_upper, plan_window, window_clause
from extract.partitioning import PartitionRange, partition_column, plan_ranges, planned_parts, range_clause
from extract.result import ExtractResult, SampledDataset, SampleSummary, StagedColumn, StagedDataset
from extract.snapshot_holder import RELEASED
from extract.sources import create_source_engine
from masking.column_plans import describe
from masking.hashing import HashPool, default_workers
from masking.keys import ContractKeys, KeySource, resolve_master_key
from masking.sampling import SampleResult
from pipeline import handoffs, recovery
from pipeline.handoffs import (
    DISCLOSURE,
    EXTRACT,
    PACKAGE,
    PARTITIONS,
    VALIDATION,
    PackageInfo,
    PartitionPlan,
    StagingState,
    ValidationOutcome,
)
from pipeline.incremental import previous_marks
from validation.operator_report import operator_report
from validation.release_gate import run_release_gate

log = logging.getLogger(__name__)

# Great Expectations has a fixed cost per validated batch: validate in larger (still bounded) batches.
VALIDATION_BATCH_ROWS = 250_000

STAGES = ("authorise", "extract", "disclosure", "validate", "package", "deliver", "record")

P = ParamSpec("P")
R = TypeVar("R")


def delivery_id_for(run_key: str, run_after: dt.datetime) -> str:
    """Stable for one run (so retries reuse it), new for every run: '<UTC time>-<8 hex>'."""
    when = run_after.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{when}-{hashlib.sha256(run_key.encode('utf-8')).hexdigest()[:8]}"


@dataclass(frozen=True)
class RunContext:
    """Who runs what: everything a stage needs that does not come from the contract file."""

    contract_path: Path
    settings: Settings
    actor: str
    run_key: str
    run_after: dt.datetime
    resolve_connection: Callable[[str], URL]
    trigger: dict[str, Any] = field(default_factory=dict)
    final_attempt: bool = True
    today: dt.date | None = None
    # SFTP deliveries: connection id → endpoint (default: AIRFLOW_CONN_<ID>), and the retry policy.
    resolve_sftp: Callable[[str], SFTPEndpoint] | None = None
    sftp_retry: RetryPolicy | None = None
    # Master keys: default CONTRACT_EXTRACTS_MASTER_KEY / _FILE; Airflow passes airflow_glue.secrets' source.
    key_source: KeySource | None = None
    # Processes that hash (pseudonyms, sample ranks, date shifts); None: CONTRACT_EXTRACTS_HASH_WORKERS or every core.
    hash_workers: int | None = None
    # Release gate: raw identifiers drawn per identifier column for the leak check (held in memory only).
    leak_sample_per_column: int = 1000


def fail_closed(stage: str) -> Callable[[Callable[Concatenate[Pipeline, P], R]],
                                        Callable[Concatenate[Pipeline, P], R]]:
    """Run a pipeline stage fail-closed: a failure is recorded in the ledger before it propagates.

    Our own errors are deterministic and value-free: ``blocked`` with their message, re-raised. A
    foreign exception's message may quote a data value: it is reduced to its type name, recorded as
    ``blocked`` on the final attempt (else ``stage_failed``: the task will be retried), its traceback
    frames are logged without messages, and ``StageFailed`` is raised in its place.
    """
    def wrap(run: Callable[Concatenate[Pipeline, P], R]) -> Callable[Concatenate[Pipeline, P], R]:
        @functools.wraps(run)
        def guarded(pipeline: Pipeline, /, *args: P.args, **kwargs: P.kwargs) -> R:
            try:
                pipeline._own_staging()  # held until close(): sweeps and reconciliation see we are alive
                return run(pipeline, *args, **kwargs)
            except ContractExtractsError as exc:
                pipeline._record_failure(stage, str(exc), final=True)
                raise
            except Exception as exc:
                reason = f"{stage} failed: {value_free(exc)}"
                pipeline._record_failure(stage, reason, final=pipeline.ctx.final_attempt, frames=_frames(exc))
                raise StageFailed(reason) from None
        return guarded
    return wrap


class Pipeline:
    """One delivery of one contract: its stages, each a method that an Airflow task or the CLI calls.

    A stage returns its XCom value (``pipeline.handoffs``); what the next stage needs it leaves in the
    delivery's staging folder (``state``).
    """

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.delivery_id = delivery_id_for(ctx.run_key, ctx.run_after)
        self.contract_id = ctx.contract_path.stem
        self._ledger: Ledger | None = None
        self._claim: recovery.Claim | None = None

    # ---- shared helpers ----------------------------------------------------------------------
    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            self._ledger = open_ledger(self.ctx.settings)  # keyed when a ledger key is configured
        return self._ledger

    @property
    def staging(self) -> Path:
        return (self.ctx.settings.staging_dir / safe_segment(self.contract_id, "contract id")
                / self.delivery_id)

    @property
    def state(self) -> StagingState:
        """The hand-off files of this delivery (``pipeline.handoffs``)."""
        return StagingState(self.staging, self.delivery_id)

    def close(self) -> None:
        if self._ledger is not None:
            self._ledger.close()
            self._ledger = None
        if self._claim is not None:
            self._claim.release()
            self._claim = None

    def _own_staging(self, *, create: bool = False) -> None:
        """Hold this delivery's staging lock while this process works on it (``pipeline.recovery``).

        ``create`` makes the folder first, every level under the staging root 0700.
        """
        if self._claim is not None:
            return
        if create:
            recovery.private_tree(self.ctx.settings.staging_dir, self.staging)
        elif not self.staging.is_dir():
            return  # nothing to own: the stage reports its missing hand-off itself
        mode = "task" if self.ctx.trigger.get("system") == "airflow" else "process"
        self._claim = recovery.claim(self.staging, contract=self.contract_id, delivery=self.delivery_id, mode=mode)

    def _recover(self) -> None:
        """Settle dead deliveries of this contract and sweep dead runs' staging (each run does this first)."""
        report = recovery.recover(self.ledger, staging_root=self.ctx.settings.staging_dir, actor=self.ctx.actor,
                                  resolve_sftp=self._sftp_endpoint, contract=self.contract_id,
                                  skip={self.delivery_id}, keep={self.staging})
        if report.delivered or report.abandoned or report.swept or report.intents_settled:
            log.warning("recovered earlier runs: %d reconciled as delivered, %d abandoned, %d intents settled, "
                        "%d staging folders swept", len(report.delivered), len(report.abandoned),
                        report.intents_settled, len(report.swept))

    def _sftp_endpoint(self, conn_id: str) -> SFTPEndpoint:
        if self.ctx.resolve_sftp is not None:
            return self.ctx.resolve_sftp(conn_id)
        return env_sftp_endpoint(conn_id, config_dir=self.ctx.settings.config_dir)

    def _append(self, action: str, details: dict[str, Any]) -> None:
        self.ledger.append(actor=self.ctx.actor, action=action, contract=self.contract_id,
                           delivery=self.delivery_id, details=details)

    def record_blocked(self, stage: str, reason: str) -> None:
        """Record ``blocked`` for a stage that could not record it itself (e.g. its process was killed)."""
        self._record_failure(stage, reason, final=True)

    def _record_failure(self, stage: str, reason: str, *, final: bool, frames: str | None = None) -> None:
        if frames:
            log.error("stage %s failed; traceback frames (messages withheld, they may hold data):\n%s",
                      stage, frames)
        try:
            self._append("blocked" if final else "stage_failed", {"stage": stage, "reason": reason,
                                                                  "final": final})
        except Exception as exc:  # the stage fails anyway; never hide the original failure
            log.error("could not write the ledger record for the failed stage %s: %s", stage, value_free(exc))

    def _contract(self, expected_hash: str | None = None) -> Contract:
        contract = load_contract(self.ctx.contract_path)
        if expected_hash is None:
            expected_hash = self._started()["contract_hash"]
        if content_hash(contract) != expected_hash:
            raise AuthorisationError(f"contract {contract.contract} changed on disk during the run; "
                                     "nothing was delivered. Fix: run again")
        return contract

    def _started(self) -> dict[str, Any]:
        for record in reversed(self.ledger.records(delivery=self.delivery_id, action="run_started")):
            if record.contract == self.contract_id:
                return record.details_obj()
        raise AuthorisationError(f"delivery {self.delivery_id} has no run_started record; the authorise "
                                 "stage must run first")

    def _catalogue(self, contract: Contract) -> Catalogue:
        """The source catalogue this run was authorised with (refused if it changed on disk since)."""
        catalogue, _path = load_catalogue_for(contract, self.ctx.settings.config_dir)
        pinned = None
        for record in reversed(self.ledger.records(delivery=self.delivery_id, action="authorised")):
            if record.contract == self.contract_id:
                pinned = (record.details_obj().get("catalogue") or {}).get("sha256")
                break
        if pinned is None:
            raise AuthorisationError(f"delivery {self.delivery_id} has no authorised record naming its source "
                                     "catalogue; the authorise stage must run first")
        if catalogue.content_sha256 != pinned:
            raise AuthorisationError(f"the source catalogue {catalogue.source} changed on disk during the run; "
                                     "nothing was delivered. Fix: run again")
        return catalogue

    def _delivered(self, contract: Contract) -> dict[str, Any] | None:
        """The ``delivered`` record of this delivery, if it was delivered already (a re-run)."""
        for record in self.ledger.records(delivery=self.delivery_id, action="delivered"):
            if record.contract == contract.contract:
                return record.details_obj()
        return None

    # ---- stages ------------------------------------------------------------------------------
    @fail_closed("authorise")
    def authorise(self) -> dict[str, Any]:
        """Record the run, then refuse unless the contract is valid, approved and its keys are available."""
        # Own the staging folder before the run is recorded, so reconciliation never mistakes it for dead;
        # then settle earlier runs that died (intents, abandoned runs, leftover staging).
        self._own_staging(create=True)
        self._recover()
        contract = self._record_start()
        digest = content_hash(contract)
        authorisation = self._check_authorised(contract)
        resolve_master_key(self.ctx.key_source, contract.key_id)  # the pinned or current key is available
        load_signing_key()
        make_private_dir(self.staging)
        # Which approvals this run relies on (see authorisation/run_checks.py).
        self._append("authorised", authorisation.details())
        log.info("authorised contract %s, delivery %s", contract.contract, self.delivery_id)
        return handoffs.authorised_xcom(contract.contract, self.delivery_id, digest)

    def _record_start(self) -> Contract:
        """The ``run_started`` record (contract file, content hash, trigger); a contract that does not load too."""
        contract_file = str(self.ctx.contract_path)
        try:
            contract = load_contract(self.ctx.contract_path)
        except ContractExtractsError:
            self._append("run_started", {"contract_file": contract_file, "contract_hash": None,
                                         "trigger": self.ctx.trigger})
            raise
        self._append("run_started", {"contract_file": contract_file, "contract_hash": content_hash(contract),
                                     "contractor": contract.contractor, "trigger": self.ctx.trigger})
        return contract

    @fail_closed("authorise")
    def refuse(self, reason: str) -> dict[str, Any]:
        """Record this run and refuse it before anything is read (``blocked``), e.g. for invalid trigger params."""
        self._record_start()
        raise AuthorisationError(reason)

    @fail_closed("authorise")
    def skip(self, reason: str) -> dict[str, Any]:
        """Record this run as ``skipped``: by design it reads and delivers nothing (e.g. a late scheduled run)."""
        contract = self._record_start()
        self._append("skipped", {"reason": reason})
        log.warning("contract %s, delivery %s: nothing is delivered: %s", contract.contract, self.delivery_id, reason)
        return {"contract": contract.contract, "delivery": self.delivery_id, "skipped": reason}

    def _check_authorised(self, contract: Contract) -> Authorisation:
        today = self.ctx.today or dt.datetime.now(dt.UTC).date()
        refused = date_refusal(contract, today)  # validity dates, then the security assurance
        if refused is not None:
            raise AuthorisationError(refused)
        # Signed approvals of the current content, verified against the approver registry (which is
        # recorded in the ledger when it changed); unmasked columns need two approvers, one an IAM.
        authorisation = check_approvals(contract, ledger=self.ledger, config_dir=self.ctx.settings.config_dir,
                                        actor=self.ctx.actor)
        if contract.incremental is not None and contract.sample is not None and contract.sample.max_records:
            raise AuthorisationError("incremental deliveries cannot use sample.max_records (bottom-k depends on the "
                                     "whole population); sample by fraction only (docs/extraction.md)")
        return authorisation

    @fail_closed("extract")
    def extract(self) -> dict[str, Any]:
        """Read, mask and stage every dataset (merging partitions where a plan exists): ``ExtractResult``."""
        contract = self._contract()
        # Every table reflected and every column planned before any data is read (fail early).
        keys, _url, engine, planned = self._extract_setup(contract)
        catalogue = self._catalogue(contract)
        datasets: list[StagedDataset] = []
        sample: SampleResult | None = None
        try:
            plan = self.state.read_if_present(PARTITIONS)
            with contextlib.ExitStack() as held:
                if plan is not None:  # windows planned once, in the shared snapshot, for every partition alike
                    read = SourceRead(engine, snapshot=plan.snapshot)
                    windows = self._apply_windows(planned, plan.windows)
                else:
                    # Every read of the delivery (the windows, the sample draw, all datasets) sees the
                    # source at one instant; extract.consistent_read chooses how, per database.
                    read = held.enter_context(consistent_read(engine))
                    windows = self._incremental_windows(read, contract, planned)
                data_dir = make_private_dir(self.staging / "data")
                with HashPool(self.ctx.hash_workers or default_workers()) as pool:
                    if plan is not None and plan.sample is not None:
                        sample = plan.sample  # drawn in the shared snapshot
                        for item in planned:
                            item.population_rows = plan.population_rows.get(item.name)
                    elif contract.sample is not None:
                        sample = masking_engine.draw_sample(
                            engine, contract, planned, keys, batch_rows=self.ctx.settings.batch_rows,
                            spill_dir=self.staging / "sample-ranks", pool=pool, snapshot=read.snapshot,
                            connection=read.connection)
                    for item in planned:
                        path = data_dir / f"{item.name}.parquet"
                        # Never statistics (min/max: values) of an identifier or free-text column.
                        statistics = statistics_columns(item.dataset, catalogue)
                        if plan is not None and item.dataset.partition is not None:
                            rows = masking_engine.store_in_keyed_order(
                                self._part_files(plan, item.name), path, order_key=keys.order, dataset=item.name,
                                write_statistics=statistics)
                            item.rows = rows
                        else:
                            rows = masking_engine.write_masked(
                                engine, item, keys, path, batch_rows=self.ctx.settings.batch_rows, sample=sample,
                                entity=contract.sample.entity if contract.sample else None, pool=pool,
                                snapshot=read.snapshot, connection=read.connection, write_statistics=statistics)
                        datasets.append(_staged(item, rows, contract.linkage))
        finally:
            engine.dispose()
        if plan is not None:
            self._release_snapshot()
            shutil.rmtree(self.staging / "parts", ignore_errors=True)
        result = ExtractResult(key_id=keys.key_id, datasets=tuple(datasets), sample=_sample_summary(sample, planned),
                               windows=windows)
        self.state.write(EXTRACT, result)
        self._append("extract_done", {
            "key_id": result.key_id,
            "datasets": [{"name": d.name, "rows": d.rows, "columns": d.column_names} for d in result.datasets],
            "sample": None if result.sample is None else result.sample.to_dict(),
            **({"windows": result.windows_list()} if result.windows else {})})
        return handoffs.extract_xcom(result)

    # ---- partitioned extraction (docs/extraction.md) ----------------------------------------------
    def _part_files(self, plan: PartitionPlan, dataset: str) -> list[Path]:
        files = [self.staging / "parts" / f"{p.label}.parquet" for p in plan.dataset_parts(dataset)]
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise ContractExtractsError(f"dataset {dataset}: partition file(s) {', '.join(missing)} are missing; "
                                        "a partition task did not finish")
        return files

    def _release_snapshot(self) -> None:
        plan = self.state.read_if_present(PARTITIONS)
        if plan is None or not plan.snapshot:
            return
        done = any(r.contract == self.contract_id
                   for r in self.ledger.records(delivery=self.delivery_id, action=RELEASED))
        if not done:
            self._append(RELEASED, {"partitions": len(plan.parts)})

    def _extract_setup(self, contract: Contract) -> tuple[
            ContractKeys, URL, sa.Engine, list[masking_engine.PlannedDataset]]:
        master = resolve_master_key(self.ctx.key_source, contract.key_id)
        keys = ContractKeys.for_delivery(master, contract.contract, contract.linkage, self.delivery_id)
        reference_date = self.ctx.today or self.ctx.run_after.astimezone(dt.UTC).date()
        url = self.ctx.resolve_connection(contract.source.connection)
        if is_system_database(url.database):
            raise AuthorisationError(f"contract {contract.contract}: the connection {contract.source.connection!r} "
                                     "opens a database of the database system itself; nothing is read from it. Fix: "
                                     "connect to the database holding the data")
        # The population: every dataset carrying its entity reads only the population's rows (the semi-join).
        population = population_plan(contract, self._catalogue(contract))
        engine = create_source_engine(url)
        try:
            planned = masking_engine.plan_extract(engine, contract, file=str(self.ctx.contract_path),
                                                  reference_date=reference_date, population=population)
            masking_engine.attach_record_keys(planned, contract, master.secret)  # cell-key tables only
        except BaseException:
            engine.dispose()
            raise
        return keys, url, engine, planned

    @fail_closed("plan_partitions")
    def plan_partitions(self) -> dict[str, Any]:
        """Export one snapshot for the delivery, draw the sample in it, split partitioned datasets into ranges."""
        contract = self._contract()
        keys, url, engine, planned = self._extract_setup(contract)
        try:
            snapshot = partition_snapshot(engine, url, ledger_url=self.ctx.settings.ledger_url,
                                          contract=contract.contract, delivery=self.delivery_id)
            # Incremental windows narrow the queries first, so the ranges split the window's rows.
            windows = self._incremental_windows(SourceRead(engine, snapshot=snapshot), contract, planned)
            sample = None
            if contract.sample is not None:
                with HashPool(self.ctx.hash_workers or default_workers()) as pool:
                    sample = masking_engine.draw_sample(
                        engine, contract, planned, keys, batch_rows=self.ctx.settings.batch_rows,
                        spill_dir=self.staging / "sample-ranks", pool=pool, snapshot=snapshot)
            parts: list[PartitionRange] = []
            for item in planned:
                spec = item.dataset.partition
                if spec is None:
                    continue
                column = partition_column(item.table, item.name, spec.column)
                count = planned_parts(engine, item.table, spec.parts, spec.rows_per_part)
                parts += plan_ranges(engine, item.table, item.name, column, count,
                                     where=item.query.statement.whereclause)
        finally:
            engine.dispose()
        plan = PartitionPlan(snapshot=snapshot, sample=sample, parts=tuple(parts), windows=windows,
                             population_rows={i.name: i.population_rows for i in planned})
        make_private_dir(self.staging / "parts")
        self.state.write(PARTITIONS, plan)
        self._append("partitions_planned", {
            "snapshot": "shared (exported)" if snapshot else "per partition, bounded by a high-water mark",
            "datasets": {d: sum(1 for p in parts if p.dataset == d) for d in {p.dataset for p in parts}}})
        return handoffs.partitions_xcom(plan)

    @fail_closed("extract_partition")
    def extract_partition(self, part: Mapping[str, Any]) -> dict[str, Any]:
        """Read, mask and stage one key range of one dataset, inside the delivery's snapshot."""
        contract = self._contract()
        plan = self.state.read_if_present(PARTITIONS)
        if plan is None:
            raise ContractExtractsError("partition plan is missing; plan_partitions must run first")
        task = handoffs.partition_task(part)
        rng = plan.part(task)
        if rng is None:
            raise ContractExtractsError("this partition is not in the delivery's plan")
        keys, _url, engine, planned = self._extract_setup(contract)
        self._apply_windows(planned, plan.windows)
        item = next(i for i in planned if i.name == rng.dataset)
        target = self.staging / "parts" / f"{rng.label}.parquet"
        try:
            with HashPool(self.ctx.hash_workers or default_workers()) as pool:
                rows = masking_engine.write_masked(
                    engine, item, keys, target, batch_rows=self.ctx.settings.batch_rows, sample=plan.sample,
                    entity=contract.sample.entity if contract.sample else None, pool=pool, snapshot=plan.snapshot,
                    where=range_clause(item.table, rng), consistent=True,
                    write_statistics=statistics_columns(item.dataset, self._catalogue(contract)),
                    keyed_order=False)  # parts are staging only: the merge stores the keyed order
        finally:
            engine.dispose()
        log.info("partition %s: %d rows extracted and masked", rng.label, rows)
        return handoffs.partition_done_xcom(task, rows)

    def _incremental_windows(self, read: SourceRead, contract: Contract,
                             planned: list[masking_engine.PlannedDataset]) -> tuple[Window, ...] | None:
        """Narrow every planned query to its incremental window (docs/extraction.md); None if not incremental.

        The windows' upper ends are read in the delivery's consistent view of the source (``read``).
        """
        if contract.incremental is None:
            return None
        column = contract.incremental.column
        full = bool(self.ctx.trigger.get("full_refresh"))
        _delivery, previous = previous_marks(self.ledger, contract.contract)
        windows = []
        with read.connect() as conn:
            for item in planned:
                if column not in item.table.c:
                    raise SourceError(f"dataset {item.name!r}: incremental column {column!r} does not exist in "
                                      f"table {item.dataset.table!r}. Fix: add it or remove 'incremental'")
                filter_clause = item.query.statement.whereclause
                window = plan_window(item.name, column, previous.get(item.name),
                                     current_upper(conn, item.table, column, filter_clause), full_refresh=full)
                window.to_dict()  # a mark that cannot be stored fails here, before any row is read
                windows.append(window)
        self._apply_windows(planned, tuple(windows))
        log.info("incremental windows: %s", ", ".join(
            f"{w.dataset} {'full' if w.full else 'incremental'}" for w in windows))
        return tuple(windows)

    @staticmethod
    def _apply_windows(planned: list[masking_engine.PlannedDataset],
                       windows: tuple[Window, ...] | None) -> tuple[Window, ...] | None:
        """Narrow each planned dataset's query to its window (as planned; never re-read from the source)."""
        if not windows:
            return windows
        by_dataset = {w.dataset: w for w in windows}
        for item in planned:
            window = by_dataset.get(item.name)
            if window is None:
                raise ContractExtractsError(f"dataset {item.name}: no incremental window was planned for it")
            clause = window_clause(item.table, window)
            if clause is not None:
                item.query = dataclasses.replace(item.query, statement=item.query.statement.where(clause))
        return windows

    @fail_closed("disclosure")
    def disclosure(self) -> dict[str, Any]:
        """Aggregate tables, then risk assessment and treatment of the microdata (docs/disclosure.md)."""
        contract = self._contract()
        extract = self.state.read(EXTRACT)
        try:
            # Every delivered catalogued quasi-identifier is a key variable of the risk assessment.
            catalogue = self._catalogue(contract)
            result = run_disclosure(with_catalogue_keys(contract, catalogue), self.staging, extract,
                                    batch_rows=max(self.ctx.settings.batch_rows, VALIDATION_BATCH_ROWS),
                                    contract_file=str(self.ctx.contract_path),
                                    catalogued_keys=catalogue_key_variables(contract, catalogue))
        except DisclosureBlocked as exc:
            if exc.report is not None:
                self.state.write(DISCLOSURE, exc.report)
                operator_report(self.ctx.settings.home, self.contract_id, self.delivery_id,
                                {"disclosure.json": exc.report.to_dict()})
                self._append("disclosure_assessed", ledger_details(exc.report))
            raise
        self.state.write(DISCLOSURE, result)
        if result.assessed or result.aggregates:
            self._append("disclosure_assessed", ledger_details(result))
        return handoffs.disclosure_xcom(result)

    @fail_closed("validate")
    def validate(self) -> dict[str, Any]:
        """The release gate on the staged delivery (docs/disclosure.md); a failure blocks the delivery."""
        contract = self._contract()
        extract = self.state.read(EXTRACT)
        for ds in extract.datasets:
            if ds.column_names != list(contract.dataset(ds.name).columns):
                raise ValidationFailed(f"dataset {ds.name}: staged columns differ from the contract")
        disclosure = self.state.read_if_present(DISCLOSURE)
        if disclosure is None and (contract.disclosure is not None or contract_aggregates(contract)
                                   or not delivers_microdata(contract)):
            raise ValidationFailed("the contract needs disclosure control, but the disclosure stage did not "
                                   "run for this delivery; nothing is packaged or delivered")
        disclosure_doc = None if disclosure is None else disclosure.to_dict()
        run_year = (self.ctx.today or self.ctx.run_after.astimezone(dt.UTC).date()).year
        catalogue = self._catalogue(contract)
        result = run_release_gate(contract, self.staging, extract.to_dict(), disclosure_doc,
                                  self.ctx.resolve_connection(contract.source.connection),
                                  batch_rows=max(self.ctx.settings.batch_rows, VALIDATION_BATCH_ROWS),
                                  run_year=run_year,
                                  per_column=self.ctx.leak_sample_per_column, catalogue=catalogue,
                                  population=population_plan(contract, catalogue))
        outcome = ValidationOutcome(result.to_dict())
        self.state.write(VALIDATION, outcome)
        documents = {"validation.json": outcome.to_dict(),
                     **({"disclosure.json": disclosure_doc} if disclosure_doc else {})}
        report = operator_report(self.ctx.settings.home, self.contract_id, self.delivery_id, documents,
                                 result.all_summaries())
        if not result.success:
            failed = result.failed()
            self._append("validation_failed", {"failed": failed})
            raise ValidationFailed("validation failed, nothing is packaged or delivered: " + "; ".join(failed))
        leak_check = result.leak_check
        self._append("validation_passed", {"datasets": [
            {"name": s.dataset, "rows": s.rows, "expectations": len(s.expectations)} for s in result.summaries],
            **({"leak_check": {k: v for k, v in leak_check.items() if k != "columns"}}
               if leak_check is not None else {})})
        return handoffs.validation_xcom(sum(len(s.expectations) for s in result.all_summaries()), report)

    @fail_closed("package")
    def package(self) -> dict[str, Any]:
        """Codebook, manifest, signature and encryption to the contract's recipients: ``PackageInfo``."""
        contract = self._contract()
        fmt = package_format(contract.recipients)
        done = self._delivered(contract)
        if done is not None:  # a re-run of a delivered run: never build (or send) a second package
            recipients = done.get("recipients")
            info = PackageInfo(package=done["package"], sha256=done["sha256"], bytes=done.get("bytes"),
                               manifest_sha256=done.get("manifest_sha256"), format=done.get("format", fmt),
                               recipients=None if recipients is None else tuple(recipients), already_delivered=True)
            self.state.write(PACKAGE, info)
            log.info("delivery %s was already delivered as %s; not packaging again", self.delivery_id, info.package)
            return handoffs.package_xcom(info)
        extract = self.state.read(EXTRACT)
        validation = self.state.read(VALIDATION)
        if not validation.success:
            raise ValidationFailed("validation did not pass; nothing is packaged")
        disclosure = self.state.read_if_present(DISCLOSURE)
        signing_key = load_signing_key()
        created = dt.datetime.now(dt.UTC).replace(microsecond=0)
        (self.staging / CODEBOOK).write_text(render_codebook(contract, self.delivery_id, created, extract, disclosure,
                                                             self._catalogue(contract)),
                                             encoding="utf-8")
        files = package_contents(self.staging, extract, disclosure)
        # Recipients come from the contract only (pinned keys; the content hash covers them).
        recipients = manifest_recipients(contract.recipients)
        manifest = build_manifest(contract=contract, delivery_id=self.delivery_id, created=created, extract=extract,
                                  validation=validation.document, disclosure=disclosure, files=files,
                                  sender=signing_key.public_key(), recipients=recipients,
                                  ledger_head=head_for_manifest(self.ledger))  # the contractor's receipt
        built = build_package(staging_dir=self.staging,
                              name=package_name(contract.contract, self.delivery_id, fmt),
                              manifest=manifest, files=files, signing_key=signing_key,
                              encrypt=self._encryptor(contract, fmt), ssh_signature=True,
                              created_epoch=int(created.timestamp()))
        info = PackageInfo(package=built.path.name, sha256=built.sha256, bytes=built.bytes,
                           manifest_sha256=built.manifest_sha256, format=fmt, recipients=tuple(recipients))
        self.state.write(PACKAGE, info)
        return handoffs.package_xcom(info)

    def _encryptor(self, contract: Contract, fmt: str) -> Encryptor:
        if fmt != "openpgp":
            return age_encryptor(age_recipient_keys(contract.recipients))
        key_dir = self.ctx.settings.config_dir / "recipients"

        def encrypt(plain: Path, out: Path) -> None:
            encrypt_openpgp(plain, out, list(contract.recipients), key_dir=key_dir, work_dir=self.staging)
        return encrypt

    @fail_closed("deliver")
    def deliver(self) -> dict[str, Any]:
        """Send the package to the contract's transport exactly once (a retry finds the earlier delivery)."""
        contract = self._contract()
        info = self.state.read(PACKAGE)
        # An earlier attempt may have published and died before recording it: settle its intent first.
        own = recovery.by_delivery(self.ledger.records(delivery=self.delivery_id)).get(
            (self.contract_id, self.delivery_id))
        if own is not None and own.unsettled_intents():
            recovery.settle(self.ledger, own, actor=self.ctx.actor, resolve_sftp=self._sftp_endpoint,
                            report=recovery.Report(), reconciled_by="retry")
        done = self._delivered(contract)
        if done is not None:
            if done.get("sha256") != info.sha256:
                raise DeliveryError(f"delivery {self.delivery_id} was already delivered with a "
                                    "different package; refusing a second copy")
            log.info("delivery %s was already delivered; not sending again", self.delivery_id)
            return handoffs.delivered_xcom(done["path"], done["sha256"], True)
        package = self.staging / info.package
        details: dict[str, Any] = {
            "package": info.package, "sha256": info.sha256, "manifest_sha256": info.manifest_sha256,
            "format": info.format,
            "recipients": [dict(r) for r in info.recipients] if info.recipients
            else manifest_recipients(contract.recipients),
            "sender": fingerprint(load_signing_key().public_key()),
        }
        # The intent names the package before anything exists at its destination (pipeline.recovery).
        if contract.delivery.transport == "sftp":
            destination = recovery.intent_destination("sftp", package=info.package,
                                                      connection=contract.delivery.connection or "",
                                                      segments=contract.delivery.segments())
        else:
            folder = contract.delivery.path or contract.contractor_slug
            destination = recovery.intent_destination(
                "local", package=info.package,
                path=within(self.ctx.settings.drop_dir, folder, "delivery.path") / info.package)
        intent = self.ledger.append(actor=self.ctx.actor, action=recovery.INTENT, contract=self.contract_id,
                                    delivery=self.delivery_id, details={
                                        **destination, "sha256": info.sha256, "bytes": info.bytes,
                                        "manifest_sha256": info.manifest_sha256, "format": info.format})
        details["intent_seq"] = intent.seq
        if contract.delivery.transport == "sftp":
            conn_id = contract.delivery.connection or ""
            endpoint = self._sftp_endpoint(conn_id)
            sent = deliver_sftp(package, endpoint=endpoint, segments=contract.delivery.segments(),
                                expected_sha256=info.sha256, policy=self.ctx.sftp_retry, log=log.warning)
            details.update(transport="sftp", connection=conn_id, server=endpoint.address,
                           host_key=sent.host_key, path=sent.path, bytes=sent.bytes,
                           verified_by=sent.verified_by, attempts=sent.attempts,
                           already_present=sent.already_delivered)
            result = handoffs.delivered_xcom(sent.path, sent.sha256, sent.already_delivered)
        else:
            folder = contract.delivery.path or contract.contractor_slug
            receipt = deliver_local(package, drop_root=self.ctx.settings.drop_dir, folder=folder,
                                    expected_sha256=info.sha256)
            details.update(transport=receipt.transport, path=receipt.path, bytes=receipt.bytes)
            result = handoffs.delivered_xcom(receipt.path, receipt.sha256, receipt.already_delivered)
        self._append("delivered", details)
        log.info("delivered %s to %s", info.package, result["path"])
        return result

    @fail_closed("record")
    def record(self) -> dict[str, Any]:
        """Close the delivery in the ledger (``run_completed``)."""
        summary = handoffs.completed_summary(self.state.read(EXTRACT), self.state.read(PACKAGE))
        self._append("run_completed", summary)
        return summary

    def cleanup(self) -> dict[str, Any]:
        """Remove the plaintext staging folder; runs after success and after failure alike."""
        existed = self.staging.exists()
        try:
            self._release_snapshot()  # the holder ends; partitions can no longer import the snapshot
        except Exception as exc:  # cleanup must still remove plaintext
            log.error("could not release the source snapshot: %s", value_free(exc))
        remove_tree(self.staging)
        if self.staging.exists():
            raise StageFailed(f"staging folder for delivery {self.delivery_id} could not be removed")
        try:
            if existed:
                self._append("staging_removed", {"staging": "removed"})
        finally:
            self.close()
        return {"removed": existed}

    def run_all(self) -> dict[str, Any]:
        """All stages in order (CLI); cleanup always runs."""
        try:
            self.authorise()
            contract = load_contract(self.ctx.contract_path)
            if any(d.partition for d in contract.datasets):
                for part in self.plan_partitions()["parts"]:
                    self.extract_partition(part)
            for stage in STAGES[1:]:
                getattr(self, stage)()
            return {"delivery_id": self.delivery_id, "package": handoffs.package_xcom(self.state.read(PACKAGE))}
        finally:
            self.cleanup()


def _staged(item: masking_engine.PlannedDataset, rows: int, linkage: str) -> StagedDataset:
    """What the extract staged for one dataset: its file, rows, and every column's type and treatment."""
    return StagedDataset(
        name=item.name, file=f"data/{item.name}.parquet", rows=rows,
        columns=tuple(StagedColumn(name=p.name, type=str(p.output_type), treatment=p.treatment.treatment,
                                   pseudonym=p.is_pseudonym, source_not_null=p.output_not_null,
                                   description=describe(p, linkage)) for p in item.plans))


def _sample_summary(sample: SampleResult | None,
                    planned: list[masking_engine.PlannedDataset]) -> SampleSummary | None:
    """Sizes in distinct entities (for grossing); rows per dataset before and after sampling."""
    if sample is None:
        return None
    return SampleSummary(entity=sample.entity, fraction_requested=sample.fraction, max_records=sample.max_records,
                         population=sample.population, sample_size=sample.sample_size,
                         fraction_delivered=sample.fraction_delivered,
                         datasets=tuple(SampledDataset(name=i.name, population_rows=i.population_rows, rows=i.rows)
                                        for i in planned))


def _frames(exc: BaseException) -> str:
    return "".join(traceback.format_tb(exc.__traceback__))
