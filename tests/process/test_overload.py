"""Overload at the client/broker boundary (issue 4, Done-when 4, the functional part).

A broker with a tiny front -> writer request ring (4 KiB: three 1 KiB sends) is offered far more
than it can take, by a flood of async sends and by pausing its writer (SIGSTOP). Sends must get
SYSTEM_BUSY answers at once (never time out, never crash a process), every acknowledged message must
be stored, and the broker must serve normally as soon as the load stops. The 30 s run at 3x
capacity with an RSS bound is `loadtest/bench.py`'s job; this is the short functional version.
"""

from __future__ import annotations

import collections
import os
import signal
import time
from concurrent.futures import Future

import pytest

from rmqd.client import ConsumeFromWhere, LitePullConsumer, Message, Producer, SendStatus
from rmqd.errors import MQBrokerError
from rmqd.protocol import ResponseCode
from tests.broker_harness import BROKER_PROCESSES, BrokerTree
from tests.helpers import wait_until

pytestmark = pytest.mark.process

BODY = b"o" * 1024
FLOOD = 12_000


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    with BrokerTree(tmp_path_factory.mktemp("overload") / "store",
                      properties={"shmRequestRingBytes": 4096, "defaultTopicQueueNums": 4}) as tree:
        yield tree


def core_pids(broker: BrokerTree) -> dict[str, int]:
    """PIDs of the supervisor and the broker processes (a restart after a crash would change one)."""
    return {name: pid for name, pid in broker.pids().items() if name in {*BROKER_PROCESSES, "supervisor"}}


def outcome(future: Future) -> str:
    """"ok", "busy" (SYSTEM_BUSY) or the error's type and code, waiting for the future's end."""
    error = future.exception(timeout=30)
    if error is None:
        return "ok"
    if isinstance(error, MQBrokerError) and error.code == ResponseCode.SYSTEM_BUSY:
        return "busy"
    return f"{type(error).__name__}:{getattr(error, 'code', '')}"


def stored_count(broker: BrokerTree, topic: str, expected: int) -> int:
    """How many messages a fresh group reads from `topic` (stops once `expected` arrived or 30 s)."""
    consumer = LitePullConsumer(f"cg-{topic}", namesrv=broker.namesrv_addr,
                                consume_from=ConsumeFromWhere.FIRST_OFFSET, pull_batch_size=256)
    consumer.subscribe(topic, "*")
    consumer.start()
    count = 0
    deadline = time.monotonic() + 30
    try:
        while count < expected and time.monotonic() < deadline:
            count += len(consumer.poll(timeout_ms=500))
        count += len(consumer.poll(timeout_ms=200))  # anything beyond `expected` would show here
    finally:
        consumer.shutdown()
    return count


def serves_normally(producer: Producer, topic: str, count: int = 100) -> list[float]:
    """Send `count` messages synchronously with no retry; every one must be SEND_OK. Returns latencies."""
    latencies = []
    for _ in range(count):
        started = time.monotonic()
        assert producer.send(Message(topic, BODY)).status is SendStatus.SEND_OK
        latencies.append(time.monotonic() - started)
    return latencies


def test_a_flood_far_above_capacity_gets_system_busy_and_the_broker_serves_right_after(broker):
    pids_before = core_pids(broker)
    with Producer("flood", namesrv=broker.namesrv_addr, retry_times_when_send_async_failed=0,
                  retry_times_when_send_failed=0, back_pressure_for_async_send_num=FLOOD) as p:
        p.send(Message("Flood", b"route"))
        started = time.monotonic()
        futures = [p.send_async(Message("Flood", BODY), timeout_ms=10_000) for _ in range(FLOOD)]
        outcomes = collections.Counter(outcome(f) for f in futures)
        flood_s = time.monotonic() - started
        # The moment the flood is over, the broker answers every send at once.
        latencies = serves_normally(p, "Flood")
    assert set(outcomes) == {"ok", "busy"}, outcomes  # no timeout, no other error
    assert outcomes["busy"] >= FLOOD // 10 and outcomes["ok"] >= 100, outcomes
    assert flood_s < 10, f"{FLOOD} answers took {flood_s:.1f} s"  # busy answers come at once
    assert max(latencies) < 1.0 and sorted(latencies)[50] < 0.05
    assert core_pids(broker) == pids_before  # nothing crashed or was restarted
    acknowledged = outcomes["ok"] + 1 + 100
    assert stored_count(broker, "Flood", acknowledged) == acknowledged  # every SEND_OK was stored, once


def test_a_paused_writer_makes_new_sends_busy_at_once_and_the_waiting_ones_complete_after(broker):
    pids = core_pids(broker)
    with Producer("paused", namesrv=broker.namesrv_addr, retry_times_when_send_async_failed=0) as p:
        p.send(Message("Paused", b"route"))
        os.kill(pids["writer"], signal.SIGSTOP)
        try:
            started = time.monotonic()
            futures = [p.send_async(Message("Paused", BODY), timeout_ms=10_000) for _ in range(300)]
            wait_until(lambda: sum(f.done() for f in futures) >= 290, 5, "busy answers to the paused writer")
            busy_s = time.monotonic() - started
        finally:
            os.kill(pids["writer"], signal.SIGCONT)
        outcomes = collections.Counter(outcome(f) for f in futures)
        latencies = serves_normally(p, "Paused", 20)
    assert busy_s < 5 and set(outcomes) == {"ok", "busy"} and outcomes["busy"] >= 290, outcomes
    assert 1 <= outcomes["ok"] <= 10  # the sends already in the ring were stored once the writer resumed
    assert max(latencies) < 1.0
    assert core_pids(broker) == pids


def test_sync_send_retries_a_busy_real_broker_and_reports_busy_within_its_budget(broker):
    pids = core_pids(broker)
    with Producer("retrying", namesrv=broker.namesrv_addr, retry_times_when_send_async_failed=0) as p:
        p.send(Message("Retrying", b"route"))
        attempts: list[str] = []  # addresses of the synchronous requests the producer makes
        real_invoke = p._remoting.invoke

        def counting_invoke(addr, *args, **kwargs):
            attempts.append(addr)
            return real_invoke(addr, *args, **kwargs)

        p._remoting.invoke = counting_invoke
        os.kill(pids["writer"], signal.SIGSTOP)
        try:
            fillers = [p.send_async(Message("Retrying", BODY), timeout_ms=10_000) for _ in range(20)]
            wait_until(lambda: sum(f.done() for f in fillers) >= 10, 5, "the request ring to fill")
            started = time.monotonic()
            with pytest.raises(MQBrokerError) as info:
                p.send(Message("Retrying", BODY))  # 1 + retry_times_when_send_failed (2) attempts
            elapsed = time.monotonic() - started
        finally:
            os.kill(pids["writer"], signal.SIGCONT)
        assert info.value.code == ResponseCode.SYSTEM_BUSY and attempts == [broker.broker_addr] * 3
        assert elapsed < 1.0  # three busy answers, not a 3 s timeout
        # The resumed writer first drains the full ring: until then a send may still be refused
        # (its three attempts go out within microseconds, with no back-off, as in RocketMQ).
        wait_until(lambda: all(f.done() for f in fillers), 10, "the resumed writer to drain the ring")
        assert p.send(Message("Retrying", BODY)).status is SendStatus.SEND_OK
