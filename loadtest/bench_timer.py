"""Timer (arbitrary delivery time) benchmarks (issue 6, Done-when 1 and 4).

    python loadtest/bench_timer.py burst --start-broker -n 100000 --lead 45
    python loadtest/bench_timer.py accuracy --start-broker -n 1000 --span 60

burst: `-n` timer messages all due within the same second [T, T + 1 s), T = `--lead` seconds after
the first send (the lead must cover the sending). They are sent with asynchronous sends (window
`--window`). Once the topic's max offsets show every copy stored, a PushConsumer of a new group
reads the topic (not earlier: it would compete for the 2 cores during the burst). A message's
delivery time is the STORETIMESTAMP of its copy in the real topic: the scheduler delivers by
sending to the front, so that is when the broker delivered it.
Prints how many were delivered, and delivery - due: p50 / p99 / max, and the time from T + 1 s
(the end of the due second) to the last delivery. Target: every message within 5 s of its second.

accuracy: `-n` timer messages at uniformly random times in the next `--span` seconds; prints
arrival - due (listener time) p50 / p99 / max / min and how many arrived more than 1 s late.

Runs a broker (--start-broker) or uses one (--namesrv); single process apart from the broker.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loadtest._broker import ThrowawayBroker  # noqa: E402
from loadtest._stats import table  # noqa: E402
from rmqd.client import (  # noqa: E402
    ConsumeFromWhere,
    ConsumeStatus,
    Message,
    MQAdmin,
    Producer,
    PushConsumer,
)
from rmqd.errors import RmqError  # noqa: E402


class Received:
    """Listener: first copy of every body -> (arrival s, store timestamp ms); counts duplicates."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.first: dict[bytes, tuple[float, int]] = {}
        self.duplicates = 0

    def __call__(self, msgs: list) -> ConsumeStatus:
        now = time.time()
        with self.lock:
            for msg in msgs:
                if msg.body in self.first:
                    self.duplicates += 1
                else:
                    self.first[msg.body] = (now, msg.store_timestamp_ms)
        return ConsumeStatus.CONSUME_SUCCESS

    def count(self) -> int:
        with self.lock:
            return len(self.first)


def send_timers(namesrv: str, topic: str, due_ms: dict[bytes, int], window: int) -> float:
    """Send every timer message (async, `window` in flight); returns the seconds it took."""
    producer = Producer("bench-timer-producer", namesrv=namesrv)
    producer.start()
    started = time.monotonic()
    try:
        futures: list = []
        failed: list[bytes] = []
        for body, at in due_ms.items():
            futures.append((body, producer.send_async(Message(topic, body, deliver_at_ms=at))))
            if len(futures) >= window:
                failed += settle(futures)
        failed += settle(futures)
        for body in failed:  # refused by flow control (SYSTEM_BUSY): send again, synchronously
            for attempt in range(50):
                try:
                    producer.send(Message(topic, body, deliver_at_ms=due_ms[body]))
                    break
                except RmqError:
                    time.sleep(0.05 * (attempt + 1))
        if failed:
            print(f"{len(failed)} sends refused by flow control were sent again")
    finally:
        producer.shutdown()
    return time.monotonic() - started


def settle(futures: list) -> list[bytes]:
    """Wait for every (body, future); returns the bodies whose send failed. Clears `futures`."""
    failed = []
    for body, future in futures:
        try:
            future.result(30)
        except RmqError:
            failed.append(body)
    futures.clear()
    return failed


def consume(namesrv: str, topic: str) -> tuple[PushConsumer, Received]:
    received = Received()
    consumer = PushConsumer(f"bench-timer-{int(time.time())}", namesrv=namesrv,
                            consume_from=ConsumeFromWhere.FIRST_OFFSET, consume_message_batch_max_size=32)
    consumer.subscribe(topic, "*")
    consumer.register_listener(received)
    consumer.start()
    return consumer, received


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def wait_for(received: Received, count: int, deadline: float) -> None:
    while received.count() < count and time.time() < deadline:
        time.sleep(0.2)


def wait_stored(namesrv: str, topic: str, count: int, deadline: float) -> float:
    """Poll the topic's max offsets until they add up to `count`; returns the time that happened."""
    with MQAdmin(namesrv) as admin:
        while time.time() < deadline:
            if sum(row["max_offset"] for row in admin.topic_status(topic)) >= count:
                return time.time()
            time.sleep(0.1)
    return time.time()


def run_burst(args: argparse.Namespace, namesrv: str) -> None:
    topic = f"{args.topic}Burst"
    warm = Producer("bench-timer-warm", namesrv=namesrv)
    warm.start()
    warm.send(Message(topic, b"warm"))
    warm.shutdown()
    start_ms = int(time.time() * 1000)
    due_second_ms = start_ms + args.lead * 1000
    rng = random.Random(4)
    due = {f"b{i}".encode(): due_second_ms + rng.randrange(1000) for i in range(args.n)}
    send_s = send_timers(namesrv, topic, due, args.window)
    print(f"sent {args.n:,} timers in {send_s:.1f} s ({args.n / send_s:,.0f} msg/s); "
          f"due second starts {(due_second_ms - time.time() * 1000) / 1000:.1f} s from now")
    if time.time() * 1000 > due_second_ms:
        print("WARNING: sending took longer than --lead; raise --lead")
    # Read the topic only once everything is stored, so the consumer does not compete for the
    # 2 cores during the burst (delivery time is the copy's STORETIMESTAMP anyway).
    stored_s = wait_stored(namesrv, topic, args.n + 1, due_second_ms / 1000 + 1 + args.timeout)
    print(f"all stored {stored_s - due_second_ms / 1000 - 1:.2f} s after the due second (topic max offsets)")
    consumer, received = consume(namesrv, topic)
    try:
        wait_for(received, args.n + 1, time.time() + args.timeout)
    finally:
        consumer.shutdown()
    with received.lock:
        got = {body: v for body, v in received.first.items() if body in due}
    store_lag = [(store_ms - due[body]) / 1000 for body, (_at, store_ms) in got.items()]
    last_store = max((store_ms for _at, store_ms in got.values()), default=0)
    rows = [
        ("timers", f"{args.n:,}"), ("delivered", f"{len(got):,}"), ("duplicates", received.duplicates),
        ("delivery - due p50 / p99 / max (s)",
         " / ".join(f"{percentile(store_lag, q):.2f}" for q in (0.5, 0.99, 1.0)) if got else "-"),
        ("last delivery after the due second ends (s)", f"{(last_store - due_second_ms - 1000) / 1000:.2f}"),
        ("machine cores", os.cpu_count()),
    ]
    print(table(rows, ("burst: all due in one second", "")))


def run_accuracy(args: argparse.Namespace, namesrv: str) -> None:
    topic = f"{args.topic}Accuracy"
    consumer, received = consume(namesrv, topic)
    try:
        warm = Producer("bench-timer-warm", namesrv=namesrv)
        warm.start()
        warm.send(Message(topic, b"warm"))
        warm.shutdown()
        wait_for(received, 1, time.time() + 30)
        now_ms = int(time.time() * 1000)
        rng = random.Random(1)
        due = {f"a{i}".encode(): now_ms + rng.randrange(500, int(args.span * 1000)) for i in range(args.n)}
        send_s = send_timers(namesrv, topic, due, args.window)
        print(f"sent {args.n:,} timers in {send_s:.2f} s")
        wait_for(received, args.n + 1, now_ms / 1000 + args.span + args.timeout)
    finally:
        consumer.shutdown()
    with received.lock:
        errors = [received.first[body][0] - at / 1000 for body, at in due.items() if body in received.first]
    rows = [
        ("timers", f"{args.n:,}"), ("arrived", f"{len(errors):,}"), ("duplicates", received.duplicates),
        ("arrival - due p50 / p99 / max (s)",
         " / ".join(f"{percentile(errors, q):.3f}" for q in (0.5, 0.99, 1.0))),
        ("earliest (s, negative = early)", f"{min(errors):.3f}"),
        ("more than 1 s late", sum(1 for e in errors if e > 1.0)),
        ("machine cores", os.cpu_count()),
    ]
    print(table(rows, (f"accuracy: random times over {args.span:.0f} s", "")))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("burst", "accuracy"))
    parser.add_argument("--start-broker", action="store_true")
    parser.add_argument("--namesrv")
    parser.add_argument("-n", type=int, default=100_000)
    parser.add_argument("--lead", type=int, default=45,
                        help="burst: seconds from the first send to the due second")
    parser.add_argument("--span", type=float, default=60.0,
                        help="accuracy: timers spread over this many seconds")
    parser.add_argument("--window", type=int, default=512, help="async sends in flight")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait after the last due time")
    parser.add_argument("--topic", default="BenchTimer")
    parser.add_argument("-p", "--property", action="append", default=[], help="broker.conf key=value")
    args = parser.parse_args(argv)
    broker = None
    if args.start_broker:
        properties = dict(item.split("=", 1) for item in args.property)
        broker = ThrowawayBroker(properties=properties).start()
        namesrv = broker.namesrv_addr
    elif args.namesrv:
        namesrv = args.namesrv
    else:
        parser.error("--start-broker or --namesrv")
    try:
        (run_burst if args.mode == "burst" else run_accuracy)(args, namesrv)
    finally:
        if broker is not None:
            broker.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
