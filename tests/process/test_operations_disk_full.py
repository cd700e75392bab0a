"""A broker on a small tmpfs filled to ENOSPC: it rejects writes, loses nothing it acknowledged,
keeps serving reads, and takes writes again once space is freed (no restart, no operator).

The test mounts its own tmpfs (root is needed; without it the test is skipped and says why). The
disk thresholds are raised to 95 % and forced cleaning is off, so that the writer itself runs into
ENOSPC when it needs the next CommitLog file, rather than the cleaner's 90 % flag stopping sends
first (that path is covered by the unit tests with an injected disk source).
"""
from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest

from rmqd.client import Message, Producer, SendStatus
from rmqd.client.admin import MQAdmin
from rmqd.errors import MQBrokerError
from rmqd.protocol import ResponseCode
from tests.broker_harness import BrokerTree
from tests.helpers import wait_until
from tests.process.test_operations import read_queue

pytestmark = pytest.mark.process

MIB = 1 << 20
FS_SIZE = 48 * MIB
FILE_SIZE = 8 * MIB
LEFT_FREE = 6 * MIB  # less than one CommitLog file, and 12.5 % of the file system (below 95 % used)
BATCH = 20


@pytest.fixture
def small_fs(tmp_path: Path):
    mount_point = tmp_path / "fs"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; this machine runs the tests as an ordinary user")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={FS_SIZE}", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"this machine forbids mounting a tmpfs: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def fill_to(path: Path, left_free: int) -> None:
    stats = os.statvfs(path.parent)
    size = stats.f_bavail * stats.f_frsize - left_free
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.posix_fallocate(fd, 0, size)
    finally:
        os.close(fd)


def batch_of(start: int) -> list[bytes]:
    return [f"full-{i:06d}-".encode().ljust(2000, b".") for i in range(start, start + BATCH)]


def send(producer: Producer, bodies: list[bytes]) -> None:
    result = producer.send_batch([Message("Full", body) for body in bodies])
    assert result.status is SendStatus.SEND_OK


def test_a_full_disk_stops_writes_keeps_reads_loses_nothing_and_recovers(small_fs: Path) -> None:
    tree = BrokerTree(small_fs, properties={
        "mappedFileSizeCommitLog": FILE_SIZE, "maxHashSlotNum": 1000, "maxIndexNum": 4000,
        "diskMaxUsedSpaceRatio": 95, "diskSpaceCleanForciblyRatio": 95, "diskSpaceWarningLevelRatio": 95,
        "cleanFileForciblyEnable": "false", "cleanResourceInterval": 1000, "metricsPort": 0,
        "selfInspectionInterval": 0})
    producer = Producer("full-disk", namesrv=None)
    try:
        tree.start()
        with MQAdmin(tree.namesrv_addr) as admin:
            admin.create_topic("Full", 1, 1, broker_addr=tree.broker_addr)
        producer = Producer("full-disk", namesrv=tree.namesrv_addr, retry_times_when_send_failed=0)
        producer.start()
        pids_before = wait_until(lambda: (pids := tree.pids()).get("metrics") and pids, 20, "every process")
        ballast = small_fs / "ballast"
        fill_to(ballast, LEFT_FREE)

        # Send until the writer needs a new CommitLog file and the disk has no room for it
        acked: list[bytes] = []
        failure = None
        for start in range(0, 2 * FILE_SIZE // 2000, BATCH):
            try:
                send(producer, batch_of(start))
            except MQBrokerError as exc:
                failure = exc
                break
            acked += batch_of(start)
        assert failure is not None and len(acked) > 1000, "the disk never filled up"
        assert failure.code in (ResponseCode.SYSTEM_ERROR, ResponseCode.SERVICE_NOT_AVAILABLE)
        with pytest.raises(MQBrokerError) as refused:
            send(producer, batch_of(10**6))
        assert refused.value.code == ResponseCode.SERVICE_NOT_AVAILABLE
        assert "no space left on device" in refused.value.remark
        assert "% of the store's disk used" in refused.value.remark
        assert tree.pids() == pids_before  # nothing crashed, nothing restarted

        # Reads keep working and every acknowledged message is there, in order (once dispatched)
        wait_until(lambda: read_queue(tree.broker_addr, "Full") == acked, 30, "every acknowledged message")

        # Space comes back: the cleaner sees it, the writer retries, sends are taken again
        ballast.unlink()

        def accepted() -> bool:
            with contextlib.suppress(MQBrokerError):
                send(producer, batch_of(2 * 10**6))
                return True
            return False

        wait_until(accepted, 30, "a send to be accepted after the space was freed")
        acked += batch_of(2 * 10**6)
        for start in range(3 * 10**6, 3 * 10**6 + 5 * BATCH, BATCH):
            send(producer, batch_of(start))
            acked += batch_of(start)
        wait_until(lambda: read_queue(tree.broker_addr, "Full") == acked, 30, "every acknowledged message")
        output = tree.output()
        assert "CommitLog append failed" in output and "disk full" in output  # the writer's ENOSPC
        assert "retrying CommitLog appends" in output
        assert tree.pids() == pids_before
    finally:
        producer.shutdown()
        code = tree.stop()
        tree.cleanup()
    assert code == 0
