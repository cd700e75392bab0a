"""The push consumer's machinery: ProcessQueue and the pull thread's scheduler.

ProcessQueue (RocketMQ ProcessQueue) holds the messages of one queue that were pulled and not yet
consumed, and knows the offset to commit. PullScheduler is the pull thread: callables to run now
and timers, all run by one thread. The consume threads are a TaskPool (_tasks.py). Each class
says its own thread-safety. Used by push_consumer.py only.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from rmqd.message import MessageExt, MessageQueue

log = logging.getLogger("rmqd.client.push_consumer")


class ProcessQueue:
    """The messages of one queue pulled and not yet consumed (RocketMQ ProcessQueue). Thread-safe.

    Messages are kept in offset order (pulls of one queue return increasing offsets), so the
    smallest offset in flight is the first key.
    """

    def __init__(self, queue: MessageQueue, next_offset: int) -> None:
        self.queue = queue
        self.next_offset = next_offset  # next offset to pull; written by the pull thread only
        self.dropped = False  # set when the queue is given up: nothing of it is consumed or committed
        self._lock = threading.Lock()
        self._messages: OrderedDict[int, MessageExt] = OrderedDict()
        self._bytes = 0

    def put(self, messages: list[MessageExt], next_offset: int) -> None:
        """Cache a pull's messages and move the pull position past them."""
        with self._lock:
            out_of_order = bool(self._messages and messages
                                and messages[0].queue_offset < next(reversed(self._messages)))
            for message in messages:
                if message.queue_offset not in self._messages:
                    self._messages[message.queue_offset] = message
                    self._bytes += len(message.body)
            if out_of_order:  # the offset moved back (OFFSET_MOVED): restore the offset order
                self._messages = OrderedDict(sorted(self._messages.items()))
            self.next_offset = next_offset

    def remove(self, messages: list[MessageExt]) -> int:
        """Forget consumed messages; return the queue's offset to commit now."""
        with self._lock:
            cached = self._messages
            for message in messages:
                if cached.pop(message.queue_offset, None) is not None:
                    self._bytes -= len(message.body)
            return next(iter(cached)) if cached else self.next_offset

    def commit_offset(self) -> int:
        """The smallest offset in flight, or the next offset to pull when nothing is."""
        with self._lock:
            return self._commit_offset()

    def _commit_offset(self) -> int:
        return next(iter(self._messages)) if self._messages else self.next_offset

    def stats(self) -> tuple[int, int, int]:
        """(cached messages, cached body bytes, span between the oldest and newest offsets)."""
        with self._lock:
            if not self._messages:
                return 0, 0, 0
            span = next(reversed(self._messages)) - next(iter(self._messages))
            return len(self._messages), self._bytes, span


class PullScheduler:
    """The pull thread's work queue: callables to run now, and timers. Runs in one thread."""

    def __init__(self, name: str) -> None:
        self._events: queue.SimpleQueue[tuple[Callable[..., None], tuple] | None] = queue.SimpleQueue()
        self._timers: list[tuple[float, int, Callable[..., None], tuple]] = []
        self._timers_lock = threading.Lock()
        self._seq = itertools.count()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def call_soon(self, fn: Callable[..., None], *args: Any) -> None:
        """Run fn(*args) in the scheduler thread (callable from any thread)."""
        self._events.put((fn, args))

    def call_later(self, delay_s: float, fn: Callable[..., None], *args: Any) -> None:
        with self._timers_lock:
            heapq.heappush(self._timers, (time.monotonic() + delay_s, next(self._seq), fn, args))
        self._events.put((_noop, ()))  # wake the loop so it sees the new deadline

    def stop(self, timeout_s: float = 5.0) -> None:
        self._events.put(None)
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            try:
                event = self._events.get(timeout=self._wait_s())
            except queue.Empty:
                event = (_noop, ())
            if event is None:
                return
            self._call(*event)
            for fn, args in self._due_timers():
                self._call(fn, args)

    def _wait_s(self) -> float:
        with self._timers_lock:
            if not self._timers:
                return 1.0
            return max(0.0, min(1.0, self._timers[0][0] - time.monotonic()))

    def _due_timers(self) -> list[tuple[Callable[..., None], tuple]]:
        now, due = time.monotonic(), []
        with self._timers_lock:
            while self._timers and self._timers[0][0] <= now:
                _, _, fn, args = heapq.heappop(self._timers)
                due.append((fn, args))
        return due

    @staticmethod
    def _call(fn: Callable[..., None], args: tuple) -> None:
        try:
            fn(*args)
        except Exception:  # noqa: BLE001 - one bad result must not stop every queue's pulling
            log.exception("pull service task %s failed", getattr(fn, "__name__", fn))


def _noop() -> None:
    """Wakes the scheduler loop."""
