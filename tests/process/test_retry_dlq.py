"""Retry and dead-letter queue against a real broker tree (short messageDelayLevel: every level 1 s).

A listener that always fails sees the message 1 + maxReconsumeTimes times (reconsume times 0..max),
then the message is in %DLQ%{group} with RocketMQ's properties; resending it from the DLQ brings it
back to the group, under its original topic.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading

import pytest

from rmqd.client import ConsumeFromWhere, ConsumeStatus, Message, MQAdmin, Producer, PushConsumer
from rmqd.client.dlq import dlq_messages, resend_dlq_message
from tests.broker_harness import REPO_ROOT, RMQD, BrokerTree
from tests.helpers import wait_until

pytestmark = pytest.mark.process

TOPIC = "RetryT"
GROUP = "retry-group"
MAX_RECONSUME = 3


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    with BrokerTree(tmp_path_factory.mktemp("retry") / "store",
                      properties={"messageDelayLevel": " ".join(["1s"] * 18)}) as tree:
        yield tree


class FailingListener:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: dict[str, list[tuple[str, int]]] = {}
        self.fail = True

    def __call__(self, msgs):
        with self.lock:
            for msg in msgs:
                self.calls.setdefault(msg.body.decode(), []).append((msg.topic, msg.reconsume_times))
            fail = self.fail
        if fail and msgs[0].body != b"ok":
            raise RuntimeError("this listener always fails")
        return ConsumeStatus.CONSUME_SUCCESS

    def seen(self, body: str) -> list[tuple[str, int]]:
        with self.lock:
            return list(self.calls.get(body, []))


def test_an_always_failing_message_reaches_the_dlq_after_max_retries_and_can_be_resent(broker):
    producer = Producer("retry-producer", namesrv=broker.namesrv_addr)
    producer.start()
    admin = MQAdmin(namesrv=broker.namesrv_addr)
    admin.start()
    listener = FailingListener()
    consumer = PushConsumer(GROUP, namesrv=broker.namesrv_addr, consume_from=ConsumeFromWhere.FIRST_OFFSET,
                            max_reconsume_times=MAX_RECONSUME)
    try:
        producer.send(Message(TOPIC, b"ok"))
        consumer.subscribe(TOPIC, "*")
        consumer.register_listener(listener)
        consumer.start()
        wait_until(lambda: listener.seen("ok"), 30, "the consumer to start consuming")
        sent = producer.send(Message(TOPIC, b"poison", keys=["poison-1"]))

        dlq = wait_until(lambda: dlq_messages(admin, GROUP), 40, "the message in %DLQ%retry-group")
        assert len(dlq) == 1
        calls = listener.seen("poison")
        assert calls == [(TOPIC, times) for times in range(MAX_RECONSUME + 1)], calls
        dead = dlq[0]
        assert dead.topic == f"%DLQ%{GROUP}"
        assert dead.body == b"poison"
        assert dead.reconsume_times == MAX_RECONSUME + 1
        assert dead.properties["DLQ_ORIGIN_TOPIC"] == TOPIC
        assert dead.properties["DLQ_ORIGIN_MESSAGE_ID"] == sent.msg_id
        assert dead.properties["RETRY_TOPIC"] == TOPIC
        assert dead.properties["ORIGIN_MESSAGE_ID"] == sent.msg_id
        assert dead.properties["RECONSUME_TIME"] == str(MAX_RECONSUME + 1)
        assert dead.keys == ["poison-1"]
        assert "DELAY" not in dead.properties

        rows = mqadmin("queryDLQMsg", "-n", broker.namesrv_addr, "-g", GROUP, "--json")
        assert [(r["offset_msg_id"], r["originTopic"], r["reconsumeTimes"]) for r in rows] == [
            (dead.offset_msg_id, TOPIC, MAX_RECONSUME + 1)]

        with listener.lock:
            listener.fail = False
        resend_dlq_message(admin, GROUP, dead.offset_msg_id)
        wait_until(lambda: len(listener.seen("poison")) == MAX_RECONSUME + 2, 20, "the resent message")
        assert listener.seen("poison")[-1] == (TOPIC, 0)
        assert len(dlq_messages(admin, GROUP)) == 1  # nothing new went to the DLQ
    finally:
        consumer.shutdown()
        producer.shutdown()
        admin.shutdown()


def mqadmin(*args: str) -> object:
    env = {**os.environ, "PYTHONPATH": REPO_ROOT}
    result = subprocess.run([RMQD[0], "-m", "cli.mqadmin", *args], env=env, cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)
