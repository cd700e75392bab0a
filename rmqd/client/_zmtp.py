"""A DEALER peer speaking ZMTP 3.1 over a plain TCP socket: the SDK's synchronous round trips.

Why: a pyzmq socket hands every frame to libzmq's I/O thread and back (a mailbox write and a thread
wake-up each way), and on 2 cores that thread often waits for a CPU. The synchronous path has one
request in flight per socket, so it needs none of that: the caller writes the frame to the kernel
and reads the answer itself. Measured against the broker, one 1 KiB send: p50 349 us through a
bare pyzmq DEALER, 315 us through this (loadtest/sdk_rtt.py, sixth pass, before the front spoke
ZMTP itself). Asynchronous traffic keeps pyzmq (_remoting).

The bytes (greeting, frames, READY/PING/ERROR) are rmqd/protocol/zmtp.py's. A request is one
single-frame message; the ROUTER hands it to the front as [identity, frame] and its answer comes
back as one single-frame message, exactly as with a pyzmq DEALER. No heartbeats of our own; the
peer's PINGs are answered. Not thread-safe: one caller at a time (the remoting client's pool
guarantees it).
"""
from __future__ import annotations

import socket
import time

from rmqd.protocol.zmtp import (
    FLAG_COMMAND,
    FLAG_MORE,
    GREETING_SIZE,
    ZmtpError,
    check_greeting,
    command_name,
    frame_head,
    greeting,
    next_frame,
    pong_for,
    ready_command,
    ready_properties,
)

__all__ = ["ZmtpConnection", "ZmtpError"]

RECV_CHUNK = 65536


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
            self.sock.sendall(ready_command(b"DEALER"))
            flags, payload = self._read_frame(deadline)
            if not flags & FLAG_COMMAND:
                raise ZmtpError(f"expected the peer's READY, got {payload[:16]!r}")
            peer_type = ready_properties(payload).get(b"Socket-Type", b"")
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
        name = command_name(payload)
        if name == b"PING":
            self.send_raw(pong_for(payload), deadline)
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
            found = next_frame(buf, 0, self.max_frame_bytes)
            if found is not None:
                flags, start, end = found
                payload = bytes(buf[start:end])
                del buf[:end]
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
