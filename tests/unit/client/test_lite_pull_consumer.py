"""LitePullConsumer against the real namesrv loop and a fake broker."""
from __future__ import annotations

import threading
import time

import pytest

from rmqd.client import (
    ConsumeFromWhere,
    LitePullConsumer,
    Message,
    MessageModel,
    MessageQueue,
    Producer,
)
from rmqd.errors import MQClientError
from tests.helpers import wait_until


@pytest.fixture
def producer(namesrv, broker):
    p = Producer("pg", namesrv=namesrv.addr)
    p.start()
    yield p
    p.shutdown()


@pytest.fixture
def make_consumer(namesrv):
    started: list[LitePullConsumer] = []

    def make(group: str = "cg", **options) -> LitePullConsumer:
        consumer = LitePullConsumer(group, namesrv=namesrv.addr, **options)
        started.append(consumer)
        return consumer

    yield make
    for consumer in started:
        consumer.shutdown()


def poll_until(consumer: LitePullConsumer, count: int, timeout_s: float = 10.0) -> list:
    """Poll (bounded by time) until `count` messages arrived; return them all."""
    received: list = []
    deadline = time.monotonic() + timeout_s
    while len(received) < count and time.monotonic() < deadline:
        received.extend(consumer.poll(timeout_ms=200))
    return received


def send_bodies(producer: Producer, topic: str, count: int, **kwargs) -> None:
    for i in range(count):
        producer.send(Message(topic, f"m{i}".encode(), **kwargs))


def test_a_new_group_on_a_young_topic_starts_from_offset_zero(broker, producer, make_consumer):
    # Given messages sent before the group exists, on queues whose min offset is 0
    send_bodies(producer, "Young", 16)
    # When a LAST_OFFSET consumer of a new group starts
    consumer = make_consumer("new-group", consume_from=ConsumeFromWhere.LAST_OFFSET)
    consumer.subscribe("Young", "*")
    consumer.start()
    # Then it receives them all (RocketMQ's min-offset-0 rule)
    messages = poll_until(consumer, 16)
    assert sorted(m.body for m in messages) == sorted(f"m{i}".encode() for i in range(16))
    assert {m.topic for m in messages} == {"Young"} and all(len(m.msg_id) == 32 for m in messages)


def test_last_offset_skips_history_once_messages_were_deleted(broker, producer, make_consumer):
    # Given a topic whose queues lost their first messages (min offset > 0) and hold old messages
    send_bodies(producer, "Old", 8)
    for queue_id in range(8):
        broker.min_offsets[("Old", queue_id)] = 100
        broker.records[("Old", queue_id)] = []
    send_bodies(producer, "Old", 8)
    # When a LAST_OFFSET consumer starts and then a new message arrives
    consumer = make_consumer("late-group")
    consumer.subscribe("Old")
    consumer.start()
    assert consumer.poll(timeout_ms=300) == []
    producer.send(Message("Old", b"new"))
    # Then only the new message is delivered
    assert [m.body for m in poll_until(consumer, 1)] == [b"new"]


def test_first_offset_starts_at_the_min_offset(broker, producer, make_consumer):
    for queue_id in range(8):  # the first 5 messages of each queue were deleted
        broker.min_offsets[("First", queue_id)] = 5
    send_bodies(producer, "First", 8)
    consumer = make_consumer("first-group", consume_from=ConsumeFromWhere.FIRST_OFFSET)
    consumer.subscribe("First")
    consumer.start()
    messages = poll_until(consumer, 8)
    assert len(messages) == 8 and all(m.queue_offset == 5 for m in messages)


def test_tag_expression_filters_exactly_on_the_client(broker, producer, make_consumer):
    for tag in ("A", "B", "C", "AB"):
        producer.send(Message("Tagged", tag.encode(), tags=tag))
    consumer = make_consumer("tag-group")
    consumer.subscribe("Tagged", "A || B")
    consumer.start()
    received = poll_until(consumer, 2)
    received += consumer.poll(timeout_ms=200)
    assert sorted(m.tags for m in received) == ["A", "B"]


def test_commit_stores_offsets_and_a_restarted_consumer_resumes_there(broker, producer, make_consumer):
    send_bodies(producer, "Resume", 8)
    first = make_consumer("resume-group", auto_commit=False)
    first.subscribe("Resume")
    first.start()
    assert len(poll_until(first, 8)) == 8
    first.commit()
    assert sum(offset for (group, _t, _q), offset in broker.offsets.items() if group == "resume-group") == 8
    first.shutdown()
    send_bodies(producer, "Resume", 3)
    second = make_consumer("resume-group")
    second.subscribe("Resume")
    second.start()
    assert sorted(m.body for m in poll_until(second, 3)) == [b"m0", b"m1", b"m2"]


def test_poll_returns_as_soon_as_a_held_pull_is_woken_by_a_new_message(broker, producer, make_consumer):
    producer.send(Message("Wake", b"create"))
    consumer = make_consumer("wake-group")
    consumer.subscribe("Wake")
    consumer.start()
    assert len(poll_until(consumer, 1)) == 1
    result: list = []
    poller = threading.Thread(target=lambda: result.extend(consumer.poll(timeout_ms=8000)))
    started = time.monotonic()
    poller.start()
    wait_until(lambda: len(broker.holds) == 8, 5, "all 8 pulls to be held by the broker")
    producer.send(Message("Wake", b"arrived"))
    poller.join(10)
    assert [m.body for m in result] == [b"arrived"]
    assert time.monotonic() - started < 6


def test_seek_replays_a_queue_from_the_given_offset(broker, producer, make_consumer):
    producer.send(Message("Seek", b"a"), sharding_key="k")
    producer.send(Message("Seek", b"b"), sharding_key="k")
    consumer = make_consumer("seek-group")
    consumer.subscribe("Seek")
    consumer.start()
    messages = poll_until(consumer, 2)
    queue = MessageQueue("Seek", messages[0].broker_name, messages[0].queue_id)
    consumer.seek(queue, 1)
    assert [m.body for m in poll_until(consumer, 1)] == [b"b"]
    with pytest.raises(MQClientError, match="not assigned"):
        consumer.seek(MessageQueue("Other", "broker-a", 0), 0)


def test_an_offset_below_the_min_jumps_to_the_next_begin_offset(broker, producer, make_consumer):
    producer.send(Message("Moved", b"a"), sharding_key="k")
    result = producer.send(Message("Moved", b"b"), sharding_key="k")
    queue_id = result.queue.queue_id
    broker.offsets[("moved-group", "Moved", queue_id)] = 0
    broker.records[("Moved", queue_id)] = broker.records[("Moved", queue_id)][1:]
    broker.min_offsets[("Moved", queue_id)] = 1
    consumer = make_consumer("moved-group")
    consumer.assign([MessageQueue("Moved", "broker-a", queue_id)])
    consumer.start()
    assert [m.body for m in poll_until(consumer, 1)] == [b"b"]


def test_assign_consumes_only_the_given_queues_without_joining_the_group(broker, producer, make_consumer):
    send_bodies(producer, "Assigned", 16)
    consumer = make_consumer("assign-group")
    consumer.assign([MessageQueue("Assigned", "broker-a", 0), MessageQueue("Assigned", "broker-a", 1)])
    consumer.start()
    messages = poll_until(consumer, 4)
    assert {m.queue_id for m in messages} == {0, 1} and len(messages) == 4
    assert "assign-group" not in broker.consumers
    with pytest.raises(MQClientError, match="cannot be mixed"):
        consumer.subscribe("Assigned")


def test_two_consumers_of_a_group_split_the_queues_averagely(broker, producer, make_consumer):
    producer.send(Message("Split", b"create"))
    first = make_consumer("split-group", rebalance_interval_ms=50)
    first.subscribe("Split")
    first.start()
    assert len(first.assignment()) == 8
    second = make_consumer("split-group", rebalance_interval_ms=50)
    second.subscribe("Split")
    second.start()

    def rebalanced() -> bool:
        first.poll(timeout_ms=20)
        return len(first.assignment()) == 4

    wait_until(rebalanced, 10, "the first consumer to give up half of its queues")
    assert len(second.assignment()) == 4
    assert set(first.assignment()).isdisjoint(second.assignment())


def test_broadcasting_consumers_each_get_every_message(broker, producer, make_consumer, tmp_path):
    send_bodies(producer, "Broadcast", 8)
    consumers = [make_consumer("bc-group", message_model=MessageModel.BROADCASTING,
                               consume_from=ConsumeFromWhere.FIRST_OFFSET,
                               offset_store_path=str(tmp_path / f"offsets-{i}.json")) for i in range(2)]
    for consumer in consumers:
        consumer.subscribe("Broadcast")
        consumer.start()
    for consumer in consumers:
        assert len(poll_until(consumer, 8)) == 8
        consumer.commit()
    assert consumers[0].committed(MessageQueue("Broadcast", "broker-a", 0)) == 1
    consumers[0].shutdown()
    restarted = make_consumer("bc-group", message_model=MessageModel.BROADCASTING,
                              offset_store_path=str(tmp_path / "offsets-0.json"))
    restarted.subscribe("Broadcast")
    restarted.start()
    assert restarted.committed(MessageQueue("Broadcast", "broker-a", 5)) == 1  # read back from the file
    assert restarted.poll(timeout_ms=200) == []


def test_committed_reads_the_brokers_offset_and_none_when_absent(broker, producer, make_consumer):
    producer.send(Message("Committed", b"x"))
    consumer = make_consumer("committed-group")
    consumer.subscribe("Committed")
    consumer.start()
    queue = MessageQueue("Committed", "broker-a", 3)
    assert consumer.committed(queue) is None
    broker.offsets[("committed-group", "Committed", 3)] = 7
    assert consumer.committed(queue) == 7


def test_poll_before_start_raises_a_clear_error():
    with pytest.raises(MQClientError, match="not started"):
        LitePullConsumer("cg", namesrv="127.0.0.1:1").poll()


def test_seek_to_begin_and_end_and_offset_for_timestamp(broker, producer, make_consumer):
    for i in range(3):
        producer.send(Message("Ends", f"e{i}".encode()), sharding_key="k")
    consumer = make_consumer("ends-group", auto_commit=False)
    queue_id = next(q for q in range(8) if broker.stored("Ends", q))
    queue = MessageQueue("Ends", "broker-a", queue_id)
    assert queue in consumer_queues(consumer, "Ends")
    consumer.assign([queue])
    consumer.start()
    consumer.seek_to_end(queue)
    assert consumer.poll(timeout_ms=200) == []
    consumer.seek_to_begin(queue)
    assert [m.body for m in poll_until(consumer, 3)] == [b"e0", b"e1", b"e2"]
    assert consumer.offset_for_timestamp(queue, int(time.time() * 1000) + 60_000) == 3
    assert consumer.offset_for_timestamp(queue, 0) == 0


def consumer_queues(consumer: LitePullConsumer, topic: str) -> list[MessageQueue]:
    """fetch_message_queues needs a started consumer: use a throwaway one on the same namesrv."""
    probe = LitePullConsumer("probe-group", namesrv=consumer._core.namesrv_addrs[0])
    probe.start()
    try:
        return probe.fetch_message_queues(topic)
    finally:
        probe.shutdown()


def test_a_lite_pull_group_can_use_another_allocate_strategy(broker, producer, make_consumer):
    producer.send(Message("Circle", b"create"))
    consumers = [make_consumer("circle-group", allocate_strategy="AVG_BY_CIRCLE", rebalance_interval_ms=50)
                 for _ in range(2)]
    for consumer in consumers:
        consumer.subscribe("Circle")
        consumer.start()

    def dealt_round_robin() -> bool:
        for consumer in consumers:
            consumer.poll(timeout_ms=20)
        ids = sorted(consumer.client_id for consumer in consumers)
        first = next(c for c in consumers if c.client_id == ids[0])
        return [q.queue_id for q in first.assignment()] == [0, 2, 4, 6]

    wait_until(dealt_round_robin, 10, "queues dealt round robin between the two consumers")
