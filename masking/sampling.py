"""Keyed bottom-k sampling of entities (format v1, design.md "Sampling").

``rank`` = first 8 bytes of HMAC-SHA256(sample_key, entity + "\\x00" + canonical identifier), big-endian.
An entity is kept when ``rank < fraction × 2^64``; of those, only the ``max_records`` smallest ranks
are kept (bottom-k). The rank depends on the contract's sample key and the person only, so the sample
is stable across a contract's deliveries and unrelated between contracts, and it is by entity: a
person is in every dataset of the delivery or in none.

Two passes keep memory bounded:

1. ``SampleDraw`` sees the ranks of every row of every dataset (the entity column only). It keeps the
   ``max_records`` smallest distinct ranks in a bounded array (a heap, merged in blocks), never a raw
   value. To report exact population and sample sizes (needed for grossing) it also spills each
   batch's distinct ranks into 64 partition files by their top bits in the private staging folder; at
   the end each partition is counted on its own, so memory stays bounded by one partition, not the
   population. The files hold keyed ranks only and are removed with the staging folder.
2. The masking pass recomputes each row's rank and keeps the row when ``rank <= limit``.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa

from masking.hashing import LOCAL, HashPool
from masking.pseudonyms import entity_prefix

TWO_64 = 1 << 64
_PARTITION_BITS = 6
_MERGE_AT = 1 << 16


def ranks(identifiers: pa.Array, *, canonicaliser: str | None, key: bytes, entity: str,
          pool: HashPool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(valid per row, ranks as uint64 of the rows whose canonical identifier is not null, in order)."""
    keyed = (pool or LOCAL).keyed(identifiers, canonicaliser=canonicaliser, key=key, prefix=entity_prefix(entity),
                                  width=8)
    return keyed.valid, np.frombuffer(keyed.data, dtype=">u8").astype(np.uint64)


def fraction_cut(fraction: float | None) -> int:
    """Smallest integer c with: rank < fraction × 2^64 ⟺ rank < c, for integer ranks (exact arithmetic)."""
    if fraction is None:
        return TWO_64
    return min(TWO_64, math.ceil(Fraction(fraction) * TWO_64))


@dataclass(frozen=True)
class SampleResult:
    """What the draw decided: keep rows with ``rank <= limit``; sizes are distinct entities."""

    entity: str
    fraction: float | None
    max_records: int | None
    limit: int | None  # None: nobody is kept
    population: int
    sample_size: int

    @property
    def fraction_delivered(self) -> float | None:
        return self.sample_size / self.population if self.population else None

    def to_state(self) -> dict[str, Any]:
        """Everything needed to apply this draw again (private staging only: holds the rank limit)."""
        return {"entity": self.entity, "fraction": self.fraction, "max_records": self.max_records,
                "limit": self.limit, "population": self.population, "sample_size": self.sample_size}

    @classmethod
    def from_state(cls, data: Mapping[str, Any]) -> SampleResult:
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return {"entity": self.entity, "fraction_requested": self.fraction, "max_records": self.max_records,
                "population": self.population, "sample_size": self.sample_size,
                "fraction_delivered": self.fraction_delivered}


class SampleDraw:
    """First pass: the bottom-k limit over all ranks, and exact distinct counts (see module doc)."""

    def __init__(self, *, entity: str, fraction: float | None, max_records: int | None, spill_dir: Path) -> None:
        self.entity = entity
        self.fraction = fraction
        self.max_records = max_records
        self.cut = fraction_cut(fraction)
        self._best = np.zeros(0, dtype=np.uint64)
        self._pending: list[np.ndarray] = []
        self._pending_n = 0
        self._spill_dir = spill_dir
        spill_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._files: dict[int, BinaryIO] = {}
        self._bounds = np.array([p << (64 - _PARTITION_BITS) for p in range(1, 1 << _PARTITION_BITS)],
                                dtype=np.uint64)

    def add(self, batch_ranks: np.ndarray) -> None:
        distinct = np.unique(batch_ranks)
        self._spill(distinct)
        candidates = distinct if self.cut == TWO_64 else distinct[distinct < np.uint64(self.cut)]
        if self.max_records is None or not len(candidates):
            return
        if len(self._best) >= self.max_records:
            candidates = candidates[candidates < self._best[-1]]
        if len(candidates):
            self._pending.append(candidates)
            self._pending_n += len(candidates)
            if self._pending_n >= max(self.max_records, _MERGE_AT):
                self._merge()

    def _merge(self) -> None:
        if self._pending:
            merged = np.unique(np.concatenate([self._best, *self._pending]))
            self._best = merged[: self.max_records]
            self._pending, self._pending_n = [], 0

    def _spill(self, distinct: np.ndarray) -> None:
        splits = np.searchsorted(distinct, self._bounds)
        for part, chunk in enumerate(np.split(distinct, splits)):
            if len(chunk):
                fh = self._files.get(part)
                if fh is None:
                    fh = self._files[part] = (self._spill_dir / f"ranks-{part:02d}.u64").open("ab")
                fh.write(chunk.tobytes())

    def limit(self) -> int | None:
        self._merge()
        if self.max_records is not None and len(self._best) >= self.max_records:
            return int(self._best[-1])
        return self.cut - 1

    def finish(self) -> SampleResult:
        limit = self.limit()
        for fh in self._files.values():
            fh.close()
        population = sample = 0
        try:
            for part in sorted(self._files):
                distinct = np.unique(np.fromfile(self._spill_dir / f"ranks-{part:02d}.u64", dtype=np.uint64))
                population += len(distinct)
                if limit is not None:
                    sample += int(np.count_nonzero(distinct <= np.uint64(limit)))
        finally:
            self._files.clear()
            shutil.rmtree(self._spill_dir, ignore_errors=True)
        return SampleResult(entity=self.entity, fraction=self.fraction, max_records=self.max_records, limit=limit,
                            population=population, sample_size=sample)


def keep_mask(batch_ranks: np.ndarray, limit: int | None) -> np.ndarray:
    if limit is None:
        return np.zeros(len(batch_ranks), dtype=bool)
    return batch_ranks <= np.uint64(limit)
