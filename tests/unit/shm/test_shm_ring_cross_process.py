"""Ring between two real processes, hypothesis-driven: no loss, no duplicate, no reordering, same bytes.

One consumer process (shm_peer.py verify-consumer) is started per test and checks every entry it
gets against expected_payload(seq, len) and kind == seq; hypothesis streams many scenarios (payload
sizes from 0 to max_payload, burst sizes, put() or reserve/commit) through it from this process.
"""
from __future__ import annotations

import os
import subprocess
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shm import Ring
from tests.helpers import wait_until

MAX_PAYLOAD = 4096 // 2 - 8  # conftest.SMALL_RINGS["request"] = 4096
SIZES = st.one_of(st.integers(0, 16), st.integers(0, 256), st.integers(0, MAX_PAYLOAD))
BURSTS = st.lists(st.lists(SIZES, min_size=1, max_size=40), min_size=1, max_size=12)


class _Producer:
    """Producer side with bounded back-off while the ring is full (the consumer frees space)."""

    def __init__(self, ring: Ring, consumer: subprocess.Popen, peers, timeout_s: float) -> None:
        self.ring, self.consumer, self.peers = ring, consumer, peers
        self.deadline = time.monotonic() + timeout_s
        self.entries = self.bytes = 0

    def check_alive(self) -> None:
        assert self.consumer.poll() is None, self.peers.stderr_of(self.consumer)
        assert time.monotonic() < self.deadline, "ring stayed full: consumer stuck?"

    def reserve(self, size: int) -> memoryview:
        view = self.ring.reserve(size)
        if view is None:
            self.ring.publish()  # let the consumer see what is committed so it can free space
        while view is None:
            self.check_alive()
            os.sched_yield()
            view = self.ring.reserve(size)
        return view

    def put(self, payload: bytes, kind: int) -> None:
        self.ring.publish()
        while not self.ring.put(payload, kind):
            self.check_alive()
            os.sched_yield()

    def send(self, payload: bytes, use_put: bool) -> None:
        kind = self.entries & 0xFFFFFFFF
        if use_put:
            self.put(payload, kind)
        else:
            self.reserve(len(payload))[:] = payload
            self.ring.commit(kind)
        self.entries += 1
        self.bytes += len(payload)


@pytest.mark.timeout(90)
def test_entries_cross_processes_without_loss_duplication_reordering_or_damage(
        broker_shm, shm_path, peers, peer_lib) -> None:
    # Given a consumer process verifying every entry of the "request" ring
    shm, eventfds = broker_shm
    positions = shm.positions
    assert shm.rings["request"].max_payload == MAX_PAYLOAD
    consumer = peers.start("verify-consumer", shm_path, eventfds, 60)
    producer = _Producer(shm.rings["request"], consumer, peers, timeout_s=40)

    # When hypothesis streams bursts of random sizes through the ring
    @settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(bursts=BURSTS, use_put=st.booleans())
    def stream(bursts: list[list[int]], use_put: bool) -> None:
        for burst in bursts:
            for size in burst:
                producer.send(peer_lib.expected_payload(producer.entries, size), use_put and size % 3 == 0)
            producer.ring.publish()
        # Then the consumer has verified exactly what was sent
        wait_until(lambda: positions.pull_messages_total == producer.entries or consumer.poll() is not None,
                   10.0, "consumer caught up")
        assert consumer.poll() is None, peers.stderr_of(consumer)
        assert positions.put_bytes_total == producer.bytes

    stream()
    assert shm.rings["request"].put(b"", peer_lib.STOP_KIND)
    assert consumer.wait(timeout=10) == 0, peers.stderr_of(consumer)
    assert producer.entries > 1000 and shm.rings["request"].depth_bytes() == 0
