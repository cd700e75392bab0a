"""Consumption against a real broker tree: tag filtering, ConsumeFromWhere, OFFSET_MOVED, broadcasting.

One broker serves the whole module (each test uses its own topic and group). The cases that need a
queue whose history was deleted (min offset > 0) are in tests/unit/client/test_push_consumer.py,
against the fake broker, because making a real broker delete files takes a day of fileReservedTime.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from rmqd.client import (
    ConsumeFromWhere,
    ConsumeStatus,
    LitePullConsumer,
    Message,
    MessageModel,
    MessageQueue,
    MQAdmin,
    Producer,
    PushConsumer,
)
from rmqd.client._remoting import RemotingClient
from rmqd.errors import RouteNotFoundError
from rmqd.protocol import RequestCode, ResponseCode
from rmqd.store.record import java_string_hash
from tests.broker_harness import BrokerTree
from tests.helpers import wait_until

pytestmark = pytest.mark.process

QUEUES = 4


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    with BrokerTree(tmp_path_factory.mktemp("consumption") / "store",
                      properties={"defaultTopicQueueNums": QUEUES}) as tree:
        yield tree


@pytest.fixture(scope="module")
def producer(broker):
    p = Producer("consumption-producer", namesrv=broker.namesrv_addr)
    p.start()
    yield p
    p.shutdown()


@pytest.fixture
def consumers():
    started: list = []
    yield started
    for consumer in started:
        consumer.shutdown()


class Received:
    """A listener recording message bodies (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.bodies: list[bytes] = []

    def __call__(self, messages) -> ConsumeStatus:
        with self.lock:
            self.bodies.extend(message.body for message in messages)
        return ConsumeStatus.CONSUME_SUCCESS

    def snapshot(self) -> list[bytes]:
        with self.lock:
            return list(self.bodies)


def create_topic(namesrv: str, topic: str, queues: int = QUEUES) -> None:
    """Create `topic` and wait until the namesrv routes it (consumers rebalance on that route)."""
    with MQAdmin(namesrv) as admin:
        admin.create_topic(topic, queues, queues)

        def route_known() -> bool:
            try:
                return bool(admin.topic_route(topic).get("queueDatas"))
            except RouteNotFoundError:
                return False

        wait_until(route_known, 10, f"the route of {topic}")


def push_consumer(consumers: list, broker, group: str, topic: str, listener, expression: str = "*",
                  **options) -> PushConsumer:
    consumer = PushConsumer(group, namesrv=broker.namesrv_addr, **options)
    consumer.subscribe(topic, expression)
    consumer.register_listener(listener)
    consumers.append(consumer)
    consumer.start()
    return consumer


def send_bodies(producer: Producer, topic: str, bodies: list[str], **kwargs) -> None:
    for body in bodies:
        producer.send(Message(topic, body.encode(), **kwargs))


def await_dispatched(namesrv: str, topic: str, count: int) -> None:
    """Wait until the ConsumeQueues hold `count` messages: a send is acknowledged once written to the
    CommitLog, and the dispatcher builds the ConsumeQueue units (and so the max offsets) just after."""
    with MQAdmin(namesrv) as admin:
        wait_until(lambda: sum(row["max_offset"] for row in admin.topic_status(topic)) == count, 10,
                   f"{count} messages of {topic} to be dispatched")


def settle(listener: Received, count: int, what: str, timeout_s: float = 15) -> list[bytes]:
    """Wait for `count` bodies, then a little longer to catch any extra (unwanted) delivery."""
    wait_until(lambda: len(listener.snapshot()) >= count, timeout_s, what)
    time.sleep(0.3)  # extra deliveries would show up here; the assertions then count exactly
    return listener.snapshot()


# ---------------------------------------------------------------- tag filtering

def test_tag_filtering_delivers_only_matching_tags_even_when_hashes_collide(broker, producer, consumers):
    # Given tags "Aa" and "BB", whose Java String.hashCode is the same (the ConsumeQueue's tag hash)
    assert java_string_hash("Aa") == java_string_hash("BB")
    create_topic(broker.namesrv_addr, "Tags")
    for i, tag in enumerate(["Aa", "BB", "C", "Aa", "D", "BB", "C"]):
        producer.send(Message("Tags", f"{tag}-{i}".encode(), tags=tag))
    producer.send(Message("Tags", b"untagged"))
    # When consumers subscribe to "Aa" and to "C || D"
    only_aa, c_or_d = Received(), Received()
    push_consumer(consumers, broker, "tags-aa", "Tags", only_aa, "Aa")
    push_consumer(consumers, broker, "tags-cd", "Tags", c_or_d, "C || D")
    # Then each gets exactly its tags: the broker passes "BB" by hash, the client drops it
    assert sorted(settle(only_aa, 2, "the Aa messages")) == [b"Aa-0", b"Aa-3"]
    assert sorted(settle(c_or_d, 3, "the C and D messages")) == [b"C-2", b"C-6", b"D-4"]


# ---------------------------------------------------------------- ConsumeFromWhere

@pytest.mark.parametrize("consume_from", [ConsumeFromWhere.LAST_OFFSET, ConsumeFromWhere.FIRST_OFFSET,
                                          ConsumeFromWhere.TIMESTAMP])
def test_a_new_group_on_a_young_topic_consumes_its_history_whatever_consume_from_says(
        broker, producer, consumers, consume_from):
    # Given messages sent before the group exists, on queues whose min offset is 0
    topic = f"Young{consume_from.name.title().replace('_', '')}"
    create_topic(broker.namesrv_addr, topic)
    send_bodies(producer, topic, [f"old-{i}" for i in range(8)])
    # When a new group starts with any ConsumeFromWhere (TIMESTAMP: from an hour in the future)
    listener = Received()
    push_consumer(consumers, broker, f"young-{consume_from.name}", topic, listener, consume_from=consume_from,
                  consume_timestamp_ms=int(time.time() * 1000) + 3_600_000)
    send_bodies(producer, topic, ["new"])
    # Then it gets the history too (RocketMQ's rule for a new group on a queue whose min offset is 0)
    assert sorted(settle(listener, 9, "history and new message")) == sorted(
        [f"old-{i}".encode() for i in range(8)] + [b"new"])


def test_a_committed_offset_wins_and_a_restarted_group_resumes_there(broker, producer, consumers):
    create_topic(broker.namesrv_addr, "Resume")
    send_bodies(producer, "Resume", [f"a{i}" for i in range(8)])
    first = Received()
    consumer = push_consumer(consumers, broker, "resume-group", "Resume", first,
                             consume_from=ConsumeFromWhere.FIRST_OFFSET)
    assert len(settle(first, 8, "the first 8 messages")) == 8
    consumer.shutdown()  # commits
    send_bodies(producer, "Resume", [f"b{i}" for i in range(4)])
    second = Received()
    push_consumer(consumers, broker, "resume-group", "Resume", second,
                  consume_from=ConsumeFromWhere.FIRST_OFFSET)
    assert sorted(settle(second, 4, "the 4 messages sent while it was down")) == [b"b0", b"b1", b"b2", b"b3"]


def test_broadcasting_last_offset_skips_history_because_local_offsets_bypass_the_rule(
        broker, producer, consumers, tmp_path):
    create_topic(broker.namesrv_addr, "CastLast")
    send_bodies(producer, "CastLast", [f"old-{i}" for i in range(8)])
    await_dispatched(broker.namesrv_addr, "CastLast", 8)
    listener = Received()
    push_consumer(consumers, broker, "cast-last", "CastLast", listener,
                  message_model=MessageModel.BROADCASTING, consume_from=ConsumeFromWhere.LAST_OFFSET,
                  offset_store_dir=str(tmp_path))
    send_bodies(producer, "CastLast", ["new"])
    assert settle(listener, 1, "the new message") == [b"new"]


# ---------------------------------------------------------------- OFFSET_MOVED

def test_an_offset_past_the_end_is_moved_back_by_the_broker_and_corrected(broker, producer, consumers):
    # Given a group whose committed offset of a queue holding 5 messages is 1000
    create_topic(broker.namesrv_addr, "Moved")
    for i in range(5):
        producer.send(Message("Moved", f"m{i}".encode()), sharding_key="one")
    queue_id = producer.send(Message("Moved", b"m5"), sharding_key="one").queue.queue_id
    client = RemotingClient()
    try:
        fields = {"consumerGroup": "moved-group", "topic": "Moved", "queueId": queue_id, "commitOffset": 1000}
        assert client.invoke(broker.broker_addr, RequestCode.UPDATE_CONSUMER_OFFSET, fields).code == 0
        # When the group consumes: the broker answers OFFSET_MOVED (offset > max, min 0 -> back to 0)
        listener = Received()
        push_consumer(consumers, broker, "moved-group", "Moved", listener,
                      persist_consumer_offset_interval_ms=200)
        # Then every message of the queue is consumed and the committed offset is corrected
        assert sorted(settle(listener, 6, "the queue's 6 messages")) == [f"m{i}".encode() for i in range(6)]

        def committed() -> int:
            query = {"consumerGroup": "moved-group", "topic": "Moved", "queueId": queue_id}
            response = client.invoke(broker.broker_addr, RequestCode.QUERY_CONSUMER_OFFSET, query)
            return response.field_int("offset") if response.code == ResponseCode.SUCCESS else -1

        wait_until(lambda: committed() == 6, 5, "the committed offset to become 6")
    finally:
        client.close()


def test_a_lite_pull_consumer_is_moved_back_as_well(broker, producer, consumers):
    create_topic(broker.namesrv_addr, "MovedLite")
    queue_id = producer.send(Message("MovedLite", b"x0"), sharding_key="one").queue.queue_id
    producer.send(Message("MovedLite", b"x1"), sharding_key="one")
    consumer = LitePullConsumer("moved-lite", namesrv=broker.namesrv_addr)
    consumers.append(consumer)
    queue = MessageQueue("MovedLite", "broker-a", queue_id)
    consumer.assign([queue])
    consumer.start()
    consumer.seek(queue, 500)
    received: list[bytes] = []
    wait_until(lambda: received.extend(m.body for m in consumer.poll(200)) or len(received) >= 2, 10,
               "both messages after the move")
    assert received == [b"x0", b"x1"]


# ---------------------------------------------------------------- broadcasting

def test_three_broadcasting_consumers_each_get_every_message_once_and_resume_after_a_restart(
        broker, producer, consumers, tmp_path):
    # Given three broadcasting consumers of one group
    create_topic(broker.namesrv_addr, "Cast")
    listeners = [Received() for _ in range(3)]
    members = [push_consumer(consumers, broker, "cast-group", "Cast", listener,
                             message_model=MessageModel.BROADCASTING, instance_name=f"node-{i}",
                             offset_store_dir=str(tmp_path)) for i, listener in enumerate(listeners)]
    # When 40 messages are sent
    bodies = [f"c{i}" for i in range(40)]
    send_bodies(producer, "Cast", bodies)
    # Then each consumer receives every one of them exactly once
    for listener in listeners:
        received = settle(listener, 40, "40 messages per consumer")
        assert Counter(received) == Counter(body.encode() for body in bodies)
    # And a restarted consumer resumes from its local offset file
    members[1].shutdown()
    send_bodies(producer, "Cast", ["late-0", "late-1", "late-2"])
    again = Received()
    push_consumer(consumers, broker, "cast-group", "Cast", again, message_model=MessageModel.BROADCASTING,
                  instance_name="node-1", offset_store_dir=str(tmp_path))
    late = settle(again, 3, "the messages sent while it was down")
    assert sorted(late) == [b"late-0", b"late-1", b"late-2"]
    assert (tmp_path / next(p.name for p in tmp_path.iterdir() if p.name.endswith("@node-1"))
            / "cast-group" / "offsets.json").exists()
