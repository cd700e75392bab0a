"""Namesrv access and queue selection for the SDK: routes, the route cache, broker fault tolerance.

`NamesrvClient` sends namesrv requests through a shared RemotingClient, trying each configured
namesrv in turn (RocketMQ clients accept "a:9876;b:9876"). `TopicRoute` is the parsed
TopicRouteData; `RouteCache` keeps one per topic and refreshes it after `ttl_ms` (RocketMQ polls
every 30 s in the background; the SDK refreshes lazily on use, which gives callers the same view).

Queue selection for sends (RocketMQ MQFaultStrategy / LatencyFaultToleranceImpl, 5.x tables):
`LatencyFaultTolerance` turns every send's latency into a "not available until" time for its
broker (latency >= LATENCY_MAX_MS[i] -> unavailable for NOT_AVAILABLE_DURATION_MS[i]; a failed
send counts as ISOLATION_LATENCY_MS, i.e. 10 s away). `select_queue` walks the queues round-robin
and takes the first queue whose broker is available and is not the broker that just failed, then
any queue not on that broker, then any queue at all: avoidance never makes a send impossible.
`select_by_sharding_key` keeps one key on one queue (ordered messages) and ignores faults.

Thread-safe: the cache takes a lock around its dict; lookups happen outside it. The fault table
is a dict of immutable tuples replaced whole, so readers need no lock.
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rmqd.client._remoting import RemotingClient
from rmqd.errors import (
    MQBrokerError,
    MQClientError,
    ProtocolError,
    RemotingConnectError,
    RemotingTimeoutError,
)
from rmqd.message import MessageQueue
from rmqd.protocol import Command, Perm, RequestCode, ResponseCode, code_name, decode_json_body
from rmqd.store.record import java_string_hash

DEFAULT_NAMESRV = "127.0.0.1:9876"
ROUTE_TTL_MS = 30_000
MASTER_ID = 0


def namesrv_addrs(namesrv: str | None) -> list[str]:
    """Namesrv addresses from the argument, else $NAMESRV_ADDR, else 127.0.0.1:9876 (';'-separated)."""
    text = namesrv or os.environ.get("NAMESRV_ADDR") or DEFAULT_NAMESRV
    addrs = [addr.strip() for addr in text.split(";") if addr.strip()]
    if not addrs:
        raise MQClientError(f"no namesrv address in {text!r}; expected host:port[;host:port...]")
    return addrs


def check_response(response: Command, addr: str, ok: tuple[int, ...] = (ResponseCode.SUCCESS,)) -> Command:
    """Return `response` if its code is one of `ok`, else raise MQBrokerError(code, remark, addr)."""
    if response.code not in ok:
        raise MQBrokerError(response.code, response.remark or code_name(response.code, response=True), addr)
    return response


@dataclass(frozen=True, slots=True)
class QueueDataView:
    broker_name: str
    read_queue_nums: int
    write_queue_nums: int
    perm: int


@dataclass(frozen=True, slots=True)
class TopicRoute:
    """TopicRouteData of one topic: which brokers serve it, with how many queues."""

    topic: str
    broker_addrs: dict[str, dict[int, str]]
    broker_clusters: dict[str, str]
    queue_datas: list[QueueDataView]
    fetched_at: float = field(default_factory=time.monotonic)

    @classmethod
    def from_json(cls, topic: str, data: dict[str, Any]) -> TopicRoute:
        """Parse the namesrv's route JSON; raises ProtocolError when it is malformed."""
        try:
            addrs = {b["brokerName"]: {int(i): str(a) for i, a in b["brokerAddrs"].items()}
                     for b in data["brokerDatas"]}
            clusters = {b["brokerName"]: str(b.get("cluster", "")) for b in data["brokerDatas"]}
            queues = [QueueDataView(q["brokerName"], int(q["readQueueNums"]), int(q["writeQueueNums"]),
                                    int(q["perm"])) for q in data["queueDatas"]]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ProtocolError(f"malformed route of topic {topic}: {type(exc).__name__}: {exc}") from exc
        return cls(topic, addrs, clusters, queues)

    def master_addr(self, broker_name: str) -> str | None:
        return self.broker_addrs.get(broker_name, {}).get(MASTER_ID)

    def publish_queues(self, topic: str | None = None,
                       max_per_broker: int | None = None) -> list[MessageQueue]:
        """Writable queues of brokers whose master is known, in (broker, queue id) order.

        `topic` renames the queues (auto-creation through the TBW102 route); `max_per_broker` caps
        the queue count per broker (RocketMQ defaultTopicQueueNums).
        """
        name = topic or self.topic
        queues = []
        for data in sorted(self.queue_datas, key=lambda q: q.broker_name):
            if not data.perm & Perm.WRITE or self.master_addr(data.broker_name) is None:
                continue
            count = data.write_queue_nums
            if max_per_broker is not None:
                count = min(max_per_broker, count)
            queues.extend(MessageQueue(name, data.broker_name, qid) for qid in range(count))
        return queues

    def subscribe_queues(self) -> list[MessageQueue]:
        """Readable queues (RocketMQ topicRouteData2TopicSubscribeInfo), sorted."""
        return sorted(MessageQueue(self.topic, data.broker_name, qid)
                      for data in self.queue_datas if data.perm & Perm.READ
                      for qid in range(data.read_queue_nums))

    def master_addrs(self) -> list[str]:
        return sorted({addrs[MASTER_ID] for addrs in self.broker_addrs.values() if MASTER_ID in addrs})


class NamesrvClient:
    """Requests to the namesrv(s), failing over to the next address on timeout."""

    def __init__(self, remoting: RemotingClient, addrs: list[str], timeout_ms: int = 3000) -> None:
        self.remoting = remoting
        self.addrs = addrs
        self.timeout_ms = timeout_ms
        self._next = 0

    def invoke(self, code: int, fields: dict[str, Any] | None = None, body: bytes = b"",
               timeout_ms: int | None = None) -> tuple[str, Command]:
        """(namesrv address, response) from the first namesrv that answers."""
        last_error: RemotingTimeoutError | RemotingConnectError | None = None
        start = self._next
        for i in range(len(self.addrs)):
            addr = self.addrs[(start + i) % len(self.addrs)]
            try:
                return addr, self.remoting.invoke(addr, code, fields, body, timeout_ms or self.timeout_ms)
            except (RemotingTimeoutError, RemotingConnectError) as exc:
                last_error = exc
                self._next = (start + i + 1) % len(self.addrs)
        raise RemotingTimeoutError(f"no namesrv answered ({', '.join(self.addrs)}): {last_error}")

    def get_route(self, topic: str) -> TopicRoute | None:
        """The topic's route, or None if the namesrv does not know the topic (TOPIC_NOT_EXIST)."""
        addr, response = self.invoke(RequestCode.GET_ROUTEINFO_BY_TOPIC, {"topic": topic})
        if response.code == ResponseCode.TOPIC_NOT_EXIST:
            return None
        check_response(response, addr)
        return TopicRoute.from_json(topic, decode_json_body(response.body, f"route of {topic}"))

    def get_json(self, code: int, fields: dict[str, Any] | None = None) -> dict[str, Any]:
        addr, response = self.invoke(code, fields)
        check_response(response, addr)
        if not len(response.body):
            return {}
        return decode_json_body(response.body, f"namesrv answer to request {code}")


class RouteCache:
    """Per-topic routes, refreshed after `ttl_ms`. Thread-safe."""

    def __init__(self, namesrv: NamesrvClient, ttl_ms: int = ROUTE_TTL_MS) -> None:
        self.namesrv = namesrv
        self.ttl_ms = ttl_ms
        self._routes: dict[str, TopicRoute] = {}
        self._lock = threading.Lock()

    def get(self, topic: str, *, refresh: bool = False) -> TopicRoute | None:
        """Cached route of `topic`, looked up again when stale or `refresh`; None if unknown."""
        with self._lock:
            route = self._routes.get(topic)
        if route is not None and not refresh and (time.monotonic() - route.fetched_at) * 1000 < self.ttl_ms:
            return route
        fresh = self.namesrv.get_route(topic)
        with self._lock:
            if fresh is None:
                self._routes.pop(topic, None)
            else:
                self._routes[topic] = fresh
        return fresh

    def invalidate(self, topic: str) -> None:
        with self._lock:
            self._routes.pop(topic, None)


# ---------------------------------------------------------------------------- queue selection

LATENCY_MAX_MS = (50, 100, 550, 1800, 3000, 5000, 15000)  # RocketMQ 5 MQFaultStrategy.latencyMax
NOT_AVAILABLE_DURATION_MS = (0, 0, 2000, 5000, 6000, 10000, 30000)  # ... .notAvailableDuration
ISOLATION_LATENCY_MS = 10_000  # a failed send counts as this slow: 10 s unavailable


class LatencyFaultTolerance:
    """Per-broker "not available until" times computed from send latencies (see the module docstring)."""

    def __init__(self, latency_max_ms: Sequence[int] = LATENCY_MAX_MS,
                 not_available_duration_ms: Sequence[int] = NOT_AVAILABLE_DURATION_MS) -> None:
        if len(latency_max_ms) != len(not_available_duration_ms):
            raise MQClientError("latency_max_ms and not_available_duration_ms need the same length")
        self.latency_max_ms = tuple(latency_max_ms)
        self.not_available_duration_ms = tuple(not_available_duration_ms)
        self._items: dict[str, tuple[int, float]] = {}  # broker -> (last latency ms, available at)

    def not_available_ms(self, latency_ms: float) -> int:
        """ms a broker that answered in `latency_ms` is avoided (RocketMQ computeNotAvailableDuration)."""
        for bound, duration in zip(reversed(self.latency_max_ms), reversed(self.not_available_duration_ms)):
            if latency_ms >= bound:
                return duration
        return 0

    def update(self, broker_name: str, latency_ms: float, *, isolation: bool = False) -> None:
        """Record one send to `broker_name`; `isolation` for a failed one (timeout, busy broker)."""
        duration_ms = self.not_available_ms(ISOLATION_LATENCY_MS if isolation else latency_ms)
        if duration_ms == 0 and broker_name not in self._items:
            return  # the common case: a fast broker with no history stays out of the table
        self._items[broker_name] = (int(latency_ms), time.monotonic() + duration_ms / 1000)

    def is_available(self, broker_name: str) -> bool:
        item = self._items.get(broker_name)
        return item is None or time.monotonic() >= item[1]

    def unavailable_brokers(self) -> set[str] | frozenset[str]:
        if not self._items:  # every send asks: no broker was ever slow or failed
            return frozenset()
        now = time.monotonic()
        return {name for name, (_, available_at) in list(self._items.items()) if now < available_at}

    def remove(self, broker_name: str) -> None:
        self._items.pop(broker_name, None)


def select_queue(queues: Sequence[MessageQueue], index: int, *, avoid_broker: str | None = None,
                 unavailable: set[str] | frozenset[str] = frozenset()) -> MessageQueue:
    """Round-robin from queues[index % n]: first a queue of an available broker other than
    `avoid_broker`, else one not on `avoid_broker`, else queues[index % n]."""
    count = len(queues)
    if avoid_broker is None and not unavailable:
        return queues[index % count]
    fallback = None
    for step in range(count):
        queue = queues[(index + step) % count]
        if queue.broker_name == avoid_broker:
            continue
        if queue.broker_name not in unavailable:
            return queue
        if fallback is None:
            fallback = queue
    return fallback if fallback is not None else queues[index % count]


def select_round_robin(queues: Sequence[MessageQueue], index: int,
                       avoid_broker: str | None = None) -> MessageQueue:
    """queues[index % n], skipping queues of `avoid_broker` when another broker has one."""
    return select_queue(queues, index, avoid_broker=avoid_broker)


def select_by_sharding_key(queues: Sequence[MessageQueue], sharding_key: str) -> MessageQueue:
    """Stable queue for a key: abs(Java String.hashCode(key)) % n (RocketMQ SelectMessageQueueByHash)."""
    return queues[abs(java_string_hash(sharding_key)) % len(queues)]
