"""A worker process of the pure-Python keyed-hashing fallback: ``python -m masking.hash_worker``.

``masking.hashing.HashPool`` starts these (only when the native extension is not installed) instead of
multiprocessing's spawned children, which re-import the parent's ``__main__`` - Airflow's entry point inside a
task, and that fails on the task supervisor's database URL. This module imports ``masking.hashing`` and its
libraries and nothing else: no Airflow, no settings, no database.

Protocol, over the process's own stdin and stdout: each request is a length-prefixed pickle of
``(Arrow IPC slice, canonicaliser, key, prefix, width, hexed)``; each answer is a length-prefixed pickle of
``(True, (packed valid bits, digests))`` or ``(False, the exception)``. The worker ends when its input closes.
"""

from __future__ import annotations

import os
import pickle
import sys
from typing import IO

from core.errors import value_free
from masking.hashing import keyed_task, read_frame, write_frame


def serve(requests: IO[bytes], answers: IO[bytes]) -> None:
    """Answer requests until the pool closes the pipe."""
    while (request := read_frame(requests)) is not None:
        try:
            digests = keyed_task(*pickle.loads(request))  # noqa: S301 - from the parent, over a private pipe
            answer = pickle.dumps((True, digests), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # raised again in the parent (messages carry counts, never values)
            try:
                answer = pickle.dumps((False, exc), protocol=pickle.HIGHEST_PROTOCOL)
            except Exception:  # an exception that does not pickle: its type name only
                answer = pickle.dumps((False, RuntimeError(f"hash worker failed: {value_free(exc)}")))
        write_frame(answers, answer)


def main() -> None:
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # anything a library prints goes to stderr, not the answers
    with answers:
        serve(sys.stdin.buffer, answers)


if __name__ == "__main__":
    main()
