"""Keyed hashing of many identifiers: the hot loop of masking.

Every keyed value of format v1 (pseudonym, sample rank, date-shift offset) is a prefix of
``HMAC-SHA256(key, utf8(entity + "\\x00" + canonical))``. This module computes those for a whole
Arrow array of identifiers at once, with one of two backends that give the same bytes
(tests/masking/test_hashing.py checks both against ``hmac.new`` and the design.md formula):

- ``native`` (the default): ``masking._hmac_native``, a small C extension that the install compiles
  (hatch_build.py) against the system's OpenSSL. It reads the values straight from the Arrow array's
  buffers (validity, offsets, data), runs OpenSSL's own HMAC-SHA256 on each (the key schedule once per
  call, then the ``HMAC_Init_ex``/``HMAC_Update``/``HMAC_Final`` calls that ``openssl speed -hmac sha256``
  times) and writes the truncated digests, raw or lower-case hex, into one buffer, with the GIL released.
  So its parallelism is threads: ``HashPool(n)`` hashes slices of an array (canonicalising included:
  Arrow's kernels release the GIL too) on ``n`` threads of the calling process. No process is started
  and nothing is imported again, so it works alike in a shell, a test and an Airflow task under every
  executor.
- ``python`` (the fallback: used when the extension is not importable, e.g. it could not be compiled,
  or when ``CONTRACT_EXTRACTS_HASH_BACKEND=python``): ``cryptography``'s OpenSSL HMAC over a pre-keyed
  template, one ``copy()``/``update()``/``finalize()`` per value, truncated and hex-encoded per batch.
  Its parallelism is worker processes, but not multiprocessing's: a spawned multiprocessing child
  re-imports the parent's ``__main__``, which inside an Airflow task is Airflow's entry point, and that
  fails on the task supervisor's ``airflow-db-not-allowed:///`` database URL (ERROR tracebacks, then a
  broken pool). Each worker is ``python -m masking.hash_worker``, started without Airflow's environment
  variables; it imports only this package and its libraries, and talks to its pool over its own
  stdin/stdout pipes (slices travel in Arrow IPC form; keys travel over these pipes only).

Either way nothing here implements a hash function, memory is bounded by the record batch (no list of a
whole column is ever built), and hashing never happens inside the source database: the key would appear
in SQL text and server logs. The first use of each pool logs at INFO which backend hashes, on how many
threads or processes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import queue
import struct
import subprocess
import sys
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac

from core.errors import ConfigError, value_free
from masking.canonical import canonicalise

try:
    from masking._hmac_native import API_VERSION as _NATIVE_API_VERSION
    from masking._hmac_native import OPENSSL_VERSION as _NATIVE_OPENSSL_VERSION
    from masking._hmac_native import hmac_sha256_rows
except ModuleNotFoundError:
    NATIVE_UNAVAILABLE: str | None = "the extension was not compiled at install time"
except ImportError as exc:  # e.g. the system's libcrypto is missing at run time
    NATIVE_UNAVAILABLE = f"the extension does not load ({value_free(exc)})"
else:
    NATIVE_UNAVAILABLE = None if _NATIVE_API_VERSION == 1 else "the extension was built from another version"

log = logging.getLogger(__name__)

NATIVE = "native"
PYTHON = "python"
#: The backend this installation hashes with unless told otherwise.
BACKEND = NATIVE if NATIVE_UNAVAILABLE is None else PYTHON
BACKEND_ENV = "CONTRACT_EXTRACTS_HASH_BACKEND"
HASH_WORKERS_ENV = "CONTRACT_EXTRACTS_HASH_WORKERS"
WORKER_MODULE = "masking.hash_worker"
DIGEST_BYTES = 32
#: Below this many values per array the thread (or worker process) round trip costs more than it saves.
MIN_PARALLEL_VALUES = 16_384
_SUB_BATCH = 32_768
_SLICES_PER_WORKER = 2
_FRAME = struct.Struct(">Q")
_STOP_SECONDS = 10


def hmac_sha256_many(key: bytes, prefix: bytes, messages: list[bytes]) -> bytes:
    """Concatenated HMAC-SHA256(key, prefix + m) of every message, 32 bytes each, in order (the fallback)."""
    template = crypto_hmac.HMAC(key, hashes.SHA256())
    template.update(prefix)
    copy = template.copy
    digests: list[bytes] = []
    append = digests.append  # bound once: the loop runs once per value
    for message in messages:
        h = copy()
        h.update(message)
        append(h.finalize())
    return b"".join(digests)


def default_backend(env: Mapping[str, str] | None = None) -> str:
    """CONTRACT_EXTRACTS_HASH_BACKEND (``native`` or ``python``), else ``BACKEND``."""
    env = os.environ if env is None else env
    return check_backend(env.get(BACKEND_ENV) or BACKEND)


def check_backend(backend: str) -> str:
    """``backend`` if it names a backend this installation has, else a ConfigError saying how to get it."""
    if backend == NATIVE and NATIVE_UNAVAILABLE is not None:
        raise ConfigError(f"the native keyed-hashing backend is not available: {NATIVE_UNAVAILABLE}",
                          key=BACKEND_ENV, fix="install a C compiler and OpenSSL's headers (Debian: gcc libssl-dev) "
                          "and reinstall the project, or unset it to use the pure-Python fallback")
    if backend not in (NATIVE, PYTHON):
        raise ConfigError(f"must be {NATIVE!r} or {PYTHON!r}", key=BACKEND_ENV,
                          fix="unset it to use the native backend where it is installed")
    return backend


def describe_backend(backend: str, workers: int) -> str:
    """What hashes, for the log: e.g. ``native OpenSSL (OpenSSL 3.0.19 …), 2 threads``."""
    if backend == NATIVE:
        return f"native OpenSSL ({_NATIVE_OPENSSL_VERSION}), {workers} thread{'s' if workers > 1 else ''}"
    parallel = f"{workers} worker processes" if workers > 1 else "in the calling process"
    why = f"; native unavailable: {NATIVE_UNAVAILABLE}" if NATIVE_UNAVAILABLE else ""
    return f"pure Python fallback (cryptography's HMAC), {parallel}{why}"


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


def keyed_digests(values: pa.Array, canonicaliser: str | None, key: bytes, prefix: bytes, width: int, hexed: bool,
                  backend: str) -> tuple[np.ndarray, bytes]:
    """(valid per row, digests of the valid rows) of one array, in the calling thread."""
    canonical = canonicalise(values, canonicaliser) if canonicaliser else values
    valid = canonical.is_valid().to_numpy(zero_copy_only=False) if len(canonical) else np.zeros(0, dtype=bool)
    if backend == NATIVE:
        return valid, _native_digests(canonical, int(np.count_nonzero(valid)), key, prefix, width, hexed)
    present = pc.drop_null(canonical) if canonical.null_count else canonical
    present = present.cast(pa.binary())  # the bytes as they are (large_binary need not be UTF-8)
    # Sub-batches keep the per-value Python objects few (large lists slow the allocator and the GC).
    raw = b"".join(hmac_sha256_many(key, prefix, present.slice(start, _SUB_BATCH).to_pylist())
                   for start in range(0, len(present), _SUB_BATCH))
    if width != DIGEST_BYTES:
        raw = np.ascontiguousarray(np.frombuffer(raw, dtype=np.uint8).reshape(-1, DIGEST_BYTES)[:, :width]).tobytes()
    return valid, (raw.hex().encode("ascii") if hexed else raw)


def _native_digests(values: pa.Array, valid_count: int, key: bytes, prefix: bytes, width: int, hexed: bool) -> bytes:
    """The extension over the array's own buffers: 32- or 64-bit offsets, any offset into them (slices)."""
    if len(values) == 0:
        return b""
    if pa.types.is_large_string(values.type) or pa.types.is_large_binary(values.type):
        offset_bytes = 8
    elif pa.types.is_string(values.type) or pa.types.is_binary(values.type):
        offset_bytes = 4
    else:  # the fallback hashes these as binary too (and refuses the same types)
        values, offset_bytes = values.cast(pa.binary()), 4
    validity, offsets, data = values.buffers()[:3]
    return hmac_sha256_rows(key, prefix, offsets=offsets, offset_bytes=offset_bytes,
                            data=b"" if data is None else data, validity=validity if values.null_count else None,
                            first=values.offset, count=len(values), valid_count=valid_count, width=width,
                            hexed=hexed)


def _to_ipc(values: pa.Array) -> bytes:
    """A slice as Arrow IPC: only the slice's own bytes (pickling a slice would copy its parent's buffers)."""
    batch = pa.record_batch([values], names=["v"])
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    data: bytes = sink.getvalue().to_pybytes()
    return data


def keyed_task(ipc: bytes, canonicaliser: str | None, key: bytes, prefix: bytes, width: int,
               hexed: bool) -> tuple[bytes, bytes]:
    """One request to a worker process: a slice in Arrow IPC form → (packed valid bits, digests)."""
    values = pa.ipc.open_stream(pa.py_buffer(ipc)).read_next_batch().column(0)
    valid, out = keyed_digests(values, canonicaliser, key, prefix, width, hexed, PYTHON)
    return np.packbits(valid).tobytes(), out


def write_frame(stream: IO[bytes], payload: bytes) -> None:
    """One message on a worker pipe: its length (8 bytes, big-endian), then its bytes."""
    stream.write(_FRAME.pack(len(payload)))
    stream.write(payload)
    stream.flush()


def read_frame(stream: IO[bytes]) -> bytes | None:
    """The next message on a worker pipe, or None when the other end has closed it."""
    header = stream.read(_FRAME.size)
    if len(header) < _FRAME.size:
        return None
    (size,) = _FRAME.unpack(header)
    payload = stream.read(size)
    if len(payload) < size:
        return None
    return payload


class HashWorkersUnavailable(RuntimeError):
    """Worker processes could not be started, or one of them went away."""


def worker_environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """A worker's environment: this one without Airflow's variables, with this process's import path."""
    env = os.environ if env is None else env
    clean = {k: v for k, v in env.items() if not k.upper().startswith(("AIRFLOW", "_AIRFLOW"))}
    clean["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and os.path.isabs(p))
    return clean


class _WorkerProcesses:
    """``count`` processes running ``python -m masking.hash_worker``; each serves one request at a time."""

    def __init__(self, count: int) -> None:
        self._idle: queue.SimpleQueue[subprocess.Popen[bytes]] = queue.SimpleQueue()
        self._processes: list[subprocess.Popen[bytes]] = []
        # One thread per process feeds it and waits for its answer, so the processes work at the same time.
        self._threads = ThreadPoolExecutor(max_workers=count, thread_name_prefix="keyed-hash-worker")
        try:
            for _ in range(count):
                process = subprocess.Popen([sys.executable, "-m", WORKER_MODULE], stdin=subprocess.PIPE,
                                           stdout=subprocess.PIPE, env=worker_environment())
                self._processes.append(process)
                self._idle.put(process)
        except OSError as exc:
            self.close()
            raise HashWorkersUnavailable(f"cannot start a worker process ({value_free(exc)})") from None

    def submit(self, request: tuple[bytes, str | None, bytes, bytes, int, bool]) -> Future[tuple[bytes, bytes]]:
        return self._threads.submit(self._call, pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL))

    def _call(self, request: bytes) -> tuple[bytes, bytes]:
        process = self._idle.get()
        try:
            if process.stdin is None or process.stdout is None:
                raise HashWorkersUnavailable("a worker process has no pipes")
            try:
                write_frame(process.stdin, request)
                answer = read_frame(process.stdout)
            except (OSError, ValueError) as exc:
                raise HashWorkersUnavailable(f"a worker process went away ({value_free(exc)})") from None
        finally:
            self._idle.put(process)
        if answer is None:
            raise HashWorkersUnavailable("a worker process exited")
        ok, result = pickle.loads(answer)  # noqa: S301 - written by our own worker, over its private pipe
        if not ok:
            raise result  # the worker's exception (e.g. DataError: counts, never values)
        digests: tuple[bytes, bytes] = result
        return digests

    def close(self) -> None:
        self._threads.shutdown(wait=True, cancel_futures=True)
        for process in self._processes:
            if process.stdin is not None:
                with contextlib.suppress(OSError):
                    process.stdin.close()  # the worker ends at the end of its input
        for process in self._processes:
            try:
                process.wait(timeout=_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()
        self._processes = []


def default_workers(env: Mapping[str, str] | None = None) -> int:
    """Threads (or fallback worker processes) that hash: CONTRACT_EXTRACTS_HASH_WORKERS, else every core (≤ 8)."""
    env = os.environ if env is None else env
    raw = env.get(HASH_WORKERS_ENV)
    if raw is None or raw == "":
        return max(1, min(8, os.cpu_count() or 1))
    try:
        workers = int(raw)
        if workers < 1:
            raise ValueError
    except ValueError:
        raise ConfigError("must be a positive whole number (1 hashes in the calling thread)",
                          key=HASH_WORKERS_ENV, fix="set it to e.g. 2, or unset it to use every core") from None
    return workers


class HashPool:
    """Computes keyed digests in the calling thread, or split over ``workers`` threads (or fallback processes).

    ``backend``: ``native`` or ``python``; None: CONTRACT_EXTRACTS_HASH_BACKEND, else ``BACKEND``.
    ``workers=1`` hashes in the calling thread. Otherwise arrays of at least ``min_parallel`` values are
    split into slices hashed at the same time: on ``workers`` threads with the native backend, on
    ``workers`` worker processes with the fallback (started on first need and reused until ``close()``;
    where they cannot be started, the fallback hashes in the calling process, with a warning).
    """

    def __init__(self, workers: int = 1, *, min_parallel: int = MIN_PARALLEL_VALUES,
                 backend: str | None = None) -> None:
        self.workers = max(1, int(workers))
        self.min_parallel = max(2, int(min_parallel))
        self._backend = None if backend is None else check_backend(backend)
        self._threads: ThreadPoolExecutor | None = None
        self._processes: _WorkerProcesses | None = None
        self._announced = False

    def __enter__(self) -> HashPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def backend(self) -> str:
        """The backend, settled on first use (so that a pool made at import time reads no settings)."""
        if self._backend is None:
            self._backend = default_backend()
        return self._backend

    @property
    def started(self) -> bool:
        """Whether hashing threads or worker processes have been started."""
        return self._threads is not None or self._processes is not None

    @property
    def processes_started(self) -> bool:
        return self._processes is not None

    def close(self) -> None:
        threads, self._threads = self._threads, None
        if threads is not None:
            threads.shutdown(wait=True, cancel_futures=True)
        processes, self._processes = self._processes, None
        if processes is not None:
            try:
                processes.close()
            except Exception as exc:  # a broken pool: its processes are gone already
                log.warning("hash worker processes did not shut down cleanly (%s)", value_free(exc))

    def keyed(self, values: pa.Array, *, canonicaliser: str | None, key: bytes, prefix: bytes,
              width: int = DIGEST_BYTES, hexed: bool = False) -> Keyed:
        """HMAC-SHA256(key, prefix + canonical(value))[:width] for every row whose canonical value is not null.

        ``canonicaliser`` None: ``values`` are canonical already (a string array).
        """
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        backend = self.backend
        if not self._announced:
            self._announced = True
            log.info("keyed hashing: %s", describe_backend(backend, self.workers))
        if self.workers > 1 and len(values) >= self.min_parallel:
            if backend == NATIVE:
                return self._on_threads(values, canonicaliser, key, prefix, width, hexed)
            try:
                return self._on_processes(values, canonicaliser, key, prefix, width, hexed)
            except HashWorkersUnavailable as exc:
                log.warning("hash worker processes are unavailable (%s); hashing in the calling process", exc)
                self.close()
                self.workers = 1
        valid, data = keyed_digests(values, canonicaliser, key, prefix, width, hexed, backend)
        return Keyed(valid=valid, data=data, width=width, hexed=hexed)

    def _slices(self, values: pa.Array) -> list[pa.Array]:
        n = len(values)
        # A few slices per worker balance the load when one worker is slowed (a busy core).
        step = max(self.min_parallel, -(-n // (self.workers * _SLICES_PER_WORKER)))
        return [values.slice(start, step) for start in range(0, n, step)]

    def _on_threads(self, values: pa.Array, canonicaliser: str | None, key: bytes, prefix: bytes, width: int,
                    hexed: bool) -> Keyed:
        if self._threads is None:
            self._threads = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="keyed-hash")
        threads = self._threads
        futures = [threads.submit(keyed_digests, part, canonicaliser, key, prefix, width, hexed, NATIVE)
                   for part in self._slices(values)]
        results = [future.result() for future in futures]  # in slice order
        return Keyed(valid=np.concatenate([valid for valid, _ in results]), data=b"".join(d for _, d in results),
                     width=width, hexed=hexed)

    def _on_processes(self, values: pa.Array, canonicaliser: str | None, key: bytes, prefix: bytes, width: int,
                      hexed: bool) -> Keyed:
        if self._processes is None:
            self._processes = _WorkerProcesses(self.workers)
        processes = self._processes
        slices = self._slices(values)
        packed = [processes.submit((_to_ipc(part), canonicaliser, key, prefix, width, hexed)) for part in slices]
        valids, parts = [], []
        for part, future in zip(slices, packed, strict=True):
            bits, out = future.result()
            valids.append(np.unpackbits(np.frombuffer(bits, dtype=np.uint8), count=len(part)).astype(bool))
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
