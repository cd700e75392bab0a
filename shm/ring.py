"""Ring: single-producer single-consumer byte ring of variable-length entries between two processes.

Format (control block + data area): see layout.py. Positions `tail` and `head` are monotonic u64 byte
positions (slot = position & (capacity - 1)); one owner each, stored with one aligned 8-byte store.

Producer (one process): reserve(size) -> writable view | None (full); fill it; commit(kind);
    ... more entries ...; publish() once per burst (one tail store, doorbell only if the consumer
    waits). put(payload, kind) does all four for one entry. Unpublished entries die with the process.
Consumer (one process): wait(timeout_s); entries() -> every published entry as (kind, view) with
    zero-copy views into the ring; process them; release() once. Views are valid until release().
    A consumer restarted without release() sees the same entries again (at-least-once hand-off).

Entries are contiguous: when the space left before the end of the data area is too small, the
producer writes a wrap marker and starts at slot 0. So one entry needs at most capacity / 2 bytes
to be guaranteed to fit: `max_payload` = capacity // 2 - 8; bigger ones raise ValueError.

Ordering: the producer fills an entry before it stores tail; the consumer loads tail before it reads
entries and reads them before it stores head. x86-64 (TSO) keeps stores in order and loads in order,
and each store/load is a separate C call CPython cannot reorder, so no fence is needed on the data
path; the only store->load pair that needs one (doorbell) is fenced in doorbell.py.
Not thread-safe: one thread per side.
"""
from __future__ import annotations

from shm.doorbell import Doorbell, NoDoorbell
from shm.layout import (
    LINE_SIZE,
    RING_CAPACITY_OFFSET,
    RING_CONTROL_SIZE,
    RING_ENTRY_HEADER_SIZE,
    RING_HEAD_OFFSET,
    RING_TAIL_OFFSET,
    RING_WRAP_MARKER,
)
from shm.segment import Segment, ShmError

_TAIL = RING_TAIL_OFFSET // 8
_HEAD = RING_HEAD_OFFSET // 8
_CAPACITY = RING_CAPACITY_OFFSET // 8
_PAD = RING_ENTRY_HEADER_SIZE + 7  # (size + _PAD) & ~7 = header + payload rounded up to 8
assert RING_ENTRY_HEADER_SIZE == 8 and RING_WRAP_MARKER == 0xFFFFFFFF  # inlined in entries()


class Ring:
    """One ring of the segment. A process uses either the producer or the consumer methods."""

    __slots__ = ("name", "capacity", "max_payload", "doorbell", "_mask", "_control", "_data", "_words",
                 "_waiting", "_ready", "_tail", "_published", "_head_seen", "_pending", "_pending_size",
                 "_pending_need", "_read_pos")

    def __init__(self, segment: Segment, name: str, event_fd: int | None) -> None:
        region = segment.layout.rings[name]
        self.name = name
        self.capacity = region.capacity
        self.max_payload = region.capacity // 2 - RING_ENTRY_HEADER_SIZE
        self._mask = region.capacity - 1
        self._control = segment.view(region.control_offset, RING_CONTROL_SIZE, "Q")
        if self._control[_CAPACITY] != region.capacity:
            raise ShmError(f"shm segment {segment.path}: ring {name!r} control block says capacity "
                           f"{self._control[_CAPACITY]}, header says {region.capacity}")
        self._data = segment.view(region.data_offset, region.capacity)
        self._words = segment.view(region.data_offset, region.capacity, "Q")
        waiting = segment.view(region.waiting_offset, LINE_SIZE, "q")
        self._waiting = waiting
        self.doorbell = Doorbell(event_fd, waiting) if event_fd is not None else NoDoorbell(name)
        self._ready = self.ready
        # producer state: local tail (ahead of the published one while a burst is being built)
        self._tail = self._published = self._control[_TAIL]
        self._head_seen = self._control[_HEAD]
        self._pending = -1  # slot of the reserved entry's header, -1 when nothing is reserved
        self._pending_size = self._pending_need = 0
        # consumer state: position after the last entry handed out by entries()
        self._read_pos = self._control[_HEAD]

    # ---- producer -------------------------------------------------------------------------------

    def reserve(self, size: int) -> memoryview | None:
        """Room for one entry of exactly `size` payload bytes, or None if the ring is full right now."""
        if size > self.max_payload:
            raise ValueError(f"ring {self.name!r}: entry of {size} bytes > max_payload {self.max_payload}")
        need = (size + _PAD) & ~7
        tail = self._tail
        slot = tail & self._mask
        to_end = self.capacity - slot
        skip = to_end if need > to_end else 0
        if tail + skip + need - self._head_seen > self.capacity:
            self._head_seen = self._control[_HEAD]
            if tail + skip + need - self._head_seen > self.capacity:
                return None
        if skip:
            self._words[slot >> 3] = RING_WRAP_MARKER
            self._tail = tail + skip
            slot = 0
        self._pending = slot
        self._pending_size = size
        self._pending_need = need
        return self._data[slot + RING_ENTRY_HEADER_SIZE:slot + RING_ENTRY_HEADER_SIZE + size]

    def commit(self, kind: int = 0) -> None:
        """Seal the reserved entry with `kind` (0 .. 2**32-1); it goes out with the next publish()."""
        slot = self._pending
        if slot < 0:
            raise ShmError(f"ring {self.name!r}: commit() without a successful reserve()")
        self._words[slot >> 3] = self._pending_size | (kind << 32)
        self._tail += self._pending_need
        self._pending = -1

    def publish(self) -> None:
        """Make every committed entry visible (one tail store) and ring the doorbell if needed."""
        tail = self._tail
        if tail != self._published:
            self._control[_TAIL] = tail
            self._published = tail
            self.doorbell.ring()

    def put(self, payload: bytes | memoryview, kind: int = 0) -> bool:
        """reserve + copy + commit + publish one entry. False if the ring is full."""
        view = self.reserve(len(payload))
        if view is None:
            return False
        view[:] = payload
        self.commit(kind)
        self.publish()
        return True

    # ---- consumer -------------------------------------------------------------------------------

    def entries(self) -> list[tuple[int, memoryview]]:
        """Every published entry not yet handed out, as (kind, payload view). Views live until release()."""
        tail = self._control[_TAIL]
        pos = self._read_pos
        if pos == tail:
            return []
        out: list[tuple[int, memoryview]] = []
        append, words, data, mask = out.append, self._words, self._data, self._mask
        while pos < tail:  # hot loop: constants inlined (8 = entry header, 15 = header + 7 padding)
            slot = pos & mask
            word = words[slot >> 3]
            size = word & 0xFFFFFFFF
            if size == 0xFFFFFFFF:  # RING_WRAP_MARKER
                pos += mask + 1 - slot
                continue
            append((word >> 32, data[slot + 8:slot + 8 + size]))
            pos += (size + 15) & -8
        if pos != tail:
            raise ShmError(f"ring {self.name!r}: entries overran the tail ({pos} > {tail}): corrupt ring")
        self._read_pos = pos
        return out

    def release(self) -> None:
        """Give back the space of every entry returned so far (one head store)."""
        self._control[_HEAD] = self._read_pos

    def ready(self) -> bool:
        """Consumer: True if entries() would return something."""
        return self._control[_TAIL] != self._read_pos

    def wait(self, timeout_s: float) -> bool:
        """Consumer: block until an entry is published or `timeout_s` passes. True if entries are ready."""
        return self.doorbell.wait(self._ready, timeout_s)

    def fileno(self) -> int:
        """The eventfd to register in a foreign poller (see doorbell.py for arm()/disarm())."""
        return self.doorbell.fileno()

    # ---- either side / observers ------------------------------------------------------------------

    def depth_bytes(self) -> int:
        """Published bytes not yet released (a snapshot; includes padding and wrap waste)."""
        return self._control[_TAIL] - self._control[_HEAD]

    def stats(self) -> dict[str, int]:
        return {"capacity": self.capacity, "tail": self._control[_TAIL], "head": self._control[_HEAD],
                "depth_bytes": self.depth_bytes(), "waiting": self._waiting[0]}
