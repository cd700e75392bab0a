"""Namesrv process: the route registry brokers register with and clients ask for routes.

Socket:   ZeroMQ ROUTER bound to tcp://{listen_addr} (default 127.0.0.1:9876), ROUTER_MANDATORY,
          MAXMSGSIZE 16 MiB (bigger frames are dropped by libzmq, the peer is disconnected).
State:    one `rmqd.namesrv.RouteInfoManager`, in memory only (brokers re-register every 30 s,
          so a restarted namesrv is complete again within one registration period, as RocketMQ's).
Loop:     zmq.Poller over the ROUTER and a signal wake-up pipe; handle every ready request; every
          10 s scan for brokers silent for 120 s.
Input:    a malformed frame gets an error response when its opaque can be recovered (wrong
          version -> VERSION_NOT_SUPPORTED, else INVALID_PARAMETER), otherwise it is dropped with a
          log line; an unknown code gets REQUEST_CODE_NOT_SUPPORTED. No input can stop the process.
Signals:  SIGTERM / SIGINT -> leave the loop, close the socket, exit 0.
Usable by the supervisor (`main(listen_addr)`) and standalone: `python -m workers.namesrv --listen H:P`.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from collections.abc import Callable

import zmq

from rmqd.errors import ProtocolError
from rmqd.exit_codes import EXIT_BOOT_FAILED, EXIT_OK
from rmqd.namesrv import BROKER_EXPIRY_MS, SCAN_INTERVAL_MS, RouteInfoManager
from rmqd.protocol import (
    MAX_FRAME_BYTES,
    Command,
    RequestCode,
    ResponseCode,
    code_name,
    decode,
    decode_json_body,
    encode_json_body,
    encode_response,
    malformed_reply,
)

log = logging.getLogger("rmqd.namesrv")

LOG_FORMAT = "%(asctime)s namesrv[%(process)d] %(levelname)s %(message)s"
DEFAULT_LISTEN = "127.0.0.1:9876"
SOCKET_HWM = 10_000
RECV_BURST = 1000  # requests handled per wake-up before the scan gets a chance to run

Reply = tuple[int, dict, str, bytes]  # code, fields, remark, body


def _now_ms() -> int:
    return int(time.time() * 1000)


class Namesrv:
    """The namesrv loop: setup() binds, run_once() serves one wake-up, teardown() closes."""

    name = "namesrv"

    def __init__(self, listen_addr: str, *, scan_interval_ms: int = SCAN_INTERVAL_MS,
                 broker_expiry_ms: int = BROKER_EXPIRY_MS) -> None:
        self.listen_addr = listen_addr
        self.scan_interval_ms = scan_interval_ms
        self.routes = RouteInfoManager(broker_expiry_ms)
        self.stop_requested = False
        self.signals_installed = False
        self.next_scan_ms = 0
        self.handlers: dict[int, Callable[[Command], Reply]] = {
            RequestCode.REGISTER_BROKER: self.process_register_broker,
            RequestCode.UNREGISTER_BROKER: self.process_unregister_broker,
            RequestCode.GET_ROUTEINFO_BY_TOPIC: self.process_get_route,
            RequestCode.GET_BROKER_CLUSTER_INFO: self.process_cluster_info,
            RequestCode.GET_ALL_TOPIC_LIST_FROM_NAMESERVER: self.process_topic_list,
            RequestCode.GET_TOPICS_BY_CLUSTER: self.process_topics_by_cluster,
            RequestCode.WIPE_WRITE_PERM_OF_BROKER: self.process_wipe_write_perm,
            RequestCode.ADD_WRITE_PERM_OF_BROKER: self.process_add_write_perm,
            RequestCode.DELETE_TOPIC_IN_NAMESRV: self.process_delete_topic,
        }

    # ---------------------------------------------------------------- life cycle

    def setup(self) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.socket.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
        self.socket.setsockopt(zmq.SNDHWM, SOCKET_HWM)
        self.socket.setsockopt(zmq.RCVHWM, SOCKET_HWM)
        self.socket.bind(f"tcp://{self.listen_addr}")
        self.signal_r, self.signal_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.poller = zmq.Poller()
        self.poller.register(self.socket, zmq.POLLIN)
        self.poller.register(self.signal_r, zmq.POLLIN)
        self.next_scan_ms = _now_ms() + self.scan_interval_ms

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.handle_sigterm)
        signal.signal(signal.SIGINT, self.handle_sigterm)
        signal.set_wakeup_fd(self.signal_w, warn_on_full_buffer=False)
        self.signals_installed = True

    def handle_sigterm(self, signum: int, frame: object) -> None:
        self.stop_requested = True

    def run(self) -> int:
        while not self.stop_requested:
            self.run_once()
        return EXIT_OK

    def run_once(self) -> bool:
        """Wait for requests (at most until the next scan), serve them, scan if due. True if served."""
        timeout_ms = max(0, self.next_scan_ms - _now_ms())
        events = dict(self.poller.poll(timeout_ms))
        if self.signal_r in events:
            _drain(self.signal_r)
        served = self.socket in events and self.serve_ready()
        if _now_ms() >= self.next_scan_ms:
            self.routes.scan_not_active_brokers(_now_ms())
            self.next_scan_ms = _now_ms() + self.scan_interval_ms
        return served

    def teardown(self) -> None:
        if self.signals_installed:  # tests run the loop in a thread, where signals cannot be set
            signal.set_wakeup_fd(-1)
        self.socket.close(0)
        self.context.term()
        os.close(self.signal_r)
        os.close(self.signal_w)

    # ---------------------------------------------------------------- requests

    def serve_ready(self) -> bool:
        for _ in range(RECV_BURST):
            try:
                parts = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            if len(parts) != 2:
                log.warning("dropping a message of %d frames (expected identity + one frame)", len(parts))
                continue
            self.serve_frame(parts[0], parts[1])
        return True

    def serve_frame(self, identity: bytes, frame: bytes) -> None:
        try:
            command = decode(frame)
        except ProtocolError as exc:
            reply = malformed_reply(frame, exc)
            log.warning("malformed frame of %d bytes: %s (%s)", len(frame), exc,
                        "answered" if reply else "dropped, no opaque to answer")
            if reply is not None:
                self.send(identity, reply)
            return
        if command.is_response:
            log.warning("dropping an unexpected response frame (code %d)", command.code)
            return
        code, fields, remark, body = self.dispatch(command)
        if not command.is_oneway:
            self.send(identity, encode_response(code, command.opaque, fields, remark, body))

    def dispatch(self, command: Command) -> Reply:
        handler = self.handlers.get(command.code)
        name = code_name(command.code, response=False)
        if handler is None:
            remark = f"request code {name} not supported by namesrv"
            return ResponseCode.REQUEST_CODE_NOT_SUPPORTED, {}, remark, b""
        try:
            return handler(command)
        except (ProtocolError, ValueError) as exc:
            log.warning("rejecting %s: %s", name, exc)
            return ResponseCode.INVALID_PARAMETER, {}, f"{name}: {exc}", b""
        except Exception as exc:  # a bug triggered by input must not take the namesrv down
            log.exception("%s failed", name)
            return ResponseCode.SYSTEM_ERROR, {}, f"{name} failed: {type(exc).__name__}: {exc}", b""

    def send(self, identity: bytes, frame: bytes) -> None:
        try:
            self.socket.send_multipart([identity, frame], zmq.NOBLOCK)
        except zmq.Again:
            log.warning("reply dropped: the peer's queue is full (HWM %d)", SOCKET_HWM)
        except zmq.ZMQError as exc:  # EHOSTUNREACH with ROUTER_MANDATORY: the peer went away
            log.info("reply dropped: peer gone (%s)", exc)

    # ---------------------------------------------------------------- handlers

    def process_register_broker(self, command: Command) -> Reply:
        body = decode_json_body(command.body, "REGISTER_BROKER body") if len(command.body) else {}
        table = body.get("topicConfigTable", {})
        if not isinstance(table, dict):
            raise ValueError("topicConfigTable must be a JSON object")
        fields = self.routes.register_broker(
            command.field_str("clusterName"), command.field_str("brokerAddr"),
            command.field_str("brokerName"), command.field_int("brokerId"),
            command.field_str("haServerAddr", ""), table, _now_ms(), body.get("dataVersion"),
        )
        return ResponseCode.SUCCESS, fields, "", b""

    def process_unregister_broker(self, command: Command) -> Reply:
        self.routes.unregister_broker(
            command.field_str("clusterName", ""), command.field_str("brokerAddr"),
            command.field_str("brokerName"), command.field_int("brokerId"),
        )
        return ResponseCode.SUCCESS, {}, "", b""

    def process_get_route(self, command: Command) -> Reply:
        topic = command.field_str("topic")
        route = self.routes.route(topic)
        if route is None:
            remark = f"No topic route info in name server for the topic: {topic}"
            return ResponseCode.TOPIC_NOT_EXIST, {}, remark, b""
        return ResponseCode.SUCCESS, {}, "", encode_json_body(route)

    def process_cluster_info(self, command: Command) -> Reply:
        return ResponseCode.SUCCESS, {}, "", encode_json_body(self.routes.cluster_info())

    def process_topic_list(self, command: Command) -> Reply:
        return ResponseCode.SUCCESS, {}, "", encode_json_body({"topicList": self.routes.topic_list()})

    def process_topics_by_cluster(self, command: Command) -> Reply:
        topics = self.routes.topics_by_cluster(command.field_str("cluster"))
        return ResponseCode.SUCCESS, {}, "", encode_json_body({"topicList": topics})

    def process_wipe_write_perm(self, command: Command) -> Reply:
        broker_name = command.field_str("brokerName")
        count = self.routes.wipe_write_perm(broker_name)
        log.info("wiped write permission of broker %s on %d topics", broker_name, count)
        return ResponseCode.SUCCESS, {"wipeTopicCount": count}, "", b""

    def process_add_write_perm(self, command: Command) -> Reply:
        broker_name = command.field_str("brokerName")
        count = self.routes.add_write_perm(broker_name)
        log.info("restored write permission of broker %s on %d topics", broker_name, count)
        return ResponseCode.SUCCESS, {"addTopicCount": count}, "", b""

    def process_delete_topic(self, command: Command) -> Reply:
        cluster = command.field_str("clusterName", "") or None
        self.routes.delete_topic(command.field_str("topic"), cluster)
        return ResponseCode.SUCCESS, {}, "", b""


def _drain(fd: int) -> None:
    try:
        os.read(fd, 512)
    except BlockingIOError:
        pass


def main(listen_addr: str = DEFAULT_LISTEN, *, scan_interval_ms: int = SCAN_INTERVAL_MS,
         broker_expiry_ms: int = BROKER_EXPIRY_MS) -> int:
    """Run the namesrv until SIGTERM/SIGINT. Returns EXIT_OK, or EXIT_BOOT_FAILED if it cannot bind.

    Configures logging ("... namesrv[pid] LEVEL message") unless the caller already did.
    """
    if not logging.getLogger().handlers:
        level = os.environ.get("RMQD_LOG_LEVEL", "INFO").upper()
        logging.basicConfig(format=LOG_FORMAT, level=level, stream=sys.stderr)
    namesrv = Namesrv(listen_addr, scan_interval_ms=scan_interval_ms, broker_expiry_ms=broker_expiry_ms)
    try:
        namesrv.setup()
    except zmq.ZMQError as exc:
        log.error("cannot listen on %s: %s", listen_addr, exc)
        return EXIT_BOOT_FAILED
    namesrv.install_signal_handlers()
    log.info("namesrv listening on %s (broker expiry %d ms, scan every %d ms)",
             listen_addr, broker_expiry_ms, scan_interval_ms)
    try:
        code = namesrv.run()
    finally:
        namesrv.teardown()
    log.info("namesrv stopped")
    return code


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="namesrv", description="rmqd name server")
    parser.add_argument("--listen", default=DEFAULT_LISTEN, help="host:port to bind (default %(default)s)")
    parser.add_argument("--scan-interval-ms", type=int, default=SCAN_INTERVAL_MS,
                        help="how often silent brokers are looked for (default %(default)s)")
    parser.add_argument("--broker-expiry-ms", type=int, default=BROKER_EXPIRY_MS,
                        help="a broker silent this long is removed (default %(default)s)")
    parser.add_argument("--log-level", default=os.environ.get("RMQD_LOG_LEVEL", "INFO"))
    parser.add_argument("--logs-dir", default=None, help="also log to LOGS_DIR/namesrv.log")
    parser.add_argument("--supervised", action="store_true",
                        help="started by `rmqd start`: exit when the supervisor dies")
    return parser.parse_args(argv)


if __name__ == "__main__":
    from workers.base import die_with_parent, setup_logging, supervisor_pid

    args = parse_args(None)
    if args.supervised:
        die_with_parent()
        if os.getppid() != supervisor_pid():  # the supervisor died before prctl took effect
            sys.exit(EXIT_BOOT_FAILED)
    if args.logs_dir:
        setup_logging("namesrv", args.logs_dir)
    else:
        logging.basicConfig(format=LOG_FORMAT, level=args.log_level.upper(), stream=sys.stderr)
    sys.exit(main(args.listen, scan_interval_ms=args.scan_interval_ms,
                  broker_expiry_ms=args.broker_expiry_ms))
