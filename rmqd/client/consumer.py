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
count as consumed. `commit()` stores the offset of every owned queue (UPDATE_CONSUMER_OFFSET;
BROADCASTING: the local offset file, see _offset_store.py). With
auto_commit (default), `poll` commits every auto_commit_interval_ms (5 s) what the previous polls
returned (at-least-once: call poll again only after processing), and `shutdown` commits. Where a
queue starts without a committed offset: see `_rebalance.compute_start_offset` and
docs/CONSUMPTION.md.

Group membership (CLUSTERING + subscribe): HEART_BEAT to every broker of the subscribed topics at
start and every 30 s; every 20 s (or at once when a broker pushes NOTIFY_CONSUMER_IDS_CHANGED) the
consumer asks GET_CONSUMER_LIST_BY_GROUP and keeps the queues its allocate strategy gives it
("AVG" by default; see _rebalance.py). A queue given up is committed first.
This maintenance runs inside `poll` (there is no background thread): a consumer that stops polling
for longer than the broker's channel expiry loses its queues to the others, like Kafka's
max.poll.interval.

Thread-safety: every method may be called from any thread; state changes happen under one lock,
which `poll` releases while it waits for the network.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass

from rmqd.client._consumer_core import ConsumerCore, parse_pull_response
from rmqd.client._ids import local_ip, new_client_id
from rmqd.client._offset_store import LocalFileOffsetStore, RemoteBrokerOffsetStore, local_offset_store_path
from rmqd.client._rebalance import AllocateStrategy, Subscription, allocation_strategy, parse_subscription
from rmqd.client.producer import validate_group
from rmqd.errors import MQClientError, RmqError
from rmqd.message import (
    ConsumeFromWhere,
    MessageExt,
    MessageModel,
    MessageQueue,
    PullStatus,
    validate_topic,
)
from rmqd.protocol import RequestCode

log = logging.getLogger(__name__)

ERROR_BACKOFF_S = 1.0  # RocketMQ waits 3 s after a pull exception; 1 s keeps tests and failover snappy
EMPTY_BACKOFF_S = 0.05  # a broker that answers "no new message" at once (no long polling) is re-asked 20x/s
BROKER_SUSPEND_MAX_MS = 15_000  # RocketMQ brokerSuspendMaxTimeMillis
DEFAULT_INSTANCE_NAME = "DEFAULT"  # RocketMQ's instanceName default; names the local offset file


def make_offset_store(core: ConsumerCore, *, instance_name: str, offset_store_dir: str | None,
                      offset_store_path: str | None) -> RemoteBrokerOffsetStore | LocalFileOffsetStore:
    """The store a consumer keeps its offsets in: the broker (CLUSTERING) or a local file."""
    if core.clustering:
        return RemoteBrokerOffsetStore(core.query_committed, core.commit_async)
    path = offset_store_path or local_offset_store_path(core.group, local_ip(), instance_name,
                                                        offset_store_dir)
    return LocalFileOffsetStore(core.group, path)


@dataclass(slots=True)
class _QueueState:
    offset: int | None = None  # next queue offset to consume; None until the start offset is known
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
        allocate_strategy: str | AllocateStrategy = "AVG", instance_name: str = DEFAULT_INSTANCE_NAME,
        offset_store_dir: str | None = None, offset_store_path: str | None = None,
    ) -> None:
        if not 1 <= pull_batch_size <= 1024:
            raise MQClientError(f"pull_batch_size must be 1..1024, got {pull_batch_size}")
        self.group = validate_group(group)
        self.client_id = new_client_id()
        self.pull_batch_size = pull_batch_size
        self.pull_max_bytes = pull_max_bytes
        self.auto_commit = auto_commit
        self.auto_commit_interval_ms = auto_commit_interval_ms
        self.rebalance_interval_ms = rebalance_interval_ms
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.allocate = allocation_strategy(allocate_strategy)
        self._core = ConsumerCore(
            self.group, namesrv, self.client_id, message_model=message_model, consume_from=consume_from,
            consume_timestamp_ms=consume_timestamp_ms, consume_type="CONSUME_ACTIVELY",
            request_timeout_ms=request_timeout_ms, on_notify=self._on_notify)
        self._offsets = make_offset_store(
            self._core, instance_name=instance_name, offset_store_dir=offset_store_dir,
            offset_store_path=offset_store_path)
        self._lock = threading.RLock()
        self._wakeup = threading.Event()
        self._subscriptions: dict[str, Subscription] = {}
        self._queues: dict[MessageQueue, _QueueState] = {}
        self._assigned = False
        self._started = False
        self._rebalance_requested = False
        self._next_heartbeat = self._next_rebalance = self._next_commit = 0.0

    @property
    def message_model(self) -> MessageModel:
        return self._core.message_model

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
        """The queues this consumer owns now, sorted."""
        with self._lock:
            return sorted(self._queues)

    def fetch_message_queues(self, topic: str) -> list[MessageQueue]:
        """Every readable queue of `topic` (for assign()); raises MQClientError when it has no route."""
        with self._lock:
            self._core.running()
        return self._core.topic_queues(topic)

    # ---------------------------------------------------------------- life cycle

    def start(self) -> None:
        """Connect; with subscriptions, join the group and take a share of the queues at once."""
        with self._lock:
            if self._started:
                return
            self._core.start(then=self._offsets.open)
            self._started = True
            self._next_commit = time.monotonic() + self.auto_commit_interval_ms / 1000
            self._maintain(time.monotonic())

    def shutdown(self) -> None:
        """Commit (when auto_commit), leave the group, close connections."""
        with self._lock:
            if not self._started:
                return
            if self.auto_commit:
                self._commit_logged()
            if self._subscriptions and self._core.clustering and not self._assigned:
                self._core.unregister(self._subscriptions)
            self._offsets.close()
            self._started = False
            self._wakeup.set()
        self._core.close()

    def __enter__(self) -> LitePullConsumer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    def _running(self) -> None:
        if not self._started:
            raise MQClientError(f"consumer {self.group} is not started; call start() first")

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

    def _subscription(self, topic: str) -> Subscription:
        return self._subscriptions.get(topic) or parse_subscription(topic, "*")

    def _issue_pulls(self, suspend_ms: int) -> None:
        now = time.monotonic()
        for queue, state in self._queues.items():
            if state.inflight is not None or now < state.not_before:
                continue
            if state.offset is None and not self._init_offset(queue, state):
                continue
            try:
                state.inflight = self._core.pull_async(queue, state.offset, self._subscription(queue.topic),
                                                       self.pull_batch_size, self.pull_max_bytes, suspend_ms)
            except RmqError as exc:
                log.warning("cannot pull %s: %s; retrying in %.1f s", queue, exc, ERROR_BACKOFF_S)
                state.not_before = now + ERROR_BACKOFF_S
                continue
            state.inflight_epoch, state.inflight_offset = state.epoch, state.offset
            state.issued_at, state.suspend_ms = now, suspend_ms

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
            result = parse_pull_response(queue, future.result(), self._subscription(queue.topic))
        except (RmqError, ValueError) as exc:
            log.warning("pull %s at offset %d failed: %s; retrying in %.1f s",
                        queue, state.inflight_offset, exc, ERROR_BACKOFF_S)
            state.not_before = now + ERROR_BACKOFF_S
            return []
        if result.status is PullStatus.OFFSET_ILLEGAL:
            log.warning("offset %d of %s is illegal (min %d, max %d): moving to %d", state.inflight_offset,
                        queue, result.min_offset, result.max_offset, result.next_begin_offset)
        elif result.status is PullStatus.NO_NEW_MSG and (now - state.issued_at) * 1000 < state.suspend_ms / 2:
            state.not_before = now + EMPTY_BACKOFF_S  # the broker did not hold the pull
        state.offset = result.next_begin_offset
        return result.messages

    # ---------------------------------------------------------------- offsets

    def commit(self) -> None:
        """Store the offset of every owned queue.

        Raises the first MQBrokerError / RemotingTimeoutError (or ClientError for a local file that
        cannot be written) after trying every queue.
        """
        with self._lock:
            self._running()
            errors = self._commit()
        if errors:
            raise errors[0]

    def _commit(self) -> list[RmqError]:
        self._next_commit = time.monotonic() + self.auto_commit_interval_ms / 1000
        for queue, state in self._queues.items():
            if state.offset is not None:
                self._offsets.update(queue, state.offset)
        return self._offsets.persist(list(self._queues))

    def _commit_logged(self) -> None:
        for error in self._commit():
            log.warning("auto-commit of group %s failed: %s", self.group, error)

    def committed(self, queue: MessageQueue) -> int | None:
        """The group's committed offset of `queue` as stored (broker, or the local file when broadcasting)."""
        with self._lock:
            self._running()
            if isinstance(self._offsets, LocalFileOffsetStore):
                return self._offsets.read(queue)
        return self._core.query_committed(queue)

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

    def seek_to_begin(self, queue: MessageQueue) -> None:
        """seek() to the queue's min offset (its oldest message still stored)."""
        self.seek(queue, self._core.queue_offset(queue, RequestCode.GET_MIN_OFFSET))

    def seek_to_end(self, queue: MessageQueue) -> None:
        """seek() to the queue's max offset (only messages that arrive from now on)."""
        self.seek(queue, self._core.queue_offset(queue, RequestCode.GET_MAX_OFFSET))

    def offset_for_timestamp(self, queue: MessageQueue, timestamp_ms: int) -> int:
        """The first offset of `queue` stored at or after `timestamp_ms` (epoch ms), for seek()."""
        with self._lock:
            self._running()
        return self._core.offset_for_timestamp(queue, timestamp_ms)

    def _init_offset(self, queue: MessageQueue, state: _QueueState) -> bool:
        """Find where to start on a queue (see compute_start_offset); False (and back off) on failure."""
        try:
            committed = self._offsets.read_from_store(queue)
            state.offset = self._core.start_offset(queue, committed)
        except RmqError as exc:
            log.warning("cannot find the start offset of %s: %s; retrying in %.1f s",
                        queue, exc, ERROR_BACKOFF_S)
            state.not_before = time.monotonic() + ERROR_BACKOFF_S
            return False
        log.info("group %s starts %s at offset %d (committed %s)", self.group, queue, state.offset, committed)
        return True

    # ---------------------------------------------------------------- membership

    def _maintain(self, now: float) -> None:
        """Heartbeat, rebalance and auto-commit when due (called by start and poll, under the lock)."""
        if self._subscriptions and not self._assigned:
            if now >= self._next_heartbeat:
                self._core.heartbeat(self._subscriptions.values())
                self._next_heartbeat = now + self.heartbeat_interval_ms / 1000
            if self._rebalance_requested or now >= self._next_rebalance:
                self._rebalance_requested = False
                allocation = self._core.allocate(list(self._subscriptions), self.allocate, set(self._queues))
                self._set_assignment(allocation.queues)
                if allocation.forgotten:  # the broker restarted: tell it we are here, rebalance again soon
                    self._core.heartbeat(self._subscriptions.values())
                retry_s = self.rebalance_interval_ms / 1000 if allocation.complete else ERROR_BACKOFF_S
                self._next_rebalance = now + retry_s
        if self.auto_commit and now >= self._next_commit:
            self._commit_logged()

    def _set_assignment(self, wanted: set[MessageQueue]) -> None:
        removed = [queue for queue in self._queues if queue not in wanted]
        added = [queue for queue in wanted if queue not in self._queues]
        if removed and self._started and self._core.clustering:
            for queue in removed:  # hand the queues over with their progress stored
                state = self._queues[queue]
                if state.offset is not None:
                    self._offsets.update(queue, state.offset)
            for error in self._offsets.persist(removed):
                log.warning("commit before giving up queues failed: %s", error)
        for queue in removed:
            del self._queues[queue]
            self._offsets.remove(queue)
        for queue in added:
            self._queues[queue] = _QueueState()
        if removed or added:
            log.info("group %s client %s owns %d queues (+%d -%d)", self.group, self.client_id,
                     len(self._queues), len(added), len(removed))

    def _on_notify(self) -> None:
        """I/O thread: a broker told us the group changed; rebalance at the next poll."""
        self._rebalance_requested = True
        self._wakeup.set()
