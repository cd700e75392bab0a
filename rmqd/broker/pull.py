"""Reading messages for a pull: ConsumeQueue units -> CommitLog records, RocketMQ's getMessage.

Runs in the front process over read-only mappings while the dispatcher appends ConsumeQueue units
and the writer appends records. Two rules make that safe without locks:

- a unit is used only if its record ends at or before `dispatch_pos`, read BEFORE the unit: the
  dispatcher publishes dispatch_pos only after the units below it are completely written;
- the record a unit points at is checked (magic, size, queue id, queue offset) before it is
  served, so a unit read while the dispatcher was writing it (units are 20 bytes, not 8-byte
  aligned, and can tear) is never served; it reads as "not there yet" and the next pull gets it.

Bodies are not copied here: the result holds memoryviews into the CommitLog mapping, and the
front joins them into the response frame (the one copy on the way out).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

from rmqd.errors import StoreError
from rmqd.store import record as rec

# RocketMQ DefaultMessageStore.getMessage reads at most this many units per pull while filtering
# (maxFilterMessageCount = 16000); 2000 keeps one pull under ~1 ms of CPU here.
MAX_SCAN_UNITS = 2000

# TOTALSIZE, MAGICCODE, (BODYCRC), QUEUEID, (FLAG), QUEUEOFFSET: what a served record is checked on.
RECORD_CHECK = struct.Struct(">iI4xi4xq")
RECORD_MAGICS = (rec.MESSAGE_MAGIC_V1, rec.MESSAGE_MAGIC_V2)


class GetStatus(enum.Enum):
    """RocketMQ's GetMessageStatus, the cases a single broker can produce."""

    FOUND = "FOUND"
    NO_MATCHED_MESSAGE = "NO_MATCHED_MESSAGE"
    NO_MESSAGE_IN_QUEUE = "NO_MESSAGE_IN_QUEUE"
    OFFSET_OVERFLOW_ONE = "OFFSET_OVERFLOW_ONE"
    OFFSET_OVERFLOW_BADLY = "OFFSET_OVERFLOW_BADLY"
    OFFSET_TOO_SMALL = "OFFSET_TOO_SMALL"
    OFFSET_FOUND_NULL = "OFFSET_FOUND_NULL"


@dataclass
class GetResult:
    status: GetStatus
    next_offset: int
    min_offset: int
    max_offset: int
    buffers: list[memoryview] = field(default_factory=list)
    message_count: int = 0
    bytes_total: int = 0


def tag_codes_of(expression: str | None) -> frozenset[int] | None:
    """Tag hash codes of a subscription expression ("A || B"); None means every tag ("*")."""
    if expression is None:
        return None
    expression = expression.strip()
    if not expression or expression == "*":
        return None
    tags = [t.strip() for t in expression.split("||")]
    return frozenset(rec.tags_hash(t) for t in tags if t)


class MessageReader:
    """Serves pulls from a read-only CommitLog and ConsumeQueueStore. Not thread-safe.

    Per pull it costs two ConsumeQueue binary searches only when the queue's bounds may have
    moved (see `_bounds`), one CommitLog read per run of adjacent records (a batch send stores its
    messages back to back) and one struct unpack per record to check it.
    """

    def __init__(self, commit_log, cq_store) -> None:
        self.commit_log = commit_log
        self.cq_store = cq_store
        # (topic, queue_id) -> (cq, CommitLog min offset, min offset, max offset) of the last search
        self._bounds_cache: dict[tuple[str, int], tuple[object, int, int, int]] = {}

    def get_messages(
        self,
        topic: str,
        queue_id: int,
        queue_offset: int,
        max_count: int,
        max_bytes: int,
        tag_codes: frozenset[int] | None,
        dispatch_pos: int,
    ) -> GetResult:
        cq = self.cq_store.get(topic, queue_id)
        # Units pointing below the CommitLog min offset are gone with their files (the cleaner):
        # a pull there gets OFFSET_TOO_SMALL -> PULL_OFFSET_MOVED, never a read of a deleted file.
        min_offset, max_offset = self._bounds(topic, queue_id, cq)
        moved = self._check_offset(queue_offset, min_offset, max_offset)
        if moved is not None:
            return moved
        # Filtering may skip units: read ahead 4x then (RocketMQ reads units until maxMsgNums match).
        scan = max(max_count, 1) if tag_codes is None else min(MAX_SCAN_UNITS, max(max_count, 1) * 4)
        units = cq.read_range(queue_offset, scan)
        result = GetResult(GetStatus.NO_MATCHED_MESSAGE, queue_offset, min_offset, max_offset)
        picked: list[tuple[int, int, int]] = []  # (phy_offset, size, queue offset) to serve
        next_offset, picked_bytes = queue_offset, 0
        for phy_offset, size, tags_hash in units:
            if size <= 0 or phy_offset + size > dispatch_pos:
                break  # not published yet (or torn while being written)
            if tag_codes is not None and tags_hash not in tag_codes:
                next_offset += 1
                continue
            if picked and picked_bytes + size > max_bytes:
                break
            picked.append((phy_offset, size, next_offset))
            picked_bytes += size
            next_offset += 1
            if len(picked) >= max_count:
                break
        served = self._read_checked(picked, queue_id, result.buffers)
        if served < len(picked):  # a record failed its check: serve up to it, it is "not there yet"
            next_offset = picked[served][2]
            picked_bytes = sum(size for _, size, _ in picked[:served])
        result.message_count, result.bytes_total, result.next_offset = served, picked_bytes, next_offset
        if served:
            result.status = GetStatus.FOUND
        elif next_offset == queue_offset:
            result.status = GetStatus.OFFSET_OVERFLOW_ONE  # nothing visible yet at this offset
        return result

    def _bounds(self, topic: str, queue_id: int, cq) -> tuple[int, int]:
        """(min offset, max offset) of the queue, as cq.min_offset / cq.max_offset compute them.

        The two binary searches run only when the bounds may have moved: when the CommitLog's min
        offset changed (the cleaner deleted files), when the unit at the last max offset is no longer
        empty (the dispatcher appended), when that max offset is a file boundary (a new file may
        exist) or an empty queue, or when the store opened the queue anew. A backlog being drained
        costs one unit read per pull instead.
        """
        min_phy = self.commit_log.min_offset()
        key = (topic, queue_id)
        cached = self._bounds_cache.get(key)
        if cached is not None:
            cached_cq, cached_min_phy, min_offset, max_offset = cached
            if (cached_cq is cq and cached_min_phy == min_phy and max_offset % cq.units_per_file != 0
                    and not cq.read_range(max_offset, 1)):
                return min_offset, max_offset
        min_offset, max_offset = cq.min_offset(min_phy), cq.max_offset()
        self._bounds_cache[key] = (cq, min_phy, min_offset, max_offset)
        return min_offset, max_offset

    @staticmethod
    def _check_offset(queue_offset: int, min_offset: int, max_offset: int) -> GetResult | None:
        if max_offset == 0:
            status = GetStatus.NO_MESSAGE_IN_QUEUE
            return GetResult(status, 0, min_offset, max_offset)
        if queue_offset < min_offset:
            return GetResult(GetStatus.OFFSET_TOO_SMALL, min_offset, min_offset, max_offset)
        if queue_offset == max_offset:
            return GetResult(GetStatus.OFFSET_OVERFLOW_ONE, queue_offset, min_offset, max_offset)
        if queue_offset > max_offset:
            # RocketMQ: back to the start when nothing was ever deleted, else to the end.
            next_offset = min_offset if min_offset == 0 else max_offset
            return GetResult(GetStatus.OFFSET_OVERFLOW_BADLY, next_offset, min_offset, max_offset)
        return None

    def _read_checked(self, picked: list[tuple[int, int, int]], queue_id: int, out: list[memoryview]) -> int:
        """Append a view of each picked record to `out`, in order, until one fails its check
        (magic, size, queue id, queue offset); returns how many were appended.

        Adjacent records are read with one CommitLog read and sliced (zero-copy views).
        """
        served, count = 0, len(picked)
        while served < count:
            start = end = picked[served][0]
            last = served
            while last < count and picked[last][0] == end:
                end += picked[last][1]
                last += 1
            view = self._view(start, end - start)
            if view is None and last - served > 1:  # e.g. a record ending exactly at a file's end
                last = served + 1
                view = self._view(start, picked[served][1])
            if view is None:
                return served
            pos = 0
            for index in range(served, last):
                _, size, queue_offset = picked[index]
                total_size, magic, record_queue_id, record_queue_offset = RECORD_CHECK.unpack_from(view, pos)
                if (total_size != size or magic not in RECORD_MAGICS or record_queue_id != queue_id
                        or record_queue_offset != queue_offset):
                    return index
                out.append(view[pos:pos + size])
                pos += size
            served = last
        return served

    def _view(self, phy_offset: int, size: int) -> memoryview | None:
        try:
            view = self.commit_log.read(phy_offset, size)
        except (ValueError, IndexError, OSError, StoreError):  # StoreError: deleted since the check
            return None
        if view is None or len(view) != size:
            return None
        return view
