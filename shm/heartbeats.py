"""Per-process heartbeat slots: pid, last beat (CLOCK_MONOTONIC ns), state and restart count.

Slot layout and owners: see layout.py. The named process writes its own pid, beat and state; the
supervisor writes `restarts` and may reset a slot while its process is dead. The supervisor reads
every slot to find hung children (gunicorn WorkerTmp, done in shm instead of a file's mtime).
time.monotonic_ns() is one system-wide clock per boot on Linux, so ages compare across processes.
Thread-safety: readers anywhere; one writer per field.
"""
from __future__ import annotations

import os
import time

from shm.layout import (
    HEARTBEAT_LAST_BEAT_WORD,
    HEARTBEAT_PID_WORD,
    HEARTBEAT_RESTARTS_WORD,
    HEARTBEAT_SLOTS,
    HEARTBEAT_STATE_WORD,
    HEARTBEATS_OFFSET,
    LINE_SIZE,
    PROCESS_SLOTS,
)
from shm.segment import Segment

STATE_EMPTY = 0      # slot never used (or reset by the supervisor)
STATE_STARTING = 1   # process registered, still recovering / setting up
STATE_RUNNING = 2    # serving
STATE_STOPPING = 3   # graceful shutdown in progress
STATE_STOPPED = 4    # exited cleanly
STATE_FAILED = 5     # gave up with an error
STATE_NAMES = {STATE_EMPTY: "empty", STATE_STARTING: "starting", STATE_RUNNING: "running",
               STATE_STOPPING: "stopping", STATE_STOPPED: "stopped", STATE_FAILED: "failed"}

_WORDS_PER_LINE = LINE_SIZE // 8


class Heartbeats:
    """Access to the heartbeat slots by process name (layout.PROCESS_SLOTS)."""

    def __init__(self, segment: Segment) -> None:
        self._words = segment.view(HEARTBEATS_OFFSET, HEARTBEAT_SLOTS * LINE_SIZE, "q")
        self._base = {name: i * _WORDS_PER_LINE for i, name in enumerate(PROCESS_SLOTS)}

    @property
    def names(self) -> tuple[str, ...]:
        return PROCESS_SLOTS

    # ---- written by the named process -----------------------------------------------------------

    def register(self, name: str, pid: int | None = None) -> None:
        """At process start: record the pid, state STARTING and a first beat."""
        base = self._base[name]
        self._words[base + HEARTBEAT_PID_WORD] = os.getpid() if pid is None else pid
        self._words[base + HEARTBEAT_STATE_WORD] = STATE_STARTING
        self._words[base + HEARTBEAT_LAST_BEAT_WORD] = time.monotonic_ns()

    def beat(self, name: str) -> None:
        self._words[self._base[name] + HEARTBEAT_LAST_BEAT_WORD] = time.monotonic_ns()

    def set_state(self, name: str, state: int) -> None:
        self._words[self._base[name] + HEARTBEAT_STATE_WORD] = state

    # ---- written by the supervisor --------------------------------------------------------------

    def set_restarts(self, name: str, restarts: int) -> None:
        self._words[self._base[name] + HEARTBEAT_RESTARTS_WORD] = restarts

    def reset(self, name: str) -> None:
        """Clear pid, beat and state of a dead process (restarts is kept)."""
        base = self._base[name]
        for word in (HEARTBEAT_PID_WORD, HEARTBEAT_LAST_BEAT_WORD, HEARTBEAT_STATE_WORD):
            self._words[base + word] = 0

    # ---- readers --------------------------------------------------------------------------------

    def pid(self, name: str) -> int:
        return self._words[self._base[name] + HEARTBEAT_PID_WORD]

    def last_beat_ns(self, name: str) -> int:
        return self._words[self._base[name] + HEARTBEAT_LAST_BEAT_WORD]

    def state(self, name: str) -> int:
        return self._words[self._base[name] + HEARTBEAT_STATE_WORD]

    def restarts(self, name: str) -> int:
        return self._words[self._base[name] + HEARTBEAT_RESTARTS_WORD]

    def age_ms(self, name: str, now_ns: int | None = None) -> float | None:
        """Milliseconds since the last beat, or None if the process never beat."""
        last = self.last_beat_ns(name)
        if last == 0:
            return None
        return ((time.monotonic_ns() if now_ns is None else now_ns) - last) / 1e6

    def as_dict(self) -> dict[str, dict[str, object]]:
        now_ns = time.monotonic_ns()
        return {name: {"pid": self.pid(name), "state": state_name(self.state(name)),
                       "last_beat_ns": self.last_beat_ns(name), "age_ms": self.age_ms(name, now_ns),
                       "restarts": self.restarts(name)}
                for name in PROCESS_SLOTS}


def state_name(state: int) -> str:
    """Readable name of a heartbeat state (the number itself if unknown)."""
    return STATE_NAMES.get(state, str(state))
