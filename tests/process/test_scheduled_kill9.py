"""Scheduled messages across a kill -9 of the whole broker tree: none lost, duplicates counted.

Delay-level and timer messages are sent, the tree is killed while some are delivered, some are
held in the scheduler's memory and some still wait in their queues; after the restart an audit
group reads the real topic from the first offset and must find every message at least once.
"""

from __future__ import annotations

import json
import random
import threading
import time

import pytest

from rmqd.client import ConsumeFromWhere, ConsumeStatus, Message, Producer, PushConsumer
from tests.broker_harness import BrokerTree
from tests.helpers import wait_until

pytestmark = pytest.mark.process

TOPIC = "ScheduledKill9"
TIMERS = 300
LEVELS = 40
PROPERTIES = {"messageDelayLevel": "1s 2s 3s 4s 6s", "defaultTopicQueueNums": 4}


def persisted_timer_progress(store) -> int:
    try:
        return sum(json.loads((store / "config" / "timerOffset.json").read_text())["offsetTable"].values())
    except (OSError, ValueError, KeyError):
        return 0


def test_no_scheduled_message_is_lost_across_a_kill_9_of_the_broker(tmp_path):
    tree = BrokerTree(tmp_path / "store", properties=PROPERTIES)
    restarted = None
    consumer = None
    try:
        tree.start()
        producer = Producer("kill9-producer", namesrv=tree.namesrv_addr)
        producer.start()
        rng = random.Random(9)
        now_ms = int(time.time() * 1000)
        bodies = []
        for i in range(TIMERS):
            bodies.append(f"t{i}".encode())
            producer.send(Message(TOPIC, bodies[-1], deliver_at_ms=now_ms + rng.randint(500, 8000)))
        for i in range(LEVELS):
            bodies.append(f"l{i}".encode())
            producer.send(Message(TOPIC, bodies[-1], delay_level=1 + i % 5))
        producer.shutdown()
        # Kill once the scheduler has persisted some progress: part delivered, part pending
        wait_until(lambda: persisted_timer_progress(tmp_path / "store") > 0, 15, "persisted timer offsets")
        tree.kill_tree()

        restarted = BrokerTree(tmp_path / "store", properties=PROPERTIES, port=tree.port,
                               namesrv_port=tree.namesrv_port).start()
        lock, copies = threading.Lock(), []

        def listener(msgs):
            with lock:
                copies.extend(msg.body for msg in msgs)
            return ConsumeStatus.CONSUME_SUCCESS

        consumer = PushConsumer("kill9-audit", namesrv=restarted.namesrv_addr,
                                consume_from=ConsumeFromWhere.FIRST_OFFSET)
        consumer.subscribe(TOPIC, "*")
        consumer.register_listener(listener)
        consumer.start()

        def all_there() -> bool:
            with lock:
                return set(bodies) <= set(copies)

        try:
            wait_until(all_there, 40, f"all {len(bodies)} scheduled messages after the restart")
        except AssertionError:
            with lock:
                missing = sorted(set(bodies) - set(copies))
            raise AssertionError(f"{len(missing)} scheduled messages lost: {missing[:20]}") from None
        with lock:
            duplicates = len(copies) - len(set(copies))
        print(f"kill -9: {len(bodies)} scheduled, 0 lost, {duplicates} duplicates")
        assert duplicates <= len(bodies)
    finally:
        if consumer is not None:
            consumer.shutdown()
        for broker in (restarted, tree):
            if broker is not None:
                broker.cleanup()
