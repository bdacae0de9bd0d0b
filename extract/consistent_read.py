"""Every read of one delivery sees the source at one instant: the route is chosen here, per database.

Callers never branch on the database; they take a ``SourceRead`` and pass its ``snapshot`` and
``connection`` to every read (the windows, the sample draw, every dataset):

* PostgreSQL: a REPEATABLE READ transaction exports its snapshot (``pg_export_snapshot``) and stays
  open while the delivery reads; each read imports it (``snapshot``), as partitions do.
* MariaDB/MySQL: sessions cannot share a snapshot, so one ``START TRANSACTION WITH CONSISTENT
  SNAPSHOT`` connection (``connection``) reads every dataset in turn.
* Other databases: no snapshot guarantee (docs/extraction.md); each read opens its own connection.

A partitioned delivery reads in separate processes (or hosts): ``partition_snapshot`` starts the
detached holder of an exported snapshot on PostgreSQL (``extract.snapshot_holder``) and returns its id;
elsewhere it returns None and every partition reads inside its own consistent transaction bounded by
the plan's high-water mark (``extract.partitioning``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import URL

from extract import snapshot_holder
from extract.partitioning import exported_snapshot, exports_snapshots, shares_one_transaction, snapshot_connection


@dataclass(frozen=True)
class SourceRead:
    """How the reads of one delivery reach the source: in ``snapshot`` and/or on ``connection``."""

    engine: sa.Engine
    snapshot: str | None = None  # an exported snapshot every read imports (PostgreSQL)
    connection: sa.Connection | None = None  # one consistent transaction shared by every read (MariaDB/MySQL)

    @contextmanager
    def connect(self) -> Iterator[sa.Connection]:
        """A connection for one read (the shared one, one read at a time), inside the delivery's view."""
        if self.connection is not None:
            yield self.connection
        elif self.snapshot is not None:
            with snapshot_connection(self.engine, self.snapshot) as conn:
                yield conn
        else:
            with self.engine.connect() as conn:
                yield conn


@contextmanager
def consistent_read(engine: sa.Engine) -> Iterator[SourceRead]:
    """Hold the delivery's consistent view of the source open while the block reads (see the module doc)."""
    with exported_snapshot(engine) as snapshot:
        if snapshot is None and shares_one_transaction(engine):
            with snapshot_connection(engine, None) as shared:
                yield SourceRead(engine, connection=shared)
        else:
            yield SourceRead(engine, snapshot=snapshot)


def partition_snapshot(engine: sa.Engine, url: URL, *, ledger_url: str, contract: str, delivery: str) -> str | None:
    """The snapshot every partition of the delivery imports (a holder process keeps it), or None.

    None where the database cannot share a snapshot between sessions; the holder ends when the ledger
    records ``snapshot_holder.RELEASED`` for the delivery.
    """
    if not exports_snapshots(engine):
        return None
    snapshot, _pid = snapshot_holder.start(url, ledger_url=ledger_url, contract=contract, delivery=delivery)
    return snapshot
