"""The delivery pipeline, stage by stage, framework-free.

authorise → extract (+mask, streamed into staged Parquet) → validate → package (+sign, +encrypt)
→ deliver → record, and cleanup (always). The CLI and the Airflow tasks call the same methods.

Every stage reloads the contract and checks that its content hash still equals the hash recorded
when the run started, so a file edited mid-run cannot change what is delivered. Stages hand over
through small value-free JSON files in the private staging folder; XCom carries only paths, counts
and hashes. Every failure is fail-closed: nothing further runs, and the ledger gets a ``blocked``
record naming the stage and the reason (never a data value: foreign exceptions are reduced to
their type name).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from sqlalchemy.engine import URL

from audit.ledger import Ledger
from contracts.loading import content_hash, load_contract
from contracts.model import Contract
from contracts.treatments import Pseudonymise
from core.errors import (
    AuthorisationError,
    ContractExtractsError,
    DeliveryError,
    SourceError,
    StageFailed,
    ValidationFailed,
)
from core.paths import make_private_dir, remove_tree, safe_segment
from core.settings import Settings
from delivery.package import (
    PACKAGE_FORMAT,
    PackageFile,
    build_package,
    file_entries,
    package_name,
)
from delivery.recipients import manifest_recipients, package_format
from delivery.signing import fingerprint, load_signing_key
from delivery.transports import deliver_local
from extract.sources import create_source_engine
from masking.keys import ContractKeys, KeySource, resolve_master_key
from masking.sampling import SampleResult
from masking.treatments import describe

log = logging.getLogger(__name__)

# Great Expectations has a fixed cost per validated batch: validate in larger (still bounded) batches.
VALIDATION_BATCH_ROWS = 250_000

STAGES = ("authorise", "extract", "disclosure", "validate", "package", "deliver", "record")


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
    # SFTP deliveries: connection id → delivery.sftp.SFTPEndpoint (default: AIRFLOW_CONN_<ID>), retry policy.
    resolve_sftp: Callable[[str], Any] | None = None
    sftp_retry: Any = None
    # Master keys: default CONTRACT_EXTRACTS_MASTER_KEY / _FILE; Airflow passes airflow_glue.secrets' source.
    key_source: KeySource | None = None
    # Processes that hash (pseudonyms, sample ranks, date shifts); None: CONTRACT_EXTRACTS_HASH_WORKERS or every core.
    hash_workers: int | None = None
    # Release gate: raw identifiers drawn per identifier column for the leak check (held in memory only).
    leak_sample_per_column: int = 1000


class Pipeline:
    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.delivery_id = delivery_id_for(ctx.run_key, ctx.run_after)
        self.contract_id = ctx.contract_path.stem
        self._ledger: Ledger | None = None

    # ---- shared helpers ----------------------------------------------------------------------
    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            from audit.keys import open_ledger

            self._ledger = open_ledger(self.ctx.settings)  # keyed when a ledger key is configured
        return self._ledger

    @property
    def staging(self) -> Path:
        return (self.ctx.settings.staging_dir / safe_segment(self.contract_id, "contract id")
                / self.delivery_id)

    def close(self) -> None:
        if self._ledger is not None:
            self._ledger.close()
            self._ledger = None

    def _append(self, action: str, details: dict) -> None:
        self.ledger.append(actor=self.ctx.actor, action=action, contract=self.contract_id,
                           delivery=self.delivery_id, details=details)

    def _run_stage(self, stage: str, body: Callable[[], dict]) -> dict:
        try:
            return body()
        except ContractExtractsError as exc:
            self._record_failure(stage, str(exc), final=True)
            raise
        except Exception as exc:
            reason = f"{stage} failed: {type(exc).__name__}"
            self._record_failure(stage, reason, final=self.ctx.final_attempt,
                                 frames=_frames(exc))
            raise StageFailed(reason) from None

    def _record_failure(self, stage: str, reason: str, *, final: bool, frames: str | None = None) -> None:
        if frames:
            log.error("stage %s failed; traceback frames (messages withheld, they may hold data):\n%s",
                      stage, frames)
        try:
            self._append("blocked" if final else "stage_failed", {"stage": stage, "reason": reason,
                                                                  "final": final})
        except Exception as exc:  # the stage fails anyway; never hide the original failure
            log.error("could not write the ledger record for the failed stage %s: %s", stage,
                      type(exc).__name__)

    def _contract(self, expected_hash: str | None = None) -> Contract:
        contract = load_contract(self.ctx.contract_path)
        if expected_hash is None:
            expected_hash = self._started()["contract_hash"]
        if content_hash(contract) != expected_hash:
            raise AuthorisationError(f"contract {contract.contract} changed on disk during the run; "
                                     "nothing was delivered. Fix: run again")
        return contract

    def _started(self) -> dict:
        for record in reversed(self.ledger.records(delivery=self.delivery_id, action="run_started")):
            if record.contract == self.contract_id:
                return record.details_obj()
        raise AuthorisationError(f"delivery {self.delivery_id} has no run_started record; the authorise "
                                 "stage must run first")

    def _write_state(self, name: str, data: dict) -> None:
        (self.staging / name).write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")

    def _read_state(self, name: str) -> dict:
        path = self.staging / name
        if not path.exists():
            raise ContractExtractsError(f"staging file {name} is missing for delivery {self.delivery_id}; "
                                        "an earlier stage did not finish")
        return json.loads(path.read_text(encoding="utf-8"))

    # ---- stages ------------------------------------------------------------------------------
    def authorise(self) -> dict:
        def body() -> dict:
            contract_file = str(self.ctx.contract_path)
            try:
                contract = load_contract(self.ctx.contract_path)
            except ContractExtractsError:
                self._append("run_started", {"contract_file": contract_file, "contract_hash": None,
                                             "trigger": self.ctx.trigger})
                raise
            digest = content_hash(contract)
            self._append("run_started", {"contract_file": contract_file, "contract_hash": digest,
                                         "contractor": contract.contractor, "trigger": self.ctx.trigger})
            self._check_authorised(contract)
            resolve_master_key(self.ctx.key_source, contract.key_id)  # the pinned or current key is available
            load_signing_key()
            make_private_dir(self.staging)
            # Which approvals this run relies on (set by _check_authorised; see authorisation/gate.py).
            self._append("authorised", self._authorisation.details())
            log.info("authorised contract %s, delivery %s", contract.contract, self.delivery_id)
            return {"contract": contract.contract, "delivery_id": self.delivery_id, "contract_hash": digest}
        return self._run_stage("authorise", body)

    def _check_authorised(self, contract: Contract) -> None:
        from authorisation.gate import check_approvals, date_refusal

        today = self.ctx.today or dt.datetime.now(dt.UTC).date()
        refused = date_refusal(contract, today)  # validity dates, then the security assurance
        if refused is not None:
            raise AuthorisationError(refused)
        # Signed approvals of the current content, verified against the approver registry (which is
        # recorded in the ledger when it changed); unmasked columns need two approvers, one an IAM.
        self._authorisation = check_approvals(contract, ledger=self.ledger, config_dir=self.ctx.settings.config_dir,
                                              actor=self.ctx.actor)
        if contract.incremental is not None and contract.sample is not None and contract.sample.max_records:
            raise AuthorisationError("incremental deliveries cannot use sample.max_records (bottom-k depends on the "
                                     "whole population); sample by fraction only (docs/extraction.md)")

    def extract(self) -> dict:
        def body() -> dict:
            from extract.partitioning import exported_snapshot, snapshot_connection
            from masking.engine import draw_sample, write_masked
            from masking.hashing import HashPool, default_workers

            contract = self._contract()
            # Every table reflected and every column planned before any data is read (fail early).
            keys, _url, engine, planned = self._extract_setup(contract)
            datasets = []
            sample = None
            try:
                plan = self._partition_plan()
                shared = None  # one connection for every read (MariaDB/MySQL)
                with contextlib.ExitStack() as held:
                    if plan:  # windows planned once, in the shared snapshot, for every partition alike
                        snapshot = plan["snapshot"]
                        windows = self._apply_windows(planned, plan.get("windows"))
                    else:
                        # Every read of the delivery (the windows, the sample draw, all datasets) sees the
                        # source at one instant: PostgreSQL through one exported snapshot, as partitions do;
                        # MariaDB/MySQL through one consistent-snapshot transaction that reads them in turn.
                        snapshot = held.enter_context(exported_snapshot(engine))
                        if engine.dialect.name in ("mysql", "mariadb"):
                            shared = held.enter_context(snapshot_connection(engine, None))
                        windows = self._incremental_windows(engine, contract, planned, snapshot=snapshot,
                                                            connection=shared)
                    data_dir = make_private_dir(self.staging / "data")
                    with HashPool(self.ctx.hash_workers or default_workers()) as pool:
                        if plan and plan["sample"]:
                            sample = SampleResult.from_state(plan["sample"])  # drawn in the shared snapshot
                            for item in planned:
                                item.population_rows = plan["population_rows"].get(item.name)
                        elif contract.sample is not None:
                            sample = draw_sample(engine, contract, planned, keys,
                                                 batch_rows=self.ctx.settings.batch_rows,
                                                 spill_dir=self.staging / "sample-ranks", pool=pool, snapshot=snapshot,
                                                 connection=shared)
                        for item in planned:
                            path = data_dir / f"{item.name}.parquet"
                            if plan and item.dataset.partition is not None:
                                rows = _merge_parts(self._part_files(plan, item.name), path)
                                item.rows = rows
                            else:
                                rows = write_masked(engine, item, keys, path, batch_rows=self.ctx.settings.batch_rows,
                                                    sample=sample,
                                                    entity=contract.sample.entity if contract.sample else None,
                                                    pool=pool, snapshot=snapshot, connection=shared)
                            datasets.append({
                                "name": item.name, "file": f"data/{item.name}.parquet", "rows": rows,
                                "columns": [{"name": p.name, "type": str(p.output_type),
                                             "treatment": p.treatment.treatment, "pseudonym": p.is_pseudonym,
                                             "source_not_null": p.output_not_null,
                                             "description": describe(p, contract.linkage)} for p in item.plans],
                            })
            finally:
                engine.dispose()
            sample_state = None
            if sample is not None:
                # Sizes in distinct entities (for grossing); rows per dataset before and after sampling.
                sample_state = {**sample.to_dict(), "datasets": [
                    {"name": item.name, "population_rows": item.population_rows, "rows": item.rows}
                    for item in planned]}
            if plan:
                self._release_snapshot()
                shutil.rmtree(self.staging / "parts", ignore_errors=True)
            state = {"key_id": keys.key_id, "datasets": datasets, "sample": sample_state, "windows": windows}
            self._write_state("extract.json", state)
            self._append("extract_done", {"key_id": keys.key_id, "datasets": [
                {"name": d["name"], "rows": d["rows"], "columns": [c["name"] for c in d["columns"]]}
                for d in datasets], "sample": sample_state, **({"windows": windows} if windows else {})})
            return {"datasets": [{"name": d["name"], "rows": d["rows"]} for d in datasets],
                    **({"sample": {k: sample_state[k] for k in ("population", "sample_size")}} if sample_state
                       else {})}
        return self._run_stage("extract", body)

    # ---- partitioned extraction (docs/extraction.md) ----------------------------------------------
    def _partition_plan(self) -> dict | None:
        path = self.staging / "partitions.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None

    def _part_files(self, plan: dict, dataset: str) -> list[Path]:
        parts = sorted((p for p in plan["parts"] if p["dataset"] == dataset), key=lambda p: p["index"])
        files = [self.staging / "parts" / f"{p['dataset']}-part{p['index']:04d}.parquet" for p in parts]
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise ContractExtractsError(f"dataset {dataset}: partition file(s) {', '.join(missing)} are missing; "
                                        "a partition task did not finish")
        return files

    def _release_snapshot(self) -> None:
        plan = self._partition_plan()
        if not plan or not plan.get("snapshot"):
            return
        from extract.snapshot_holder import RELEASED

        done = any(r.contract == self.contract_id
                   for r in self.ledger.records(delivery=self.delivery_id, action=RELEASED))
        if not done:
            self._append(RELEASED, {"partitions": len(plan["parts"])})

    def _extract_setup(self, contract: Contract):
        from masking.engine import plan_extract

        master = resolve_master_key(self.ctx.key_source, contract.key_id)
        keys = ContractKeys.for_delivery(master, contract.contract, contract.linkage, self.delivery_id)
        reference_date = self.ctx.today or self.ctx.run_after.astimezone(dt.UTC).date()
        url = self.ctx.resolve_connection(contract.source.connection)
        engine = create_source_engine(url)
        try:
            planned = plan_extract(engine, contract, file=str(self.ctx.contract_path), reference_date=reference_date)
        except BaseException:
            engine.dispose()
            raise
        return keys, url, engine, planned

    def plan_partitions(self) -> dict:
        """Export one snapshot for the delivery, draw the sample in it, split partitioned datasets into ranges."""
        def body() -> dict:
            from extract import snapshot_holder
            from extract.partitioning import partition_column, plan_ranges, planned_parts
            from masking.engine import draw_sample
            from masking.hashing import HashPool, default_workers

            contract = self._contract()
            keys, url, engine, planned = self._extract_setup(contract)
            snapshot = None
            try:
                if engine.dialect.name == "postgresql":
                    snapshot, _pid = snapshot_holder.start(url, ledger_url=self.ctx.settings.ledger_url,
                                                           contract=contract.contract, delivery=self.delivery_id)
                # Incremental windows narrow the queries first, so the ranges split the window's rows.
                windows = self._incremental_windows(engine, contract, planned, snapshot=snapshot)
                sample_state = None
                if contract.sample is not None:
                    with HashPool(self.ctx.hash_workers or default_workers()) as pool:
                        sample = draw_sample(engine, contract, planned, keys, batch_rows=self.ctx.settings.batch_rows,
                                             spill_dir=self.staging / "sample-ranks", pool=pool, snapshot=snapshot)
                    sample_state = sample.to_state()
                parts = []
                for item in planned:
                    if item.dataset.partition is None:
                        continue
                    spec = item.dataset.partition
                    column = partition_column(item.table, item.name, spec.column)
                    count = planned_parts(engine, item.table, spec.parts, spec.rows_per_part)
                    for rng in plan_ranges(engine, item.table, item.name, column, count,
                                           where=item.query.statement.whereclause):
                        parts.append(rng.to_dict())
            finally:
                engine.dispose()
            plan = {"snapshot": snapshot, "sample": sample_state, "parts": parts, "windows": windows,
                    "population_rows": {i.name: i.population_rows for i in planned}}
            make_private_dir(self.staging / "parts")
            self._write_state("partitions.json", plan)
            self._append("partitions_planned", {
                "snapshot": "shared (exported)" if snapshot else "per partition, bounded by a high-water mark",
                "datasets": {d: sum(1 for p in parts if p["dataset"] == d) for d in {p["dataset"] for p in parts}}})
            return {"parts": [{"dataset": p["dataset"], "index": p["index"]} for p in parts]}
        return self._run_stage("plan_partitions", body)

    def extract_partition(self, part: dict) -> dict:
        """Read, mask and stage one key range of one dataset, inside the delivery's snapshot."""
        def body() -> dict:
            from extract.partitioning import PartitionRange, range_clause
            from masking.engine import write_masked
            from masking.hashing import HashPool, default_workers

            contract = self._contract()
            plan = self._partition_plan()
            if plan is None:
                raise ContractExtractsError("partition plan is missing; plan_partitions must run first")
            spec = next((p for p in plan["parts"] if p["dataset"] == part.get("dataset")
                         and p["index"] == part.get("index")), None)
            if spec is None:
                raise ContractExtractsError("this partition is not in the delivery's plan")
            rng = PartitionRange.from_dict(spec)
            keys, _url, engine, planned = self._extract_setup(contract)
            self._apply_windows(planned, plan.get("windows"))
            item = next(i for i in planned if i.name == rng.dataset)
            sample = SampleResult.from_state(plan["sample"]) if plan["sample"] else None
            target = self.staging / "parts" / f"{rng.label}.parquet"
            try:
                with HashPool(self.ctx.hash_workers or default_workers()) as pool:
                    rows = write_masked(engine, item, keys, target, batch_rows=self.ctx.settings.batch_rows,
                                        sample=sample, entity=contract.sample.entity if contract.sample else None,
                                        pool=pool, snapshot=plan["snapshot"], where=range_clause(item.table, rng),
                                        consistent=True)
            finally:
                engine.dispose()
            log.info("partition %s: %d rows extracted and masked", rng.label, rows)
            return {"dataset": rng.dataset, "index": rng.index, "rows": rows}
        return self._run_stage("extract_partition", body)

    def _incremental_windows(self, engine, contract: Contract, planned: list, *, snapshot: str | None = None,
                             connection=None) -> list[dict] | None:
        """Narrow every planned query to its incremental window (docs/extraction.md); None if not incremental.

        ``snapshot``: the delivery's shared snapshot, in which the windows' upper ends are read;
        ``connection``: the delivery's shared consistent transaction (MariaDB/MySQL) to read them in.
        """
        if contract.incremental is None:
            return None
        from extract.partitioning import snapshot_connection
        from pipeline.incremental import current_upper, plan_window, previous_marks

        column = contract.incremental.column
        full = bool(self.ctx.trigger.get("full_refresh"))
        _delivery, previous = previous_marks(self.ledger, contract.contract)
        windows = []
        with (contextlib.nullcontext(connection) if connection is not None
              else snapshot_connection(engine, snapshot) if snapshot else engine.connect()) as conn:
            for item in planned:
                if column not in item.table.c:
                    raise SourceError(f"dataset {item.name!r}: incremental column {column!r} does not exist in "
                                      f"table {item.dataset.table!r}. Fix: add it or remove 'incremental'")
                filter_clause = item.query.statement.whereclause
                window = plan_window(item.name, column, previous.get(item.name),
                                     current_upper(conn, item.table, column, filter_clause), full_refresh=full)
                windows.append(window.to_dict())
        self._apply_windows(planned, windows)
        log.info("incremental windows: %s", ", ".join(
            f"{w['dataset']} {'full' if w['full'] else 'incremental'}" for w in windows))
        return windows

    @staticmethod
    def _apply_windows(planned: list, windows: list[dict] | None) -> list[dict] | None:
        """Narrow each planned dataset's query to its window (as planned; never re-read from the source)."""
        if not windows:
            return windows
        import dataclasses

        from pipeline.incremental import Window, window_clause

        by_dataset = {w["dataset"]: Window.from_dict(w) for w in windows}
        for item in planned:
            window = by_dataset.get(item.name)
            if window is None:
                raise ContractExtractsError(f"dataset {item.name}: no incremental window was planned for it")
            clause = window_clause(item.table, window)
            if clause is not None:
                item.query = dataclasses.replace(item.query, statement=item.query.statement.where(clause))
        return windows

    def disclosure(self) -> dict:
        """Aggregate tables, then risk assessment and treatment of the microdata (docs/disclosure.md)."""
        def body() -> dict:
            from disclosure.assess import ledger_details, run_disclosure
            from disclosure.treatment import DisclosureBlocked
            from validation.docs import operator_report

            contract = self._contract()
            state = self._read_state("extract.json")
            try:
                doc = run_disclosure(contract, self.staging, state,
                                     batch_rows=max(self.ctx.settings.batch_rows, VALIDATION_BATCH_ROWS),
                                     contract_file=str(self.ctx.contract_path))
            except DisclosureBlocked as exc:
                if exc.report:
                    self._write_state("disclosure.json", exc.report)
                    operator_report(self.ctx.settings.home, self.contract_id, self.delivery_id,
                                    {"disclosure.json": exc.report})
                    self._append("disclosure_assessed", ledger_details(exc.report))
                raise
            self._write_state("disclosure.json", doc)
            if doc["assessed"] or doc["aggregates"]:
                self._append("disclosure_assessed", ledger_details(doc))
            return {"assessed": doc["assessed"],
                    "datasets": [{"name": d["name"], "k_anonymity": d["after"]["k_anonymity"],
                                  "suppressed_records": d["treatment"]["suppressed_records"]} for d in doc["datasets"]],
                    "aggregates": [{"name": a["name"], "cells": a["cells"], "published": a["published"]}
                                   for a in doc["aggregates"]]}
        return self._run_stage("disclosure", body)

    def validate(self) -> dict:
        def body() -> dict:
            from contracts.disclosure import contract_aggregates, delivers_microdata
            from validation.docs import operator_report
            from validation.source import run_release_gate

            contract = self._contract()
            state = self._read_state("extract.json")
            for ds in state["datasets"]:
                listed = list(contract.dataset(ds["name"]).columns)
                if [c["name"] for c in ds["columns"]] != listed:
                    raise ValidationFailed(f"dataset {ds['name']}: staged columns differ from the contract")
            disclosure_doc = (self._read_state("disclosure.json") if (self.staging / "disclosure.json").exists()
                              else None)
            if disclosure_doc is None and (contract.disclosure is not None or contract_aggregates(contract)
                                           or not delivers_microdata(contract)):
                raise ValidationFailed("the contract needs disclosure control, but the disclosure stage did not "
                                       "run for this delivery; nothing is packaged or delivered")
            run_year = (self.ctx.today or self.ctx.run_after.astimezone(dt.UTC).date()).year
            result = run_release_gate(contract, self.staging, state, disclosure_doc,
                                      self.ctx.resolve_connection(contract.source.connection),
                                      batch_rows=max(self.ctx.settings.batch_rows, VALIDATION_BATCH_ROWS),
                                      run_year=run_year,
                                      per_column=self.ctx.leak_sample_per_column)
            summary = result.to_dict()
            self._write_state("validation.json", summary)
            documents = {"validation.json": summary, **({"disclosure.json": disclosure_doc} if disclosure_doc else {})}
            report = operator_report(self.ctx.settings.home, self.contract_id, self.delivery_id, documents,
                                     result.all_summaries())
            if not result.success:
                failed = result.failed()
                self._append("validation_failed", {"failed": failed})
                raise ValidationFailed("validation failed, nothing is packaged or delivered: " + "; ".join(failed))
            self._append("validation_passed", {"datasets": [
                {"name": s.dataset, "rows": s.rows, "expectations": len(s.expectations)} for s in result.summaries],
                **({"leak_check": {k: v for k, v in summary["leak_check"].items() if k != "columns"}}
                   if "leak_check" in summary else {})})
            return {"success": True, "expectations": sum(len(s.expectations) for s in result.all_summaries()),
                    **({"report": str(report)} if report else {})}
        return self._run_stage("validate", body)

    def package(self) -> dict:
        def body() -> dict:
            from delivery.openpgp import encrypt_openpgp
            from delivery.package import age_encryptor, checksums_file
            from delivery.recipients import age_recipient_keys

            contract = self._contract()
            fmt = package_format(contract.recipients)
            for record in self.ledger.records(delivery=self.delivery_id, action="delivered"):
                if record.contract == contract.contract:
                    # A re-run of a delivered run: never build (or send) a second package.
                    done = record.details_obj()
                    info = {k: done.get(k) for k in ("package", "sha256", "bytes", "manifest_sha256", "recipients")}
                    info.update(format=done.get("format", fmt), already_delivered=True)
                    self._write_state("package.json", info)
                    log.info("delivery %s was already delivered as %s; not packaging again", self.delivery_id,
                             info["package"])
                    return info
            state = self._read_state("extract.json")
            validation = self._read_state("validation.json")
            if not validation.get("success"):
                raise ValidationFailed("validation did not pass; nothing is packaged")
            from disclosure.report import manifest_section, microdata_included, package_files

            disclosure = (self._read_state("disclosure.json") if (self.staging / "disclosure.json").exists()
                          else None)
            signing_key = load_signing_key()
            created = dt.datetime.now(dt.UTC).replace(microsecond=0)
            codebook = self.staging / "codebook.md"
            codebook.write_text(render_codebook(contract, self.delivery_id, created, state, disclosure),
                                encoding="utf-8")
            files = [PackageFile(arcname="codebook.md", path=codebook)]
            for ds in state["datasets"] if microdata_included(disclosure) else []:
                files.append(PackageFile(
                    arcname=ds["file"], path=self.staging / ds["file"], rows=ds["rows"],
                    schema=tuple({"name": c["name"], "type": c["type"], "treatment": c["treatment"]}
                                 for c in ds["columns"])))
            for table in package_files(disclosure):  # aggregate tables: data/<name>.parquet
                files.append(PackageFile(arcname=table["arcname"], path=self.staging / table["arcname"],
                                         rows=table["rows"], schema=table["schema"]))
            files.append(checksums_file(self.staging, files))
            recipients = manifest_recipients(contract.recipients)
            manifest = {
                "format": PACKAGE_FORMAT,
                "contract": contract.contract,
                "title": contract.title,
                "contractor": contract.contractor,
                "delivery": self.delivery_id,
                "created_at": created.isoformat(),
                "key_id": state["key_id"],
                "linkage": contract.linkage,
                "extract": {"kind": "incremental" if state.get("windows") and not all(
                                w.get("full") for w in state["windows"]) else "full",
                            "windows": state.get("windows"), "sample": state.get("sample")},
                "sender": {"signature": "ed25519", "fingerprint": fingerprint(signing_key.public_key())},
                "recipients": recipients,
                "files": file_entries(files),
                "validation": validation,
                "disclosure": manifest_section(disclosure),
            }
            # Recipients come from the contract only (pinned keys; the content hash covers them).
            if fmt == "openpgp":
                key_dir = self.ctx.settings.config_dir / "recipients"

                def encrypt(plain: Path, out: Path) -> None:
                    encrypt_openpgp(plain, out, list(contract.recipients), key_dir=key_dir, work_dir=self.staging)
            else:
                encrypt = age_encryptor(age_recipient_keys(contract.recipients))
            built = build_package(staging_dir=self.staging,
                                  name=package_name(contract.contract, self.delivery_id, fmt),
                                  manifest=manifest, files=files, signing_key=signing_key, encrypt=encrypt,
                                  ssh_signature=True, created_epoch=int(created.timestamp()))
            info = {"package": built.path.name, "sha256": built.sha256, "bytes": built.bytes,
                    "manifest_sha256": built.manifest_sha256, "format": fmt, "recipients": recipients}
            self._write_state("package.json", info)
            return info
        return self._run_stage("package", body)

    def deliver(self) -> dict:
        def body() -> dict:
            contract = self._contract()
            info = self._read_state("package.json")
            for record in self.ledger.records(delivery=self.delivery_id, action="delivered"):
                if record.contract == contract.contract:
                    done = record.details_obj()
                    if done.get("sha256") != info["sha256"]:
                        raise DeliveryError(f"delivery {self.delivery_id} was already delivered with a "
                                            "different package; refusing a second copy")
                    log.info("delivery %s was already delivered; not sending again", self.delivery_id)
                    return {"path": done["path"], "sha256": done["sha256"], "already_delivered": True}
            package = self.staging / info["package"]
            details: dict[str, Any] = {
                "package": info["package"], "sha256": info["sha256"], "manifest_sha256": info["manifest_sha256"],
                "format": info.get("format", "age"),
                "recipients": info.get("recipients") or manifest_recipients(contract.recipients),
            }
            if contract.delivery.transport == "sftp":
                from delivery.sftp import deliver_sftp, env_sftp_endpoint

                conn_id = contract.delivery.connection or ""
                if self.ctx.resolve_sftp is not None:
                    endpoint = self.ctx.resolve_sftp(conn_id)
                else:
                    endpoint = env_sftp_endpoint(conn_id, config_dir=self.ctx.settings.config_dir)
                sent = deliver_sftp(package, endpoint=endpoint, segments=contract.delivery.segments(),
                                    expected_sha256=info["sha256"], policy=self.ctx.sftp_retry, log=log.warning)
                details.update(transport="sftp", connection=conn_id, server=endpoint.address,
                               host_key=sent.host_key, path=sent.path, bytes=sent.bytes,
                               verified_by=sent.verified_by, attempts=sent.attempts,
                               already_present=sent.already_delivered)
                result = {"path": sent.path, "sha256": sent.sha256, "already_delivered": sent.already_delivered}
            else:
                folder = contract.delivery.path or contract.contractor_slug
                receipt = deliver_local(package, drop_root=self.ctx.settings.drop_dir, folder=folder,
                                        expected_sha256=info["sha256"])
                details.update(transport=receipt.transport, path=receipt.path, bytes=receipt.bytes)
                result = {"path": receipt.path, "sha256": receipt.sha256,
                          "already_delivered": receipt.already_delivered}
            self._append("delivered", details)
            log.info("delivered %s to %s", info["package"], result["path"])
            return result
        return self._run_stage("deliver", body)

    def record(self) -> dict:
        def body() -> dict:
            state = self._read_state("extract.json")
            info = self._read_state("package.json")
            summary = {"datasets": [{"name": d["name"], "rows": d["rows"], "columns": len(d["columns"])}
                                    for d in state["datasets"]],
                       "package": info["package"], "sha256": info["sha256"]}
            self._append("run_completed", summary)
            return summary
        return self._run_stage("record", body)

    def cleanup(self) -> dict:
        """Remove the plaintext staging folder; runs after success and after failure alike."""
        existed = self.staging.exists()
        try:
            self._release_snapshot()  # the holder ends; partitions can no longer import the snapshot
        except Exception as exc:  # cleanup must still remove plaintext
            log.error("could not release the source snapshot: %s", type(exc).__name__)
        remove_tree(self.staging)
        if self.staging.exists():
            raise StageFailed(f"staging folder for delivery {self.delivery_id} could not be removed")
        try:
            if existed:
                self._append("staging_removed", {"staging": "removed"})
        finally:
            self.close()
        return {"removed": existed}

    def run_all(self) -> dict:
        """All stages in order (CLI); cleanup always runs."""
        try:
            self.authorise()
            contract = load_contract(self.ctx.contract_path)
            if any(d.partition for d in contract.datasets):
                for part in self.plan_partitions()["parts"]:
                    self.extract_partition(part)
            for stage in STAGES[1:]:
                getattr(self, stage)()
            return {"delivery_id": self.delivery_id, "package": self._read_state("package.json")}
        finally:
            self.cleanup()


def _merge_parts(parts: list[Path], path: Path) -> int:
    """Concatenate partition files (in range order) into one Parquet file, a row group at a time."""
    rows = 0
    schema = pq.read_schema(parts[0])
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for part in parts:
            reader = pq.ParquetFile(part)
            for group in range(reader.num_row_groups):
                table = reader.read_row_group(group)
                writer.write_table(table)
                rows += table.num_rows
        if rows == 0:
            writer.write_table(schema.empty_table())
    return rows


def _frames(exc: BaseException) -> str:
    import traceback

    return "".join(traceback.format_tb(exc.__traceback__))


def _window_lines(windows: list[dict] | None) -> list[str]:
    if not windows:
        return []
    if all(w["full"] for w in windows):
        return ["- Delivery kind: full refresh of an incremental contract (every current matching record)."]
    column = windows[0]["column"]
    return [f"- Delivery kind: incremental: only records whose `{column}` changed since the previous delivery "
            "(window in manifest.json, extract.windows). Deleted source records cannot appear in an "
            "incremental delivery; a full refresh re-sends everything."]


def render_codebook(contract: Contract, delivery_id: str, created: dt.datetime, state: dict,
                    disclosure: dict | None = None) -> str:
    from disclosure.report import codebook_lines, column_notes, microdata_included

    sample = state.get("sample")
    if sample:
        entity = sample["entity"]
        share = sample["fraction_delivered"]
        records = (f"- Records: a keyed random sample of {entity}s: {sample['sample_size']} of the "
                   f"{sample['population']} {entity}s matching the contract's filters"
                   + (f" ({share:.4%})" if share is not None else "")
                   + f". Every record of a sampled {entity} is included, in every dataset; no record of any other "
                   f"{entity}. The same {entity}s are drawn in every delivery of this contract"
                   + (f" (requested fraction {sample['fraction_requested']}" if sample["fraction_requested"] else
                      " (")
                   + (f", at most {sample['max_records']} {entity}s)." if sample["max_records"] else ").")
                   + f" To estimate population totals, weight each {entity} by "
                   + (f"{sample['population']}/{sample['sample_size']}." if sample["sample_size"] else "(none drawn)."))
    else:
        records = "- Records: every record matching the contract's filters (no sampling)."
    lines = [
        f"# Codebook: {contract.title}",
        "",
        f"- Contract: {contract.contract}",
        f"- Contractor: {contract.contractor}",
        f"- Delivery: {delivery_id}",
        f"- Created: {created.isoformat()}",
        f"- Linkage: {contract.linkage} — " + (
            "pseudonyms are stable across this contract's deliveries."
            if contract.linkage == "contract" else "pseudonyms are new in every delivery."),
        records,
        *_window_lines(state.get("windows")),
        "- Disclosure control: see the section 'Disclosure control' at the end.",
        "",
        "Pseudonyms of the same entity are equal across the datasets of this package, so the datasets",
        "join on them. They are unrelated to pseudonyms in any other contract's data.",
        "",
    ]
    for ds in state["datasets"] if microdata_included(disclosure) else []:
        dataset = contract.dataset(ds["name"])
        notes = column_notes(disclosure, ds["name"])
        lines += [f"## {ds['name']} ({ds['rows']} rows)", "", f"File `{ds['file']}`.", ""]
        if sample:
            source_rows = {d["name"]: d["population_rows"] for d in sample.get("datasets", [])}.get(ds["name"])
            if source_rows is not None:
                lines += [f"{ds['rows']} of {source_rows} matching records (those of the sampled "
                          f"{sample['entity']}s).", ""]
        if dataset.filter:
            conditions = [f"`{col}` {op} {value}" for col, cond in dataset.filter.items()
                          for op, value in sorted(cond.operators())]
            lines += ["Records selected where " + " and ".join(conditions) + ".", ""]
        lines += ["| Column | Type | Treatment |", "| --- | --- | --- |"]
        for c in ds["columns"]:
            note = f" {notes[c['name']]}" if c["name"] in notes else ""
            lines.append(f"| `{c['name']}` | {c['type']} | {c['description']}{note} |")
        lines.append("")
        entity_columns = [c["name"] for c in ds["columns"]
                          if isinstance(dataset.columns[c["name"]], Pseudonymise)]
        if entity_columns:
            lines += ["Pseudonymised columns: " + ", ".join(f"`{n}`" for n in entity_columns) + ".", ""]
    lines += codebook_lines(disclosure)
    return "\n".join(lines)
