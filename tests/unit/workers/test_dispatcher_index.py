"""The dispatcher builds the IndexFile next to the ConsumeQueues (setup + run_once, no processes)."""

from __future__ import annotations

import errno
import os
import time
import uuid

import pytest

from rmqd.broker import send as send_logic
from rmqd.config import BrokerConfig
from rmqd.store import record as rec
from rmqd.store.checkpoint import Checkpoint, CheckpointData
from rmqd.store.index_file import IndexService
from rmqd.store.mapped_file import MappedFile
from rmqd.store.verify import verify_store
from shm import create_broker_shm
from tests.helpers import wait_until
from workers import dispatcher as dispatcher_module
from workers.dispatcher import Dispatcher
from workers.writer import Writer

STORE_HOST = rec.encode_host("127.0.0.1", 10911)


def _config(tmp_path, index_enabled: bool = True) -> BrokerConfig:
    return BrokerConfig.load(overrides={
        "storePathRootDir": str(tmp_path / "store"),
        "mappedFileSizeCommitLog": "65536",
        "mappedFileSizeConsumeQueue": "2000",
        "messageIndexEnable": str(index_enabled).lower(),
        "maxHashSlotNum": "64",
        "maxIndexNum": "256",
    })


@pytest.fixture
def shm():
    path = f"/dev/shm/rmqd-test-{uuid.uuid4().hex[:12]}"
    segment, _fds = create_broker_shm(
        path, {"request": 1 << 20, "ack": 1 << 16, "park": 1 << 12, "wake": 1 << 12, "arrival": 1 << 12})
    try:
        yield segment
    finally:
        segment.close(close_eventfds=True)
        os.unlink(path)


def _write(cfg: BrokerConfig, shm, keys: list[str]) -> Writer:
    writer = Writer(cfg, shm)
    writer.setup()
    ring = shm.rings["request"]
    for i, key in enumerate(keys):
        props = rec.encode_properties({"KEYS": key, "UNIQ_KEY": f"UNIQ{i:04d}"}).decode()
        prepared = send_logic.prepare_send({"topic": "Orders", "queueId": i % 2, "properties": props},
                                           memoryview(b"x" * 3000), batch=False, write_queue_nums=8,
                                           max_message_size=1 << 20)
        send_logic.encode_into(ring.reserve(prepared.entry_size()), i, prepared, STORE_HOST)
        ring.commit(0)
    ring.publish()
    writer.run_once()
    shm.rings["ack"].entries()
    shm.rings["ack"].release()
    return writer


def _query(cfg: BrokerConfig, key: str) -> list[int]:
    reader = IndexService(cfg.store_dir, max_hash_slots=64, max_index_count=256, readonly=True)
    try:
        return reader.query("Orders", key)
    finally:
        reader.close()


def test_dispatched_records_are_found_by_key_and_by_unique_key(tmp_path, shm):
    cfg = _config(tmp_path)
    os.makedirs(cfg.store_dir)
    _write(cfg, shm, [f"order-{i % 5}" for i in range(40)])  # 40 x 3 KB: rolls the 64 KiB CommitLog
    dispatcher = Dispatcher(cfg, shm)
    dispatcher.setup()
    assert dispatcher.run_once() is True
    assert len(_query(cfg, "order-3")) == 8
    assert len(_query(cfg, "UNIQ0007")) == 1
    dispatcher.teardown()


def test_cq_flush_pos_is_published_only_after_the_index_is_flushed(tmp_path, shm, monkeypatch):
    # Given a dispatcher with dispatched records and a spy on the flush thread's msyncs
    cfg = _config(tmp_path)
    os.makedirs(cfg.store_dir)
    _write(cfg, shm, ["a", "b", "c"])
    dispatcher = Dispatcher(cfg, shm)
    dispatcher.setup()
    dispatcher.run_once()
    index_paths = {index_file.mapped.path for index_file in dispatcher.index.files}
    seen_at_index_flush = []
    real_msync = dispatcher_module.msync_ranges

    def spy(ranges):
        if any(mapped.path in index_paths for mapped, _start, _end in ranges):
            seen_at_index_flush.append(shm.positions.cq_flush_pos)
        real_msync(ranges)

    monkeypatch.setattr(dispatcher_module, "msync_ranges", spy)
    # When the flush interval comes, the flush thread finishes, and the loop runs again
    dispatcher.next_cq_flush = 0.0
    dispatcher.run_once()
    wait_until(lambda: dispatcher.flush_job is not None and dispatcher.flush_job.done(), 10,
               "the flush thread's job to finish")
    assert shm.positions.cq_flush_pos == 0  # not before the loop saw the job done
    dispatcher.run_once()
    # Then the index was msynced while cq_flush_pos was still 0, and only then was it published
    assert seen_at_index_flush == [0]
    assert shm.positions.cq_flush_pos == shm.positions.dispatch_pos > 0
    dispatcher.teardown()


def test_a_restarted_dispatcher_re_indexes_from_the_checkpoint_exactly(tmp_path, shm):
    # Given a dispatcher killed past the checkpoint, between the two keys of its last record
    cfg = _config(tmp_path)
    os.makedirs(cfg.store_dir)
    writer = _write(cfg, shm, [f"order-{i % 4}" for i in range(12)])
    last_phy, last = list(writer.commit_log.iter_records(0, writer.commit_log.write_pos))[-1]
    first = Dispatcher(cfg, shm)
    first.setup()
    first.run_once()
    first.index.truncate_beyond(last_phy)
    first.index.put_key("Orders", "UNIQ0011", last_phy, last.store_timestamp_ms)
    first.index.flush()
    Checkpoint(cfg.checkpoint_path).store(CheckpointData())
    # When a new dispatcher starts (the supervisor restarts it alone)
    second = Dispatcher(cfg, shm)
    second.setup()
    second.run_once()
    # Then every key of every record is indexed exactly once
    assert [len(_query(cfg, f"order-{k}")) for k in range(4)] == [3, 3, 3, 3]
    assert _query(cfg, "UNIQ0011") == [last_phy]
    second.teardown()


def test_with_message_index_disabled_no_index_is_built(tmp_path, shm):
    cfg = _config(tmp_path, index_enabled=False)
    os.makedirs(cfg.store_dir)
    _write(cfg, shm, ["a"])
    dispatcher = Dispatcher(cfg, shm)
    dispatcher.setup()
    dispatcher.run_once()
    dispatcher.teardown()
    assert not os.path.exists(os.path.join(cfg.store_dir, "index")) or not os.listdir(
        os.path.join(cfg.store_dir, "index"))


def test_a_full_disk_pauses_dispatch_without_a_crash_and_it_resumes_exactly(tmp_path, shm, monkeypatch):
    # Given small index files (7 entries each: the index allocates a new file every 3.5 records)
    cfg = BrokerConfig.load(overrides={
        "storePathRootDir": str(tmp_path / "store"), "mappedFileSizeCommitLog": "65536",
        "mappedFileSizeConsumeQueue": "2000", "maxHashSlotNum": "4", "maxIndexNum": "8"})
    os.makedirs(cfg.store_dir)
    _write(cfg, shm, [f"order-{i}" for i in range(12)])
    # and a disk with no room for a second index file: record 3's second key needs one
    index_files: set[str] = set()
    disk = {"full": True}
    real_reserve = MappedFile.reserve

    def reserve(mapped, start, end):
        if "/index/" in mapped.path:
            index_files.add(mapped.path)
            if disk["full"] and len(index_files) > 1:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_reserve(mapped, start, end)

    monkeypatch.setattr(MappedFile, "reserve", reserve)
    dispatcher = Dispatcher(cfg, shm)
    dispatcher.setup()
    # When the dispatcher runs into the full disk
    dispatcher.run_once()
    # Then it pauses part-way instead of dying, and does not retry at once
    paused_at = shm.positions.dispatch_pos
    records = list(dispatcher.commit_log.iter_records(0, shm.positions.write_pos))
    assert paused_at == records[3][0] and dispatcher.retry_at > 0
    assert dispatcher.run_once() is False and shm.positions.dispatch_pos == paused_at
    # And once there is room again it dispatches the rest: every key indexed exactly once
    disk["full"] = False
    dispatcher.retry_at = time.monotonic()
    assert dispatcher.run_once() is True and shm.positions.dispatch_pos == shm.positions.write_pos
    dispatcher.teardown()
    reader = IndexService(cfg.store_dir, max_hash_slots=4, max_index_count=8, readonly=True)
    assert [len(reader.query("Orders", f"order-{i}")) for i in range(12)] == [1] * 12
    assert [len(reader.query("Orders", f"UNIQ{i:04d}")) for i in range(12)] == [1] * 12
    reader.close()
    assert verify_store(cfg.store_dir) == []


def test_the_flush_thread_syncs_a_mapping_closed_meanwhile_through_its_path(tmp_path, monkeypatch):
    # Given two mapped files the dispatcher's loop closed after handing their ranges over, one deleted
    kept, gone = (MappedFile.create(str(tmp_path / name), 8192, sparse=True) for name in ("kept", "gone"))
    kept.mv[0:4] = b"unit"
    for mapped in (kept, gone):
        mapped.close()
    os.unlink(gone.path)
    synced = []
    real_fdatasync = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")),
                                                     real_fdatasync(fd)))
    # When the flush thread's job runs over their ranges
    dispatcher_module.msync_ranges([(kept, 0, 8192), (gone, 0, 8192)])
    # Then the surviving file was fdatasync'ed by path and the deleted one skipped, without an error
    assert synced == [kept.path]
