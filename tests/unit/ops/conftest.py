"""Fixtures of the operations tests: a private shm segment, fake positions and a small real store."""
from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from rmqd.config import BrokerConfig
from rmqd.store import record as rec
from rmqd.store.commit_log import CommitLog
from rmqd.store.consume_queue import ConsumeQueueStore
from rmqd.store.dispatch import dispatch_record_to_cq
from shm import BrokerShm, create_broker_shm

HOST = rec.encode_host("127.0.0.1", 10911)
SMALL_RINGS = {"request": 1 << 16, "ack": 1 << 16, "park": 4096, "wake": 4096, "arrival": 4096}
FILE_SIZE = 64 * 1024
CQ_FILE_SIZE = 50 * 20  # 50 units per ConsumeQueue file


@pytest.fixture
def ops_shm() -> Iterator[BrokerShm]:
    path = f"/dev/shm/rmqd-test-ops-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    shm, _fds = create_broker_shm(path, SMALL_RINGS)
    yield shm
    shm.close(close_eventfds=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


@dataclass
class FakePositions:
    """The positions a clean pass reads and writes, as plain attributes."""

    write_pos: int = 0
    dispatch_pos: int = 0
    flush_pos: int = 0
    cq_flush_pos: int = 0
    min_phy_offset: int = 0
    files_deleted_seq: int = 0

    def caught_up(self, phy: int) -> FakePositions:
        self.write_pos = self.dispatch_pos = self.flush_pos = self.cq_flush_pos = phy
        return self

    def set_min_phy_offset(self, value: int) -> None:
        self.min_phy_offset = value

    def set_files_deleted_seq(self, value: int) -> None:
        self.files_deleted_seq = value


@pytest.fixture
def small_config(tmp_path) -> BrokerConfig:
    cfg = BrokerConfig(storePathRootDir=str(tmp_path / "store"), mappedFileSizeCommitLog=FILE_SIZE,
                       mappedFileSizeConsumeQueue=CQ_FILE_SIZE, maxHashSlotNum=16, maxIndexNum=64)
    os.makedirs(cfg.store_dir, exist_ok=True)
    return cfg


def encode_one(topic: str, queue_id: int, body: bytes) -> memoryview:
    props = rec.encode_properties({"TAGS": "A"})
    buf = bytearray(rec.record_size(len(body), len(topic), len(props)))
    rec.encode_record(buf, 0, topic=topic.encode(), queue_id=queue_id, body=body, properties=props,
                      sys_flag=0, born_timestamp_ms=1_700_000_000_000, born_host=HOST, store_host=HOST)
    return memoryview(buf)


def fill_store(cfg: BrokerConfig, topic: str, count: int, body_size: int = 1000) -> list[int]:
    """Append `count` messages to queue 0 of `topic` and dispatch them; returns their phy offsets
    followed by the write position (one more element than messages)."""
    commit_log = CommitLog(cfg.store_dir, cfg.mappedFileSizeCommitLog, readonly=False)
    cq_store = ConsumeQueueStore(cfg.store_dir, cfg.mappedFileSizeConsumeQueue, readonly=False)
    phys = []
    for queue_offset in range(count):
        body = queue_offset.to_bytes(4, "big") * (body_size // 4)
        (phy,) = commit_log.append_records(encode_one(topic, 0, body), 1, queue_offset, 1_700_000_000_000)
        dispatch_record_to_cq(cq_store, phy, commit_log.read_record(phy), ())
        phys.append(phy)
    phys.append(commit_log.write_pos)
    cq_store.close_all()
    commit_log.close()
    return phys
