"""PushConsumer: messages pushed to a listener (RocketMQ DefaultMQPushConsumer, consuming concurrently).

    c = PushConsumer("cg", namesrv="127.0.0.1:9876", message_model=MessageModel.CLUSTERING,
                     consume_from=ConsumeFromWhere.LAST_OFFSET)
    c.subscribe("Orders", "A || B")                     # "*" for every tag
    c.register_listener(lambda msgs: ConsumeStatus.CONSUME_SUCCESS)
    c.start(); ...; c.shutdown()

Threads (daemons; shutdown stops them all):
  rmqd-consumer-<group>   the RemotingClient's I/O thread: receives NOTIFY; turns each pull result
                          into the queue's ProcessQueue and consume batches and sends the next pull
                          right there, in the future's callback, as RocketMQ's PullCallback does
                          (one thread hand-off less per pull; nothing on that path blocks)
  rmqd-pull-<group>       PullMessageService: first pulls, and every delayed one (flow control,
                          errors, RECONSUME_LATER): it owns every timer
  rmqd-consume-<group>_N  the pool (consume_thread_max = 20) that calls the listener
  rmqd-rebalance-<group>  heartbeats (30 s), rebalance (20 s, or at once on NOTIFY), offsets (5 s)

Pulling (DefaultMQPushConsumerImpl.pullMessage): one pull in flight per owned queue, held by the
broker up to 15 s (BROKER_SUSPEND_MAX_MS) while the queue is empty and answered as soon as a
message arrives. Flow control per queue: no pull while the queue caches more than
pull_threshold_for_queue (1000) messages or pull_threshold_size_for_queue_mib (100 MiB) of bodies,
or while its oldest and newest cached messages are more than consume_concurrently_max_span (2000)
offsets apart; the pull is tried again 50 ms later.

Consuming (ConsumeMessageConcurrentlyService): batches of at most consume_message_batch_max_size
(1) messages of one queue go to the pool. The listener returns CONSUME_SUCCESS or RECONSUME_LATER;
an exception, or any other return value, counts as RECONSUME_LATER. RECONSUME_LATER keeps the
batch in its ProcessQueue, so the queue's offset cannot pass it, and hands it to the listener
again RECONSUME_LATER_DELAY_S (5 s, RocketMQ's local retry delay) later with reconsume_times + 1.
CLUSTERING sends each failed message back (CONSUMER_SEND_MSG_BACK, delay level 0 = the broker's
3 + reconsume times, max_reconsume_times per consumer, default 16: then %DLQ%group), or, if that
fails, a copy straight to %RETRY%group; only when both fail is it consumed again locally 5 s later.
A CLUSTERING consumer subscribes to %RETRY%group by itself, and its listener sees retried messages
under their original topic (RETRY_TOPIC). BROADCASTING logs and drops a failed batch, as RocketMQ
does.

Offsets: a queue's offset is the smallest offset still in its ProcessQueue (cached or being
consumed) or, when nothing is, the next offset to pull. A slow message holds the commit back,
never the consumption of the others, and nothing is committed before it was consumed. A consumed
message only leaves its ProcessQueue; the queues' offsets are read from them and persisted every
persist_consumer_offset_interval_ms (5 s), for a queue given up by a rebalance before it is
released, and at shutdown; where to: see _offset_store.py.

Rebalance: strategies in _rebalance.py, allocation in _consumer_core.py. A queue given up stops
being pulled at once, its ProcessQueue is dropped (results still in flight are discarded), and
its offset is persisted before it is released. A queue gained starts at its stored offset, or
where ConsumeFromWhere says (docs/CONSUMPTION.md).

Shutdown is graceful: pulling stops, batches not yet handed to the listener are dropped (their
offsets were never passed, so they are redelivered), batches in the listener get up to
await_termination_ms to finish, offsets are persisted, the client unregisters (the group
rebalances at once) and closes its connections.

Thread-safety: every public method may be called from any thread.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from rmqd.client._consumer_core import ConsumerCore, parse_pull_response
from rmqd.client._ids import new_client_id
from rmqd.client._push_machinery import ProcessQueue, PullScheduler
from rmqd.client._rebalance import AllocateStrategy, Subscription, allocation_strategy, parse_subscription
from rmqd.client._tasks import TaskPool
from rmqd.client.consumer import (
    BROKER_SUSPEND_MAX_MS,
    DEFAULT_INSTANCE_NAME,
    EMPTY_BACKOFF_S,
    ERROR_BACKOFF_S,
    make_offset_store,
)
from rmqd.client.producer import validate_group
from rmqd.errors import MQClientError, RmqError
from rmqd.message import (
    RETRY_TOPIC_PREFIX,
    ConsumeFromWhere,
    ConsumeStatus,
    MessageExt,
    MessageModel,
    MessageQueue,
    PullResult,
    PullStatus,
    validate_topic,
)
from rmqd.protocol.commands import RequestCode, ResponseCode
from rmqd.store.record import Prop, SysFlag, encode_properties

log = logging.getLogger(__name__)
DEFAULT_MAX_RECONSUME_TIMES = 16  # RocketMQ DefaultMQPushConsumer.maxReconsumeTimes (-1 there means 16)

Listener = Callable[[list[MessageExt]], ConsumeStatus]

RECONSUME_LATER_DELAY_S = 5.0  # RocketMQ submitConsumeRequestLater
FLOW_CONTROL_DELAY_S = 0.05  # RocketMQ PULL_TIME_DELAY_MILLS_WHEN_FLOW_CONTROL
FLOW_CONTROL_LOG_EVERY = 1000  # one warning per this many flow-controlled pulls
REBALANCE_RETRY_S = 1.0  # a rebalance that missed a route or the consumer list is tried again this soon
MAINTENANCE_JOIN_S = 15.0  # its longest step: a commit waits up to 5 s per broker, a request 3 s
MIB = 1024 * 1024


class PushConsumer:
    """Listener-style consumer; see the module docstring."""

    def __init__(
        self, group: str, namesrv: str | None = None, *,
        message_model: MessageModel = MessageModel.CLUSTERING,
        consume_from: ConsumeFromWhere = ConsumeFromWhere.LAST_OFFSET,
        consume_timestamp_ms: int | None = None, allocate_strategy: str | AllocateStrategy = "AVG",
        consume_thread_min: int = 20, consume_thread_max: int = 20, pull_batch_size: int = 32,
        pull_max_bytes: int = 4 * MIB, pull_threshold_for_queue: int = 1000,
        pull_threshold_size_for_queue_mib: int = 100, consume_concurrently_max_span: int = 2000,
        consume_message_batch_max_size: int = 1, persist_consumer_offset_interval_ms: int = 5000,
        rebalance_interval_ms: int = 20_000, heartbeat_broker_interval_ms: int = 30_000,
        suspend_timeout_ms: int = BROKER_SUSPEND_MAX_MS, await_termination_ms: int = 10_000,
        request_timeout_ms: int = 3000, instance_name: str = DEFAULT_INSTANCE_NAME,
        offset_store_dir: str | None = None, max_reconsume_times: int = DEFAULT_MAX_RECONSUME_TIMES,
    ) -> None:
        _check_positive(consume_thread_min=consume_thread_min, consume_thread_max=consume_thread_max,
                        pull_threshold_for_queue=pull_threshold_for_queue,
                        pull_threshold_size_for_queue_mib=pull_threshold_size_for_queue_mib,
                        consume_concurrently_max_span=consume_concurrently_max_span,
                        persist_consumer_offset_interval_ms=persist_consumer_offset_interval_ms)
        if not 1 <= pull_batch_size <= 1024 or not 1 <= consume_message_batch_max_size <= 1024:
            raise MQClientError("pull_batch_size and consume_message_batch_max_size must be 1..1024")
        if consume_thread_min > consume_thread_max:
            raise MQClientError(f"consume_thread_min {consume_thread_min} is above "
                                f"consume_thread_max {consume_thread_max}")
        self.group = validate_group(group)
        self._retry_topic = RETRY_TOPIC_PREFIX + self.group
        self.client_id = new_client_id()
        self.allocate = allocation_strategy(allocate_strategy)
        self.consume_thread_max = consume_thread_max
        self.pull_batch_size = pull_batch_size
        self.pull_max_bytes = pull_max_bytes
        self.pull_threshold_for_queue = pull_threshold_for_queue
        self.pull_threshold_size_for_queue_bytes = pull_threshold_size_for_queue_mib * MIB
        self.consume_concurrently_max_span = consume_concurrently_max_span
        self.consume_message_batch_max_size = consume_message_batch_max_size
        self.persist_interval_s = persist_consumer_offset_interval_ms / 1000
        self.rebalance_interval_s = rebalance_interval_ms / 1000
        self.heartbeat_interval_s = heartbeat_broker_interval_ms / 1000
        self.suspend_timeout_ms = suspend_timeout_ms
        self.await_termination_s = await_termination_ms / 1000
        self.max_reconsume_times = max_reconsume_times
        self._core = ConsumerCore(
            self.group, namesrv, self.client_id, message_model=message_model, consume_from=consume_from,
            consume_timestamp_ms=consume_timestamp_ms, consume_type="CONSUME_PASSIVELY",
            request_timeout_ms=request_timeout_ms, on_notify=self._on_notify)
        self._offsets = make_offset_store(self._core, instance_name=instance_name,
                                          offset_store_dir=offset_store_dir, offset_store_path=None)
        self._lock = threading.RLock()  # guards the fields below
        self._subscriptions: dict[str, Subscription] = {}
        self._table: dict[MessageQueue, ProcessQueue] = {}
        self._listener: Listener | None = None
        self._state = "CREATED"  # -> RUNNING -> SHUTDOWN
        self._known_brokers: set[str] = set()
        self._rebalance_requested = False
        self._wake = threading.Event()  # wakes the maintenance thread
        self._flow_controlled = 0
        self._scheduler = PullScheduler(f"rmqd-pull-{self.group}")
        self._pool = TaskPool(consume_thread_max, f"rmqd-consume-{self.group}", "consume task")
        self._maintenance: threading.Thread | None = None

    @property
    def message_model(self) -> MessageModel:
        return self._core.message_model

    # ---------------------------------------------------------------- configuration

    def subscribe(self, topic: str, expression: str = "*") -> None:
        """Consume `topic` messages whose tag matches `expression` ("*", or "A || B")."""
        validate_topic(topic, allow_system=True)
        with self._lock:
            if self._state == "SHUTDOWN":
                raise MQClientError(f"consumer {self.group} is shut down")
            self._subscriptions[topic] = parse_subscription(topic, expression)
            self._known_brokers.clear()  # heartbeat the new subscription at once
            self._rebalance_requested = True
        self._wake.set()

    def register_listener(self, listener: Listener) -> None:
        """The function called with each batch (list[MessageExt]); it returns a ConsumeStatus."""
        if not callable(listener):
            raise MQClientError(f"listener must be callable, got {type(listener).__name__}")
        with self._lock:
            self._listener = listener

    def assignment(self) -> list[MessageQueue]:
        """The queues this consumer owns now, sorted (changes with each rebalance)."""
        with self._lock:
            return sorted(queue for queue, pq in self._table.items() if not pq.dropped)

    # ---------------------------------------------------------------- life cycle

    def start(self) -> None:
        """Join the group and start pulling; returns once the first rebalance is done."""
        with self._lock:
            if self._state != "CREATED":
                raise MQClientError(f"consumer {self.group} was already started (state {self._state})")
            if self._listener is None or not self._subscriptions:
                raise MQClientError("call subscribe() and register_listener() before start()")
            if self._core.clustering:  # RocketMQ copySubscription: the group's retry topic, every tag
                retry = RETRY_TOPIC_PREFIX + self.group
                self._subscriptions.setdefault(retry, parse_subscription(retry, "*"))
            self._core.start(then=self._offsets.open)
            self._state = "RUNNING"
        self._pool.start()
        self._scheduler.start()
        _guarded(self._heartbeat_if_new_brokers, force=True)
        _guarded(self._rebalance)
        self._maintenance = threading.Thread(target=self._maintain, name=f"rmqd-rebalance-{self.group}",
                                             daemon=True)
        self._maintenance.start()

    def shutdown(self) -> None:
        """Stop pulling, let running listener calls finish, persist offsets, leave the group."""
        with self._lock:
            if self._state != "RUNNING":
                self._state = "SHUTDOWN"
                return
            self._state = "SHUTDOWN"
        self._wake.set()
        if self._maintenance is not None:
            self._maintenance.join(MAINTENANCE_JOIN_S)
        self._scheduler.stop()
        self._pool.shutdown()
        self._await_consuming()
        self._persist_offsets()
        with self._lock:
            for pq in self._table.values():
                pq.dropped = True
            topics = list(self._subscriptions)
        if self._core.clustering:
            self._core.unregister(topics)
        self._offsets.close()
        self._core.close()

    def __enter__(self) -> PushConsumer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    @property
    def _running(self) -> bool:
        return self._state == "RUNNING"

    def _await_consuming(self) -> None:
        running = self._pool.await_idle(self.await_termination_s)
        if running:
            log.warning("%d listener calls of group %s still running at shutdown; their messages will "
                        "be delivered again", running, self.group)

    # ---------------------------------------------------------------- maintenance thread

    def _maintain(self) -> None:
        next_heartbeat = time.monotonic() + self.heartbeat_interval_s
        next_persist = time.monotonic() + self.persist_interval_s
        next_rebalance = time.monotonic() + self.rebalance_interval_s
        while self._running:
            now = time.monotonic()
            if now >= next_heartbeat:
                _guarded(self._heartbeat_if_new_brokers, force=True)
                next_heartbeat = now + self.heartbeat_interval_s
            if self._rebalance_requested or now >= next_rebalance:
                _guarded(self._heartbeat_if_new_brokers, force=False)
                wait_s = self.rebalance_interval_s if _guarded(self._rebalance) else REBALANCE_RETRY_S
                next_rebalance = time.monotonic() + wait_s
            if now >= next_persist:
                _guarded(self._persist_offsets)
                next_persist = now + self.persist_interval_s
            self._wake.wait(max(0.0, min(next_heartbeat, next_persist, next_rebalance) - time.monotonic()))
            self._wake.clear()

    def _on_notify(self) -> None:
        """I/O thread: a broker says the group's members changed: rebalance now."""
        self._rebalance_requested = True
        self._wake.set()

    def _heartbeat_if_new_brokers(self, *, force: bool) -> None:
        with self._lock:
            subscriptions = list(self._subscriptions.values())
        addrs = set(self._core.broker_addrs_of(sub.topic for sub in subscriptions))
        if force or not addrs <= self._known_brokers:
            self._core.heartbeat(subscriptions, sorted(addrs))
            self._known_brokers = addrs

    def _rebalance(self) -> bool:
        """Own what the strategy allocates; True when every topic could be allocated."""
        self._rebalance_requested = False
        with self._lock:
            topics, current = list(self._subscriptions), set(self._table)
        allocation = self._core.allocate(topics, self.allocate, current)
        if allocation.forgotten:
            self._heartbeat_if_new_brokers(force=True)
        self._release([queue for queue in current if queue not in allocation.queues])
        added_all = self._acquire([queue for queue in allocation.queues if queue not in current])
        return allocation.complete and added_all

    def _release(self, queues: list[MessageQueue]) -> None:
        """Stop pulling `queues`, persist their offsets, then forget them (RocketMQ
        removeUnnecessaryMessageQueue)."""
        if not queues:
            return
        with self._lock:
            dropped = [self._table[queue] for queue in queues]
            for pq in dropped:
                pq.dropped = True
        for pq in dropped:
            self._offsets.update(pq.queue, pq.commit_offset(), increase_only=True)
        for error in self._offsets.persist(queues):
            log.warning("offset of a queue given up by group %s not committed: %s", self.group, error)
        with self._lock:
            for queue in queues:
                del self._table[queue]
                self._offsets.remove(queue)
        log.info("group %s client %s gave up %d queues: %s", self.group, self.client_id, len(queues), queues)

    def _acquire(self, queues: list[MessageQueue]) -> bool:
        """Start pulling `queues` from their stored offsets; False if some could not start yet."""
        complete = True
        for mq in sorted(queues):
            try:
                committed = self._offsets.read_from_store(mq)
                start = self._core.start_offset(mq, committed)
            except RmqError as exc:
                log.warning("cannot find the start offset of %s: %s; retrying", mq, exc)
                complete = False
                continue
            pq = ProcessQueue(mq, start)
            with self._lock:
                if not self._running:
                    return complete
                self._table[mq] = pq
            self._offsets.update(mq, start)
            log.info("group %s client %s starts %s at offset %d (stored %s)", self.group, self.client_id, mq,
                     start, committed)
            self._scheduler.call_soon(self._execute_pull, pq)
        return complete

    def _persist_offsets(self) -> None:
        """Store each owned queue's commit offset (the smallest in flight) and persist them all.

        Consuming a message only removes it from its ProcessQueue; the offset table learns the
        queue's new commit offset here (every persist interval, at shutdown) and when a queue is
        given up, instead of once per message. Under the lock, so a queue being released (dropped,
        then removed from the table under the lock) never gets its offset written back.
        """
        with self._lock:
            queues = list(self._table)
            for pq in self._table.values():
                if not pq.dropped:
                    self._offsets.update(pq.queue, pq.commit_offset(), increase_only=True)
        for error in self._offsets.persist(queues):
            log.warning("offset commit of group %s failed: %s", self.group, error)

    # ---------------------------------------------------------------- pull thread

    def _execute_pull(self, pq: ProcessQueue) -> None:
        if pq.dropped or not self._running:
            return
        count, size, span = pq.stats()
        if (count > self.pull_threshold_for_queue or size > self.pull_threshold_size_for_queue_bytes
                or span > self.consume_concurrently_max_span):
            self._flow_controlled += 1
            if self._flow_controlled % FLOW_CONTROL_LOG_EVERY == 1:
                log.warning("flow control on %s: %d messages / %d MiB cached, span %d "
                            "(limits %d / %d MiB / %d)", pq.queue, count, size // MIB, span,
                            self.pull_threshold_for_queue, self.pull_threshold_size_for_queue_bytes // MIB,
                            self.consume_concurrently_max_span)
            self._scheduler.call_later(FLOW_CONTROL_DELAY_S, self._execute_pull, pq)
            return
        subscription = self._subscriptions.get(pq.queue.topic)
        if subscription is None:  # unsubscribed meanwhile; the next rebalance drops the queue
            return
        issued_at = time.monotonic()
        try:
            future = self._core.pull_async(pq.queue, pq.next_offset, subscription, self.pull_batch_size,
                                           self.pull_max_bytes, self.suspend_timeout_ms)
        except RmqError as exc:
            log.warning("cannot pull %s: %s; retrying in %.1f s", pq.queue, exc, ERROR_BACKOFF_S)
            self._scheduler.call_later(ERROR_BACKOFF_S, self._execute_pull, pq)
            return
        future.add_done_callback(lambda done: self._on_pull_done(pq, subscription, done, issued_at))

    def _on_pull_done(self, pq: ProcessQueue, subscription: Subscription, future: Future,
                      issued_at: float) -> None:
        """Remoting I/O thread (a future callback): must not block and must not raise."""
        try:
            self._handle_pull_result(pq, subscription, future, issued_at)
        except Exception:  # noqa: BLE001 - an exception here would end this queue's pulling for good
            log.exception("handling a pull result of %s failed; pulling again in %.1f s", pq.queue,
                          ERROR_BACKOFF_S)
            self._scheduler.call_later(ERROR_BACKOFF_S, self._execute_pull, pq)

    def _handle_pull_result(self, pq: ProcessQueue, subscription: Subscription, future: Future,
                            issued_at: float) -> None:
        if pq.dropped or not self._running:
            return
        try:
            result = parse_pull_response(pq.queue, future.result(), subscription)
        except (RmqError, ValueError) as exc:
            log.warning("pull %s at offset %d failed: %s; retrying in %.1f s", pq.queue, pq.next_offset, exc,
                        ERROR_BACKOFF_S)
            self._scheduler.call_later(ERROR_BACKOFF_S, self._execute_pull, pq)
            return
        if result.status is PullStatus.OFFSET_ILLEGAL:
            self._on_offset_moved(pq, result)
        elif result.messages:
            pq.put(result.messages, result.next_begin_offset)
            self._submit(pq, result.messages)
        else:  # nothing new, or every message filtered out: move on, and commit that if nothing is in flight
            pq.put([], result.next_begin_offset)
            self._offsets.update(pq.queue, pq.commit_offset(), increase_only=True)
        held_s = time.monotonic() - issued_at
        if result.status is PullStatus.NO_NEW_MSG and held_s * 1000 < self.suspend_timeout_ms / 2:
            self._scheduler.call_later(EMPTY_BACKOFF_S, self._execute_pull, pq)  # the broker did not hold it
        else:
            self._execute_pull(pq)

    def _on_offset_moved(self, pq: ProcessQueue, result: PullResult) -> None:
        """The broker says our offset is outside [min, max]: continue where it says (RocketMQ
        PULL_OFFSET_MOVED, without its 10-second pause), and store that at once."""
        log.warning("offset %d of %s is illegal (min %d, max %d): moving to %d", pq.next_offset, pq.queue,
                    result.min_offset, result.max_offset, result.next_begin_offset)
        pq.put([], result.next_begin_offset)
        self._offsets.update(pq.queue, pq.commit_offset())

    def _submit(self, pq: ProcessQueue, messages: list[MessageExt]) -> None:
        if pq.dropped:
            return
        size, submit, consume = self.consume_message_batch_max_size, self._pool.submit, self._consume
        if size == 1:  # the default: one task per message
            for message in messages:
                submit(consume, pq, [message])
            return
        for start in range(0, len(messages), size):
            submit(consume, pq, messages[start:start + size])

    def _submit_batch(self, pq: ProcessQueue, batch: list[MessageExt]) -> None:
        if not pq.dropped:
            self._pool.submit(self._consume, pq, batch)

    # ---------------------------------------------------------------- consume threads

    def _consume(self, pq: ProcessQueue, batch: list[MessageExt]) -> None:
        """A pool task (the pool's busy flag is up while it runs: see TaskPool)."""
        if pq.dropped or self._state != "RUNNING":
            return
        retry_topic = self._retry_topic
        for message in batch:  # RocketMQ resetRetryAndNamespace: the listener sees the original topic
            if message.topic == retry_topic:
                message.topic = message.get_property(Prop.RETRY_TOPIC) or retry_topic
        status = self._call_listener(pq, batch)
        if pq.dropped:
            return
        if status is ConsumeStatus.CONSUME_SUCCESS:
            pq.remove(batch)  # the common case of _process_result, without its call
        else:
            self._process_result(pq, batch, status)

    def _call_listener(self, pq: ProcessQueue, batch: list[MessageExt]) -> ConsumeStatus:
        try:
            status = self._listener(batch)
        except Exception:  # noqa: BLE001 - the user's listener failing means "later", as in RocketMQ
            log.exception("listener of group %s failed on %d messages of %s; consuming them again later",
                          self.group, len(batch), pq.queue)
            return ConsumeStatus.RECONSUME_LATER
        if not isinstance(status, ConsumeStatus):
            log.warning("listener of group %s returned %r, not a ConsumeStatus: treated as RECONSUME_LATER",
                        self.group, status)
            return ConsumeStatus.RECONSUME_LATER
        return status

    def _process_result(self, pq: ProcessQueue, batch: list[MessageExt], status: ConsumeStatus) -> None:
        if status is ConsumeStatus.RECONSUME_LATER and self._core.clustering:
            failed = [message for message in batch if not self._send_back(pq, message)]
            if failed:
                for message in failed:
                    message.reconsume_times += 1
                self._scheduler.call_later(RECONSUME_LATER_DELAY_S, self._submit_batch, pq, failed)
                batch = [message for message in batch if message not in failed]  # sent back: done
                if not batch:
                    return
        elif status is ConsumeStatus.RECONSUME_LATER:
            log.warning("BROADCASTING: %d messages of %s failed and are dropped (offsets %s)", len(batch),
                        pq.queue, [message.queue_offset for message in batch])
        pq.remove(batch)  # the offset table learns the new commit offset in _persist_offsets

    def _send_back(self, pq: ProcessQueue, message: MessageExt) -> bool:
        """CONSUMER_SEND_MSG_BACK, else a copy sent to %RETRY%group (RocketMQ sendMessageBack)."""
        fields = {"offset": message.commitlog_offset, "group": self.group, "delayLevel": 0,
                  "originMsgId": message.msg_id, "originTopic": message.topic, "unitMode": False,
                  "maxReconsumeTimes": self.max_reconsume_times}
        try:
            client, addr = self._core.running(), self._core.cached_addr(pq.queue)
            if client.invoke(addr, RequestCode.CONSUMER_SEND_MSG_BACK, fields).code == ResponseCode.SUCCESS:
                return True
            return client.invoke(addr, RequestCode.SEND_MESSAGE, *self._retry_copy(message)).code == 0
        except RmqError as exc:
            log.warning("sending %s back to the broker failed: %s; consuming it again locally",
                        message.msg_id, exc)
            return False

    def _retry_copy(self, message: MessageExt) -> tuple[dict[str, Any], bytes]:
        """The SEND_MESSAGE fields and body of a message's copy for %RETRY%group."""
        times = message.reconsume_times + 1
        props = dict(message.properties)
        props.setdefault(Prop.RETRY_TOPIC, message.topic)
        props.setdefault(Prop.ORIGIN_MESSAGE_ID, message.msg_id)
        props.update({Prop.RECONSUME_TIME: str(times), Prop.DELAY: str(3 + message.reconsume_times),
                      Prop.MAX_RECONSUME_TIMES: str(self.max_reconsume_times)})
        fields = {"producerGroup": "CLIENT_INNER_PRODUCER", "topic": RETRY_TOPIC_PREFIX + self.group,
                  "queueId": 0, "sysFlag": message.sys_flag & ~SysFlag.COMPRESSED,
                  "bornTimestamp": message.born_timestamp_ms, "bornHost": message.born_host, "flag": 0,
                  "properties": encode_properties(props).decode(), "reconsumeTimes": times, "batch": False}
        return fields, message.body


def _guarded(task: Callable[..., Any], **kwargs: Any) -> Any:
    """Run one maintenance task; an unexpected error is logged, never the end of the thread."""
    try:
        return task(**kwargs)
    except Exception:  # noqa: BLE001 - a dead maintenance thread would silently stop rebalancing
        log.exception("consumer maintenance task %s failed; trying again next round", task.__name__)
        return False


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise MQClientError(f"{name} must be an int >= 1, got {value!r}")
