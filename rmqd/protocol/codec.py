"""Frame codec of the rmqd wire protocol: the only module that packs or parses frames.

Every request and every response is ONE ZeroMQ frame (a ROUTER adds the peer identity in front):

    0        2         3        4              8
    +--------+---------+--------+--------------+--------------------+------------------+
    | magic  | version | kind   | header_len   | header             | body             |
    | b"RQ"  | u8 = 1  | u8     | u32 big-end. | header_len bytes,  | raw bytes, the   |
    | 2 B    | 1 B     | 1 B    | 4 B          | UTF-8 JSON object  | rest of the frame|
    +--------+---------+--------+--------------+--------------------+------------------+
    fixed prefix: 8 bytes (FRAME_PREFIX); total = 8 + header_len + len(body)

    kind: 0 = request, 1 = response, 2 = oneway request (the peer sends no response)
    request header:   {"code": int, "opaque": int, "fields": {name: str | int | bool}}
    response header:  {"code": int, "opaque": int, "remark": str, "fields": {...}}

`code` is a RequestCode (requests) or ResponseCode (responses); `opaque` is chosen by the
requester and echoed by the responder so that concurrent requests on one socket can be matched.
Field names are RocketMQ's camelCase request/response header names in full words
(`producerGroup`, `queueId`, ...), never RocketMQ's abbreviated V2 keys.

Batch body (SEND_BATCH_MESSAGE; every message has the batch's topic), repeated per message:

    0              4          8            12           12+B           14+B
    +--------------+----------+------------+------------+--------------+--------------+
    | total_size   | flag     | body_len   | body       | props_len    | properties   |
    | i32          | i32      | i32 (= B)  | B bytes    | i16 (= P)    | P bytes      |
    +--------------+----------+------------+------------+--------------+--------------+
    big-endian; total_size = 14 + B + P (includes itself); properties = name\\x01value\\x02...

Decoding is defensive: malformed input raises `rmqd.errors.ProtocolError` with a message that
says what is wrong, and never any other exception type. Encoding trusts its caller (a bad argument
is a programming error and raises ValueError/TypeError).

Pure functions; thread-safe.
"""
from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from rmqd.errors import ProtocolError
from rmqd.protocol.commands import (
    FRAME_MAGIC,
    MAX_HEADER_BYTES,
    PROTOCOL_VERSION,
    FrameKind,
    ResponseCode,
)

FRAME_PREFIX = struct.Struct(">2sBBI")  # magic, version, kind, header_len
FRAME_PREFIX_SIZE = 8
VERSION_POS = 2

BATCH_ITEM_HEAD = struct.Struct(">iii")  # total_size, flag, body_len
BATCH_PROPERTIES_LEN = struct.Struct(">h")
BATCH_ITEM_FIXED_SIZE = 14  # 12 (head) + 2 (properties length)
MAX_PROPERTIES_BYTES = 32767

_EMPTY = memoryview(b"")
_FIELD_TYPES = (str, int, bool, float, type(None))


@dataclass(slots=True)
class Command:
    """One decoded frame. `body` is a zero-copy view into the received frame."""

    kind: FrameKind
    code: int
    opaque: int
    fields: dict[str, Any] = field(default_factory=dict)
    remark: str = ""
    body: memoryview = _EMPTY

    @property
    def is_response(self) -> bool:
        return self.kind is FrameKind.RESPONSE

    @property
    def is_oneway(self) -> bool:
        return self.kind is FrameKind.ONEWAY

    def field_int(self, name: str, default: int | None = None) -> int:
        """Integer field `name`; accepts an int or a decimal string (RocketMQ headers are strings).

        Raises ProtocolError if absent (and no default) or not an integer.
        """
        value = self.fields.get(name)
        if value is None:
            if default is None:
                raise ProtocolError(f"request code {self.code}: missing integer field {name!r}")
            return default
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value, 10)
            except ValueError:
                pass
        raise ProtocolError(f"code {self.code}: field {name!r} must be an integer, got {value!r}")

    def field_str(self, name: str, default: str | None = None) -> str:
        """String field `name`; raises ProtocolError if absent (and no default) or not a string."""
        value = self.fields.get(name)
        if value is None:
            if default is None:
                raise ProtocolError(f"code {self.code}: missing string field {name!r}")
            return default
        if not isinstance(value, str):
            raise ProtocolError(f"code {self.code}: field {name!r} must be a string, got {value!r}")
        return value

    def field_bool(self, name: str, default: bool = False) -> bool:
        """Boolean field `name` (true/false or "true"/"false"); `default` if absent."""
        value = self.fields.get(name)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ProtocolError(f"code {self.code}: field {name!r} must be a boolean, got {value!r}")


def encode_request(
    code: int, opaque: int, fields: dict[str, Any] | None = None, body: bytes | memoryview = b"",
    oneway: bool = False,
) -> bytes:
    """Frame bytes of a request (or of a oneway request when `oneway`)."""
    header = orjson.dumps({"code": int(code), "opaque": opaque, "fields": fields or {}})
    kind = FrameKind.ONEWAY if oneway else FrameKind.REQUEST
    return _frame(kind, header, body)


def encode_response(
    code: int, opaque: int, fields: dict[str, Any] | None = None, remark: str = "",
    body: bytes | memoryview | list[bytes | memoryview] = b"",
) -> bytes:
    """Frame bytes of a response to the request that carried `opaque`. A list `body` is the body in
    parts (a pull's records), joined straight into the frame: one copy, not two."""
    header = orjson.dumps({"code": int(code), "opaque": opaque, "remark": remark, "fields": fields or {}})
    return _frame(FrameKind.RESPONSE, header, body)


def _frame(kind: FrameKind, header: bytes, body: bytes | memoryview | list[bytes | memoryview]) -> bytes:
    prefix = FRAME_PREFIX.pack(FRAME_MAGIC, PROTOCOL_VERSION, kind, len(header))
    if isinstance(body, list):
        return b"".join((prefix, header, *body))
    return b"".join((prefix, header, body))


def decode(frame: Any) -> Command:
    """Parse one frame (bytes, bytearray, memoryview or zmq.Frame) into a Command.

    Raises ProtocolError on: too short, bad magic, unsupported version (says got/expected), unknown
    kind, header length beyond the frame or MAX_HEADER_BYTES, header not a JSON object, missing or
    mistyped code/opaque/remark/fields.
    """
    view = _as_view(frame)
    kind, header_len = _check_prefix(view)
    header = _parse_header(view[FRAME_PREFIX_SIZE:FRAME_PREFIX_SIZE + header_len])
    code = _header_int(header, "code")
    opaque = _header_int(header, "opaque")
    fields = header.get("fields", {})
    if not isinstance(fields, dict):
        raise ProtocolError(f"header 'fields' must be a JSON object, got {type(fields).__name__}")
    for name, value in fields.items():
        if not isinstance(value, _FIELD_TYPES):
            raise ProtocolError(f"field {name!r} must be a string, number or boolean, got {value!r:.60}")
    remark = header.get("remark", "")
    if not isinstance(remark, str):
        raise ProtocolError(f"header 'remark' must be a string, got {type(remark).__name__}")
    body = view[FRAME_PREFIX_SIZE + header_len:]
    return Command(FrameKind(kind), code, opaque, fields, remark, body)


def _as_view(frame: Any) -> memoryview:
    buffer = getattr(frame, "buffer", frame)  # zmq.Frame exposes its bytes as .buffer
    try:
        view = memoryview(buffer)
        return view if view.format == "B" and view.ndim == 1 else view.cast("B")
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"frame is not a bytes-like object: {type(frame).__name__}") from exc


def _check_prefix(view: memoryview) -> tuple[int, int]:
    if len(view) < FRAME_PREFIX_SIZE:
        raise ProtocolError(f"frame too short: {len(view)} bytes, the fixed prefix is {FRAME_PREFIX_SIZE}")
    magic, version, kind, header_len = FRAME_PREFIX.unpack_from(view, 0)
    if magic != FRAME_MAGIC:
        raise ProtocolError(f"bad frame magic {magic!r}, expected {FRAME_MAGIC!r}")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"unsupported protocol version {version}, expected {PROTOCOL_VERSION}")
    if kind not in FrameKind._value2member_map_:
        raise ProtocolError(f"unknown frame kind {kind}, expected 0 (request), 1 (response) or 2 (oneway)")
    if header_len > MAX_HEADER_BYTES:
        raise ProtocolError(f"header length {header_len} exceeds the limit of {MAX_HEADER_BYTES} bytes")
    if FRAME_PREFIX_SIZE + header_len > len(view):
        raise ProtocolError(
            f"frame truncated: header length {header_len} but only {len(view) - FRAME_PREFIX_SIZE} "
            "bytes follow the prefix"
        )
    return kind, header_len


def _parse_header(raw: memoryview) -> dict[str, Any]:
    try:
        header = orjson.loads(raw)
    except (orjson.JSONDecodeError, ValueError, TypeError) as exc:
        raise ProtocolError(f"header is not valid UTF-8 JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise ProtocolError(f"header must be a JSON object, got {type(header).__name__}")
    return header


def _header_int(header: dict[str, Any], name: str) -> int:
    value = header.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProtocolError(f"header {name!r} must be an integer, got {value!r:.60}")
    return value


def peek_opaque(frame: Any) -> int | None:
    """Best-effort opaque of a frame that `decode` rejected (ignores version and kind); None if lost."""
    try:
        view = _as_view(frame)
        if len(view) < FRAME_PREFIX_SIZE or bytes(view[:2]) != FRAME_MAGIC:
            return None
        header_len = FRAME_PREFIX.unpack_from(view, 0)[3]
        if header_len > MAX_HEADER_BYTES or FRAME_PREFIX_SIZE + header_len > len(view):
            return None
        return _header_int(_parse_header(view[FRAME_PREFIX_SIZE:FRAME_PREFIX_SIZE + header_len]), "opaque")
    except ProtocolError:
        return None


def malformed_reply(frame: Any, error: ProtocolError) -> bytes | None:
    """Response frame a server sends for a frame `decode` rejected, or None if no opaque is recoverable.

    The code is VERSION_NOT_SUPPORTED when the version byte differs, otherwise INVALID_PARAMETER;
    the remark is the decoder's message. Servers drop (and log) frames for which this returns None.
    """
    opaque = peek_opaque(frame)
    if opaque is None:
        return None
    view = _as_view(frame)
    code = ResponseCode.INVALID_PARAMETER
    if view[VERSION_POS] != PROTOCOL_VERSION:
        code = ResponseCode.VERSION_NOT_SUPPORTED
    return encode_response(code, opaque, remark=str(error))


def encode_json_body(obj: Any) -> bytes:
    """JSON body bytes (route data, heartbeats, topic config tables)."""
    return orjson.dumps(obj)


def decode_json_body(body: Any, what: str = "body") -> dict[str, Any]:
    """Parse a JSON-object body; raises ProtocolError naming `what` if it is not one."""
    try:
        value = orjson.loads(_as_view(body))
    except (orjson.JSONDecodeError, ValueError, TypeError) as exc:
        raise ProtocolError(f"{what} is not valid UTF-8 JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def encode_batch(items: Iterable[tuple[int, bytes | memoryview, bytes]]) -> bytes:
    """Batch body from (flag, body, properties_bytes) triples; see the diagram above."""
    parts: list[bytes | memoryview] = []
    pack_head, pack_props_len, fixed = BATCH_ITEM_HEAD.pack, BATCH_PROPERTIES_LEN.pack, BATCH_ITEM_FIXED_SIZE
    for flag, body, properties in items:
        body_len, props_len = len(body), len(properties)
        if props_len > MAX_PROPERTIES_BYTES:
            raise ValueError(f"properties are {props_len} bytes, the limit is {MAX_PROPERTIES_BYTES}")
        parts += (pack_head(fixed + body_len + props_len, flag, body_len), body, pack_props_len(props_len),
                  properties)
    return b"".join(parts)


def iter_batch(body: Any) -> Iterator[tuple[int, memoryview, memoryview]]:
    """Yield (flag, body, properties) views of each message of a batch body.

    The whole body is validated first (`batch_spans`): ProtocolError, naming the first inconsistent
    item, comes before any item is yielded.
    """
    view = _as_view(body)
    fields = iter(batch_spans(view))
    for flag, body_start, body_len, tail_len in zip(fields, fields, fields, fields):
        props_start = body_start + body_len + BATCH_PROPERTIES_LEN.size
        yield flag, view[body_start:body_start + body_len], view[props_start:body_start + body_len + tail_len]


def batch_spans(body: Any) -> list[int]:
    """Where the messages of a batch body are, every item validated first; raises ProtocolError
    naming the first inconsistent item. Four ints per message, in order, in one flat list:

        flag, body_start, body_len, tail_len

    The body is `body[body_start:body_start + body_len]`; the `tail_len` bytes after it are the
    properties with their 2-byte big-endian length in front, which is also how a CommitLog record
    stores them (store.record.encode_record_spans copies them as they are). The front's hot path: no
    object per message but four ints.
    """
    view = _as_view(body)
    end = len(view)
    unpack_head, unpack_props_len = BATCH_ITEM_HEAD.unpack_from, BATCH_PROPERTIES_LEN.unpack_from
    head_size, fixed = BATCH_ITEM_HEAD.size, BATCH_ITEM_FIXED_SIZE
    spans: list[int] = []
    add = spans.extend
    pos = 0
    while pos < end:
        if end - pos >= fixed:
            total_size, flag, body_len = unpack_head(view, pos)
            body_end = pos + head_size + body_len
            if (fixed <= total_size <= end - pos and 0 <= body_len <= total_size - fixed
                    and unpack_props_len(view, body_end)[0] == total_size - fixed - body_len):
                add((flag, pos + head_size, body_len, total_size - head_size - body_len))
                pos += total_size
                continue
        _check_batch_item(view, pos, len(spans) // 4)  # raises ProtocolError naming the bad field
        raise ProtocolError(f"batch item {len(spans) // 4} at byte {pos} is inconsistent")
    return spans


def decode_batch(body: Any) -> list[tuple[int, memoryview, memoryview]]:
    """All items of a batch body, validated before anything is returned. Raises ProtocolError."""
    items = list(iter_batch(body))
    if not items:
        raise ProtocolError("batch body holds no message")
    return items


def _check_batch_item(view: memoryview, pos: int, index: int) -> tuple[int, int, int]:
    remaining = len(view) - pos
    if remaining < BATCH_ITEM_FIXED_SIZE:
        raise ProtocolError(f"batch item {index} at byte {pos}: {remaining} bytes left, an item needs >= 14")
    total_size, flag, body_len = BATCH_ITEM_HEAD.unpack_from(view, pos)
    if total_size < BATCH_ITEM_FIXED_SIZE or total_size > remaining:
        raise ProtocolError(
            f"batch item {index} at byte {pos}: total_size {total_size} outside 14..{remaining}"
        )
    if body_len < 0 or BATCH_ITEM_FIXED_SIZE + body_len > total_size:
        raise ProtocolError(f"batch item {index} at byte {pos}: body_len {body_len} does not fit total_size "
                            f"{total_size}")
    body_end = pos + BATCH_ITEM_HEAD.size + body_len
    (properties_len,) = BATCH_PROPERTIES_LEN.unpack_from(view, body_end)
    if properties_len < 0 or BATCH_ITEM_FIXED_SIZE + body_len + properties_len != total_size:
        raise ProtocolError(
            f"batch item {index} at byte {pos}: properties_len {properties_len} inconsistent with "
            f"total_size {total_size} and body_len {body_len}"
        )
    return pos + total_size, flag, body_end
