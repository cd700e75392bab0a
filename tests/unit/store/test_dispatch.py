"""ConsumeQueue unit derivation shared by the dispatcher and recovery."""
from __future__ import annotations

import pytest

from rmqd.store import record as r
from rmqd.store.consume_queue import ConsumeQueueStore
from rmqd.store.dispatch import (
    DEFAULT_DELAY_LEVELS_MS,
    cq_tags_code,
    dispatch_record_to_cq,
    is_dispatched_to_cq,
    parse_delay_levels,
)


def _record(topic="TopicTest", props=None, sys_flag=0, queue_offset=4, store_ms=1_000_000):
    props = props if props is not None else {"TAGS": "TagA"}
    return r.MessageRecord(150, r.MESSAGE_MAGIC_V1, 0, 2, 0, queue_offset, 4096, sys_flag, 0, bytes(8),
                           store_ms, bytes(8), 0, 0, b"", topic, props)


def test_default_delay_levels_match_rocketmq_message_delay_level():
    assert len(DEFAULT_DELAY_LEVELS_MS) == 18
    assert DEFAULT_DELAY_LEVELS_MS[:4] == (1000, 5000, 10000, 30000)
    assert DEFAULT_DELAY_LEVELS_MS[-1] == 7_200_000
    assert parse_delay_levels("2d 3s") == (172_800_000, 3000)
    with pytest.raises(ValueError, match="5x"):
        parse_delay_levels("1s 5x")


@pytest.mark.parametrize(("sys_flag", "dispatched"), [
    (0, True), (r.SysFlag.TRANSACTION_COMMIT, True), (r.SysFlag.TRANSACTION_PREPARED, False),
    (r.SysFlag.TRANSACTION_ROLLBACK, False), (r.SysFlag.COMPRESSED | r.SysFlag.TRANSACTION_COMMIT, True),
])
def test_only_plain_and_committed_records_reach_the_consume_queue(sys_flag, dispatched):
    assert is_dispatched_to_cq(sys_flag) is dispatched


def test_tags_code_is_the_java_hash_of_tags_or_zero():
    assert cq_tags_code(_record()) == 2598919
    assert cq_tags_code(_record(props={})) == 0


def test_delay_topic_units_carry_the_delivery_time():
    rec = _record(topic="SCHEDULE_TOPIC_XXXX", props={"DELAY": "3", "TAGS": "TagA"})
    assert cq_tags_code(rec) == 1_000_000 + 10_000
    capped = rec._replace(properties={"DELAY": "99"})  # capped at the highest level
    assert cq_tags_code(capped) == 1_000_000 + 7_200_000


def test_dispatch_puts_the_unit_at_the_record_queue_offset(store_dir):
    cq_store = ConsumeQueueStore(store_dir, 2000, readonly=False)
    assert dispatch_record_to_cq(cq_store, 4096, _record(queue_offset=0))
    assert cq_store.get("TopicTest", 2).get(0) == (4096, 150, 2598919)
    prepared = _record(sys_flag=r.SysFlag.TRANSACTION_PREPARED, queue_offset=1)
    assert not dispatch_record_to_cq(cq_store, 8192, prepared)
    assert cq_store.get("TopicTest", 2).max_offset() == 1
