"""Ring in one process: round trip, wrap-around, full, zero-length entries, kinds, bursts."""
from __future__ import annotations

import pytest

from shm import BrokerShm, Ring, open_broker_shm
from shm.segment import ShmError


def _pair(broker_shm, shm_path, name: str = "request") -> tuple[Ring, Ring, BrokerShm]:
    """(producer, consumer) on two attaches of the same segment, as two processes would have."""
    shm, eventfds = broker_shm
    consumer_side = open_broker_shm(shm_path, eventfds)
    return shm.rings[name], consumer_side.rings[name], consumer_side


def test_entries_round_trip_with_their_kinds_in_order(broker_shm, shm_path) -> None:
    producer, consumer, other = _pair(broker_shm, shm_path)
    payloads = [(7, b"hello"), (0, b"x" * 100), (2**32 - 2, b"\x00\xff" * 3)]
    for kind, payload in payloads:
        assert producer.put(payload, kind)
    assert [(kind, bytes(view)) for kind, view in consumer.entries()] == payloads
    consumer.release()
    assert consumer.entries() == [] and producer.depth_bytes() == 0
    other.close()


def test_zero_length_payloads_are_entries_too(broker_shm, shm_path) -> None:
    producer, consumer, other = _pair(broker_shm, shm_path)
    for kind in range(5):
        assert producer.put(b"", kind)
    got = consumer.entries()
    assert [(kind, len(view)) for kind, view in got] == [(k, 0) for k in range(5)]
    assert producer.depth_bytes() == 5 * 8
    other.close()


def test_committed_entries_stay_invisible_until_publish(broker_shm, shm_path) -> None:
    producer, consumer, other = _pair(broker_shm, shm_path)
    for i in range(3):
        producer.reserve(4)[:] = i.to_bytes(4, "little")
        producer.commit(i)
    assert consumer.entries() == [] and not consumer.ready()
    producer.publish()
    assert consumer.ready()
    assert [(kind, int.from_bytes(v, "little")) for kind, v in consumer.entries()] == [(0, 0), (1, 1), (2, 2)]
    other.close()


def test_full_ring_returns_none_until_the_consumer_releases(broker_shm, shm_path) -> None:
    producer, consumer, other = _pair(broker_shm, shm_path)
    entry = b"a" * 1000  # 1008 bytes per entry: four fit in 4096
    puts = [producer.put(entry) for _ in range(5)]
    assert puts == [True, True, True, True, False]
    assert producer.reserve(1000) is None
    assert len(consumer.entries()) == 4
    assert producer.reserve(1000) is None, "space is reused only after release()"
    consumer.release()
    assert producer.put(entry)
    other.close()


def test_entries_wrap_around_the_end_many_times_and_stay_contiguous(broker_shm, shm_path) -> None:
    producer, consumer, other = _pair(broker_shm, shm_path)
    seq = 0
    for _ in range(200):
        for size in (1, 700, 33, 2040, 0, 1500):
            payload = bytes([seq % 256]) * size
            assert producer.put(payload, seq)
            [(kind, view)] = consumer.entries()
            assert (kind, bytes(view)) == (seq, payload)
            consumer.release()
            seq += 1
    assert producer.depth_bytes() == 0
    assert producer._tail > 100 * producer.capacity  # positions are monotonic, not wrapped
    other.close()


def test_a_burst_that_fills_the_ring_then_drains_in_one_release(broker_shm, shm_path) -> None:
    producer, consumer, other = _pair(broker_shm, shm_path)
    count = 0
    while (view := producer.reserve(24)) is not None:
        view[:] = count.to_bytes(24, "little")
        producer.commit(count)
        count += 1
    producer.publish()
    assert count == 4096 // 32
    got = consumer.entries()
    assert [int.from_bytes(v, "little") for _, v in got] == list(range(count))
    consumer.release()
    assert producer.depth_bytes() == 0
    other.close()


def test_an_entry_over_half_the_capacity_is_refused(broker_shm) -> None:
    producer = broker_shm[0].rings["request"]
    assert producer.max_payload == 4096 // 2 - 8
    assert producer.reserve(producer.max_payload) is not None
    with pytest.raises(ValueError, match="max_payload"):
        producer.reserve(producer.max_payload + 1)


def test_commit_without_reserve_is_an_error(broker_shm) -> None:
    with pytest.raises(ShmError, match="without a successful reserve"):
        broker_shm[0].rings["ack"].commit()


def test_a_restarted_consumer_sees_unreleased_entries_again(broker_shm, shm_path) -> None:
    producer, consumer, other = _pair(broker_shm, shm_path)
    producer.put(b"one")
    assert len(consumer.entries()) == 1
    other.close()  # consumer dies without release()
    again = open_broker_shm(shm_path, broker_shm[1])
    assert [bytes(v) for _, v in again.rings["request"].entries()] == [b"one"]
    again.close()


def test_a_restarted_producer_continues_after_the_published_tail(broker_shm, shm_path) -> None:
    producer, consumer, other = _pair(broker_shm, shm_path)
    producer.put(b"first")
    restarted = open_broker_shm(shm_path, broker_shm[1])
    restarted.rings["request"].put(b"second")
    assert [bytes(v) for _, v in consumer.entries()] == [b"first", b"second"]
    restarted.close()
    other.close()


def test_readonly_ring_reports_depth_but_cannot_wait(shm_path, broker_shm) -> None:
    from shm import attach_readonly
    broker_shm[0].rings["park"].put(b"12345678")
    reader = attach_readonly(shm_path)
    try:
        assert reader.rings["park"].depth_bytes() == 16
        with pytest.raises(ShmError, match="no eventfd"):
            reader.rings["park"].wait(0.001)
    finally:
        reader.close()
