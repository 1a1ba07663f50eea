"""Signals in pool worker processes (the evaluation harness's and training's): one home for how a
worker reacts to Ctrl-C and SIGTERM. Torch-free.

Ctrl-C: the terminal sends SIGINT to the whole process group; workers ignore it and the main
process alone stops the pool, so no worker prints a traceback.

SIGTERM (the pool's terminate(), or a stop sent to the whole process group, which the main
process turns into KeyboardInterrupt, tapfinger/cli/main.py) ends the worker silently, but never
while it holds its task queue's read lock or its result queue's write lock: multiprocessing does
not release them for a process that dies, and a half-read task or half-written result corrupts
the queue, so the pool's terminate() would wait forever. A thread waits for the signal, then for
that moment (at once, unless a read or write is under way), and ends the process. This reads
CPython's `multiprocessing.pool.worker` locals; where they differ, the default action is kept.
"""

from __future__ import annotations

import signal
import sys


def _pool_worker_locals() -> dict | None:
    """The locals of `multiprocessing.pool.worker` up the stack (its task and result queues)."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "worker" and frame.f_globals.get("__name__") == "multiprocessing.pool":
            return frame.f_locals
        frame = frame.f_back
    return None


def quiet_worker_signals() -> None:
    """Call first thing in a pool initializer."""
    import os

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the main process's KeyboardInterrupt
    caller = _pool_worker_locals() or {}
    locks = [getattr(getattr(caller.get(queue), name, None), "_semlock", None)
             for queue, name in (("inqueue", "_rlock"), ("outqueue", "_wlock"))]
    locks = [lock for lock in locks if hasattr(lock, "_count")]
    if not locks or not hasattr(signal, "pthread_sigmask"):
        return  # not in a pool worker, or no thread signal masks: the default action

    def end_between_queue_operations() -> None:
        signal.sigwait({signal.SIGTERM})
        while any(lock._count() for lock in locks):  # reading a task or writing a result
            time.sleep(0.002)
        os._exit(128 + signal.SIGTERM)

    import threading
    import time

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # this thread and all later ones
    threading.Thread(target=end_between_queue_operations, name="sigterm", daemon=True).start()
