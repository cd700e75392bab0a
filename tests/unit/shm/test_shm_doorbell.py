"""Doorbell: rings only a waiting consumer, wakes another process fast, never hangs."""
from __future__ import annotations

import os
import select
import statistics
import time

import pytest

from shm import open_broker_shm
from shm.doorbell import fence
from tests.helpers import wait_until


def _eventfd_pending(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


@pytest.fixture
def eventfd_writes(monkeypatch) -> list[int]:
    """Every os.eventfd_write call (fd), still performed."""
    calls: list[int] = []
    real = os.eventfd_write

    def counting(fd: int, value: int) -> None:
        calls.append(fd)
        real(fd, value)

    monkeypatch.setattr(os, "eventfd_write", counting)
    return calls


def test_ring_writes_no_eventfd_when_nobody_waits(broker_shm, eventfd_writes) -> None:
    shm, eventfds = broker_shm
    for _ in range(100):
        shm.doorbells["flush"].ring()
        assert shm.rings["request"].put(b"x")
        shm.rings["request"].entries()
        shm.rings["request"].release()
    assert eventfd_writes == []
    assert not _eventfd_pending(eventfds["flush"]) and not _eventfd_pending(eventfds["request"])


def test_ring_writes_the_eventfd_once_the_consumer_is_armed(broker_shm, shm_path, eventfd_writes) -> None:
    shm, eventfds = broker_shm
    consumer = open_broker_shm(shm_path, eventfds)
    try:
        consumer.doorbells["flush"].arm()
        assert shm.doorbells["flush"].is_waiting()
        shm.doorbells["flush"].ring()
        assert eventfd_writes == [eventfds["flush"]] and _eventfd_pending(eventfds["flush"])
        consumer.doorbells["flush"].disarm()
        assert not _eventfd_pending(eventfds["flush"]) and not shm.doorbells["flush"].is_waiting()
    finally:
        consumer.close()


def test_wait_returns_at_once_when_ready_without_touching_the_flag(broker_shm, eventfd_writes) -> None:
    doorbell = broker_shm[0].doorbells["dispatch"]
    started = time.monotonic()
    assert doorbell.wait(lambda: True, timeout_s=5.0) is True
    assert time.monotonic() - started < 1.0
    assert not doorbell.is_waiting()


def test_wait_times_out_false_and_clears_the_waiting_flag(broker_shm) -> None:
    doorbell = broker_shm[0].doorbells["dispatch"]
    started = time.monotonic()
    assert doorbell.wait(lambda: False, timeout_s=0.02) is False
    assert 0.015 <= time.monotonic() - started < 2.0
    assert not doorbell.is_waiting()


def test_a_stale_ring_is_drained_and_does_not_make_wait_lie(broker_shm) -> None:
    shm, eventfds = broker_shm
    os.eventfd_write(eventfds["flushed"], 3)  # e.g. left over from a previous wake-up
    assert shm.doorbells["flushed"].wait(lambda: False, timeout_s=0.01) is False
    assert not _eventfd_pending(eventfds["flushed"])


def test_ring_wait_in_the_same_process_sees_a_publish_from_another_attach(broker_shm, shm_path) -> None:
    shm, eventfds = broker_shm
    consumer = open_broker_shm(shm_path, eventfds)
    try:
        shm.rings["wake"].put(b"hi")
        assert consumer.rings["wake"].wait(timeout_s=1.0) is True
        assert consumer.rings["wake"].fileno() == eventfds["wake"]
    finally:
        consumer.close()


def test_fence_is_cheap_enough_for_every_publish() -> None:
    started = time.perf_counter()
    for _ in range(10_000):
        fence()
    assert (time.perf_counter() - started) / 10_000 < 20e-6


@pytest.mark.timeout(60)
def test_a_waiting_consumer_in_another_process_is_woken_by_ring_within_a_deadline(
        broker_shm, shm_path, peers) -> None:
    # Given a process blocked on the "dispatch" doorbell with a 5 s timeout per wait
    shm, eventfds = broker_shm
    rounds = 20
    proc = peers.start("doorbell-waiter", shm_path, eventfds, rounds)
    doorbell, positions = shm.doorbells["dispatch"], shm.positions
    latencies_ms = []
    for target in range(1, rounds + 1):
        wait_until(lambda: doorbell.is_waiting() or proc.poll() is not None, 20, "peer waiting")
        assert proc.poll() is None, proc.stderr.read().decode()
        # When we publish and ring
        rung_ns = time.monotonic_ns()
        positions.set_write_pos(target)
        doorbell.ring()
        # Then it wakes long before its own timeout
        wait_until(lambda t=target: positions.dispatch_pos == t, 2.0, f"peer woken for round {target}")
        latencies_ms.append((positions.cq_flush_pos - rung_ns) / 1e6)
    assert proc.wait(timeout=10) == 0
    assert max(latencies_ms) < 2000
    assert statistics.median(latencies_ms) < 100, latencies_ms
    print(f"wake-up latency p50 {statistics.median(latencies_ms):.3f} ms, max {max(latencies_ms):.3f} ms")
