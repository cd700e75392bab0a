"""Turning a SEND_MESSAGE / SEND_BATCH_MESSAGE request into an AppendRequest for the writer.

The front validates the request (topic, queue, sizes, permissions), then encodes every message as
a complete CommitLog record straight into its reservation in the request ring (`encode_into`): the
message body is copied once, from the ZeroMQ frame into shared memory, and once more by the
writer into the CommitLog. Validation failures are return values (`Rejection`), never exceptions.

Runs in the front process; not thread-safe.
"""

from __future__ import annotations

from dataclasses import dataclass

from rmqd.errors import ProtocolError
from rmqd.protocol import codec
from rmqd.protocol.commands import ResponseCode
from rmqd.store import append_request as ar
from rmqd.store import record as rec

MAX_PROPERTIES_BYTES = 32767


@dataclass(frozen=True)
class Rejection:
    code: ResponseCode
    remark: str


@dataclass
class PreparedSend:
    """A validated send. A single message (also a retry or a scheduled copy) is listed in
    `messages` as (flag, body, properties, sys_flag, reconsume_times); a batch keeps `messages`
    empty and its request body as `source`, with where each message lies in it as `spans`
    (codec.batch_spans: four ints a message) and one sys_flag / reconsume_times for all of them:
    no object per message on the front's busiest path."""

    topic: bytes
    queue_id: int
    messages: list[tuple[int, memoryview, bytes | memoryview, int, int]]
    born_timestamp_ms: int
    born_host: bytes
    records_bytes: int
    source: memoryview | None = None
    spans: list[int] | None = None
    sys_flag: int = 0
    reconsume_times: int = 0

    @property
    def count(self) -> int:
        """Messages (records) in this send."""
        return len(self.spans) // 4 if self.spans is not None else len(self.messages)

    def properties(self) -> list[bytes | memoryview]:
        """The raw properties of every message, in order (views into the request for a batch)."""
        if self.spans is None:
            return [message[2] for message in self.messages]
        source, spans = self.source, self.spans
        # each message's properties start 2 bytes (their length) past the end of its body
        starts = [start + length + 2 for start, length in zip(spans[1::4], spans[2::4])]
        return [source[at:at + tail - 2] for at, tail in zip(starts, spans[3::4])]

    def entry_size(self) -> int:
        return ar.append_request_size(len(self.topic), self.records_bytes)


def _int_field(fields: dict, name: str, default: int | None = None) -> int:
    value = fields.get(name, default)
    if value is None:
        raise ValueError(f"the request has no {name} field")
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    raise ValueError(f"field {name} must be an integer, got {value!r}")


def _born_host(fields: dict) -> bytes:
    raw = fields.get("bornHost")
    if isinstance(raw, str) and ":" in raw:
        host, _, port = raw.rpartition(":")
        try:
            return rec.encode_host(host, int(port))
        except ValueError:
            pass
    return rec.encode_host("127.0.0.1", 0)


def _encode_props(raw: object) -> bytes:
    if raw is None or raw == "":
        return b""
    if isinstance(raw, str):
        return raw.encode()
    if isinstance(raw, dict):
        return rec.encode_properties({str(k): str(v) for k, v in raw.items()})
    raise ValueError(f"field properties must be a string or an object, got {type(raw).__name__}")


def prepare_send(
    fields: dict, body: memoryview, *, batch: bool, write_queue_nums: int, max_message_size: int
) -> PreparedSend | Rejection:
    """Validate a send request and collect its messages. The topic must already be checked."""
    try:
        topic = str(fields["topic"]).encode()
        queue_id = _int_field(fields, "queueId")
        sys_flag = _int_field(fields, "sysFlag", 0)
        born_ms = _int_field(fields, "bornTimestamp", 0)
        reconsume = _int_field(fields, "reconsumeTimes", 0)
        props = _encode_props(fields.get("properties"))
    except (KeyError, ValueError) as exc:
        return Rejection(ResponseCode.MESSAGE_ILLEGAL, f"bad send request: {exc}")
    if queue_id < 0:
        return Rejection(ResponseCode.MESSAGE_ILLEGAL, f"queueId {queue_id} is negative")
    if write_queue_nums > 0 and queue_id >= write_queue_nums:
        queue_id %= write_queue_nums  # RocketMQ folds an out-of-range queue id the same way
    if len(body) > max_message_size:
        return Rejection(
            ResponseCode.MESSAGE_ILLEGAL,
            f"message body is {len(body)} bytes; maxMessageSize is {max_message_size}",
        )
    if batch:
        return _prepare_batch(topic, queue_id, sys_flag, born_ms, reconsume, fields, body)
    if not body:
        return Rejection(ResponseCode.MESSAGE_ILLEGAL, "message body is empty; send at least one byte")
    if len(props) > MAX_PROPERTIES_BYTES:
        return Rejection(
            ResponseCode.MESSAGE_ILLEGAL,
            f"message properties are {len(props)} bytes; at most {MAX_PROPERTIES_BYTES} allowed",
        )
    flag = _safe_int(fields.get("flag", 0))
    size = rec.record_size(len(body), len(topic), len(props))
    return PreparedSend(
        topic, queue_id, [(flag, body, props, sys_flag, reconsume)], born_ms, _born_host(fields), size
    )


def _safe_int(value: object) -> int:
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0


def _prepare_batch(
    topic: bytes, queue_id: int, sys_flag: int, born_ms: int, reconsume: int, fields: dict, body: memoryview
) -> PreparedSend | Rejection:
    try:
        spans = codec.batch_spans(body)
    except ProtocolError as exc:
        return Rejection(ResponseCode.MESSAGE_ILLEGAL, f"bad batch body: {exc}")
    if not spans:
        return Rejection(ResponseCode.MESSAGE_ILLEGAL, "the batch holds no messages")
    body_lens = spans[2::4]
    if 0 in body_lens:
        return Rejection(ResponseCode.MESSAGE_ILLEGAL,
                         f"message {body_lens.index(0)} of the batch has an empty body")
    count = len(body_lens)
    # a record holds its item's body and properties (the item less its 14 fixed bytes) and the
    # fixed part of a record of this topic
    total = len(body) - count * codec.BATCH_ITEM_FIXED_SIZE + count * rec.record_size(0, len(topic), 0)
    return PreparedSend(topic, queue_id, [], born_ms, _born_host(fields), total, source=body, spans=spans,
                        sys_flag=sys_flag, reconsume_times=reconsume)


def encode_into(buf: memoryview, request_id: int, send: PreparedSend, store_host: bytes) -> None:
    """Write the AppendRequest for `send` into `buf` (a ring reservation of send.entry_size())."""
    file_pos = ar.encode_append_request_head(
        buf, request_id, send.queue_id, send.count, send.records_bytes, send.topic
    )
    if send.spans is not None:
        rec.encode_record_spans(buf, file_pos, send.topic, send.queue_id, send.source, send.spans,
                                send.sys_flag, send.reconsume_times, send.born_timestamp_ms, send.born_host,
                                store_host)
    else:
        rec.encode_records(buf, file_pos, send.topic, send.queue_id, send.messages, send.born_timestamp_ms,
                           send.born_host, store_host)
