"""Dispatcher: follows the CommitLog and builds ConsumeQueue units and the IndexFile
(RocketMQ's ReputMessageService with CommitLogDispatcherBuildConsumeQueue and BuildIndex).

Reads shm:   positions.write_pos (writer); doorbell "dispatch"
Writes shm:  positions.dispatch_pos, positions.cq_flush_pos, heartbeats[dispatcher];
             ring "arrival" (dispatcher -> holder): per queue, the new max offset
Files:       commitlog/* (read-only mmap), consumequeue/* and index/* (the only writer while running)
On crash:    restartable: resumes at the checkpoint's cq_dispatch_pos; re-putting a unit is an
             idempotent overwrite at queue_offset * 20, so re-dispatching is harmless. Index
             entries are appended, so setup() first cuts those at or past the resume point.

cq_flush_pos (which the flusher writes into the checkpoint as cq_dispatch_pos AND
index_dispatch_pos) is published only after both the ConsumeQueues and the index files are
flushed up to it. The msyncs run in one background thread (RocketMQ's FlushConsumeQueueService is
a thread of its own too): the loop takes the dirty ranges every flushIntervalConsumeQueue, hands
them over and keeps dispatching; a flush of the scattered index pages takes 5-25 ms, which
in the loop stalled every consumer's delivery that long once a second. With messageIndexEnable=false
no index is built. The records of a window are dispatched in batches by rmqd/store/dispatch.py
`dispatch_range`, the code recovery uses too.

Order matters for readers (rmqd/broker/pull.py): units are written first, dispatch_pos is
published after, and only then are arrivals announced, so a woken pull always finds its units.

A full disk: ConsumeQueue and index files are sparse, and their writers allocate blocks ahead
(MappedFile.reserve), so no room fails with OSError(ENOSPC) before anything is written, never with
SIGBUS. The dispatcher then keeps dispatch_pos at the record that could not be dispatched, cuts the
index keys that record already got, and tries again every WRITE_RETRY_S (pulls keep being served
up to dispatch_pos). A stop while paused exits without dispatching the rest (recovery does it).
"""
from __future__ import annotations

import errno
import logging
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor

from rmqd.broker.hold import Arrival, arrival_size, encode_arrival
from rmqd.store.checkpoint import Checkpoint
from rmqd.store.commit_log import CommitLog
from rmqd.store.consume_queue import ConsumeQueueStore
from rmqd.store.dispatch import dispatch_range
from rmqd.store.index_file import IndexService
from rmqd.store.mapped_file import MappedFile
from workers.base import WorkerProcess, run_from_argv

log = logging.getLogger("rmqd.dispatcher")
# Bound one run_once so heartbeats and arrivals keep flowing during a large catch-up. It must exceed
# two largest records (4 MiB body each) plus a file-end blank so that every window makes progress
# (a record crossing the window's end is left for the next window).
MAX_DISPATCH_BYTES = 32 << 20
WRITE_RETRY_S = 1.0


class Dispatcher(WorkerProcess):
    name = "dispatcher"

    def setup(self) -> None:
        cfg = self.cfg
        self.commit_log = CommitLog(cfg.store_dir, cfg.mappedFileSizeCommitLog, readonly=True)
        self.cq_store = ConsumeQueueStore(cfg.store_dir, cfg.mappedFileSizeConsumeQueue, readonly=False)
        self.positions = self.shm.positions
        self.arrivals_ring = self.shm.rings["arrival"]
        start = Checkpoint(cfg.checkpoint_path).load().cq_dispatch_pos
        self.dispatch_pos = max(start, self.commit_log_min())
        self.index = self._open_index(self.dispatch_pos)
        self.positions.set_dispatch_pos(self.dispatch_pos)
        self.positions.set_cq_flush_pos(self.dispatch_pos)
        self.flush_interval_s = cfg.flushIntervalConsumeQueue / 1000.0
        self.delay_levels_ms = cfg.delay_levels_ms
        self.next_cq_flush = time.monotonic() + self.flush_interval_s
        self.flushed_upto = self.dispatch_pos
        self.flush_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cq-flush")
        self.flush_job: Future | None = None
        self.flush_job_upto = self.dispatch_pos
        self.retry_at = 0.0  # while in the future: paused after a write error (full disk)
        self.add_wait_source(self.shm.doorbells["dispatch"], self._can_dispatch)
        log.info("dispatching from phy offset %d", self.dispatch_pos)

    def _open_index(self, start: int) -> IndexService | None:
        if not self.cfg.messageIndexEnable:
            return None
        index = IndexService(self.cfg.store_dir, max_hash_slots=self.cfg.maxHashSlotNum,
                             max_index_count=self.cfg.maxIndexNum, readonly=False)
        cut = index.truncate_beyond(start)  # entries a killed predecessor put past its checkpoint
        if cut:
            log.info("cut %d index entries at or past phy offset %d; re-indexing from there", cut, start)
        return index

    def commit_log_min(self) -> int:
        first = self.commit_log.min_offset()
        return first if first is not None else 0

    def _can_dispatch(self) -> bool:
        return self.positions.write_pos > self.dispatch_pos and time.monotonic() >= self.retry_at

    def run_once(self) -> bool:
        write_pos = self.positions.write_pos
        did = False
        if self._can_dispatch():
            self.dispatch_upto(min(write_pos, self.dispatch_pos + MAX_DISPATCH_BYTES), write_pos)
            did = True
        if self.flush_job is not None and self.flush_job.done():
            self._finish_flush_job()
        if time.monotonic() >= self.next_cq_flush:
            self.flush_consume_queues()
        return did

    def dispatch_upto(self, target: int, write_pos: int) -> None:
        """Dispatch the records in [dispatch_pos, target); write_pos is a record boundary.

        No directory scan here: CommitLog reads map a file the writer created when they reach it,
        and files the cleaner deleted are released on its signal (WorkerProcess)."""
        result = dispatch_range(self.commit_log, self.cq_store, self.index, self.dispatch_pos, target,
                                self.delay_levels_ms)
        end = result.end
        if result.error is not None:  # no room for ConsumeQueue or index blocks: see the module docstring
            self._pause(result.error, end)
        else:
            # write_pos is published only at group ends, so reaching it means every record (and any
            # blank at a file end) below it is done; in a capped window, stop after the last record.
            if target == write_pos:
                end = write_pos
            self.retry_at = 0.0
        self.dispatch_pos = end
        self.positions.set_dispatch_pos(end)
        self._announce(result.arrivals)

    def _pause(self, exc: OSError, end: int) -> None:
        if self.index is not None:
            self.index.truncate_beyond(end)  # keys of the record that failed half-way
        if self.retry_at == 0.0:
            log.error("cannot write ConsumeQueue/index files (%s): dispatch paused at phy offset %d, "
                      "retrying every %.0f s", exc, end, WRITE_RETRY_S)
        self.retry_at = time.monotonic() + WRITE_RETRY_S

    def _announce(self, arrivals: dict[tuple[str, int], int]) -> None:
        ring = self.arrivals_ring
        for (topic, queue_id), max_offset in arrivals.items():
            arrival = Arrival(topic.encode(), queue_id, max_offset)
            view = ring.reserve(arrival_size(arrival.topic))
            if view is None:
                break  # the holder is behind; its periodic re-check covers what we skip
            encode_arrival(view, arrival)
            ring.commit(0)
        ring.publish()

    def flush_consume_queues(self, *, wait: bool = False) -> None:
        """Start an msync of everything dispatched so far in the flush thread (`wait`: and finish
        it here). While the previous one still runs, wait for the next interval."""
        self.next_cq_flush = time.monotonic() + self.flush_interval_s
        if self.flush_job is not None:
            if not (wait or self.flush_job.done()):
                return
            self._finish_flush_job()
        if self.index is not None:
            self.index.refresh()  # unmap index files the cleaner deleted, so their space is freed
        if self.flushed_upto == self.dispatch_pos:
            return
        ranges = self.cq_store.take_flush_ranges()
        if self.index is not None:
            ranges += self.index.take_flush_ranges()
        self.flush_job_upto = self.dispatch_pos
        self.flush_job = self.flush_thread.submit(msync_ranges, ranges)
        if wait:
            self._finish_flush_job()

    def _finish_flush_job(self) -> None:
        """Publish cq_flush_pos once the flush thread is done (re-raises its OSError)."""
        job, self.flush_job = self.flush_job, None
        if job is None:
            return
        job.result()
        self.flushed_upto = self.flush_job_upto
        self.positions.set_cq_flush_pos(self.flushed_upto)

    def idle_timeout(self) -> float:
        wake_at = min(self.next_cq_flush, self.retry_at) if self.retry_at else self.next_cq_flush
        if self.flush_job is not None:
            return 0.005  # publish cq_flush_pos soon after the flush thread finishes
        return max(0.001, min(wake_at - time.monotonic(), 1.0))

    def teardown(self) -> None:
        while (write_pos := self.positions.write_pos) > self.dispatch_pos and not self.retry_at:
            self.dispatch_upto(min(write_pos, self.dispatch_pos + MAX_DISPATCH_BYTES), write_pos)
        self.flush_consume_queues(wait=True)
        self.flush_thread.shutdown()
        self.cq_store.close_all()
        if self.index is not None:
            self.index.close()
        log.info("dispatched and flushed up to %d", self.dispatch_pos)


def msync_ranges(ranges: list[tuple[MappedFile, int, int]]) -> None:
    """The flush thread's job: msync each (mapping, start, end). A mapping the loop closed meanwhile
    (a queue evicted from the open set, a file the cleaner deleted) is synced through its path
    instead, and a file that is gone needs nothing."""
    for mapped, start, end in ranges:
        try:
            mapped.flush(start, end)
        except (ValueError, OSError) as exc:  # ValueError: mmap closed; ENOMEM: unmapped during msync
            if isinstance(exc, OSError) and exc.errno != errno.ENOMEM:
                raise
            try:
                fd = os.open(mapped.path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)


def main(argv: list[str] | None = None) -> int:
    return run_from_argv(Dispatcher, argv)


if __name__ == "__main__":
    raise SystemExit(main())
