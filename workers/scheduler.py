"""Scheduler: delivers delay-level and timer messages when they come due (docs/SCHEDULING.md).

Reads shm:   positions.dispatch_pos (new ConsumeQueue units arrived)
Writes shm:  heartbeats[scheduler]
Files:       commitlog/* and consumequeue/{SCHEDULE_TOPIC_XXXX,rmq_sys_wheel_timer}/* read-only;
             config/delayOffset.json and config/timerOffset.json (the only writer)
Network:     one ZeroMQ DEALER to the broker's own front: every delivery is an ordinary
             SEND_MESSAGE, so it reaches the writer through the single write path.
On crash:    restartable: it resumes from the persisted offsets; copies sent but not recorded as
             acknowledged are sent again (at-least-once: duplicates, never losses).

Lanes: one per delay level (SCHEDULE_TOPIC_XXXX queue level-1) and one per timer wheel queue.
Every lane is FIFO in due time (constant delay per queue), and a unit's tags_code is its due time
(rmqd/store/dispatch.py), so a lane is blocked exactly until its head unit's due time. Per pass:
take what is due from every lane (within the in-flight window), send it, hold timers due within
HOLD_MS in a heap until their exact time, answer replies, persist offsets once per second. The
poll timeout is the next due time, capped at IDLE_POLL_S to notice new units.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import time
from collections import deque
from typing import NamedTuple

import zmq

from rmqd.broker import schedule
from rmqd.broker.schedule import HOLD_MS, Lane, OffsetTable
from rmqd.errors import ProtocolError, RmqError
from rmqd.protocol import codec
from rmqd.protocol.commands import RequestCode, ResponseCode
from rmqd.store import record as rec
from rmqd.store.commit_log import CommitLog
from rmqd.store.consume_queue import ConsumeQueueStore
from rmqd.store.record import MessageRecord, Prop
from workers.base import WorkerProcess, run_from_argv

log = logging.getLogger("rmqd.scheduler")

# Requests in flight (a delivery batch holds up to 64 messages). Enough to keep the writer busy, and
# small enough that none waits 200 ms (waitTimeMillsInSendQueue) in the front, which would refuse it.
MAX_IN_FLIGHT = 64
BATCH_MAX_MESSAGES = 64
BATCH_MAX_BYTES = 1 << 20
UNITS_PER_READ = 256
UNITS_PER_PASS = 4096  # messages taken per pass (bounds the batches built and the sends queued)
IDLE_POLL_S = 0.05  # how soon new units are noticed when nothing is due earlier
RESEND_AFTER_MS = 10_000  # no answer (the front restarted): send again
RETRY_BACKOFF_MS = 200  # SYSTEM_BUSY and friends
PERSIST_INTERVAL_MS = 1000
PRODUCER_GROUP = "SCHEDULE_PRODUCER"
STORED_CODES = frozenset({ResponseCode.SUCCESS, ResponseCode.FLUSH_DISK_TIMEOUT,
                          ResponseCode.FLUSH_SLAVE_TIMEOUT, ResponseCode.SLAVE_NOT_AVAILABLE})
RETRY_CODES = frozenset({ResponseCode.SYSTEM_BUSY, ResponseCode.SYSTEM_ERROR,
                         ResponseCode.SERVICE_NOT_AVAILABLE})


class Flight(NamedTuple):
    units: list[tuple[Lane, int]]  # (lane, queue offset) of every message of the request
    code: int
    fields: dict
    body: bytes
    sent_ms: int


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Scheduler(WorkerProcess):
    name = "scheduler"

    def setup(self) -> None:
        cfg = self.cfg
        os.makedirs(cfg.config_dir, exist_ok=True)
        self.commit_log = CommitLog(cfg.store_dir, cfg.mappedFileSizeCommitLog, readonly=True)
        self.cq_store = ConsumeQueueStore(cfg.store_dir, cfg.mappedFileSizeConsumeQueue, readonly=True)
        self.level_table = OffsetTable(os.path.join(cfg.config_dir, "delayOffset.json"))
        self.timer_table = OffsetTable(os.path.join(cfg.config_dir, "timerOffset.json"))
        self.level_lanes = [
            Lane(schedule.SCHEDULE_TOPIC, level - 1, str(level), self.level_table.get(str(level)),
                 timer=False)
            for level in range(1, len(cfg.delay_levels_ms) + 1)
        ]
        self.timer_lanes = [
            Lane(schedule.TIMER_TOPIC, q, str(q), self.timer_table.get(str(q)), timer=True)
            for q in range(schedule.TIMER_QUEUE_NUMS)
        ]
        self.lanes = self.level_lanes + self.timer_lanes
        for lane in self.lanes:  # files below the cursor may have been deleted as expired
            first = self.cq_store.get(lane.topic, lane.queue_id).min_offset()
            lane.next_offset = max(lane.next_offset, first)
        self.inflight: dict[int, Flight] = {}
        self.held: list[tuple[int, int, Lane, int, MessageRecord]] = []  # (deliver_ms, seq, ...)
        self.retries: deque[tuple[int, Flight]] = deque()
        self.batches: dict[tuple, list[tuple[Lane, int, int, bytes, bytes]]] = {}  # deliveries of this pass
        self.seq = itertools.count()
        self.opaques = itertools.count(1)
        self.seen_dispatch = -1
        self.budget = UNITS_PER_PASS
        self.next_persist_ms = now_ms() + PERSIST_INTERVAL_MS
        self.delivered = self.moved = self.busy = 0
        self.ctx = zmq.Context()
        self.dealer = self.ctx.socket(zmq.DEALER)
        self.dealer.setsockopt(zmq.LINGER, 0)
        self.dealer.setsockopt(zmq.SNDHWM, 10_000)
        self.dealer.connect(f"tcp://{cfg.brokerIP1}:{cfg.listenPort}")
        self.poller = zmq.Poller()
        self.poller.register(self.dealer, zmq.POLLIN)
        self.poller.register(self._signal_r, zmq.POLLIN)
        log.info("scheduler: %d delay levels, %d timer queues, offsets %s / %s", len(self.level_lanes),
                 len(self.timer_lanes), self.level_table.table, self.timer_table.table)

    # -- the loop ----------------------------------------------------------------------------
    def run_once(self) -> bool:
        for sock, _event in self.poller.poll(self._poll_timeout_ms(now_ms())):
            if sock is self._signal_r:
                os.read(self._signal_r, 512)
        self._take_replies()
        now = now_ms()
        self.budget = UNITS_PER_PASS
        self._release_held(now)  # first: these are due to the millisecond
        self._scan_lanes(now)
        self._send_batches(now)
        self._resend(now)
        if now >= self.next_persist_ms:
            self.next_persist_ms = now + PERSIST_INTERVAL_MS
            self._persist()
        return True

    def _poll_timeout_ms(self, now: int) -> int:
        wake = now + int(IDLE_POLL_S * 1000)
        if len(self.inflight) >= MAX_IN_FLIGHT:
            return wake - now  # the window is full: the front's answers wake us
        for lane in self.lanes:
            if lane.next_due_ms is not None and lane.next_due_ms < wake:
                wake = lane.next_due_ms
        if self.held and self.held[0][0] < wake:
            wake = self.held[0][0]
        if self.retries and self.retries[0][0] < wake:
            wake = self.retries[0][0]
        return max(0, wake - now)

    # -- taking due units --------------------------------------------------------------------
    def _scan_lanes(self, now: int) -> None:
        dispatch_pos = self.shm.positions.dispatch_pos
        arrived = dispatch_pos != self.seen_dispatch
        self.seen_dispatch = dispatch_pos
        for lane in self.lanes:
            due = lane.next_due_ms
            if (due is None and arrived) or (due is not None and due <= now):
                self._scan(lane, now)

    def _scan(self, lane: Lane, now: int) -> None:
        queue = self.cq_store.get(lane.topic, lane.queue_id)
        while self._has_room():
            units = queue.read_range(lane.next_offset, min(UNITS_PER_READ, self.budget))
            if not units:
                lane.next_due_ms = None  # nothing at the cursor: wait for the dispatcher
                return
            for phy, _size, due in units:
                if due > now:
                    lane.next_due_ms = due
                    return
                self._take(lane, lane.next_offset, phy, now)
                lane.next_offset += 1
                self.budget -= 1
        lane.next_due_ms = now  # out of room for this pass: more may be due

    def _take(self, lane: Lane, offset: int, phy: int, now: int) -> None:
        try:
            record = self.commit_log.read_record(phy)
        except (RmqError, ValueError, IndexError) as exc:
            log.error("%s/%d offset %d: cannot read the record at %d (%s); skipped",
                      lane.topic, lane.queue_id, offset, phy, exc)
            return
        lane.outstanding.add(offset)
        if lane.timer:
            try:
                remaining = int(record.properties.get(Prop.TIMER_DELIVER_MS, "0")) - now
            except ValueError:
                remaining = 0
            if remaining > HOLD_MS:
                self._send(lane, offset, record, deliver=False, now=now)  # to a smaller wheel queue
                return
            if remaining > 0:
                heapq.heappush(self.held, (now + remaining, next(self.seq), lane, offset, record))
                return
        self._send(lane, offset, record, deliver=True, now=now)

    def _has_room(self) -> bool:
        return self.budget > 0 and len(self.inflight) < MAX_IN_FLIGHT

    def _release_held(self, now: int) -> None:
        held = self.held
        while held and held[0][0] <= now and self._has_room():
            self.budget -= 1
            _due, _seq, lane, offset, record = heapq.heappop(held)
            self._send(lane, offset, record, deliver=True, now=now)

    # -- sending -----------------------------------------------------------------------------
    def _send(self, lane: Lane, offset: int, record: MessageRecord, *, deliver: bool, now: int) -> None:
        """Deliveries are grouped into batches of one (topic, queue) and identical record header
        fields (so every stored field is kept exactly); a move to a smaller wheel queue is a single
        send (the front redirects it, and batches may not carry TIMER_DELIVER_MS)."""
        topic, queue_id, props = schedule.restore_real(record.properties, deliver=deliver)
        if not topic:
            log.error("%s/%d offset %d has no REAL_TOPIC; dropped", lane.topic, lane.queue_id, offset)
            lane.outstanding.discard(offset)
            return
        if deliver:
            self.delivered += 1
            key = (topic, queue_id, record.sys_flag, record.born_timestamp_ms, record.born_host,
                   record.reconsume_times)
            self.batches.setdefault(key, []).append(
                (lane, offset, record.flag, record.body, rec.encode_properties(props)))
            return
        self.moved += 1
        fields = self._fields(topic, queue_id, record.sys_flag, record.born_timestamp_ms, record.born_host,
                              record.reconsume_times, batch=False)
        fields["flag"] = record.flag
        fields["properties"] = rec.encode_properties(props).decode()
        self._transmit(Flight([(lane, offset)], RequestCode.SEND_MESSAGE, fields, record.body, now))

    @staticmethod
    def _fields(topic: str, queue_id: int, sys_flag: int, born_ms: int, born_host: bytes, reconsume: int,
                *, batch: bool) -> dict:
        host, port = rec.decode_host(born_host)
        return {"producerGroup": PRODUCER_GROUP, "topic": topic, "queueId": queue_id, "sysFlag": sys_flag,
                "bornTimestamp": born_ms, "bornHost": f"{host}:{port}", "reconsumeTimes": reconsume,
                "batch": batch}

    def _send_batches(self, now: int) -> None:
        for key, items in self.batches.items():
            fields = self._fields(*key, batch=True)
            start = 0
            while start < len(items):
                end, size = start, 0
                while end < len(items) and end - start < BATCH_MAX_MESSAGES and size < BATCH_MAX_BYTES:
                    size += len(items[end][3]) + len(items[end][4])
                    end += 1
                chunk = items[start:end]
                body = codec.encode_batch((flag, body, props) for _l, _o, flag, body, props in chunk)
                units = [(lane, offset) for lane, offset, *_rest in chunk]
                self._transmit(Flight(units, RequestCode.SEND_BATCH_MESSAGE, fields, body, now))
                start = end
        self.batches.clear()

    def _transmit(self, flight: Flight) -> None:
        opaque = next(self.opaques)
        frame = codec.encode_request(flight.code, opaque, flight.fields, flight.body)
        try:
            self.dealer.send(frame, zmq.NOBLOCK)
        except zmq.Again:
            self.retries.append((flight.sent_ms + RETRY_BACKOFF_MS, flight))
            return
        self.inflight[opaque] = flight

    def _take_replies(self) -> None:
        while True:
            try:
                frame = self.dealer.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                reply = codec.decode(frame)
            except ProtocolError as exc:
                log.warning("malformed reply from the front: %s", exc)
                continue
            flight = self.inflight.pop(reply.opaque, None)
            if flight is None:
                continue  # answered after we re-sent it
            if reply.code in RETRY_CODES:
                self.busy += 1
                self.retries.append((now_ms() + RETRY_BACKOFF_MS, flight))
                continue
            if reply.code not in STORED_CODES:
                lane, offset = flight.units[0]
                log.error("delivery of %d messages (%s/%d offset %d...) to %s refused (code %d: %s); dropped",
                          len(flight.units), lane.topic, lane.queue_id, offset, flight.fields["topic"],
                          reply.code, reply.remark)
            for lane, offset in flight.units:
                lane.outstanding.discard(offset)

    def _resend(self, now: int) -> None:
        retries = self.retries
        while retries and retries[0][0] <= now and len(self.inflight) < MAX_IN_FLIGHT:
            _at, flight = retries.popleft()
            self._transmit(flight._replace(sent_ms=now))
        if self.inflight:
            oldest = next(iter(self.inflight.values()))
            if now - oldest.sent_ms > RESEND_AFTER_MS:
                stale = [o for o, f in self.inflight.items() if now - f.sent_ms > RESEND_AFTER_MS]
                log.warning("%d deliveries unanswered for %d ms; sending them again", len(stale),
                            RESEND_AFTER_MS)
                for opaque in stale:
                    self._transmit(self.inflight.pop(opaque)._replace(sent_ms=now))

    # -- persistence -------------------------------------------------------------------------
    def _persist(self) -> None:
        self.level_table.update(self.level_lanes)
        self.timer_table.update(self.timer_lanes)
        self.level_table.persist()
        self.timer_table.persist()

    def teardown(self) -> None:
        """Wait a little for the answers of what is in flight, then persist what was acknowledged."""
        deadline = time.monotonic() + 3.0
        while self.inflight and time.monotonic() < deadline:
            if self.dealer.poll(50):
                self._take_replies()
        self._persist()
        log.info("scheduler stopping: %d delivered, %d moved between timer queues, %d requests refused as "
                 "busy and sent again, %d unanswered", self.delivered, self.moved, self.busy,
                 len(self.inflight))
        self.dealer.close(linger=0)
        self.ctx.term()


def main(argv: list[str] | None = None) -> int:
    return run_from_argv(Scheduler, argv)


if __name__ == "__main__":
    raise SystemExit(main())
