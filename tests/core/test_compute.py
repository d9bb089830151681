"""The serving process's one torch thread (eyeops.compute): calls land there, nested calls inline."""

from __future__ import annotations

import threading

from eyeops import compute


def test_calls_run_on_one_thread_and_nest_without_deadlock():
    here = threading.get_ident()
    there = compute.call(threading.get_ident)
    assert there != here
    assert compute.call(threading.get_ident) == there  # always the same thread
    assert compute.call(compute.call, threading.get_ident) == there  # nested: run inline
    assert compute.call(compute.on_compute_thread) and not compute.on_compute_thread()


def test_start_runs_there_or_beside_its_consumer():
    seen: list[int] = []
    compute.start(lambda: seen.append(threading.get_ident()))()
    assert seen == [compute.call(threading.get_ident)]

    def consume_on_compute() -> int:
        # a stream consumed on the compute thread: its decode cannot queue behind its own consumer
        done = threading.Event()
        join = compute.start(lambda: (seen.append(threading.get_ident()), done.set()))
        assert done.wait(10)
        join()
        return threading.get_ident()

    compute_thread = compute.call(consume_on_compute)
    assert seen[-1] not in (compute_thread, threading.get_ident())
