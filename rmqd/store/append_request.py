"""Append requests (front -> writer) and append results (writer -> front): the ring entry formats.

These are the payloads of two shared-memory rings (see `shm/layout.py` for the rings themselves):
the front builds complete CommitLog records (``rmqd.store.record``) straight into the request ring,
and the writer copies them into the CommitLog with one slice assignment per request, patching only
QUEUEOFFSET, PHYSICALOFFSET and STORETIMESTAMP. Every request targets exactly one (topic, queue):
a single send, or a RocketMQ batch (one topic, one queue), so the writer does one queue-offset
lookup per request, not per record.

AppendRequest (little-endian; written by the front, read by the writer), 24 bytes + topic + records:

    0            8         12             16             20          22        24
    +------------+---------+--------------+--------------+-----------+---------+-------+---------+
    | request_id | queue_id| record_count | records_bytes| topic_len | reserved| topic | records |
    | u64        | i32     | u32          | u32          | u16       | u16     |       |         |
    +------------+---------+--------------+--------------+-----------+---------+-------+---------+
    records start at 24 + topic_len rounded up to 8 (so the writer's copy source is aligned).

AppendResult (little-endian; written by the writer, read by the front), 32 bytes + 8 per record:

    0            8        12             16             24                32
    +------------+--------+--------------+--------------+-----------------+------------------+
    | request_id | status | record_count | queue_offset | end_phy_offset  | phy_offset * n   |
    | u64        | u32    | u32          | i64 (first)  | i64             | i64 each         |
    +------------+--------+--------------+--------------+-----------------+------------------+
    end_phy_offset is the CommitLog write position after this request: a SYNC_FLUSH send is
    acknowledged once flush_pos >= end_phy_offset.

Both formats live only inside one running broker (the rings are recreated at every boot), so
they carry no version of their own: the shm segment's layout version covers them.
"""
from __future__ import annotations

import enum
import struct
from typing import NamedTuple

APPEND_REQUEST_HEAD = struct.Struct("<QiIIHH")
APPEND_REQUEST_HEAD_SIZE = 24
APPEND_RESULT_HEAD = struct.Struct("<QIIqq")
APPEND_RESULT_HEAD_SIZE = 32
PHY_OFFSET = struct.Struct("<q")


class PutStatus(enum.IntEnum):
    """Outcome of one append (RocketMQ's PutMessageStatus, the subset the writer can produce)."""

    PUT_OK = 0
    SERVICE_NOT_AVAILABLE = 1  # the store is flagged not writable (disk full, write error)
    MESSAGE_ILLEGAL = 2  # a record larger than a CommitLog file
    UNKNOWN_ERROR = 3  # an I/O error while appending; the writer flagged the store


def records_start(topic_len: int) -> int:
    """Position of the first record inside an AppendRequest entry."""
    return (APPEND_REQUEST_HEAD_SIZE + topic_len + 7) & ~7


def append_request_size(topic_len: int, records_bytes: int) -> int:
    return records_start(topic_len) + records_bytes


def encode_append_request_head(
    buf: memoryview, request_id: int, queue_id: int, record_count: int, records_bytes: int, topic: bytes
) -> int:
    """Write the head and topic; return where the records go."""
    APPEND_REQUEST_HEAD.pack_into(buf, 0, request_id, queue_id, record_count, records_bytes, len(topic), 0)
    buf[APPEND_REQUEST_HEAD_SIZE : APPEND_REQUEST_HEAD_SIZE + len(topic)] = topic
    return records_start(len(topic))


class AppendRequest(NamedTuple):
    request_id: int
    queue_id: int
    record_count: int
    topic: bytes
    records: memoryview


def decode_append_request(entry: memoryview) -> AppendRequest:
    request_id, queue_id, count, records_bytes, topic_len, _ = APPEND_REQUEST_HEAD.unpack_from(entry, 0)
    topic = bytes(entry[APPEND_REQUEST_HEAD_SIZE : APPEND_REQUEST_HEAD_SIZE + topic_len])
    start = records_start(topic_len)
    return AppendRequest(request_id, queue_id, count, topic, entry[start : start + records_bytes])


def append_result_size(record_count: int) -> int:
    return APPEND_RESULT_HEAD_SIZE + 8 * record_count


def encode_append_result(
    buf: memoryview,
    request_id: int,
    status: PutStatus,
    queue_offset: int,
    end_phy_offset: int,
    phy_offsets: list[int],
) -> None:
    count = len(phy_offsets)
    APPEND_RESULT_HEAD.pack_into(buf, 0, request_id, status, count, queue_offset, end_phy_offset)
    if count:
        struct.pack_into(f"<{count}q", buf, APPEND_RESULT_HEAD_SIZE, *phy_offsets)


class AppendResult(NamedTuple):
    request_id: int
    status: PutStatus
    queue_offset: int
    end_phy_offset: int
    phy_offsets: tuple[int, ...]


def decode_append_result(entry: memoryview) -> AppendResult:
    request_id, status, count, queue_offset, end_phy = APPEND_RESULT_HEAD.unpack_from(entry, 0)
    phys = struct.unpack_from(f"<{count}q", entry, APPEND_RESULT_HEAD_SIZE) if count else ()
    return AppendResult(request_id, PutStatus(status), queue_offset, end_phy, phys)
