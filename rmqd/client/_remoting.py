"""RemotingClient: request/response over ZeroMQ DEALER sockets for the SDK (RocketMQ NettyRemotingClient).

Threading model: ONE background I/O thread owns the sockets of asynchronous traffic, one DEALER per
peer address ("host:port" -> tcp://host:port). Any thread may call `invoke`, `invoke_async` and
`invoke_oneway`. `invoke_async` and `invoke_oneway` encode the frame in the caller's thread, put it
on a thread-safe queue and wake the I/O thread through an eventfd registered in its `zmq.Poller`.
Responses are matched to requests by `opaque` (unique per client, increasing) and complete a
`concurrent.futures.Future`.

Synchronous `invoke` takes a shorter road when the client has no `on_request` callback (the
producer and admin clients): the calling thread borrows a connection of its own from a per-address
pool, sends and receives on it directly, and gives it back. That saves two thread hand-offs per
round trip (queue + eventfd wake-up of the I/O thread, then a future wake-up of the caller). For
a TCP address the connection is a plain socket speaking ZMTP as a DEALER (`_zmtp`): no libzmq I/O
thread between the caller and the kernel either, which took 40-60 us off a send's p50 here. The
pool holds one connection per concurrent synchronous caller (so N sending threads open N
connections to a broker); a connection is used by one thread at a time and handed over under the
client's lock. A connection that cannot be made or breaks mid-request raises RemotingConnectError
at once (a producer retries it like a timeout); one that timed out or broke is closed, never pooled.
Oneway sends (and addresses that are not tcp) use pooled pyzmq DEALERs the same way. Clients with
an `on_request` callback (consumers: brokers push NOTIFY_CONSUMER_IDS_CHANGED on the connection a
heartbeat came from) keep every request on the I/O thread so no pushed request lands unread on a
pooled socket.

Futures are completed BY THE I/O THREAD, so their done-callbacks run there: callbacks must be quick
and must never call a blocking `invoke` (that is refused with ClientError rather than deadlocking).
Hand real work to your own executor.

Timeouts are enforced by the I/O thread (or the synchronous caller): an expired request fails with
RemotingTimeoutError. The socket it was sent on is then retired, Lazy-Pirate style (zguide
lpclient): new requests to that address go through a fresh DEALER (a fresh connection, so messages
queued for a dead or restarted peer are dropped), while the retired socket lives on only until the
requests still in flight on it finish or expire (a synchronous caller's socket is closed at once).
Late replies for expired opaques are discarded, so a stale reply never matches.

`close()` fails pending asynchronous requests with ClientError and terminates the zmq context,
which interrupts synchronous callers still waiting (they fail with ClientError too).

A request that finds its socket full (SNDHWM reached: the peer reads slower than callers send)
waits in that peer's backlog until the socket drains; its timeout keeps running meanwhile.

Unsolicited requests from a peer (a broker pushing NOTIFY_CONSUMER_IDS_CHANGED, say) are handed to
the optional `on_request(addr, command)` callback, also in the I/O thread.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import math
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import dataclass, field
from typing import Any

import zmq

from rmqd.client._zmtp import ZmtpConnection
from rmqd.errors import ClientError, MQClientError, ProtocolError, RemotingConnectError, RemotingTimeoutError
from rmqd.protocol import MAX_FRAME_BYTES, Command, code_name, decode, encode_request

log = logging.getLogger(__name__)

DEFAULT_HWM = 1000  # PERFORMANCE_NOTES: an HWM of 10 costs 25-40 %; keep the default 1000 or more
MAX_POLL_MS = 1000  # upper bound on one poll, so a lost wake-up costs at most this much
RECV_BURST = 1000  # messages read from one socket per wake-up before serving the others
ZERO_COPY_BYTES = 64 * 1024  # PERFORMANCE_NOTES: copy=False pays off only from 64 KiB
CALLER_GRACE_S = 5.0  # a sync caller waits this long past its timeout if the I/O thread is stuck


def endpoint_of(addr: str) -> str:
    """ZeroMQ endpoint of a RocketMQ-style "host:port" address (full endpoints pass through)."""
    return addr if "://" in addr else f"tcp://{addr}"


@dataclass(slots=True)
class _Conn:
    addr: str
    socket: zmq.Socket
    in_flight: int = 0
    retired: bool = False
    backlog: deque[_Send] = field(default_factory=deque)  # frames waiting for room below the HWM


@dataclass(slots=True)
class _Pending:
    future: Future
    conn: _Conn
    code: int
    timeout_ms: int


@dataclass(slots=True)
class _Send:
    addr: str
    frame: bytes
    opaque: int
    code: int
    future: Future | None  # None for oneway
    deadline: float
    timeout_ms: int


@dataclass(slots=True)
class _State:
    """Everything only the I/O thread touches."""

    poller: zmq.Poller
    conns: dict[str, _Conn] = field(default_factory=dict)
    by_socket: dict[zmq.Socket, _Conn] = field(default_factory=dict)
    pending: dict[int, _Pending] = field(default_factory=dict)
    deadlines: list[tuple[float, int]] = field(default_factory=list)


_CLOSE = object()


class RemotingClient:
    """Thread-safe request/response client. See the module docstring for the threading model."""

    def __init__(
        self, *, name: str = "rmqd-remoting", hwm: int = DEFAULT_HWM,
        on_request: Callable[[str, Command], None] | None = None, direct_sync: bool | None = None,
    ) -> None:
        """`direct_sync`: synchronous invokes on the caller's own pooled connection (see the module
        docstring); by default on exactly when there is no `on_request` callback."""
        self._hwm = hwm
        self._on_request = on_request
        self._direct_sync = on_request is None if direct_sync is None else direct_sync
        self._idle_sync: dict[str, list[zmq.Socket]] = {}  # guarded by _lock
        self._idle_raw: dict[str, list[ZmtpConnection]] = {}  # guarded by _lock
        self._busy_raw: set[ZmtpConnection] = set()  # borrowed now; guarded by _lock
        self._context = zmq.Context()
        self._submissions: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._lock = threading.Lock()
        self._closed = False
        self._wake_signalled = False
        self._opaques = itertools.count(1)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------- caller side (any thread)

    def invoke(
        self, addr: str, code: int, fields: dict[str, Any] | None = None, body: bytes | memoryview = b"",
        timeout_ms: int = 3000,
    ) -> Command:
        """Send a request and wait for its response.

        Raises RemotingTimeoutError when no response arrives within `timeout_ms`, MQClientError for
        an unusable address, ClientError when the client is closed or called from its own I/O thread.
        """
        if threading.current_thread() is self._thread:
            raise ClientError("invoke() from the remoting I/O thread (a future callback) would deadlock")
        if self._direct_sync:
            return self._invoke_direct(addr, code, fields, body, timeout_ms)
        future = self.invoke_async(addr, code, fields, body, timeout_ms)
        try:
            return future.result(timeout=timeout_ms / 1000 + CALLER_GRACE_S)
        except FutureTimeoutError:
            raise RemotingTimeoutError(
                f"remoting I/O thread did not answer {addr} within {timeout_ms} ms") from None

    def invoke_async(
        self, addr: str, code: int, fields: dict[str, Any] | None = None, body: bytes | memoryview = b"",
        timeout_ms: int = 3000,
    ) -> Future[Command]:
        """Send a request; the returned future resolves to the response Command or fails with
        RemotingTimeoutError / MQClientError / ClientError (completed in the I/O thread)."""
        future: Future[Command] = Future()
        future.set_running_or_notify_cancel()  # not cancellable: the request is already on its way
        opaque = next(self._opaques)
        frame = encode_request(code, opaque, fields, body)
        deadline = time.monotonic() + timeout_ms / 1000
        self._submit(_Send(addr, frame, opaque, int(code), future, deadline, timeout_ms))
        return future

    def invoke_oneway(
        self, addr: str, code: int, fields: dict[str, Any] | None = None, body: bytes | memoryview = b"",
    ) -> None:
        """Send a request that gets no response; returns once it is queued for sending.

        With the direct synchronous path the caller queues the frame on a pooled socket itself;
        when that socket is at its high-water mark the frame goes to the I/O thread's backlog."""
        opaque = next(self._opaques)
        frame = encode_request(code, opaque, fields, body, oneway=True)
        if self._direct_sync:
            sock = self._borrow(addr)
            sent = False
            try:
                sent = _try_send(sock, frame)
            except zmq.ZMQError as exc:
                raise ClientError(f"cannot send to {addr}: {exc}") from exc
            finally:
                self._give_back(addr, sock, healthy=True)
            if sent:
                return
        self._submit(_Send(addr, frame, opaque, int(code), None, 0.0, 0))

    def close(self, timeout_s: float = 5.0) -> None:
        """Fail every pending request with ClientError, close all sockets, join the I/O thread.

        Synchronous callers still waiting are interrupted (the context's termination makes their
        poll fail with ETERM) and raise ClientError."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._submissions.put(_CLOSE)
            idle = [sock for socks in self._idle_sync.values() for sock in socks]
            self._idle_sync.clear()
            idle_raw = [conn for conns in self._idle_raw.values() for conn in conns]
            self._idle_raw.clear()
            busy_raw = list(self._busy_raw)
        os.eventfd_write(self._wake_fd, 1)
        for sock in idle:
            sock.close(0)
        for conn in idle_raw:
            conn.close()
        for conn in busy_raw:  # their callers' recv returns: they raise ClientError and close them
            conn.interrupt()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("remoting I/O thread did not stop within %.1f s; leaving its context open", timeout_s)
            return
        os.close(self._wake_fd)
        self._context.term()

    @property
    def closed(self) -> bool:
        return self._closed

    # ----------------------------------------------------------------- direct synchronous path

    def _invoke_direct(self, addr: str, code: int, fields: dict[str, Any] | None,
                       body: bytes | memoryview, timeout_ms: int) -> Command:
        """invoke() on a pooled connection owned by the calling thread for the round trip."""
        opaque = next(self._opaques)
        frame = encode_request(code, opaque, fields, body)
        deadline = time.monotonic() + timeout_ms / 1000
        host_port = _tcp_host_port(addr)
        if host_port is not None:
            return self._invoke_raw(addr, host_port, frame, opaque, int(code), deadline, timeout_ms)
        sock = self._borrow(addr)
        healthy = False
        try:
            response = self._round_trip(sock, addr, frame, opaque, int(code), deadline, timeout_ms)
            healthy = True
            return response
        except zmq.ZMQError as exc:
            if exc.errno == zmq.ETERM or self._closed:
                raise ClientError("RemotingClient closed before the response arrived") from None
            raise ClientError(f"socket error talking to {addr}: {exc}") from exc
        finally:
            self._give_back(addr, sock, healthy)

    def _invoke_raw(self, addr: str, host_port: tuple[str, int], frame: bytes, opaque: int, code: int,
                    deadline: float, timeout_ms: int) -> Command:
        conn = self._borrow_raw(addr, host_port, deadline)
        healthy = False
        try:
            conn.send(frame, deadline)
            command = _await_response(lambda: conn.recv(deadline), addr, opaque)
            healthy = True
            return command
        except TimeoutError:
            if self._closed:
                raise ClientError("RemotingClient closed before the response arrived") from None
            raise _timeout_error(addr, code, opaque, timeout_ms) from None
        except OSError as exc:  # ZmtpError (the peer went away) included
            if self._closed:
                raise ClientError("RemotingClient closed before the response arrived") from None
            raise RemotingConnectError(f"connection to {addr} broke before the response to "
                                       f"{code_name(code, response=False)} (opaque {opaque}): {exc}") from exc
        finally:
            with self._lock:
                self._busy_raw.discard(conn)
                if healthy and not self._closed:
                    self._idle_raw.setdefault(addr, []).append(conn)
                    conn = None
            if conn is not None:
                conn.close()

    def _borrow_raw(self, addr: str, host_port: tuple[str, int], deadline: float) -> ZmtpConnection:
        with self._lock:
            if self._closed:
                raise ClientError("RemotingClient is closed")
            idle = self._idle_raw.get(addr)
            conn = idle.pop() if idle else None
            if conn is not None:
                self._busy_raw.add(conn)
        if conn is not None:
            if conn.alive():
                return conn
            with self._lock:  # the peer went away while it idled (a restart): connect afresh
                self._busy_raw.discard(conn)
            conn.close()
        try:
            conn = ZmtpConnection(*host_port, max(0.001, deadline - time.monotonic()), MAX_FRAME_BYTES)
        except TimeoutError:
            raise RemotingConnectError(f"cannot connect to {addr}: no answer in time") from None
        except OSError as exc:
            raise RemotingConnectError(f"cannot connect to {addr}: {exc}") from None
        with self._lock:
            if self._closed:
                conn.close()
                raise ClientError("RemotingClient is closed")
            self._busy_raw.add(conn)
        return conn

    def _borrow(self, addr: str) -> zmq.Socket:
        with self._lock:
            if self._closed:
                raise ClientError("RemotingClient is closed")
            idle = self._idle_sync.get(addr)
            if idle:
                return idle.pop()
            try:  # under the lock, so close() cannot terminate the context mid-way
                return self._new_dealer(addr)
            except zmq.ZMQError as exc:
                raise MQClientError(f"cannot connect to {addr!r}: {exc}") from None

    def _give_back(self, addr: str, sock: zmq.Socket, healthy: bool) -> None:
        """Pool a socket that ended its round trip cleanly; close any other (Lazy Pirate)."""
        with self._lock:
            if healthy and not self._closed:
                self._idle_sync.setdefault(addr, []).append(sock)
                return
        sock.close(0)

    def _round_trip(self, sock: zmq.Socket, addr: str, frame: bytes, opaque: int, code: int,
                    deadline: float, timeout_ms: int) -> Command:
        if not _try_send(sock, frame):  # the peer reads slower than we send: wait for room
            if not sock.poll(_ms_until(deadline), zmq.POLLOUT) or not _try_send(sock, frame):
                raise _timeout_error(addr, code, opaque, timeout_ms)

        def receive() -> zmq.Frame:
            # One blocking recv with RCVTIMEO: cheaper than poll() then recv(), which builds a
            # Poller per call (measured: ~5-15 µs less per round trip).
            wait_ms = _ms_until(deadline)
            if wait_ms <= 0:
                raise _timeout_error(addr, code, opaque, timeout_ms)
            sock.setsockopt(zmq.RCVTIMEO, wait_ms)
            try:
                return sock.recv(copy=False)
            except zmq.Again:
                raise _timeout_error(addr, code, opaque, timeout_ms) from None

        return _await_response(receive, addr, opaque)

    def _new_dealer(self, addr: str) -> zmq.Socket:
        """A DEALER connected to `addr` with the client's options; raises zmq.ZMQError."""
        sock = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, self._hwm)
        sock.setsockopt(zmq.RCVHWM, self._hwm)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
        try:
            sock.connect(endpoint_of(addr))
        except zmq.ZMQError:
            sock.close(0)
            raise
        return sock

    # ----------------------------------------------------------------- I/O thread hand-off

    def _submit(self, item: _Send) -> None:
        with self._lock:
            if self._closed:
                raise ClientError("RemotingClient is closed")
            self._submissions.put(item)
            must_wake = not self._wake_signalled
            self._wake_signalled = True
        if must_wake:
            os.eventfd_write(self._wake_fd, 1)

    # ----------------------------------------------------------------- I/O thread

    def _run(self) -> None:
        state = _State(zmq.Poller())
        state.poller.register(self._wake_fd, zmq.POLLIN)
        try:
            running = True
            while running:
                events = dict(state.poller.poll(self._poll_timeout_ms(state)))
                if self._wake_fd in events:
                    self._drain_eventfd()
                running = self._drain_submissions(state)
                for sock, mask in events.items():
                    conn = state.by_socket.get(sock) if sock is not self._wake_fd else None
                    if conn is not None and mask & zmq.POLLOUT:
                        self._flush_backlog(state, conn)
                    if conn is not None and mask & zmq.POLLIN:
                        self._read(state, conn)
                self._expire(state, time.monotonic())
        finally:
            self._shutdown(state)

    def _poll_timeout_ms(self, state: _State) -> int:
        if not state.deadlines:
            return MAX_POLL_MS
        wait_ms = (state.deadlines[0][0] - time.monotonic()) * 1000
        return max(0, min(MAX_POLL_MS, int(wait_ms) + 1))

    def _drain_eventfd(self) -> None:
        try:
            os.eventfd_read(self._wake_fd)
        except BlockingIOError:
            pass

    def _drain_submissions(self, state: _State) -> bool:
        """Send everything queued; False once close() was requested."""
        with self._lock:
            self._wake_signalled = False
        while True:
            try:
                item = self._submissions.get_nowait()
            except queue.Empty:
                return True
            if item is _CLOSE:
                return False
            self._send(state, item)

    def _send(self, state: _State, item: _Send) -> None:
        try:
            conn = state.conns.get(item.addr) or self._open(state, item.addr)
        except zmq.ZMQError as exc:
            _fail(item.future, MQClientError(f"cannot connect to {item.addr!r}: {exc}"))
            return
        if item.future is not None:
            conn.in_flight += 1
            state.pending[item.opaque] = _Pending(item.future, conn, item.code, item.timeout_ms)
            heapq.heappush(state.deadlines, (item.deadline, item.opaque))
        if conn.backlog or not _try_send(conn.socket, item.frame):
            if not conn.backlog:  # the socket reached its HWM: wait until it can take more
                state.poller.modify(conn.socket, zmq.POLLIN | zmq.POLLOUT)
            conn.backlog.append(item)

    def _flush_backlog(self, state: _State, conn: _Conn) -> None:
        """Send queued frames while the socket takes them; requests that already expired are skipped."""
        while conn.backlog:
            item = conn.backlog[0]
            if item.future is not None and item.opaque not in state.pending:
                conn.backlog.popleft()
                continue
            if not _try_send(conn.socket, item.frame):
                return
            conn.backlog.popleft()
        if conn.socket in state.by_socket:
            state.poller.modify(conn.socket, zmq.POLLIN)

    def _open(self, state: _State, addr: str) -> _Conn:
        sock = self._new_dealer(addr)
        conn = _Conn(addr, sock)
        state.conns[addr] = conn
        state.by_socket[sock] = conn
        state.poller.register(sock, zmq.POLLIN)
        return conn

    def _read(self, state: _State, conn: _Conn) -> None:
        for _ in range(RECV_BURST):
            try:
                frame = conn.socket.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                command = decode(frame)
            except ProtocolError as exc:
                log.warning("dropping malformed frame from %s: %s", conn.addr, exc)
                continue
            if command.is_response:
                self._complete(state, command)
                if conn.socket.closed:  # the last reply a retired socket waited for: it is gone now
                    return
            elif self._on_request is not None:
                self._deliver_request(conn.addr, command)

    def _complete(self, state: _State, command: Command) -> None:
        pending = state.pending.pop(command.opaque, None)
        if pending is None:
            log.debug("discarding late response opaque %d (already timed out)", command.opaque)
            return
        self._release(state, pending.conn)
        pending.future.set_result(command)

    def _deliver_request(self, addr: str, command: Command) -> None:
        try:
            self._on_request(addr, command)
        except Exception:
            name = code_name(command.code, response=False)
            log.exception("on_request callback failed for %s from %s", name, addr)

    def _expire(self, state: _State, now: float) -> None:
        while state.deadlines and state.deadlines[0][0] <= now:
            _, opaque = heapq.heappop(state.deadlines)
            pending = state.pending.pop(opaque, None)
            if pending is None:
                continue
            conn = pending.conn
            self._retire(state, conn)
            self._release(state, conn)
            pending.future.set_exception(_timeout_error(conn.addr, pending.code, opaque, pending.timeout_ms))
        if len(state.deadlines) > 2 * len(state.pending) + 1024:  # drop entries of answered requests
            state.deadlines = [(d, o) for d, o in state.deadlines if o in state.pending]
            heapq.heapify(state.deadlines)

    def _retire(self, state: _State, conn: _Conn) -> None:
        """Lazy Pirate: the next request to this address opens a fresh socket."""
        if not conn.retired:
            conn.retired = True
            if state.conns.get(conn.addr) is conn:
                del state.conns[conn.addr]

    def _release(self, state: _State, conn: _Conn) -> None:
        conn.in_flight -= 1
        if conn.retired and conn.in_flight == 0:
            self._close_conn(state, conn)

    def _close_conn(self, state: _State, conn: _Conn) -> None:
        state.poller.unregister(conn.socket)
        state.by_socket.pop(conn.socket, None)
        conn.socket.close(0)

    def _shutdown(self, state: _State) -> None:
        closed_error = ClientError("RemotingClient closed before the response arrived")
        for pending in state.pending.values():
            _fail(pending.future, closed_error)
        state.pending.clear()
        while True:  # anything submitted before close() and not yet sent
            try:
                item = self._submissions.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Send):
                _fail(item.future, closed_error)
        for conn in list(state.by_socket.values()):
            conn.socket.close(0)
        state.by_socket.clear()
        state.conns.clear()


def _await_response(receive: Callable[[], Any], addr: str, opaque: int) -> Command:
    """Frames from `receive()` (which raises when time is up) until the response to `opaque`; a
    synchronous connection drops malformed frames, late responses and pushed requests."""
    while True:
        try:
            command = decode(receive())
        except ProtocolError as exc:
            log.warning("dropping malformed frame from %s: %s", addr, exc)
            continue
        if command.is_response and command.opaque == opaque:
            return command
        log.debug("discarding %s opaque %d on a synchronous connection to %s",
                  "late response" if command.is_response else "unsolicited request", command.opaque, addr)


def _tcp_host_port(addr: str) -> tuple[str, int] | None:
    """(host, port) of a "host:port" or "tcp://host:port" address; None for other endpoints."""
    if "://" in addr:
        if not addr.startswith("tcp://"):
            return None
        addr = addr[6:]
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def _try_send(sock: zmq.Socket, frame: bytes) -> bool:
    try:
        sock.send(frame, zmq.NOBLOCK, copy=len(frame) < ZERO_COPY_BYTES)
    except zmq.Again:
        return False
    return True


def _ms_until(deadline: float) -> int:
    """Whole milliseconds left until `deadline` (rounded up, never negative) for zmq poll."""
    return max(0, math.ceil((deadline - time.monotonic()) * 1000))


def _timeout_error(addr: str, code: int, opaque: int, timeout_ms: int) -> RemotingTimeoutError:
    return RemotingTimeoutError(f"no response from {addr} to {code_name(code, response=False)} "
                                f"(opaque {opaque}) within {timeout_ms} ms")


def _fail(future: Future | None, error: BaseException) -> None:
    if future is not None and not future.done():
        future.set_exception(error)
