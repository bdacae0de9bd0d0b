"""A detached process that holds a PostgreSQL snapshot open for the partitions of one delivery.

An exported snapshot can be imported only while the exporting transaction is open. Airflow tasks are
separate processes (and may run one after another, or on other hosts), so no task can hold it. The
plan step starts this small process in its own session: it opens a REPEATABLE READ transaction,
exports the snapshot, prints the id on stdout, and holds the transaction until the ledger records
``snapshot_released`` for the delivery (written after the last partition, and by the cleanup step also
after a failure), or until ``max_seconds`` pass, whichever comes first. Partitions on any worker that
reaches the database import the id. If the holder is gone, partitions fail closed.

Secrets reach the child through its environment, never its command line (visible in ``ps``).
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time

from sqlalchemy.engine import URL, make_url

from audit.ledger import Ledger
from core.errors import SourceError
from extract.partitioning import exported_snapshot
from extract.sources import create_source_engine

RELEASED = "snapshot_released"
ENV_SOURCE = "CONTRACT_EXTRACTS_HOLDER_SOURCE_URL"
ENV_LEDGER = "CONTRACT_EXTRACTS_HOLDER_LEDGER_URL"


def start(source_url: URL, *, ledger_url: str, contract: str, delivery: str, max_seconds: int = 6 * 3600,
          poll_seconds: float = 1.0, startup_timeout: float = 60.0) -> tuple[str, int]:
    """Start a holder; return (snapshot id, pid). Raises SourceError if no snapshot could be exported."""
    env = dict(os.environ)
    env[ENV_SOURCE] = source_url.render_as_string(hide_password=False)
    env[ENV_LEDGER] = ledger_url
    cmd = [sys.executable, "-m", "extract.snapshot_holder", contract, delivery,
           str(max_seconds), str(poll_seconds)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                            start_new_session=True, close_fds=True)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], startup_timeout)
    line = proc.stdout.readline().decode("ascii", "replace").strip() if ready else ""
    proc.stdout.close()
    if not line.startswith("snapshot "):
        proc.kill()
        raise SourceError("could not export a consistent snapshot of the source for the partitioned extract")
    return line.removeprefix("snapshot "), proc.pid


def _released(ledger: Ledger, contract: str, delivery: str) -> bool:
    return any(r.contract == contract for r in ledger.records(delivery=delivery, action=RELEASED))


def main(argv: list[str]) -> int:
    contract, delivery, max_seconds, poll = argv[0], argv[1], float(argv[2]), float(argv[3])
    engine = create_source_engine(make_url(os.environ.pop(ENV_SOURCE)))
    ledger = Ledger(os.environ.pop(ENV_LEDGER))
    deadline = time.monotonic() + max_seconds
    try:
        with exported_snapshot(engine) as snapshot:
            if snapshot is None:
                return 2
            sys.stdout.write(f"snapshot {snapshot}\n")
            sys.stdout.flush()
            sys.stdout.close()
            while time.monotonic() < deadline and not _released(ledger, contract, delivery):
                time.sleep(poll)
    finally:
        ledger.close()
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
