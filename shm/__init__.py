"""Shared memory between the broker's processes: positions, heartbeats, rings and doorbells.

Stdlib only; imports nothing from rmqd. The byte layout is in shm/layout.py (THE region map).

Who calls what:
    supervisor:  shm, eventfds = create_broker_shm(shm_path_for_store(store_dir), ring_sizes)
                 ... spawn children with pass_fds=eventfds.values() and the name->fd map ...
                 shm.close(close_eventfds=True); shm.unlink()
    child:       shm = open_broker_shm(path, eventfds)      # eventfds: name -> inherited fd
    rmqd status: attach_readonly(path).snapshot()

Rings (producer -> consumer): request front->writer, ack writer->front, park front->holder,
wake holder->front, arrival dispatcher->holder. Doorbells (ringer -> waiter): dispatch
writer->dispatcher, flush writer->flusher, flushed flusher->front. The eventfd map is keyed by
those names (one eventfd per ring and per doorbell).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Mapping

from shm.doorbell import Doorbell, NoDoorbell, fence
from shm.heartbeats import Heartbeats
from shm.layout import DOORBELLS, LAYOUT_VERSION, LINE_SIZE, POSITIONS, PROCESS_SLOTS, RINGS, Layout
from shm.positions import Positions
from shm.ring import Ring
from shm.segment import Segment, ShmError, ShmVersionMismatch

SHM_DIR = "/dev/shm"

__all__ = [
    "DOORBELLS", "LAYOUT_VERSION", "POSITIONS", "PROCESS_SLOTS", "RINGS",
    "BrokerShm", "Doorbell", "Heartbeats", "Layout", "Positions", "Ring", "Segment", "ShmError",
    "ShmVersionMismatch", "attach_readonly", "create_broker_shm", "fence", "open_broker_shm",
    "remove_segment_of", "shm_path_for_store",
]


def shm_path_for_store(store_dir: str) -> str:
    """/dev/shm/rmqd-<first 16 hex of sha1(absolute store dir)>: one segment per store."""
    digest = hashlib.sha1(os.fsencode(os.path.abspath(store_dir))).hexdigest()
    return f"{SHM_DIR}/rmqd-{digest[:16]}"


def remove_segment_of(store_dir: str) -> bool:
    """Unlink the segment of a store whose broker is gone (after kill -9 nothing else does).

    A graceful stop unlinks it; a killed tree leaves it for the next start of the same store to
    reuse. Callers that throw the store away (tests, benchmarks) call this once every process of
    the tree is dead, so /dev/shm does not fill with orphans. Returns whether a segment was there.
    """
    try:
        os.unlink(shm_path_for_store(store_dir))
    except FileNotFoundError:
        return False
    return True


class BrokerShm:
    """Everything in one broker segment, bundled. Build it with the functions below."""

    def __init__(self, segment: Segment, eventfds: Mapping[str, int]) -> None:
        self.segment = segment
        self.eventfds = dict(eventfds)
        self.positions = Positions(segment)
        self.heartbeats = Heartbeats(segment)
        self.rings = {name: Ring(segment, name, self.eventfds.get(name)) for name in RINGS}
        self.doorbells: dict[str, Doorbell | NoDoorbell] = {}
        for name in DOORBELLS:
            fd = self.eventfds.get(name)
            if fd is None:
                self.doorbells[name] = NoDoorbell(name)
            else:
                waiting = segment.view(segment.layout.doorbell_offset(name), LINE_SIZE, "q")
                self.doorbells[name] = Doorbell(fd, waiting)

    def snapshot(self) -> dict[str, object]:
        """Plain-data view of the whole segment for `rmqd status` (JSON-serialisable)."""
        header = self.segment.header
        return {
            "path": self.segment.path,
            "layout_version": header.layout_version,
            "creator_pid": header.creator_pid,
            "created_time_ns": header.created_time_ns,
            "total_size": header.total_size,
            "positions": self.positions.as_dict(),
            "heartbeats": self.heartbeats.as_dict(),
            "rings": {name: ring.stats() for name, ring in self.rings.items()},
            "doorbells": {name: {"waiting": self._doorbell_waiting(name)} for name in DOORBELLS},
            "snapshot_monotonic_ns": time.monotonic_ns(),
        }

    def _doorbell_waiting(self, name: str) -> int:
        offset = self.segment.layout.doorbell_offset(name)
        return int.from_bytes(self.segment.buf[offset:offset + 8], "little", signed=True)

    def close(self, *, close_eventfds: bool = False) -> None:
        """Unmap (and optionally close the eventfds this process holds). Idempotent."""
        self.rings.clear()
        self.doorbells.clear()
        self.segment.close()
        if close_eventfds:
            for fd in self.eventfds.values():
                with contextlib.suppress(OSError):
                    os.close(fd)
            self.eventfds.clear()

    def unlink(self) -> None:
        """Remove the segment file (supervisor, after every child has exited)."""
        self.segment.unlink()


def create_broker_shm(path: str, ring_sizes: Mapping[str, int]) -> tuple[BrokerShm, dict[str, int]]:
    """Supervisor: create the segment and one eventfd per ring and doorbell.

    `ring_sizes` maps ring names (layout.RINGS) to power-of-two byte capacities; missing names use
    layout.DEFAULT_RING_BYTES. A stale segment of a dead supervisor is replaced. The eventfds are
    non-blocking and close-on-exec; pass them to children with subprocess pass_fds.
    """
    segment = Segment.create(path, ring_sizes)
    eventfds: dict[str, int] = {}
    try:
        for name in (*RINGS, *DOORBELLS):
            eventfds[name] = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        return BrokerShm(segment, eventfds), eventfds
    except BaseException:
        for fd in eventfds.values():
            os.close(fd)
        segment.close()
        segment.unlink()
        raise


def open_broker_shm(path: str, eventfds: Mapping[str, int]) -> BrokerShm:
    """Child: attach to the supervisor's segment. Rings/doorbells without an fd here cannot wait/ring.

    Raises ShmError (missing/damaged, message names the path) or ShmVersionMismatch.
    """
    unknown = sorted(set(eventfds) - set(RINGS) - set(DOORBELLS))
    if unknown:
        raise ValueError(f"unknown eventfd name(s) {unknown}; known: {list(RINGS) + list(DOORBELLS)}")
    segment = Segment.attach(path)
    try:
        return BrokerShm(segment, eventfds)
    except BaseException:
        segment.close()
        raise


def attach_readonly(path: str) -> BrokerShm:
    """Read-only attach without eventfds (for `rmqd status`): positions, heartbeats, ring depths."""
    segment = Segment.attach(path, readonly=True)
    try:
        return BrokerShm(segment, {})
    except BaseException:
        segment.close()
        raise

