"""Committed offsets survive a kill -9 of the whole broker tree; at most the last ~5 s are repeated.

The broker writes config/consumerOffset.json every flushConsumerOffsetInterval (5 s), checked on
its 1 s housekeeping tick, so a kill -9 loses the commits that arrived after its last write: never
those older than 5 s + 1 s. The consumer here commits every 200 ms (instead of its 5 s default) so
that the broker always holds commits newer than its last write. The test samples the broker's
committed offsets every 50 ms while messages flow, kills every process of the tree at once,
restarts it on the same store and checks each queue's recovered offset against what the broker
had committed 6 s before the kill; then a new consumer of the group must get every message, the
repeated ones being exactly those after the recovered offsets.
"""

from __future__ import annotations

import threading
import time

import pytest

from rmqd.client import ConsumeStatus, Message, MQAdmin, Producer, PushConsumer
from rmqd.client._remoting import RemotingClient
from rmqd.errors import RmqError
from rmqd.protocol import RequestCode, ResponseCode
from tests.broker_harness import BrokerTree
from tests.helpers import wait_until
from tests.process.test_consumption import create_topic

pytestmark = pytest.mark.process

TOPIC = "Durable"
GROUP = "durable-group"
QUEUES = 4
LOSS_WINDOW_S = 6.0  # flushConsumerOffsetInterval (5 s) + the front's housekeeping tick (1 s)
RUN_BEFORE_KILL_S = 9.0  # long enough for a broker write of consumerOffset.json older than the window
COMMIT_INTERVAL_MS = 200  # the first consumer commits often, so the kill has recent commits to lose


def committed_offsets(client: RemotingClient, addr: str) -> dict[int, int]:
    offsets = {}
    for queue_id in range(QUEUES):
        fields = {"consumerGroup": GROUP, "topic": TOPIC, "queueId": queue_id}
        response = client.invoke(addr, RequestCode.QUERY_CONSUMER_OFFSET, fields, timeout_ms=1000)
        offsets[queue_id] = response.field_int("offset") if response.code == ResponseCode.SUCCESS else 0
    return offsets


class Sampler:
    """Records (time, committed offsets) every 50 ms until stopped."""

    def __init__(self, addr: str) -> None:
        self.addr = addr
        self.client = RemotingClient()
        self.samples: list[tuple[float, dict[int, int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                self.samples.append((time.monotonic(), committed_offsets(self.client, self.addr)))
            except RmqError:
                return  # the broker is gone

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.client.close()

    def at(self, moment: float) -> dict[int, int]:
        return max((s for s in self.samples if s[0] <= moment), key=lambda s: s[0])[1]


def start_consumer(namesrv: str, consumed: list[bytes], **options) -> PushConsumer:
    def listener(messages) -> ConsumeStatus:
        consumed.extend(message.body for message in messages)
        return ConsumeStatus.CONSUME_SUCCESS

    consumer = PushConsumer(GROUP, namesrv=namesrv, **options)
    consumer.subscribe(TOPIC)
    consumer.register_listener(listener)
    consumer.start()
    return consumer


def test_committed_offsets_survive_a_kill_9_of_the_broker_tree(tmp_path):
    tree = BrokerTree(tmp_path / "store", properties={"defaultTopicQueueNums": QUEUES})
    restarted = None
    consumer = producer = None
    try:
        tree.start()
        create_topic(tree.namesrv_addr, TOPIC, QUEUES)
        # Given a consumer committing every 200 ms while a producer sends 100 msg/s
        consumed_before: list[bytes] = []
        consumer = start_consumer(tree.namesrv_addr, consumed_before,
                                  persist_consumer_offset_interval_ms=COMMIT_INTERVAL_MS)
        producer = Producer("durable-producer", namesrv=tree.namesrv_addr)
        producer.start()
        sampler = Sampler(tree.broker_addr)
        started, sent = time.monotonic(), 0
        while time.monotonic() - started < RUN_BEFORE_KILL_S:
            producer.send(Message(TOPIC, f"d{sent}".encode()))
            sent += 1
            time.sleep(max(0.0, started + sent / 100 - time.monotonic()))  # pacing at 100 msg/s
        # When every process of the broker tree is killed at once
        killed_at = time.monotonic()
        tree.kill_tree()
        sampler.stop()
        consumer.shutdown()  # its final commit cannot reach the dead broker
        producer.shutdown()
        before_kill, old_enough = sampler.samples[-1][1], sampler.at(killed_at - LOSS_WINDOW_S)
        assert sum(old_enough.values()) > 0, "no commit old enough to be persisted: run longer"
        # Then the restarted broker has every commit older than the loss window
        restarted = BrokerTree(tmp_path / "store", properties={"defaultTopicQueueNums": QUEUES},
                               port=tree.port, namesrv_port=tree.namesrv_port).start()
        client = RemotingClient()
        try:
            recovered = committed_offsets(client, restarted.broker_addr)
        finally:
            client.close()
        for queue_id in range(QUEUES):
            assert old_enough[queue_id] <= recovered[queue_id] <= before_kill[queue_id], (
                queue_id, old_enough, recovered, before_kill)
        # And a consumer of the group gets every message not consumed before, repeating only the rest
        with MQAdmin(restarted.namesrv_addr) as admin:
            max_offsets = {row["queue_id"]: row["max_offset"] for row in admin.topic_status(TOPIC)}
        consumed_after: list[bytes] = []
        consumer = start_consumer(restarted.namesrv_addr, consumed_after)
        expected_after = sum(max_offsets[q] - recovered[q] for q in range(QUEUES))
        wait_until(lambda: len(consumed_after) >= expected_after, 20, f"{expected_after} redeliveries")
        assert {f"d{i}".encode() for i in range(sent)} <= set(consumed_before) | set(consumed_after)
        repeated = set(consumed_before) & set(consumed_after)
        print(f"kill -9: {sent} sent, {len(repeated)} consumed again after the restart "
              f"({sum(before_kill.values()) - sum(recovered.values())} commits lost)")
        assert len(repeated) <= (LOSS_WINDOW_S + 1.0) * 100  # the lost commits and what was in flight
    finally:
        for client_object in (consumer, producer):
            if client_object is not None:
                client_object.shutdown()
        for broker in (restarted, tree):
            if broker is not None:
                broker.cleanup()
