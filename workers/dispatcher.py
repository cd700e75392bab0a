"""Dispatcher: follows the CommitLog and builds ConsumeQueue units (RocketMQ's ReputMessageService).

Reads shm:   positions.write_pos (writer); doorbell "dispatch"
Writes shm:  positions.dispatch_pos, positions.cq_flush_pos, heartbeats[dispatcher];
             ring "arrival" (dispatcher -> holder): per queue, the new max offset
Files:       commitlog/* (read-only mmap), consumequeue/* (the only writer while running)
On crash:    restartable: resumes at the checkpoint's cq_dispatch_pos; re-putting a unit is an
             idempotent overwrite at queue_offset * 20, so re-dispatching is harmless.

Order matters for readers (rmqd/broker/pull.py): units are written first, dispatch_pos is
published after, and only then are arrivals announced, so a woken pull always finds its units.
"""
from __future__ import annotations

import logging
import time

from rmqd.broker.hold import Arrival, arrival_size, encode_arrival
from rmqd.store.checkpoint import Checkpoint
from rmqd.store.commit_log import CommitLog
from rmqd.store.consume_queue import ConsumeQueueStore
from rmqd.store.dispatch import dispatch_record_to_cq
from workers.base import WorkerProcess, run_from_argv

log = logging.getLogger("rmqd.dispatcher")
# Bound one run_once so heartbeats and arrivals keep flowing during a large catch-up. It must exceed
# two largest records (4 MiB body each) plus a file-end blank so that every window makes progress.
MAX_DISPATCH_BYTES = 32 << 20


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
        self.positions.set_dispatch_pos(self.dispatch_pos)
        self.positions.set_cq_flush_pos(self.dispatch_pos)
        self.flush_interval_s = cfg.flushIntervalConsumeQueue / 1000.0
        self.delay_levels_ms = cfg.delay_levels_ms
        self.next_cq_flush = time.monotonic() + self.flush_interval_s
        self.flushed_upto = self.dispatch_pos
        self.add_wait_source(self.shm.doorbells["dispatch"],
                             lambda: self.positions.write_pos > self.dispatch_pos)
        log.info("dispatching from phy offset %d", self.dispatch_pos)

    def commit_log_min(self) -> int:
        first = self.commit_log.min_offset()
        return first if first is not None else 0

    def run_once(self) -> bool:
        write_pos = self.positions.write_pos
        did = False
        if write_pos > self.dispatch_pos:
            self.dispatch_upto(min(write_pos, self.dispatch_pos + MAX_DISPATCH_BYTES), write_pos)
            did = True
        if time.monotonic() >= self.next_cq_flush:
            self.flush_consume_queues()
        return did

    def dispatch_upto(self, target: int, write_pos: int) -> None:
        """Dispatch the records in [dispatch_pos, target); write_pos is a record boundary."""
        arrivals: dict[tuple[str, int], int] = {}
        self.commit_log.refresh()
        end = self.dispatch_pos
        for phy_offset, record in self.commit_log.iter_records(self.dispatch_pos, target, verify_crc=False):
            if dispatch_record_to_cq(self.cq_store, phy_offset, record, self.delay_levels_ms):
                arrivals[(record.topic, record.queue_id)] = record.queue_offset + 1
            end = phy_offset + record.total_size
        # write_pos is published only at group ends, so reaching it means every record (and any
        # blank at a file end) below it is done; inside a capped window, stop after the last record.
        self.dispatch_pos = write_pos if target == write_pos else end
        self.positions.set_dispatch_pos(self.dispatch_pos)
        self._announce(arrivals)

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

    def flush_consume_queues(self) -> None:
        self.next_cq_flush = time.monotonic() + self.flush_interval_s
        if self.flushed_upto == self.dispatch_pos:
            return
        upto = self.dispatch_pos
        self.cq_store.flush_all()
        self.flushed_upto = upto
        self.positions.set_cq_flush_pos(upto)

    def idle_timeout(self) -> float:
        return max(0.001, min(self.next_cq_flush - time.monotonic(), 1.0))

    def teardown(self) -> None:
        while (write_pos := self.positions.write_pos) > self.dispatch_pos:
            self.dispatch_upto(min(write_pos, self.dispatch_pos + MAX_DISPATCH_BYTES), write_pos)
        self.flush_consume_queues()
        self.cq_store.close_all()
        log.info("dispatched and flushed up to %d", self.dispatch_pos)


def main(argv: list[str] | None = None) -> int:
    return run_from_argv(Dispatcher, argv)


if __name__ == "__main__":
    raise SystemExit(main())
