"""PushConsumer against the real namesrv loop and a fake broker; ProcessQueue on its own."""
from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

import rmqd.client.push_consumer as push_module
from rmqd.client import (
    ConsumeFromWhere,
    ConsumeStatus,
    Message,
    MessageExt,
    MessageModel,
    MessageQueue,
    Producer,
    PushConsumer,
)
from rmqd.client.push_consumer import ProcessQueue
from rmqd.errors import MQClientError
from rmqd.protocol import ResponseCode
from tests.helpers import wait_until

QUEUE = MessageQueue("T", "broker-a", 0)


def ext(queue_offset: int, body: bytes = b"x") -> MessageExt:
    return MessageExt(topic="T", body=body, tags=None, keys=[], msg_id=f"id{queue_offset}", offset_msg_id="",
                      queue_id=0, queue_offset=queue_offset, born_timestamp_ms=0, store_timestamp_ms=0,
                      born_host="", store_host="", reconsume_times=0, sys_flag=0, commitlog_offset=0)


# ---------------------------------------------------------------- ProcessQueue

def test_the_commit_offset_is_the_smallest_offset_still_in_flight():
    pq = ProcessQueue(QUEUE, 10)
    messages = [ext(offset) for offset in range(10, 15)]
    pq.put(messages, 15)
    assert pq.commit_offset() == 10
    assert pq.remove([messages[1], messages[2]]) == 10  # 10 is still being consumed
    assert pq.remove([messages[0]]) == 13
    assert pq.remove([messages[3], messages[4]]) == 15  # empty: the next offset to pull


def test_an_empty_process_queue_commits_past_filtered_messages():
    pq = ProcessQueue(QUEUE, 0)
    pq.put([], 40)  # a pull whose 40 messages were all filtered out by tag
    assert pq.commit_offset() == 40


def test_process_queue_stats_count_bytes_and_span():
    pq = ProcessQueue(QUEUE, 0)
    pq.put([ext(0, b"ab"), ext(7, b"cde")], 8)
    assert pq.stats() == (2, 5, 7)
    pq.put([ext(3)], 8)  # an offset that moved back keeps the order right
    assert pq.remove([ext(0)]) == 3


# ---------------------------------------------------------------- against a fake broker

@pytest.fixture
def producer(namesrv, broker):
    p = Producer("pg", namesrv=namesrv.addr)
    p.start()
    yield p
    p.shutdown()


class Recorder:
    """A listener that records what it got; `status` decides the answer, `gate` can hold it."""

    def __init__(self, status: ConsumeStatus = ConsumeStatus.CONSUME_SUCCESS) -> None:
        self.status = status
        self.batches: list[list[MessageExt]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.lock = threading.Lock()

    def __call__(self, messages: list[MessageExt]) -> ConsumeStatus:
        assert self.gate.wait(10), "test gate never opened"
        with self.lock:
            self.batches.append(list(messages))
        return self.status

    def bodies(self) -> list[bytes]:
        with self.lock:
            return [m.body for batch in self.batches for m in batch]


@pytest.fixture
def make_consumer(namesrv):
    started: list[PushConsumer] = []

    def make(group: str, topic: str, listener, expression: str = "*", **options) -> PushConsumer:
        consumer = PushConsumer(group, namesrv=namesrv.addr, **options)
        consumer.subscribe(topic, expression)
        consumer.register_listener(listener)
        started.append(consumer)
        return consumer

    yield make
    for consumer in started:
        consumer.shutdown()


def send(producer: Producer, topic: str, count: int, **kwargs) -> None:
    for i in range(count):
        producer.send(Message(topic, f"m{i}".encode(), **kwargs))


def committed(broker, group: str, topic: str) -> dict[int, int]:
    return {q: o for (g, t, q), o in broker.offsets.items() if g == group and t == topic}


def test_push_consumer_delivers_every_message_once_and_commits_them(broker, producer, make_consumer):
    # Given 40 messages on a young topic
    send(producer, "Push", 40)
    listener = Recorder()
    consumer = make_consumer("push-group", "Push", listener, persist_consumer_offset_interval_ms=100)
    # When the consumer runs
    consumer.start()
    assert len(consumer.assignment()) == 8
    wait_until(lambda: len(listener.bodies()) >= 40, 10, "40 messages delivered")
    # Then every message arrives exactly once, one per batch, and the offsets are committed
    assert Counter(listener.bodies()) == Counter(f"m{i}".encode() for i in range(40))
    assert all(len(batch) == 1 for batch in listener.batches)
    stored = {q: len(broker.stored("Push", q)) for q in range(8)}
    wait_until(lambda: committed(broker, "push-group", "Push") == stored, 5, "offsets committed")
    assert "push-group" in broker.consumers


def test_batches_hold_up_to_consume_message_batch_max_size_messages_of_one_queue(broker, producer,
                                                                                  make_consumer):
    for i in range(12):
        producer.send(Message("Batch", f"b{i}".encode()), sharding_key="one-queue")
    listener = Recorder()
    listener.gate.clear()  # let the messages pile up into one pull
    consumer = make_consumer("batch-group", "Batch", listener, consume_message_batch_max_size=5)
    consumer.start()
    listener.gate.set()
    wait_until(lambda: len(listener.bodies()) == 12, 10, "12 messages delivered")
    assert sorted(len(batch) for batch in listener.batches) == [2, 5, 5]
    assert all(len({m.queue_id for m in batch}) == 1 for batch in listener.batches)


def test_reconsume_later_and_exceptions_redeliver_without_committing_past(broker, producer, make_consumer,
                                                                          monkeypatch):
    monkeypatch.setattr(push_module, "RECONSUME_LATER_DELAY_S", 0.05)
    producer.send(Message("Later", b"only"), sharding_key="k")
    # The fake broker has no CONSUMER_SEND_MSG_BACK; failing the two copies to %RETRY%later-group
    # too leaves the last resort, local redelivery (the send-back itself: tests/process/test_retry_dlq.py)
    broker.fail_codes += [ResponseCode.SYSTEM_ERROR] * 2
    calls: list[int] = []

    def listener(messages: list[MessageExt]) -> ConsumeStatus:
        calls.append(messages[0].reconsume_times)
        if len(calls) == 1:
            raise RuntimeError("first try fails")
        return ConsumeStatus.RECONSUME_LATER if len(calls) == 2 else ConsumeStatus.CONSUME_SUCCESS

    consumer = make_consumer("later-group", "Later", listener, persist_consumer_offset_interval_ms=50)
    consumer.start()
    wait_until(lambda: len(calls) == 3, 10, "the message to be delivered three times")
    # The same message came back with reconsume_times counting the failures, and only then committed
    assert calls == [0, 1, 2]
    queue_id = next(q for q in range(8) if broker.stored("Later", q))
    wait_until(lambda: committed(broker, "later-group", "Later").get(queue_id) == 1, 5, "offset 1 committed")


def test_a_slow_message_holds_back_the_commit_but_not_the_others(broker, producer, make_consumer):
    for i in range(5):
        producer.send(Message("Slow", f"s{i}".encode()), sharding_key="k")
    queue_id = next(q for q in range(8) if broker.stored("Slow", q))
    release = threading.Event()
    done: list[bytes] = []

    def listener(messages: list[MessageExt]) -> ConsumeStatus:
        if messages[0].body == b"s1":
            assert release.wait(10)
        done.append(messages[0].body)
        return ConsumeStatus.CONSUME_SUCCESS

    consumer = make_consumer("slow-group", "Slow", listener, persist_consumer_offset_interval_ms=50)
    consumer.start()
    wait_until(lambda: len(done) == 4, 10, "the four other messages consumed")
    wait_until(lambda: committed(broker, "slow-group", "Slow").get(queue_id) == 1, 5, "offset 1 committed")
    time.sleep(0.2)  # several persist intervals pass; the commit must stay at the slow message
    assert committed(broker, "slow-group", "Slow")[queue_id] == 1
    release.set()
    wait_until(lambda: committed(broker, "slow-group", "Slow").get(queue_id) == 5, 5, "offset 5 committed")


def test_flow_control_stops_pulling_a_queue_whose_cache_is_full(broker, producer, make_consumer):
    # Given a listener that blocks, and a queue allowed to cache only 3 messages
    listener = Recorder()
    listener.gate.clear()
    for i in range(20):
        producer.send(Message("Flow", f"f{i}".encode()), sharding_key="k")
    consumer = make_consumer("flow-group", "Flow", listener, pull_threshold_for_queue=3, pull_batch_size=2,
                             consume_thread_max=2, consume_thread_min=1)
    consumer.start()
    queue_id = next(q for q in range(8) if broker.stored("Flow", q))
    pq = next(pq for queue, pq in consumer._table.items() if queue.queue_id == queue_id)
    wait_until(lambda: pq.stats()[0] >= 4, 5, "the cache to pass its threshold")
    # Then no more is pulled while the listener is stuck (threshold 3 + one batch of 2 at most)
    time.sleep(0.3)
    assert pq.stats()[0] <= 5
    # And everything flows once the listener is released
    listener.gate.set()
    wait_until(lambda: len(listener.bodies()) == 20, 10, "all 20 messages delivered")


def test_shutdown_waits_for_running_listener_calls_and_commits_their_offsets(broker, producer, make_consumer):
    producer.send(Message("Stop", b"held"), sharding_key="k")
    queue_id = next(q for q in range(8) if broker.stored("Stop", q))
    listener = Recorder()
    listener.gate.clear()
    consumer = make_consumer("stop-group", "Stop", listener)
    consumer.start()
    wait_until(lambda: any(consumer._pool.busy), 5, "the listener to be called")
    stopper = threading.Thread(target=consumer.shutdown)
    stopper.start()
    wait_until(lambda: not consumer._scheduler._thread.is_alive(), 5, "pulling to stop")
    stopper.join(0.3)
    assert stopper.is_alive(), "shutdown returned while a listener call was still running"
    listener.gate.set()
    stopper.join(15)
    assert not stopper.is_alive()
    assert committed(broker, "stop-group", "Stop")[queue_id] == 1
    assert consumer.client_id not in broker.consumers.get("stop-group", set())


def test_a_new_group_on_a_young_topic_starts_at_zero_whatever_consume_from_says(broker, producer,
                                                                                 make_consumer):
    send(producer, "Young", 8)
    listener = Recorder()
    consumer = make_consumer("young-group", "Young", listener, consume_from=ConsumeFromWhere.LAST_OFFSET)
    consumer.start()
    wait_until(lambda: len(listener.bodies()) == 8, 10, "the 8 messages sent before the group existed")


@pytest.mark.parametrize(("consume_from", "expected"), [
    (ConsumeFromWhere.LAST_OFFSET, [b"new"]),
    (ConsumeFromWhere.FIRST_OFFSET, [b"m0", b"new"]),
    (ConsumeFromWhere.TIMESTAMP, [b"new"]),
])
def test_consume_from_decides_where_a_new_group_starts_once_history_was_deleted(
        broker, producer, make_consumer, consume_from, expected):
    # Given a queue whose first 100 messages were deleted (min offset 100) and that holds "m0"
    queue_id = producer.send(Message("Hist", b"m0"), sharding_key="k").queue.queue_id
    broker.min_offsets[("Hist", queue_id)] = 100
    # When a new group starts (TIMESTAMP: from now on) and a new message arrives
    listener = Recorder()
    consumer = make_consumer(f"hist-{consume_from.name}", "Hist", listener, consume_from=consume_from,
                             consume_timestamp_ms=int(time.time() * 1000) + 1000)
    consumer.start()
    time.sleep(1.1)  # the new message must be stored after the consume timestamp
    producer.send(Message("Hist", b"new"), sharding_key="k")
    # Then it starts where ConsumeFromWhere says
    wait_until(lambda: b"new" in listener.bodies(), 10, "the new message")
    assert listener.bodies() == expected


def test_a_committed_offset_wins_over_consume_from(broker, producer, make_consumer):
    queue_id = producer.send(Message("Kept", b"k0"), sharding_key="k").queue.queue_id
    producer.send(Message("Kept", b"k1"), sharding_key="k")
    broker.offsets[("kept-group", "Kept", queue_id)] = 1
    listener = Recorder()
    consumer = make_consumer("kept-group", "Kept", listener, consume_from=ConsumeFromWhere.FIRST_OFFSET)
    consumer.start()
    wait_until(lambda: listener.bodies() == [b"k1"], 10, "only the message after the committed offset")


def test_offset_moved_continues_at_the_brokers_next_begin_offset(broker, producer, make_consumer):
    # Given a committed offset beyond the queue's end
    queue_id = producer.send(Message("Moved", b"a"), sharding_key="k").queue.queue_id
    broker.offsets[("moved-group", "Moved", queue_id)] = 50
    listener = Recorder()
    consumer = make_consumer("moved-group", "Moved", listener, persist_consumer_offset_interval_ms=50)
    consumer.start()
    # When the broker answers OFFSET_MOVED (this fake moves to the max offset, 1)
    wait_until(lambda: committed(broker, "moved-group", "Moved").get(queue_id) == 1, 5, "offset corrected")
    producer.send(Message("Moved", b"b"), sharding_key="k")
    # Then consumption continues from there
    wait_until(lambda: listener.bodies() == [b"b"], 10, "the message after the corrected offset")


def test_tags_are_matched_exactly_on_the_client(broker, producer, make_consumer):
    for tag in ("A", "B", "AB", "C"):
        producer.send(Message("Tags", tag.encode(), tags=tag))
    producer.send(Message("Tags", b"none"))
    listener = Recorder()
    consumer = make_consumer("tag-group", "Tags", listener, expression="A || B")
    consumer.start()
    wait_until(lambda: len(listener.bodies()) == 2, 10, "the two matching messages")
    time.sleep(0.2)
    assert sorted(listener.bodies()) == [b"A", b"B"]


def test_broadcasting_consumers_each_get_everything_and_resume_from_their_files(
        broker, producer, make_consumer, tmp_path):
    send(producer, "Cast", 8)
    listeners = [Recorder() for _ in range(2)]
    consumers = [make_consumer("cast-group", "Cast", listener, message_model=MessageModel.BROADCASTING,
                               consume_from=ConsumeFromWhere.FIRST_OFFSET, instance_name=f"node-{i}",
                               offset_store_dir=str(tmp_path)) for i, listener in enumerate(listeners)]
    for consumer in consumers:
        consumer.start()
    for listener in listeners:
        wait_until(lambda listener=listener: len(listener.bodies()) == 8, 10, "8 messages for each consumer")
    consumers[0].shutdown()
    send(producer, "Cast", 3)
    again = Recorder()
    restarted = make_consumer("cast-group", "Cast", again, message_model=MessageModel.BROADCASTING,
                              consume_from=ConsumeFromWhere.FIRST_OFFSET, instance_name="node-0",
                              offset_store_dir=str(tmp_path))
    restarted.start()
    wait_until(lambda: len(again.bodies()) == 3, 10, "the 3 messages sent while it was down")
    time.sleep(0.2)
    assert sorted(again.bodies()) == [b"m0", b"m1", b"m2"]
    assert "cast-group" not in broker.offsets  # nothing went to the broker


def test_a_consumer_the_broker_forgot_heartbeats_again_at_its_next_rebalance(broker, producer, make_consumer):
    # Given a running consumer and a broker that restarted: it lists another member, not this one
    producer.send(Message("Forgot", b"x"))
    consumer = make_consumer("forgot-group", "Forgot", Recorder(), rebalance_interval_ms=100)
    consumer.start()
    broker.consumers["forgot-group"] = {"0.0.0.0@1@other"}
    # Then its next rebalance notices and heartbeats at once (the heartbeat interval is 30 s)
    wait_until(lambda: consumer.client_id in broker.consumers["forgot-group"], 3, "a heartbeat")
    wait_until(lambda: len(consumer.assignment()) == 4, 3, "half of the queues (two members now)")


def test_start_needs_a_subscription_and_a_listener(namesrv):
    consumer = PushConsumer("cg", namesrv=namesrv.addr)
    with pytest.raises(MQClientError, match="register_listener"):
        consumer.start()
    with pytest.raises(MQClientError, match="consume_thread_min"):
        PushConsumer("cg", namesrv=namesrv.addr, consume_thread_min=30)
    with pytest.raises(MQClientError, match="pull_threshold_for_queue"):
        PushConsumer("cg", namesrv=namesrv.addr, pull_threshold_for_queue=0)
