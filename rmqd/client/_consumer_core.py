"""ConsumerCore: the network side every consumer shares (RocketMQ MQClientInstance + MQClientAPIImpl
+ the network half of RebalanceImpl, for one member of one group).

Owns one RemotingClient and the route cache, and knows how to: send heartbeats and unregister,
fetch the group's consumer list, compute the queues this member owns (`allocate`, with a strategy
from `_rebalance`), query/commit offsets, find where to start on a queue, send a long-polling
PULL_MESSAGE and turn its response into a PullResult (records decoded, tags matched exactly).

A broker's NOTIFY_CONSUMER_IDS_CHANGED push is handed to `on_notify()` in the remoting I/O thread:
the callback must only set a flag or an event.

Thread-safe: every method may be called from any thread once `start()` returned; futures complete
in the remoting I/O thread (see _remoting.py), so their callbacks must be quick.
"""
from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field

from rmqd.client._rebalance import AllocateStrategy, Subscription, compute_start_offset
from rmqd.client._remoting import RemotingClient
from rmqd.client._route import NamesrvClient, RouteCache, check_response, namesrv_addrs
from rmqd.errors import ClientError, CorruptRecordError, MQClientError, ProtocolError, RmqError
from rmqd.message import (
    ConsumeFromWhere,
    MessageExt,
    MessageModel,
    MessageQueue,
    PullResult,
    PullStatus,
    decode_message_exts,
)
from rmqd.protocol import Command, PullSysFlag, RequestCode, ResponseCode, decode_json_body, encode_json_body

log = logging.getLogger(__name__)

PULL_TIMEOUT_MARGIN_MS = 3000  # network timeout of a pull = its suspend time + this margin
DEFAULT_TIMESTAMP_LOOKBACK_MS = 30 * 60 * 1000  # RocketMQ consumeTimestamp default: 30 minutes ago
UNREGISTER_TIMEOUT_MS = 1000

PULL_STATUS_BY_CODE = {
    ResponseCode.SUCCESS: PullStatus.FOUND,
    ResponseCode.PULL_NOT_FOUND: PullStatus.NO_NEW_MSG,
    ResponseCode.PULL_RETRY_IMMEDIATELY: PullStatus.NO_MATCHED_MSG,
    ResponseCode.PULL_OFFSET_MOVED: PullStatus.OFFSET_ILLEGAL,
}


@dataclass(slots=True)
class Allocation:
    """What a rebalance decided: the queues to own, and whether every topic could be allocated
    (False when a route or the consumer list was missing: the caller should try again soon).
    `forgotten`: a broker's consumer list lacks this client (the broker restarted, or expired it):
    the caller should heartbeat at once."""

    queues: set[MessageQueue] = field(default_factory=set)
    complete: bool = True
    forgotten: bool = False


class ConsumerCore:
    """The network side of one consumer; see the module docstring."""

    def __init__(
        self, group: str, namesrv: str | None, client_id: str, *, message_model: MessageModel,
        consume_from: ConsumeFromWhere, consume_timestamp_ms: int | None, consume_type: str,
        request_timeout_ms: int, on_notify: Callable[[], None],
    ) -> None:
        """`namesrv` None: $NAMESRV_ADDR, else 127.0.0.1:9876. `consume_timestamp_ms` None: 30 minutes
        ago (RocketMQ's consumeTimestamp default)."""
        self.group = group
        self.namesrv_addrs = namesrv_addrs(namesrv)
        self.client_id = client_id
        self.message_model = message_model
        self.consume_from = consume_from
        default_timestamp_ms = int(time.time() * 1000) - DEFAULT_TIMESTAMP_LOOKBACK_MS
        self.consume_timestamp_ms = consume_timestamp_ms or default_timestamp_ms
        self.consume_type = consume_type
        self.request_timeout_ms = request_timeout_ms
        self.on_notify = on_notify
        self.remoting: RemotingClient | None = None
        self.routes: RouteCache | None = None
        self._master_addrs: dict[str, str] = {}  # broker name -> master address, from the last routes read

    @property
    def clustering(self) -> bool:
        return self.message_model is MessageModel.CLUSTERING

    def start(self, then: Callable[[], None] | None = None) -> None:
        """Connect, then call `then` (opening the offset store); when that raises, disconnect again."""
        self.remoting = RemotingClient(name=f"rmqd-consumer-{self.group}", on_request=self._on_request)
        self.routes = RouteCache(NamesrvClient(self.remoting, self.namesrv_addrs, self.request_timeout_ms))
        if then is not None:
            try:
                then()
            except BaseException:
                self.close()
                raise

    def close(self) -> None:
        if self.remoting is not None:
            self.remoting.close()

    def running(self) -> RemotingClient:
        if self.remoting is None or self.remoting.closed:
            raise MQClientError(f"consumer {self.group} is not started; call start() first")
        return self.remoting

    def _on_request(self, addr: str, command: Command) -> None:
        if command.code == RequestCode.NOTIFY_CONSUMER_IDS_CHANGED:
            log.info("broker %s: the consumers of group %s changed", addr, self.group)
            self.on_notify()

    # ---------------------------------------------------------------- routes

    def broker_addr(self, queue: MessageQueue) -> str | None:
        try:
            route = self.routes.get(queue.topic)
        except RmqError as exc:
            log.warning("no route for %s: %s", queue.topic, exc)
            return None
        addr = route.master_addr(queue.broker_name) if route is not None else None
        if addr is not None:
            self._master_addrs[queue.broker_name] = addr
        return addr

    def cached_addr(self, queue: MessageQueue) -> str:
        """The queue's broker as last read from a route, without a network call (pulls use it from
        the remoting I/O thread, which must never block); looks the route up when none was read."""
        return self._master_addrs.get(queue.broker_name) or self.require_addr(queue)

    def require_addr(self, queue: MessageQueue) -> str:
        addr = self.broker_addr(queue)
        if addr is None:
            raise MQClientError(f"no broker address for {queue} (topic unknown to the namesrv?)")
        return addr

    def broker_addrs_of(self, topics: Iterable[str]) -> list[str]:
        """Master addresses of every broker serving one of `topics` (unknown topics are skipped)."""
        addrs: set[str] = set()
        for topic in topics:
            try:
                route = self.routes.get(topic)
            except RmqError as exc:
                log.warning("no route for subscribed topic %s: %s", topic, exc)
                continue
            if route is not None:
                addrs.update(route.master_addrs())
        return sorted(addrs)

    def topic_queues(self, topic: str) -> list[MessageQueue]:
        """Readable queues of `topic` from a fresh route; raises MQClientError when it has none."""
        route = self.routes.get(topic, refresh=True)
        if route is None:
            raise MQClientError(f"topic {topic} has no route (create it, or send to it first)")
        return route.subscribe_queues()

    # ---------------------------------------------------------------- membership

    def heartbeat(self, subscriptions: Iterable[Subscription], addrs: list[str] | None = None) -> None:
        """HEART_BEAT to `addrs` (default: every broker of the subscribed topics); failures are logged."""
        subscriptions = list(subscriptions)
        consumer = {
            "groupName": self.group, "consumeType": self.consume_type,
            "messageModel": self.message_model.name, "consumeFromWhere": self.consume_from.name,
            "unitMode": False, "subscriptionDataSet": [sub.to_heartbeat() for sub in subscriptions],
        }
        body = encode_json_body({"clientID": self.client_id, "consumerDataSet": [consumer],
                                 "producerDataSet": []})
        targets = addrs if addrs is not None else self.broker_addrs_of(sub.topic for sub in subscriptions)
        for addr in targets:
            try:
                check_response(self.running().invoke(addr, RequestCode.HEART_BEAT, {}, body,
                                                     timeout_ms=self.request_timeout_ms), addr)
            except RmqError as exc:
                log.warning("heartbeat to %s failed: %s", addr, exc)

    def unregister(self, topics: Iterable[str]) -> None:
        """UNREGISTER_CLIENT at every broker of `topics`, so the group rebalances at once."""
        fields = {"clientID": self.client_id, "consumerGroup": self.group, "producerGroup": ""}
        for addr in self.broker_addrs_of(topics):
            try:
                self.running().invoke(addr, RequestCode.UNREGISTER_CLIENT, fields,
                                      timeout_ms=UNREGISTER_TIMEOUT_MS)
            except RmqError as exc:
                log.info("unregister from %s failed: %s", addr, exc)

    def consumer_ids(self, addrs: list[str]) -> list[str] | None:
        """The group's client ids from the first broker that answers; None when none does."""
        for addr in addrs:
            try:
                response = self.running().invoke(addr, RequestCode.GET_CONSUMER_LIST_BY_GROUP,
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

    def allocate(self, topics: Iterable[str], strategy: AllocateStrategy,
                 current: set[MessageQueue]) -> Allocation:
        """The queues this member should own now (RocketMQ RebalanceImpl.rebalanceByTopic).

        BROADCASTING owns every queue. A topic whose route or consumer list cannot be read, or
        whose consumer list lacks this client, keeps the queues currently owned (`current`) and
        marks the allocation incomplete: giving them up would stall them until the next heartbeat.
        """
        result = Allocation()
        for topic in topics:
            try:
                route = self.routes.get(topic, refresh=True)
            except RmqError as exc:
                log.warning("rebalance of %s skipped: %s", topic, exc)
                route = None
            if route is None:
                result.complete = False
                result.queues.update(queue for queue in current if queue.topic == topic)
                continue
            self._master_addrs.update({name: addr for name in route.broker_addrs
                                       if (addr := route.master_addr(name)) is not None})
            queues = route.subscribe_queues()
            if not self.clustering:
                result.queues.update(queues)
                continue
            client_ids = self.consumer_ids(route.master_addrs())
            if client_ids is not None and self.client_id not in client_ids:
                log.warning("the broker does not list %s in group %s (restarted?): keeping its queues of %s "
                            "and sending a heartbeat", self.client_id, self.group, topic)
                result.forgotten = True
                client_ids = None
            if client_ids is None:
                result.complete = False
                result.queues.update(queue for queue in current if queue.topic == topic)
                continue
            result.queues.update(strategy(queues, client_ids, self.client_id))
        return result

    # ---------------------------------------------------------------- offsets

    def query_committed(self, queue: MessageQueue) -> int | None:
        """The group's committed offset of `queue` on its broker, None when it has none."""
        addr = self.require_addr(queue)
        fields = {"consumerGroup": self.group, "topic": queue.topic, "queueId": queue.queue_id}
        response = self.running().invoke(addr, RequestCode.QUERY_CONSUMER_OFFSET, fields,
                                         timeout_ms=self.request_timeout_ms)
        if response.code == ResponseCode.QUERY_NOT_FOUND:
            return None
        return check_response(response, addr).field_int("offset")

    def commit_async(self, queue: MessageQueue, offset: int) -> Future:
        """UPDATE_CONSUMER_OFFSET; the future resolves to None or fails with the broker's error."""
        addr = self.require_addr(queue)
        fields = {"consumerGroup": self.group, "topic": queue.topic, "queueId": queue.queue_id,
                  "commitOffset": offset}
        sent = self.running().invoke_async(addr, RequestCode.UPDATE_CONSUMER_OFFSET, fields,
                                           timeout_ms=self.request_timeout_ms)
        done: Future = Future()
        done.set_running_or_notify_cancel()

        def settle(answer: Future) -> None:
            try:
                check_response(answer.result(), addr)
            except RmqError as exc:
                done.set_exception(exc)
                return
            done.set_result(None)

        sent.add_done_callback(settle)
        return done

    def queue_offset(self, queue: MessageQueue, code: int, extra: dict[str, object] | None = None) -> int:
        """GET_MIN_OFFSET / GET_MAX_OFFSET / SEARCH_OFFSET_BY_TIMESTAMP of one queue."""
        addr = self.require_addr(queue)
        fields = {"topic": queue.topic, "queueId": queue.queue_id, **(extra or {})}
        response = self.running().invoke(addr, code, fields, timeout_ms=self.request_timeout_ms)
        return check_response(response, addr).field_int("offset")

    def offset_for_timestamp(self, queue: MessageQueue, timestamp_ms: int) -> int:
        return self.queue_offset(queue, RequestCode.SEARCH_OFFSET_BY_TIMESTAMP, {"timestamp": timestamp_ms})

    def start_offset(self, queue: MessageQueue, committed: int | None) -> int:
        """Where to start on `queue` given its stored offset (see _rebalance.compute_start_offset)."""
        return compute_start_offset(
            self.consume_from, queue.topic, committed,
            lambda: self.queue_offset(queue, RequestCode.GET_MIN_OFFSET),
            lambda: self.queue_offset(queue, RequestCode.GET_MAX_OFFSET),
            lambda: self.offset_for_timestamp(queue, self.consume_timestamp_ms),
            new_group_rule=self.clustering,
        )

    # ---------------------------------------------------------------- pulls

    def pull_async(self, queue: MessageQueue, queue_offset: int, subscription: Subscription,
                   batch_size: int, max_bytes: int, suspend_ms: int) -> Future:
        """PULL_MESSAGE, held by the broker up to `suspend_ms` when nothing is there (long polling).
        Does not block when the queue's broker is known (see cached_addr)."""
        addr = self.cached_addr(queue)
        sys_flag = PullSysFlag.SUBSCRIPTION | (PullSysFlag.SUSPEND if suspend_ms > 0 else 0)
        fields = {
            "consumerGroup": self.group, "topic": queue.topic, "queueId": queue.queue_id,
            "queueOffset": queue_offset, "maxMsgNums": batch_size, "sysFlag": int(sys_flag),
            "commitOffset": 0, "suspendTimeoutMillis": suspend_ms, "subscription": subscription.expression,
            "subVersion": subscription.sub_version, "expressionType": "TAG", "maxMsgBytes": max_bytes,
        }
        return self.running().invoke_async(addr, RequestCode.PULL_MESSAGE, fields,
                                           timeout_ms=suspend_ms + PULL_TIMEOUT_MARGIN_MS)


def parse_pull_response(queue: MessageQueue, response: Command, subscription: Subscription) -> PullResult:
    """A PullResult from a PULL_MESSAGE response: records decoded, tags matched exactly (the broker
    filtered by tag hash only, and hashes collide). Raises ClientError for an error code or an
    undecodable body."""
    status = PULL_STATUS_BY_CODE.get(response.code)
    if status is None:
        raise ClientError(f"broker answered {response.code}: {response.remark}")
    messages = decode_messages(response.body, queue.broker_name) if status is PullStatus.FOUND else []
    if subscription.tags is not None:
        messages = [message for message in messages if subscription.matches(message.tags)]
    return PullResult(status, response.field_int("nextBeginOffset"), response.field_int("minOffset", 0),
                      response.field_int("maxOffset", 0), messages)


def decode_messages(body: bytes | memoryview, broker_name: str) -> list[MessageExt]:
    """Every CommitLog record of a pull response body, in order, as lazily decoded MessageExts
    (rmqd.message.decode_message_exts: about 1 us per record instead of 5-6 us for the eager
    decode_record + MessageExt.from_record; properties, hosts and ids are decoded on first use).

    Sizes, magic, lengths, UTF-8 and the torn-write checks are verified; the body CRC is not
    (RocketMQ's client does not check it either: the writer computed it, recovery checks it, and the
    front checked each record's size, magic, queue id and offset before sending it).
    """
    try:
        return decode_message_exts(body, broker_name)
    except (CorruptRecordError, UnicodeDecodeError, ValueError, IndexError, struct.error) as exc:
        raise ProtocolError(f"undecodable record in a pull response: {exc}") from exc
