"""The cleaner and writer processes driven by hand (setup + run_once) with an injected disk source.

Covers the self-protection loop: above 90 % the store is flagged not writable and clears below;
an ENOSPC while the writer rolls to a new CommitLog file flags WRITE_ERROR instead of killing the
writer; once a new file fits again the cleaner asks the writer to retry and writes resume, with
everything acknowledged before still readable. Also the manual clean request and the readers
dropping mappings of deleted files (workers/base.py).
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import signal

import pytest

from rmqd.broker import send as send_logic
from rmqd.ops import disk
from rmqd.store import append_request as ar
from rmqd.store import mapped_file, mapped_file_queue
from rmqd.store import record as rec
from rmqd.store.commit_log import CommitLog
from rmqd.store.consume_queue import ConsumeQueueStore
from shm import flags
from tests.unit.ops.conftest import FILE_SIZE, fill_store
from tests.unit.ops.test_ops_clean_rules import HOUR_S, local_time
from workers.base import WorkerProcess
from workers.cleaner import Cleaner
from workers.writer import Writer

STORE_HOST = rec.encode_host("127.0.0.1", 10911)
TOTAL = 1 << 30


class FakeDisk:
    """A disk-usage source whose figures the test sets."""

    def __init__(self, used_ratio: float = 0.5) -> None:
        self.set(used_ratio)

    def set(self, used_ratio: float, available_bytes: int | None = None) -> None:
        used = int(TOTAL * used_ratio)
        self.usage = disk.DiskUsage(TOTAL, used, TOTAL - used if available_bytes is None else available_bytes)

    def __call__(self, path: str) -> disk.DiskUsage:
        return self.usage


def make_cleaner(cfg, shm, fake_disk: FakeDisk, now_s: float | None = None) -> Cleaner:
    cleaner = Cleaner(cfg, shm)
    cleaner.disk_usage_source = fake_disk
    if now_s is not None:
        cleaner.clock = lambda: now_s
    cleaner.setup()
    return cleaner


def check_disk_now(cleaner: Cleaner) -> None:
    cleaner.next_disk_check = 0.0
    cleaner.run_once()


def send(shm, writer: Writer, request_id: int, body: bytes) -> ar.AppendResult:
    fields = {"topic": "Orders", "queueId": 0, "properties": rec.encode_properties({"TAGS": "A"}).decode()}
    prepared = send_logic.prepare_send(fields, memoryview(body), batch=False, write_queue_nums=4,
                                       max_message_size=1 << 20)
    ring = shm.rings["request"]
    send_logic.encode_into(ring.reserve(prepared.entry_size()), request_id, prepared, STORE_HOST)
    ring.commit(0)
    ring.publish()
    writer.run_once()
    acks = shm.rings["ack"]
    (result,) = [ar.decode_append_result(entry) for _kind, entry in acks.entries()]
    acks.release()
    return result


def test_above_90_percent_the_store_is_flagged_not_writable_and_clears_below(small_config, ops_shm) -> None:
    fake_disk = FakeDisk(0.91)
    cleaner = make_cleaner(small_config, ops_shm, fake_disk)
    positions = ops_shm.positions
    assert positions.cleaner_flags & flags.NOT_WRITABLE_DISK_FULL
    assert positions.disk_used_ppm == 910_000
    writable, remark = flags.is_writable(positions)
    assert not writable and "91.0% of the store's disk used" in remark
    assert "diskSpaceWarningLevelRatio=90%" in remark
    fake_disk.set(0.86)
    check_disk_now(cleaner)
    assert positions.cleaner_flags == flags.DISK_CLEAN_FORCIBLY and flags.is_writable(positions)[0]
    fake_disk.set(0.60)
    check_disk_now(cleaner)
    assert positions.cleaner_flags == 0


def test_enospc_on_a_new_file_flags_the_writer_and_writes_resume_once_space_returns(
        small_config, ops_shm, monkeypatch) -> None:
    cfg = small_config
    writer = Writer(cfg, ops_shm)
    writer.setup()
    fake_disk = FakeDisk(0.50)
    cleaner = make_cleaner(cfg, ops_shm, fake_disk)
    positions = ops_shm.positions
    body = b"x" * 20_000
    acked = [send(ops_shm, writer, i, body) for i in range(3)]  # three fit in the first 64 KiB file
    assert all(r.status is ar.PutStatus.PUT_OK for r in acked)

    def no_space(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(mapped_file, "prepare_file", no_space)
    monkeypatch.setattr(mapped_file_queue, "prepare_file", no_space)
    with contextlib.suppress(FileNotFoundError):  # the cleaner may have prepared it already
        os.unlink(os.path.join(cfg.commitlog_dir, f"{FILE_SIZE:020d}"))
    writer.commit_log.refresh()
    # When the fourth send needs a new file and the disk is full
    failed = send(ops_shm, writer, 3, body)
    assert failed.status is ar.PutStatus.UNKNOWN_ERROR
    assert positions.writer_flags == flags.WRITE_ERROR | flags.WRITE_ERROR_NO_SPACE
    assert "no space left on device" in flags.is_writable(positions)[1]
    assert send(ops_shm, writer, 4, body).status is ar.PutStatus.SERVICE_NOT_AVAILABLE
    # While the disk stays full the cleaner does not ask for a retry
    fake_disk.set(0.97)
    check_disk_now(cleaner)
    assert positions.write_retry_seq == 0 and positions.cleaner_flags & flags.NOT_WRITABLE_DISK_FULL
    fake_disk.set(0.50, available_bytes=FILE_SIZE - 1)
    check_disk_now(cleaner)
    assert positions.write_retry_seq == 0  # a new file would still not fit
    # When space returns: the cleaner asks, the writer clears its flags, the next send works
    monkeypatch.undo()
    fake_disk.set(0.50)
    check_disk_now(cleaner)
    assert positions.write_retry_seq == 1 and positions.cleaner_flags == 0
    writer.run_once()
    assert positions.writer_flags == 0 and flags.is_writable(positions)[0]
    resumed = send(ops_shm, writer, 5, body)
    assert resumed.status is ar.PutStatus.PUT_OK and resumed.phy_offsets[0] == FILE_SIZE
    # And nothing acknowledged before the failure was lost
    reader = CommitLog(cfg.store_dir, FILE_SIZE, readonly=True)
    assert [reader.read_record(r.phy_offsets[0]).body for r in [*acked, resumed]] == [body] * 4
    reader.close()
    writer.commit_log.close()
    cleaner.teardown()


def test_a_manual_clean_request_runs_a_pass_at_once(small_config, ops_shm) -> None:
    cfg = dataclasses.replace(small_config, deleteCommitLogFilesInterval=0)
    write_pos = fill_store(cfg, "Orders", 300)[-1]
    positions = ops_shm.positions
    for name in ("write_pos", "dispatch_pos", "flush_pos", "cq_flush_pos"):
        positions.set(name, write_pos)
    now = local_time(11)
    for name in os.listdir(cfg.commitlog_dir):
        os.utime(os.path.join(cfg.commitlog_dir, name), (now - 50 * HOUR_S, now - 50 * HOUR_S))
    cleaner = make_cleaner(cfg, ops_shm, FakeDisk(0.3), now_s=now)
    cleaner.run_once()
    assert positions.min_phy_offset == 0  # not the hour, disk fine: nothing goes by itself
    positions.set_clean_requested(positions.clean_requested + 1)  # the front, for mqadmin
    cleaner.run_once()
    assert positions.min_phy_offset == write_pos - write_pos % FILE_SIZE
    assert positions.files_deleted_seq == 1
    cleaner.teardown()


class Reader(WorkerProcess):
    name = "front"


def test_a_process_drops_its_mappings_of_deleted_files_when_told(small_config, ops_shm) -> None:
    cfg = small_config
    write_pos = fill_store(cfg, "Orders", 300)[-1]
    reader = Reader(cfg, ops_shm)
    reader.commit_log = CommitLog(cfg.store_dir, FILE_SIZE, readonly=True)
    reader.cq_store = ConsumeQueueStore(cfg.store_dir, cfg.mappedFileSizeConsumeQueue, readonly=True)
    reader.cq_store.get("Orders", 0).max_offset()
    mapped_before = len(reader.commit_log.queue.files)
    os.unlink(os.path.join(cfg.commitlog_dir, f"{0:020d}"))  # as the cleaner does
    assert len(reader.commit_log.queue.files) == mapped_before  # still mapped: space not freed yet
    reader.release_deleted_files()
    assert len(reader.commit_log.queue.files) == mapped_before - 1
    assert reader.commit_log.min_offset() == FILE_SIZE <= write_pos
    assert not reader.cq_store._open  # every queue closed; reopened on demand
    assert reader.cq_store.get("Orders", 0).max_offset() == 300
    reader.commit_log.close()


@pytest.fixture
def restore_signals():
    """WorkerProcess.run installs SIGTERM/SIGINT handlers and a wakeup fd: give pytest its own back."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)
    signal.set_wakeup_fd(-1)


def test_the_worker_loop_releases_deleted_files_when_the_sequence_moves(small_config, ops_shm,
                                                                        restore_signals) -> None:
    released = []

    class Once(WorkerProcess):
        name = "holder"

        def release_deleted_files(self) -> None:
            released.append(self.shm.positions.files_deleted_seq)

        def run_once(self) -> bool:
            if not released:
                self.shm.positions.set_files_deleted_seq(7)  # the cleaner, between two loops
                return True
            self.stop_requested = True
            return True

    assert Once(small_config, ops_shm).run() == 0
    assert released == [7]
