"""THE shared-memory region map: every byte of the broker's shm segment, with its single owner.

Owns the segment format. No other module computes an offset into the segment: they ask `Layout`.
Pure (no I/O); safe to use from any process or thread.

Path: /dev/shm/rmqd-<16 hex of sha1(absolute store dir)>, a plain file mmap'd MAP_SHARED. Created
(and unlinked) by the supervisor; every child attaches. Sizes are fixed at create time.

Whole segment (offsets in bytes; every field sits on its own 64-byte line unless shown otherwise):

  offset   size            region                 owner (the ONLY process that stores into it)
  0        64              segment header         supervisor, once, before any child starts
  64       64              ring capacity table    supervisor, once
  128      32 x 64 = 2048  positions block        one owner per line (below)
  2176     16 x 64 = 1024  heartbeat slots        the named process (restarts: supervisor)
  3200      8 x 64 =  512  doorbell waiting flags the doorbell's consumer
  3712      384            zero padding           -
  4096     ...             rings, in RINGS order  producer: tail, consumer: head + waiting
  total    rounded up to a 4096-byte page; recorded in the header.

Segment header (line 0, little-endian, 40 bytes used of 64):
  0        8          12          16            24            32                 40
  +--------+----------+-----------+-------------+-------------+------------------+---------+
  | magic  | layout   | ring      | total size  | creator pid | created time     | zero    |
  | u64    | version  | count u32 | u64 bytes   | i64         | i64 ns (wall     |         |
  |        | u32      |           |             |             | clock, time_ns)  |         |
  +--------+----------+-----------+-------------+-------------+------------------+---------+
  magic = int.from_bytes(b"RMQDSHM\\x01", "little") (a hex dump shows "RMQDSHM\\x01").
Ring capacity table (line 1): u64 x 8, little-endian, capacity in bytes of ring i of RINGS (power of
  two, >= 64); 0 = absent. Attach rebuilds the whole Layout from this table, so create and attach
  compute the same offsets.

Positions block (one native-endian i64 per line at byte 0 of the line; line = POSITIONS index):
  line  name                 owner       meaning
  0     write_pos            writer      phy_offset one past the last record appended
  1     flush_pos            flusher     phy_offset up to which the CommitLog is fdatasync'ed
  2     dispatch_pos         dispatcher  phy_offset up to which ConsumeQueue/index units are written
  3     cq_flush_pos         dispatcher  phy_offset up to which ConsumeQueue files are flushed
  4     min_phy_offset       cleaner     first phy_offset still on disk (older files deleted)
  5     disk_used_ppm        cleaner     store disk usage, parts per million
  6     put_messages_total   writer      messages appended since the writer started (counter)
  7     put_bytes_total      writer      record bytes appended since the writer started
  8     write_groups_total   writer      drained groups appended (one publish of write_pos each)
  9     flush_total          flusher     fdatasync calls done
  10    pull_messages_total  front       messages returned to pulls
  11    writer_flags         writer      bit set, see flags.py (WRITE_ERROR, ...)
  12    cleaner_flags        cleaner     bit set, see flags.py (NOT_WRITABLE_DISK_FULL, ...)
  13    clean_requested      front       count of `mqadmin deleteExpiredCommitLog` requests; the
                                         cleaner runs a manual pass each time it changes
  14    write_retry_seq      cleaner     bumped when the disk has room again after the writer set
                                         WRITE_ERROR: the writer clears the flag and tries again
  15    files_deleted_seq    cleaner     bumped after each pass that deleted store files: every
                                         process drops its mappings of deleted files (base.py)
  16    disk_limits          cleaner     the disk thresholds in percent, packed for remarks:
                                         warning | forcibly << 8 | max_used << 16 (flags.py)
  17    send_rt_hist         front       EIGHT i64 counters in words 0-7 of this one line (one
                                         owner): sends answered within rmqd.ops.metrics
                                         SEND_RT_BUCKETS_MS (1, 2, 5, 10, 50, 100, 500 ms, +Inf)
  18    send_rt_sum_us       front       sum of those sends' response times, microseconds
  19    flush_time_us_total  flusher     time spent in CommitLog flushes, microseconds
  20    rates                metrics     EIGHT i64 words of this one line (one owner), sampled once
                                         a second (rmqd.ops.metrics RATE_WORDS): put TPS and get TPS
                                         over 10 s / 1 min / 10 min (x1000), flush latency over 10 s
                                         (us), sample time (ms since the epoch)
  21-31 reserved             -           zero; future processes (scheduler, transaction checker,
                                         HA) append names to POSITIONS without a version change

Heartbeat slot (one line per process, slot = index in PROCESS_SLOTS; 16 slots, 7 spare):
  0          8               16        24          32     64
  +----------+---------------+---------+-----------+------+
  | pid i64  | last beat i64 | state   | restarts  | zero |
  |          | monotonic ns  | i64     | i64       |      |
  +----------+---------------+---------+-----------+------+
  pid, last beat, state: the named process (the supervisor may reset the slot while that process is
  dead). restarts: supervisor. time.monotonic_ns() is CLOCK_MONOTONIC, one clock per boot on Linux,
  so beats are comparable across processes.

Doorbell waiting line (one per DOORBELLS entry): i64 waiting flag at byte 0, owner = the consumer.
  The eventfd itself lives outside the segment (created by the supervisor, inherited by children).

Ring (one per RINGS entry, control block then data area, both 64-byte aligned):
  +0    tail      u64  producer   monotonic byte position one past the last published entry
  +64   head      u64  consumer   monotonic byte position one past the last released entry
  +128  waiting   u64  consumer   1 while the consumer is (about to be) blocked on its eventfd
  +192  capacity  u64  supervisor constant, equal to the table entry (checked on attach)
  +256  data      capacity bytes; byte position p lives at data[p & (capacity - 1)]
  Entry in the data area (8-byte aligned, never split by the end of the data area):
    +0 length u32, +4 kind u32 (one native u64 word: length | kind << 32), +8 payload, zero padding
    to a multiple of 8. length = 0xFFFFFFFF is a wrap marker: skip to the next multiple of capacity.

What a reader may observe: every i64/u64 above is stored with one aligned 8-byte store through
`memoryview.cast` (never '>Q', which CPython writes byte by byte and tears), so a reader sees a
stale value, never a torn one. Positions and ring tail/head only grow (monotonic) while their
owner lives; a restarted owner republishes them from the files. Flags may go up and down.
"""
from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass

SEGMENT_MAGIC = int.from_bytes(b"RMQDSHM\x01", "little")
LAYOUT_VERSION = 1
LINE_SIZE = 64
PAGE_SIZE = 4096

SEGMENT_HEADER = struct.Struct("<QIIQqq")  # magic, layout version, ring count, total size, pid, time ns
SEGMENT_HEADER_SIZE = LINE_SIZE
RING_TABLE = struct.Struct("<8Q")  # capacity of each ring, RINGS order; 0 = absent
RING_TABLE_OFFSET = 64
RING_TABLE_SLOTS = 8

POSITIONS: tuple[str, ...] = (
    "write_pos", "flush_pos", "dispatch_pos", "cq_flush_pos", "min_phy_offset", "disk_used_ppm",
    "put_messages_total", "put_bytes_total", "write_groups_total", "flush_total",
    "pull_messages_total", "writer_flags", "cleaner_flags", "clean_requested", "write_retry_seq",
    "files_deleted_seq", "disk_limits", "send_rt_hist", "send_rt_sum_us", "flush_time_us_total",
    "rates",
)
POSITION_OWNERS: dict[str, str] = {
    "write_pos": "writer", "flush_pos": "flusher", "dispatch_pos": "dispatcher",
    "cq_flush_pos": "dispatcher", "min_phy_offset": "cleaner", "disk_used_ppm": "cleaner",
    "put_messages_total": "writer", "put_bytes_total": "writer", "write_groups_total": "writer",
    "flush_total": "flusher", "pull_messages_total": "front", "writer_flags": "writer",
    "cleaner_flags": "cleaner", "clean_requested": "front", "write_retry_seq": "cleaner",
    "files_deleted_seq": "cleaner", "disk_limits": "cleaner", "send_rt_hist": "front",
    "send_rt_sum_us": "front", "flush_time_us_total": "flusher", "rates": "metrics",
}
POSITION_LINES = 32  # 21 used + 11 reserved for future processes
POSITIONS_OFFSET = 128

PROCESS_SLOTS: tuple[str, ...] = (
    "supervisor", "namesrv", "writer", "flusher", "dispatcher", "cleaner", "holder", "front", "metrics",
    "scheduler",
)
HEARTBEAT_SLOTS = 16  # PROCESS_SLOTS + 7 spares for future processes
HEARTBEATS_OFFSET = POSITIONS_OFFSET + POSITION_LINES * LINE_SIZE  # 2176
HEARTBEAT_PID_WORD = 0
HEARTBEAT_LAST_BEAT_WORD = 1
HEARTBEAT_STATE_WORD = 2
HEARTBEAT_RESTARTS_WORD = 3

# ring name -> (producer process, consumer process)
RING_ENDS: dict[str, tuple[str, str]] = {
    "request": ("front", "writer"),
    "ack": ("writer", "front"),
    "park": ("front", "holder"),
    "wake": ("holder", "front"),
    "arrival": ("dispatcher", "holder"),
}
RINGS: tuple[str, ...] = tuple(RING_ENDS)
DEFAULT_RING_BYTES: dict[str, int] = {
    "request": 64 << 20, "ack": 4 << 20, "park": 1 << 20, "wake": 1 << 20, "arrival": 1 << 20,
}
MIN_RING_BYTES = 64

# doorbell name -> (ringing process, waiting process)
DOORBELL_ENDS: dict[str, tuple[str, str]] = {
    "dispatch": ("writer", "dispatcher"),
    "flush": ("writer", "flusher"),
    "flushed": ("flusher", "front"),
}
DOORBELLS: tuple[str, ...] = tuple(DOORBELL_ENDS)
DOORBELL_LINES = 8  # 3 used + 5 spare
DOORBELLS_OFFSET = HEARTBEATS_OFFSET + HEARTBEAT_SLOTS * LINE_SIZE  # 3200
RINGS_OFFSET = PAGE_SIZE

RING_TAIL_OFFSET = 0
RING_HEAD_OFFSET = 64
RING_WAITING_OFFSET = 128
RING_CAPACITY_OFFSET = 192
RING_CONTROL_SIZE = 256
RING_ENTRY_HEADER_SIZE = 8
RING_WRAP_MARKER = 0xFFFFFFFF

assert DOORBELLS_OFFSET + DOORBELL_LINES * LINE_SIZE <= RINGS_OFFSET
assert len(POSITIONS) <= POSITION_LINES and len(PROCESS_SLOTS) <= HEARTBEAT_SLOTS
assert len(DOORBELLS) <= DOORBELL_LINES and len(RINGS) <= RING_TABLE_SLOTS


@dataclass(frozen=True)
class RingRegion:
    """Where one ring lives in the segment (absolute byte offsets)."""

    name: str
    control_offset: int
    capacity: int

    @property
    def tail_offset(self) -> int:
        return self.control_offset + RING_TAIL_OFFSET

    @property
    def head_offset(self) -> int:
        return self.control_offset + RING_HEAD_OFFSET

    @property
    def waiting_offset(self) -> int:
        return self.control_offset + RING_WAITING_OFFSET

    @property
    def capacity_offset(self) -> int:
        return self.control_offset + RING_CAPACITY_OFFSET

    @property
    def data_offset(self) -> int:
        return self.control_offset + RING_CONTROL_SIZE

    @property
    def end_offset(self) -> int:
        return self.data_offset + self.capacity


@dataclass(frozen=True)
class SegmentHeader:
    magic: int
    layout_version: int
    ring_count: int
    total_size: int
    creator_pid: int
    created_time_ns: int
    ring_capacities: dict[str, int]


def _round_up(value: int, multiple: int) -> int:
    return (value + multiple - 1) // multiple * multiple


def check_ring_capacity(name: str, capacity: int) -> None:
    """Raise ValueError unless `capacity` is a power of two >= MIN_RING_BYTES."""
    if capacity < MIN_RING_BYTES or capacity & (capacity - 1):
        raise ValueError(f"ring {name!r}: capacity {capacity} must be a power of two >= {MIN_RING_BYTES}")


class Layout:
    """Offsets of every field, computed from the ring capacities alone (same on create and attach)."""

    def __init__(self, ring_capacities: Mapping[str, int]) -> None:
        unknown = sorted(set(ring_capacities) - set(RINGS))
        if unknown:
            raise ValueError(f"unknown ring name(s) {unknown}; known: {list(RINGS)}")
        self.ring_capacities = {name: int(ring_capacities.get(name, DEFAULT_RING_BYTES[name]))
                                for name in RINGS}
        self.rings: dict[str, RingRegion] = {}
        control_offset = RINGS_OFFSET
        for name, capacity in self.ring_capacities.items():
            check_ring_capacity(name, capacity)
            region = RingRegion(name, control_offset, capacity)
            self.rings[name] = region
            control_offset = region.end_offset
        self.total_size = _round_up(control_offset, PAGE_SIZE)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Layout) and self.ring_capacities == other.ring_capacities

    def __hash__(self) -> int:
        return hash(tuple(self.ring_capacities.items()))

    @staticmethod
    def position_offset(name: str) -> int:
        return POSITIONS_OFFSET + POSITIONS.index(name) * LINE_SIZE

    @staticmethod
    def heartbeat_offset(name: str) -> int:
        return HEARTBEATS_OFFSET + PROCESS_SLOTS.index(name) * LINE_SIZE

    @staticmethod
    def doorbell_offset(name: str) -> int:
        return DOORBELLS_OFFSET + DOORBELLS.index(name) * LINE_SIZE

    def regions(self) -> list[tuple[int, int, str]]:
        """(start, end, label) of every region, in address order (for tests and `rmqd inspect shm`)."""
        out = [(0, SEGMENT_HEADER_SIZE, "header"),
               (RING_TABLE_OFFSET, RING_TABLE_OFFSET + LINE_SIZE, "ring table")]
        out += [(self.position_offset(n), self.position_offset(n) + LINE_SIZE, f"position {n}")
                for n in POSITIONS]
        out += [(self.heartbeat_offset(n), self.heartbeat_offset(n) + LINE_SIZE, f"heartbeat {n}")
                for n in PROCESS_SLOTS]
        out += [(self.doorbell_offset(n), self.doorbell_offset(n) + LINE_SIZE, f"doorbell {n}")
                for n in DOORBELLS]
        for region in self.rings.values():
            out += [(region.tail_offset, region.tail_offset + LINE_SIZE, f"ring {region.name} tail"),
                    (region.head_offset, region.head_offset + LINE_SIZE, f"ring {region.name} head"),
                    (region.waiting_offset, region.waiting_offset + LINE_SIZE, f"ring {region.name} waiting"),
                    (region.capacity_offset, region.capacity_offset + LINE_SIZE,
                     f"ring {region.name} capacity"),
                    (region.data_offset, region.end_offset, f"ring {region.name} data")]
        return sorted(out)

    def encode_header(self, buf: memoryview, creator_pid: int, created_time_ns: int) -> None:
        """Write the header and ring table (the magic last, so a half-written header never matches)."""
        SEGMENT_HEADER.pack_into(buf, 0, 0, LAYOUT_VERSION, len(RINGS), self.total_size,
                                 creator_pid, created_time_ns)
        capacities = list(self.ring_capacities.values()) + [0] * (RING_TABLE_SLOTS - len(RINGS))
        RING_TABLE.pack_into(buf, RING_TABLE_OFFSET, *capacities)
        for region in self.rings.values():
            struct.pack_into("<Q", buf, region.capacity_offset, region.capacity)
        struct.pack_into("<Q", buf, 0, SEGMENT_MAGIC)


def decode_header(buf: bytes | memoryview) -> SegmentHeader:
    """Read the header and ring table (no validation; see segment.py for the checks)."""
    magic, version, ring_count, total_size, pid, created_ns = SEGMENT_HEADER.unpack_from(buf, 0)
    table = RING_TABLE.unpack_from(buf, RING_TABLE_OFFSET)
    capacities = {name: table[i] for i, name in enumerate(RINGS) if i < ring_count}
    return SegmentHeader(magic, version, ring_count, total_size, pid, created_ns, capacities)
