"""Entry formats of the long-polling rings: parked pulls (front <-> holder) and arrivals.

A pull that finds nothing is parked: the front puts a ParkedPull on the park ring; the holder
keeps it until the queue's max offset passes the pull's offset (an Arrival from the dispatcher,
or its own re-check of the ConsumeQueue) or the deadline passes, then puts the SAME bytes back on
the wake ring; the front re-runs the pull without suspending again (RocketMQ's
PullRequestHoldService re-executes the request the same way).

ParkedPull (little-endian), 32 bytes + topic + client identity + request frame:

    0            8              16         20          22             24           28       32
    +------------+--------------+----------+-----------+--------------+------------+--------+
    | queue_off  | deadline_ms  | queue_id | topic_len | identity_len | frame_len  | rsvd   |
    | i64        | i64 (epoch)  | i32      | u16       | u16          | u32        | u32    |
    +------------+--------------+----------+-----------+--------------+------------+--------+
    followed by topic (topic_len bytes), client identity (identity_len), request frame (frame_len).

Arrival (little-endian), 16 bytes + topic: the dispatcher's news that a queue grew.

    0            8          12          14
    +------------+----------+-----------+---------+-------+
    | max_offset | queue_id | topic_len | rsvd    | topic |
    | i64        | i32      | u16       | u16     |       |
    +------------+----------+-----------+---------+-------+
"""

from __future__ import annotations

import struct
from typing import NamedTuple

PARKED_PULL_HEAD = struct.Struct("<qqiHHII")
PARKED_PULL_HEAD_SIZE = 32
ARRIVAL_HEAD = struct.Struct("<qiHH")
ARRIVAL_HEAD_SIZE = 16


class ParkedPull(NamedTuple):
    queue_offset: int
    deadline_ms: int
    queue_id: int
    topic: bytes
    identity: bytes
    frame: bytes


def parked_pull_size(topic: bytes, identity: bytes, frame: bytes | memoryview) -> int:
    return PARKED_PULL_HEAD_SIZE + len(topic) + len(identity) + len(frame)


def encode_parked_pull(buf: memoryview, pull: ParkedPull) -> None:
    topic, identity, frame = pull.topic, pull.identity, pull.frame
    PARKED_PULL_HEAD.pack_into(
        buf, 0, pull.queue_offset, pull.deadline_ms, pull.queue_id, len(topic), len(identity), len(frame), 0
    )
    pos = PARKED_PULL_HEAD_SIZE
    for part in (topic, identity, frame):
        buf[pos : pos + len(part)] = part
        pos += len(part)


def decode_parked_pull(entry: memoryview) -> ParkedPull:
    queue_offset, deadline_ms, queue_id, topic_len, ident_len, frame_len, _ = PARKED_PULL_HEAD.unpack_from(
        entry
    )
    pos = PARKED_PULL_HEAD_SIZE
    topic = bytes(entry[pos : pos + topic_len])
    pos += topic_len
    identity = bytes(entry[pos : pos + ident_len])
    pos += ident_len
    frame = bytes(entry[pos : pos + frame_len])
    return ParkedPull(queue_offset, deadline_ms, queue_id, topic, identity, frame)


class Arrival(NamedTuple):
    topic: bytes
    queue_id: int
    max_offset: int


def arrival_size(topic: bytes) -> int:
    return ARRIVAL_HEAD_SIZE + len(topic)


def encode_arrival(buf: memoryview, arrival: Arrival) -> None:
    ARRIVAL_HEAD.pack_into(buf, 0, arrival.max_offset, arrival.queue_id, len(arrival.topic), 0)
    buf[ARRIVAL_HEAD_SIZE : ARRIVAL_HEAD_SIZE + len(arrival.topic)] = arrival.topic


def decode_arrival(entry: memoryview) -> Arrival:
    max_offset, queue_id, topic_len, _ = ARRIVAL_HEAD.unpack_from(entry)
    return Arrival(bytes(entry[ARRIVAL_HEAD_SIZE : ARRIVAL_HEAD_SIZE + topic_len]), queue_id, max_offset)
