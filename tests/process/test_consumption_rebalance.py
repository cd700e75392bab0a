"""Rebalance of a consumer group while messages flow: joins, a graceful leave, a SIGKILL.

Each consumer is its own OS process (this module run as `python -m tests.process.test_consumption_rebalance
child ...`) so that one can be killed with SIGKILL. A child prints one line per event on stdout:
`OWN <queue ids>` whenever its assignment() changes (polled every 5 ms) and `MSG <body>` for every
message its listener gets; it shuts down gracefully when its stdin says STOP.

The broker's notice of a membership change is when GET_CONSUMER_LIST_BY_GROUP starts answering
the new list (polled every 20 ms); from then on, every queue must have exactly one live owner
within 2 s. A producer sends 200 msg/s throughout; at the end every acknowledged message must
have been received, and every duplicate must be a second delivery made around a change.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import pytest

from rmqd.client import ConsumeStatus, Message, Producer, PushConsumer
from rmqd.client._remoting import RemotingClient
from rmqd.protocol import RequestCode, ResponseCode, decode_json_body
from tests.broker_harness import REPO_ROOT, BrokerTree
from tests.helpers import wait_until
from tests.process.test_consumption import create_topic

pytestmark = pytest.mark.process

TOPIC = "Rebalance"
GROUP = "rebalance-group"
QUEUE_COUNT = 16
SEND_RATE_PER_S = 200
CONVERGE_S = 2.0  # every queue has exactly one owner this long after the broker's notice
CHANNEL_EXPIRED_MS = 4000  # the broker forgets a silent (killed) consumer after this
HEARTBEAT_MS = 500


# ---------------------------------------------------------------- the child consumer process

def child_main(namesrv: str) -> None:
    """A push consumer reporting its ownership and messages on stdout (see the module docstring)."""
    out_lock = threading.Lock()

    def emit(line: str) -> None:
        with out_lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def listener(messages: list) -> ConsumeStatus:
        for message in messages:
            emit(f"MSG {message.body.decode()}")
        return ConsumeStatus.CONSUME_SUCCESS

    consumer = PushConsumer(GROUP, namesrv=namesrv, heartbeat_broker_interval_ms=HEARTBEAT_MS)
    consumer.subscribe(TOPIC, "*")
    consumer.register_listener(listener)
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
    consumer.start()
    emit(f"READY {consumer.client_id}")
    owned = None
    while not stop.wait(0.005):
        now_owned = [queue.queue_id for queue in consumer.assignment()]
        if now_owned != owned:
            owned = now_owned
            emit("OWN " + ",".join(map(str, owned)))
    consumer.shutdown()
    emit("OWN ")
    emit("STOPPED")


# ---------------------------------------------------------------- the test's view of a child

@dataclass
class Child:
    name: str
    process: subprocess.Popen
    client_id: str = ""
    owned: frozenset[int] = frozenset()
    received: list[tuple[float, str]] = field(default_factory=list)
    stopped: bool = False

    def read(self) -> None:
        for line in self.process.stdout:
            kind, _, rest = line.rstrip("\n").partition(" ")
            if kind == "MSG":
                self.received.append((time.monotonic(), rest))
            elif kind == "OWN":
                self.owned = frozenset(int(q) for q in rest.split(",") if q)
            elif kind == "READY":
                self.client_id = rest
            elif kind == "STOPPED":
                self.stopped = True


def start_child(name: str, namesrv: str) -> Child:
    env = {**os.environ, "PYTHONPATH": REPO_ROOT, "RMQD_LOG_LEVEL": "WARNING"}
    command = [sys.executable, "-m", "tests.process.test_consumption_rebalance", "child", namesrv]
    process = subprocess.Popen(command,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
                               cwd=REPO_ROOT, env=env)
    child = Child(name, process)
    threading.Thread(target=child.read, daemon=True).start()
    wait_until(lambda: child.client_id or process.poll() is not None, 30, f"consumer {name} to start")
    assert child.client_id, f"consumer {name} exited with {process.returncode}"
    return child


class Producing:
    """A thread sending SEND_RATE_PER_S messages per second; `acked` holds the bodies the broker took."""

    def __init__(self, namesrv: str) -> None:
        self.producer = Producer("rebalance-producer", namesrv=namesrv)
        self.producer.start()
        self.acked: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        started, seq = time.monotonic(), 0
        while not self._stop.is_set():
            body = f"m{seq}"
            self.producer.send(Message(TOPIC, body.encode()))
            self.acked.append(body)
            seq += 1
            self._stop.wait(max(0.0, started + seq / SEND_RATE_PER_S - time.monotonic()))  # pacing

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.producer.shutdown()


@dataclass
class Change:
    what: str
    noticed_at: float
    converged_at: float


def broker_consumer_ids(client: RemotingClient, broker_addr: str) -> set[str]:
    response = client.invoke(broker_addr, RequestCode.GET_CONSUMER_LIST_BY_GROUP, {"consumerGroup": GROUP})
    if response.code != ResponseCode.SUCCESS:
        return set()
    return set(decode_json_body(response.body)["consumerIdList"])


def await_change(what: str, client: RemotingClient, broker_addr: str, live: list[Child],
                 timeout_s: float) -> Change:
    """Wait for the broker's notice that the group is exactly `live`, then for one owner per queue."""
    expected = {child.client_id for child in live}
    wait_until(lambda: broker_consumer_ids(client, broker_addr) == expected, timeout_s,
               f"the broker to notice: {what}")
    noticed_at = time.monotonic()

    def one_owner_each() -> bool:
        owners = Counter(queue for child in live for queue in child.owned)
        return sorted(owners) == list(range(QUEUE_COUNT)) and set(owners.values()) == {1}

    wait_until(one_owner_each, CONVERGE_S,
               f"every queue to have exactly one owner within {CONVERGE_S} s of the notice ({what}): "
               f"{ {child.name: sorted(child.owned) for child in live} }")
    return Change(what, noticed_at, time.monotonic())


# ---------------------------------------------------------------- the test

@pytest.fixture
def broker(tmp_path):
    with BrokerTree(tmp_path / "store", properties={"channelExpiredTimeout": CHANNEL_EXPIRED_MS}) as tree:
        yield tree


@pytest.fixture
def children():
    started: list[Child] = []
    yield started
    for child in started:  # whatever happened, no consumer process outlives the test
        if child.process.poll() is None:
            child.process.kill()
        child.process.wait(10)


def stop_child(child: Child) -> None:
    child.process.stdin.write("STOP\n")
    child.process.stdin.flush()


def duplicates_of(children: list[Child]) -> list[tuple[str, float]]:
    """(body, time) of every delivery after a message's first one."""
    first_seen: set[str] = set()
    duplicates = []
    for at, body in sorted(entry for child in children for entry in child.received):
        if body in first_seen:
            duplicates.append((body, at))
        first_seen.add(body)
    return duplicates


def test_queues_have_one_owner_after_every_change_and_no_message_is_lost(broker, children):
    # Given a 16-queue topic and a producer sending 200 msg/s
    create_topic(broker.namesrv_addr, TOPIC, QUEUE_COUNT)
    client = RemotingClient()
    producing = Producing(broker.namesrv_addr)
    changes: list[Change] = []
    try:
        # When consumers join one by one,
        for name in ("A", "B", "C"):
            children.append(start_child(name, broker.namesrv_addr))
            changes.append(await_change(f"{name} joined", client, broker.broker_addr, children, 30))
        a, b, c = children
        # one leaves gracefully,
        stop_child(b)
        changes.append(await_change("B left", client, broker.broker_addr, [a, c], 30))
        wait_until(lambda: b.stopped, 15, "B to stop")
        # and one is killed (the broker notices when its heartbeats stop: channelExpiredTimeout)
        c.process.kill()
        changes.append(await_change("C was killed", client, broker.broker_addr, [a], 30))
        assert a.owned == frozenset(range(QUEUE_COUNT))
    finally:
        producing.stop()
        client.close()
    # Then every acknowledged message is received,
    wait_until(lambda: set(producing.acked) <= {body for child in children for _at, body in child.received},
               30, "every acknowledged message to be received")
    stop_child(a)
    wait_until(lambda: a.stopped, 15, "A to stop")
    # and duplicates are second deliveries made around a change, counted
    duplicates = duplicates_of(children)
    outside = [(body, at) for body, at in duplicates
               if not any(change.noticed_at - 1.0 <= at <= change.converged_at + CONVERGE_S
                          for change in changes)]
    converged_ms = ", ".join(f"{c.what} {1000 * (c.converged_at - c.noticed_at):.0f} ms" for c in changes)
    sys.stderr.write(f"rebalance: {len(producing.acked)} messages sent, {len(duplicates)} duplicates "
                     f"({len(outside)} away from the changes); one owner per queue after: {converged_ms}\n")
    assert outside == [], f"duplicates far from any change: {outside[:10]}"
    # the SIGKILL repeats at most what C consumed in the 5 s before its last commit; joins and leaves few
    assert len(duplicates) <= 6 * SEND_RATE_PER_S, f"{len(duplicates)} duplicates"


if __name__ == "__main__" and sys.argv[1:2] == ["child"]:
    child_main(sys.argv[2])
