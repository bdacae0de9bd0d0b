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

import datetime as dt
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy.engine import URL

from contract_extracts.audit.ledger import Ledger
from contract_extracts.contracts.loading import content_hash, load_contract
from contract_extracts.contracts.model import Contract
from contract_extracts.contracts.treatments import Pseudonymise
from contract_extracts.core.errors import (
    AuthorisationError,
    ContractExtractsError,
    DeliveryError,
    StageFailed,
    ValidationFailed,
)
from contract_extracts.core.paths import make_private_dir, remove_tree, safe_segment
from contract_extracts.core.settings import Settings
from contract_extracts.delivery.package import (
    PACKAGE_FORMAT,
    PackageFile,
    build_package,
    file_entries,
    package_name,
)
from contract_extracts.delivery.recipients import recipient_fingerprint
from contract_extracts.delivery.signing import fingerprint, load_signing_key
from contract_extracts.delivery.transports import deliver_local
from contract_extracts.extract.sources import create_source_engine, plan_query, reflect_table, stream_batches
from contract_extracts.masking.keys import ContractKeys, load_master_key
from contract_extracts.masking.treatments import ColumnPlan, describe, mask_batch, output_schema, plan_column

log = logging.getLogger(__name__)

STAGES = ("authorise", "extract", "validate", "package", "deliver", "record")


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
            self._ledger = Ledger(self.ctx.settings.ledger_url)
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
            load_master_key()
            load_signing_key()
            make_private_dir(self.staging)
            log.info("authorised contract %s, delivery %s", contract.contract, self.delivery_id)
            return {"contract": contract.contract, "delivery_id": self.delivery_id, "contract_hash": digest}
        return self._run_stage("authorise", body)

    def _check_authorised(self, contract: Contract) -> None:
        today = self.ctx.today or dt.datetime.now(dt.UTC).date()
        if today < contract.valid.from_:
            raise AuthorisationError(f"contract {contract.contract} is not valid before "
                                     f"{contract.valid.from_.isoformat()}")
        if today > contract.valid.until:
            raise AuthorisationError(f"contract {contract.contract} expired on {contract.valid.until.isoformat()}")
        if today > contract.security_assurance.expires:
            raise AuthorisationError(f"security assurance {contract.security_assurance.reference} of "
                                     f"{contract.contractor} expired on "
                                     f"{contract.security_assurance.expires.isoformat()}")
        if contract.unmasked:
            raise AuthorisationError("the contract lists unmasked columns, which need two signed approvals "
                                     "(one by an Information Asset Manager); this version cannot record "
                                     "approvals, so the run is refused")
        if contract.incremental is not None:
            raise AuthorisationError("the contract asks for incremental deliveries, which this version cannot "
                                     "track yet; the run is refused rather than sending a full extract")
        if contract.sample is not None:
            raise AuthorisationError("the contract asks for a sample, which this version cannot draw yet; "
                                     "the run is refused rather than delivering more records than approved")

    def extract(self) -> dict:
        def body() -> dict:
            contract = self._contract()
            master = load_master_key()
            keys = ContractKeys.derive(master, contract.contract,
                                       self.delivery_id if contract.linkage == "delivery" else None)
            url = self.ctx.resolve_connection(contract.source.connection)
            engine = create_source_engine(url)
            data_dir = make_private_dir(self.staging / "data")
            datasets = []
            try:
                for dataset in contract.datasets:
                    table = reflect_table(engine, dataset, contract)
                    query = plan_query(table, dataset, contract)
                    plans = [plan_column(dataset.name, col.name, dataset.columns[col.name], col.arrow_type,
                                         col.not_null, file=str(self.ctx.contract_path))
                             for col in query.columns]
                    path = data_dir / f"{dataset.name}.parquet"
                    rows = _write_masked(engine, query, plans, keys, path, self.ctx.settings.batch_rows,
                                         dataset.name)
                    datasets.append({
                        "name": dataset.name, "file": f"data/{dataset.name}.parquet", "rows": rows,
                        "columns": [{"name": p.name, "type": str(p.output_type),
                                     "treatment": p.treatment.treatment, "pseudonym": p.is_pseudonym,
                                     "source_not_null": p.source_not_null,
                                     "description": describe(p, contract.linkage)} for p in plans],
                    })
            finally:
                engine.dispose()
            state = {"key_id": keys.key_id, "datasets": datasets}
            self._write_state("extract.json", state)
            self._append("extract_done", {"key_id": keys.key_id, "datasets": [
                {"name": d["name"], "rows": d["rows"], "columns": [c["name"] for c in d["columns"]]}
                for d in datasets]})
            return {"datasets": [{"name": d["name"], "rows": d["rows"]} for d in datasets]}
        return self._run_stage("extract", body)

    def validate(self) -> dict:
        def body() -> dict:
            from contract_extracts.validation.gate import ColumnRule, DatasetRules, validate_parquet

            contract = self._contract()
            state = self._read_state("extract.json")
            summaries = []
            for ds in state["datasets"]:
                listed = list(contract.dataset(ds["name"]).columns)
                if [c["name"] for c in ds["columns"]] != listed:
                    raise ValidationFailed(f"dataset {ds['name']}: staged columns differ from the contract")
                rules = DatasetRules(
                    dataset=ds["name"],
                    columns=tuple(ColumnRule(name=c["name"], pseudonym=c["pseudonym"],
                                             not_null=c["source_not_null"]) for c in ds["columns"]),
                    min_rows=0,
                    max_rows=contract.sample.max_records if contract.sample else None,
                )
                summaries.append(validate_parquet(self.staging / ds["file"], rules,
                                                  batch_rows=max(self.ctx.settings.batch_rows, 100_000)))
            summary = {"success": all(s.success for s in summaries),
                       "datasets": [s.to_dict() for s in summaries]}
            self._write_state("validation.json", summary)
            if not summary["success"]:
                failed = [f"{s.dataset}: {f.expectation}" + (f"({f.column})" if f.column else "")
                          + (f", {f.unexpected_count} unexpected" if f.unexpected_count else "")
                          for s in summaries for f in s.failures()]
                self._append("validation_failed", {"failed": failed})
                raise ValidationFailed("validation failed, nothing is packaged or delivered: " + "; ".join(failed))
            self._append("validation_passed", {"datasets": [
                {"name": s.dataset, "rows": s.rows, "expectations": len(s.expectations)} for s in summaries]})
            return {"success": True, "expectations": sum(len(s.expectations) for s in summaries)}
        return self._run_stage("validate", body)

    def package(self) -> dict:
        def body() -> dict:
            contract = self._contract()
            state = self._read_state("extract.json")
            validation = self._read_state("validation.json")
            if not validation.get("success"):
                raise ValidationFailed("validation did not pass; nothing is packaged")
            signing_key = load_signing_key()
            created = dt.datetime.now(dt.UTC).replace(microsecond=0)
            codebook = self.staging / "codebook.md"
            codebook.write_text(render_codebook(contract, self.delivery_id, created, state), encoding="utf-8")
            files = [PackageFile(arcname="codebook.md", path=codebook)]
            for ds in state["datasets"]:
                files.append(PackageFile(
                    arcname=ds["file"], path=self.staging / ds["file"], rows=ds["rows"],
                    schema=tuple({"name": c["name"], "type": c["type"], "treatment": c["treatment"]}
                                 for c in ds["columns"])))
            manifest = {
                "format": PACKAGE_FORMAT,
                "contract": contract.contract,
                "title": contract.title,
                "contractor": contract.contractor,
                "delivery": self.delivery_id,
                "created_at": created.isoformat(),
                "key_id": state["key_id"],
                "linkage": contract.linkage,
                "extract": {"kind": "full", "sample": None},
                "sender": {"signature": "ed25519", "fingerprint": fingerprint(signing_key.public_key())},
                "recipients": [{"name": r.name, "fingerprint": recipient_fingerprint(r.age)}
                               for r in contract.recipients],
                "files": file_entries(files),
                "validation": validation,
                "disclosure": {"assessed": False,
                               "note": "disclosure control is not part of this version"},
            }
            built = build_package(staging_dir=self.staging, name=package_name(contract.contract, self.delivery_id),
                                  manifest=manifest, files=files, signing_key=signing_key,
                                  recipients=[r.age for r in contract.recipients],
                                  created_epoch=int(created.timestamp()))
            info = {"package": built.path.name, "sha256": built.sha256, "bytes": built.bytes,
                    "manifest_sha256": built.manifest_sha256}
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
            folder = contract.delivery.path or contract.contractor_slug
            receipt = deliver_local(self.staging / info["package"], drop_root=self.ctx.settings.drop_dir,
                                    folder=folder, expected_sha256=info["sha256"])
            self._append("delivered", {
                "transport": receipt.transport, "path": receipt.path, "package": info["package"],
                "sha256": receipt.sha256, "bytes": receipt.bytes, "manifest_sha256": info["manifest_sha256"],
                "recipients": [{"name": r.name, "fingerprint": recipient_fingerprint(r.age)}
                               for r in contract.recipients],
            })
            log.info("delivered %s to %s", info["package"], receipt.path)
            return {"path": receipt.path, "sha256": receipt.sha256, "already_delivered": receipt.already_delivered}
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
            for stage in STAGES:
                getattr(self, stage)()
            return {"delivery_id": self.delivery_id, "package": self._read_state("package.json")}
        finally:
            self.cleanup()


def _write_masked(engine, query, plans: list[ColumnPlan], keys: ContractKeys, path: Path, batch_rows: int,
                  dataset: str) -> int:
    rows = 0
    next_report = 500_000
    schema = output_schema(plans)
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for batch in stream_batches(engine, query, batch_rows):
            masked = mask_batch(batch, plans, keys)
            writer.write_batch(masked)
            rows += masked.num_rows
            if rows >= next_report:
                log.info("dataset %s: %d rows extracted and masked", dataset, rows)
                next_report += 500_000
        if rows == 0:
            writer.write_table(pa.Table.from_batches([], schema=schema))
    log.info("dataset %s: %d rows extracted and masked in total", dataset, rows)
    return rows


def _frames(exc: BaseException) -> str:
    import traceback

    return "".join(traceback.format_tb(exc.__traceback__))


def render_codebook(contract: Contract, delivery_id: str, created: dt.datetime, state: dict) -> str:
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
        "- Records: every record matching the contract's filters (no sampling).",
        "- Disclosure control: not applied in this version of the pipeline.",
        "",
        "Pseudonyms of the same entity are equal across the datasets of this package, so the datasets",
        "join on them. They are unrelated to pseudonyms in any other contract's data.",
        "",
    ]
    for ds in state["datasets"]:
        dataset = contract.dataset(ds["name"])
        lines += [f"## {ds['name']} ({ds['rows']} rows)", "", f"File `{ds['file']}`.", ""]
        if dataset.filter:
            conditions = [f"`{col}` {op} {value}" for col, cond in dataset.filter.items()
                          for op, value in sorted(cond.operators())]
            lines += ["Records selected where " + " and ".join(conditions) + ".", ""]
        lines += ["| Column | Type | Treatment |", "| --- | --- | --- |"]
        for c in ds["columns"]:
            lines.append(f"| `{c['name']}` | {c['type']} | {c['description']} |")
        lines.append("")
        entity_columns = [c["name"] for c in ds["columns"]
                          if isinstance(dataset.columns[c["name"]], Pseudonymise)]
        if entity_columns:
            lines += ["Pseudonymised columns: " + ", ".join(f"`{n}`" for n in entity_columns) + ".", ""]
    return "\n".join(lines)
