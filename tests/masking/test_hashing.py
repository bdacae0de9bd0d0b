"""Batched keyed hashing: both backends byte-identical to hmac.new and the design.md formula, alone and in parallel.

The native backend (OpenSSL's HMAC over Arrow buffers, compiled at install time) and the pure-Python fallback
are each checked against the formula computed independently with ``hmac.new``: pseudonyms (32 hex chars), sample
ranks (first 8 bytes, big-endian) and date-shift offsets (first 4 bytes), over nulls, empty strings, non-ASCII,
long values, sliced arrays, large_string and binary. The parallel paths are checked to keep order, to carry
errors without values, and to be safe inside Airflow tasks: the native path starts no process at all, and the
fallback's worker processes import neither the parent's ``__main__`` nor Airflow.
"""

from __future__ import annotations

import hashlib
import hmac
import multiprocessing.process
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import ConfigError, DataError
from masking import dateshift, hashing, sampling
from masking.hashing import (
    BACKEND_ENV,
    HASH_WORKERS_ENV,
    NATIVE,
    PYTHON,
    HashPool,
    default_backend,
    default_workers,
    hmac_sha256_many,
    keyed_digests,
    worker_environment,
)
from masking.pseudonyms import pseudonymise_array

from .vectors import MASTER, entity_input, expected_contract_key, expected_pseudonym

KEY = expected_contract_key(MASTER, "pseudonym", "C-DEMO-001")
NATIVE_MISSING = f"native extension unavailable: {hashing.NATIVE_UNAVAILABLE}"
BACKENDS = [pytest.param(NATIVE, marks=pytest.mark.skipif(hashing.NATIVE_UNAVAILABLE is not None,
                                                          reason=NATIVE_MISSING)),
            PYTHON]
REPO = Path(__file__).resolve().parents[2]

# Canonical already (no canonicaliser): None is skipped, "" is hashed as the bare prefix.
AWKWARD: list[str | None] = ["AB123456C", None, "", "é", "Zoë Ørsted-Łukasiewicz", "名前", "😀" * 3, "x" * 10_000,
                             " padded ", "tab\there", "nul\x00inside", None, "a"]


def formula(key: bytes, entity: str, canonical: str) -> bytes:
    """design.md: HMAC-SHA256(key, utf8(entity + "\\x00" + canonical)), computed with the standard library."""
    return hmac.new(key, entity_input(entity, canonical), hashlib.sha256).digest()


def test_this_install_has_the_native_backend() -> None:
    """`make venv` and `pip install .` compile it (hatch_build.py); without it hashing is 3× slower."""
    assert hashing.NATIVE_UNAVAILABLE is None, (
        f"{hashing.NATIVE_UNAVAILABLE}: install gcc and libssl-dev (make build-deps) and reinstall (make venv)")
    assert hashing.BACKEND == NATIVE


@settings(max_examples=200, deadline=None)
@given(key=st.binary(min_size=1, max_size=150), prefix=st.binary(max_size=20),
       messages=st.lists(st.binary(max_size=100), max_size=20))
def test_batched_hmac_equals_hmac_new(key: bytes, prefix: bytes, messages: list[bytes]) -> None:
    expected = b"".join(hmac.new(key, prefix + m, hashlib.sha256).digest() for m in messages)
    assert hmac_sha256_many(key, prefix, messages) == expected


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=150, deadline=None)
@given(key=st.binary(min_size=0, max_size=150), prefix=st.binary(max_size=20),
       messages=st.lists(st.one_of(st.none(), st.binary(max_size=200)), max_size=30),
       width=st.integers(1, 32), hexed=st.booleans(), start=st.integers(0, 5), large=st.booleans())
def test_any_key_prefix_width_and_layout_equals_hmac_new(backend: str, key: bytes, prefix: bytes,
                                                         messages: list[bytes | None], width: int, hexed: bool,
                                                         start: int, large: bool) -> None:
    values = pa.array(messages, pa.large_binary() if large else pa.binary()).slice(min(start, len(messages)))
    kept = values.to_pylist()
    valid, data = keyed_digests(values, None, key, prefix, width, hexed, backend)
    raw = b"".join(hmac.new(key, prefix + m, hashlib.sha256).digest()[:width] for m in kept if m is not None)
    assert data == (raw.hex().encode() if hexed else raw)
    assert valid.tolist() == [m is not None for m in kept]


def _layouts(values: list[str | None]) -> Iterator[tuple[str, pa.Array]]:
    base = pa.array(values, pa.string())
    yield "string", base
    yield "large_string", pa.array(values, pa.large_string())
    yield "binary", pa.array([None if v is None else v.encode() for v in values], pa.binary())
    yield "sliced string", pa.array(["lead-in", None, *values, None, "tail"], pa.string()).slice(2, len(values))
    yield "sliced large_string", pa.array([None, "x", *values], pa.large_string()).slice(2)
    yield "chunked", pa.chunked_array([base.slice(0, 4), base.slice(4)])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("workers", [1, 2])
def test_pseudonyms_ranks_and_offsets_follow_the_design_formula(backend: str, workers: int) -> None:
    values = AWKWARD * 40  # 520 values: split into slices when workers=2 (min_parallel=64)
    expected = [None if v is None else formula(KEY, "person", v) for v in values]
    with HashPool(workers, min_parallel=64, backend=backend) as pool:
        for layout, array in _layouts(values):
            pseudonyms = pseudonymise_array(array, key=KEY, entity="person", canonicaliser=None, pool=pool)
            assert pseudonyms.to_pylist() == [None if d is None else d.hex()[:32] for d in expected], layout
            valid, ranks = sampling.ranks(array, canonicaliser=None, key=KEY, entity="person", pool=pool)
            assert valid.tolist() == [d is not None for d in expected], layout
            assert ranks.tolist() == [int.from_bytes(d[:8], "big") for d in expected if d is not None], layout
            days = dateshift.offsets(array, canonicaliser=None, key=KEY, entity="person", max_days=30, pool=pool)
            assert days.to_pylist() == [None if d is None else _offset(int.from_bytes(d[:4], "big"), 30)
                                        for d in expected], layout
        assert pool.started == (workers > 1)


def _offset(u: int, m: int) -> int:
    r = u % (2 * m)
    return r - m if r < m else r - m + 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_canonicalised_input_matches_the_formula(backend: str) -> None:
    raw = [None if i % 17 == 0 else f"ab {i:06d} c" for i in range(5000)] + ["  ", "", "ＡＢ１２３４５６Ｃ"]
    values = pa.array(raw)
    with HashPool(2, min_parallel=64, backend=backend) as pool:
        for chunk in (values, values.slice(1234, 2000), values.slice(4990)):
            local = pseudonymise_array(chunk, key=KEY, entity="person", canonicaliser="nino",
                                       pool=HashPool(1, backend=backend))
            parallel = pseudonymise_array(chunk, key=KEY, entity="person", canonicaliser="nino", pool=pool)
            assert parallel.equals(local)
        assert pool.started
        out = pseudonymise_array(values, key=KEY, entity="person", canonicaliser="nino", pool=pool).to_pylist()
    canonical = ["".join(v.split()).upper() if v is not None else None for v in raw]
    assert out == [None if not c else expected_pseudonym(KEY, "person", c) for c in canonical]


def test_both_backends_agree_on_every_canonicaliser() -> None:
    if hashing.NATIVE_UNAVAILABLE is not None:
        pytest.skip(NATIVE_MISSING)
    inputs = {"nino": ["ab 12 34 56 c", "AB123456C", None, " "], "email": [" Jo@Example.ORG ", "", None],
              "phone": ["020 7946 0018", "+44 (0)20 7946 0018", None], "text": ["  Two   words ", "Ünïcode"],
              "postcode": ["sw1a 1aa", "SW1A1AA"], "integer": [" 042", "42", "-7", None]}
    for canonicaliser, raw in inputs.items():
        native, fallback = (pseudonymise_array(pa.array(raw), key=KEY, entity="claimant", canonicaliser=canonicaliser,
                                               pool=HashPool(1, backend=backend)) for backend in (NATIVE, PYTHON))
        assert native.equals(fallback), canonicaliser


@pytest.mark.parametrize("backend", BACKENDS)
def test_parallel_errors_carry_counts_not_values(backend: str) -> None:
    values = pa.array([str(i) for i in range(500)] + ["not-a-number"] + [str(i) for i in range(500)])
    with HashPool(2, min_parallel=64, backend=backend) as pool, pytest.raises(DataError) as info:
        pseudonymise_array(values, key=KEY, entity="claimant", canonicaliser="integer", pool=pool)
    assert "1 value(s)" in str(info.value) and "not-a-number" not in str(info.value)


@pytest.mark.parametrize("backend", BACKENDS)
def test_small_arrays_stay_in_the_calling_thread(backend: str) -> None:
    with HashPool(2, backend=backend) as p:
        pseudonymise_array(pa.array(["AB123456C"] * 100), key=KEY, entity="person", canonicaliser="nino", pool=p)
        assert not p.started


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_worker_never_starts_a_thread_or_process(backend: str) -> None:
    with HashPool(1, min_parallel=2, backend=backend) as p:
        pseudonymise_array(pa.array(["AB123456C"] * 1000), key=KEY, entity="person", canonicaliser="nino", pool=p)
        assert not p.started


def test_native_parallelism_is_threads_never_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    if hashing.NATIVE_UNAVAILABLE is not None:
        pytest.skip(NATIVE_MISSING)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the native backend started a process")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", refuse)
    values = pa.array([f"AB{i:06d}C" for i in range(20_000)])
    seen: set[str] = set()
    original = hashing.keyed_digests

    def spy(*args: object, **kwargs: object) -> tuple[np.ndarray, bytes]:
        seen.add(threading.current_thread().name)
        return original(*args, **kwargs)

    monkeypatch.setattr(hashing, "keyed_digests", spy)
    with HashPool(2, min_parallel=1024, backend=NATIVE) as pool:
        out = pseudonymise_array(values, key=KEY, entity="person", canonicaliser="nino", pool=pool)
        assert pool.started and not pool.processes_started
    assert out.to_pylist() == [expected_pseudonym(KEY, "person", v) for v in values.to_pylist()]
    assert seen and all(name.startswith("keyed-hash") for name in seen)


def test_native_hashing_releases_the_gil() -> None:
    """While one thread is inside the extension, another runs Python: the slices really hash in parallel."""
    if hashing.NATIVE_UNAVAILABLE is not None:
        pytest.skip(NATIVE_MISSING)
    n = 1_500_000
    offsets, data = np.arange(0, 9 * (n + 1), 9, dtype=np.int32).tobytes(), b"AB123456C" * n
    inside = threading.Event()
    done = threading.Event()

    def hash_all() -> None:
        inside.set()
        hashing.hmac_sha256_rows(KEY, b"person\x00", offsets=offsets, offset_bytes=4, data=data, validity=None,
                                 first=0, count=n, valid_count=n, width=16, hexed=True)
        done.set()

    ticks = 0
    worker = threading.Thread(target=hash_all)
    worker.start()
    inside.wait()
    while not done.is_set():
        ticks += 1
        time.sleep(0.0005)
    worker.join()
    assert ticks >= 20  # about 0.3 s inside OpenSSL: with the GIL held this loop would not advance at all


@pytest.mark.parametrize(("change", "problem"), [
    ({"offsets": np.array([0, 3, 99], dtype=np.int32).tobytes()}, "outside the data buffer"),
    ({"offsets": np.array([3, 0, 4], dtype=np.int32).tobytes()}, "outside the data buffer"),
    ({"count": 5}, "offsets buffer is shorter"),
    ({"valid_count": 1}, "every row is valid"),
    ({"validity": b"\x01", "valid_count": 2}, "does not match the validity bitmap"),
    ({"width": 33}, "width"),
    ({"offset_bytes": 2}, "offset_bytes"),
])
def test_native_refuses_inconsistent_buffers(change: dict[str, object], problem: str) -> None:
    if hashing.NATIVE_UNAVAILABLE is not None:
        pytest.skip(NATIVE_MISSING)
    arguments: dict[str, object] = {"offsets": np.array([0, 3, 6], dtype=np.int32).tobytes(), "offset_bytes": 4,
                                    "data": b"abcdef", "validity": None, "first": 0, "count": 2, "valid_count": 2,
                                    "width": 16, "hexed": True}
    arguments.update(change)
    with pytest.raises(ValueError, match=problem):
        hashing.hmac_sha256_rows(KEY, b"p\x00", **arguments)


def test_backend_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_backend({BACKEND_ENV: PYTHON}) == PYTHON
    assert default_backend({}) == hashing.BACKEND
    with pytest.raises(ConfigError, match=BACKEND_ENV):
        default_backend({BACKEND_ENV: "fast"})
    monkeypatch.setenv(BACKEND_ENV, PYTHON)
    assert HashPool(2).backend == PYTHON  # the fallback can be forced
    monkeypatch.setattr(hashing, "NATIVE_UNAVAILABLE", "not compiled")
    with pytest.raises(ConfigError, match="gcc libssl-dev"):
        HashPool(backend=NATIVE)


def test_hash_workers_setting() -> None:
    assert default_workers({HASH_WORKERS_ENV: "3"}) == 3
    assert default_workers({}) >= 1
    for bad in ("0", "-1", "two"):
        with pytest.raises(ConfigError, match=HASH_WORKERS_ENV):
            default_workers({HASH_WORKERS_ENV: bad})


def test_worker_environment_has_no_airflow_settings() -> None:
    env = worker_environment({"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "airflow-db-not-allowed:///",
                              "AIRFLOW_HOME": "/opt/airflow", "_AIRFLOW_PROCESS_CONTEXT": "client",
                              "PATH": "/usr/bin", "CONTRACT_EXTRACTS_HOME": "/state"})
    assert not [k for k in env if "AIRFLOW" in k]
    assert env["PATH"] == "/usr/bin" and env["CONTRACT_EXTRACTS_HOME"] == "/state"
    assert env["PYTHONPATH"]


def _run_script(body: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``body`` as a script __main__ that, like Airflow's entry point in a task, must never be imported again."""
    script = tmp_path / "task_entry_point.py"
    script.write_text(textwrap.dedent("""
        import logging
        import sys
        if __name__ != "__main__":  # what a multiprocessing child does to its parent's __main__
            logging.basicConfig()
            logging.getLogger("airflow").error("the task's entry point was imported again")
            raise SystemExit(1)
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
    """) + textwrap.dedent(body), encoding="utf-8")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", BACKEND_ENV))}
    base["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                          env={**base, "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "airflow-db-not-allowed:///",
                               "AIRFLOW__CORE__SQL_ALCHEMY_CONN": "airflow-db-not-allowed:///", **env})


INSIDE_A_TASK = """
    import pyarrow as pa
    from masking.hashing import HashPool
    from masking.pseudonyms import pseudonymise_array
    values = pa.array([f"AB{i:06d}C" for i in range(5000)])
    with HashPool(2, min_parallel=64, backend=sys.argv[1] if len(sys.argv) > 1 else None) as pool:
        out = pseudonymise_array(values, key=b"k" * 32, entity="person", canonicaliser="nino", pool=pool)
        print(pool.backend, pool.started, pool.processes_started)
    print(out[4999].as_py())
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_hashing_inside_an_airflow_task_starts_cleanly(backend: str, tmp_path: Path) -> None:
    """Under the task supervisor's environment, with an entry point that must not be re-imported: no ERROR."""
    done = _run_script(INSIDE_A_TASK, tmp_path, **{BACKEND_ENV: backend})
    assert done.returncode == 0, done.stderr
    assert "ERROR" not in done.stderr and "Traceback" not in done.stderr and "WARNING" not in done.stderr
    chosen, started, processes = done.stdout.split()[:3]
    assert (chosen, started, processes) == (backend, "True", str(backend == PYTHON))
    assert done.stdout.split()[3] == expected_pseudonym(b"k" * 32, "person", "AB004999C")
    expected_line = "native OpenSSL" if backend == NATIVE else "pure Python fallback (cryptography's HMAC), 2 worker"
    assert f"INFO masking.hashing keyed hashing: {expected_line}" in done.stderr


def test_fallback_is_chosen_when_the_extension_does_not_import(tmp_path: Path) -> None:
    done = _run_script(textwrap.dedent("""
        sys.modules["masking._hmac_native"] = None  # as if it had not been compiled
        import masking.hashing as hashing
        print(hashing.BACKEND, hashing.NATIVE_UNAVAILABLE)
    """) + textwrap.dedent(INSIDE_A_TASK), tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "python the extension was not compiled at install time"
    assert lines[1] == "python True True"
    assert lines[2] == expected_pseudonym(b"k" * 32, "person", "AB004999C")
    assert "ERROR" not in done.stderr and "native unavailable: the extension was not compiled" in done.stderr


def test_worker_module_imports_no_airflow() -> None:
    done = subprocess.run([sys.executable, "-c", "import sys, masking.hash_worker; "
                           "print(sorted(m for m in sys.modules if m.split('.')[0] == 'airflow'))"],
                          capture_output=True, text=True, timeout=120, check=True,
                          env=worker_environment())
    assert done.stdout.strip() == "[]"
