"""Front: the broker's ZeroMQ ROUTER — decodes requests, feeds the writer, answers pulls.

Reads shm:   ring "ack" (writer -> front), ring "wake" (holder -> front), doorbell "flushed"
             (SYNC_FLUSH), positions (write/flush/dispatch, flags)
Writes shm:  ring "request" (front -> writer), ring "park" (front -> holder),
             positions.pull_messages_total, heartbeats[front]
Files:       commitlog/* and consumequeue/* read-only (pulls), config/topics.json and
             config/consumerOffset.json (the only process that writes them)
On crash:    restartable: sends in flight are lost unacknowledged (producers retry); committed
             offsets since the last 5 s persist are lost (consumers see those messages again).

The ROUTER is rmqd/protocol/router.py: ZMTP spoken by this process's own thread, no libzmq I/O
thread between the kernel and the loop (the namesrv DEALERs are pyzmq).
The loop (zguide's mdbroker shape): poll the ROUTER socket, the namesrv DEALERs and the eventfds
of the ack/wake rings together; then serve every ready request (sends go into the request ring
and are published to the writer ONCE per round), answer what the writer acknowledged, re-run the
pulls the holder woke, and do the periodic work. Sends are answered when the writer's
AppendResult arrives, or, with SYNC_FLUSH, once flush_pos passes the request's end.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import time
from functools import lru_cache
from typing import NamedTuple

import zmq

from rmqd.broker import retry as retry_logic
from rmqd.broker import schedule
from rmqd.broker import send as send_logic
from rmqd.broker.admin import AdminHandlers, ConsumerGroups, Reply, open_index_reader
from rmqd.broker.consumer_offsets import ConsumerOffsetManager
from rmqd.broker.hold import ParkedPull, decode_parked_pull, encode_parked_pull, parked_pull_size
from rmqd.broker.pull import GetStatus, MessageReader, tag_codes_of
from rmqd.broker.subscription_group import SubscriptionGroupManager
from rmqd.broker.topic_config import TopicConfigManager, topic_name_problem
from rmqd.errors import ProtocolError
from rmqd.ops.figures import SendRtRecorder
from rmqd.ops.log_limit import LogLimiter
from rmqd.protocol import codec
from rmqd.protocol.codec import Command
from rmqd.protocol.commands import MAX_FRAME_BYTES, RequestCode, ResponseCode
from rmqd.protocol.router import RouterSocket, SendStatus
from rmqd.store import append_request as ar
from rmqd.store import record as rec
from rmqd.store.commit_log import CommitLog
from rmqd.store.consume_queue import ConsumeQueueStore
from shm import flags
from workers.base import WorkerProcess, run_from_argv

log = logging.getLogger("rmqd.front")

MAX_REQUESTS_PER_ROUND = 512  # bound one round so acks and wakes are never starved
# Requests served between two hand-offs to the writer within a round (publish the request ring,
# answer what it acknowledged): the writer and the clients work while the front serves the rest,
# instead of the round's end (measured, 64 x 100 B batches, 128 in flight: 213k -> 261k msg/s).
HAND_OFF_EVERY = 8
MAX_PENDING_SENDS = 20_000  # sends handed to the writer and not yet answered (memory bound)
PULL_FLAG_COMMIT_OFFSET = 0x1  # RocketMQ PullSysFlag
PULL_FLAG_SUSPEND = 0x2
HOUSEKEEPING_INTERVAL_S = 1.0
PUT_STATUS_REPLY = {
    ar.PutStatus.SERVICE_NOT_AVAILABLE: (ResponseCode.SERVICE_NOT_AVAILABLE, "store is not writable now"),
    ar.PutStatus.MESSAGE_ILLEGAL: (ResponseCode.MESSAGE_ILLEGAL, "message larger than a CommitLog file"),
    ar.PutStatus.UNKNOWN_ERROR: (
        ResponseCode.SYSTEM_ERROR,
        "CommitLog write failed; store flagged not writable",
    ),
}
PULL_STATUS_CODE = {
    GetStatus.FOUND: ResponseCode.SUCCESS,
    GetStatus.NO_MATCHED_MESSAGE: ResponseCode.PULL_RETRY_IMMEDIATELY,
    GetStatus.OFFSET_OVERFLOW_ONE: ResponseCode.PULL_NOT_FOUND,
    GetStatus.OFFSET_FOUND_NULL: ResponseCode.PULL_NOT_FOUND,
    GetStatus.OFFSET_TOO_SMALL: ResponseCode.PULL_OFFSET_MOVED,
    GetStatus.OFFSET_OVERFLOW_BADLY: ResponseCode.PULL_OFFSET_MOVED,
}


class PendingSend(NamedTuple):
    identity: bytes | None  # None for oneway sends: nobody to answer
    opaque: int
    queue_id: int
    created: float


@lru_cache(maxsize=1024)
def _tag_codes(expression: str) -> frozenset[int] | None:
    return tag_codes_of(expression)


class Front(WorkerProcess):
    name = "front"

    def setup(self) -> None:
        cfg = self.cfg
        self.broker_addr = f"{cfg.brokerIP1}:{cfg.listenPort}"
        self.store_host = rec.encode_host(cfg.brokerIP1, cfg.listenPort)
        self.positions = self.shm.positions
        self._open_store()
        self._open_sockets()
        self.request_ring, self.ack_ring = self.shm.rings["request"], self.shm.rings["ack"]
        self.park_ring, self.wake_ring = self.shm.rings["park"], self.shm.rings["wake"]
        self.flushed = self.shm.doorbells["flushed"]
        self.doorbells = [
            (self.ack_ring.doorbell, self.ack_ring.ready),
            (self.wake_ring.doorbell, self.wake_ring.ready),
        ]
        if cfg.flush_sync:
            self.doorbells.append((self.flushed, self._flush_covers_waiting))
        for doorbell, _ready in self.doorbells:
            self.poller.register(doorbell.fileno(), zmq.POLLIN)
        self.send_rt = SendRtRecorder(self.positions)  # send RT histogram for the metrics process
        self.pending: dict[int, PendingSend] = {}
        self.backlog_since = 0.0  # monotonic time since the ROUTER socket has not been drained
        self.round_sends = 0
        self.sync_waiting: collections.deque[tuple[int, float, PendingSend, ar.AppendResult]] = (
            collections.deque()
        )
        self.request_ids = itertools.count(1)
        self.opaques = itertools.count(1)
        self.wait_time_s = cfg.waitTimeMillsInSendQueue / 1000.0
        # With SYNC_FLUSH a send waits for the flush after the writer's acknowledgement anyway.
        self.spin_s = 0.0 if cfg.flush_sync else cfg.sendAckSpinMicros / 1_000_000
        self.pulled = 0
        self.next_housekeeping = 0.0
        self.next_register = 0.0
        self.next_offset_persist = time.monotonic() + cfg.flushConsumerOffsetInterval / 1000.0
        self._housekeeping()
        self._await_first_registration(timeout_s=3.0)

    def _await_first_registration(self, timeout_s: float) -> None:
        """Be routable before READY (RocketMQ registers at start-up): wait for each namesrv's answer."""
        for dealer in self.namesrvs:
            if dealer.poll(timeout_s * 1000):
                self._drain_namesrv(dealer)
            else:
                log.warning("namesrv %s did not answer the registration within %.0f s; retrying every 1 s",
                            dealer.LAST_ENDPOINT.decode(), timeout_s)
                self.next_register = time.monotonic() + 1.0

    def _open_store(self) -> None:
        cfg = self.cfg
        os.makedirs(cfg.config_dir, exist_ok=True)
        self.topics = TopicConfigManager(
            os.path.join(cfg.config_dir, "topics.json"),
            cluster_name=cfg.brokerClusterName,
            broker_name=cfg.brokerName,
            auto_create=cfg.autoCreateTopicEnable,
            default_queue_nums=cfg.defaultTopicQueueNums,
        )
        self.topics.persist()
        self.offsets = ConsumerOffsetManager(os.path.join(cfg.config_dir, "consumerOffset.json"))
        self.sub_groups = SubscriptionGroupManager(os.path.join(cfg.config_dir, "subscriptionGroup.json"),
                                                   auto_create=cfg.autoCreateSubscriptionGroup)
        self.sub_groups.persist()
        self.consumers = ConsumerGroups(expired_after_s=cfg.channelExpiredTimeout / 1000.0)
        self.commit_log = CommitLog(cfg.store_dir, cfg.mappedFileSizeCommitLog, readonly=True)
        self.cq_store = ConsumeQueueStore(cfg.store_dir, cfg.mappedFileSizeConsumeQueue, readonly=True)
        self.reader = MessageReader(self.commit_log, self.cq_store)
        self.admin = AdminHandlers(
            topics=self.topics,
            offsets=self.offsets,
            consumers=self.consumers,
            cq_store=self.cq_store,
            commit_log=self.commit_log,
            runtime_info=self.runtime_info,
            on_topics_changed=self._register_now,
            index=open_index_reader(cfg),
            shm=self.shm,
            sub_groups=self.sub_groups,
        )

    def _open_sockets(self) -> None:
        cfg = self.cfg
        self.ctx = zmq.Context()
        # Requests are read only as fast as the loop serves them (the rest waits in the kernel and
        # TCP pushes back on the client); requests the front cannot serve within 200 ms are refused with
        # SYSTEM_BUSY (_flow_control). A frame over MAX_FRAME_BYTES drops its peer.
        self.router = RouterSocket(cfg.brokerIP1, cfg.listenPort, max_frame_bytes=MAX_FRAME_BYTES)
        self.client_warnings = LogLimiter(log)  # what a client's bytes can make us log
        self.router_fd = self.router.fileno()
        self.poller = zmq.Poller()
        self.poller.register(self.router_fd, zmq.POLLIN)
        self.poller.register(self._signal_r, zmq.POLLIN)
        self.namesrvs = []
        for addr in filter(None, (a.strip() for a in cfg.namesrvAddr.split(";"))):
            dealer = self.ctx.socket(zmq.DEALER)
            dealer.setsockopt(zmq.LINGER, 0)
            dealer.setsockopt(zmq.SNDHWM, 16)  # registrations are idempotent; a few may queue
            dealer.connect(f"tcp://{addr}")
            self.poller.register(dealer, zmq.POLLIN)
            self.namesrvs.append(dealer)
        log.info("listening on %s, namesrv %s", self.broker_addr, cfg.namesrvAddr or "(none)")

    # -- the loop ----------------------------------------------------------------------------
    def run_once(self) -> bool:
        self._wait()
        self._serve_requests()
        self.request_ring.publish()
        self._take_acks()
        self._take_wakes()
        self.park_ring.publish()
        if self.sync_waiting:
            self._answer_flushed()
        self.router.flush()
        if time.monotonic() >= self.next_housekeeping:
            self._housekeeping()
        if self.consumers.changed:
            self._notify_consumers_changed()
        return True

    def _wait(self) -> None:
        """Block until a socket, a doorbell or housekeeping needs us. Sets `ready_socks`: what the
        poll reported (None when it was skipped because work was already there), so the loop only
        makes the syscalls that can find something: each zmq recv attempt and each eventfd read
        is one, and on an idle broker they were most of a request's 0.5 ms in the front."""
        self.router.flush()  # every answer leaves before we sleep
        if self.spin_s and self.pending and not self.ack_ring.ready():
            self._spin_for_ack()
        for doorbell, _ready in self.doorbells:
            doorbell.arm()
        self.ready_socks: set | None = None
        if not (self.router.pending() or any(ready() for _doorbell, ready in self.doorbells)):
            timeout_s = max(0.0, min(self.next_housekeeping - time.monotonic(), 0.2))
            self.ready_socks = {sock for sock, _event in self.poller.poll(timeout_s * 1000)}
            if self._signal_r in self.ready_socks:
                os.read(self._signal_r, 512)
        for doorbell, _ready in self.doorbells:
            doorbell.disarm(drain=self.ready_socks is None or doorbell.fileno() in self.ready_socks)

    def _spin_for_ack(self) -> None:
        """Check for the writer's acknowledgement (an shm read) and, every 8th turn, for a new
        request or a woken pull, for up to sendAckSpinMicros before sleeping: the acknowledgement
        of a lone send usually comes within ~100 µs, and catching it awake saves the writer's
        eventfd write and our wake-up."""
        ack_ready, wake_ready, router = self.ack_ring.ready, self.wake_ring.ready, self.router
        clock = time.perf_counter
        deadline = clock() + self.spin_s
        turn = 0
        while not ack_ready():
            turn += 1
            if turn & 7 == 0 and (clock() >= deadline or wake_ready()
                                  or router.readable()):
                return

    def _serve_requests(self) -> None:
        self.round_sends = 0
        ready = self.ready_socks
        if ready is not None and self.router_fd not in ready and not self.backlog_since:
            for dealer in self.namesrvs:
                if dealer in ready:
                    self._drain_namesrv(dealer)
            return
        for served in range(MAX_REQUESTS_PER_ROUND):
            if served and served % HAND_OFF_EVERY == 0:
                self._hand_off()
            frames = self.router.recv_multipart()
            if frames is None:
                self.backlog_since = 0.0  # caught up: the socket is empty
                break
            if len(frames) != 2:
                self.client_warnings.warning(
                    "dropped a message of %d frames from %r: requests are exactly one frame",
                    len(frames),
                    frames[0][:16] if frames else b"",
                )
                continue
            self._serve(frames[0], frames[1])
        else:  # a whole round and still more waiting: requests are queueing in front of us
            self.backlog_since = self.backlog_since or time.monotonic()
        for dealer in self.namesrvs:
            if ready is not None and dealer not in ready:
                continue
            self._drain_namesrv(dealer)

    def _serve(self, identity: bytes, frame: bytes) -> None:
        try:
            cmd = codec.decode(frame)
        except ProtocolError as exc:
            reply = codec.malformed_reply(frame, exc)
            self.client_warnings.warning("malformed request from %r: %s%s", identity[:16], exc,
                                         "" if reply else "; dropped")
            if reply is not None:
                self._send(identity, reply)
            return
        oneway = cmd.is_oneway
        try:
            reply = self._dispatch(identity if not oneway else None, cmd, frame)
        except ProtocolError as exc:
            reply = Reply(ResponseCode.INVALID_PARAMETER, str(exc))
        except Exception as exc:  # noqa: BLE001 - bad input must never take the front down
            log.exception("request code %d from %r failed", cmd.code, identity[:16])
            reply = Reply(ResponseCode.SYSTEM_ERROR, f"request code {cmd.code} failed: {exc}")
        if reply is not None and not oneway:
            self._reply(identity, cmd.opaque, reply)

    def _dispatch(self, identity: bytes | None, cmd: Command, frame: bytes) -> Reply | None:
        code = cmd.code
        if code in (RequestCode.SEND_MESSAGE, RequestCode.SEND_MESSAGE_V2):
            return self.process_send(identity, cmd, batch=False)
        if code == RequestCode.SEND_BATCH_MESSAGE:
            return self.process_send(identity, cmd, batch=True)
        if code == RequestCode.PULL_MESSAGE:
            self._hand_off()
            return self.process_pull(identity, cmd, frame, allow_suspend=True)
        if code == RequestCode.HEART_BEAT:  # the identity is where NOTIFY_CONSUMER_IDS_CHANGED goes
            retry_logic.ensure_retry_topics(cmd.body, self.topics, self._register_now)  # %RETRY%group
            return self.admin.heartbeat(cmd, identity)
        if code == RequestCode.CONSUMER_SEND_MSG_BACK:
            return self.process_send_back(identity, cmd)
        handler = self.admin.table.get(code)
        if handler is None:
            return Reply(
                ResponseCode.REQUEST_CODE_NOT_SUPPORTED,
                f"request code {code} is not supported by this broker (rmqd)",
            )
        return handler(cmd)

    def _reply(self, identity: bytes, opaque: int, reply: Reply) -> None:
        self._send(
            identity, codec.encode_response(reply.code, opaque, reply.fields, reply.remark, reply.body)
        )

    def _send(self, identity: bytes, frame: bytes) -> None:
        """Queue an answer (it leaves at the router's next flush); a client that disconnected gets none."""
        if self.router.send(identity, frame) is SendStatus.FULL:
            self.client_warnings.warning("client %r is not reading its answers; dropped one", identity[:16])

    # -- sends -------------------------------------------------------------------------------
    def process_send(self, identity: bytes | None, cmd: Command, *, batch: bool) -> Reply | None:
        writable, reason = flags.is_writable(self.positions)
        if not writable:
            return Reply(ResponseCode.SERVICE_NOT_AVAILABLE, f"service not available now: {reason}")
        busy = self._flow_control()
        if busy:
            return Reply(ResponseCode.SYSTEM_BUSY, busy)
        topic = cmd.field_str("topic")
        config = self.topics.get(topic)
        if config is None:
            # Names in the table were validated when created: only a new name is checked (no regex
            # per send on the hot path).
            problem = topic_name_problem(topic)
            if problem:
                return Reply(ResponseCode.MESSAGE_ILLEGAL, problem)
            config = self.topics.create_in_send(
                topic, cmd.field_str("defaultTopic", "TBW102"), cmd.field_int("defaultTopicQueueNums", 4)
            )
            if config is None:
                return Reply(
                    ResponseCode.TOPIC_NOT_EXIST,
                    f"topic[{topic}] not exist, apply first please! "
                    f"(mqadmin updateTopic, or autoCreateTopicEnable=true)",
                )
            log.info("topic %s auto-created with %d queues", topic, config.writeQueueNums)
            self._register_now()
        if not config.writable:
            return Reply(ResponseCode.NO_PERMISSION, f"the topic[{topic}] sending is forbidden")
        prepared = send_logic.prepare_send(
            cmd.fields,
            cmd.body,
            batch=batch,
            write_queue_nums=config.writeQueueNums,
            max_message_size=self.cfg.maxMessageSize,
        )
        if isinstance(prepared, send_logic.Rejection):
            return Reply(prepared.code, prepared.remark)
        scheduled = schedule.maybe_redirect(prepared, batch=batch, cfg=self.cfg)  # DELAY / TIMER_DELIVER_MS
        if scheduled is not None:
            if isinstance(scheduled, send_logic.Rejection):
                return Reply(scheduled.code, scheduled.remark)
            prepared = scheduled
        return self._hand_to_writer(identity, cmd.opaque, prepared)

    def process_send_back(self, identity: bytes | None, cmd: Command) -> Reply | None:
        """CONSUMER_SEND_MSG_BACK: the retry (or DLQ) copy goes through the send path (broker/retry.py)."""
        group = cmd.field_str("group", "")
        group_config = self.sub_groups.find_or_create(group)
        if group_config is None:
            return Reply(ResponseCode.SUBSCRIPTION_GROUP_NOT_EXIST, _no_group_remark(group))
        prepared = retry_logic.build_send_back(cmd.fields, self.commit_log, self.topics,
                                               on_topic_created=self._register_now,
                                               group_retry_max_times=group_config.retryMaxTimes)
        if not isinstance(prepared, send_logic.Rejection):
            prepared = schedule.maybe_redirect(prepared, batch=False, cfg=self.cfg) or prepared
        if isinstance(prepared, send_logic.Rejection):
            return Reply(prepared.code, prepared.remark)
        return self._hand_to_writer(identity, cmd.opaque, prepared)

    def _flow_control(self) -> str:
        """RocketMQ's send-queue rules: SYSTEM_BUSY at once instead of letting requests age.

        Two queues can grow: sends handed to the writer and not yet acknowledged (`pending`), and
        requests waiting in our own socket while this process is the bottleneck (`backlog_since`:
        the socket has not been empty for that long). A request that would wait more than
        waitTimeMillsInSendQueue (200 ms) in either is refused; refusing costs a few microseconds,
        so the front drains its socket fast and the backlog, and memory, stay bounded (per client:
        RCVHWM requests in our socket; sends in flight: MAX_PENDING_SENDS).
        """
        now = time.monotonic()
        self.round_sends += 1
        # Backlogged: serve the first half of each round's sends and refuse the rest, so the front
        # keeps storing at about its capacity while it answers the excess at once.
        if (self.backlog_since and now - self.backlog_since > self.wait_time_s
                and self.round_sends > MAX_REQUESTS_PER_ROUND // 2):
            return (f"[TIMEOUT_CLEAN_QUEUE]broker busy, start flow control for a while, "
                    f"period in queue: {(now - self.backlog_since) * 1000:.0f}ms")
        if len(self.pending) >= MAX_PENDING_SENDS:
            return f"[TOO_MANY_REQUESTS]broker busy: {len(self.pending)} sends in flight; retry later"
        if self.pending:
            waited_s = now - next(iter(self.pending.values())).created
            if waited_s > self.wait_time_s:
                return (
                    f"[TIMEOUT_CLEAN_QUEUE]broker busy, start flow control for a while, "
                    f"period in queue: {waited_s * 1000:.0f}ms"
                )
        return ""

    def _hand_to_writer(
        self, identity: bytes | None, opaque: int, prepared: send_logic.PreparedSend
    ) -> Reply | None:
        size = prepared.entry_size()
        if size > self.request_ring.max_payload:
            return Reply(ResponseCode.MESSAGE_ILLEGAL, f"request of {size} bytes exceeds the request ring")
        view = self.request_ring.reserve(size)
        if view is None:
            self.request_ring.publish()
            return Reply(
                ResponseCode.SYSTEM_BUSY, "[PC_SYNCHRONIZED]broker busy, start flow control for a while"
            )
        request_id = next(self.request_ids)
        send_logic.encode_into(view, request_id, prepared, self.store_host)
        self.request_ring.commit(0)
        self.pending[request_id] = PendingSend(identity, opaque, prepared.queue_id, time.monotonic())
        return None

    def _take_acks(self) -> None:
        entries = self.ack_ring.entries()
        if not entries:
            return
        flush_pos = self.positions.flush_pos
        deadline = time.monotonic() + self.cfg.syncFlushTimeout / 1000.0
        for _kind, entry in entries:
            result = ar.decode_append_result(entry)
            pending = self.pending.pop(result.request_id, None)
            if pending is None or pending.identity is None:
                continue
            if result.status != ar.PutStatus.PUT_OK:
                code, remark = PUT_STATUS_REPLY[result.status]
                self._reply(pending.identity, pending.opaque, Reply(code, remark))
            elif self.cfg.flush_sync and result.end_phy_offset > flush_pos:
                self.sync_waiting.append((result.end_phy_offset, deadline, pending, result))
            else:
                self._reply_sent(pending, result, ResponseCode.SUCCESS)
        self.ack_ring.release()

    def _reply_sent(
        self, pending: PendingSend, result: ar.AppendResult, code: ResponseCode, remark: str = ""
    ) -> None:
        self.send_rt.observe(time.monotonic() - pending.created)
        fields = {
            "offsetMsgId": rec.offset_msg_ids(self.store_host, result.phy_offsets),
            "queueId": pending.queue_id,
            "queueOffset": result.queue_offset,
        }
        self._reply(pending.identity, pending.opaque, Reply(code, remark, fields))

    def _flush_covers_waiting(self) -> bool:
        return bool(self.sync_waiting) and self.sync_waiting[0][0] <= self.positions.flush_pos

    def _answer_flushed(self) -> None:
        flush_pos = self.positions.flush_pos
        waiting = self.sync_waiting
        while waiting and waiting[0][0] <= flush_pos:
            _end, _deadline, pending, result = waiting.popleft()
            self._reply_sent(pending, result, ResponseCode.SUCCESS)
        now = time.monotonic()
        while waiting and waiting[0][1] <= now:
            _end, _deadline, pending, result = waiting.popleft()
            self._reply_sent(
                pending,
                result,
                ResponseCode.FLUSH_DISK_TIMEOUT,
                f"flush did not complete within syncFlushTimeout={self.cfg.syncFlushTimeout}ms",
            )

    # -- pulls -------------------------------------------------------------------------------
    def process_pull(
        self, identity: bytes | None, cmd: Command, frame: bytes, *, allow_suspend: bool
    ) -> Reply | None:
        topic = cmd.field_str("topic")
        queue_id = cmd.field_int("queueId")
        queue_offset = cmd.field_int("queueOffset")
        sys_flag = cmd.field_int("sysFlag", 0)
        config = self.topics.get(topic)
        if config is None:
            return Reply(ResponseCode.TOPIC_NOT_EXIST, f"topic[{topic}] not exist, apply first please!")
        if not config.readable:
            return Reply(ResponseCode.NO_PERMISSION, f"the topic[{topic}] pulling message is forbidden")
        group = cmd.field_str("consumerGroup", "")
        group_config = self.sub_groups.find_or_create(group)
        if group_config is None:
            return Reply(ResponseCode.SUBSCRIPTION_GROUP_NOT_EXIST, _no_group_remark(group))
        if not group_config.consumeEnable:
            return Reply(ResponseCode.NO_PERMISSION,
                         f"subscription group no permission, {group} (consumeEnable is false: "
                         f"mqadmin updateSubGroup -g {group} -b ADDR -s true)")
        if not 0 <= queue_id < config.readQueueNums:
            return Reply(
                ResponseCode.INVALID_PARAMETER,
                f"queueId[{queue_id}] is illegal, topic:[{topic}] "
                f"topicConfig.readQueueNums:[{config.readQueueNums}]",
            )
        # A pull woken by the holder (allow_suspend False) was already applied when it first came in:
        # applying its piggybacked commit again could move the group's offset backwards.
        if allow_suspend and sys_flag & PULL_FLAG_COMMIT_OFFSET and cmd.field_int("commitOffset", -1) >= 0:
            self.offsets.commit(
                cmd.field_str("consumerGroup"), topic, queue_id, cmd.field_int("commitOffset")
            )
        max_count = max(1, min(cmd.field_int("maxMsgNums", 32), self.cfg.maxTransferCountOnMessageInMemory))
        max_bytes = min(cmd.field_int("maxMsgBytes", 1 << 30), self.cfg.maxTransferBytesOnMessageInMemory)
        result = self.reader.get_messages(
            topic,
            queue_id,
            queue_offset,
            max_count,
            max_bytes,
            _tag_codes(cmd.field_str("subscription", "*")),
            self.positions.dispatch_pos,
        )
        code = PULL_STATUS_CODE.get(result.status, ResponseCode.PULL_NOT_FOUND)
        if result.status is GetStatus.NO_MESSAGE_IN_QUEUE and queue_offset != 0:
            code = ResponseCode.PULL_OFFSET_MOVED
        suspend_ms = cmd.field_int("suspendTimeoutMillis", 0)
        if (
            code == ResponseCode.PULL_NOT_FOUND
            and allow_suspend
            and identity is not None
            and sys_flag & PULL_FLAG_SUSPEND
            and suspend_ms > 0
        ):
            if not self.cfg.longPollingEnable:
                suspend_ms = self.cfg.shortPollingTimeMills
            if self._park(identity, topic, queue_id, queue_offset, suspend_ms, frame):
                return None
        body = list(result.buffers) if result.buffers else b""  # joined once, into the frame
        self.pulled += result.message_count
        fields = {
            "nextBeginOffset": result.next_offset,
            "minOffset": result.min_offset,
            "maxOffset": result.max_offset,
            "suggestWhichBrokerId": 0,
        }
        return Reply(code, "" if code == ResponseCode.SUCCESS else result.status.value, fields, body)

    def _park(
        self, identity: bytes, topic: str, queue_id: int, queue_offset: int, suspend_ms: int, frame: bytes
    ) -> bool:
        deadline_ms = time.time_ns() // 1_000_000 + suspend_ms
        pull = ParkedPull(queue_offset, deadline_ms, queue_id, topic.encode(), identity, frame)
        view = self.park_ring.reserve(parked_pull_size(pull.topic, identity, frame))
        if view is None:
            return False  # holder behind: answer NO_NEW_MSG now, the client pulls again
        encode_parked_pull(view, pull)
        self.park_ring.commit(0)
        return True

    def _hand_off(self) -> None:
        """Hand the sends served so far in this round to the writer now, and answer what the writer
        acknowledged meanwhile: every HAND_OFF_EVERY requests and before each pull (tens of
        microseconds of CommitLog reading and encoding). Sends then never wait for the round's end:
        at full speed a round of 128 batches took ~20 ms, with the writer idle until its end and the
        front idle after it (with a push consumer at 5,000 msg/s, waiting behind pulls was 0.5 ms of
        a send's 0.7 ms in the broker)."""
        self.request_ring.publish()
        if self.ack_ring.ready():
            self._take_acks()
        self.router.flush()  # these answers, and the pulls' and refusals' of the round so far

    def _take_wakes(self) -> None:
        entries = self.wake_ring.entries()
        for _kind, entry in entries:
            self._hand_off()
            pull = decode_parked_pull(entry)
            try:
                cmd = codec.decode(pull.frame)
                reply = self.process_pull(pull.identity, cmd, pull.frame, allow_suspend=False)
            except ProtocolError as exc:
                reply = Reply(ResponseCode.INVALID_PARAMETER, str(exc))
                cmd = None
            if reply is not None:
                self._reply(pull.identity, cmd.opaque if cmd else 0, reply)
        if entries:
            self.wake_ring.release()

    def _notify_consumers_changed(self) -> None:
        """Tell every member of a group whose membership changed (join, leave, expiry) to rebalance
        now: a oneway NOTIFY_CONSUMER_IDS_CHANGED on the connection of its last heartbeat."""
        for identity, group in self.consumers.take_notifications():
            frame = codec.encode_request(
                RequestCode.NOTIFY_CONSUMER_IDS_CHANGED,
                next(self.opaques),
                {"consumerGroup": group},
                oneway=True,
            )
            self._send(identity, frame)

    # -- periodic ----------------------------------------------------------------------------
    def _housekeeping(self) -> None:
        now = time.monotonic()
        self.next_housekeeping = now + HOUSEKEEPING_INTERVAL_S
        self.positions.set_pull_messages_total(self.pulled)
        self.send_rt.publish()
        self.consumers.expire(now)
        self.router.maintain(now)  # handshake timeouts, the listener after an accept pause
        if now >= self.next_register:
            self.register_broker()
        if now >= self.next_offset_persist:
            self.next_offset_persist = now + self.cfg.flushConsumerOffsetInterval / 1000.0
            self._persist_offsets()
        self.commit_log.refresh()

    def _persist_offsets(self) -> None:
        """Write consumerOffset.json if it changed; a failed write (disk full, read-only disk) is
        logged and retried at the next interval, with the table still in memory and still dirty."""
        try:
            self.offsets.maybe_persist()
        except OSError as exc:
            log.error("cannot write %s (%s): consumer offsets stay in memory only; retrying in %.0f s. "
                      "Free disk space under %s", self.offsets.path, exc,
                      self.cfg.flushConsumerOffsetInterval / 1000.0, self.cfg.store_dir)

    def _register_now(self) -> None:
        self.next_register = 0.0
        self.next_housekeeping = 0.0

    def register_broker(self, code: RequestCode = RequestCode.REGISTER_BROKER) -> None:
        cfg = self.cfg
        self.next_register = time.monotonic() + cfg.registerNameServerPeriod / 1000.0
        fields = {
            "clusterName": cfg.brokerClusterName,
            "brokerAddr": self.broker_addr,
            "brokerName": cfg.brokerName,
            "brokerId": cfg.brokerId,
            "haServerAddr": "",
        }
        body = codec.encode_json_body(self.topics.encode()) if code == RequestCode.REGISTER_BROKER else b""
        for dealer in self.namesrvs:
            try:
                dealer.send(codec.encode_request(code, next(self.opaques), fields, body), zmq.NOBLOCK)
            except zmq.Again:  # not connected yet (IMMEDIATE): try again in a second, not in 30 s
                log.info(
                    "namesrv %s not connected yet; retrying registration in 1 s",
                    dealer.LAST_ENDPOINT.decode(),
                )
                self.next_register = min(self.next_register, time.monotonic() + 1.0)

    def _drain_namesrv(self, dealer: zmq.Socket) -> None:
        while True:
            try:
                frame = dealer.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                reply = codec.decode(frame)
            except ProtocolError as exc:
                log.warning("malformed namesrv response: %s", exc)
                continue
            if reply.code != ResponseCode.SUCCESS:
                log.warning("namesrv answered code %d: %s", reply.code, reply.remark)

    def runtime_info(self) -> dict[str, object]:
        positions = self.positions.as_dict()
        return {
            "brokerVersionDesc": "rmqd",
            "commitLogMaxOffset": positions["write_pos"],
            "commitLogMinOffset": positions["min_phy_offset"],
            "flushPos": positions["flush_pos"],
            "dispatchBehindBytes": positions["write_pos"] - positions["dispatch_pos"],
            "putMessageTimesTotal": positions["put_messages_total"],
            "putMessageSizeTotal": positions["put_bytes_total"],
            "getMessageTimesTotal": self.pulled,
            "pendingSends": len(self.pending),
            "diskUsedRatio": positions["disk_used_ppm"] / 1_000_000,
            "brokerName": self.cfg.brokerName,
            "brokerAddr": self.broker_addr,
        }

    def teardown(self) -> None:
        """Stop accepting, answer what the writer still acknowledges, persist config, unregister."""
        deadline = time.monotonic() + 3.0
        while (self.pending or self.sync_waiting) and time.monotonic() < deadline:
            self.ack_ring.wait(0.05)
            self._take_acks()
            self._answer_flushed()
        for table in (self.offsets, self.topics, self.sub_groups):
            try:
                table.persist()
            except OSError as exc:  # e.g. disk full: the previous file (or its .bak) stays valid
                log.error("cannot write %s at stop (%s); it keeps its previous content", table.path, exc)
        self.register_broker(RequestCode.UNREGISTER_BROKER)
        self.router.close(linger_s=0.5)
        for dealer in self.namesrvs:
            dealer.close(linger=100)
        self.ctx.term()


def _no_group_remark(group: str) -> str:
    return (f"subscription group [{group}] does not exist on this broker (create it with "
            f"mqadmin updateSubGroup -g {group} -b ADDR, or set autoCreateSubscriptionGroup=true)")


def main(argv: list[str] | None = None) -> int:
    return run_from_argv(Front, argv)


if __name__ == "__main__":
    raise SystemExit(main())
