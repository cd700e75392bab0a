"""Queue allocation, start-offset rule and subscription parsing (pure functions)."""
from __future__ import annotations

import pytest

from rmqd.client._rebalance import allocate_averagely, compute_start_offset, parse_subscription
from rmqd.message import ConsumeFromWhere, MessageQueue
from rmqd.store.record import java_string_hash


def queues(count: int, topic: str = "T") -> list[MessageQueue]:
    return [MessageQueue(topic, f"broker-{'ab'[i // 4 % 2]}", i % 4) for i in range(count)]


def split(queue_count: int, client_count: int) -> list[list[MessageQueue]]:
    ids = [f"10.0.0.{i}@1@x" for i in range(client_count)]
    return [allocate_averagely(queues(queue_count), list(reversed(ids)), cid) for cid in ids]


@pytest.mark.parametrize(
    ("queue_count", "client_count", "sizes"),
    [(8, 1, [8]), (8, 2, [4, 4]), (8, 3, [3, 3, 2]), (5, 3, [2, 2, 1]), (2, 3, [1, 1, 0]), (0, 2, [0, 0])],
)
def test_allocate_averagely_gives_the_first_clients_one_queue_more(queue_count, client_count, sizes):
    assert [len(owned) for owned in split(queue_count, client_count)] == sizes


def test_allocate_averagely_covers_every_queue_exactly_once_with_consecutive_ranges():
    owned = split(8, 3)
    flat = [queue for part in owned for queue in part]
    assert sorted(flat) == sorted(queues(8)) and len(flat) == len(set(flat))
    assert flat == sorted(queues(8))  # client 0 gets the first range of the sorted queues, and so on


def test_allocate_averagely_is_the_same_whatever_order_the_lists_arrive_in():
    ids = ["c@1@a", "a@1@b", "b@1@c"]
    forward = allocate_averagely(queues(8), ids, "b@1@c")
    backward = allocate_averagely(list(reversed(queues(8))), list(reversed(ids)), "b@1@c")
    assert forward == backward


def test_a_client_missing_from_the_consumer_list_gets_nothing():
    assert allocate_averagely(queues(8), ["other@1@x"], "me@1@y") == []


def never() -> int:
    raise AssertionError("this lookup must not be needed")


def test_a_committed_offset_always_wins():
    for mode in ConsumeFromWhere:
        assert compute_start_offset(mode, "T", 42, never, never, never) == 42


@pytest.mark.parametrize("mode", list(ConsumeFromWhere))
def test_no_committed_offset_and_min_offset_zero_starts_from_zero(mode):
    assert compute_start_offset(mode, "T", None, lambda: 0, never, never) == 0


def test_last_offset_with_history_deleted_starts_at_the_max_offset():
    assert compute_start_offset(ConsumeFromWhere.LAST_OFFSET, "T", None, lambda: 10, lambda: 99, never) == 99


def test_last_offset_on_a_retry_topic_starts_at_zero():
    start = compute_start_offset(ConsumeFromWhere.LAST_OFFSET, "%RETRY%cg", None, lambda: 10, never, never)
    assert start == 0


def test_first_offset_with_history_deleted_starts_at_the_min_offset():
    assert compute_start_offset(ConsumeFromWhere.FIRST_OFFSET, "T", None, lambda: 10, never, never) == 10


def test_timestamp_searches_by_time_and_retry_topics_start_at_the_max():
    assert compute_start_offset(ConsumeFromWhere.TIMESTAMP, "T", None, lambda: 10, never, lambda: 55) == 55
    assert compute_start_offset(ConsumeFromWhere.TIMESTAMP, "%RETRY%g", None, lambda: 10, lambda: 77,
                                never) == 77


def test_short_consume_from_names_alias_rocketmqs_long_ones():
    assert ConsumeFromWhere.LAST_OFFSET is ConsumeFromWhere.CONSUME_FROM_LAST_OFFSET
    assert ConsumeFromWhere.TIMESTAMP.name == "CONSUME_FROM_TIMESTAMP"


@pytest.mark.parametrize("expression", ["*", "", None, "  *  ", "||"])
def test_star_empty_and_none_subscribe_to_every_tag(expression):
    sub = parse_subscription("T", expression)
    assert sub.tags is None and sub.expression == "*" and sub.matches(None) and sub.matches("X")


def test_tag_expression_matches_exactly_and_heartbeat_carries_java_hash_codes():
    sub = parse_subscription("T", "TagA || TagB ||")
    assert sub.tags == {"TagA", "TagB"}
    assert sub.matches("TagA") and not sub.matches("TagAB") and not sub.matches(None)
    heartbeat = sub.to_heartbeat()
    assert heartbeat["tagsSet"] == ["TagA", "TagB"]
    assert heartbeat["codeSet"] == [java_string_hash("TagA"), java_string_hash("TagB")]
