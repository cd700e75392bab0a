"""CONSUMER_SEND_MSG_BACK: build the retry (or dead-letter) copy of a message a consumer failed.

RocketMQ SendMessageProcessor.consumerSendMsgBack, request fields (ConsumerSendMsgBackRequestHeader):
offset (phy offset of the failed message), group, delayLevel, originMsgId, originTopic,
unitMode, maxReconsumeTimes. The broker reads the record at `offset`, and stores a copy with
RECONSUMETIMES + 1:
- to %RETRY%{group} (auto-created: 1 queue, read/write) with DELAY = delayLevel, or
  3 + reconsumeTimes when the client passed 0, so the scheduler delivers it later;
- to %DLQ%{group} (auto-created: 1 queue) when reconsumeTimes >= maxReconsumeTimes (default 16)
  or delayLevel < 0, with DLQ_ORIGIN_TOPIC (the user topic) and DLQ_ORIGIN_MESSAGE_ID.
Both carry RETRY_TOPIC (the user topic, set on the first send-back), ORIGIN_MESSAGE_ID and
RECONSUME_TIME.

Called by workers/front.py, which hands the result to the writer through its usual send path (and
through schedule.maybe_redirect, which turns the DELAY into SCHEDULE_TOPIC_XXXX). Not thread-safe.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rmqd.broker.send import PreparedSend, Rejection
from rmqd.broker.topic_config import PERM_READ, PERM_WRITE, TopicConfig, TopicConfigManager
from rmqd.errors import ProtocolError, RmqError
from rmqd.protocol import codec
from rmqd.protocol.commands import ResponseCode
from rmqd.store import record as rec
from rmqd.store.commit_log import CommitLog
from rmqd.store.record import Prop

RETRY_PREFIX = "%RETRY%"
DLQ_PREFIX = "%DLQ%"
DEFAULT_MAX_RECONSUME_TIMES = 16  # RocketMQ SubscriptionGroupConfig.retryMaxTimes
DLQ_ORIGIN_TOPIC = "DLQ_ORIGIN_TOPIC"
DLQ_ORIGIN_MESSAGE_ID = "DLQ_ORIGIN_MESSAGE_ID"


def retry_topic(group: str) -> str:
    return RETRY_PREFIX + group


def dlq_topic(group: str) -> str:
    return DLQ_PREFIX + group


def ensure_group_topic(topics: TopicConfigManager, topic: str) -> bool:
    """Create a 1-queue read/write topic (retry or DLQ) if missing; returns whether it was created."""
    if topics.get(topic) is not None:
        return False
    topics.update(TopicConfig(topic, 1, 1, PERM_READ | PERM_WRITE))
    return True


def _int(fields: dict[str, Any], name: str, default: int) -> int:
    value = fields.get(name, default)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"field {name} must be an integer, got {value!r}") from None


def build_send_back(fields: dict[str, Any], commit_log: CommitLog, topics: TopicConfigManager,
                    *, on_topic_created: Callable[[], None] | None = None,
                    group_retry_max_times: int = DEFAULT_MAX_RECONSUME_TIMES) -> PreparedSend | Rejection:
    """The retry or DLQ copy of the message at fields["offset"] (a PreparedSend for the writer).

    The request's maxReconsumeTimes wins; without it, the group's retryMaxTimes (RocketMQ's rule).
    """
    group = str(fields.get("group") or "")
    if not group:
        return Rejection(ResponseCode.INVALID_PARAMETER, "CONSUMER_SEND_MSG_BACK needs a group")
    try:
        offset = _int(fields, "offset", -1)
        delay_level = _int(fields, "delayLevel", 0)
        max_times = _int(fields, "maxReconsumeTimes", group_retry_max_times)
    except ValueError as exc:
        return Rejection(ResponseCode.INVALID_PARAMETER, str(exc))
    try:
        original = commit_log.read_record(offset)
    except (RmqError, ValueError, IndexError) as exc:
        return Rejection(ResponseCode.SYSTEM_ERROR, f"look message by offset failed, {offset}: {exc}")
    props = dict(original.properties)
    origin_id = (props.get(Prop.ORIGIN_MESSAGE_ID) or str(fields.get("originMsgId") or "")
                 or props.get(Prop.UNIQ_KEY, ""))
    props.setdefault(Prop.RETRY_TOPIC, str(fields.get("originTopic") or original.topic))
    props.pop(Prop.TIMER_DELIVER_MS, None)
    props.pop(Prop.REAL_TOPIC, None)
    props.pop(Prop.REAL_QID, None)
    if origin_id:
        props[Prop.ORIGIN_MESSAGE_ID] = origin_id
    reconsume = original.reconsume_times
    props[Prop.RECONSUME_TIME] = str(reconsume + 1)
    props[Prop.MAX_RECONSUME_TIMES] = str(max_times)
    if reconsume >= max_times or delay_level < 0:
        topic = dlq_topic(group)
        props.pop(Prop.DELAY, None)
        props[DLQ_ORIGIN_TOPIC] = props[Prop.RETRY_TOPIC]
        props[DLQ_ORIGIN_MESSAGE_ID] = origin_id
    else:
        topic = retry_topic(group)
        props[Prop.DELAY] = str(delay_level if delay_level > 0 else 3 + reconsume)
    if ensure_group_topic(topics, topic) and on_topic_created is not None:
        on_topic_created()
    encoded = rec.encode_properties(props)
    topic_b = topic.encode()
    return PreparedSend(
        topic=topic_b, queue_id=0,
        messages=[(original.flag, memoryview(original.body), encoded, original.sys_flag, reconsume + 1)],
        born_timestamp_ms=original.born_timestamp_ms, born_host=original.born_host,
        records_bytes=rec.record_size(len(original.body), len(topic_b), len(encoded)),
    )


def ensure_retry_topics(body: Any, topics: TopicConfigManager, on_created: Callable[[], None]) -> None:
    """HEART_BEAT: create %RETRY%{group} for every group that subscribes to it (RocketMQ
    ClientManageProcessor.heartBeat), so a consumer's retry subscription has a route from the start."""
    try:
        data = codec.decode_json_body(body, "heartbeat body")
    except ProtocolError:
        return  # the heartbeat handler answers the malformed body
    created = False
    for consumer in data.get("consumerDataSet") or []:
        group = str(consumer.get("groupName", ""))
        subscribed = {str(s.get("topic")) for s in consumer.get("subscriptionDataSet") or []}
        if group and retry_topic(group) in subscribed:
            created |= ensure_group_topic(topics, retry_topic(group))
    if created:
        on_created()
