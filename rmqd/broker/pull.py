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

RECORD_I32 = struct.Struct(">i")
RECORD_I64 = struct.Struct(">q")


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
    """Serves pulls from a read-only CommitLog and ConsumeQueueStore. Not thread-safe."""

    def __init__(self, commit_log, cq_store) -> None:
        self.commit_log = commit_log
        self.cq_store = cq_store

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
        min_offset, max_offset = cq.min_offset(self.commit_log.min_offset()), cq.max_offset()
        moved = self._check_offset(queue_offset, min_offset, max_offset)
        if moved is not None:
            return moved
        units = cq.read_range(queue_offset, min(MAX_SCAN_UNITS, max(max_count, 1) * 4))
        result = GetResult(GetStatus.NO_MATCHED_MESSAGE, queue_offset, min_offset, max_offset)
        next_offset = queue_offset
        for phy_offset, size, tags_hash in units:
            if size <= 0 or phy_offset + size > dispatch_pos:
                break  # not published yet (or torn while being written)
            if tag_codes is not None and tags_hash not in tag_codes:
                next_offset += 1
                continue
            if result.message_count and result.bytes_total + size > max_bytes:
                break
            view = self._checked_record(phy_offset, size, queue_id, next_offset)
            if view is None:
                break
            result.buffers.append(view)
            result.message_count += 1
            result.bytes_total += size
            next_offset += 1
            if result.message_count >= max_count:
                break
        result.next_offset = next_offset
        if result.message_count:
            result.status = GetStatus.FOUND
        elif next_offset == queue_offset:
            result.status = GetStatus.OFFSET_OVERFLOW_ONE  # nothing visible yet at this offset
        return result

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

    def _checked_record(
        self, phy_offset: int, size: int, queue_id: int, queue_offset: int
    ) -> memoryview | None:
        try:
            view = self.commit_log.read(phy_offset, size)
        except (ValueError, IndexError, OSError, StoreError):  # StoreError: deleted since the check
            return None
        if view is None or len(view) != size:
            return None
        total_size, magic = rec.peek_size_magic(view, 0)
        if total_size != size or magic not in (rec.MESSAGE_MAGIC_V1, rec.MESSAGE_MAGIC_V2):
            return None
        if RECORD_I32.unpack_from(view, rec.QUEUEID_POS)[0] != queue_id:
            return None
        if RECORD_I64.unpack_from(view, rec.QUEUEOFFSET_POS)[0] != queue_offset:
            return None
        return view
