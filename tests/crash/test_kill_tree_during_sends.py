"""kill -9 of the whole broker tree during sends: every SEND_OK message survives the restart."""

from __future__ import annotations

import threading
import time

import pytest

from rmqd.client import LitePullConsumer, Message, Producer, SendStatus
from rmqd.errors import ClientError
from tests.broker_harness import BrokerTree
from tests.helpers import wait_until

pytestmark = pytest.mark.crash

TOPIC = "CrashOrders"


def _sender(namesrv: str, acked: list[str], stop: threading.Event, worker: int) -> None:
    producer = Producer(f"crash-producer-{worker}", namesrv=namesrv)
    producer.start()
    try:
        seq = 0
        while not stop.is_set():
            body = f"{worker}-{seq}".encode()
            seq += 1
            try:
                result = producer.send(Message(TOPIC, body), timeout_ms=1000)
            except ClientError:
                continue  # the broker is gone: not acknowledged, so not expected
            if result.status is SendStatus.SEND_OK:
                acked.append(body.decode())
    finally:
        producer.shutdown()


def _read_everything(namesrv: str, expected: set[str], timeout_s: float) -> tuple[set[str], int]:
    consumer = LitePullConsumer("crash-checker", namesrv=namesrv)
    consumer.subscribe(TOPIC, "*")
    consumer.start()
    seen: set[str] = set()
    duplicates = 0
    deadline = time.monotonic() + timeout_s
    try:
        while not expected <= seen and time.monotonic() < deadline:
            for msg in consumer.poll(timeout_ms=500):
                body = msg.body.decode()
                duplicates += body in seen
                seen.add(body)
    finally:
        consumer.shutdown()
    return seen, duplicates


@pytest.mark.parametrize("flush", ["ASYNC_FLUSH", "SYNC_FLUSH"])
def test_acknowledged_messages_survive_kill_9_of_the_whole_tree(tmp_path, flush):
    tree = BrokerTree(tmp_path / "store", flush=flush, properties={"defaultTopicQueueNums": 4})
    try:
        # Given a broker under load from 4 synchronous producers
        tree.start()
        acked: list[str] = []
        stop = threading.Event()
        senders = [
            threading.Thread(target=_sender, args=(tree.namesrv_addr, acked, stop, w)) for w in range(4)
        ]
        for thread in senders:
            thread.start()
        wait_until(lambda: len(acked) >= 3000, 60, "3000 acknowledged sends")
        # When the whole process tree is killed with SIGKILL mid-stream
        tree.kill_tree()
        stop.set()
        for thread in senders:
            thread.join(30)
        acknowledged = set(acked)
        # And the broker is started again with the same command
        tree.start()
        # Then abnormal recovery ran and every acknowledged message is readable
        assert "abnormal recovery" in tree.output()
        seen, duplicates = _read_everything(tree.namesrv_addr, acknowledged, timeout_s=120)
        lost = acknowledged - seen
        print(
            f"{flush}: acknowledged {len(acknowledged)}, read {len(seen)}, lost {len(lost)}, "
            f"duplicates {duplicates}"
        )
        assert not lost, f"{len(lost)} acknowledged messages lost, e.g. {sorted(lost)[:5]}"
    finally:
        tree.cleanup()
