"""Doorbell: wake a blocked consumer process through an eventfd, only when it is actually waiting.

One producer process rings, one consumer process waits. The consumer owns a `waiting` flag in shm
(layout.py); the producer writes the eventfd only when the flag is set, so a busy consumer costs the
producer no syscall. Measured (PERFORMANCE_NOTES): 25 us p50 / 107 us p99 wake-up, 0.016 core idle.

The protocol (Dekker style; both sides need a full fence between their store and their load):
    producer:  publish data (store tail) ; fence() ; if waiting: eventfd_write(1)
    consumer:  waiting = 1 ; fence() ; if ready(): skip the wait ; poll(fd, timeout) ; waiting = 0
Without the fences, x86 may let each side's load pass its own earlier store (store buffer): the
consumer reads the old tail and sleeps while the producer reads the old waiting = 0 and does not ring.
With them, at least one side sees the other's store. Every wait still has a timeout, so a lost
wake-up (e.g. a producer killed between its store and its ring) costs latency, never a hang.

Using the eventfd in another event loop (the front's zmq.Poller): register fileno(), then
    doorbell.arm(); if not ready(): poller.poll(timeout_ms); doorbell.disarm()

Thread-safety: one Doorbell object per process side; not for concurrent use by several threads.
"""
from __future__ import annotations

import os
import select
import threading
from collections.abc import Callable

from shm.segment import ShmError

_FENCE_LOCK = threading.Lock()


def fence() -> None:
    """Full memory barrier between this process's earlier stores and later loads.

    Python has no atomics. CPython's Lock acquire/release is a sem_t / futex operation built on
    LOCK-prefixed read-modify-write instructions, and every LOCK-prefixed instruction is a full
    barrier on x86-64 (it drains the store buffer). Uncontended, this costs ~0.1 us.
    """
    _FENCE_LOCK.acquire()
    _FENCE_LOCK.release()


class Doorbell:
    """Producer side: ring(). Consumer side: wait(), or arm()/disarm() around a foreign poll."""

    def __init__(self, event_fd: int, waiting: memoryview) -> None:
        """`waiting` is the consumer's waiting line cast to 'q' (flag in word 0)."""
        self._fd = event_fd
        self._waiting = waiting
        os.set_blocking(event_fd, False)
        self._poller = select.poll()
        self._poller.register(event_fd, select.POLLIN)

    def fileno(self) -> int:
        return self._fd

    @staticmethod
    def fence() -> None:
        fence()

    def is_waiting(self) -> bool:
        """True while the consumer is (about to be) blocked (for observers and tests)."""
        return bool(self._waiting[0])

    def ring(self) -> None:
        """Producer: call after publishing; writes the eventfd only if the consumer is waiting."""
        _FENCE_LOCK.acquire()
        _FENCE_LOCK.release()
        if self._waiting[0]:
            os.eventfd_write(self._fd, 1)

    def arm(self) -> None:
        """Consumer: announce a wait. Re-check readiness AFTER this, before blocking."""
        self._waiting[0] = 1
        _FENCE_LOCK.acquire()
        _FENCE_LOCK.release()

    def disarm(self, drain: bool = True) -> None:
        """Consumer: the wait is over (woken or timed out); clear the flag and swallow pending rings.

        `drain=False` skips the read when the caller's poll showed this fd quiet: a ring that lands
        in between only costs one spurious wake-up later, never a lost one.
        """
        self._waiting[0] = 0
        if drain:
            self.drain()

    def drain(self) -> None:
        """Reset the eventfd counter to zero without blocking."""
        try:
            os.eventfd_read(self._fd)
        except BlockingIOError:
            pass

    def wait(self, ready: Callable[[], bool], timeout_s: float) -> bool:
        """Consumer: block until `ready()` or `timeout_s` passes. Returns ready() at the end."""
        if ready():
            return True
        self.arm()
        try:
            if ready():
                return True
            self._poller.poll(max(0.0, timeout_s * 1000.0))
        finally:
            self.disarm()
        return ready()


class NoDoorbell:
    """Stand-in when this process was given no eventfd for a ring/doorbell: any use says so."""

    def __init__(self, name: str) -> None:
        self._name = name

    def _missing(self, *_args: object, **_kwargs: object) -> bool:
        raise ShmError(f"no eventfd for {self._name!r} in this process: pass it in eventfds "
                           f"(or the segment was attached read-only)")

    ring = arm = disarm = drain = wait = fileno = is_waiting = _missing
