"""`python loadtest/sdk_rtt.py`: one synchronous sender's round trip through each layer of the SDK.

Issue 4, Done-when 3 (one synchronous sender, 1 KiB, ASYNC_FLUSH: p50 <= 0.3 ms, p99 <= 1 ms) and
where its time goes. In ONE run, interleaved in rounds so that machine noise hits every layer alike,
the same SEND_MESSAGE request goes through:

    raw DEALER            a bare zmq DEALER send + recv of the frame: the floor of any client
    invoke via I/O thread RemotingClient(direct_sync=False).invoke: the caller queues the frame for
                          the I/O thread (eventfd wake-up) and waits on a Future (the SDK's old path)
    invoke direct         RemotingClient.invoke on the caller's own pooled connection (the SDK's
                          default: a plain TCP socket speaking ZMTP as a DEALER, rmqd/client/_zmtp.py)
    Producer.send         the whole producer: validation, UNIQ_KEY, routing, fault tolerance, result

against three servers: two echo ROUTERs in other processes (the client alone), a pyzmq ROUTER and
rmqd's own (rmqd/protocol/router.py: ZMTP in the server's thread, what the broker's front uses), and
a throwaway broker started with `rmqd start` (ASYNC_FLUSH; the broker's front -> ring -> writer ->
ack path included).
Prints p50 / p90 / p99 / p99.9 in microseconds and requests per second for each.

    python loadtest/sdk_rtt.py [--rounds 10] [--count 2000] [--body 1024] [--pause-us 0]

Owner: the SDK. Runs in the foreground and stops everything it started (the echo process by
PID, the broker through ThrowawayBroker.stop).
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import select
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = str(Path(__file__).resolve().parents[1])
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import zmq  # noqa: E402

from loadtest._broker import ThrowawayBroker, free_port  # noqa: E402
from loadtest._stats import machine_info, table  # noqa: E402
from rmqd.client import Message, Producer  # noqa: E402
from rmqd.client._remoting import RemotingClient  # noqa: E402
from rmqd.protocol import RequestCode, decode, encode_request, encode_response  # noqa: E402
from rmqd.protocol.commands import MAX_FRAME_BYTES  # noqa: E402
from rmqd.protocol.router import RouterSocket  # noqa: E402

ECHO_STOP = b"STOP"
ECHO_MAX_REQUESTS = 10_000_000  # the echo process never outlives its work, even if the parent dies


ECHO_KINDS = ("pyzmq ROUTER", "rmqd RouterSocket")
_ECHO_FIELDS = {"msgId": "0" * 32, "offsetMsgId": "0" * 32, "queueId": 0, "queueOffset": 0}


def echo_server(port: int, ready: multiprocessing.synchronize.Event, kind: str = ECHO_KINDS[0]) -> None:
    """A ROUTER that answers every request like a broker's SEND_MESSAGE reply (run in a child)."""
    if kind == ECHO_KINDS[1]:
        _router_echo(port, ready)
        return
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(f"tcp://127.0.0.1:{port}")
    ready.set()
    fields = _ECHO_FIELDS
    for _ in range(ECHO_MAX_REQUESTS):
        if not sock.poll(60_000):
            break
        ident, frame = sock.recv_multipart()
        if frame == ECHO_STOP:
            break
        sock.send_multipart([ident, encode_response(0, decode(frame).opaque, fields)])
    sock.close(0)
    ctx.term()


def _router_echo(port: int, ready: multiprocessing.synchronize.Event) -> None:
    """echo_server on rmqd's RouterSocket: wait on its epoll fd, answer, flush, as the front does."""
    router = RouterSocket("127.0.0.1", port, max_frame_bytes=MAX_FRAME_BYTES)
    ready.set()
    served = 0
    try:
        while served < ECHO_MAX_REQUESTS and select.select([router.fileno()], [], [], 60.0)[0]:
            while (message := router.recv_multipart()) is not None:
                ident, frame = message[0], message[-1]
                if frame == ECHO_STOP:
                    return
                router.send(ident, encode_response(0, decode(frame).opaque, _ECHO_FIELDS))
                served += 1
            router.flush()
    finally:
        router.close()


def percentiles(samples_us: list[float]) -> list[str]:
    ordered = sorted(samples_us)

    def at(fraction: float) -> str:
        return f"{ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]:.0f}"

    rate = len(ordered) / (sum(ordered) / 1e6)
    return [at(0.5), at(0.9), at(0.99), at(0.999), f"{rate:,.0f}"]


def measure(layers: dict[str, Callable[[], object]], rounds: int, count: int,
            pause_s: float = 0.0) -> dict[str, list[float]]:
    """Round trip times (us) of each layer, `count` calls per layer per round, layers interleaved;
    `pause_s` of sleep after each call (a sender with think time: both ends go idle in between)."""
    samples: dict[str, list[float]] = {name: [] for name in layers}
    for call in layers.values():  # warm every path (connections, routes) outside the figures
        for _ in range(200):
            call()
    for _ in range(rounds):
        for name, call in layers.items():
            out = samples[name]
            for _ in range(count):
                started = time.perf_counter()
                call()
                out.append((time.perf_counter() - started) * 1e6)
                if pause_s:
                    time.sleep(pause_s)
    return samples


def layers_for(addr: str, producer: Producer | None, fields: dict, body: bytes,
               clients: list) -> dict[str, Callable[[], object]]:
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(f"tcp://{addr}")
    via_thread, direct = RemotingClient(direct_sync=False), RemotingClient()
    clients.extend([via_thread, direct, (ctx, dealer)])
    opaque = iter(range(1, 1 << 62))

    def raw() -> object:
        dealer.send(encode_request(RequestCode.SEND_MESSAGE, next(opaque), fields, body))
        return decode(dealer.recv())

    layers: dict[str, Callable[[], object]] = {
        "raw DEALER": raw,
        "invoke via I/O thread": lambda: via_thread.invoke(addr, RequestCode.SEND_MESSAGE, fields, body),
        "invoke direct": lambda: direct.invoke(addr, RequestCode.SEND_MESSAGE, fields, body),
    }
    if producer is not None:
        msg = Message("SdkRtt", body)
        layers["Producer.send"] = lambda: producer.send(msg)
    return layers


def close_all(clients: list) -> None:
    for client in clients:
        if isinstance(client, RemotingClient):
            client.close()
        else:
            ctx, dealer = client
            dealer.close(0)
            ctx.term()


def request_fields(producer: Producer, body: bytes) -> dict:
    """The exact fields Producer.send puts on the wire for a 1-message send to queue 0."""
    request = producer._build_single(Message("SdkRtt", body), None)
    return dict(request.fields, queueId=0)


def run(args: argparse.Namespace) -> int:
    body = b"r" * args.body
    pause_s = args.pause_us / 1e6
    rows = []
    echoes = {}
    for kind in ECHO_KINDS:
        port, ready = free_port(), multiprocessing.Event()
        echo = multiprocessing.Process(target=echo_server, args=(port, ready, kind), daemon=True)
        echo.start()
        echoes[kind] = (port, ready, echo)
    clients: list = []
    try:
        if not all(ready.wait(30) for _port, ready, _echo in echoes.values()):
            raise SystemExit("echo server did not start")
        with ThrowawayBroker(flush="ASYNC_FLUSH") as broker, \
                Producer("sdk_rtt", namesrv=broker.namesrv_addr, default_topic_queue_nums=1) as producer:
            producer.send(Message("SdkRtt", body))  # creates the topic with one queue
            fields = request_fields(producer, body)
            for kind, (port, _ready, _echo) in echoes.items():
                echo_layers = layers_for(f"127.0.0.1:{port}", None, fields, body, clients)
                for name, samples in measure(echo_layers, args.rounds, args.count, pause_s).items():
                    rows.append((f"echo, {kind}", name, *percentiles(samples)))
            broker_layers = layers_for(f"127.0.0.1:{broker.port}", producer, fields, body, clients)
            for name, samples in measure(broker_layers, args.rounds, args.count, pause_s).items():
                rows.append(("rmqd broker ASYNC_FLUSH", name, *percentiles(samples)))
            close_all(clients)
            clients.clear()
    finally:
        close_all(clients)
        for port, _ready, echo in echoes.values():
            with zmq.Context() as ctx, ctx.socket(zmq.DEALER) as stop:
                stop.setsockopt(zmq.LINGER, 1000)
                stop.connect(f"tcp://127.0.0.1:{port}")
                stop.send(ECHO_STOP)
            echo.join(10)
            if echo.is_alive():
                os.kill(echo.pid, signal.SIGKILL)
    print(f"one synchronous sender, {args.body} B bodies, {args.rounds} rounds x {args.count} calls per "
          f"layer, {args.pause_us} us pause after each; machine {machine_info()}")
    print(table(rows, ("server", "layer", "p50 us", "p90 us", "p99 us", "p99.9 us", "req/s"), "ll"))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds (default 10)")
    parser.add_argument("--count", type=int, default=2000, help="calls per layer per round (default 2000)")
    parser.add_argument("--body", type=int, default=1024, help="body bytes (default 1024)")
    parser.add_argument("--pause-us", type=int, default=0,
                        help="sleep after each call, in microseconds (default 0: back to back)")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
