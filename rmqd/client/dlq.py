"""Dead-letter queue administration: list and read a group's %DLQ% messages, resend one to the group.

    admin = MQAdmin(namesrv="127.0.0.1:9876"); admin.start()
    for msg in dlq_messages(admin, "cg"):                  # MessageExt, oldest first
        print(msg.offset_msg_id, msg.properties["DLQ_ORIGIN_TOPIC"], msg.reconsume_times)
    resend_dlq_message(admin, "cg", msg.offset_msg_id)     # back to the group, with a fresh retry budget

Resending stores a copy in %RETRY%{group} (which every CLUSTERING member subscribes to) with
RECONSUMETIMES 0 and no delay, so the group consumes it again at once under its original topic
(RETRY_TOPIC). RocketMQ's dashboard resends through CONSUME_MESSAGE_DIRECTLY to one client; the
retry topic reaches whichever member owns it and survives the consumers being offline.
Also `mqadmin queryDLQMsg -g cg` and `mqadmin resendDLQMsg -g cg -i <offsetMsgId>`.
Thread-safe as MQAdmin is.
"""
from __future__ import annotations

from rmqd.client._consumer_core import decode_messages
from rmqd.client._route import check_response
from rmqd.client.admin import MQAdmin
from rmqd.errors import RouteNotFoundError
from rmqd.message import DLQ_TOPIC_PREFIX, RETRY_TOPIC_PREFIX, MessageExt
from rmqd.protocol import RequestCode, ResponseCode
from rmqd.store.record import Prop, SysFlag, encode_properties

TOOLS_CONSUMER_GROUP = "TOOLS_CONSUMER"  # RocketMQ MixAll.TOOLS_CONSUMER_GROUP
PULL_BATCH = 32
DROPPED_ON_RESEND = ("DLQ_ORIGIN_TOPIC", "DLQ_ORIGIN_MESSAGE_ID", Prop.DELAY, Prop.REAL_TOPIC, Prop.REAL_QID,
                     Prop.TIMER_DELIVER_MS)


def dlq_messages(admin: MQAdmin, group: str, *, begin_offset: int = 0,
                 max_num: int = 1000) -> list[MessageExt]:
    """Up to `max_num` messages of %DLQ%{group} from queue offset `begin_offset` (every broker);
    empty when the group never had a dead letter."""
    topic = DLQ_TOPIC_PREFIX + group
    try:
        route = admin._route(topic)  # noqa: SLF001 - same package; MQAdmin's route cache and client
    except RouteNotFoundError:
        return []  # nothing ever went to this group's DLQ
    messages: list[MessageExt] = []
    for queue in route.subscribe_queues():
        addr = route.master_addr(queue.broker_name)
        offset = begin_offset
        while addr is not None and len(messages) < max_num:
            fields = {"consumerGroup": TOOLS_CONSUMER_GROUP, "topic": topic, "queueId": queue.queue_id,
                      "queueOffset": offset, "maxMsgNums": min(PULL_BATCH, max_num - len(messages)),
                      "sysFlag": 0, "commitOffset": 0, "suspendTimeoutMillis": 0, "subscription": "*"}
            response = admin._running().invoke(addr, RequestCode.PULL_MESSAGE, fields,  # noqa: SLF001
                                                timeout_ms=admin.timeout_ms)
            if response.code != ResponseCode.SUCCESS:
                break
            batch = decode_messages(response.body, queue.broker_name)
            messages += batch
            offset = response.field_int("nextBeginOffset")
            if not batch:
                break
    return messages[:max_num]


def resend_dlq_message(admin: MQAdmin, group: str, offset_msg_id: str) -> str:
    """Send the DLQ message `offset_msg_id` back to `group`; returns the offset msg id of the copy."""
    message = admin.query_msg_by_id(offset_msg_id)
    if message.topic != DLQ_TOPIC_PREFIX + group:
        raise ValueError(f"{offset_msg_id} is a message of {message.topic}, not of {DLQ_TOPIC_PREFIX}{group}")
    props = {k: v for k, v in message.properties.items() if k not in DROPPED_ON_RESEND}
    props.setdefault(Prop.RETRY_TOPIC, message.properties.get("DLQ_ORIGIN_TOPIC", message.topic))
    props[Prop.RECONSUME_TIME] = "0"
    fields = {"producerGroup": TOOLS_CONSUMER_GROUP, "topic": RETRY_TOPIC_PREFIX + group, "queueId": 0,
              "sysFlag": message.sys_flag & ~SysFlag.COMPRESSED, "bornTimestamp": message.born_timestamp_ms,
              "bornHost": message.born_host, "flag": 0, "properties": encode_properties(props).decode(),
              "reconsumeTimes": 0, "batch": False}
    addr = message.store_host
    response = admin._running().invoke(addr, RequestCode.SEND_MESSAGE, fields, message.body,  # noqa: SLF001
                                        timeout_ms=admin.timeout_ms)
    return str(check_response(response, addr).fields.get("offsetMsgId", ""))
