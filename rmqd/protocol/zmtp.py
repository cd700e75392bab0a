"""ZMTP 3.1 (RFC 37/ZMTP, NULL security): the bytes ZeroMQ sockets exchange over TCP. Pure: no I/O.

The one module owning these bytes. Two users speak them without libzmq: the front's ROUTER
(rmqd/protocol/router.py) and the SDK's synchronous DEALER connection (rmqd/client/_zmtp.py). Any
ZeroMQ socket (pyzmq, libzmq, JeroMQ) talks to both: rmqd clients may keep pyzmq, and tools may too.

Why not libzmq there: a libzmq socket hands every message to its I/O thread and back (a mailbox
write and a thread wake-up each way). On this 2-core VM each wake-up of a sleeping thread costs
tens of microseconds: one 1 KiB request through an echo server took 143 us p50 through a pyzmq
ROUTER and 92 us through rmqd's (the same ZMTP client, 0.5 ms between calls; back to back 125 and
96 us: `python loadtest/sdk_rtt.py --pause-us 500`, docs/BENCHMARKS.md, seventh pass).

Greeting, 64 bytes each way, sent by both peers at once:

    0     1            9     10     11     12                   32       33            64
    +-----+------------+-----+------+------+--------------------+--------+-------------+
    | FF  | padding 8  | 7F  | major| minor| mechanism "NULL"   | as-    | filler 31 0 |
    |     | (zero)     |     |  3   |  1   | zero padded to 20  | server |             |
    +-----+------------+-----+------+------+--------------------+--------+-------------+

Then every frame, commands and messages alike:

    +-------+----------------------------+---------+
    | flags | size: 1 byte, or 8 (u64 BE)| payload |
    +-------+----------------------------+---------+
    flags: 0x01 MORE (another frame of this message follows), 0x02 LONG (8-byte size),
           0x04 COMMAND

    READY command payload:  05 "READY" { name-len(1) name value-len(u32 BE) value }...
                            properties: Socket-Type (both sides), Identity (a DEALER may set
                            its routing id; empty or absent: the ROUTER makes one up)
    PING payload: 04 "PING" ttl(u16 BE, tenths of a second) context(0-16 bytes)
    PONG payload: 04 "PONG" context (the PING's)
    ERROR payload: 05 "ERROR" reason-len(1) reason   (the sender closes the connection next)

A message is one or more frames: every frame but the last has MORE set. rmqd's requests and
answers are one frame each.
"""
from __future__ import annotations

import struct

GREETING_SIZE = 64
_SIGNATURE_END = 9  # the 0x7F byte
_MECHANISM = slice(12, 32)
FLAG_MORE, FLAG_LONG, FLAG_COMMAND = 0x01, 0x02, 0x04
_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")
PING_HEAD_SIZE = 1 + 4 + 2  # name-len, "PING", ttl
PING_CONTEXT_MAX = 16


class ZmtpError(ConnectionError):
    """The peer broke ZMTP, refused the handshake, or closed the connection."""


def greeting(as_server: bool = False) -> bytes:
    """Our 64-byte greeting: ZMTP 3.1, NULL mechanism."""
    return b"\xff" + bytes(8) + b"\x7f" + b"\x03\x01" + b"NULL".ljust(20, b"\0") + bytes((int(as_server),)) \
        + bytes(31)


def check_greeting(peer: bytes | bytearray | memoryview) -> None:
    """Raise ZmtpError unless `peer` is a ZMTP 3.x greeting offering the NULL mechanism."""
    if len(peer) != GREETING_SIZE or peer[0] != 0xFF or not peer[_SIGNATURE_END] & 0x01:
        raise ZmtpError(f"the peer is not a ZeroMQ socket (greeting {bytes(peer[:12]).hex()})")
    if peer[10] < 3:
        raise ZmtpError(f"the peer speaks ZMTP {peer[10]}.{peer[11]}; 3.0 or later is needed")
    mechanism = bytes(peer[_MECHANISM]).rstrip(b"\0")
    if mechanism != b"NULL":
        wanted = mechanism.decode("ascii", "replace")
        raise ZmtpError(f"the peer wants the {wanted} mechanism; only NULL is spoken")


def frame_head(size: int, flags: int = 0) -> bytes:
    """flags + size of a frame of `size` payload bytes (the short form below 256)."""
    if size < 256:
        return bytes((flags, size))
    return bytes((flags | FLAG_LONG,)) + _U64.pack(size)


def command(name: bytes, data: bytes = b"") -> bytes:
    """A whole command frame: name-len, name, data."""
    payload = bytes((len(name),)) + name + data
    return frame_head(len(payload), FLAG_COMMAND) + payload


def ready_command(socket_type: bytes, identity: bytes | None = None) -> bytes:
    """The READY command frame announcing `socket_type` (and a DEALER's `identity`)."""
    props = b"\x0bSocket-Type" + _U32.pack(len(socket_type)) + socket_type
    if identity is not None:
        props += b"\x08Identity" + _U32.pack(len(identity)) + identity
    return command(b"READY", props)


def error_command(reason: str) -> bytes:
    """The ERROR command frame (reason cut to 255 bytes)."""
    raw = reason.encode("ascii", "replace")[:255]
    return command(b"ERROR", bytes((len(raw),)) + raw)


def command_name(payload: bytes | memoryview) -> bytes:
    """The name of a command frame's payload (b"" if it is empty)."""
    return bytes(payload[1:1 + payload[0]]) if len(payload) else b""


def pong_for(ping_payload: bytes | memoryview) -> bytes:
    """The PONG command frame answering a PING command's payload: its context echoed, at most
    PING_CONTEXT_MAX bytes of it (the spec's limit, and what libzmq echoes)."""
    return command(b"PONG", bytes(ping_payload[PING_HEAD_SIZE:PING_HEAD_SIZE + PING_CONTEXT_MAX]))


def ping_ttl_s(ping_payload: bytes | memoryview) -> float:
    """The TTL a PING announces, in seconds (0: none): the sender asks to be dropped when nothing
    comes from it for that long."""
    if len(ping_payload) < PING_HEAD_SIZE:
        return 0.0
    return (ping_payload[5] << 8 | ping_payload[6]) / 10


def ready_properties(payload: bytes | memoryview) -> dict[bytes, bytes]:
    """The properties of a READY command's payload; ZmtpError unless it is a well-formed READY."""
    if bytes(payload[:6]) != b"\x05READY":
        raise ZmtpError(f"expected the peer's READY, got {bytes(payload[:16])!r}")
    return parse_properties(bytes(payload[6:]))


def parse_properties(data: bytes) -> dict[bytes, bytes]:
    """The metadata of a READY command (after its name); raises ZmtpError if it is cut short."""
    props, pos = {}, 0
    while pos < len(data):
        name_len = data[pos]
        name = data[pos + 1:pos + 1 + name_len]
        pos += 1 + name_len
        if pos + 4 > len(data):
            raise ZmtpError("READY metadata is cut short")
        (value_len,) = _U32.unpack_from(data, pos)
        props[name] = data[pos + 4:pos + 4 + value_len]
        pos += 4 + value_len
        if pos > len(data):
            raise ZmtpError("READY metadata is cut short")
    return props


def next_frame(buf: bytes | bytearray | memoryview, pos: int,
               max_frame_bytes: int) -> tuple[int, int, int] | None:
    """(flags, payload start, payload end) of the frame at `pos` of `buf`, or None if it is not all
    there yet. ZmtpError when its size exceeds `max_frame_bytes` (known from its head alone)."""
    have = len(buf) - pos
    if have < 2:
        return None
    flags = buf[pos]
    if not flags & FLAG_LONG:
        size, start = buf[pos + 1], pos + 2
    elif have >= 9:
        (size,) = _U64.unpack_from(buf, pos + 1)
        start = pos + 9
    else:
        return None
    if size > max_frame_bytes:
        raise ZmtpError(f"the peer sent a {size}-byte frame; the limit is {max_frame_bytes}")
    end = start + size
    return (flags, start, end) if end <= len(buf) else None
