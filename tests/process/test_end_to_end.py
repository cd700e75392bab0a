"""The walking skeleton end to end: `rmqd start`, Producer.send, LitePullConsumer, `rmqd stop`."""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import random
import time

import pytest

from rmqd.client import LitePullConsumer, Message, Producer, SendStatus
from rmqd.errors import MQClientError
from tests.broker_harness import BROKER_PROCESSES, BrokerTree
from tests.helpers import wait_until

pytestmark = pytest.mark.process

TOPICS = [f"E2E{i}" for i in range(4)]
QUEUES_PER_TOPIC = 8
MESSAGE_COUNT = int(os.environ.get("RMQD_E2E_MESSAGES", "100000"))


@pytest.fixture
def broker(tmp_path):
    with BrokerTree(
        tmp_path / "store",
        properties={"defaultTopicQueueNums": QUEUES_PER_TOPIC, "mappedFileSizeCommitLog": 64 << 20},
    ) as tree:
        yield tree


def _body(i: int) -> bytes:
    """1 B .. 64 KiB, log-uniform so that small and large bodies are both common."""
    rnd = random.Random(i)
    size = max(1, int(2 ** rnd.uniform(0, 16)))
    return rnd.randbytes(size)


def _digest(body: bytes, properties: dict[str, str]) -> str:
    user = {k: v for k, v in properties.items() if k.startswith("u-")}
    return hashlib.sha1(body + repr(sorted(user.items())).encode()).hexdigest()


def _send_all(producer: Producer, count: int) -> dict[tuple[str, int, int], str]:
    def send_range(start: int) -> dict[tuple[str, int, int], str]:
        sent = {}
        for i in range(start, count, 8):
            props = {"u-seq": str(i), "u-kind": "e2e"}
            msg = Message(TOPICS[i % 4], _body(i), tags=f"T{i % 3}", keys=[f"k{i}"], properties=props)
            result = producer.send(msg)
            assert result.status is SendStatus.SEND_OK
            key = (msg.topic, result.queue.queue_id, result.queue_offset)
            assert key not in sent
            sent[key] = _digest(msg.body, props)
        return sent

    sent: dict[tuple[str, int, int], str] = {}
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for part in pool.map(send_range, range(8)):
            sent.update(part)
    return sent


def _consume_all(
    namesrv: str, group: str, expected: int, timeout_s: float
) -> dict[tuple[str, int, int], str]:
    consumer = LitePullConsumer(group, namesrv=namesrv)
    for topic in TOPICS:
        consumer.subscribe(topic, "*")
    consumer.start()
    got: dict[tuple[str, int, int], str] = {}
    last_offset: dict[tuple[str, int], int] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) < expected and time.monotonic() < deadline:
            for msg in consumer.poll(timeout_ms=1000):
                queue = (msg.topic, msg.queue_id)
                assert msg.queue_offset == last_offset.get(queue, -1) + 1, f"out of order in {queue}"
                last_offset[queue] = msg.queue_offset
                got[(msg.topic, msg.queue_id, msg.queue_offset)] = _digest(msg.body, msg.properties)
            consumer.commit()
    finally:
        consumer.shutdown()
    return got


def test_every_sent_message_is_read_back_in_queue_order_by_two_groups(broker):
    # Given a running broker and 100,000 messages of 1 B .. 64 KiB over 4 topics x 8 queues
    producer = Producer("e2e-producer", namesrv=broker.namesrv_addr)
    producer.start()
    try:
        sent = _send_all(producer, MESSAGE_COUNT)
    finally:
        producer.shutdown()
    assert len(sent) == MESSAGE_COUNT
    assert len({(t, q) for t, q, _ in sent}) == len(TOPICS) * QUEUES_PER_TOPIC
    # When two consumer groups read everything
    for group in ("e2e-group-1", "e2e-group-2"):
        got = _consume_all(broker.namesrv_addr, group, MESSAGE_COUNT, timeout_s=300)
        # Then each group gets every message, byte-identical, in per-queue order
        assert got == sent, (
            f"{group}: {len(set(sent) - set(got))} missing, {len(set(got) - set(sent))} unexpected"
        )


def test_empty_body_is_rejected_with_a_clear_error(broker):
    producer = Producer("e2e-empty", namesrv=broker.namesrv_addr)
    producer.start()
    try:
        with pytest.raises(MQClientError, match="body"):
            producer.send(Message("E2E0", b""))
    finally:
        producer.shutdown()


def test_status_lists_every_process_and_stop_removes_the_abort_file(broker):
    # Given a running broker
    status = broker.status()
    names = {p["name"] for p in status["processes"]}
    assert set(BROKER_PROCESSES) | {"supervisor", "namesrv"} <= names
    assert all(p["alive"] for p in status["processes"])
    assert {"write_pos", "flush_pos", "dispatch_pos"} <= set(status["positions"])
    pids = [p["pid"] for p in status["processes"]]
    assert os.path.exists(os.path.join(broker.store_dir, "abort"))
    # When it is stopped with `rmqd stop`
    assert broker.stop() == 0
    # Then no process is left and the abort file is gone
    wait_until(
        lambda: not any(os.path.exists(f"/proc/{pid}") and _not_zombie(pid) for pid in pids),
        10,
        "every broker process to exit",
    )
    assert not os.path.exists(os.path.join(broker.store_dir, "abort"))


def _not_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
