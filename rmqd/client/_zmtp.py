"""A DEALER peer speaking ZMTP 3.1 over a plain TCP socket: the SDK's synchronous round trips.

Why: a pyzmq socket hands every frame to libzmq's I/O thread and back (a mailbox write and a thread
wake-up each way, in the client and again in the broker), and on 2 cores that thread often waits
for a CPU. The synchronous path has one request in flight per socket, so it needs none of that: the
caller writes the frame to the kernel and reads the answer itself. Measured against the broker, one
1 KiB send: p50 349 us through a bare pyzmq DEALER, 315 us through this (loadtest/sdk_rtt.py; the
two are equal against an echo server, where nothing else competes for the 2 cores).
The broker's front is an ordinary ZeroMQ ROUTER; asynchronous traffic keeps pyzmq (_remoting).

Only what a DEALER talking to rmqd needs (ZMTP 3.1, RFC 37/ZMTP, NULL security, no heartbeats of
its own), one module owning these bytes:

Greeting, 64 bytes each way:

    0     1            9     10     11     12                   32       33            64
    +-----+------------+-----+------+------+--------------------+--------+-------------+
    | FF  | padding 8  | 7F  | major| minor| mechanism "NULL"   | server | filler 31 0 |
    |     | (zero)     |     |  3   |  1   | zero padded to 20  |   0    |             |
    +-----+------------+-----+------+------+--------------------+--------+-------------+

Then every frame, commands and messages alike:

    +-------+----------------------------+---------+
    | flags | size: 1 byte, or 8 (u64 BE)| payload |
    +-------+----------------------------+---------+
    flags: 0x01 MORE (another frame of this message follows), 0x02 LONG (8-byte size),
           0x04 COMMAND

    READY command payload:  05 "READY" { name-len(1) name value-len(u32 BE) value }...
                            (we send Socket-Type = DEALER; the peer answers with its own)
    PING payload: 04 "PING" ttl(u16) context  ->  we answer PONG: 04 "PONG" context
    ERROR payload: 05 "ERROR" reason-len(1) reason  ->  the peer refused us: ZmtpError

A request is one single-frame message; the ROUTER hands it to the front as [identity, frame] and
its answer comes back as one single-frame message, exactly as with a pyzmq DEALER. Not thread-safe:
one caller at a time (the remoting client's pool guarantees it).
"""
from __future__ import annotations

import socket
import struct
import time

GREETING_SIZE = 64
_SIGNATURE_END = 9  # the 0x7F byte
_MECHANISM = slice(12, 32)
FLAG_MORE, FLAG_LONG, FLAG_COMMAND = 0x01, 0x02, 0x04
_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")
RECV_CHUNK = 65536


class ZmtpError(ConnectionError):
    """The peer broke ZMTP, refused the handshake, or closed the connection."""


def greeting() -> bytes:
    """Our 64-byte greeting: ZMTP 3.1, NULL mechanism, client side."""
    return b"\xff" + bytes(8) + b"\x7f" + b"\x03\x01" + b"NULL".ljust(20, b"\0") + b"\0" + bytes(31)


def check_greeting(peer: bytes) -> None:
    """Raise ZmtpError unless `peer` is a ZMTP 3.x greeting offering the NULL mechanism."""
    if len(peer) != GREETING_SIZE or peer[0] != 0xFF or not peer[_SIGNATURE_END] & 0x01:
        raise ZmtpError(f"the peer is not a ZeroMQ socket (greeting {peer[:12].hex()})")
    if peer[10] < 3:
        raise ZmtpError(f"the peer speaks ZMTP {peer[10]}.{peer[11]}; 3.0 or later is needed")
    mechanism = peer[_MECHANISM].rstrip(b"\0")
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


def ready_command(socket_type: bytes = b"DEALER") -> bytes:
    prop = b"\x0bSocket-Type" + _U32.pack(len(socket_type)) + socket_type
    return command(b"READY", prop)


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


class ZmtpConnection:
    """One connection to a ROUTER, as a DEALER. Methods raise TimeoutError when the deadline
    passes, ZmtpError (a ConnectionError) when the peer breaks the protocol or goes away, OSError
    for the rest; after any of them the connection is unusable: close it."""

    def __init__(self, host: str, port: int, timeout_s: float, max_frame_bytes: int) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()
        deadline = time.monotonic() + timeout_s
        self.sock = socket.create_connection((host, port), timeout=timeout_s)
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock.sendall(greeting())
            check_greeting(self._read_exact(GREETING_SIZE, deadline))
            self.sock.sendall(ready_command())
            flags, payload = self._read_frame(deadline)
            if not flags & FLAG_COMMAND or payload[:6] != b"\x05READY":
                raise ZmtpError(f"expected the peer's READY, got {payload[:16]!r}")
            peer_type = parse_properties(payload[6:]).get(b"Socket-Type", b"")
            if peer_type != b"ROUTER":
                raise ZmtpError(f"the peer is a {peer_type.decode('ascii', 'replace') or 'nameless'} socket, "
                                "not a ROUTER")
        except BaseException:
            self.sock.close()
            raise

    def send(self, frame: bytes | memoryview, deadline: float) -> None:
        """Send `frame` as a one-frame message (one syscall for head and payload)."""
        self.sock.settimeout(max(0.0, deadline - time.monotonic()))
        parts = [frame_head(len(frame)), frame]
        while parts:
            sent = self.sock.sendmsg(parts)
            while parts and sent >= len(parts[0]):
                sent -= len(parts[0])
                parts.pop(0)
            if parts and sent:
                parts[0] = memoryview(parts[0])[sent:]

    def recv(self, deadline: float) -> bytes:
        """The next message (one frame), answering the peer's PINGs on the way."""
        while True:
            flags, payload = self._read_frame(deadline)
            if flags & FLAG_COMMAND:
                self._on_command(payload, deadline)
                continue
            if flags & FLAG_MORE:  # rmqd answers in one frame: a multi-frame message is not ours
                raise ZmtpError("the peer sent a multi-frame message; rmqd answers are one frame")
            return payload

    def alive(self) -> bool:
        """False when the peer has closed the connection (or reset it) since we last used it: a
        pooled connection to a broker that restarted. One non-blocking peek, nothing consumed."""
        if self._buf:
            return True
        try:
            self.sock.settimeout(0.0)
            return bool(self.sock.recv(1, socket.MSG_PEEK))
        except BlockingIOError:
            return True  # nothing to read: the usual case
        except OSError:
            return False

    def close(self) -> None:
        self.sock.close()

    def interrupt(self) -> None:
        """Make a recv() blocked in another thread return (with ZmtpError): shutdown, not close."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # ------------------------------------------------------------------------------ reading

    def _on_command(self, payload: bytes, deadline: float) -> None:
        name = payload[1:1 + payload[0]] if payload else b""
        if name == b"PING":
            context = payload[1 + 4 + 2:]
            self.send_raw(command(b"PONG", context), deadline)
        elif name == b"ERROR":
            reason = payload[7:7 + payload[6]] if len(payload) > 6 else b""
            raise ZmtpError(f"the peer closed the connection: {reason.decode('ascii', 'replace')}")
        # PONG, SUBSCRIBE, ... and unknown commands are ignored, as ZMTP allows

    def send_raw(self, data: bytes, deadline: float) -> None:
        self.sock.settimeout(max(0.0, deadline - time.monotonic()))
        self.sock.sendall(data)

    def _read_frame(self, deadline: float) -> tuple[int, bytes]:
        """(flags, payload) of the next frame, parsed from what is buffered, reading only when needed."""
        buf = self._buf
        while True:
            have = len(buf)
            if have >= 2:
                flags = buf[0]
                if not flags & FLAG_LONG:
                    size, start = buf[1], 2
                elif have >= 9:
                    (size,) = _U64.unpack_from(buf, 1)
                    start = 9
                else:
                    size = start = -1
                if size > self.max_frame_bytes:
                    raise ZmtpError(f"the peer sent a {size}-byte frame; the limit is {self.max_frame_bytes}")
                if size >= 0 and have >= start + size:
                    payload = bytes(buf[start:start + size])
                    del buf[:start + size]
                    return flags, payload
            self._fill(deadline)

    def _read_exact(self, size: int, deadline: float) -> bytes:
        buf = self._buf
        while len(buf) < size:
            self._fill(deadline)
        data = bytes(buf[:size])
        del buf[:size]
        return data

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("deadline passed")
        self.sock.settimeout(remaining)
        chunk = self.sock.recv(RECV_CHUNK)
        if not chunk:
            raise ZmtpError("the peer closed the connection")
        self._buf += chunk
