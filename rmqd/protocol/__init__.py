"""rmqd wire protocol: command codes (`commands`) and the frame / batch codec (`codec`).

Imported by the SDK (rmqd.client), the broker front and the namesrv. Pure; thread-safe.
"""
from __future__ import annotations

from rmqd.protocol.codec import (
    Command,
    batch_spans,
    decode,
    decode_batch,
    decode_json_body,
    encode_batch,
    encode_json_body,
    encode_request,
    encode_response,
    iter_batch,
    malformed_reply,
    peek_opaque,
)
from rmqd.protocol.commands import (
    MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    FrameKind,
    Perm,
    PullSysFlag,
    RequestCode,
    ResponseCode,
    code_name,
)

__all__ = [
    "MAX_FRAME_BYTES",
    "PROTOCOL_VERSION",
    "Command",
    "FrameKind",
    "Perm",
    "PullSysFlag",
    "RequestCode",
    "ResponseCode",
    "batch_spans",
    "code_name",
    "decode",
    "decode_batch",
    "decode_json_body",
    "encode_batch",
    "encode_json_body",
    "encode_request",
    "encode_response",
    "iter_batch",
    "malformed_reply",
    "peek_opaque",
]
