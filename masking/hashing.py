"""Keyed hashing of many identifiers: the hot loop of masking.

Every keyed value of format v1 (pseudonym, sample rank, date-shift offset) is a prefix of
``HMAC-SHA256(key, utf8(entity + "\\x00" + canonical))``. This module computes those for a whole
Arrow array of identifiers at once:

- HMAC comes from ``cryptography`` (OpenSSL): the key schedule and the ``entity + "\\x00"`` prefix are
  absorbed once into a template context, then each value costs one ``copy()``, one ``update()`` and
  one ``finalize()``. That is RFC 2104 HMAC computed by OpenSSL, byte-identical to
  ``hmac.new(key, prefix + value, "sha256")`` (property tests check it); nothing here implements a
  hash function. The digests of a batch come back as one ``bytes`` buffer, truncated and hex-encoded
  per batch (one ``bytes.hex()`` call, not one per value), and go straight into Arrow buffers.
- Large arrays are split over worker processes (``HashPool``): each worker canonicalises and hashes
  its slice. Slices cross the process boundary in Arrow IPC form (only their own bytes), results come
  back in order. Keys travel to the workers through the pool's private pipes only.
- Memory is bounded by the record batch: no list of a whole column is ever built.

Hashing never happens inside the source database: the key would appear in SQL text and server logs.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac

from core.errors import ConfigError
from masking.canonical import canonicalise

log = logging.getLogger(__name__)

DIGEST_BYTES = 32
HASH_WORKERS_ENV = "CONTRACT_EXTRACTS_HASH_WORKERS"
#: Below this many values per array the worker round trip costs more than it saves.
MIN_PARALLEL_VALUES = 16_384
_SUB_BATCH = 32_768
_SLICES_PER_WORKER = 2


def hmac_sha256_many(key: bytes, prefix: bytes, messages: list[bytes]) -> bytes:
    """Concatenated HMAC-SHA256(key, prefix + m) of every message, 32 bytes each, in order."""
    template = crypto_hmac.HMAC(key, hashes.SHA256())
    template.update(prefix)
    copy = template.copy
    # One expression per value keeps the interpreter overhead down: copy, absorb, finalize.
    return b"".join([((h := copy()).update(m) or h.finalize()) for m in messages])


@dataclass(frozen=True)
class Keyed:
    """Keyed digests of one array: ``valid`` per row, and ``width`` bytes per valid row (hex: 2×width chars)."""

    valid: np.ndarray  # bool, one per input row: False where the canonical identifier is null
    data: bytes
    width: int
    hexed: bool

    def matrix(self) -> np.ndarray:
        """(valid rows, width) uint8 (not for hexed results)."""
        return np.frombuffer(self.data, dtype=np.uint8).reshape(-1, self.width)


def _keyed_local(values: pa.Array, canonicaliser: str | None, key: bytes, prefix: bytes, width: int,
                 hexed: bool) -> tuple[np.ndarray, bytes]:
    canonical = canonicalise(values, canonicaliser) if canonicaliser else values
    valid = canonical.is_valid().to_numpy(zero_copy_only=False) if len(canonical) else np.zeros(0, dtype=bool)
    present = pc.drop_null(canonical) if canonical.null_count else canonical
    if pa.types.is_large_string(present.type) or pa.types.is_large_binary(present.type):
        present = present.cast(pa.string())
    present = present.cast(pa.binary())
    # Sub-batches keep the per-value Python objects few (large lists slow the allocator and the GC).
    raw = b"".join(hmac_sha256_many(key, prefix, present.slice(start, _SUB_BATCH).to_pylist())
                   for start in range(0, len(present), _SUB_BATCH))
    if width != DIGEST_BYTES:
        raw = np.ascontiguousarray(np.frombuffer(raw, dtype=np.uint8).reshape(-1, DIGEST_BYTES)[:, :width]).tobytes()
    return valid, (raw.hex().encode("ascii") if hexed else raw)


def _to_ipc(values: pa.Array) -> bytes:
    """A slice as Arrow IPC: only the slice's own bytes (pickling a slice would copy its parent's buffers)."""
    batch = pa.record_batch([values], names=["v"])
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def _keyed_task(ipc: bytes, canonicaliser: str | None, key: bytes, prefix: bytes, width: int,
                hexed: bool) -> tuple[bytes, bytes]:
    """Worker entry point (module level so that a spawned process can import it)."""
    values = pa.ipc.open_stream(pa.py_buffer(ipc)).read_next_batch().column(0)
    valid, out = _keyed_local(values, canonicaliser, key, prefix, width, hexed)
    return np.packbits(valid).tobytes(), out


def default_workers(env: dict[str, str] | None = None) -> int:
    """Processes that hash: CONTRACT_EXTRACTS_HASH_WORKERS, else every core (at most 8)."""
    env = os.environ if env is None else env
    raw = env.get(HASH_WORKERS_ENV)
    if raw is None or raw == "":
        return max(1, min(8, os.cpu_count() or 1))
    try:
        workers = int(raw)
        if workers < 1:
            raise ValueError
    except ValueError:
        raise ConfigError("must be a positive whole number (1 hashes in the task's own process)",
                          key=HASH_WORKERS_ENV, fix="set it to e.g. 2, or unset it to use every core") from None
    return workers


class HashPool:
    """Computes keyed digests, in this process or split over ``workers`` processes.

    ``workers=1`` never starts a process. Otherwise a pool of ``workers`` processes is started on the
    first array of at least ``min_parallel`` values (spawned, not forked: the task process may hold
    threads and locks) and reused until ``close()``. Where processes cannot be started, hashing falls
    back to this process with a warning.
    """

    def __init__(self, workers: int = 1, *, min_parallel: int = MIN_PARALLEL_VALUES) -> None:
        self.workers = max(1, int(workers))
        self.min_parallel = max(2, int(min_parallel))
        self._executor: ProcessPoolExecutor | None = None

    def __enter__(self) -> HashPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._executor is not None:
            executor, self._executor = self._executor, None
            try:
                executor.shutdown(wait=True, cancel_futures=True)
            except Exception as exc:  # a broken pool: its processes are gone already
                log.warning("hash worker pool did not shut down cleanly (%s)", type(exc).__name__)

    @property
    def started(self) -> bool:
        return self._executor is not None

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(max_workers=self.workers,
                                                 mp_context=multiprocessing.get_context("spawn"))
            log.info("keyed hashing over %d worker processes", self.workers)
        return self._executor

    def keyed(self, values: pa.Array, *, canonicaliser: str | None, key: bytes, prefix: bytes,
              width: int = DIGEST_BYTES, hexed: bool = False) -> Keyed:
        """HMAC-SHA256(key, prefix + canonical(value))[:width] for every row whose canonical value is not null.

        ``canonicaliser`` None: ``values`` are canonical already (a string array).
        """
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        n = len(values)
        if self.workers > 1 and n >= self.min_parallel:
            try:
                return self._parallel(values, canonicaliser, key, prefix, width, hexed)
            except (BrokenProcessPool, OSError, AssertionError) as exc:
                # No worker processes here (e.g. a daemonic task process): hash in this process instead.
                log.warning("hash worker processes are unavailable (%s); hashing in the task process",
                            type(exc).__name__)
                self.close()
                self.workers = 1
        valid, data = _keyed_local(values, canonicaliser, key, prefix, width, hexed)
        return Keyed(valid=valid, data=data, width=width, hexed=hexed)

    def _parallel(self, values: pa.Array, canonicaliser: str | None, key: bytes, prefix: bytes, width: int,
                  hexed: bool) -> Keyed:
        n = len(values)
        pool = self._pool()
        # A few slices per worker balance the load when one worker is slowed (a busy core).
        step = max(self.min_parallel, -(-n // (self.workers * _SLICES_PER_WORKER)))
        futures: list[tuple[int, Future[tuple[bytes, bytes]]]] = [
            (min(step, n - start), pool.submit(_keyed_task, _to_ipc(values.slice(start, step)), canonicaliser,
                                               key, prefix, width, hexed))
            for start in range(0, n, step)
        ]
        valids, parts = [], []
        for size, future in futures:
            bits, out = future.result()
            valids.append(np.unpackbits(np.frombuffer(bits, dtype=np.uint8), count=size).astype(bool))
            parts.append(out)
        return Keyed(valid=np.concatenate(valids) if valids else np.zeros(0, dtype=bool), data=b"".join(parts),
                     width=width, hexed=hexed)


LOCAL = HashPool(1)


def scatter_strings(valid: np.ndarray, chars: bytes, width: int) -> pa.Array:
    """A string array with ``width``-character values from ``chars`` where ``valid`` is true, else null."""
    n = len(valid)
    nulls = n - int(np.count_nonzero(valid))
    if nulls:
        offsets = np.zeros(n + 1, dtype=np.int32)
        np.cumsum(np.where(valid, width, 0).astype(np.int32), out=offsets[1:])
        bitmap = pa.array(valid, pa.bool_()).buffers()[1]
    else:
        offsets, bitmap = np.arange(0, (n + 1) * width, width, dtype=np.int32), None
    return pa.Array.from_buffers(pa.string(), n, [bitmap, pa.py_buffer(offsets), pa.py_buffer(chars)],
                                 null_count=nulls)


def scatter_numbers(valid: np.ndarray, values: np.ndarray, type_: pa.DataType) -> pa.Array:
    """A numeric array holding ``values`` (one per valid row, in order) where ``valid`` is true, else null."""
    full = np.zeros(len(valid), dtype=values.dtype)
    full[valid] = values
    return pa.array(full, type=type_, mask=~valid)
