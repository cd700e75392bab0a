"""Writer and dispatcher driven by hand (setup + run_once, no processes), as rq's burst mode."""

from __future__ import annotations

import os
import uuid

import pytest

from rmqd.broker import send as send_logic
from rmqd.config import BrokerConfig
from rmqd.store import append_request as ar
from rmqd.store import record as rec
from rmqd.store.consume_queue import ConsumeQueueStore
from shm import create_broker_shm, flags
from workers.dispatcher import Dispatcher
from workers.writer import Writer

STORE_HOST = rec.encode_host("127.0.0.1", 10911)


@pytest.fixture
def broker_parts(tmp_path):
    cfg = BrokerConfig.load(
        overrides={
            "storePathRootDir": str(tmp_path / "store"),
            "mappedFileSizeCommitLog": "65536",
            "mappedFileSizeConsumeQueue": "2000",
        }
    )
    os.makedirs(cfg.store_dir)
    path = f"/dev/shm/rmqd-test-{uuid.uuid4().hex[:12]}"
    shm, _fds = create_broker_shm(
        path, {"request": 1 << 20, "ack": 1 << 16, "park": 1 << 12, "wake": 1 << 12, "arrival": 1 << 12}
    )
    try:
        yield cfg, shm
    finally:
        shm.close(close_eventfds=True)
        os.unlink(path)


def _put_send(shm, request_id: int, body: bytes, queue_id: int = 0, topic: str = "Orders") -> None:
    fields = {
        "topic": topic,
        "queueId": queue_id,
        "properties": rec.encode_properties({"TAGS": "A"}).decode(),
    }
    prepared = send_logic.prepare_send(
        fields, memoryview(body), batch=False, write_queue_nums=8, max_message_size=1 << 20
    )
    ring = shm.rings["request"]
    view = ring.reserve(prepared.entry_size())
    send_logic.encode_into(view, request_id, prepared, STORE_HOST)
    ring.commit(0)


def _acks(shm) -> list[ar.AppendResult]:
    ring = shm.rings["ack"]
    results = [ar.decode_append_result(entry) for _kind, entry in ring.entries()]
    ring.release()
    return results


def test_writer_appends_a_group_and_acks_each_request_with_queue_offsets(broker_parts):
    cfg, shm = broker_parts
    writer = Writer(cfg, shm)
    writer.setup()
    # Given five requests in the ring, across two queues, large enough to roll a 64 KiB file
    for i in range(5):
        _put_send(shm, 100 + i, bytes([i]) * 20_000, queue_id=i % 2)
    shm.rings["request"].publish()
    # When the writer runs once
    assert writer.run_once() is True
    # Then it publishes write_pos once and acks every request with per-queue offsets
    results = _acks(shm)
    assert [r.request_id for r in results] == [100, 101, 102, 103, 104]
    assert all(r.status is ar.PutStatus.PUT_OK for r in results)
    assert [r.queue_offset for r in results] == [0, 0, 1, 1, 2]
    assert shm.positions.write_pos == writer.commit_log.write_pos == results[-1].end_phy_offset
    assert shm.positions.put_messages_total == 5
    assert writer.run_once() is False
    record = writer.commit_log.read_record(results[3].phy_offsets[0])
    assert (record.body, record.queue_id, record.queue_offset) == (bytes([3]) * 20_000, 1, 1)


def test_writer_refuses_sends_while_the_disk_is_flagged_full(broker_parts):
    cfg, shm = broker_parts
    writer = Writer(cfg, shm)
    writer.setup()
    shm.positions.set_cleaner_flags(flags.NOT_WRITABLE_DISK_FULL)
    _put_send(shm, 1, b"x")
    shm.rings["request"].publish()
    writer.run_once()
    assert [r.status for r in _acks(shm)] == [ar.PutStatus.SERVICE_NOT_AVAILABLE]
    assert shm.positions.write_pos == 0


def test_dispatcher_builds_consume_queue_units_and_announces_arrivals(broker_parts):
    cfg, shm = broker_parts
    writer = Writer(cfg, shm)
    writer.setup()
    for i in range(6):
        _put_send(shm, i, bytes([i]) * 15_000, queue_id=i % 3)
    shm.rings["request"].publish()
    writer.run_once()
    dispatcher = Dispatcher(cfg, shm)
    dispatcher.setup()
    assert dispatcher.run_once() is True
    assert shm.positions.dispatch_pos == shm.positions.write_pos
    cq_store = ConsumeQueueStore(cfg.store_dir, cfg.mappedFileSizeConsumeQueue, readonly=True)
    assert [cq_store.get("Orders", q).max_offset() for q in range(3)] == [2, 2, 2]
    arrivals = shm.rings["arrival"].entries()
    assert len(arrivals) == 3
    dispatcher.teardown()
    assert shm.positions.cq_flush_pos == shm.positions.dispatch_pos
