"""The one thread that runs torch in a serving process.

CPU torch runs its kernels on libgomp (GNU OpenMP), which keeps a team of worker threads for *each*
thread that enters a parallel region and counts every worker it manages. Once that count exceeds the
cores the process may use, idle workers stop spinning between parallel regions (libgomp's
"throttled" spin: 100 iterations instead of about 3 ms), so every small matmul of a decode step pays a
sleep and a wake-up. A server that loads its model on the main thread and decodes on an inference
thread owns two teams: on 2 cores its decode ran at 0.73x the same decode in a process where one
thread ran torch (``benchmarks/generate.py``, 2026-12-06), and a matmul loop on the main thread ran
2x slower after a second thread had run torch once.

So a serving process keeps one team: loading, batched model calls, streamed decodes and their input
preparation all run on this one thread (:func:`call`, :func:`start`, :func:`executor`). Concurrency is
unchanged -- torch modules are not re-entrant, so model calls were one at a time already -- and
batching still merges concurrent requests into one call (``eyeops.serve.batching``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")
THREAD_NAME = "eyeops-compute"

_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None
_thread_ident: int | None = None


def executor() -> ThreadPoolExecutor:
    """The process's compute executor (one worker thread, started on first use)."""
    global _executor
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=THREAD_NAME, initializer=_mark)
        return _executor


def on_compute_thread() -> bool:
    return threading.get_ident() == _thread_ident


def call(fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """``fn(*args, **kwargs)`` on the compute thread, waiting for it (inline when already there)."""
    if on_compute_thread():
        return fn(*args, **kwargs)
    return executor().submit(fn, *args, **kwargs).result()


def start(fn: Callable[[], None]) -> Callable[[], None]:
    """Run ``fn`` on the compute thread without waiting; returns a ``join`` that waits for it.

    Called from the compute thread itself (someone consuming a stream there), ``fn`` gets a thread of
    its own instead: queued behind its own consumer it would never run.
    """
    if on_compute_thread():
        thread = threading.Thread(target=fn, name=f"{THREAD_NAME}-side", daemon=True)
        thread.start()
        return thread.join
    future: Future[None] = executor().submit(fn)
    return lambda: future.exception()  # errors are fn's to report; join only waits


def _mark() -> None:
    global _thread_ident
    _thread_ident = threading.get_ident()


def _reset_after_fork() -> None:  # a forked child has no compute thread, whatever its parent had
    global _executor, _thread_ident, _lock
    _executor, _thread_ident, _lock = None, None, threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)
