"""Producer: sends messages to the brokers serving a topic (RocketMQ DefaultMQProducer).

    p = Producer("pg", namesrv="127.0.0.1:9876")     # namesrv falls back to $NAMESRV_ADDR, then :9876
    p.start()
    r = p.send(Message("Orders", b"body", tags="A", keys=["order-1"]))
    p.send(msg, sharding_key="order-1")               # same key -> same queue (ordered messages)
    fut = p.send_async(msg); p.send_oneway(msg); p.send_batch([m1, m2])
    p.shutdown()

Routing: the topic's route comes from the namesrv (GET_ROUTEINFO_BY_TOPIC) and is refreshed after
30 s. When the namesrv does not know the topic, the producer uses the route of TBW102 (the
auto-create topic) with at most `default_topic_queue_nums` queues per broker, and the broker creates
the topic on the first send (RocketMQ DefaultMQProducerImpl / autoCreateTopicEnable).

Queue selection: round-robin over the writable queues; a retry avoids the broker that just failed
(RocketMQ selectOneMessageQueue(lastBrokerName)). With a `sharding_key`, the queue is
queues[abs(java_string_hash(key)) % len(queues)] (RocketMQ SelectMessageQueueByHash) and, as in
RocketMQ's send-with-selector, there is a single attempt: retrying elsewhere would break the order.

Retries: up to `retry_times_when_send_failed` (2) more attempts, each on another broker when one
exists, for timeouts and for SYSTEM_BUSY / SYSTEM_ERROR / SERVICE_NOT_AVAILABLE / TOPIC_NOT_EXIST /
NO_PERMISSION answers, all within the one `timeout_ms` budget of the call.

What goes on the wire (SEND_MESSAGE 10): UNIQ_KEY (see `_ids.py`), KEYS (space-joined), TAGS, the
user properties, WAIT, DELAY or TIMER_DELIVER_MS, __SHARDINGKEY; bodies of 4 KiB or more are zlib
compressed with SysFlag.COMPRESSED when that makes them smaller. Batches (SEND_BATCH_MESSAGE 320)
use the batch body codec of `rmqd.protocol.codec`: one topic, at most maxMessageSize encoded.

Thread-safe: any number of threads may send through one Producer. `send_async` futures complete
on the producer's callback thread, never on the network I/O thread.
"""
from __future__ import annotations

import itertools
import logging
import re
import time
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from rmqd.client._ids import local_ip, new_uniq_key
from rmqd.client._remoting import RemotingClient
from rmqd.client._route import NamesrvClient, RouteCache, TopicRoute, check_response, namesrv_addrs
from rmqd.errors import (
    ClientError,
    MQBrokerError,
    MQClientError,
    RemotingTimeoutError,
    RmqError,
    RouteNotFoundError,
)
from rmqd.message import (
    AUTO_CREATE_TOPIC,
    DEFAULT_MAX_MESSAGE_BYTES,
    MAX_PROPERTIES_BYTES,
    Message,
    MessageQueue,
    SendResult,
    SendStatus,
    validate_message,
)
from rmqd.protocol import Command, RequestCode, ResponseCode, encode_batch
from rmqd.store.record import Prop, SysFlag, encode_properties, java_string_hash

log = logging.getLogger(__name__)

GROUP_PATTERN = re.compile(r"^[%|a-zA-Z0-9_-]{1,255}$")
COMPRESS_OVER_BYTES = 4 * 1024
COMPRESS_LEVEL = 5  # RocketMQ's default compressLevel
MISSING_TOPIC_TTL_S = 1.0  # re-ask the namesrv about an auto-created topic at most once a second

RETRYABLE_CODES = frozenset({
    ResponseCode.SYSTEM_BUSY, ResponseCode.SYSTEM_ERROR, ResponseCode.SERVICE_NOT_AVAILABLE,
    ResponseCode.TOPIC_NOT_EXIST, ResponseCode.NO_PERMISSION,
})
ROUTE_STALE_CODES = frozenset({ResponseCode.TOPIC_NOT_EXIST, ResponseCode.NO_PERMISSION})
SEND_STATUS_BY_CODE = {
    ResponseCode.SUCCESS: SendStatus.SEND_OK,
    ResponseCode.FLUSH_DISK_TIMEOUT: SendStatus.FLUSH_DISK_TIMEOUT,
    ResponseCode.FLUSH_SLAVE_TIMEOUT: SendStatus.FLUSH_SLAVE_TIMEOUT,
    ResponseCode.SLAVE_NOT_AVAILABLE: SendStatus.SLAVE_NOT_AVAILABLE,
}


def validate_group(group: object) -> str:
    if not isinstance(group, str) or not GROUP_PATTERN.match(group):
        raise MQClientError(f"group {group!r} must match ^[%|a-zA-Z0-9_-]+$ and be 1..255 characters")
    return group


def select_round_robin(queues: list[MessageQueue], index: int,
                       avoid_broker: str | None = None) -> MessageQueue:
    """queues[index % n], skipping queues of `avoid_broker` when another broker has one."""
    count = len(queues)
    if avoid_broker is not None:
        for step in range(count):
            queue = queues[(index + step) % count]
            if queue.broker_name != avoid_broker:
                return queue
    return queues[index % count]


def select_by_sharding_key(queues: list[MessageQueue], sharding_key: str) -> MessageQueue:
    """Stable queue for a key: abs(Java String.hashCode(key)) % n (RocketMQ SelectMessageQueueByHash)."""
    return queues[abs(java_string_hash(sharding_key)) % len(queues)]


def _checked_properties(properties: dict[str, str]) -> bytes:
    """Wire properties, refused when the SDK's own additions push them past 32767 bytes."""
    encoded = encode_properties(properties)
    if len(encoded) > MAX_PROPERTIES_BYTES:
        raise MQClientError(f"message properties encode to {len(encoded)} bytes, the limit is "
                            f"{MAX_PROPERTIES_BYTES}")
    return encoded


@dataclass(slots=True)
class _Request:
    """One send, ready for the wire except for the queue id."""

    code: int
    topic: str
    fields: dict[str, Any]
    body: bytes
    msg_id: str


@dataclass(slots=True)
class _Attempt:
    """State of one send across its retries (sync and async)."""

    request: _Request
    queues: list[MessageQueue]
    route: TopicRoute
    deadline: float
    timeout_ms: int
    sharding_key: str | None
    attempts_left: int
    avoid_broker: str | None = None
    errors: list[str] = field(default_factory=list)


class Producer:
    """Thread-safe message producer; see the module docstring."""

    def __init__(
        self, group: str, namesrv: str | None = None, *, send_timeout_ms: int = 3000,
        retry_times_when_send_failed: int = 2, compress_over_bytes: int = COMPRESS_OVER_BYTES,
        max_message_size: int = DEFAULT_MAX_MESSAGE_BYTES, default_topic_queue_nums: int = 8,
    ) -> None:
        self.group = validate_group(group)
        self.namesrv_addrs = namesrv_addrs(namesrv)
        self.send_timeout_ms = send_timeout_ms
        self.retry_times_when_send_failed = retry_times_when_send_failed
        self.compress_over_bytes = compress_over_bytes
        self.max_message_size = max_message_size
        self.default_topic_queue_nums = default_topic_queue_nums
        self._born_host = f"{local_ip()}:0"
        self._counters: dict[str, itertools.count] = {}
        self._missing_topics: dict[str, float] = {}
        self._remoting: RemotingClient | None = None
        self._executor: ThreadPoolExecutor | None = None

    # ---------------------------------------------------------------- life cycle

    def start(self) -> None:
        """Open the network client. Sends before start() raise MQClientError."""
        if self._remoting is not None:
            return
        self._remoting = RemotingClient(name=f"rmqd-producer-{self.group}")
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"rmqd-producer-{self.group}-callback")
        self._routes = RouteCache(NamesrvClient(self._remoting, self.namesrv_addrs, self.send_timeout_ms))

    def shutdown(self) -> None:
        """Close connections; pending async sends fail with ClientError."""
        remoting, executor = self._remoting, self._executor
        if remoting is None:
            return
        remoting.close()  # fails pending futures; their callbacks reach the executor first
        if executor is not None:
            executor.shutdown(wait=True)
        self._remoting = None

    def __enter__(self) -> Producer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    def _running(self) -> RemotingClient:
        if self._remoting is None:
            raise MQClientError(f"producer {self.group} is not started; call start() first")
        return self._remoting

    # ---------------------------------------------------------------- public sends

    def send(self, msg: Message, sharding_key: str | None = None,
             timeout_ms: int | None = None) -> SendResult:
        """Send one message and wait for the broker's answer.

        Raises MQClientError (invalid message), RouteNotFoundError, MQBrokerError (non-retryable
        broker answer, or the last retryable one), RemotingTimeoutError (no answer within the budget).
        """
        attempt = self._prepare_attempt([msg], sharding_key, timeout_ms, batch=False)
        return self._send_with_retries(attempt)

    def send_batch(self, msgs: list[Message], timeout_ms: int | None = None) -> SendResult:
        """Send messages of one topic in one request (RocketMQ MessageBatch); ids are comma-joined."""
        attempt = self._prepare_attempt(list(msgs), None, timeout_ms, batch=True)
        return self._send_with_retries(attempt)

    def send_async(self, msg: Message, sharding_key: str | None = None,
                   timeout_ms: int | None = None) -> Future[SendResult]:
        """Send without waiting; the future yields the SendResult or the exception `send` would raise.

        Invalid messages and unknown routes raise at once (they are caller errors, not outcomes).
        """
        attempt = self._prepare_attempt([msg], sharding_key, timeout_ms, batch=False)
        result: Future[SendResult] = Future()
        result.set_running_or_notify_cancel()
        self._attempt_async(attempt, result)
        return result

    def send_oneway(self, msg: Message, sharding_key: str | None = None) -> None:
        """Send without any answer (RocketMQ sendOneway): no result, no retry, no delivery guarantee."""
        attempt = self._prepare_attempt([msg], sharding_key, None, batch=False)
        queue = self._select(attempt)
        addr = self._master_addr(attempt.route, queue)
        fields = dict(attempt.request.fields, queueId=queue.queue_id)
        self._running().invoke_oneway(addr, attempt.request.code, fields, attempt.request.body)

    # ---------------------------------------------------------------- request building

    def _prepare_attempt(self, msgs: list[Message], sharding_key: str | None, timeout_ms: int | None,
                         batch: bool) -> _Attempt:
        self._running()
        timeout_ms = self.send_timeout_ms if timeout_ms is None else timeout_ms
        deadline = time.monotonic() + timeout_ms / 1000
        request = self._build_batch(msgs) if batch else self._build_single(msgs[0], sharding_key)
        queues, route = self._publish_queues(request.topic)
        retries = 0 if sharding_key is not None else self.retry_times_when_send_failed
        return _Attempt(request, queues, route, deadline, timeout_ms, sharding_key, 1 + retries)

    def _build_single(self, msg: Message, sharding_key: str | None) -> _Request:
        validate_message(msg, self.max_message_size)
        if sharding_key is not None and (not isinstance(sharding_key, str) or not sharding_key):
            raise MQClientError(f"sharding_key must be a non-empty str, got {sharding_key!r}")
        uniq_key = new_uniq_key()
        properties = _checked_properties(self._wire_properties(msg, uniq_key, sharding_key))
        body, sys_flag = self._maybe_compress(bytes(msg.body))
        fields = self._base_fields(msg.topic, sys_flag, msg.flag, properties, batch=False)
        return _Request(RequestCode.SEND_MESSAGE, msg.topic, fields, body, uniq_key)

    def _build_batch(self, msgs: list[Message]) -> _Request:
        if not msgs:
            raise MQClientError("send_batch needs at least one message")
        topic = msgs[0].topic
        items, ids = [], []
        for msg in msgs:
            validate_message(msg, self.max_message_size)
            if msg.topic != topic:
                raise MQClientError(f"a batch holds one topic; got {topic!r} and {msg.topic!r}")
            if msg.delay_level or msg.deliver_at_ms is not None:
                raise MQClientError("delayed messages cannot be sent in a batch (as in RocketMQ)")
            ids.append(new_uniq_key())
            properties = _checked_properties(self._wire_properties(msg, ids[-1], None))
            items.append((msg.flag, bytes(msg.body), properties))
        body = encode_batch(items)
        if len(body) > self.max_message_size:
            raise MQClientError(
                f"batch encodes to {len(body)} bytes, maxMessageSize is {self.max_message_size}")
        fields = self._base_fields(topic, 0, 0, encode_properties({Prop.WAIT: "true"}), batch=True)
        return _Request(RequestCode.SEND_BATCH_MESSAGE, topic, fields, body, ",".join(ids))

    def _wire_properties(self, msg: Message, uniq_key: str, sharding_key: str | None) -> dict[str, str]:
        properties = dict(msg.properties or {})
        if msg.tags:
            properties[Prop.TAGS] = msg.tags
        keys = msg.key_list()
        if keys:
            properties[Prop.KEYS] = Prop.KEY_SEPARATOR.join(keys)
        properties[Prop.WAIT] = "true" if msg.wait_store_msg_ok else "false"
        if msg.delay_level:
            properties[Prop.DELAY] = str(msg.delay_level)
        if msg.deliver_at_ms is not None:
            properties[Prop.TIMER_DELIVER_MS] = str(msg.deliver_at_ms)
        if sharding_key is not None:
            properties[Prop.SHARDING_KEY] = sharding_key
        properties[Prop.UNIQ_KEY] = uniq_key
        return properties

    def _maybe_compress(self, body: bytes) -> tuple[bytes, int]:
        if len(body) < self.compress_over_bytes:
            return body, 0
        compressed = zlib.compress(body, COMPRESS_LEVEL)
        if len(compressed) >= len(body):  # incompressible payload: send it as is
            return body, 0
        return compressed, SysFlag.COMPRESSED

    def _base_fields(self, topic: str, sys_flag: int, flag: int, properties: bytes,
                     batch: bool) -> dict[str, Any]:
        return {
            "producerGroup": self.group, "topic": topic, "defaultTopic": AUTO_CREATE_TOPIC,
            "defaultTopicQueueNums": self.default_topic_queue_nums, "sysFlag": sys_flag,
            "bornTimestamp": int(time.time() * 1000), "bornHost": self._born_host, "flag": flag,
            "properties": properties.decode(), "reconsumeTimes": 0, "batch": batch,
        }

    # ---------------------------------------------------------------- routing

    def _publish_queues(self, topic: str) -> tuple[list[MessageQueue], TopicRoute]:
        route = None
        if self._missing_topics.get(topic, 0.0) <= time.monotonic():
            route = self._routes.get(topic)
        if route is not None:
            queues = route.publish_queues()
        else:
            self._missing_topics[topic] = time.monotonic() + MISSING_TOPIC_TTL_S
            route = self._routes.get(AUTO_CREATE_TOPIC)
            if route is None:
                raise RouteNotFoundError(
                    f"no route for topic {topic} and no {AUTO_CREATE_TOPIC} route to auto-create it: "
                    f"create it (mqadmin updateTopic -t {topic}) or start a broker with "
                    "autoCreateTopicEnable=true"
                )
            queues = route.publish_queues(topic, self.default_topic_queue_nums)
        if not queues:
            raise RouteNotFoundError(f"topic {topic} has no writable queue (write permission wiped?)")
        return queues, route

    def _select(self, attempt: _Attempt) -> MessageQueue:
        if attempt.sharding_key is not None:
            return select_by_sharding_key(attempt.queues, attempt.sharding_key)
        counter = self._counters.setdefault(attempt.request.topic, itertools.count())
        return select_round_robin(attempt.queues, next(counter), attempt.avoid_broker)

    def _master_addr(self, route: TopicRoute, queue: MessageQueue) -> str:
        addr = route.master_addr(queue.broker_name)
        if addr is None:
            raise RouteNotFoundError(
                f"no master address for broker {queue.broker_name} of topic {queue.topic}")
        return addr

    # ---------------------------------------------------------------- sending

    def _send_with_retries(self, attempt: _Attempt) -> SendResult:
        remoting = self._running()
        while True:
            queue = self._select(attempt)
            addr = self._master_addr(attempt.route, queue)
            fields = dict(attempt.request.fields, queueId=queue.queue_id)
            try:
                response = remoting.invoke(addr, attempt.request.code, fields, attempt.request.body,
                                           self._remaining_ms(attempt))
                return self._to_send_result(response, queue, attempt.request, addr)
            except (RemotingTimeoutError, MQBrokerError) as exc:
                self._on_failure(attempt, queue, exc)

    def _remaining_ms(self, attempt: _Attempt) -> int:
        return max(1, int((attempt.deadline - time.monotonic()) * 1000))

    def _on_failure(self, attempt: _Attempt, queue: MessageQueue, exc: ClientError) -> None:
        """Record a failed attempt; re-raise unless another attempt is allowed and time is left."""
        attempt.attempts_left -= 1
        attempt.errors.append(f"{queue.broker_name}: {exc}")
        retryable = isinstance(exc, RemotingTimeoutError) or getattr(exc, "code", None) in RETRYABLE_CODES
        if getattr(exc, "code", None) in ROUTE_STALE_CODES:
            self._routes.invalidate(attempt.request.topic)
        if not retryable or attempt.attempts_left <= 0:
            raise exc
        if time.monotonic() >= attempt.deadline:
            raise RemotingTimeoutError(
                f"send to {attempt.request.topic} timed out after {attempt.timeout_ms} ms; "
                f"attempts: {'; '.join(attempt.errors)}") from exc
        log.info("send to %s failed on %s (%s); retrying on another broker", attempt.request.topic,
                 queue.broker_name, exc)
        attempt.avoid_broker = queue.broker_name

    def _to_send_result(self, response: Command, queue: MessageQueue, request: _Request,
                        addr: str) -> SendResult:
        status = SEND_STATUS_BY_CODE.get(response.code)
        if status is None:
            check_response(response, addr)  # raises MQBrokerError with the broker's remark
        fields = response.fields
        queue_id = response.field_int("queueId", queue.queue_id)
        stored_queue = MessageQueue(queue.topic, queue.broker_name, queue_id)
        return SendResult(
            status=status, msg_id=request.msg_id,  # the client's UNIQ_KEY(s), as RocketMQ's SendResult
            offset_msg_id=str(fields.get("offsetMsgId") or ""), queue=stored_queue,
            queue_offset=response.field_int("queueOffset", -1), transaction_id=fields.get("transactionId"),
        )

    # ---------------------------------------------------------------- async sending

    def _attempt_async(self, attempt: _Attempt, result: Future[SendResult]) -> None:
        try:
            queue = self._select(attempt)
            addr = self._master_addr(attempt.route, queue)
            fields = dict(attempt.request.fields, queueId=queue.queue_id)
            pending = self._running().invoke_async(addr, attempt.request.code, fields, attempt.request.body,
                                                   self._remaining_ms(attempt))
        except ClientError as exc:
            result.set_exception(exc)
            return
        pending.add_done_callback(lambda done: self._hand_off(attempt, result, queue, addr, done))

    def _hand_off(self, attempt: _Attempt, result: Future[SendResult], queue: MessageQueue, addr: str,
                  done: Future[Command]) -> None:
        """Runs on the I/O thread: move the work to the callback thread."""
        executor = self._executor
        try:
            if executor is None:
                raise RuntimeError("producer shut down")
            executor.submit(self._on_async_done, attempt, result, queue, addr, done)
        except RuntimeError:
            if not result.done():
                result.set_exception(ClientError(f"producer {self.group} shut down before the send ended"))

    def _on_async_done(self, attempt: _Attempt, result: Future[SendResult], queue: MessageQueue, addr: str,
                       done: Future[Command]) -> None:
        try:
            result.set_result(self._to_send_result(done.result(), queue, attempt.request, addr))
            return
        except (RemotingTimeoutError, MQBrokerError) as exc:
            try:
                self._on_failure(attempt, queue, exc)
            except ClientError as final:
                result.set_exception(final)
                return
        except RmqError as exc:  # closed client, malformed answer
            result.set_exception(exc)
            return
        except Exception as exc:  # a bug must fail the future, never leave it pending forever
            log.exception("async send to %s failed unexpectedly", attempt.request.topic)
            result.set_exception(exc)
            return
        self._attempt_async(attempt, result)
