"""Holder: long polling (RocketMQ's PullRequestHoldService) as its own process.

Reads shm:   ring "park" (front -> holder: pulls that found nothing), ring "arrival"
             (dispatcher -> holder: a queue's new max offset), positions.dispatch_pos
Writes shm:  ring "wake" (holder -> front: the parked pull, to be run again), heartbeats[holder]
Files:       consumequeue/* (read-only: the re-check after parking)
On crash:    restartable; pulls parked at that moment are lost and their clients time out and
             pull again (the SDK bounds every pull by its own timeout)

A parked pull is woken when (a) an arrival shows its queue's max offset beyond the pull's offset,
(b) the re-check right after parking finds messages already there (the dispatcher may have
announced them between the front's read and our registration: no wake-up is lost), (c) its
deadline passes (the front then answers NO_NEW_MSG), or (d) the once-a-second re-check of every
parked queue finds new units (covers arrivals dropped while the arrival ring was full). The
re-checks (b, d) count only units below the published dispatch_pos (`_max_offset`): the front
serves nothing above it, so a wake-up there would only bounce back as NO_NEW_MSG.

A pull is never dropped: when the wake ring is full it stays parked and is tried again every
WAKE_RETRY_MS until the front has made room, so its client is answered a little late rather than
left to its own 18 s network timeout.
"""

from __future__ import annotations

import heapq
import logging
import time

from rmqd.broker.hold import (
    ParkedPull,
    decode_arrival,
    decode_parked_pull,
    encode_parked_pull,
    parked_pull_size,
)
from rmqd.store.consume_queue import ConsumeQueueStore
from workers.base import WorkerProcess, run_from_argv

log = logging.getLogger("rmqd.holder")
RECHECK_INTERVAL_S = 1.0
MAX_PARKED = 100_000  # beyond this a pull is answered at once instead of parked (memory bound)
WAKE_RETRY_MS = 10  # a pull that found the wake ring full is tried again this much later


class Holder(WorkerProcess):
    name = "holder"

    def setup(self) -> None:
        cfg = self.cfg
        self.cq_store = ConsumeQueueStore(cfg.store_dir, cfg.mappedFileSizeConsumeQueue, readonly=True)
        self.park_ring = self.shm.rings["park"]
        self.arrival_ring = self.shm.rings["arrival"]
        self.wake_ring = self.shm.rings["wake"]
        self.positions = self.shm.positions
        self.parked: dict[tuple[bytes, int], list[ParkedPull]] = {}
        self.deadlines: list[tuple[int, int, ParkedPull]] = []  # heap of (deadline_ms, seq, pull)
        self.parked_count = 0
        self.seq = 0
        self.woken: set[int] = set()  # ids of pulls already woken (lazy deletion from the heap)
        self.wake_later: dict[tuple[bytes, int], int] = {}  # queue -> max offset, wake ring was full
        self.next_recheck = time.monotonic() + RECHECK_INTERVAL_S
        self.add_wait_source(self.park_ring.doorbell, self.park_ring.ready)
        # Arrivals matter only while pulls are parked: without any, the dispatcher does not wake us
        # (no eventfd write per group); the backlog of arrivals is drained on the next wake-up.
        self.add_wait_source(self.arrival_ring.doorbell, self.arrival_ring.ready,
                             wanted=lambda: self.parked_count > 0)

    def run_once(self) -> bool:
        did = self._retry_wakes()
        did |= self._take_arrivals()
        did |= self._take_parks()
        now_ms = time.time_ns() // 1_000_000
        did |= self._expire(now_ms)
        if time.monotonic() >= self.next_recheck:
            self.next_recheck = time.monotonic() + RECHECK_INTERVAL_S
            did |= self._recheck_all()
        self.wake_ring.publish()
        return did

    def _take_parks(self) -> bool:
        entries = self.park_ring.entries()
        for _kind, entry in entries:
            pull = decode_parked_pull(entry)
            if (
                self.parked_count >= MAX_PARKED
                or self._max_offset(pull.topic, pull.queue_id) > pull.queue_offset
            ) and self._wake(pull, track=False):
                continue  # answered at once: it never enters the deadline heap
            self.parked.setdefault((pull.topic, pull.queue_id), []).append(pull)
            self.seq += 1
            heapq.heappush(self.deadlines, (pull.deadline_ms, self.seq, pull))
            self.parked_count += 1
        self.park_ring.release()
        return bool(entries)

    def _take_arrivals(self) -> bool:
        entries = self.arrival_ring.entries()
        for _kind, entry in entries:
            arrival = decode_arrival(entry)
            self._wake_queue((arrival.topic, arrival.queue_id), arrival.max_offset)
        self.arrival_ring.release()
        return bool(entries)

    def _wake_queue(self, key: tuple[bytes, int], max_offset: int) -> None:
        pulls = self.parked.get(key)
        if not pulls:
            return
        keep = []
        for pull in pulls:
            if max_offset <= pull.queue_offset:
                keep.append(pull)
            elif self._wake(pull):
                self.parked_count -= 1
            else:
                keep.append(pull)
                self.wake_later[key] = max(max_offset, self.wake_later.get(key, 0))
        if keep:
            self.parked[key] = keep
        else:
            del self.parked[key]

    def _expire(self, now_ms: int) -> bool:
        expired = False
        while self.deadlines and self.deadlines[0][0] <= now_ms:
            _deadline, _seq, pull = heapq.heappop(self.deadlines)
            if id(pull) in self.woken:
                self.woken.discard(id(pull))
                continue
            key = (pull.topic, pull.queue_id)
            pulls = self.parked.get(key, [])
            if pull not in pulls:
                continue
            if not self._wake(pull, track=False):  # wake ring full: try again shortly
                heapq.heappush(self.deadlines, (now_ms + WAKE_RETRY_MS, _seq, pull))
                break
            pulls.remove(pull)
            if not pulls:
                del self.parked[key]
            self.parked_count -= 1
            expired = True
        return expired

    def _retry_wakes(self) -> bool:
        """Wake the pulls that found the wake ring full last time."""
        if not self.wake_later:
            return False
        before = self.parked_count
        retry, self.wake_later = self.wake_later, {}
        for key, max_offset in retry.items():
            self._wake_queue(key, max_offset)
        return self.parked_count != before

    def _recheck_all(self) -> bool:
        before = self.parked_count
        for key in list(self.parked):
            self._wake_queue(key, self._max_offset(*key))
        return self.parked_count != before

    def _max_offset(self, topic: bytes, queue_id: int) -> int:
        """The queue's max offset counting only units the dispatcher has published.

        The dispatcher writes units before it publishes dispatch_pos (and announces arrivals only
        after), so the ConsumeQueue can show units the front's pull may not serve yet. Waking a pull
        on those made the front answer it "no new message" at once, and the client backed off
        50 ms: the tail of the end-to-end latency. Units are in phy order, so the unpublished ones
        are the last ones: one read when the newest unit is published (the usual case), else a
        binary search for the first unpublished one.
        """
        try:
            cq = self.cq_store.get(topic.decode(), queue_id)
            dispatch_pos = self.positions.dispatch_pos

            def published(offset: int) -> bool:
                unit = cq.read_range(offset, 1)
                return bool(unit) and unit[0][0] + unit[0][1] <= dispatch_pos

            low, high = 0, cq.max_offset()  # the answer is in [low, high]
            if high == 0 or published(high - 1):
                return high
            high -= 1
            while low < high:
                middle = (low + high) // 2
                if published(middle):
                    low = middle + 1
                else:
                    high = middle
            return low
        except (OSError, ValueError):
            return 0

    def _wake(self, pull: ParkedPull, *, track: bool = True) -> bool:
        """Hand `pull` back to the front; `track` marks it woken so its heap entry is skipped.
        False when the wake ring is full (the caller keeps the pull parked)."""
        view = self.wake_ring.reserve(parked_pull_size(pull.topic, pull.identity, pull.frame))
        if view is None:
            self.wake_ring.publish()  # let the front drain what is already there
            log.debug("wake ring full; %d pulls stay parked until the front catches up", self.parked_count)
            return False
        encode_parked_pull(view, pull)
        self.wake_ring.commit(0)
        if track:
            self.woken.add(id(pull))
        return True

    def idle_timeout(self) -> float:
        timeout = self.next_recheck - time.monotonic()
        if self.deadlines:
            timeout = min(timeout, self.deadlines[0][0] / 1000.0 - time.time())
        if self.wake_later:
            timeout = min(timeout, WAKE_RETRY_MS / 1000.0)
        return max(0.001, timeout)


def main(argv: list[str] | None = None) -> int:
    return run_from_argv(Holder, argv)


if __name__ == "__main__":
    raise SystemExit(main())
