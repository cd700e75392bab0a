"""Producer: sends messages to the brokers serving a topic (RocketMQ DefaultMQProducer).

    p = Producer("pg", namesrv="127.0.0.1:9876")     # namesrv falls back to $NAMESRV_ADDR, then :9876
    p.start()
    r = p.send(Message("Orders", b"body", tags="A", keys=["order-1"]))
    p.send(msg, sharding_key="order-1")               # same key -> same queue (ordered messages)
    fut = p.send_async(msg)                           # concurrent.futures.Future[SendResult]
    p.send_oneway(msg)
    for chunk in split_batch(msgs): p.send_batch(chunk)   # one topic, <= 4 MiB encoded per request
    p.shutdown()

Routing: the topic's route comes from the namesrv (GET_ROUTEINFO_BY_TOPIC) and is refreshed after
30 s. When the namesrv does not know the topic, the producer uses the route of TBW102 (the
auto-create topic) with at most `default_topic_queue_nums` queues per broker, and the broker creates
the topic on the first send (RocketMQ DefaultMQProducerImpl / autoCreateTopicEnable).

Queue selection: round-robin over the writable queues with latency-based broker avoidance
(`send_latency_fault_enable`, RocketMQ sendLatencyFaultEnable; see `_route.LatencyFaultTolerance`):
every send's latency and outcome marks its broker unavailable for a while (a timeout or a
retryable error answer: 10 s; a 550 ms answer: 2 s, ...), and the round-robin skips unavailable
brokers while another broker has a queue. A retry always avoids the broker that just failed
(RocketMQ selectOneMessageQueue(lastBrokerName)). rmqd turns the avoidance on by default (RocketMQ's
remoting client keeps it off unless -Dcom.rocketmq.sendLatencyEnable=true): it never makes a send
impossible, it only changes which broker is tried first. With a `sharding_key`, the queue is
queues[abs(java_string_hash(key)) % len(queues)] (RocketMQ SelectMessageQueueByHash) and, as in
RocketMQ's send-with-selector, there is a single attempt: retrying elsewhere would break the order.

Retries: up to `retry_times_when_send_failed` (2) more attempts for `send`/`send_batch` and
`retry_times_when_send_async_failed` (2) for the async sends, each on another broker when one
exists, for timeouts, unusable broker addresses and the answers RocketMQ retries
(DefaultMQProducer.retryResponseCodes: SYSTEM_BUSY, SYSTEM_ERROR, SERVICE_NOT_AVAILABLE,
TOPIC_NOT_EXIST, NO_PERMISSION), all within the one `timeout_ms` budget of the call (3 s):
each attempt gets what is left of it, and no attempt starts once it is spent. Oneway sends and
sharding-key sends are never retried.

Async back pressure: at most `back_pressure_for_async_send_num` (10,000) async sends and
`back_pressure_for_async_send_size` (100 MiB of bodies) are in flight per producer (RocketMQ's
semaphoreAsyncSendNum/Size with enableBackpressureForAsyncMode=true). A `send_async` that finds
the window full BLOCKS the calling thread until an earlier send completes; if the window is still
full when the send's timeout budget runs out, it raises RemotingTooMuchRequestError. Blocking
(rather than failing at once) keeps a fast sender loop correct without a retry loop of its own,
and the timeout keeps a dead broker from blocking it forever.

What goes on the wire (SEND_MESSAGE 10): UNIQ_KEY (see `_ids.py`), KEYS (space-joined), TAGS, the
user properties, WAIT, DELAY or TIMER_DELIVER_MS, SHARDING_KEY; bodies of `compress_over_bytes`
(4 KiB, RocketMQ compressMsgBodyOverHowmuch) or more are zlib-compressed at level 5 with
SysFlag.COMPRESSED when that makes them smaller (consumers inflate them: MessageExt.from_record).
Batches (SEND_BATCH_MESSAGE 320, RocketMQ MessageBatch) use the batch body codec of
`rmqd.protocol.codec`: one topic, no delay, no retry topic, one WAIT value, at most maxMessageSize
(4 MiB) encoded, never compressed; `split_batch` cuts a long list into batches that fit.

Auto batch (`auto_batch=True`, RocketMQ 5 autoBatch; off by default as there): synchronous `send`s
made by concurrent threads leave together in SEND_BATCH_MESSAGE requests, and each thread still
gets its own SendResult once the broker acknowledged (with SYNC_FLUSH: flushed) its message. A
send that finds no batch in flight leaves at once; the others ride with the next batch, which
leaves when the one in flight is answered, at `batch_max_bytes` (32 KiB) or after
`batch_max_delay_ms` (10 ms). A failed batch is retried message by message on the ordinary path
with the same UNIQ_KEYs. Delayed, compressed (>= 4 KiB) and retry-topic messages always go alone.
It pays off with many threads sending small messages synchronously: 64 threads against
SYNC_FLUSH reached 17.5-18.5 k msg/s against 11 k with plain sends, and it cut the delivery
latency of a 5,000 msg/s stream (docs/BENCHMARKS.md). See `_accumulator.py`.

Thread-safe: any number of threads may send through one Producer. `send_async` futures complete
on the producer's callback thread, never on the network I/O thread. A `send_async` made from that
callback thread (a callback that sends) never waits for room in the window: it raises
RemotingTooMuchRequestError at once when the window is full, since only that thread frees room.
"""
from __future__ import annotations

import itertools
import logging
import math
import re
import threading
import time
import zlib
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from rmqd.client._accumulator import (
    BATCH_MAX_BYTES,
    BATCH_MAX_DELAY_MS,
    TOTAL_BATCH_MAX_BYTES,
    Batch,
    Held,
    ProduceAccumulator,
)
from rmqd.client._ids import local_ip, new_uniq_key, new_uniq_keys
from rmqd.client._remoting import CALLER_GRACE_S, RemotingClient
from rmqd.client._route import (
    LatencyFaultTolerance,
    NamesrvClient,
    RouteCache,
    TopicRoute,
    check_response,
    namesrv_addrs,
    select_by_sharding_key,
    select_queue,
    select_round_robin,
)
from rmqd.client._tasks import TaskPool
from rmqd.errors import (
    ClientError,
    MQBrokerError,
    MQClientError,
    RemotingConnectError,
    RemotingTimeoutError,
    RemotingTooMuchRequestError,
    RmqError,
    RouteNotFoundError,
)
from rmqd.message import (
    AUTO_CREATE_TOPIC,
    DEFAULT_MAX_MESSAGE_BYTES,
    MAX_PROPERTIES_BYTES,
    RETRY_TOPIC_PREFIX,
    Message,
    MessageQueue,
    SendResult,
    SendStatus,
    validate_message,
)
from rmqd.protocol import Command, RequestCode, ResponseCode, encode_batch
from rmqd.protocol.codec import BATCH_ITEM_FIXED_SIZE
from rmqd.store.record import Prop, SysFlag

__all__ = ["Producer", "select_by_sharding_key", "select_round_robin", "split_batch", "wire_properties"]

log = logging.getLogger(__name__)

GROUP_PATTERN = re.compile(r"^[%|a-zA-Z0-9_-]{1,255}$")
COMPRESS_OVER_BYTES = 4 * 1024  # RocketMQ compressMsgBodyOverHowmuch
COMPRESS_LEVEL = 5  # RocketMQ's default compressLevel
BACK_PRESSURE_FOR_ASYNC_SEND_NUM = 10_000  # RocketMQ backPressureForAsyncSendNum
BACK_PRESSURE_FOR_ASYNC_SEND_SIZE = 100 * 1024 * 1024  # RocketMQ backPressureForAsyncSendSize
MISSING_TOPIC_TTL_S = 1.0  # re-ask the namesrv about an auto-created topic at most once a second
UNIQ_KEY_PLACEHOLDER = "0" * 32  # same length as a real UNIQ_KEY: sizes batches before ids exist

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


# ---------------------------------------------------------------------------- wire properties and batches

_PLAIN_WAIT_TRUE = f"{Prop.WAIT}\x01true\x02{Prop.UNIQ_KEY}\x01"
_PLAIN_WAIT_FALSE = f"{Prop.WAIT}\x01false\x02{Prop.UNIQ_KEY}\x01"


def wire_properties(msg: Message, uniq_key: str, sharding_key: str | None = None) -> str:
    """The properties text (`name\\x01value\\x02...`) a send of `msg` carries.

    User properties first, then what the SDK sets from the Message's attributes. Reserved names
    cannot appear among the user properties (validate_message refuses them), so no name repeats.
    """
    if (msg.properties is None and msg.tags is None and msg.keys is None and not msg.delay_level
            and msg.deliver_at_ms is None and sharding_key is None):  # a plain message: WAIT and UNIQ_KEY
        return f"{_PLAIN_WAIT_TRUE if msg.wait_store_msg_ok else _PLAIN_WAIT_FALSE}{uniq_key}\x02"
    parts = [f"{name}\x01{value}\x02" for name, value in msg.properties.items()] if msg.properties else []
    if msg.tags:
        parts.append(f"{Prop.TAGS}\x01{msg.tags}\x02")
    if msg.keys:
        parts.append(f"{Prop.KEYS}\x01{Prop.KEY_SEPARATOR.join(msg.key_list())}\x02")
    parts.append(f"{Prop.WAIT}\x01true\x02" if msg.wait_store_msg_ok else f"{Prop.WAIT}\x01false\x02")
    if msg.delay_level:
        parts.append(f"{Prop.DELAY}\x01{msg.delay_level}\x02")
    if msg.deliver_at_ms is not None:
        parts.append(f"{Prop.TIMER_DELIVER_MS}\x01{msg.deliver_at_ms}\x02")
    if sharding_key is not None:
        parts.append(f"{Prop.SHARDING_KEY}\x01{sharding_key}\x02")
    parts.append(f"{Prop.UNIQ_KEY}\x01{uniq_key}\x02")
    return "".join(parts)


def _checked_properties(text: str) -> bytes:
    """UTF-8 properties, refused when the SDK's own additions push them past 32767 bytes."""
    encoded = text.encode()
    if len(encoded) > MAX_PROPERTIES_BYTES:
        raise MQClientError(f"message properties encode to {len(encoded)} bytes, the limit is "
                            f"{MAX_PROPERTIES_BYTES}")
    return encoded


def batch_item_size(msg: Message) -> int:
    """Bytes `msg` takes in an encoded batch body (item header + body + properties with its UNIQ_KEY)."""
    return BATCH_ITEM_FIXED_SIZE + len(msg.body) + len(wire_properties(msg, UNIQ_KEY_PLACEHOLDER).encode())


def split_batch(messages: Iterable[Message],
                max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> list[list[Message]]:
    """Cut `messages` into consecutive lists whose encoded batches are at most `max_bytes` each.

    RocketMQ's ListSplitter idea, with exact sizes: each list can go to `send_batch` as it is.
    Order is kept. Raises MQClientError for an invalid message, or for one that alone encodes to
    more than `max_bytes` (send it on its own with `send`).
    """
    chunks: list[list[Message]] = []
    current: list[Message] = []
    current_bytes = 0
    for index, msg in enumerate(messages):
        validate_message(msg, max(max_bytes, DEFAULT_MAX_MESSAGE_BYTES))
        size = batch_item_size(msg)
        if size > max_bytes:
            raise MQClientError(f"message {index} alone encodes to {size} bytes in a batch, more than "
                                f"{max_bytes}; send it with send() instead")
        if current and current_bytes + size > max_bytes:
            chunks.append(current)
            current, current_bytes = [], 0
        current.append(msg)
        current_bytes += size
    if current:
        chunks.append(current)
    return chunks


def _check_sharding_key(sharding_key: object) -> None:
    if sharding_key is not None and (not isinstance(sharding_key, str) or not sharding_key):
        raise MQClientError(f"sharding_key must be a non-empty str, got {sharding_key!r}")


def _batch_properties(wait: bool) -> str:
    """The properties of a batch request itself: only WAIT (each item carries its own)."""
    return f"{Prop.WAIT}\x01{'true' if wait else 'false'}\x02"


# ---------------------------------------------------------------------------- async window

class _AsyncWindow:
    """Bounded count and body bytes of async sends in flight. Thread-safe."""

    def __init__(self, max_count: int, max_bytes: int) -> None:
        if max_count < 1 or max_bytes < 1:
            raise MQClientError(f"the async window needs room for one send, got {max_count} sends / "
                                f"{max_bytes} bytes")
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.count = 0
        self.bytes = 0
        self._closed = False
        self._cond = threading.Condition()

    def acquire(self, size: int, deadline: float) -> bool:
        """Take room for one send of `size` bytes, waiting until `deadline` at most; False if none came."""
        size = min(size, self.max_bytes)  # a send bigger than the whole window goes alone
        with self._cond:
            while self.count >= self.max_count or self.bytes + size > self.max_bytes:
                if self._closed:
                    raise ClientError("producer shut down while waiting for room in the async window")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            self.count += 1
            self.bytes += size
        return True

    def release(self, size: int) -> None:
        with self._cond:
            self.count -= 1
            self.bytes -= min(size, self.max_bytes)
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


# ---------------------------------------------------------------------------- producer

@dataclass(slots=True)
class _Request:
    """One send, ready for the wire except for the queue id."""

    code: int
    topic: str
    fields: dict[str, Any]
    body: bytes
    msg_id: str
    count: int = 1


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
    started: float = 0.0
    errors: list[str] = field(default_factory=list)


class Producer:
    """Thread-safe message producer; see the module docstring."""

    def __init__(
        self, group: str, namesrv: str | None = None, *, send_timeout_ms: int = 3000,
        retry_times_when_send_failed: int = 2, retry_times_when_send_async_failed: int = 2,
        compress_over_bytes: int = COMPRESS_OVER_BYTES, compress_level: int = COMPRESS_LEVEL,
        max_message_size: int = DEFAULT_MAX_MESSAGE_BYTES, default_topic_queue_nums: int = 8,
        send_latency_fault_enable: bool = True,
        back_pressure_for_async_send_num: int = BACK_PRESSURE_FOR_ASYNC_SEND_NUM,
        back_pressure_for_async_send_size: int = BACK_PRESSURE_FOR_ASYNC_SEND_SIZE,
        auto_batch: bool = False, batch_max_delay_ms: int = BATCH_MAX_DELAY_MS,
        batch_max_bytes: int = BATCH_MAX_BYTES, total_batch_max_bytes: int = TOTAL_BATCH_MAX_BYTES,
    ) -> None:
        """`auto_batch` (RocketMQ 5 autoBatch, off by default as there): synchronous `send`s from
        concurrent threads leave together in batches; see `rmqd.client._accumulator`."""
        self.group = validate_group(group)
        self.namesrv_addrs = namesrv_addrs(namesrv)
        if send_timeout_ms < 1 or retry_times_when_send_failed < 0 or retry_times_when_send_async_failed < 0:
            raise MQClientError("send_timeout_ms must be >= 1 and the retry counts >= 0")
        if not 0 <= compress_level <= 9:
            raise MQClientError(f"compress_level must be 0..9 (zlib), got {compress_level}")
        self.send_timeout_ms = send_timeout_ms
        self.retry_times_when_send_failed = retry_times_when_send_failed
        self.retry_times_when_send_async_failed = retry_times_when_send_async_failed
        self.compress_over_bytes = compress_over_bytes
        self.compress_level = compress_level
        self.max_message_size = max_message_size
        self.default_topic_queue_nums = default_topic_queue_nums
        self.faults = LatencyFaultTolerance() if send_latency_fault_enable else None
        self._window = _AsyncWindow(back_pressure_for_async_send_num, back_pressure_for_async_send_size)
        try:
            self._accumulator = (
                ProduceAccumulator(batch_max_delay_ms, batch_max_bytes, total_batch_max_bytes)
                if auto_batch else None)
        except ValueError as exc:
            raise MQClientError(str(exc)) from None
        self._born_host = f"{local_ip()}:0"
        self._counters: dict[str, itertools.count] = {}
        self._missing_topics: dict[str, float] = {}
        self._queue_cache: dict[str, tuple[TopicRoute, list[MessageQueue]]] = {}
        self._remoting: RemotingClient | None = None
        self._callbacks: TaskPool | None = None  # the callback thread (RocketMQ's callbackExecutor)
        self._callback_thread_prefix = f"rmqd-producer-{self.group}-{id(self):x}-callback"

    # ---------------------------------------------------------------- life cycle

    def start(self) -> None:
        """Open the network client. Sends before start() raise MQClientError."""
        if self._remoting is not None:
            return
        self._window = _AsyncWindow(self._window.max_count, self._window.max_bytes)
        self._remoting = RemotingClient(name=f"rmqd-producer-{self.group}")
        self._callbacks = TaskPool(1, self._callback_thread_prefix, "async send completion")
        self._callbacks.start()
        self._routes = RouteCache(NamesrvClient(self._remoting, self.namesrv_addrs, self.send_timeout_ms))

    def shutdown(self) -> None:
        """Close connections; pending async sends fail with ClientError."""
        remoting, callbacks = self._remoting, self._callbacks
        if remoting is None:
            return
        self._window.close()
        remoting.close()  # fails pending futures; their completions reach the callback thread first
        if callbacks is not None:
            callbacks.shutdown(finish_queued=True)  # every async send's future completes
            callbacks.join()
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

    @property
    def async_in_flight(self) -> int:
        """Async sends (single or batch) started and not yet completed."""
        return self._window.count

    # ---------------------------------------------------------------- public sends

    def send(self, msg: Message, sharding_key: str | None = None,
             timeout_ms: int | None = None) -> SendResult:
        """Send one message and wait for the broker's answer.

        Raises MQClientError (invalid message), RouteNotFoundError, MQBrokerError (non-retryable
        broker answer, or the last retryable one), RemotingTimeoutError (no answer within the budget).
        """
        request = self._build_single(msg, sharding_key)
        if self._batchable(msg, request):
            result = self._send_auto_batched(request, msg, sharding_key, timeout_ms)
            if result is not None:
                return result
        return self._send_with_retries(self._prepare_attempt(request, sharding_key, timeout_ms, True))

    def send_batch(self, msgs: Iterable[Message], timeout_ms: int | None = None) -> SendResult:
        """Send messages of one topic in one request (RocketMQ MessageBatch); ids are comma-joined.

        Raises MQClientError when the batch breaks a batch rule (see the module docstring), for
        example when it encodes to more than maxMessageSize: cut it with `split_batch` first.
        """
        request = self._build_batch(msgs)
        return self._send_with_retries(self._prepare_attempt(request, None, timeout_ms, True))

    def send_async(self, msg: Message, sharding_key: str | None = None,
                   timeout_ms: int | None = None) -> Future[SendResult]:
        """Send without waiting; the future yields the SendResult or the exception `send` would raise.

        Invalid messages and unknown routes raise at once (they are caller errors, not outcomes);
        so does RemotingTooMuchRequestError when the async window stays full for the whole timeout.
        """
        request = self._build_single(msg, sharding_key)
        return self._start_async(self._prepare_attempt(request, sharding_key, timeout_ms, False))

    def send_batch_async(self, msgs: Iterable[Message], timeout_ms: int | None = None) -> Future[SendResult]:
        """`send_batch` without waiting: a batch counts as one send of its body size in the window."""
        request = self._build_batch(msgs)
        return self._start_async(self._prepare_attempt(request, None, timeout_ms, False))

    def send_oneway(self, msg: Message, sharding_key: str | None = None) -> None:
        """Send without any answer (RocketMQ sendOneway): no result, no retry, no delivery guarantee."""
        request = self._build_single(msg, sharding_key)
        attempt = self._prepare_attempt(request, sharding_key, None, False)
        queue = self._select(attempt)
        addr = self._master_addr(attempt.route, queue)
        fields = dict(request.fields, queueId=queue.queue_id)
        self._running().invoke_oneway(addr, request.code, fields, request.body)

    # ---------------------------------------------------------------- request building

    def _prepare_attempt(self, request: _Request, sharding_key: str | None, timeout_ms: int | None,
                         sync: bool) -> _Attempt:
        self._running()
        timeout_ms = self.send_timeout_ms if timeout_ms is None else timeout_ms
        deadline = time.monotonic() + timeout_ms / 1000
        queues, route = self._publish_queues(request.topic)
        if sharding_key is not None:
            retries = 0
        else:
            retries = self.retry_times_when_send_failed if sync else self.retry_times_when_send_async_failed
        return _Attempt(request, queues, route, deadline, timeout_ms, sharding_key, 1 + retries)

    def _build_single(self, msg: Message, sharding_key: str | None) -> _Request:
        self._running()
        validate_message(msg, self.max_message_size)
        _check_sharding_key(sharding_key)
        uniq_key = new_uniq_key()
        properties = wire_properties(msg, uniq_key, sharding_key)
        if len(properties) > MAX_PROPERTIES_BYTES or not properties.isascii():
            _checked_properties(properties)
        body, sys_flag = self._maybe_compress(bytes(msg.body))
        fields = self._base_fields(msg.topic, sys_flag, msg.flag, properties, batch=False)
        return _Request(RequestCode.SEND_MESSAGE, msg.topic, fields, body, uniq_key)

    def _build_batch(self, messages: Iterable[Message]) -> _Request:
        self._running()
        msgs = list(messages)
        if not msgs:
            raise MQClientError("send_batch needs at least one message")
        first = msgs[0]
        validate_message(first, self.max_message_size)
        topic, wait = first.topic, first.wait_store_msg_ok
        if topic.startswith(RETRY_TOPIC_PREFIX):
            raise MQClientError(f"retry topics ({topic}) cannot be sent in a batch (as in RocketMQ)")
        items = []
        ids = new_uniq_keys(len(msgs))
        for msg, uniq_key in zip(msgs, ids):
            validate_message(msg, self.max_message_size)
            if msg.topic != topic:
                raise MQClientError(f"a batch holds one topic; got {topic!r} and {msg.topic!r}")
            if msg.delay_level or msg.deliver_at_ms is not None:
                raise MQClientError("delayed messages cannot be sent in a batch (as in RocketMQ)")
            if msg.wait_store_msg_ok != wait:
                raise MQClientError("every message of a batch needs the same wait_store_msg_ok")
            items.append((msg.flag, msg.body, _checked_properties(wire_properties(msg, uniq_key))))
        body = encode_batch(items)
        if len(body) > self.max_message_size:
            raise MQClientError(
                f"batch of {len(msgs)} messages encodes to {len(body)} bytes, more than maxMessageSize "
                f"({self.max_message_size} bytes); cut it with split_batch(messages) and send each part")
        fields = self._base_fields(topic, 0, 0, _batch_properties(wait), batch=True)
        return _Request(RequestCode.SEND_BATCH_MESSAGE, topic, fields, body, ",".join(ids), len(msgs))

    def _maybe_compress(self, body: bytes) -> tuple[bytes, int]:
        if len(body) < self.compress_over_bytes:
            return body, 0
        compressed = zlib.compress(body, self.compress_level)
        if len(compressed) >= len(body):  # incompressible payload: send it as is
            return body, 0
        return compressed, SysFlag.COMPRESSED

    def _base_fields(self, topic: str, sys_flag: int, flag: int, properties: str,
                     batch: bool) -> dict[str, Any]:
        return {
            "producerGroup": self.group, "topic": topic, "defaultTopic": AUTO_CREATE_TOPIC,
            "defaultTopicQueueNums": self.default_topic_queue_nums, "sysFlag": sys_flag,
            "bornTimestamp": int(time.time() * 1000), "bornHost": self._born_host, "flag": flag,
            "properties": properties, "reconsumeTimes": 0, "batch": batch,
        }

    # ---------------------------------------------------------------- routing

    def _publish_queues(self, topic: str) -> tuple[list[MessageQueue], TopicRoute]:
        route = None
        if self._missing_topics.get(topic, 0.0) <= time.monotonic():
            route = self._routes.get(topic)
        if route is None:
            self._missing_topics[topic] = time.monotonic() + MISSING_TOPIC_TTL_S
            route = self._routes.get(AUTO_CREATE_TOPIC)
            if route is None:
                raise RouteNotFoundError(
                    f"no route for topic {topic} and no {AUTO_CREATE_TOPIC} route to auto-create it: "
                    f"create it (mqadmin updateTopic -t {topic}) or start a broker with "
                    "autoCreateTopicEnable=true"
                )
        cached = self._queue_cache.get(topic)
        if cached is not None and cached[0] is route:
            queues = cached[1]
        else:
            if route.topic == topic:
                queues = route.publish_queues()
            else:
                queues = route.publish_queues(topic, self.default_topic_queue_nums)
            self._queue_cache[topic] = (route, queues)
        if not queues:
            raise RouteNotFoundError(f"topic {topic} has no writable queue (write permission wiped?)")
        return queues, route

    def _select(self, attempt: _Attempt) -> MessageQueue:
        if attempt.sharding_key is not None:
            return select_by_sharding_key(attempt.queues, attempt.sharding_key)
        return self._round_robin(attempt.request.topic, attempt.queues, attempt.avoid_broker)

    def _round_robin(self, topic: str, queues: list[MessageQueue], avoid_broker: str | None) -> MessageQueue:
        counter = self._counters.get(topic)
        if counter is None:
            counter = self._counters.setdefault(topic, itertools.count())
        unavailable = self.faults.unavailable_brokers() if self.faults is not None else frozenset()
        return select_queue(queues, next(counter), avoid_broker=avoid_broker, unavailable=unavailable)

    def _master_addr(self, route: TopicRoute, queue: MessageQueue) -> str:
        addr = route.master_addr(queue.broker_name)
        if addr is None:
            raise RouteNotFoundError(
                f"no master address for broker {queue.broker_name} of topic {queue.topic}")
        return addr

    # ---------------------------------------------------------------- sending

    def _send_with_retries(self, attempt: _Attempt) -> SendResult:
        remoting = self._running()
        request = attempt.request
        while True:
            queue = self._select(attempt)
            addr = self._master_addr(attempt.route, queue)
            fields = dict(request.fields, queueId=queue.queue_id)
            attempt.started = time.monotonic()
            try:
                response = remoting.invoke(addr, request.code, fields, request.body,
                                           self._remaining_ms(attempt))
                result = self._to_send_result(response, queue, request, addr)
            except (RemotingTimeoutError, RemotingConnectError, MQBrokerError, MQClientError) as exc:
                self._on_failure(attempt, queue, exc)
                continue
            self._record_latency(queue.broker_name, attempt.started, isolation=False)
            return result

    def _remaining_ms(self, attempt: _Attempt) -> int:
        """What is left of the budget, rounded up: an attempt that times out ends past the deadline."""
        return max(1, math.ceil((attempt.deadline - time.monotonic()) * 1000))

    def _record_latency(self, broker_name: str, started: float, isolation: bool) -> None:
        if self.faults is not None:
            self.faults.update(broker_name, (time.monotonic() - started) * 1000, isolation=isolation)

    def _on_failure(self, attempt: _Attempt, queue: MessageQueue, exc: ClientError) -> None:
        """Record a failed attempt; re-raise unless another attempt is allowed and time is left."""
        code = getattr(exc, "code", None)
        retryable = not isinstance(exc, MQBrokerError) or code in RETRYABLE_CODES
        self._record_latency(queue.broker_name, attempt.started, isolation=retryable)
        attempt.attempts_left -= 1
        attempt.errors.append(f"{queue.broker_name}: {exc}")
        if code in ROUTE_STALE_CODES:
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

    # ---------------------------------------------------------------- auto batch (sync sends)

    def _batchable(self, msg: Message, request: _Request) -> bool:
        """Whether auto_batch is on and may carry this send: a batch item cannot be delayed or
        compressed, and retry topics are never batched (as in RocketMQ)."""
        accumulator = self._accumulator
        return (accumulator is not None and not msg.delay_level and msg.deliver_at_ms is None
                and not request.fields["sysFlag"] & SysFlag.COMPRESSED
                and accumulator.accepts(len(request.body)) and not msg.topic.startswith(RETRY_TOPIC_PREFIX))

    def _send_auto_batched(self, request: _Request, msg: Message, sharding_key: str | None,
                           timeout_ms: int | None) -> SendResult | None:
        """`send` of a built request through the accumulator; None when the producer already holds
        total_batch_max_bytes (the request then goes on the ordinary path)."""
        accumulator = self._accumulator
        assert accumulator is not None
        timeout_ms = self.send_timeout_ms if timeout_ms is None else timeout_ms
        fields = request.fields
        queues, route = self._publish_queues(msg.topic)
        fixed = select_by_sharding_key(queues, sharding_key) if sharding_key is not None else None
        key = (msg.topic, msg.wait_store_msg_ok, fixed)
        held = Held(fields["flag"], request.body, fields["properties"].encode(), request.msg_id,
                    time.monotonic() + timeout_ms / 1000)
        batch = accumulator.add(key, held, (queues, route, fixed))
        if batch is False:  # totalBatchMaxBytes held already: this one goes alone
            return None
        if batch is not None:
            self._send_held(batch)
        self._await_held(accumulator, key, held, timeout_ms)
        # Pass the baton first (always: the senders after this one in the batch wait for it), so
        # their wake-ups overlap with building this one's result.
        held.wake_next()
        response, error, queue, addr, offset_ids, index, count = held.outcome
        if error is None:
            try:
                return self._held_result(response, queue, addr, offset_ids, held, index)
            except MQBrokerError as exc:
                error = exc
        return self._resend_alone(request, held, sharding_key, timeout_ms, queue, error, count)

    def _await_held(self, accumulator: ProduceAccumulator, key: tuple, held: Held, timeout_ms: int) -> None:
        """Block until `held`'s batch is answered; send what is held ourselves once it is too old."""
        while True:
            now = time.monotonic()
            if not held.sent:  # still held: wait at most until batch_max_delay_ms has passed
                wait_s = held.created + accumulator.max_delay_s - now
                if wait_s <= 0:
                    batch = accumulator.take_if_stale(key, held)
                    if batch is not None:
                        self._send_held(batch)
                    continue
            else:  # on its way: the network thread enforces the timeout; the grace covers a stuck one
                wait_s = held.deadline + CALLER_GRACE_S - now
                if wait_s <= 0:
                    if accumulator.abandon(held):
                        raise RemotingTimeoutError(f"auto-batched send to {key[0]} got no answer within "
                                                   f"{timeout_ms} ms")
                    # Answered, but the sender before us in the wake-up chain never woke us (its
                    # thread died in between): the outcome is ours already, go on without the baton.
                    return
            if held.wait(wait_s):
                return

    def _send_held(self, batch: Batch) -> None:
        """Send a batch of held sends (from a sender thread, or from the network thread when the
        previous batch was answered); its answer completes every waiting sender."""
        queues, route, fixed = batch.route_info
        topic, wait, _fixed = batch.key
        queue: MessageQueue | None = None
        addr = ""
        started = time.monotonic()
        try:
            queue = fixed if fixed is not None else self._round_robin(topic, queues, None)
            addr = self._master_addr(route, queue)
            body = encode_batch([(held.flag, held.body, held.properties) for held in batch.items])
            fields = self._base_fields(topic, 0, 0, _batch_properties(wait), batch=True)
            fields["queueId"] = queue.queue_id
            deadline = min(held.deadline for held in batch.items)
            timeout_ms = max(1, math.ceil((deadline - started) * 1000))
            pending = self._running().invoke_async(
                addr, RequestCode.SEND_BATCH_MESSAGE, fields, body, timeout_ms)
        except Exception as exc:  # closed client, lost route: every sender of the batch hears of it
            self._complete_held(batch, None, exc, queue, addr, started)
            return
        pending.add_done_callback(lambda done: self._on_held_answered(batch, queue, addr, started, done))

    def _on_held_answered(self, batch: Batch, queue: MessageQueue, addr: str, started: float,
                          done: Future[Command]) -> None:
        try:
            response, error = done.result(), None
        except Exception as exc:
            response, error = None, exc
        self._complete_held(batch, response, error, queue, addr, started)

    def _complete_held(self, batch: Batch, response: Command | None, error: BaseException | None,
                       queue: MessageQueue | None, addr: str, started: float) -> None:
        if response is not None and queue is not None and response.code == ResponseCode.SUCCESS:
            self._record_latency(queue.broker_name, started, isolation=False)
        accumulator = self._accumulator
        if accumulator is None:
            return
        following = accumulator.finished(batch.key)
        if following is not None:  # what was held meanwhile leaves first: it keeps the broker busy
            self._send_held(following)
        offset_ids = str(response.fields.get("offsetMsgId") or "").split(",") if response is not None else []
        accumulator.complete_batch(batch, (response, error, queue, addr, offset_ids))

    def _held_result(self, response: Command, queue: MessageQueue, addr: str, offset_ids: list[str],
                     held: Held, index: int) -> SendResult:
        """One message's SendResult out of its batch's answer (raises MQBrokerError for an error)."""
        status = SEND_STATUS_BY_CODE.get(response.code)
        if status is None:
            check_response(response, addr)
        fields = response.fields
        first_offset = response.field_int("queueOffset", -1)
        queue_id = response.field_int("queueId", queue.queue_id)
        if queue_id != queue.queue_id:
            queue = MessageQueue(queue.topic, queue.broker_name, queue_id)
        return SendResult(
            status=status, msg_id=held.uniq_key,
            offset_msg_id=offset_ids[index] if index < len(offset_ids) else "",
            queue=queue,
            queue_offset=first_offset + index if first_offset >= 0 else -1,
            transaction_id=fields.get("transactionId"),
        )

    def _resend_alone(self, request: _Request, held: Held, sharding_key: str | None, timeout_ms: int,
                      queue: MessageQueue | None, error: BaseException, count: int) -> SendResult:
        """The batch failed: this message goes on alone, as the request `send` built (same
        UNIQ_KEY), with what is left of its budget. The batch counts as its first attempt (as a
        retry would), except when a batch of several got a non-retryable answer: that may be
        another message's fault, so each message then gets one attempt of its own and its own answer."""
        if not isinstance(error, ClientError):
            raise error
        queues, route = self._publish_queues(request.topic)
        retries = 0 if sharding_key is not None else self.retry_times_when_send_failed
        attempt = _Attempt(request, queues, route, held.deadline, timeout_ms, sharding_key, 1 + retries)
        retryable = not isinstance(error, MQBrokerError) or getattr(error, "code", None) in RETRYABLE_CODES
        if queue is not None and (retryable or count == 1):
            attempt.started = held.created
            self._on_failure(attempt, queue, error)  # raises when no attempt is left
        else:
            attempt.attempts_left = 1
        return self._send_with_retries(attempt)

    # ---------------------------------------------------------------- async sending

    def _start_async(self, attempt: _Attempt) -> Future[SendResult]:
        size = len(attempt.request.body)
        # On the callback thread (a send_async from a future's callback) waiting for room would
        # wait for this very thread to complete futures: take room only if there is some now.
        on_callback_thread = threading.current_thread().name.startswith(self._callback_thread_prefix)
        deadline = time.monotonic() if on_callback_thread else attempt.deadline
        if not self._window.acquire(size, deadline):
            window = self._window
            raise RemotingTooMuchRequestError(
                f"async window full for {attempt.timeout_ms} ms: {window.count} sends / {window.bytes} "
                f"bytes in flight, the limits are {window.max_count} / {window.max_bytes} "
                "(back_pressure_for_async_send_num / _size); the broker is slower than the sender")
        result: Future[SendResult] = Future()
        result.set_running_or_notify_cancel()
        window = self._window
        result.add_done_callback(lambda _done: window.release(size))
        self._attempt_async(attempt, result)
        return result

    def _attempt_async(self, attempt: _Attempt, result: Future[SendResult]) -> None:
        try:
            queue = self._select(attempt)
            addr = self._master_addr(attempt.route, queue)
            fields = dict(attempt.request.fields, queueId=queue.queue_id)
            attempt.started = time.monotonic()
            pending = self._running().invoke_async(addr, attempt.request.code, fields, attempt.request.body,
                                                   self._remaining_ms(attempt))
        except ClientError as exc:
            result.set_exception(exc)
            return
        pending.add_done_callback(lambda done: self._hand_off(attempt, result, queue, addr, done))

    def _hand_off(self, attempt: _Attempt, result: Future[SendResult], queue: MessageQueue, addr: str,
                  done: Future[Command]) -> None:
        """Runs on the I/O thread: move the work to the callback thread."""
        callbacks = self._callbacks
        if callbacks is None or not callbacks.submit(self._on_async_done, attempt, result, queue, addr, done):
            if not result.done():
                result.set_exception(ClientError(f"producer {self.group} shut down before the send ended"))

    def _on_async_done(self, attempt: _Attempt, result: Future[SendResult], queue: MessageQueue, addr: str,
                       done: Future[Command]) -> None:
        try:
            send_result = self._to_send_result(done.result(), queue, attempt.request, addr)
        except (RemotingTimeoutError, RemotingConnectError, MQBrokerError, MQClientError) as exc:
            try:
                self._on_failure(attempt, queue, exc)
            except ClientError as final:
                result.set_exception(final)
                return
            self._attempt_async(attempt, result)
            return
        except RmqError as exc:  # closed client, malformed answer
            result.set_exception(exc)
            return
        except Exception as exc:  # a bug must fail the future, never leave it pending forever
            log.exception("async send to %s failed unexpectedly", attempt.request.topic)
            result.set_exception(exc)
            return
        self._record_latency(queue.broker_name, attempt.started, isolation=False)
        result.set_result(send_result)
