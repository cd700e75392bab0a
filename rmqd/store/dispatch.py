"""Deriving ConsumeQueue units from CommitLog records: the ONE place that decides what a unit is.

Used by the dispatcher process (after each write group) and by recovery (re-dispatch past the
checkpoint), so both produce identical units. A record becomes the unit
  (phy_offset, TOTALSIZE, tags_code) at record.queue_offset of (record.topic, record.queue_id)
unless its SYSFLAG transaction type is PREPARED or ROLLBACK (RocketMQ
CommitLogDispatcherBuildConsumeQueue dispatches only NOT_TYPE and COMMIT records).
tags_code is the Java hashCode of the TAGS property (0 without tags); for the delay topic
SCHEDULE_TOPIC_XXXX it is the delivery time in ms: STORETIMESTAMP + delay of the DELAY level
(RocketMQ CommitLog.checkMessageAndReturnSize / computeDeliverTimestamp); for the timer wheel
topic rmq_sys_wheel_timer it is STORETIMESTAMP + the queue's constant delay.
Pure functions apart from the ConsumeQueueStore they are given.
"""
from __future__ import annotations

from collections.abc import Sequence

from rmqd.store.consume_queue import ConsumeQueueStore
from rmqd.store.record import MessageRecord, Prop, SysFlag, tags_hash

SCHEDULE_TOPIC = "SCHEDULE_TOPIC_XXXX"
# The timer wheel (rmqd/broker/schedule.py): queue 0 has no delay, queue k >= 1 a constant 2^(k-1) s.
# The longest, 2^17 s = 36.4 h, stays below fileReservedTime (48 h): a record always comes due
# (and is re-written by its next hop) before the cleaner may delete its file as expired.
TIMER_TOPIC = "rmq_sys_wheel_timer"
TIMER_QUEUE_NUMS = 19
DEFAULT_MESSAGE_DELAY_LEVEL = "1s 5s 10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m 20m 30m 1h 2h"
_UNIT_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_delay_levels(text: str) -> tuple[int, ...]:
    """RocketMQ messageDelayLevel ("1s 5s ... 2h") -> delay in ms per level (level 1 first)."""
    levels = []
    for item in text.split():
        unit = _UNIT_MS.get(item[-1:])
        if unit is None or not item[:-1].isdigit():
            raise ValueError(
                f"bad delay level {item!r} in {text!r}: expected a number followed by s, m, h or d")
        levels.append(int(item[:-1]) * unit)
    return tuple(levels)


DEFAULT_DELAY_LEVELS_MS = parse_delay_levels(DEFAULT_MESSAGE_DELAY_LEVEL)


def is_dispatched_to_cq(sys_flag: int) -> bool:
    """False for prepared and rolled-back transactional records: consumers never see them."""
    tran_type = sys_flag & SysFlag.TRANSACTION_MASK
    return tran_type in (SysFlag.TRANSACTION_NOT_TYPE, SysFlag.TRANSACTION_COMMIT)


def timer_queue_delay_ms(queue_id: int) -> int:
    """The constant delay of timer wheel queue `queue_id` (0 for queue 0)."""
    return 0 if queue_id <= 0 else 1000 << (min(queue_id, TIMER_QUEUE_NUMS - 1) - 1)


def cq_tags_code(record: MessageRecord, delay_levels_ms: Sequence[int] = DEFAULT_DELAY_LEVELS_MS) -> int:
    """The tags_code field of the record's ConsumeQueue unit."""
    if record.topic == SCHEDULE_TOPIC and delay_levels_ms:
        level_text = record.properties.get(Prop.DELAY, "")
        if level_text.isdigit() and int(level_text) > 0:
            level = min(int(level_text), len(delay_levels_ms))
            return record.store_timestamp_ms + delay_levels_ms[level - 1]
    if record.topic == TIMER_TOPIC:  # due time of the wheel queue (see timer_queue_delay_ms)
        return record.store_timestamp_ms + timer_queue_delay_ms(record.queue_id)
    return tags_hash(record.properties.get(Prop.TAGS))


def dispatch_record_to_cq(cq_store: ConsumeQueueStore, phy_offset: int, record: MessageRecord,
                          delay_levels_ms: Sequence[int] = DEFAULT_DELAY_LEVELS_MS) -> bool:
    """Put the record's ConsumeQueue unit (idempotent). Returns False if the record is not dispatched."""
    if not is_dispatched_to_cq(record.sys_flag):
        return False
    queue = cq_store.get(record.topic, record.queue_id)
    queue.put(record.queue_offset, phy_offset, record.total_size, cq_tags_code(record, delay_levels_ms))
    return True
