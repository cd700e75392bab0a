"""Committed consumer offsets and created topics survive a clean restart and a kill -9 of the tree.

The front persists config/consumerOffset.json every flushConsumerOffsetInterval (5 s) and at stop,
and config/topics.json on every change, each tmp -> fsync -> rename with a .bak. So offsets
committed before a clean stop survive it, and offsets committed more than one interval before a
kill -9 survive that too (a crash may lose only the commits of the last interval).
"""

from __future__ import annotations

import json
import os

import pytest

from rmqd.client import LitePullConsumer, Message, Producer, SendStatus
from rmqd.client.admin import MQAdmin
from rmqd.message import MessageQueue
from tests.broker_harness import BrokerTree
from tests.helpers import wait_until

pytestmark = pytest.mark.crash

TOPIC = "OffsetsKept"
GROUP = "offsets-kept-group"
QUEUES = 4


def _send(namesrv: str, count: int) -> None:
    producer = Producer("offsets-producer", namesrv=namesrv)
    producer.start()
    try:
        for i in range(count):
            assert producer.send(Message(TOPIC, f"m{i}".encode())).status is SendStatus.SEND_OK
    finally:
        producer.shutdown()


def _commit(namesrv: str, offsets: dict[int, int]) -> None:
    """Commit `offsets` (queue id -> next offset) for GROUP through a LitePullConsumer."""
    consumer = LitePullConsumer(GROUP, namesrv=namesrv, auto_commit=False)
    consumer.start()
    try:
        queues = {MessageQueue(TOPIC, "broker-a", q): o for q, o in offsets.items()}
        consumer.assign(list(queues))
        for queue, offset in queues.items():
            consumer.seek(queue, offset)
        consumer.commit()
    finally:
        consumer.shutdown()


def _committed(namesrv: str) -> dict[int, int]:
    with MQAdmin(namesrv=namesrv) as admin:
        rows = admin.consumer_progress(GROUP, topic=TOPIC)
    return {row["queue_id"]: row["consumer_offset"] for row in rows if row["consumer_offset"] >= 0}


def _on_disk(store_dir: str) -> dict[int, int]:
    try:
        with open(os.path.join(store_dir, "config", "consumerOffset.json"), "rb") as f:
            table = json.load(f)["offsetTable"]
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return {int(q): o for q, o in table.get(f"{TOPIC}@{GROUP}", {}).items()}


def test_committed_offsets_and_topics_survive_a_clean_stop_and_a_kill_9(tmp_path):
    tree = BrokerTree(tmp_path / "store")
    try:
        # Given a created topic with messages and a group's committed offsets
        tree.start()
        with MQAdmin(namesrv=tree.namesrv_addr) as admin:
            admin.create_topic(TOPIC, QUEUES, QUEUES, broker_addr=tree.broker_addr)
        _send(tree.namesrv_addr, 40)
        first = {0: 3, 1: 5, 2: 7, 3: 9}
        _commit(tree.namesrv_addr, first)
        assert _committed(tree.namesrv_addr) == first
        # When the broker stops cleanly (right after the commit: the stop persists them) and starts
        assert tree.stop() == 0
        assert _on_disk(tree.store_dir) == first
        tree.start()
        # Then the offsets and the topic are still there
        assert _committed(tree.namesrv_addr) == first
        # Given newer offsets, older than one persist interval (on disk) when the tree is killed
        second = {0: 4, 1: 6, 2: 8, 3: 10}
        _commit(tree.namesrv_addr, second)
        wait_until(lambda: _on_disk(tree.store_dir) == second, 15, "the 5 s offset persist")
        assert os.path.exists(os.path.join(tree.store_dir, "config", "consumerOffset.json.bak"))
        tree.kill_tree()
        # When it starts again after the kill -9
        tree.start()
        assert "abnormal recovery" in tree.output()
        # Then the newer offsets and the topic survived
        assert _committed(tree.namesrv_addr) == second
        with MQAdmin(namesrv=tree.namesrv_addr) as admin:
            assert TOPIC in admin.topic_list()
            assert len(admin.topic_status(TOPIC)) == QUEUES
    finally:
        tree.cleanup()
