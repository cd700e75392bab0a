"""Queue allocation, start-offset rule and subscription parsing (pure functions)."""
from __future__ import annotations

import hashlib

import pytest

from rmqd.client._rebalance import (
    allocate_averagely,
    allocate_averagely_by_circle,
    allocate_consistent_hash,
    allocation_strategy,
    compute_start_offset,
    parse_subscription,
)
from rmqd.errors import MQClientError
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


def test_first_offset_starts_at_the_min_offset_with_or_without_history():
    assert compute_start_offset(ConsumeFromWhere.FIRST_OFFSET, "T", None, lambda: 0, never, never) == 0


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


# ---------------------------------------------------------------- other allocation strategies

def distinct_queues(count: int) -> list[MessageQueue]:
    """`count` different queues over two brokers."""
    return [MessageQueue("T", f"broker-{'ab'[i % 2]}", i // 2) for i in range(count)]


def owners(strategy, queue_list: list[MessageQueue], ids: list[str]) -> dict[MessageQueue, list[str]]:
    """Queue -> every client id that the strategy gives it to."""
    owned: dict[MessageQueue, list[str]] = {queue: [] for queue in queue_list}
    for cid in ids:
        for queue in strategy(queue_list, list(reversed(ids)), cid):
            owned[queue].append(cid)
    return owned


@pytest.mark.parametrize("name", ["AVG", "AVG_BY_CIRCLE", "CONSISTENT_HASH"])
@pytest.mark.parametrize(("queue_count", "client_count"), [(16, 1), (16, 3), (16, 5), (3, 5), (16, 16)])
def test_every_strategy_gives_each_queue_exactly_one_owner(name, queue_count, client_count):
    ids = [f"10.0.0.{i}@{i}@abcd" for i in range(client_count)]
    owned = owners(allocation_strategy(name), distinct_queues(queue_count), ids)
    assert all(len(cids) == 1 for cids in owned.values()), owned


def test_by_circle_deals_the_sorted_queues_round_robin():
    ids = ["a@1@x", "b@1@x", "c@1@x"]
    dealt = [allocate_averagely_by_circle(distinct_queues(8), ids, cid) for cid in ids]
    ordered = sorted(distinct_queues(8))
    assert dealt == [ordered[0::3], ordered[1::3], ordered[2::3]]
    assert allocate_averagely_by_circle(distinct_queues(8), ids, "stranger@1@x") == []


def test_consistent_hash_follows_rocketmqs_ring_of_md5_points():
    # Given two clients and RocketMQ's ring: 10 virtual nodes "cid-i", first 4 MD5 bytes unsigned
    ids = ["a@1@x", "b@1@x"]
    ring = sorted((int.from_bytes(hashlib.md5(f"{cid}-{i}".encode()).digest()[:4], "big"), cid)
                  for cid in ids for i in range(10))

    def owner(queue: MessageQueue) -> str:
        text = f"MessageQueue [topic={queue.topic}, brokerName={queue.broker_name}, queueId={queue.queue_id}]"
        point = int.from_bytes(hashlib.md5(text.encode()).digest()[:4], "big")
        return next((cid for hash_value, cid in ring if hash_value >= point), ring[0][1])

    # Then each queue goes to the first virtual node at or after its own hash, wrapping around
    for cid in ids:
        expected = [queue for queue in sorted(distinct_queues(16)) if owner(queue) == cid]
        assert allocate_consistent_hash(distinct_queues(16), ids, cid) == expected


def test_consistent_hash_moves_only_the_queues_the_newcomer_takes():
    before_ids = [f"c{i}@1@x" for i in range(3)]
    after_ids = before_ids + ["c9@1@x"]
    before = owners(allocate_consistent_hash, distinct_queues(64), before_ids)
    after = owners(allocate_consistent_hash, distinct_queues(64), after_ids)
    moved = [queue for queue in before if before[queue] != after[queue]]
    assert moved and all(after[queue] == ["c9@1@x"] for queue in moved)


def test_unknown_strategy_names_are_refused_and_callables_pass_through():
    with pytest.raises(MQClientError, match="AVG_BY_CIRCLE"):
        allocation_strategy("ROUND_ROBIN")
    assert allocation_strategy("avg") is allocate_averagely
    assert allocation_strategy(allocate_averagely_by_circle) is allocate_averagely_by_circle


def test_broadcasting_offsets_ignore_the_new_group_rule():
    # Local offsets are unknown to the broker: LAST_OFFSET on a young queue starts at its end
    start = compute_start_offset(ConsumeFromWhere.LAST_OFFSET, "T", None, lambda: 0, lambda: 9, never,
                                 new_group_rule=False)
    assert start == 9
