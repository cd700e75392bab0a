"""Consumer-side decisions that need no network: queue allocation, start offsets, subscriptions.

Allocation strategies (RocketMQ AllocateMessageQueueStrategy; `allocation_strategy(name)` picks one
by RocketMQ's name): each takes every queue of a topic, every client id of the group and this
client's id, and returns the queues this client owns. Every member sorts both lists (and drops
duplicate ids) first, so all members compute the same split and each queue gets exactly one owner
once they all see the same consumer list.

    AVG              (default) consecutive ranges, the first n % c clients one queue more
    AVG_BY_CIRCLE    round robin: client i owns queues i, i + c, i + 2c, ...
    CONSISTENT_HASH  a ring of 10 virtual nodes per client (MD5 of "clientId-i", first 4 bytes);
                     a queue belongs to the first node at or after the hash of its
                     "MessageQueue [topic=..., brokerName=..., queueId=...]" text, as RocketMQ
                     hashes it; a client joining or leaving moves only the queues near its nodes

Pure functions, thread-safe; the consumer gathers the inputs over the network and calls these.
"""
from __future__ import annotations

import bisect
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rmqd.errors import MQClientError
from rmqd.message import RETRY_TOPIC_PREFIX, ConsumeFromWhere, MessageQueue
from rmqd.store.record import tags_hash

SUB_ALL = "*"
TAG_SEPARATOR = "||"
CONSISTENT_HASH_VIRTUAL_NODES = 10  # RocketMQ AllocateMessageQueueConsistentHash() default

AllocateStrategy = Callable[[Sequence[MessageQueue], Sequence[str], str], list[MessageQueue]]


def allocate_averagely(queues: Sequence[MessageQueue], client_ids: Sequence[str],
                       client_id: str) -> list[MessageQueue]:
    """The queues `client_id` owns (RocketMQ AllocateMessageQueueAveragely).

    Both lists are sorted first, so every member of the group computes the same split. With n
    queues and c clients, the first n % c clients get n // c + 1 consecutive queues and the others
    n // c; when there are more clients than queues the last c - n clients get nothing. A client
    missing from `client_ids` (its heartbeat has not reached the broker yet) gets nothing.
    """
    all_queues = sorted(queues)
    all_ids = sorted(set(client_ids))
    if client_id not in all_ids or not all_queues:
        return []
    index = all_ids.index(client_id)
    queue_count, id_count = len(all_queues), len(all_ids)
    remainder = queue_count % id_count
    if queue_count <= id_count:
        size = 1
    elif remainder > 0 and index < remainder:
        size = queue_count // id_count + 1
    else:
        size = queue_count // id_count
    start = index * size if remainder > 0 and index < remainder else index * size + remainder
    count = min(size, queue_count - start)
    return [all_queues[(start + i) % queue_count] for i in range(max(0, count))]


def allocate_averagely_by_circle(queues: Sequence[MessageQueue], client_ids: Sequence[str],
                                 client_id: str) -> list[MessageQueue]:
    """Round robin over the sorted lists (RocketMQ AllocateMessageQueueAveragelyByCircle):
    client i of c owns queues i, i + c, i + 2c, ..."""
    all_ids = sorted(set(client_ids))
    if client_id not in all_ids:
        return []
    index = all_ids.index(client_id)
    return sorted(queues)[index::len(all_ids)]


def _ring_hash(key: str) -> int:
    """RocketMQ ConsistentHashRouter's MD5Hash: the first 4 digest bytes as an unsigned number."""
    return int.from_bytes(hashlib.md5(key.encode()).digest()[:4], "big")


def queue_text(queue: MessageQueue) -> str:
    """RocketMQ's MessageQueue.toString(), the key the consistent-hash strategy hashes."""
    return f"MessageQueue [topic={queue.topic}, brokerName={queue.broker_name}, queueId={queue.queue_id}]"


def allocate_consistent_hash(queues: Sequence[MessageQueue], client_ids: Sequence[str], client_id: str,
                             virtual_nodes: int = CONSISTENT_HASH_VIRTUAL_NODES) -> list[MessageQueue]:
    """The queues whose ring position falls to `client_id` (RocketMQ AllocateMessageQueueConsistentHash).

    Later nodes win hash ties, as in RocketMQ's TreeMap.put over the sorted client list.
    """
    all_ids = sorted(set(client_ids))
    if client_id not in all_ids or not queues:
        return []
    ring: dict[int, str] = {}
    for cid in all_ids:
        for replica in range(virtual_nodes):
            ring[_ring_hash(f"{cid}-{replica}")] = cid
    points = sorted(ring)
    owned = []
    for queue in sorted(queues):
        slot = bisect.bisect_left(points, _ring_hash(queue_text(queue)))
        if ring[points[slot % len(points)]] == client_id:
            owned.append(queue)
    return owned


ALLOCATE_STRATEGIES: dict[str, AllocateStrategy] = {
    "AVG": allocate_averagely,
    "AVG_BY_CIRCLE": allocate_averagely_by_circle,
    "CONSISTENT_HASH": allocate_consistent_hash,
}


def allocation_strategy(strategy: str | AllocateStrategy) -> AllocateStrategy:
    """A strategy by RocketMQ's name ("AVG", "AVG_BY_CIRCLE", "CONSISTENT_HASH"), or a callable
    with the same signature as allocate_averagely, returned as is."""
    if callable(strategy):
        return strategy
    found = ALLOCATE_STRATEGIES.get(str(strategy).upper())
    if found is None:
        raise MQClientError(f"unknown allocate strategy {strategy!r}; "
                            f"use one of {sorted(ALLOCATE_STRATEGIES)}")
    return found


def compute_start_offset(
    consume_from: ConsumeFromWhere, topic: str, committed: int | None, min_offset: Callable[[], int],
    max_offset: Callable[[], int], search_by_timestamp: Callable[[], int], *, new_group_rule: bool = True,
) -> int:
    """Where a consumer starts on a queue (RocketMQ RebalancePushImpl.computePullFromWhere).

    1. A committed offset (>= 0) always wins.
    2. RocketMQ's "new group" rule (broker side, ConsumerManageProcessor.queryConsumerOffset), for
       offsets kept on the broker (CLUSTERING, `new_group_rule`): with no committed offset, a queue
       whose min offset is 0 (nothing deleted yet: a young topic, or queues just added by scaling
       out) is consumed from 0, whatever ConsumeFromWhere says. A new group thus sees every message
       of a young topic and never skips the first messages of new queues. RocketMQ also requires the
       message at offset 0 to be still in memory; rmqd has no such notion, so the rule is min offset
       == 0. The SDK applies the rule itself, so it holds whether or not the broker answers
       QUERY_CONSUMER_OFFSET with 0 in that case. BROADCASTING offsets are local files, which the
       broker never sees, so the rule does not apply to them (as in RocketMQ).
    3. Otherwise, by ConsumeFromWhere:
       LAST_OFFSET   -> the max offset (the next message to arrive); retry topics -> 0.
       FIRST_OFFSET  -> the min offset (RocketMQ answers 0 and lets OFFSET_MOVED correct it).
       TIMESTAMP     -> the first offset stored at or after the consume timestamp
                        (SEARCH_OFFSET_BY_TIMESTAMP); retry topics -> the max offset.
    The callables are only called when needed (each is one request to the broker).
    """
    if committed is not None and committed >= 0:
        return committed
    is_retry = topic.startswith(RETRY_TOPIC_PREFIX)
    if consume_from is ConsumeFromWhere.CONSUME_FROM_FIRST_OFFSET:
        return max(0, min_offset())
    if new_group_rule and min_offset() <= 0:
        return 0
    if consume_from is ConsumeFromWhere.CONSUME_FROM_TIMESTAMP:
        return max_offset() if is_retry else search_by_timestamp()
    return 0 if is_retry else max_offset()


@dataclass(frozen=True, slots=True)
class Subscription:
    """A parsed tag expression: `tags` is None for "*" (every message)."""

    topic: str
    expression: str
    tags: frozenset[str] | None
    sub_version: int

    def matches(self, tags: str | None) -> bool:
        """Client-side exact match (the broker filtered by tag hash; hashes can collide)."""
        return self.tags is None or (tags is not None and tags in self.tags)

    def to_heartbeat(self) -> dict[str, object]:
        tags = sorted(self.tags) if self.tags is not None else []
        return {"topic": self.topic, "subString": self.expression, "tagsSet": tags,
                "codeSet": [tags_hash(tag) for tag in tags], "subVersion": self.sub_version,
                "expressionType": "TAG"}


def parse_subscription(topic: str, expression: str | None) -> Subscription:
    """"*", "" or None -> all tags; "A || B" -> {"A", "B"} (RocketMQ FilterAPI.buildSubscriptionData)."""
    text = (expression or SUB_ALL).strip()
    sub_version = int(time.time() * 1000)
    if text == SUB_ALL:
        return Subscription(topic, SUB_ALL, None, sub_version)
    tags = frozenset(tag.strip() for tag in text.split(TAG_SEPARATOR) if tag.strip())
    if not tags:
        return Subscription(topic, SUB_ALL, None, sub_version)
    return Subscription(topic, text, tags, sub_version)
