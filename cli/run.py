"""``contract-extracts run``: every stage of one delivery, with the release gate's import hidden behind the extract.

The release gate decides with Great Expectations, and importing GX costs a fresh process 1-3 s: most of the
wall time of a small delivery. Nothing before the gate needs GX, so ``run_delivery`` forks once: the child
runs the stages before the gate (authorise, extract, disclosure) while this process imports GX on the other
core; then this process runs the gate and everything after it (validate, package, deliver, record) and the
cleanup. The stages hand over through the staging folder exactly as separate Airflow tasks do, so the child
and this process split the run where Airflow already splits it; the gate is the same GX gate, in the process
that imported GX.

The staging folder is never unowned: before the child lets go of it, this process takes its own claim
(``pipeline.recovery.claim``, a shared lock), so a recovery sweep running meanwhile cannot take it for an
abandoned run.

The split is used only where forking is safe and changes nothing else (``overlap_possible``): a POSIX
``fork``, a single thread, the real standard streams (progress and messages of the child reach the same
terminal or log), and GX not imported yet (else there is nothing to hide). Otherwise the stages run one
after another in this process (``Pipeline.run_all``). Errors keep their meaning: a stage's failure is
recorded in the ledger by the stage itself (in the child), and its value-free message is raised here as
``ContractExtractsError`` (the CLI prints it and exits 2), after the cleanup. A child that ends without a word
(killed) has recorded nothing: this process records ``blocked`` for the stage it had reached.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from typing import Any

from contracts.loading import load_contract
from core.errors import ContractExtractsError, value_free
from pipeline import handoffs, recovery
from pipeline.handoffs import PACKAGE
from pipeline.stages import STAGES, Pipeline
from validation.gx_adapter import import_gx

log = logging.getLogger(__name__)

GATE = STAGES.index("validate")  # the first stage that needs GX
_DONE = b"D"  # child → parent: the stages before the gate ran; parent → child: the staging folder is claimed
_NO_RESULT = "the stages before the release gate ended without a result (interrupted or killed); nothing was delivered"


def overlap_possible() -> bool:
    """Whether ``run_delivery`` may fork (see the module docstring)."""
    return (hasattr(os, "fork") and threading.active_count() == 1
            and sys.stdout is sys.__stdout__ and sys.stderr is sys.__stderr__
            and "great_expectations" not in sys.modules)


def run_before_gate(pipeline: Pipeline) -> None:
    """The stages before the release gate, as ``Pipeline.run_all`` runs them."""
    pipeline.authorise()
    contract = load_contract(pipeline.ctx.contract_path)
    if any(d.partition for d in contract.datasets):
        for part in pipeline.plan_partitions()["parts"]:
            pipeline.extract_partition(part)
    for stage in STAGES[1:GATE]:
        getattr(pipeline, stage)()


def run_from_gate(pipeline: Pipeline) -> dict[str, Any]:
    """The release gate and every stage after it; what ``Pipeline.run_all`` returns."""
    for stage in STAGES[GATE:]:
        getattr(pipeline, stage)()
    return {"delivery_id": pipeline.delivery_id, "package": handoffs.package_xcom(pipeline.state.read(PACKAGE))}


def run_delivery(pipeline: Pipeline) -> dict[str, Any]:
    """All stages of the delivery, cleanup always; GX imported while a child runs the stages before the gate."""
    if not overlap_possible():
        return pipeline.run_all()
    sys.stdout.flush()
    sys.stderr.flush()
    to_parent_r, to_parent_w = os.pipe()
    to_child_r, to_child_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child ends in os._exit (measured by the test through its effects)
        os.close(to_parent_r)
        os.close(to_child_w)
        _child(pipeline, to_parent_w, to_child_r)
    os.close(to_parent_w)
    os.close(to_child_r)
    claim: recovery.Claim | None = None
    try:
        try:
            _prefetch_gx()
        finally:
            message, claim = _join(pipeline, pid, to_parent_r, to_child_w)
        if message is not None:
            if message == _NO_RESULT:  # killed before its stage could record anything: say so here
                pipeline.record_blocked(_stage_reached(pipeline), message)
            raise ContractExtractsError(message)
        return run_from_gate(pipeline)
    finally:
        try:
            pipeline.cleanup()
        finally:
            if claim is not None:
                claim.release()


def _prefetch_gx() -> None:
    """Import GX now; a failure is left for the gate to meet again and record (never raised here)."""
    try:
        import_gx()
    except Exception as exc:
        log.warning("importing Great Expectations ahead of the release gate failed (%s); the gate will retry",
                    value_free(exc))


def _child(pipeline: Pipeline, to_parent: int, from_parent: int) -> None:
    """Run the stages before the gate, report, hold the staging folder until the parent owns it, then exit."""
    code, report = 0, _DONE
    try:
        run_before_gate(pipeline)
    except ContractExtractsError as exc:  # already recorded in the ledger by the stage (fail_closed)
        code, report = 2, b"E" + str(exc).encode("utf-8", "replace")
    except BaseException:  # e.g. KeyboardInterrupt: no message (it could quote anything)
        code, report = 3, b""
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
            with os.fdopen(to_parent, "wb") as out:
                out.write(report)
            # Wait for the parent's claim on the staging folder (or its end) before letting go of ours.
            with os.fdopen(from_parent, "rb") as ack:
                ack.read(1)
        with contextlib.suppress(BaseException):
            pipeline.close()
        os._exit(code)


def _join(pipeline: Pipeline, pid: int, from_child: int, to_child: int) -> tuple[str | None, recovery.Claim | None]:
    """Wait for the child: its error message (None when the stages ran) and this process's claim on the staging."""
    claim: recovery.Claim | None = None
    try:
        with os.fdopen(from_child, "rb") as report_file:
            report = report_file.read()
        if report == _DONE and pipeline.staging.is_dir():
            claim = recovery.claim(pipeline.staging, contract=pipeline.contract_id, delivery=pipeline.delivery_id,
                                   mode="process")
    finally:
        with contextlib.suppress(OSError):
            os.close(to_child)  # the child's ack: it may release its own claim and exit
        _, status = os.waitpid(pid, 0)
    if report == _DONE and os.waitstatus_to_exitcode(status) == 0:
        return None, claim
    if report.startswith(b"E"):
        return report[1:].decode("utf-8", "replace"), claim
    return _NO_RESULT, claim


def _stage_reached(pipeline: Pipeline) -> str:
    """The stage the child was in when it ended without a word: the first without its ledger record."""
    done = {record.action for record in pipeline.ledger.records(delivery=pipeline.delivery_id)}
    for stage, record in (("authorise", "authorised"), ("extract", "extract_done")):
        if record not in done:
            return stage
    return "disclosure"
