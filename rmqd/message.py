"""User-facing message types of the SDK: what users build, send, receive and get back.

Owns: `Message` (what a producer sends) and its validation rules, `MessageExt` (what a consumer
receives, built from a decoded CommitLog record) and `decode_message_exts` (the consumer's fast,
lazy decoder of a pull response's records, which reads the layout `rmqd.store.record` defines),
`MessageQueue`, `SendResult`, `PullResult` and the status / mode enums. Frames are decoded by
`rmqd.protocol.codec`.

Values are plain data; `Message` is mutable like RocketMQ's, the others are treated as immutable.
Nothing here keeps state between calls: safe from any thread.
"""
from __future__ import annotations

import enum
import logging
import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rmqd.errors import CorruptRecordError, MQClientError
from rmqd.store.record import (
    BODY_POS,
    MESSAGE_MAGIC_V1,
    MESSAGE_MAGIC_V2,
    RECORD_FIXED_SIZE,
    MessageRecord,
    Prop,
    SysFlag,
    decode_host,
    decode_properties,
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


_UNSET: Any = object()  # a lazily decoded MessageExt field not computed yet

MESSAGE_EXT_FIELDS = (
    "topic", "body", "tags", "keys", "msg_id", "offset_msg_id", "queue_id", "queue_offset",
    "born_timestamp_ms", "store_timestamp_ms", "born_host", "store_host", "reconsume_times", "sys_flag",
    "commitlog_offset", "properties", "broker_name",
)


class MessageExt:
    """A received message: the stored record plus where it was stored.

    `msg_id` is the producer's UNIQ_KEY when present (RocketMQ's MessageClientExt), else the offset
    message id. `keys` is a list; `properties` holds every property, system ones included.

    Behaves like a (mutable, unhashable) dataclass of MESSAGE_EXT_FIELDS: same constructor, `==`
    over every field, every field assignable. A message decoded from a pull (`decode_message_exts`)
    is lazy: the numbers come from one unpack of the record head and the body is a bytes copy, but
    `properties`, `tags`, `keys`, `msg_id`, `offset_msg_id` and the two host texts are computed on
    first access from the raw properties and the head (a listener reading only the body pays for
    none of them). `get_property` reads one property without building the dict. The first access
    of `properties` also fixes `tags`, `keys` and `msg_id`, so later changes to the dict do not
    move them (as with the eager dataclass). Not thread-safe against concurrent first accesses
    from two threads (each computes the same value; harmless).
    """

    __slots__ = ("topic", "body", "queue_id", "queue_offset", "born_timestamp_ms", "store_timestamp_ms",
                 "reconsume_times", "sys_flag", "commitlog_offset", "broker_name", "_tags", "_keys",
                 "_msg_id", "_offset_msg_id", "_born_host", "_store_host", "_properties", "_props_raw",
                 "_head")
    __match_args__ = MESSAGE_EXT_FIELDS
    # Set per instance (slots) or computed on first read (properties installed after the class):
    topic: str
    body: bytes
    tags: str | None
    keys: list[str]
    msg_id: str
    offset_msg_id: str
    born_host: str
    store_host: str
    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value (like the dataclass)

    def __init__(
        self, topic: str, body: bytes, tags: str | None, keys: list[str], msg_id: str, offset_msg_id: str,
        queue_id: int, queue_offset: int, born_timestamp_ms: int, store_timestamp_ms: int, born_host: str,
        store_host: str, reconsume_times: int, sys_flag: int, commitlog_offset: int,
        properties: dict[str, str] | None = None, broker_name: str = "",
    ) -> None:
        self.topic, self.body, self._tags, self._keys = topic, body, tags, keys
        self._msg_id, self._offset_msg_id = msg_id, offset_msg_id
        self.queue_id, self.queue_offset = queue_id, queue_offset
        self.born_timestamp_ms, self.store_timestamp_ms = born_timestamp_ms, store_timestamp_ms
        self._born_host, self._store_host = born_host, store_host
        self.reconsume_times, self.sys_flag = reconsume_times, sys_flag
        self.commitlog_offset = commitlog_offset
        self._properties = {} if properties is None else properties
        self.broker_name = broker_name

    # ---- lazily decoded fields (_UNSET until first read; see _lazy_field below the class) ----

    @property
    def properties(self) -> dict[str, str]:
        properties = self._properties
        return self._decode_properties() if properties is _UNSET else properties

    @properties.setter
    def properties(self, value: dict[str, str]) -> None:
        self._fix_derived()
        self._properties = value

    def get_property(self, name: str, default: str | None = None) -> str | None:
        """One property's value (RocketMQ Message.getProperty), without decoding the others."""
        properties = self._properties
        if properties is _UNSET:
            return _raw_property(self._props_raw, name, default)
        return properties.get(name, default)

    def _decode_properties(self) -> dict[str, str]:
        self._fix_derived()
        raw = self._props_raw
        self._properties = decode_properties(raw) if raw else {}
        return self._properties

    def _fix_derived(self) -> None:
        """Compute the fields derived from the properties before the dict can change."""
        self.tags, self.keys, self.msg_id  # noqa: B018 - evaluated for their caching side effect

    # ---- dataclass behaviour ----

    def _values(self) -> tuple:
        return tuple(getattr(self, name) for name in MESSAGE_EXT_FIELDS)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in MESSAGE_EXT_FIELDS)
        return f"MessageExt({fields})"

    @property
    def user_properties(self) -> dict[str, str]:
        """Properties the producer's user set (SDK-managed names removed)."""
        return {k: v for k, v in self.properties.items() if k not in RESERVED_PROPERTY_NAMES}

    @classmethod
    def from_record(cls, rec: MessageRecord, broker_name: str = "") -> MessageExt:
        """Build from a decoded CommitLog record; zlib bodies (SysFlag.COMPRESSED) are inflated."""
        props = rec.properties
        offset_id = offset_msg_id(rec.store_host, rec.phy_offset)
        return cls(
            topic=rec.topic, body=_inflate(rec.body, rec.sys_flag, rec.topic, rec.queue_id, rec.queue_offset),
            tags=props.get(Prop.TAGS), keys=_split_keys(props.get(Prop.KEYS)),
            msg_id=props.get(Prop.UNIQ_KEY) or offset_id, offset_msg_id=offset_id,
            queue_id=rec.queue_id, queue_offset=rec.queue_offset,
            born_timestamp_ms=rec.born_timestamp_ms, store_timestamp_ms=rec.store_timestamp_ms,
            born_host=_host_text(rec.born_host), store_host=_host_text(rec.store_host),
            reconsume_times=rec.reconsume_times, sys_flag=rec.sys_flag, commitlog_offset=rec.phy_offset,
            properties=props, broker_name=broker_name,
        )


def _lazy_field(slot: str, compute: Callable[[MessageExt], Any]) -> property:
    """A MessageExt attribute kept in `slot`, computed by `compute` on first read, assignable."""

    def get(self: MessageExt) -> Any:
        value = getattr(self, slot)
        if value is _UNSET:
            value = compute(self)
            setattr(self, slot, value)
        return value

    def set_(self: MessageExt, value: Any) -> None:
        setattr(self, slot, value)

    return property(get, set_)


def _offset_msg_id_of(message: MessageExt) -> str:
    """offset_msg_id (store host ip, port, phy offset as 32 hex digits) from the head's integers."""
    head = message._head
    return (f"{head[_HEAD_STORE_IP]:08X}{head[_HEAD_STORE_PORT] & 0xFFFFFFFF:08X}"
            f"{head[_HEAD_PHY] & 0xFFFFFFFFFFFFFFFF:016X}")


MessageExt.tags = _lazy_field("_tags", lambda m: m.get_property(Prop.TAGS))  # type: ignore[method-assign]
MessageExt.keys = _lazy_field("_keys", lambda m: _split_keys(m.get_property(Prop.KEYS)))  # type: ignore
MessageExt.msg_id = _lazy_field(  # type: ignore[method-assign]
    "_msg_id", lambda m: m.get_property(Prop.UNIQ_KEY) or m.offset_msg_id)
MessageExt.offset_msg_id = _lazy_field("_offset_msg_id", _offset_msg_id_of)  # type: ignore[method-assign]
MessageExt.born_host = _lazy_field(  # type: ignore[method-assign]
    "_born_host", lambda m: _ipv4_text(m._head[_HEAD_BORN_IP], m._head[_HEAD_BORN_PORT]))
MessageExt.store_host = _lazy_field(  # type: ignore[method-assign]
    "_store_host", lambda m: _ipv4_text(m._head[_HEAD_STORE_IP], m._head[_HEAD_STORE_PORT]))


def _split_keys(keys: str | None) -> list[str]:
    return [key for key in keys.split(Prop.KEY_SEPARATOR) if key] if keys else []


def _inflate(body: bytes, sys_flag: int, topic: str, queue_id: int, queue_offset: int) -> bytes:
    if not sys_flag & SysFlag.COMPRESSED:
        return body
    try:
        return zlib.decompress(body)
    except zlib.error as exc:  # keep the message deliverable; RocketMQ also hands over the raw body
        log.warning("cannot inflate body of %s queue %d offset %d: %s; delivering it compressed",
                    topic, queue_id, queue_offset, exc)
        return body


def _host_text(raw: bytes) -> str:
    ip, port = decode_host(raw)
    return f"{ip}:{port}"


# "a.b.c.d:port" of the (ip, port) pairs seen; bounded like _valid_topics.
_host_texts: dict[tuple[int, int], str] = {}
_HOST_TEXTS_MAX = 4096


def _ipv4_text(ip: int, port: int) -> str:
    """`decode_host` + "ip:port" from the head's integers (IPv4 as a u32), cached per pair."""
    key = (ip, port)
    text = _host_texts.get(key)
    if text is None:
        if len(_host_texts) >= _HOST_TEXTS_MAX:
            _host_texts.clear()
        text = _host_texts[key] = f"{ip >> 24}.{ip >> 16 & 255}.{ip >> 8 & 255}.{ip & 255}:{port}"
    return text


_property_markers: dict[str, tuple[bytes, bytes]] = {}  # name -> (b"name\x01", b"\x02name\x01")


def _markers_of(name: str) -> tuple[bytes, bytes]:
    if len(_property_markers) >= _HOST_TEXTS_MAX:
        _property_markers.clear()
    encoded = name.encode()
    markers = _property_markers[name] = (encoded + b"\x01", b"\x02" + encoded + b"\x01")
    return markers


def _raw_property(raw: bytes, name: str, default: str | None) -> str | None:
    """`decode_properties(raw).get(name, default)` without building the dict.

    A pair's name is what follows a \\x02 (or the start) up to the first \\x01, and names contain
    neither separator, so "\\x02name\\x01" marks exactly the pairs named `name`; the last one wins,
    as in the dict.
    """
    first, marker = _property_markers.get(name) or _markers_of(name)
    if first not in raw:  # the common answer for an absent name: one search
        return default
    found = raw.rfind(marker)
    if found >= 0:
        start = found + len(marker)
    elif raw.startswith(first):
        start = len(first)
    else:
        return default
    stop = raw.find(b"\x02", start)
    return raw[start:stop if stop >= 0 else len(raw)].decode()


# The head fields a pulled MessageExt keeps: TOTALSIZE, MAGICCODE, (BODYCRC), QUEUEID, (FLAG),
# QUEUEOFFSET, PHYSICALOFFSET, SYSFLAG, BORNTIMESTAMP, BORNHOST (ip u32, port), STORETIMESTAMP,
# STOREHOST (ip u32, port), RECONSUMETIMES, (PREPAREDTRANSACTIONOFFSET), BODYLENGTH.
_EXT_HEAD = struct.Struct(">iI4xi4xqqiqIiqIii8xi")
_HEAD_PHY, _HEAD_BORN_IP, _HEAD_BORN_PORT, _HEAD_STORE_IP, _HEAD_STORE_PORT = 4, 7, 8, 10, 11
_TOPIC_LEN_V2 = struct.Struct(">h")
_PROPS_LEN = struct.Struct(">h")
_topic_names: dict[bytes, str] = {}  # raw topic -> validated name, bounded like _valid_topics
_new_message_ext = object.__new__


def decode_message_exts(buf: bytes | bytearray | memoryview, broker_name: str = "") -> list[MessageExt]:
    """Every CommitLog record of `buf` (a pull response body: records back to back) as lazy MessageExts.

    The checks are `decode_record`'s without the body CRC (the client does not verify it, as
    RocketMQ's does not): MAGICCODE, TOTALSIZE, SYSFLAG (IPv4 only), BODYLENGTH, TOPICLENGTH,
    PROPERTIESLENGTH, a properties' last byte other than 0, a non-empty topic without 0 bytes,
    and UTF-8 topic and properties. Raises CorruptRecordError or UnicodeDecodeError on the first
    bad record. Equal, field by field, to `MessageExt.from_record(decode_record(...))`.
    """
    # One straight-line loop on purpose: it runs per message on the consumer's hot path.
    if type(buf) is not bytes:
        buf = bytes(buf)  # one copy per response; slices of bytes are then single copies
    messages: list[MessageExt] = []
    append, unpack, new, end, pos = messages.append, _EXT_HEAD.unpack_from, _new_message_ext, len(buf), 0
    while pos < end:
        if end - pos < BODY_POS:
            raise _corrupt(pos, "TOTALSIZE", f"at least {RECORD_FIXED_SIZE} readable bytes", end - pos)
        head = unpack(buf, pos)
        total, magic, queue_id, queue_offset, phy, sys_flag, born_ms, _, _, store_ms, _, _, reconsume, \
            body_len = head
        record_end = pos + total
        body_start = pos + BODY_POS
        topic_pos = body_start + body_len
        if magic == MESSAGE_MAGIC_V1:
            if total < RECORD_FIXED_SIZE or record_end > end:
                raise _corrupt(pos, "TOTALSIZE", f"{RECORD_FIXED_SIZE}..{end - pos}", total)
            if body_len < 0 or topic_pos + 3 > record_end:
                raise _corrupt(pos, "BODYLENGTH", f"0..{total - RECORD_FIXED_SIZE}", body_len)
            topic_len = buf[topic_pos]
            topic_pos += 1
        else:
            topic_len, topic_pos = _v2_topic_length(buf, pos, magic, total, end, body_len, topic_pos)
        if sys_flag & _HOST_V6_FLAGS:
            raise _corrupt(pos, "SYSFLAG", "IPv4 hosts (no V6 flag bits)", f"{sys_flag:#x}")
        topic_end = topic_pos + topic_len
        if topic_end + 2 > record_end:
            raise _corrupt(pos, "TOPICLENGTH", f"<= {record_end - topic_pos - 2}", topic_len)
        props_len = (buf[topic_end] << 8) | buf[topic_end + 1]  # an i16: above 0x7FFF it is negative
        if topic_end + 2 + props_len != record_end or props_len > MAX_PROPERTIES_BYTES:
            raise _corrupt(pos, "PROPERTIESLENGTH", record_end - topic_end - 2, _PROPS_LEN.unpack_from(
                buf, topic_end)[0])
        raw_topic = buf[topic_pos:topic_end]
        topic = _topic_names.get(raw_topic) or _topic_name(raw_topic, pos)
        message = new(MessageExt)
        message.topic = topic
        body = buf[body_start:body_start + body_len]
        message.body = body if not sys_flag & SysFlag.COMPRESSED else _inflate(
            body, sys_flag, topic, queue_id, queue_offset)
        if props_len:
            raw = buf[topic_end + 2:record_end]
            if raw[-1] == 0:  # torn-write check, as decode_record
                raise _corrupt(pos, "PROPERTIES", "a last byte other than 0", 0)
            if not raw.isascii():
                raw.decode()  # UnicodeDecodeError now, as the eager decode would raise it
            message._props_raw = raw
            message._properties = _UNSET
        else:
            message._properties = {}
        message._tags = message._keys = message._msg_id = message._offset_msg_id = _UNSET
        message._born_host = message._store_host = _UNSET
        message._head = head
        message.queue_id = queue_id
        message.queue_offset = queue_offset
        message.born_timestamp_ms = born_ms
        message.store_timestamp_ms = store_ms
        message.reconsume_times = reconsume
        message.sys_flag = sys_flag
        message.commitlog_offset = phy
        message.broker_name = broker_name
        append(message)
        pos = record_end
    return messages


_HOST_V6_FLAGS = SysFlag.BORNHOST_V6 | SysFlag.STOREHOST_V6


def _v2_topic_length(buf: bytes, pos: int, magic: int, total: int, end: int, body_len: int,
                     topic_pos: int) -> tuple[int, int]:
    """(TOPICLENGTH, position of the topic) of a V2 record (2-byte topic length); checks MAGICCODE,
    TOTALSIZE and BODYLENGTH like the V1 branch of decode_message_exts."""
    if magic != MESSAGE_MAGIC_V2:
        raise _corrupt(pos, "MAGICCODE", f"{MESSAGE_MAGIC_V1:#x} or {MESSAGE_MAGIC_V2:#x}", f"{magic:#x}")
    if total < RECORD_FIXED_SIZE + 1 or pos + total > end:
        raise _corrupt(pos, "TOTALSIZE", f"{RECORD_FIXED_SIZE}..{end - pos}", total)
    if body_len < 0 or topic_pos + 4 > pos + total:
        raise _corrupt(pos, "BODYLENGTH", f"0..{total - RECORD_FIXED_SIZE}", body_len)
    topic_len = _TOPIC_LEN_V2.unpack_from(buf, topic_pos)[0]
    if topic_len > 0x7FFF or topic_len < 0:
        raise _corrupt(pos, "TOPICLENGTH", "0..32767", topic_len)
    return topic_len, topic_pos + 2


def _topic_name(raw: bytes, pos: int) -> str:
    if not raw or b"\0" in raw:  # topic names are ASCII [%|a-zA-Z0-9_-]; 0 means torn
        raise _corrupt(pos, "TOPIC", "a non-empty name without 0 bytes", raw)
    name = raw.decode()
    if len(_topic_names) >= _VALID_TOPICS_MAX:
        _topic_names.clear()
    _topic_names[raw] = name
    return name


def _corrupt(pos: int, field: str, expected: object, actual: object) -> CorruptRecordError:
    return CorruptRecordError("", pos, field, expected, actual)


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

