"""Consumer-side decisions that need no network: queue allocation, start offsets, subscriptions.

Pure functions, thread-safe; the consumer gathers the inputs over the network and calls these.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from rmqd.message import RETRY_TOPIC_PREFIX, ConsumeFromWhere, MessageQueue
from rmqd.store.record import tags_hash

SUB_ALL = "*"
TAG_SEPARATOR = "||"


def allocate_averagely(queues: list[MessageQueue], client_ids: list[str],
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


def compute_start_offset(
    consume_from: ConsumeFromWhere, topic: str, committed: int | None, min_offset: Callable[[], int],
    max_offset: Callable[[], int], search_by_timestamp: Callable[[], int],
) -> int:
    """Where a consumer starts on a queue (RocketMQ RebalancePushImpl.computePullFromWhere).

    1. A committed offset (>= 0) always wins.
    2. RocketMQ's "new group" rule (broker side, ConsumerManageProcessor.queryConsumerOffset): with
       no committed offset, a queue whose min offset is 0 (nothing deleted yet: a young topic, or
       queues just added by scaling out) is consumed from 0, whatever ConsumeFromWhere says. This
       makes a new group see every message of a young topic and never skip messages of new queues.
       RocketMQ also requires the message at offset 0 to be still in memory; rmqd has no such
       notion, so the rule is min offset == 0. The SDK applies the rule itself, so it holds whether
       or not the broker answers QUERY_CONSUMER_OFFSET with 0 in that case.
    3. Otherwise, by ConsumeFromWhere:
       LAST_OFFSET   -> the max offset (the next message to arrive); retry topics -> 0.
       FIRST_OFFSET  -> the min offset (RocketMQ answers 0 and lets OFFSET_MOVED correct it).
       TIMESTAMP     -> the first offset stored at or after the consume timestamp
                        (SEARCH_OFFSET_BY_TIMESTAMP); retry topics -> the max offset.
    The callables are only called when needed (each is one request to the broker).
    """
    if committed is not None and committed >= 0:
        return committed
    first = min_offset()
    if first <= 0:
        return 0
    is_retry = topic.startswith(RETRY_TOPIC_PREFIX)
    if consume_from is ConsumeFromWhere.CONSUME_FROM_FIRST_OFFSET:
        return first
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
