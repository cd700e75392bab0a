"""Namesrv access for the SDK: address list, route lookups and the per-topic route cache.

`NamesrvClient` sends namesrv requests through a shared RemotingClient, trying each configured
namesrv in turn (RocketMQ clients accept "a:9876;b:9876"). `TopicRoute` is the parsed
TopicRouteData; `RouteCache` keeps one per topic and refreshes it after `ttl_ms` (RocketMQ polls
every 30 s in the background; the SDK refreshes lazily on use, which gives callers the same view).

Thread-safe: the cache takes a lock around its dict; lookups happen outside it.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from rmqd.client._remoting import RemotingClient
from rmqd.errors import MQBrokerError, MQClientError, ProtocolError, RemotingTimeoutError
from rmqd.message import MessageQueue
from rmqd.protocol import Command, Perm, RequestCode, ResponseCode, code_name, decode_json_body

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
        last_error: RemotingTimeoutError | None = None
        start = self._next
        for i in range(len(self.addrs)):
            addr = self.addrs[(start + i) % len(self.addrs)]
            try:
                return addr, self.remoting.invoke(addr, code, fields, body, timeout_ms or self.timeout_ms)
            except RemotingTimeoutError as exc:
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
