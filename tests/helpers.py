"""Shared test helpers: waiting on conditions with a deadline, free ports, process cleanup.

Tests never sleep to synchronise: they wait for a condition with `wait_until`, which polls the
predicate with a short back-off and fails with the predicate's description at the deadline.
"""
from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout_s: float = 10.0, what: str = "") -> T:
    """Poll `predicate` until it returns a truthy value; return that value.

    Raises AssertionError naming `what` (or the predicate) when `timeout_s` passes first.
    """
    deadline = time.monotonic() + timeout_s
    delay_s = 0.001
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what or predicate!r}")
        time.sleep(delay_s)
        delay_s = min(delay_s * 2, 0.05)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child still answers kill(0); reap it if it is ours
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def kill_pids(pids: list[int], sig: int = signal.SIGKILL) -> None:
    """Send `sig` to every pid that still exists (tests stop what they started, by PID)."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
