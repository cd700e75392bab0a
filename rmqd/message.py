"""User-facing message types of the SDK: what users build, send, receive and get back.

Owns: `Message` (what a producer sends) and its validation rules, `MessageExt` (what a consumer
receives, built from a decoded CommitLog record), `MessageQueue`, `SendResult`, `PullResult` and the
status / mode enums. No byte layout lives here: records are decoded by `rmqd.store.record`, frames by
`rmqd.protocol.codec`.

Values are plain data; `Message` is mutable like RocketMQ's, the others are treated as immutable.
Nothing here keeps state between calls: safe from any thread.
"""
from __future__ import annotations

import enum
import logging
import re
import zlib
from dataclasses import dataclass, field

from rmqd.errors import MQClientError
from rmqd.store.record import (
    MessageRecord,
    Prop,
    SysFlag,
    decode_host,
    encode_properties,
    offset_msg_id,
)

log = logging.getLogger(__name__)

TOPIC_PATTERN = re.compile(r"^[%|a-zA-Z0-9_-]+$")
TOPIC_MAX_LENGTH = 127
MAX_PROPERTIES_BYTES = 32767
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
DELAY_LEVEL_COUNT = 18  # messageDelayLevel "1s 5s 10s 30s 1m ... 2h"

AUTO_CREATE_TOPIC = "TBW102"
SYSTEM_TOPIC_PREFIX = "rmq_sys_"
SYSTEM_TOPICS = frozenset({
    AUTO_CREATE_TOPIC,
    "SCHEDULE_TOPIC_XXXX",
    "RMQ_SYS_TRANS_HALF_TOPIC",
    "RMQ_SYS_TRANS_OP_HALF_TOPIC",
    "TRANS_CHECK_MAX_TIME_TOPIC",
    "RMQ_SYS_TRACE_TOPIC",
    "OFFSET_MOVED_EVENT",
    "SELF_TEST_TOPIC",
})
RETRY_TOPIC_PREFIX = "%RETRY%"
DLQ_TOPIC_PREFIX = "%DLQ%"

# Property names the SDK sets from Message attributes; users may not set them directly.
RESERVED_PROPERTY_NAMES = frozenset(
    value for name, value in vars(Prop).items() if name.isupper() and name != "KEY_SEPARATOR"
)


class SendStatus(enum.Enum):
    """Outcome of a successful send (RocketMQ SendStatus). Failures raise instead."""

    SEND_OK = "SEND_OK"
    FLUSH_DISK_TIMEOUT = "FLUSH_DISK_TIMEOUT"
    FLUSH_SLAVE_TIMEOUT = "FLUSH_SLAVE_TIMEOUT"
    SLAVE_NOT_AVAILABLE = "SLAVE_NOT_AVAILABLE"


class MessageModel(enum.Enum):
    CLUSTERING = "CLUSTERING"
    BROADCASTING = "BROADCASTING"


class ConsumeFromWhere(enum.Enum):
    """Where a group starts on a queue it has no committed offset for.

    The short names (LAST_OFFSET, FIRST_OFFSET, TIMESTAMP) are aliases of RocketMQ's long ones;
    `.name` is always the long one, which is what travels in heartbeats.
    """

    CONSUME_FROM_LAST_OFFSET = "CONSUME_FROM_LAST_OFFSET"
    CONSUME_FROM_FIRST_OFFSET = "CONSUME_FROM_FIRST_OFFSET"
    CONSUME_FROM_TIMESTAMP = "CONSUME_FROM_TIMESTAMP"
    LAST_OFFSET = "CONSUME_FROM_LAST_OFFSET"
    FIRST_OFFSET = "CONSUME_FROM_FIRST_OFFSET"
    TIMESTAMP = "CONSUME_FROM_TIMESTAMP"


class ConsumeStatus(enum.Enum):
    CONSUME_SUCCESS = "CONSUME_SUCCESS"
    RECONSUME_LATER = "RECONSUME_LATER"


class PullStatus(enum.Enum):
    FOUND = "FOUND"
    NO_NEW_MSG = "NO_NEW_MSG"
    NO_MATCHED_MSG = "NO_MATCHED_MSG"
    OFFSET_ILLEGAL = "OFFSET_ILLEGAL"


@dataclass(frozen=True, order=True, slots=True)
class MessageQueue:
    """One queue of a topic on one broker; orders by (topic, broker_name, queue_id) like RocketMQ."""

    topic: str
    broker_name: str
    queue_id: int


@dataclass(slots=True)
class Message:
    """A message to send.

    Args:
        topic: destination topic, `^[%|a-zA-Z0-9_-]+$`, at most 127 characters.
        body: payload, 1 byte .. maxMessageSize (4 MiB by default).
        tags: one tag used for broker-side filtering (`subscribe(topic, "A || B")`).
        keys: business key(s) indexed for `queryMsgByKey`; a str (space-separated keys) or a list.
        properties: user properties (str -> str).
        flag: user int flag stored with the record.
        delay_level: 1..18 for RocketMQ's delay levels (1s 5s 10s 30s 1m ... 2h); 0 = no delay.
        deliver_at_ms: arbitrary delivery time (epoch ms) instead of a delay level.
        wait_store_msg_ok: ask the broker to answer only once the message is stored (RocketMQ WAIT).
    """

    topic: str
    body: bytes
    tags: str | None = None
    keys: str | list[str] | None = None
    properties: dict[str, str] | None = None
    flag: int = 0
    delay_level: int = 0
    deliver_at_ms: int | None = None
    wait_store_msg_ok: bool = True

    def key_list(self) -> list[str]:
        """The keys as a list (a str is split on spaces, RocketMQ's KEY_SEPARATOR)."""
        if self.keys is None:
            return []
        if isinstance(self.keys, str):
            return [key for key in self.keys.split(Prop.KEY_SEPARATOR) if key]
        return list(self.keys)


def validate_topic(topic: object, *, allow_system: bool = False) -> None:
    """Raise MQClientError unless `topic` is a valid (and, for users, non-system) topic name."""
    if not isinstance(topic, str) or not topic:
        raise MQClientError(f"topic must be a non-empty string, got {topic!r}")
    if len(topic) > TOPIC_MAX_LENGTH:
        raise MQClientError(
            f"topic {topic[:20]!r}... is {len(topic)} characters, the limit is {TOPIC_MAX_LENGTH}"
        )
    if not TOPIC_PATTERN.match(topic):
        raise MQClientError(f"topic {topic!r} contains characters outside ^[%|a-zA-Z0-9_-]+$")
    if not allow_system and is_system_topic(topic):
        raise MQClientError(f"topic {topic!r} is a reserved system topic; choose another name")


def is_system_topic(topic: str) -> bool:
    return topic in SYSTEM_TOPICS or topic.startswith(SYSTEM_TOPIC_PREFIX)


# Topic names that passed validate_topic (user rules), so a hot send path checks each name once.
# Bounded: cleared when it grows past _VALID_TOPICS_MAX (a process with that many topics re-checks).
_valid_topics: set[str] = set()
_VALID_TOPICS_MAX = 4096


def validate_send_topic(topic: object) -> None:
    """validate_topic for a send (system topics refused), remembered per name once it passed."""
    if topic in _valid_topics:
        return
    validate_topic(topic)
    if len(_valid_topics) >= _VALID_TOPICS_MAX:
        _valid_topics.clear()
    _valid_topics.add(topic)  # type: ignore[arg-type]  # validate_topic proved it is a str


def validate_message(msg: Message, max_message_size: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
    """Check every client-side rule of a message; raise MQClientError saying which one failed.

    The common message (no tags, keys, properties or delay) costs a few attribute checks: the
    optional parts are validated only when set.
    """
    if not isinstance(msg, Message):
        raise MQClientError(f"expected a Message, got {type(msg).__name__}")
    validate_send_topic(msg.topic)
    _validate_body(msg.body, max_message_size)
    if msg.tags is not None or msg.keys is not None or type(msg.flag) is not int or msg.flag:
        _validate_tags_and_keys(msg)
    if msg.delay_level != 0 or msg.deliver_at_ms is not None:
        _validate_delay(msg)
    if msg.properties is not None or msg.tags is not None or msg.keys is not None:
        _validate_properties_size(_validate_user_properties(msg.properties), msg)


def _validate_properties_size(user: dict[str, str], msg: Message) -> None:
    encoded = len(encode_properties(user)) + len((msg.tags or "").encode()) + len(" ".join(msg.key_list()))
    if encoded > MAX_PROPERTIES_BYTES:
        raise MQClientError(
            f"message properties encode to about {encoded} bytes, the limit is {MAX_PROPERTIES_BYTES}"
        )


def _validate_body(body: object, max_message_size: int) -> None:
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise MQClientError(f"body must be bytes, got {type(body).__name__} (encode str bodies first)")
    if len(body) == 0:
        raise MQClientError("body is empty; a message needs at least one byte")
    if len(body) > max_message_size:
        raise MQClientError(f"body is {len(body)} bytes, maxMessageSize is {max_message_size}")


def _validate_tags_and_keys(msg: Message) -> None:
    if msg.tags is not None:
        if not isinstance(msg.tags, str) or not msg.tags.strip():
            raise MQClientError(f"tags must be a non-blank string or None, got {msg.tags!r}")
        if "||" in msg.tags or _has_separator(msg.tags):
            raise MQClientError(f"tags {msg.tags!r} may not contain '||' or \\x01/\\x02")
    if msg.keys is not None and not isinstance(msg.keys, str):
        if not isinstance(msg.keys, (list, tuple)) or not all(isinstance(k, str) for k in msg.keys):
            raise MQClientError(f"keys must be a str or a list of str, got {msg.keys!r}")
    for key in msg.key_list():
        if _has_separator(key):
            raise MQClientError(f"key {key!r} may not contain \\x01/\\x02")
    if isinstance(msg.keys, (list, tuple)) and any(Prop.KEY_SEPARATOR in k or not k for k in msg.keys):
        raise MQClientError(f"keys in a list must be non-empty and contain no space: {msg.keys!r}")
    if not isinstance(msg.flag, int) or not -(2**31) <= msg.flag < 2**31:
        raise MQClientError(f"flag must be a 32-bit int, got {msg.flag!r}")


def _validate_delay(msg: Message) -> None:
    if not isinstance(msg.delay_level, int) or not 0 <= msg.delay_level <= DELAY_LEVEL_COUNT:
        raise MQClientError(f"delay_level must be 0..{DELAY_LEVEL_COUNT}, got {msg.delay_level!r}")
    if msg.deliver_at_ms is not None:
        if not isinstance(msg.deliver_at_ms, int) or msg.deliver_at_ms <= 0:
            raise MQClientError(f"deliver_at_ms must be a positive epoch-ms int, got {msg.deliver_at_ms!r}")
        if msg.delay_level:
            raise MQClientError("set either delay_level or deliver_at_ms, not both")


def _validate_user_properties(properties: object) -> dict[str, str]:
    if properties is None:
        return {}
    if not isinstance(properties, dict):
        raise MQClientError(f"properties must be a dict of str to str, got {type(properties).__name__}")
    for name, value in properties.items():
        if not isinstance(name, str) or not isinstance(value, str) or not name:
            raise MQClientError(f"property {name!r}={value!r}: names and values must be str, names non-empty")
        if _has_separator(name) or _has_separator(value):
            raise MQClientError(f"property {name!r} may not contain \\x01 or \\x02 in its name or value")
        if name in RESERVED_PROPERTY_NAMES:
            raise MQClientError(
                f"property {name!r} is reserved by the SDK; use Message.tags/keys/delay_level instead"
            )
    return properties


def _has_separator(text: str) -> bool:
    return "\x01" in text or "\x02" in text


@dataclass(slots=True)
class MessageExt:
    """A received message: the stored record plus where it was stored.

    `msg_id` is the producer's UNIQ_KEY when present (RocketMQ's MessageClientExt), else the offset
    message id. `keys` is a list; `properties` holds every property, system ones included.
    """

    topic: str
    body: bytes
    tags: str | None
    keys: list[str]
    msg_id: str
    offset_msg_id: str
    queue_id: int
    queue_offset: int
    born_timestamp_ms: int
    store_timestamp_ms: int
    born_host: str
    store_host: str
    reconsume_times: int
    sys_flag: int
    commitlog_offset: int
    properties: dict[str, str] = field(default_factory=dict)
    broker_name: str = ""

    @property
    def user_properties(self) -> dict[str, str]:
        """Properties the producer's user set (SDK-managed names removed)."""
        return {k: v for k, v in self.properties.items() if k not in RESERVED_PROPERTY_NAMES}

    @classmethod
    def from_record(cls, rec: MessageRecord, broker_name: str = "") -> MessageExt:
        """Build from a decoded CommitLog record; zlib bodies (SysFlag.COMPRESSED) are inflated."""
        props = rec.properties
        offset_id = offset_msg_id(rec.store_host, rec.phy_offset)
        keys = props.get(Prop.KEYS, "")
        return cls(
            topic=rec.topic, body=_inflate(rec), tags=props.get(Prop.TAGS),
            keys=[key for key in keys.split(Prop.KEY_SEPARATOR) if key],
            msg_id=props.get(Prop.UNIQ_KEY) or offset_id, offset_msg_id=offset_id,
            queue_id=rec.queue_id, queue_offset=rec.queue_offset,
            born_timestamp_ms=rec.born_timestamp_ms, store_timestamp_ms=rec.store_timestamp_ms,
            born_host=_host_text(rec.born_host), store_host=_host_text(rec.store_host),
            reconsume_times=rec.reconsume_times, sys_flag=rec.sys_flag, commitlog_offset=rec.phy_offset,
            properties=props, broker_name=broker_name,
        )


def _inflate(rec: MessageRecord) -> bytes:
    if not rec.sys_flag & SysFlag.COMPRESSED:
        return rec.body
    try:
        return zlib.decompress(rec.body)
    except zlib.error as exc:  # keep the message deliverable; RocketMQ also hands over the raw body
        log.warning("cannot inflate body of %s queue %d offset %d: %s; delivering it compressed",
                    rec.topic, rec.queue_id, rec.queue_offset, exc)
        return rec.body


def _host_text(raw: bytes) -> str:
    ip, port = decode_host(raw)
    return f"{ip}:{port}"


@dataclass(frozen=True, slots=True)
class SendResult:
    """What a successful send returns. For a batch, msg_id/offset_msg_id are comma-joined."""

    status: SendStatus
    msg_id: str
    offset_msg_id: str
    queue: MessageQueue
    queue_offset: int
    region_id: str = "DefaultRegion"
    transaction_id: str | None = None


@dataclass(frozen=True, slots=True)
class PullResult:
    """Outcome of one pull on one queue. `next_begin_offset` is the next queue offset to pull."""

    status: PullStatus
    next_begin_offset: int
    min_offset: int
    max_offset: int
    messages: list[MessageExt] = field(default_factory=list)

