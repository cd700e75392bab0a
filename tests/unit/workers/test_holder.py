"""Holder driven by hand (setup + run_once, no processes): park, wake on arrival, re-check, expire."""

from __future__ import annotations

import os
import time
import uuid

import pytest

from rmqd.broker.hold import (
    Arrival,
    ParkedPull,
    arrival_size,
    decode_parked_pull,
    encode_arrival,
    encode_parked_pull,
    parked_pull_size,
)
from rmqd.config import BrokerConfig
from rmqd.store.consume_queue import ConsumeQueueStore
from shm import create_broker_shm
from workers.holder import Holder

TOPIC = "Orders"


@pytest.fixture
def holder_parts(tmp_path):
    cfg = BrokerConfig.load(
        overrides={"storePathRootDir": str(tmp_path / "store"), "mappedFileSizeConsumeQueue": "2000"}
    )
    os.makedirs(cfg.store_dir)
    path = f"/dev/shm/rmqd-test-{uuid.uuid4().hex[:12]}"
    shm, _fds = create_broker_shm(
        path, {"request": 1 << 12, "ack": 1 << 12, "park": 1 << 12, "wake": 1 << 12, "arrival": 1 << 12}
    )
    cq_store = ConsumeQueueStore(cfg.store_dir, cfg.mappedFileSizeConsumeQueue, readonly=False)
    holder = Holder(cfg, shm)
    holder.setup()
    try:
        yield holder, shm, cq_store
    finally:
        cq_store.close_all()
        shm.close(close_eventfds=True)
        os.unlink(path)


def park(shm, queue_offset: int, *, queue_id: int = 0, timeout_ms: int = 15_000, tag: bytes = b"p") -> None:
    deadline_ms = int(time.time() * 1000) + timeout_ms
    pull = ParkedPull(queue_offset, deadline_ms, queue_id, TOPIC.encode(), b"id-" + tag, b"frame-" + tag)
    ring = shm.rings["park"]
    encode_parked_pull(ring.reserve(parked_pull_size(pull.topic, pull.identity, pull.frame)), pull)
    ring.commit(0)
    ring.publish()


def arrive(shm, max_offset: int, queue_id: int = 0) -> None:
    arrival = Arrival(TOPIC.encode(), queue_id, max_offset)
    ring = shm.rings["arrival"]
    encode_arrival(ring.reserve(arrival_size(arrival.topic)), arrival)
    ring.commit(0)
    ring.publish()


def woken(shm) -> list[bytes]:
    ring = shm.rings["wake"]
    frames = [decode_parked_pull(entry).frame for _kind, entry in ring.entries()]
    ring.release()
    return frames


def put_units(cq_store, queue_id: int, count: int, shm=None, *, publish: bool = True) -> None:
    """Write units as the dispatcher does, then (publish) move dispatch_pos past their records."""
    queue = cq_store.get(TOPIC, queue_id)
    start = queue.max_offset()
    for offset in range(start, start + count):
        queue.put(offset, 1000 + offset * 100, 100, 0)
    if publish and shm is not None:
        shm.positions.set_dispatch_pos(max(shm.positions.dispatch_pos, 1000 + (start + count) * 100))


def test_a_parked_pull_is_held_until_an_arrival_passes_its_offset(holder_parts):
    holder, shm, cq_store = holder_parts
    # Given a pull parked at offset 0 of an empty queue
    park(shm, 0)
    holder.run_once()
    assert woken(shm) == [] and holder.parked_count == 1
    # When an arrival for another queue comes, nothing happens; when its own queue grows, it wakes
    arrive(shm, 5, queue_id=1)
    holder.run_once()
    assert woken(shm) == []
    put_units(cq_store, 0, 1, shm)
    arrive(shm, 1)
    holder.run_once()
    assert woken(shm) == [b"frame-p"] and holder.parked_count == 0


def test_a_pull_parked_after_its_message_arrived_is_woken_by_the_recheck(holder_parts):
    holder, shm, cq_store = holder_parts
    # Given the dispatcher announced offset 0 BEFORE the front's pull reached the holder
    put_units(cq_store, 0, 1, shm)
    arrive(shm, 1)
    holder.run_once()
    park(shm, 0)
    # When the holder takes the parked pull, its re-check finds the unit already there
    holder.run_once()
    assert woken(shm) == [b"frame-p"] and holder.parked_count == 0


def test_an_expired_pull_is_handed_back_once(holder_parts):
    holder, shm, _cq_store = holder_parts
    park(shm, 0, timeout_ms=1)
    holder.run_once()
    time.sleep(0.005)  # let the 1 ms deadline pass
    holder.run_once()
    assert woken(shm) == [b"frame-p"]
    holder.run_once()
    assert woken(shm) == [] and holder.parked_count == 0


def test_pulls_stay_parked_while_the_wake_ring_is_full(holder_parts):
    holder, shm, cq_store = holder_parts
    # Given more parked pulls than the 4 KiB wake ring can hold at once
    for i in range(120):
        park(shm, 0, tag=str(i).encode())
        holder.run_once()
    put_units(cq_store, 0, 1, shm)
    arrive(shm, 1)
    # When the front drains the wake ring between rounds
    delivered: list[bytes] = []
    for _ in range(50):
        holder.run_once()
        delivered += woken(shm)
        if len(delivered) == 120:
            break
    # Then every pull is answered exactly once, none is lost
    assert sorted(delivered) == sorted(b"frame-" + str(i).encode() for i in range(120))
    assert holder.parked_count == 0


def test_a_parked_pull_is_not_woken_by_units_the_dispatcher_has_not_published(holder_parts):
    holder, shm, cq_store = holder_parts
    # Given a unit written to the ConsumeQueue, its dispatch position not yet published
    put_units(cq_store, 0, 1, shm, publish=False)
    # When a pull for that offset is parked
    park(shm, 0)
    holder.run_once()
    # Then it stays parked (the front could not serve it yet) ...
    assert woken(shm) == [] and holder.parked_count == 1
    # ... until the dispatcher publishes and announces it
    shm.positions.set_dispatch_pos(1000 + 100)
    arrive(shm, 1)
    holder.run_once()
    assert woken(shm) == [b"frame-p"] and holder.parked_count == 0
