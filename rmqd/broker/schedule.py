"""Scheduled messages: delay levels and arbitrary delivery times (the library half; see docs/SCHEDULING.md).

Owns
- the send-path transformation (`maybe_redirect`, called by the front after `prepare_send`): a
  message with a DELAY level is stored under SCHEDULE_TOPIC_XXXX, queue level - 1; a message with
  TIMER_DELIVER_MS in the future under the timer wheel topic rmq_sys_wheel_timer, queue
  `timer_queue_for(remaining)`; both keep their destination in REAL_TOPIC / REAL_QID (RocketMQ
  CommitLog.putMessage). Batches carrying either property are refused, as in RocketMQ.
- the timer wheel geometry: queue 0 has no delay (its messages are due within 1 s and are held in
  the scheduler's memory until their exact time); queue k >= 1 has the constant delay 2^(k-1) s,
  so every queue is FIFO in due time. A message due in R ms goes to the queue with the largest
  2^(k-1) s <= R; when that queue's delay has elapsed the scheduler re-sends it, which puts it in
  a smaller queue (at most TIMER_QUEUE_NUMS hops), until R < HOLD_MS.
- the delivery transformation (`restore_real`): REAL_TOPIC / REAL_QID back as topic and queue,
  DELAY and TIMER_DELIVER_MS removed when the message is delivered (kept when re-scheduled).
- `Lane` (one queue of SCHEDULE_TOPIC_XXXX or of the timer topic read by the scheduler: read
  cursor and the offsets taken but not yet acknowledged) and `OffsetTable`
  (config/delayOffset.json, {"offsetTable": {"<level>": offset}}, and config/timerOffset.json).

Called by: workers/front.py (maybe_redirect), workers/scheduler.py (the rest). Pure apart from
OffsetTable's files; not thread-safe (each process uses its own objects).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence
from typing import Any

from rmqd.broker.send import PreparedSend, Rejection
from rmqd.protocol.commands import ResponseCode
from rmqd.store import record as rec
from rmqd.store.dispatch import (
    SCHEDULE_TOPIC,
    TIMER_QUEUE_NUMS,
    TIMER_TOPIC,
    parse_delay_levels,
    timer_queue_delay_ms,
)
from rmqd.store.files import atomic_write_json, read_json_with_bak
from rmqd.store.record import Prop

__all__ = [
    "SCHEDULE_TOPIC", "TIMER_TOPIC", "TIMER_QUEUE_NUMS", "timer_queue_delay_ms", "timer_queue_for",
    "maybe_redirect", "restore_real", "Lane", "OffsetTable", "HOLD_MS", "TIMER_MAX_DELAY_MS",
]

DELAY_MARK = b"DELAY\x01"
TIMER_MARK = b"TIMER_DELIVER_MS\x01"
HOLD_MS = 2_000  # a timer due within this is held in the scheduler's memory until its exact time
TIMER_MAX_DELAY_MS = 7 * 86_400_000  # RocketMQ timerMaxDelaySec is 3 days; we accept a week
_SCHEDULE_TOPIC_B = SCHEDULE_TOPIC.encode()
_TIMER_TOPIC_B = TIMER_TOPIC.encode()


def timer_queue_for(remaining_ms: int) -> int:
    """The wheel queue of a timer due in `remaining_ms`: the largest 2^(k-1) s <= remaining, 0 below 1 s."""
    if remaining_ms < 1000:
        return 0
    return min(TIMER_QUEUE_NUMS - 1, (remaining_ms // 1000).bit_length())


@functools.lru_cache(maxsize=8)
def _levels(message_delay_level: str) -> tuple[int, ...]:
    return parse_delay_levels(message_delay_level)


def maybe_redirect(prepared: PreparedSend, *, batch: bool, cfg: Any,
                   now_ms: int | None = None) -> PreparedSend | Rejection | None:
    """The scheduled form of `prepared`, a Rejection, or None when it is an ordinary message.

    Cheap for ordinary messages: one or two substring tests on the raw properties (for a batch, on
    all of them joined: one search, not one per message). `cfg` is the
    BrokerConfig (its messageDelayLevel is parsed once per distinct value).
    """
    if batch:
        all_props = prepared.properties()
        every_props = b"\x02".join(all_props)
        if DELAY_MARK not in every_props and TIMER_MARK not in every_props:
            return None  # one search over all properties, not over the bodies: 10x cheaper for 1 KiB
        for raw in all_props:
            props = bytes(raw)  # a batch's are views of the request (`in` on a view tests items)
            if DELAY_MARK in props or TIMER_MARK in props:
                return Rejection(ResponseCode.MESSAGE_ILLEGAL,
                                 "delayed or timer messages cannot be sent in a batch (as in RocketMQ)")
        return None
    props_raw = prepared.messages[0][2]
    if DELAY_MARK not in props_raw and TIMER_MARK not in props_raw:
        return None
    props = rec.decode_properties(props_raw)
    delay_levels_ms = _levels(cfg.messageDelayLevel)
    level = _int_or_zero(props.get(Prop.DELAY))
    if level > 0 and delay_levels_ms:
        level = min(level, len(delay_levels_ms))
        props[Prop.DELAY] = str(level)
        return _redirected(prepared, props, _SCHEDULE_TOPIC_B, level - 1)
    deliver_ms = _int_or_zero(props.get(Prop.TIMER_DELIVER_MS))
    if deliver_ms <= 0:
        return None
    remaining = deliver_ms - (time.time_ns() // 1_000_000 if now_ms is None else now_ms)
    if remaining <= 0:
        return None  # already due: store it in its real topic now
    if remaining > TIMER_MAX_DELAY_MS:
        return Rejection(ResponseCode.MESSAGE_ILLEGAL,
                         f"deliver_at_ms is {remaining} ms away; at most {TIMER_MAX_DELAY_MS} ms allowed")
    return _redirected(prepared, props, _TIMER_TOPIC_B, timer_queue_for(remaining))


def _int_or_zero(text: str | None) -> int:
    if text is None:
        return 0
    try:
        return int(text)
    except ValueError:
        return 0


def _redirected(prepared: PreparedSend, props: dict[str, str], topic: bytes, queue_id: int) -> PreparedSend:
    props[Prop.REAL_TOPIC] = prepared.topic.decode()
    props[Prop.REAL_QID] = str(prepared.queue_id)
    encoded = rec.encode_properties(props)
    flag, body, _old, sys_flag, reconsume = prepared.messages[0]
    return dataclasses.replace(
        prepared, topic=topic, queue_id=queue_id,
        messages=[(flag, body, encoded, sys_flag, reconsume)],
        records_bytes=rec.record_size(len(body), len(topic), len(encoded)),
    )


def restore_real(props: dict[str, str], *, deliver: bool) -> tuple[str, int, dict[str, str]]:
    """(real topic, real queue id, properties to send) of a scheduled record's properties.

    `deliver`: the message goes to its consumers now, so DELAY and TIMER_DELIVER_MS are removed
    (otherwise it is being moved to a smaller wheel queue and keeps TIMER_DELIVER_MS).
    """
    out = dict(props)
    topic = out.pop(Prop.REAL_TOPIC, "")
    queue_id = _int_or_zero(out.pop(Prop.REAL_QID, "0"))
    out.pop(Prop.DELAY, None)
    if deliver:
        out.pop(Prop.TIMER_DELIVER_MS, None)
    return topic, queue_id, out


class Lane:
    """One queue the scheduler reads: SCHEDULE_TOPIC_XXXX level-1, or timer wheel queue k.

    `next_offset` is the next unit to look at; `outstanding` holds the offsets taken (sent, held,
    or waiting for a retry) and not yet acknowledged. The offset safe to persist is the smallest
    outstanding one, or next_offset: a restart re-reads from there (at-least-once).
    """

    __slots__ = ("topic", "queue_id", "key", "timer", "next_offset", "outstanding", "next_due_ms")

    def __init__(self, topic: str, queue_id: int, key: str, offset: int, *, timer: bool) -> None:
        self.topic = topic
        self.queue_id = queue_id
        self.key = key
        self.timer = timer
        self.next_offset = offset
        self.outstanding: set[int] = set()
        self.next_due_ms: int | None = None  # due time of the unit at next_offset, when known

    def committed(self) -> int:
        return min(self.outstanding) if self.outstanding else self.next_offset


class OffsetTable:
    """RocketMQ's delayOffset.json format, {"offsetTable": {key: offset}}, written atomically."""

    def __init__(self, path: str) -> None:
        self.path = path
        data = read_json_with_bak(path) or {}
        table = data.get("offsetTable", {}) if isinstance(data, dict) else {}
        self.table: dict[str, int] = {str(k): int(v) for k, v in table.items()}
        self._persisted = dict(self.table)

    def get(self, key: str) -> int:
        return self.table.get(key, 0)

    def update(self, lanes: Sequence[Lane]) -> None:
        for lane in lanes:
            self.table[lane.key] = lane.committed()

    def persist(self, *, force: bool = False) -> bool:
        """Write the file if anything changed (or `force`); returns whether it wrote."""
        if not force and self.table == self._persisted:
            return False
        atomic_write_json(self.path, {"offsetTable": dict(sorted(self.table.items(), key=_numeric_key))})
        self._persisted = dict(self.table)
        return True


def _numeric_key(item: tuple[str, int]) -> int:
    return int(item[0]) if item[0].isdigit() else 0
