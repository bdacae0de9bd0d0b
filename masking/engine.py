"""Mask a contract's datasets from a source into staged Parquet: plan, draw the sample, write.

Used by the pipeline's extract stage (``pipeline/stages.py``):

1. ``plan_extract`` reflects every table and plans every column before anything is read, so a
   treatment that does not fit the source (or breaks a contract-wide rule) fails before any data moves.
2. ``draw_sample`` (only for a contract with ``sample:``) streams the sampling entity's column of every
   dataset and decides the rank limit (``masking.sampling``): ranks only, memory bounded.
3. ``write_masked`` streams every dataset once more, drops rows of entities outside the sample, masks
   each record batch and appends it to the dataset's Parquet file.

Memory is bounded by the record batch (and the bottom-k array of at most ``max_records`` ranks).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa

from contracts.catalogue import PopulationPlan
from contracts.column_treatments import Pseudonymise, sample_column
from contracts.model import Contract, Dataset
from core.errors import DataError
from core.streams import Drain, prefetched
from extract.partitioning import snapshot_connection
from extract.population import population_clauses
from extract.row_estimate import estimated_rows
from extract.sources import DatasetQuery, plan_query, reflect_table, stream_batches
from masking.column_plans import ColumnPlan, filter_rows, mask_batch, output_schema, plan_contract
from masking.hashing import HashPool
from masking.keys import ContractKeys
from masking.progress import RowProgress
from masking.record_keys import RecordKeyPlan, output_fields, plan_record_keys, record_key_secret, with_record_keys
from masking.row_order import KeyedOrderWriter
from masking.sampling import SampleDraw, SampleResult, keep_mask, ranks

log = logging.getLogger(__name__)



@dataclass
class PlannedDataset:
    name: str
    table: sa.Table
    dataset: Dataset
    query: DatasetQuery
    plans: list[ColumnPlan]
    sample_column: str | None = None
    sample_canonicaliser: str | None = None
    population_rows: int | None = None
    rows: int = 0
    # Keeps only rows of the contract's population (``extract.population``); already part of ``query``.
    population_clause: sa.ColumnElement[bool] | None = None
    # Staging-only record keys for cell-key tables (``masking.record_keys``), and the source's secret for them.
    record_keys: tuple[RecordKeyPlan, ...] = ()
    record_key_secret: bytes | None = field(default=None, repr=False)

    @property
    def staged_schema(self) -> pa.Schema:
        """The staged file's schema: the masked columns, then any record-key columns."""
        return pa.schema([*output_schema(self.plans), *output_fields(self.record_keys)])


def attach_record_keys(planned: list[PlannedDataset], contract: Contract, master: bytes) -> None:
    """Give every dataset that feeds a cell-key table its record-key plan and the source's record-key secret."""
    plans = plan_record_keys(contract)
    if not plans:
        return
    secret = record_key_secret(master, contract.source.connection)
    for item in planned:
        item.record_keys = plans.get(item.name, ())
        item.record_key_secret = secret if item.record_keys else None


def plan_extract(engine: sa.Engine, contract: Contract, *, file: str | None,
                 reference_date: dt.date | None, population: PopulationPlan | None = None) -> list[PlannedDataset]:
    """Reflect every table of the contract and plan every column (fails before any data is read).

    ``population``: the contract's population; every dataset it restricts reads only the population's rows.
    """
    queries = []
    for dataset in contract.datasets:
        table = reflect_table(engine, dataset, contract)
        queries.append((dataset, table, plan_query(table, dataset, contract)))
    restrict = population_clauses(contract, population, {d.name: t for d, t, _ in queries})
    queries = [(d, t, q if d.name not in restrict else replace(q, statement=q.statement.where(restrict[d.name])))
               for d, t, q in queries]
    sources = {d.name: [(c.name, c.arrow_type, c.not_null) for c in q.columns] for d, _, q in queries}
    plans = plan_contract(contract, sources, file=file, reference_date=reference_date)
    planned = []
    for dataset, table, query in queries:
        item = PlannedDataset(name=dataset.name, table=table, dataset=dataset, query=query, plans=plans[dataset.name],
                              population_clause=restrict.get(dataset.name))
        if contract.sample is not None:
            column = sample_column(dataset, contract.sample)
            treatment = dataset.columns[column]
            assert isinstance(treatment, Pseudonymise)
            item.sample_column, item.sample_canonicaliser = column, treatment.canonicalise
        planned.append(item)
    return planned


def source_batches(engine: sa.Engine, query: DatasetQuery, batch_rows: int, *, snapshot: str | None = None,
                   where: sa.ColumnElement[bool] | None = None, consistent: bool = False,
                   connection: sa.Connection | None = None) -> Iterator[pa.RecordBatch]:
    """Batches of ``query``; inside the delivery's shared snapshot and/or a key range when given.

    ``connection``: an open connection inside the delivery's consistent transaction, shared by every
    read of the delivery (MariaDB/MySQL, where sessions cannot share a snapshot); used one read at a time.
    """
    if connection is not None:
        yield from stream_batches(engine, query, batch_rows, connection=connection, where=where)
        return
    if snapshot is None and where is None and not consistent:
        yield from stream_batches(engine, query, batch_rows)
        return
    with snapshot_connection(engine, snapshot) as conn:
        yield from stream_batches(engine, query, batch_rows, connection=conn, where=where)


def draw_sample(engine: sa.Engine, contract: Contract, planned: list[PlannedDataset], keys: ContractKeys, *,
                batch_rows: int, spill_dir: Path, pool: HashPool | None = None,
                snapshot: str | None = None, connection: sa.Connection | None = None) -> SampleResult:
    """First pass: ranks of the sampling entity in every dataset → the limit and exact counts."""
    sample = contract.sample
    if sample is None or sample.entity is None:  # check_contract refuses a sample without an entity
        raise ValueError(f"contract {contract.contract} draws no sample of a named entity")
    entity = sample.entity
    draw = SampleDraw(entity=entity, fraction=sample.fraction, max_records=sample.max_records,
                      spill_dir=spill_dir)
    for item in planned:
        column = _sample_column(item)
        narrowed = item.dataset.model_copy(update={"columns": {column: item.dataset.columns[column]}})
        query = plan_query(item.table, narrowed, contract)
        if item.population_clause is not None:
            query = replace(query, statement=query.statement.where(item.population_clause))
        rows = 0
        progress = RowProgress(item.name, phase="sample", estimate=_estimate(engine, item.table, query))
        for batch in source_batches(engine, query, batch_rows, snapshot=snapshot, connection=connection):
            _, batch_ranks = _ranks(batch, item, keys, entity, pool)
            draw.add(batch_ranks)
            rows += batch.num_rows
            progress.add(batch.num_rows)
        progress.finish()
        item.population_rows = rows
    result = draw.finish()
    log.info("sample of %s: %d of %d drawn", entity, result.sample_size, result.population)
    return result


def masked_batches(engine: sa.Engine, item: PlannedDataset, keys: ContractKeys, *, batch_rows: int,
                   sample: SampleResult | None, entity: str | None, pool: HashPool | None = None,
                   snapshot: str | None = None, where: sa.ColumnElement[bool] | None = None,
                   consistent: bool = False, connection: sa.Connection | None = None,
                   progress: RowProgress | None = None) -> Iterator[pa.RecordBatch]:
    """Masked batches of one dataset; ``progress`` counts the rows read from the source (before sampling)."""
    if sample is not None and entity is None:
        raise ValueError("a sampled dataset needs the sample's entity")
    # The source runs ahead in its own thread while this one masks (hashing waits on worker processes).
    for batch in prefetched(source_batches(engine, item.query, batch_rows, snapshot=snapshot, where=where,
                                           consistent=consistent, connection=connection),
                            name=f"extract {item.name}"):
        if progress is not None:
            progress.add(batch.num_rows)
        if sample is not None and entity is not None:  # entity is set whenever sample is (checked above)
            valid, batch_ranks = _ranks(batch, item, keys, entity, pool)
            batch = filter_rows(batch, valid, keep_mask(batch_ranks, sample.limit))
        masked = mask_batch(batch, item.plans, keys, pool=pool)
        if item.record_keys and item.record_key_secret is not None:
            masked = with_record_keys(batch, masked, item.record_keys, item.record_key_secret, pool)
        yield masked


def _sample_column(item: PlannedDataset) -> str:
    if item.sample_column is None:
        raise ValueError(f"dataset {item.name!r} was planned without a sample")
    return item.sample_column


def _ranks(batch: pa.RecordBatch, item: PlannedDataset, keys: ContractKeys, entity: str,
           pool: HashPool | None) -> tuple[np.ndarray, np.ndarray]:
    column = _sample_column(item)
    try:
        return ranks(batch.column(column), canonicaliser=item.sample_canonicaliser, key=keys.sample,
                     entity=entity, pool=pool)
    except DataError as exc:
        raise DataError(f"column {column!r}: {exc}") from None


def write_masked(engine: sa.Engine, item: PlannedDataset, keys: ContractKeys, path: Path, *, batch_rows: int,
                 sample: SampleResult | None = None, entity: str | None = None,
                 pool: HashPool | None = None, snapshot: str | None = None,
                 where: sa.ColumnElement[bool] | None = None, consistent: bool = False,
                 connection: sa.Connection | None = None, write_statistics: bool | list[str] = True,
                 keyed_order: bool = True) -> int:
    """Masked pass of one dataset (or one key range of it) into ``path`` (Parquet, zstd); returns rows.

    ``keyed_order``: rows are stored in the contract's keyed order (``masking.row_order``), never in source
    order; False only for partition parts, which ``store_in_keyed_order`` merges into the delivered file.
    ``write_statistics``: the columns whose Parquet statistics (min/max) may be written, never an identifier's
    (``contracts.catalogue.statistics_columns``); True: all, False: none.
    """
    rows = 0
    schema = item.staged_schema
    # Share done and ETA only where the source's estimate counts what this pass reads: the whole table.
    progress = RowProgress(item.name, estimate=None if where is not None else _estimate(engine, item.table,
                                                                                         item.query))
    batches = masked_batches(engine, item, keys, batch_rows=batch_rows, sample=sample, entity=entity, pool=pool,
                             snapshot=snapshot, where=where, consistent=consistent, connection=connection,
                             progress=progress)
    if keyed_order:
        with KeyedOrderWriter(path, schema, order_key=keys.order, dataset=item.name, spill_dir=order_spill_dir(path),
                              parquet_options={"write_statistics": write_statistics}) as ordered:
            # Ranking and scattering into the order's buckets overlap the masking (both mostly outside the GIL).
            order = Drain(ordered.write, name=f"order {item.name}")
            try:
                for masked in batches:
                    order.put(masked)
                    rows += masked.num_rows
            finally:
                order.close()
    else:
        with pq.ParquetWriter(path, schema, compression="zstd", write_statistics=write_statistics) as writer:
            drain = Drain(writer.write_batch, name=f"write {item.name}")  # compression overlaps the masking
            try:
                for masked in batches:
                    if masked.num_rows:
                        drain.put(masked)
                    rows += masked.num_rows
            finally:
                drain.close()
            if rows == 0:
                writer.write_table(pa.Table.from_batches([], schema=schema))
    read = progress.finish()
    log.info("dataset %s: %d rows extracted and masked in total (%d read from the source)", item.name, rows, read.rows)
    item.rows = rows
    return rows


def _estimate(engine: sa.Engine, table: sa.Table, query: DatasetQuery) -> int | None:
    """The source's row estimate of ``table`` when ``query`` reads all of it (no filter, window or population)."""
    return estimated_rows(engine, table) if query.statement.whereclause is None else None


def order_spill_dir(path: Path) -> Path:
    """Where the keyed-order writer of ``path`` spills (beside it, so inside the private staging folder)."""
    return path.with_name(f".{path.name}.order-spill")


def store_in_keyed_order(parts: list[Path], path: Path, *, order_key: bytes, dataset: str,
                         write_statistics: bool | list[str] = True) -> int:
    """Merge partition files (in range order) into the dataset's delivered file, in the keyed row order."""
    schema = pq.read_schema(parts[0])
    with KeyedOrderWriter(path, schema, order_key=order_key, dataset=dataset, spill_dir=order_spill_dir(path),
                          parquet_options={"write_statistics": write_statistics}) as ordered:
        for part in parts:
            reader = pq.ParquetFile(part)
            for group in range(reader.num_row_groups):
                for batch in reader.read_row_group(group).to_batches():
                    ordered.write(batch)
    return ordered.rows
