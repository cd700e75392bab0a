"""Scheduled delivery against a real broker tree: delay levels 1-5 and arbitrary delivery times.

One broker and one push consumer serve the module. Levels use RocketMQ's default
messageDelayLevel (1s 5s 10s 30s 1m), so the slowest case waits a minute; the timer messages are
sent meanwhile and checked in the same wait. The full 1,000-timers-over-60-s run is in
loadtest/bench_timer.py --accuracy (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import random
import threading
import time

import pytest

from rmqd.client import ConsumeFromWhere, ConsumeStatus, Message, Producer, PushConsumer
from rmqd.client._remoting import RemotingClient
from rmqd.errors import MQClientError
from rmqd.protocol import RequestCode, ResponseCode, codec
from tests.broker_harness import BrokerTree
from tests.helpers import wait_until

pytestmark = pytest.mark.process

TOPIC = "ScheduledT"
LEVEL_DELAYS_S = {1: 1, 2: 5, 3: 10, 4: 30, 5: 60}
TIMERS = 200
TIMER_SPAN_S = 15.0
SLACK_S = 1.0


class Arrivals:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.at: dict[bytes, list[float]] = {}

    def listener(self, msgs):
        now = time.time()
        with self.lock:
            for msg in msgs:
                self.at.setdefault(msg.body, []).append(now)
        return ConsumeStatus.CONSUME_SUCCESS

    def count(self, bodies) -> int:
        with self.lock:
            return sum(1 for body in bodies if body in self.at)


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    with BrokerTree(tmp_path_factory.mktemp("scheduled") / "store") as tree:
        yield tree


@pytest.fixture(scope="module")
def producer(broker):
    p = Producer("scheduled-producer", namesrv=broker.namesrv_addr)
    p.start()
    yield p
    p.shutdown()


@pytest.fixture(scope="module")
def arrivals(broker, producer):
    producer.send(Message(TOPIC, b"create-the-topic"))
    seen = Arrivals()
    consumer = PushConsumer("scheduled-consumer", namesrv=broker.namesrv_addr,
                            consume_from=ConsumeFromWhere.FIRST_OFFSET)
    consumer.subscribe(TOPIC, "*")
    consumer.register_listener(seen.listener)
    consumer.start()
    wait_until(lambda: seen.count([b"create-the-topic"]), 30, "the consumer to receive a first message")
    yield seen
    consumer.shutdown()


def test_levels_1_to_5_and_200_random_timers_arrive_on_time(producer, arrivals):
    sent_levels: dict[bytes, tuple[float, float, int]] = {}
    for level in LEVEL_DELAYS_S:
        body = f"level-{level}".encode()
        before = time.time()
        producer.send(Message(TOPIC, body, delay_level=level))
        sent_levels[body] = (before, time.time(), level)
    rng = random.Random(6)
    now_ms = int(time.time() * 1000)
    due = {f"timer-{i}".encode(): now_ms + rng.randint(200, int(TIMER_SPAN_S * 1000)) for i in range(TIMERS)}
    futures = [producer.send_async(Message(TOPIC, body, deliver_at_ms=at)) for body, at in due.items()]
    for future in futures:
        future.result(10)

    wait_until(lambda: arrivals.count(due) == TIMERS, TIMER_SPAN_S + 10, "every timer message")
    late = {}
    for body, at_ms in due.items():
        error_s = arrivals.at[body][0] - at_ms / 1000
        if not -0.05 <= error_s <= SLACK_S:
            late[body] = round(error_s, 3)
    assert not late, f"timer messages outside [due, due + 1 s]: {late}"

    wait_until(lambda: arrivals.count(sent_levels) == len(sent_levels), max(LEVEL_DELAYS_S.values()) + 10,
               "every delay-level message")
    off = {}
    for body, (before, after, level) in sent_levels.items():
        arrived = arrivals.at[body][0]
        delay = LEVEL_DELAYS_S[level]
        if not (arrived - before >= delay and arrived - after <= delay + SLACK_S):
            off[level] = round(arrived - before, 3)
    assert not off, f"delay levels outside [delay, delay + 1 s] (level: seconds taken): {off}"


def test_a_timer_already_due_is_delivered_at_once(producer, arrivals):
    body = b"already-due"
    producer.send(Message(TOPIC, body, deliver_at_ms=int(time.time() * 1000) - 5000))
    wait_until(lambda: arrivals.count([body]), 5, "the already-due timer message")


def test_a_batch_with_a_delay_is_refused_by_the_sdk_and_by_the_broker(broker, producer):
    with pytest.raises(MQClientError):
        producer.send_batch([Message(TOPIC, b"a", delay_level=1), Message(TOPIC, b"b")])
    client = RemotingClient()
    try:
        body = codec.encode_batch([(0, b"a", b"k\x01v\x02"), (0, b"b", b"DELAY\x011\x02")])
        fields = {"producerGroup": "raw", "topic": TOPIC, "queueId": 0, "sysFlag": 0, "bornTimestamp": 0,
                  "bornHost": "127.0.0.1:1", "reconsumeTimes": 0, "batch": True}
        response = client.invoke(broker.broker_addr, RequestCode.SEND_BATCH_MESSAGE, fields, body)
    finally:
        client.close()
    assert response.code == ResponseCode.MESSAGE_ILLEGAL, response.remark
