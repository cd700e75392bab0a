"""LitePullConsumer: poll-style consumer with assign/seek/commit (RocketMQ DefaultLitePullConsumer).

    c = LitePullConsumer("cg", namesrv="127.0.0.1:9876")
    c.subscribe("Orders", "A || B")        # or c.assign([MessageQueue(...)]) to pick queues yourself
    c.start()
    msgs = c.poll(timeout_ms=1000)         # list[MessageExt]
    c.commit(); c.seek(queue, offset); c.committed(queue); c.shutdown()

Pulling: `poll` sends one PULL_MESSAGE per owned queue that has none outstanding (asynchronously,
all queues at once) with long polling: suspendTimeoutMillis = what is left of the poll timeout,
so the broker answers at once when messages exist and holds the pull otherwise. `poll` returns as
soon as any queue delivered messages; pulls still outstanding stay in flight and are collected by
the next `poll` (their results are never lost, and `seek` / reassignment discard stale ones).
Tags are filtered exactly on the client (the broker filters by tag hash). PULL_OFFSET_MOVED jumps
to the broker's nextBeginOffset (and commits it). Errors back off the queue for 1 s.

Offsets: the offset of a queue is the next queue offset to consume. Messages returned by `poll`
count as consumed. `commit()` sends UPDATE_CONSUMER_OFFSET for every queue that moved since its
last commit. With auto_commit (default), `poll` commits every auto_commit_interval_ms what the
previous polls returned (at-least-once: call poll again only after processing), and `shutdown`
commits. BROADCASTING keeps offsets locally (in memory, and in `offset_store_path` if given).
Where a queue starts without a committed offset: see `_rebalance.compute_start_offset`.

Group membership (CLUSTERING + subscribe): HEART_BEAT to every broker of the subscribed topics at
start and every 30 s; every 20 s (or at once when a broker pushes NOTIFY_CONSUMER_IDS_CHANGED) the
consumer asks GET_CONSUMER_LIST_BY_GROUP and keeps the queues `allocate_averagely` gives it.
This maintenance runs inside `poll` (there is no background thread): a consumer that stops polling
for longer than the broker's channel expiry loses its queues to the others, like Kafka's
max.poll.interval.

Thread-safety: every method may be called from any thread; state changes happen under one lock,
which `poll` releases while it waits for the network.
"""
from __future__ import annotations

import logging
import struct
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass

from rmqd.client._ids import new_client_id
from rmqd.client._offset_store import LocalOffsetStore
from rmqd.client._rebalance import Subscription, allocate_averagely, compute_start_offset, parse_subscription
from rmqd.client._remoting import RemotingClient
from rmqd.client._route import NamesrvClient, RouteCache, check_response, namesrv_addrs
from rmqd.client.producer import validate_group
from rmqd.errors import ClientError, CorruptRecordError, MQClientError, ProtocolError, RmqError
from rmqd.message import (
    ConsumeFromWhere,
    MessageExt,
    MessageModel,
    MessageQueue,
    PullStatus,
    validate_topic,
)
from rmqd.protocol import Command, PullSysFlag, RequestCode, ResponseCode, decode_json_body, encode_json_body
from rmqd.store.record import decode_record

log = logging.getLogger(__name__)

ERROR_BACKOFF_S = 1.0  # RocketMQ waits 3 s after a pull exception; 1 s keeps tests and failover snappy
EMPTY_BACKOFF_S = 0.05  # a broker that answers "no new message" at once (no long polling) is re-asked 20x/s
PULL_TIMEOUT_MARGIN_MS = 3000  # network timeout of a pull = its suspend time + this margin
BROKER_SUSPEND_MAX_MS = 15_000  # RocketMQ brokerSuspendMaxTimeMillis
DEFAULT_TIMESTAMP_LOOKBACK_MS = 30 * 60 * 1000  # RocketMQ consumeTimestamp default: 30 minutes ago

PULL_STATUS_BY_CODE = {
    ResponseCode.SUCCESS: PullStatus.FOUND,
    ResponseCode.PULL_NOT_FOUND: PullStatus.NO_NEW_MSG,
    ResponseCode.PULL_RETRY_IMMEDIATELY: PullStatus.NO_MATCHED_MSG,
    ResponseCode.PULL_OFFSET_MOVED: PullStatus.OFFSET_ILLEGAL,
}


@dataclass(slots=True)
class _QueueState:
    offset: int | None = None  # next queue offset to consume; None until the start offset is known
    committed: int | None = None  # last offset committed (or read back) for this queue
    epoch: int = 0  # bumped by seek: results of pulls sent before are dropped
    inflight: Future | None = None
    inflight_epoch: int = 0
    inflight_offset: int = 0
    issued_at: float = 0.0
    suspend_ms: int = 0
    not_before: float = 0.0


class LitePullConsumer:
    """Poll-style consumer; see the module docstring."""

    def __init__(
        self, group: str, namesrv: str | None = None, *,
        message_model: MessageModel = MessageModel.CLUSTERING,
        consume_from: ConsumeFromWhere = ConsumeFromWhere.LAST_OFFSET,
        consume_timestamp_ms: int | None = None, pull_batch_size: int = 32,
        pull_max_bytes: int = 4 * 1024 * 1024, auto_commit: bool = True,
        auto_commit_interval_ms: int = 5000, rebalance_interval_ms: int = 20_000,
        heartbeat_interval_ms: int = 30_000, request_timeout_ms: int = 3000,
        offset_store_path: str | None = None,
    ) -> None:
        self.group = validate_group(group)
        self.namesrv_addrs = namesrv_addrs(namesrv)
        self.message_model = message_model
        self.consume_from = consume_from
        default_timestamp_ms = int(time.time() * 1000) - DEFAULT_TIMESTAMP_LOOKBACK_MS
        self.consume_timestamp_ms = consume_timestamp_ms or default_timestamp_ms
        if not 1 <= pull_batch_size <= 1024:
            raise MQClientError(f"pull_batch_size must be 1..1024, got {pull_batch_size}")
        self.pull_batch_size = pull_batch_size
        self.pull_max_bytes = pull_max_bytes
        self.auto_commit = auto_commit
        self.auto_commit_interval_ms = auto_commit_interval_ms
        self.rebalance_interval_ms = rebalance_interval_ms
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.request_timeout_ms = request_timeout_ms
        self.offset_store_path = offset_store_path
        self.client_id = new_client_id()
        self._lock = threading.RLock()
        self._wakeup = threading.Event()
        self._subscriptions: dict[str, Subscription] = {}
        self._queues: dict[MessageQueue, _QueueState] = {}
        self._assigned = False
        self._local = LocalOffsetStore(self.group, offset_store_path)
        self._rebalance_requested = False
        self._next_heartbeat = self._next_rebalance = self._next_commit = 0.0
        self._remoting: RemotingClient | None = None

    # ---------------------------------------------------------------- configuration

    def subscribe(self, topic: str, expression: str = "*") -> None:
        """Consume `topic` messages whose tag matches `expression` ("*" or "A || B"); queues are
        assigned by the group's rebalance."""
        validate_topic(topic, allow_system=True)
        with self._lock:
            if self._assigned:
                raise MQClientError("subscribe() cannot be mixed with assign() on one consumer")
            self._subscriptions[topic] = parse_subscription(topic, expression)
            self._rebalance_requested = True

    def assign(self, queues: list[MessageQueue]) -> None:
        """Consume exactly these queues (no group rebalance); replaces any previous assignment."""
        if not all(isinstance(queue, MessageQueue) for queue in queues):
            raise MQClientError("assign() takes a list of MessageQueue")
        with self._lock:
            if self._subscriptions and not self._assigned:
                raise MQClientError("assign() cannot be mixed with subscribe() on one consumer")
            self._assigned = True
            self._set_assignment(set(queues))

    def assignment(self) -> list[MessageQueue]:
        with self._lock:
            return sorted(self._queues)

    # ---------------------------------------------------------------- life cycle

    def start(self) -> None:
        """Connect; with subscriptions, join the group and take a share of the queues at once."""
        with self._lock:
            if self._remoting is not None:
                return
            self._remoting = RemotingClient(name=f"rmqd-consumer-{self.group}",
                                            on_request=self._on_broker_request)
            namesrv = NamesrvClient(self._remoting, self.namesrv_addrs, self.request_timeout_ms)
            self._routes = RouteCache(namesrv)
            if self.message_model is MessageModel.BROADCASTING:
                self._local.load()
            self._next_commit = time.monotonic() + self.auto_commit_interval_ms / 1000
            self._maintain(time.monotonic())

    def shutdown(self) -> None:
        """Commit (when auto_commit), leave the group, close connections."""
        with self._lock:
            remoting = self._remoting
            if remoting is None:
                return
            if self.auto_commit:
                self._commit_logged()
            if self._subscriptions and self.message_model is MessageModel.CLUSTERING:
                self._unregister()
            self._wakeup.set()
            self._remoting = None
        remoting.close()

    def __enter__(self) -> LitePullConsumer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    def _running(self) -> RemotingClient:
        if self._remoting is None:
            raise MQClientError(f"consumer {self.group} is not started; call start() first")
        return self._remoting

    # ---------------------------------------------------------------- polling

    def poll(self, timeout_ms: int = 1000) -> list[MessageExt]:
        """Messages from the owned queues, waiting up to `timeout_ms` for some to arrive.

        Returns an empty list on timeout. Never raises for broker or network trouble (it logs and
        backs off the queue); raises MQClientError when the consumer is not started.
        """
        deadline = time.monotonic() + max(0, timeout_ms) / 1000
        while True:
            with self._lock:
                self._running()
                self._maintain(time.monotonic())
                messages = self._harvest()
                remaining_ms = int((deadline - time.monotonic()) * 1000)
                if messages or remaining_ms <= 0:
                    return messages
                self._issue_pulls(min(remaining_ms, BROKER_SUSPEND_MAX_MS))
                states = list(self._queues.values())
                inflight = [state.inflight for state in states if state.inflight is not None]
                wake_at = min([deadline] + [state.not_before for state in states if state.inflight is None])
            self._wait(inflight, max(0.0, wake_at - time.monotonic()))

    def _wait(self, inflight: list[Future], timeout_s: float) -> None:
        if inflight:
            wait(inflight, timeout=timeout_s, return_when=FIRST_COMPLETED)
        else:  # nothing to pull yet (no queue, or all backing off); a broker notification ends it early
            self._wakeup.wait(min(timeout_s, 1.0))
            self._wakeup.clear()

    def _issue_pulls(self, suspend_ms: int) -> None:
        now = time.monotonic()
        for queue, state in self._queues.items():
            if state.inflight is not None or now < state.not_before:
                continue
            if state.offset is None and not self._init_offset(queue, state):
                continue
            addr = self._broker_addr(queue)
            if addr is None:
                state.not_before = now + ERROR_BACKOFF_S
                continue
            fields = self._pull_fields(queue, state.offset, suspend_ms)
            state.inflight = self._running().invoke_async(addr, RequestCode.PULL_MESSAGE, fields,
                                                          timeout_ms=suspend_ms + PULL_TIMEOUT_MARGIN_MS)
            state.inflight_epoch, state.inflight_offset = state.epoch, state.offset
            state.issued_at, state.suspend_ms = now, suspend_ms

    def _pull_fields(self, queue: MessageQueue, queue_offset: int, suspend_ms: int) -> dict[str, object]:
        subscription = self._subscriptions.get(queue.topic) or parse_subscription(queue.topic, "*")
        sys_flag = PullSysFlag.SUBSCRIPTION | (PullSysFlag.SUSPEND if suspend_ms > 0 else 0)
        return {
            "consumerGroup": self.group, "topic": queue.topic, "queueId": queue.queue_id,
            "queueOffset": queue_offset, "maxMsgNums": self.pull_batch_size, "sysFlag": int(sys_flag),
            "commitOffset": 0, "suspendTimeoutMillis": suspend_ms, "subscription": subscription.expression,
            "subVersion": subscription.sub_version, "expressionType": "TAG",
            "maxMsgBytes": self.pull_max_bytes,
        }

    def _harvest(self) -> list[MessageExt]:
        messages: list[MessageExt] = []
        for queue, state in self._queues.items():
            future = state.inflight
            if future is None or not future.done():
                continue
            state.inflight = None
            if state.inflight_epoch != state.epoch:
                continue  # seek() moved the queue after this pull was sent
            messages.extend(self._on_pull_done(queue, state, future))
        return messages

    def _on_pull_done(self, queue: MessageQueue, state: _QueueState, future: Future) -> list[MessageExt]:
        now = time.monotonic()
        try:
            response: Command = future.result()
            status = PULL_STATUS_BY_CODE.get(response.code)
            if status is None:
                raise ClientError(f"broker answered {response.code}: {response.remark}")
            next_offset = response.field_int("nextBeginOffset")
            messages = self._decode_messages(queue, response) if status is PullStatus.FOUND else []
        except (RmqError, ValueError) as exc:
            log.warning("pull %s at offset %d failed: %s; retrying in %.1f s",
                        queue, state.inflight_offset, exc, ERROR_BACKOFF_S)
            state.not_before = now + ERROR_BACKOFF_S
            return []
        if status is PullStatus.OFFSET_ILLEGAL:
            log.warning("offset %d of %s is illegal (min %s, max %s): moving to %d",
                        state.inflight_offset, queue, response.fields.get("minOffset"),
                        response.fields.get("maxOffset"), next_offset)
        elif status is PullStatus.NO_NEW_MSG and (now - state.issued_at) * 1000 < state.suspend_ms / 2:
            state.not_before = now + EMPTY_BACKOFF_S  # the broker did not hold the pull
        state.offset = next_offset
        subscription = self._subscriptions.get(queue.topic)
        if subscription is None:
            return messages
        return [message for message in messages if subscription.matches(message.tags)]

    def _decode_messages(self, queue: MessageQueue, response: Command) -> list[MessageExt]:
        body = response.body
        messages, file_pos = [], 0
        try:
            while file_pos < len(body):
                record = decode_record(body, file_pos, limit=len(body))
                messages.append(MessageExt.from_record(record, queue.broker_name))
                file_pos += record.total_size
        except (CorruptRecordError, UnicodeDecodeError, ValueError, struct.error) as exc:
            raise ProtocolError(f"undecodable record at byte {file_pos} of a pull response: {exc}") from exc
        return messages

    # ---------------------------------------------------------------- offsets

    def commit(self) -> None:
        """Store the offset of every queue that moved since its last commit.

        Raises the first MQBrokerError / RemotingTimeoutError after trying every queue.
        """
        with self._lock:
            self._running()
            self._next_commit = time.monotonic() + self.auto_commit_interval_ms / 1000
            if self.message_model is MessageModel.BROADCASTING:
                self._commit_local()
                return
            errors = self._commit_remote()
        if errors:
            raise errors[0]

    def _commit_remote(self) -> list[RmqError]:
        sent: list[tuple[_QueueState, int, str, Future]] = []
        errors: list[RmqError] = []
        for queue, state in self._queues.items():
            if state.offset is None or state.offset == state.committed:
                continue
            addr = self._broker_addr(queue)
            if addr is None:
                errors.append(MQClientError(f"no broker address for {queue}: offset {state.offset} kept"))
                continue
            fields = {"consumerGroup": self.group, "topic": queue.topic, "queueId": queue.queue_id,
                      "commitOffset": state.offset}
            future = self._running().invoke_async(addr, RequestCode.UPDATE_CONSUMER_OFFSET, fields,
                                                  timeout_ms=self.request_timeout_ms)
            sent.append((state, state.offset, addr, future))
        for state, offset, addr, future in sent:
            try:
                check_response(future.result(), addr)
                state.committed = offset
            except RmqError as exc:
                errors.append(exc)
        return errors

    def _commit_logged(self) -> None:
        try:
            if self.message_model is MessageModel.BROADCASTING:
                self._commit_local()
            else:
                for error in self._commit_remote():
                    log.warning("auto-commit of group %s failed: %s", self.group, error)
        except (RmqError, OSError) as exc:
            log.warning("auto-commit of group %s failed: %s", self.group, exc)
        self._next_commit = time.monotonic() + self.auto_commit_interval_ms / 1000

    def committed(self, queue: MessageQueue) -> int | None:
        """The group's committed offset of `queue` as stored (broker, or locally when broadcasting)."""
        with self._lock:
            self._running()
            if self.message_model is MessageModel.BROADCASTING:
                return self._local.get(queue)
            return self._query_committed(queue)

    def _query_committed(self, queue: MessageQueue) -> int | None:
        addr = self._require_addr(queue)
        fields = {"consumerGroup": self.group, "topic": queue.topic, "queueId": queue.queue_id}
        response = self._running().invoke(addr, RequestCode.QUERY_CONSUMER_OFFSET, fields,
                                          timeout_ms=self.request_timeout_ms)
        if response.code == ResponseCode.QUERY_NOT_FOUND:
            return None
        return check_response(response, addr).field_int("offset")

    def seek(self, queue: MessageQueue, offset: int) -> None:
        """Consume `queue` from `offset` next (committed by the next commit). The queue must be owned."""
        if not isinstance(offset, int) or offset < 0:
            raise MQClientError(f"offset must be an int >= 0, got {offset!r}")
        with self._lock:
            state = self._queues.get(queue)
            if state is None:
                raise MQClientError(f"{queue} is not assigned to this consumer (see assignment())")
            state.offset = offset
            state.epoch += 1
            state.inflight = None
            state.not_before = 0.0

    def _init_offset(self, queue: MessageQueue, state: _QueueState) -> bool:
        """Find where to start on a queue (see compute_start_offset); False (and back off) on failure."""
        try:
            committed = (self._local.get(queue) if self.message_model is MessageModel.BROADCASTING
                         else self._query_committed(queue))
            state.offset = compute_start_offset(
                self.consume_from, queue.topic, committed,
                lambda: self._queue_offset(queue, RequestCode.GET_MIN_OFFSET, {}),
                lambda: self._queue_offset(queue, RequestCode.GET_MAX_OFFSET, {}),
                lambda: self._queue_offset(queue, RequestCode.SEARCH_OFFSET_BY_TIMESTAMP,
                                           {"timestamp": self.consume_timestamp_ms}),
            )
        except RmqError as exc:
            log.warning("cannot find the start offset of %s: %s; retrying in %.1f s",
                        queue, exc, ERROR_BACKOFF_S)
            state.not_before = time.monotonic() + ERROR_BACKOFF_S
            return False
        state.committed = committed
        log.info("group %s starts %s at offset %d (committed %s)", self.group, queue, state.offset, committed)
        return True

    def _queue_offset(self, queue: MessageQueue, code: int, extra: dict[str, object]) -> int:
        addr = self._require_addr(queue)
        fields = {"topic": queue.topic, "queueId": queue.queue_id, **extra}
        response = self._running().invoke(addr, code, fields, timeout_ms=self.request_timeout_ms)
        return check_response(response, addr).field_int("offset")

    def _commit_local(self) -> None:
        for queue, state in self._queues.items():
            if state.offset is not None:
                self._local.update(queue, state.offset)
                state.committed = state.offset
        self._local.persist()

    # ---------------------------------------------------------------- routes and membership

    def _broker_addr(self, queue: MessageQueue) -> str | None:
        try:
            route = self._routes.get(queue.topic)
        except RmqError as exc:
            log.warning("no route for %s: %s", queue.topic, exc)
            return None
        return route.master_addr(queue.broker_name) if route is not None else None

    def _require_addr(self, queue: MessageQueue) -> str:
        addr = self._broker_addr(queue)
        if addr is None:
            raise MQClientError(f"no broker address for {queue} (topic unknown to the namesrv?)")
        return addr

    def _maintain(self, now: float) -> None:
        """Heartbeat, rebalance and auto-commit when due (called by start and poll, under the lock)."""
        if self._subscriptions and not self._assigned:
            if now >= self._next_heartbeat:
                self._heartbeat()
                self._next_heartbeat = now + self.heartbeat_interval_ms / 1000
            if self._rebalance_requested or now >= self._next_rebalance:
                self._rebalance_requested = False
                self._rebalance()
                self._next_rebalance = now + self.rebalance_interval_ms / 1000
        if self.auto_commit and now >= self._next_commit:
            self._commit_logged()

    def _subscribed_broker_addrs(self) -> list[str]:
        addrs: set[str] = set()
        for topic in self._subscriptions:
            try:
                route = self._routes.get(topic)
            except RmqError as exc:
                log.warning("no route for subscribed topic %s: %s", topic, exc)
                continue
            if route is not None:
                addrs.update(route.master_addrs())
        return sorted(addrs)

    def _heartbeat_body(self) -> bytes:
        consumer = {
            "groupName": self.group, "consumeType": "CONSUME_ACTIVELY",
            "messageModel": self.message_model.name,
            "consumeFromWhere": self.consume_from.name, "unitMode": False,
            "subscriptionDataSet": [sub.to_heartbeat() for sub in self._subscriptions.values()],
        }
        heartbeat = {"clientID": self.client_id, "consumerDataSet": [consumer], "producerDataSet": []}
        return encode_json_body(heartbeat)

    def _heartbeat(self) -> None:
        body = self._heartbeat_body()
        for addr in self._subscribed_broker_addrs():
            try:
                check_response(self._running().invoke(addr, RequestCode.HEART_BEAT, {}, body,
                                                      timeout_ms=self.request_timeout_ms), addr)
            except RmqError as exc:
                log.warning("heartbeat to %s failed: %s", addr, exc)

    def _rebalance(self) -> None:
        wanted: set[MessageQueue] = set()
        for topic in self._subscriptions:
            try:
                route = self._routes.get(topic, refresh=True)
            except RmqError as exc:
                log.warning("rebalance of %s skipped: %s", topic, exc)
                wanted.update(queue for queue in self._queues if queue.topic == topic)
                continue
            if route is None:
                log.warning("subscribed topic %s has no route yet", topic)
                continue
            queues = route.subscribe_queues()
            if self.message_model is MessageModel.BROADCASTING:
                wanted.update(queues)
                continue
            client_ids = self._consumer_ids(route.master_addrs())
            if client_ids is None:
                wanted.update(queue for queue in self._queues if queue.topic == topic)
                continue
            wanted.update(allocate_averagely(queues, client_ids, self.client_id))
        self._set_assignment(wanted)

    def _consumer_ids(self, addrs: list[str]) -> list[str] | None:
        for addr in addrs:
            try:
                response = self._running().invoke(addr, RequestCode.GET_CONSUMER_LIST_BY_GROUP,
                                                  {"consumerGroup": self.group},
                                                  timeout_ms=self.request_timeout_ms)
                body = decode_json_body(check_response(response, addr).body, "consumer list")
                ids = body.get("consumerIdList")
                if isinstance(ids, list) and all(isinstance(i, str) for i in ids):
                    return ids
                log.warning("malformed consumer list from %s: %r", addr, ids)
            except RmqError as exc:
                log.warning("consumer list of group %s from %s failed: %s", self.group, addr, exc)
        return None

    def _set_assignment(self, wanted: set[MessageQueue]) -> None:
        removed = [queue for queue in self._queues if queue not in wanted]
        added = [queue for queue in wanted if queue not in self._queues]
        if removed and self._remoting is not None and self.message_model is MessageModel.CLUSTERING:
            for error in self._commit_remote():  # hand the queues over with their progress stored
                log.warning("commit before giving up queues failed: %s", error)
        for queue in removed:
            del self._queues[queue]
        for queue in added:
            self._queues[queue] = _QueueState()
        if removed or added:
            log.info("group %s client %s owns %d queues (+%d -%d)", self.group, self.client_id,
                     len(self._queues), len(added), len(removed))

    def _on_broker_request(self, addr: str, command: Command) -> None:
        """I/O thread: a broker told us the group changed; rebalance at the next poll."""
        if command.code == RequestCode.NOTIFY_CONSUMER_IDS_CHANGED:
            self._rebalance_requested = True
            self._wakeup.set()

    def _unregister(self) -> None:
        fields = {"clientID": self.client_id, "consumerGroup": self.group, "producerGroup": ""}
        for addr in self._subscribed_broker_addrs():
            try:
                self._running().invoke(addr, RequestCode.UNREGISTER_CLIENT, fields, timeout_ms=1000)
            except RmqError as exc:
                log.info("unregister from %s failed: %s", addr, exc)
