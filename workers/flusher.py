"""Flusher: fdatasyncs the CommitLog behind the writer, publishes flush_pos, writes the checkpoint.

Reads shm:   positions.write_pos (writer), positions.cq_flush_pos (dispatcher); doorbell "flush"
Writes shm:  positions.flush_pos, flush_total, flush_time_us_total, heartbeats[flusher];
             rings doorbell "flushed"
Files:       commitlog/* (fdatasync only), checkpoint (tmp -> fsync -> rename)
On crash:    restartable: flush_pos is re-derived by flushing everything written on setup()

SYNC_FLUSH (group commit): woken by the writer after each group; one fdatasync covers every
request appended so far, and requests arriving during it form the next group by themselves
(RocketMQ's GroupCommitService swaps its request lists the same way). The front acknowledges a
send once flush_pos passes its end.
ASYNC_FLUSH: every flushIntervalCommitLog (500 ms) when at least flushCommitLogLeastPages (4) pages
are dirty, and everything every flushCommitLogThoroughInterval (10 s), as RocketMQ's
FlushRealTimeService.
"""
from __future__ import annotations

import logging
import time

from rmqd.store.checkpoint import Checkpoint, CheckpointData
from rmqd.store.commit_log import CommitLog
from workers.base import WorkerProcess, run_from_argv

log = logging.getLogger("rmqd.flusher")
PAGE_SIZE = 4096
CHECKPOINT_INTERVAL_S = 1.0


class Flusher(WorkerProcess):
    name = "flusher"

    def setup(self) -> None:
        cfg = self.cfg
        # Writable mappings: msync through a read-only mapping is skipped by MappedFile.flush.
        # The flusher never appends; only the writer moves the CommitLog's write position.
        self.commit_log = CommitLog(cfg.store_dir, cfg.mappedFileSizeCommitLog, readonly=False)
        self.checkpoint = Checkpoint(cfg.checkpoint_path)
        self.positions = self.shm.positions
        self.sync = cfg.flush_sync
        self.interval_s = cfg.flushIntervalCommitLog / 1000.0
        self.least_bytes = cfg.flushCommitLogLeastPages * PAGE_SIZE
        self.thorough_s = cfg.flushCommitLogThoroughInterval / 1000.0
        self.last_thorough = time.monotonic()
        self.last_checkpoint = 0.0
        self.next_flush = time.monotonic()
        self.flushed_doorbell = self.shm.doorbells["flushed"]
        self._flush_to(self.positions.write_pos)
        if self.sync:
            self.add_wait_source(self.shm.doorbells["flush"],
                                 lambda: self.positions.write_pos > self.positions.flush_pos)

    def _flush_to(self, target: int) -> None:
        started_ns = time.monotonic_ns()
        self.commit_log.flush(to_phy=target)  # maps files the writer created since (no scan per flush)
        self.positions.set_flush_pos(target)
        self.positions.set_flush_total(self.positions.flush_total + 1)
        elapsed_us = (time.monotonic_ns() - started_ns) // 1000  # flush latency metric (rmqd.ops.figures)
        self.positions.set_flush_time_us_total(self.positions.flush_time_us_total + elapsed_us)

    def run_once(self) -> bool:
        target = self.positions.write_pos
        flushed = self.positions.flush_pos
        did = False
        if target > flushed and self._due(target - flushed):
            self._flush_to(target)
            self.flushed_doorbell.ring()
            did = True
        self._maybe_checkpoint()
        return did

    def _due(self, dirty_bytes: int) -> bool:
        if self.sync:
            return True
        now = time.monotonic()
        if now < self.next_flush:
            return False
        self.next_flush = now + self.interval_s
        if now - self.last_thorough >= self.thorough_s:
            self.last_thorough = now
            return True
        return dirty_bytes >= self.least_bytes

    def _maybe_checkpoint(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_checkpoint < CHECKPOINT_INTERVAL_S:
            return
        self.last_checkpoint = now
        flush_pos = self.positions.flush_pos
        cq_pos = min(self.positions.cq_flush_pos, flush_pos)
        previous = self.checkpoint.load()
        if previous.commitlog_flush_pos == flush_pos and previous.cq_dispatch_pos == cq_pos:
            return
        now_ms = time.time_ns() // 1_000_000
        self.checkpoint.store(CheckpointData(
            physic_msg_timestamp_ms=now_ms, logics_msg_timestamp_ms=now_ms,
            index_msg_timestamp_ms=now_ms, commitlog_flush_pos=flush_pos, cq_dispatch_pos=cq_pos,
            index_dispatch_pos=cq_pos))

    def idle_timeout(self) -> float:
        if self.sync:
            return CHECKPOINT_INTERVAL_S
        return max(0.001, min(self.next_flush - time.monotonic(), CHECKPOINT_INTERVAL_S))

    def teardown(self) -> None:
        self._flush_to(self.positions.write_pos)
        self.flushed_doorbell.ring()
        self._maybe_checkpoint(force=True)
        log.info("final flush at %d, checkpoint written", self.positions.flush_pos)


def main(argv: list[str] | None = None) -> int:
    return run_from_argv(Flusher, argv)


if __name__ == "__main__":
    raise SystemExit(main())
