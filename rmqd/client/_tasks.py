"""TaskPool: a fixed set of threads running (fn, args) tasks from one queue.

The push consumer's consume threads and the producer's callback thread. Lighter than a
ThreadPoolExecutor, which costs ~13 µs a task (its own Future with a Condition, a work item, an
idle-semaphore check): here a task is one tuple on a C SimpleQueue and `busy` is one flag per
worker, written without a lock, which matters at one task per message.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("rmqd.client")


class TaskPool:
    """`threads` workers taking tasks in submission order. Thread-safe.

    `shutdown()` either drops the tasks not started (the consumer: they are re-pulled later) or,
    with `finish_queued=True`, lets the workers run them first (the producer: every async send's
    future must complete); `join()` waits for the workers to exit and `await_idle()` for the running
    tasks. A consume task must re-check, after it started, whether it is still wanted: the worker
    sets its busy flag before calling it, so a caller that first withdraws the work and then sees
    every flag down knows that no task will act on it any more.
    """

    IDLE_POLL_S = 0.005

    def __init__(self, threads: int, name: str, what: str = "task") -> None:
        self._tasks: queue.SimpleQueue[tuple[Callable[..., None], tuple] | None] = queue.SimpleQueue()
        self._closed = False  # no new tasks
        self._dropping = False  # workers drop what is still queued
        self._what = what  # names a failed task in the log
        self.busy = [False] * threads
        self._threads = [threading.Thread(target=self._work, args=(i,), name=f"{name}_{i}", daemon=True)
                         for i in range(threads)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[..., None], *args: Any) -> bool:
        """Queue a task; False (and not queued) once shutdown() was called."""
        if self._closed:
            return False
        self._tasks.put((fn, args))
        return True

    def shutdown(self, finish_queued: bool = False) -> None:
        """Stop taking tasks; those still queued are dropped unless `finish_queued`, those running
        finish on their own."""
        self._closed = True
        self._dropping = not finish_queued
        for _ in self._threads:
            self._tasks.put(None)

    def join(self, timeout_s: float | None = None) -> None:
        """Wait for the workers to exit (after shutdown); a worker never waits for itself."""
        me = threading.current_thread()
        for thread in self._threads:
            if thread is not me and thread.is_alive():
                thread.join(timeout_s)

    def await_idle(self, timeout_s: float) -> int:
        """Wait until no task runs (at most `timeout_s`); returns how many still run."""
        deadline = time.monotonic() + timeout_s
        while any(self.busy) and time.monotonic() < deadline:
            time.sleep(self.IDLE_POLL_S)  # shutdown only: a poll keeps the per-task path lock-free
        return sum(self.busy)

    def _work(self, index: int) -> None:
        busy = self.busy
        while True:
            task = self._tasks.get()
            if task is None or self._dropping:
                return
            fn, args = task
            busy[index] = True
            try:
                fn(*args)
            except Exception:  # noqa: BLE001 - a worker must survive any task
                log.exception("%s failed", self._what)
            finally:
                busy[index] = False
