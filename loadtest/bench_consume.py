"""`bench.py consume` and `bench.py e2e`: the consumer benchmarks (issue 5).

    python loadtest/bench.py consume --start-broker -n 1000000 -s 1024
    python loadtest/bench.py e2e --start-broker --rate 5000 --rate 1 -d 20
    python loadtest/bench_consume.py consume ...            (also runs on its own)

consume: backlog drain. Builds a backlog of `-n` messages of `-s` bytes on a topic of `--queues`
queues (batches of 64 from 4 sender threads), waits until the dispatcher has indexed all of them,
then one consumer of a new group (PushConsumer, or LitePullConsumer with `--client lite`) drains it.
The clock runs from the consumer's start() to the last message in its listener. Prints msgs/s,
MB/s, CPU of the consumer and of each broker process. The broker caps a pull at
maxTransferCountOnMessageInMemory (32) messages and maxTransferBytesOnMessageInMemory (256 KiB);
`--max-transfer N` raises the first for a broker this tool starts (RocketMQ's pullBatchSize is 32 too).

e2e: delivery latency. A producer process sends 1 KiB messages at each `--rate` in turn (paced,
asynchronous sends; `--rate 0`: as fast as 256 sends in flight allow), each body starting with its
send time in ns (time.time_ns(): the record's
BORNTIMESTAMP has only ms resolution; both clocks are this machine's). A PushConsumer in this
process records listener time - send time. Per rate: delivered/missing, p50/p99/p99.9/max latency,
and the max stall: the longest time between two consecutive deliveries beyond the send period (a
lost long-poll wake-up would show as a stall of the holder's 1 s re-check; RocketMQ users report 5 s).

Runs in the caller's process plus one spawned producer process (e2e); not thread-safe.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loadtest._broker import (  # noqa: E402
    BrokerMonitor,
    ThrowawayBroker,
    cpu_cores,
    machine_sample,
    proc_sample,
)
from loadtest._stats import Histogram, fmt_ms, fmt_rate, new_result, table, write_json  # noqa: E402
from loadtest.bench_produce import create_topic, warn_if_busy  # noqa: E402
from rmqd.client import (  # noqa: E402
    ConsumeFromWhere,
    ConsumeStatus,
    LitePullConsumer,
    Message,
    MQAdmin,
    Producer,
    PushConsumer,
)

STAMP = struct.Struct(">qiib")  # send time (ns), rate index, sequence number, measured (past warm-up)
MAX_RATE_WINDOW = 256  # --rate 0 (as fast as possible): sends in flight at most
BACKLOG_BATCH = 64
BACKLOG_THREADS = 4
PACING_TICK_S = 0.001  # at 5,000 msg/s: 1,000 wake-ups/s of 5 sends instead of 5,000 of 1
MIB = 1 << 20
MACHINE = "_machine"  # CpuWatch's pseudo process: the whole machine's busy CPU
TARGETS = {  # issue 5, Done-when 1 and 2
    "e2e_5000": {"p50": 2.0, "p99": 10.0, "p999": 50.0},
    "drain_msgs_per_s": 150_000,
}


# ---------------------------------------------------------------------------- the broker


@dataclass
class Target:
    namesrv: str
    monitor: BrokerMonitor
    broker: ThrowawayBroker | None = None

    def close(self) -> None:
        self.monitor.close()
        if self.broker is not None:
            self.broker.stop()


def open_target(args: argparse.Namespace, properties: dict[str, str]) -> Target:
    warn_if_busy(args.wait_quiet)
    if args.start_broker:
        props = {**properties, **dict(p.split("=", 1) for p in args.property or [])}
        broker = ThrowawayBroker(args.flush, props, keep_store=False)
        print(f"starting a throwaway broker ({args.flush}, {props}) in {broker.store_dir} ...", flush=True)
        broker.start()
        monitor = BrokerMonitor(broker.store_dir, supervisor_pid=broker.supervisor_pid)
        return Target(broker.namesrv_addr, monitor, broker)
    if not args.namesrv:
        raise SystemExit("give --namesrv HOST:PORT of a running broker, or --start-broker")
    return Target(args.namesrv, BrokerMonitor(args.store_dir, namesrv=args.namesrv))


def await_dispatched(namesrv: str, topic: str, count: int, timeout_s: float = 120.0) -> None:
    with MQAdmin(namesrv) as admin:
        deadline = time.monotonic() + timeout_s
        while sum(row["max_offset"] for row in admin.topic_status(topic)) < count:
            if time.monotonic() > deadline:
                raise SystemExit(f"the broker did not dispatch {count} messages of {topic} "
                                 f"in {timeout_s:.0f} s")
            time.sleep(0.2)


class CpuWatch:
    """CPU cores used by each broker process, this (consumer) process and any `others` between
    start() and stop(), and by everything else on the machine ("other programs")."""

    def __init__(self, monitor: BrokerMonitor, others: dict[str, int] | None = None) -> None:
        self.monitor = monitor
        self.pids = {"consumer": os.getpid(), **(others or {})}

    def _sample(self) -> dict[str, Any]:
        own = {name: proc_sample(pid) for name, pid in self.pids.items()}
        return {**self.monitor.sample(), **{name: s for name, s in own.items() if s is not None},
                MACHINE: machine_sample()}

    def start(self) -> None:
        self.began = time.monotonic()
        self.before = self._sample()

    def stop(self) -> dict[str, float]:
        cores = cpu_cores(self.before, self._sample(), time.monotonic() - self.began)
        machine = cores.pop(MACHINE, 0.0)
        cores["other programs"] = round(max(0.0, machine - sum(cores.values())), 2)
        return cores


def cpu_line(cores: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.2f}" for name, value in sorted(cores.items(), key=lambda kv: -kv[1])
                     if value >= 0.01)


# ---------------------------------------------------------------------------- consume (backlog drain)


def build_backlog(namesrv: str, topic: str, count: int, body_bytes: int) -> float:
    """Send `count` messages in batches from a few threads; returns the msgs/s it took."""
    producer = Producer("bench-backlog", namesrv=namesrv)
    producer.start()
    body = b"b" * body_bytes
    per_thread = -(-count // BACKLOG_THREADS)
    started = time.monotonic()

    def send_share(share: int) -> None:
        while share > 0:
            batch = min(BACKLOG_BATCH, share)
            producer.send_batch([Message(topic, body) for _ in range(batch)])
            share -= batch

    shares = [min(per_thread, count - i * per_thread) for i in range(BACKLOG_THREADS)]
    threads = [threading.Thread(target=send_share, args=(share,)) for share in shares if share > 0]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    producer.shutdown()
    return count / (time.monotonic() - started)


class DrainCounter:
    """Counts consumed messages; `done` is set when `expected` arrived."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.bytes = 0
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.finished_at = 0.0

    def add(self, messages: list) -> None:
        with self.lock:
            self.count += len(messages)
            self.bytes += sum(len(m.body) for m in messages)
            if self.count >= self.expected and not self.done.is_set():
                self.finished_at = time.monotonic()
                self.done.set()

    def listener(self, messages: list) -> ConsumeStatus:
        self.add(messages)
        return ConsumeStatus.CONSUME_SUCCESS


def drain(args: argparse.Namespace, namesrv: str, counter: DrainCounter) -> float:
    """Start the consumer and wait for the whole backlog; returns the start time (monotonic)."""
    group = f"bench-drain-{int(time.time())}"
    if args.client == "lite":
        consumer = LitePullConsumer(group, namesrv=namesrv, pull_batch_size=args.pull_batch,
                                    consume_from=ConsumeFromWhere.FIRST_OFFSET)
        consumer.subscribe(args.topic)
        stop = threading.Event()
        started = time.monotonic()
        consumer.start()

        def poll_loop() -> None:
            while not stop.is_set():
                counter.add(consumer.poll(timeout_ms=500))

        poller = threading.Thread(target=poll_loop, daemon=True)
        poller.start()
        finished = counter.done.wait(args.timeout)
        stop.set()
        poller.join(5)
    else:
        consumer = PushConsumer(group, namesrv=namesrv, pull_batch_size=args.pull_batch,
                                consume_message_batch_max_size=args.consume_batch,
                                consume_thread_min=min(args.threads, 20), consume_thread_max=args.threads,
                                consume_from=ConsumeFromWhere.FIRST_OFFSET)
        consumer.subscribe(args.topic)
        consumer.register_listener(counter.listener)
        started = time.monotonic()
        consumer.start()
        finished = counter.done.wait(args.timeout)
    consumer.shutdown()
    if not finished:
        print(f"WARNING: only {counter.count:,} of {counter.expected:,} messages drained in {args.timeout} s")
    return started


def run_consume(args: argparse.Namespace) -> int:
    properties = {"maxTransferCountOnMessageInMemory": str(args.max_transfer),
                  "mappedFileSizeCommitLog": str(1 << 30)}
    target = open_target(args, properties)
    try:
        create_topic(target.namesrv, args.topic, args.queues)
        print(f"building a backlog of {args.messages:,} x {args.body:,} B on {args.topic} "
              f"({args.queues} queues) ...", flush=True)
        backlog_rate = build_backlog(target.namesrv, args.topic, args.messages, args.body)
        await_dispatched(target.namesrv, args.topic, args.messages)
        print(f"backlog built at {backlog_rate:,.0f} msg/s and dispatched; draining ...", flush=True)
        counter = DrainCounter(args.messages)
        watch = CpuWatch(target.monitor)
        watch.start()
        started = drain(args, target.namesrv, counter)
        cores = watch.stop()
        seconds = (counter.finished_at or time.monotonic()) - started
        result = {"messages": counter.count, "seconds": round(seconds, 3),
                  "msgs_per_s": round(counter.count / seconds),
                  "mb_per_s": round(counter.bytes / seconds / MIB, 1), "cpu_cores": cores,
                  "backlog_build_msgs_per_s": round(backlog_rate)}
        print_consume(args, result)
        if args.json:
            label = args.label or f"drain {args.client} {args.messages}"
            record = new_result("consume", label, vars_of(args))
            record["result"] = result
            record["targets"] = [{"name": "drain msgs/s", "target": TARGETS["drain_msgs_per_s"],
                                  "measured": result["msgs_per_s"]}]
            write_json(args.json, record)
    finally:
        target.close()
    return 0


def print_consume(args: argparse.Namespace, result: dict[str, Any]) -> None:
    rows = [("messages drained", f"{result['messages']:,}"), ("seconds", f"{result['seconds']:.2f}"),
            ("msgs/s", fmt_rate(result["msgs_per_s"])), ("MB/s", f"{result['mb_per_s']:.1f}"),
            ("target msgs/s (issue 5)", fmt_rate(TARGETS["drain_msgs_per_s"])),
            ("CPU cores", cpu_line(result["cpu_cores"]))]
    print()
    print(f"backlog drain: {args.client} consumer, pull batch {args.pull_batch}, consume batch "
          f"{args.consume_batch}, broker maxTransferCountOnMessageInMemory {args.max_transfer}")
    print(table(rows, ("", "value"), "ll"))


# ---------------------------------------------------------------------------- e2e (delivery latency)


def producer_process(namesrv: str, topic: str, phases: list[tuple[float, float, float]], body_bytes: int,
                     senders: int, go: Any, out: Any, auto_batch: bool = False) -> None:
    """Send each phase's rate for its seconds; report (phase, acknowledged, failed, ack latencies)
    on `out`. `senders` 0: asynchronous sends from one thread; N: N threads of synchronous sends
    (with `auto_batch`, through Producer(auto_batch=True): sends that meet in flight share a request)."""
    producer = Producer("bench-e2e", namesrv=namesrv, auto_batch=auto_batch)
    producer.start()
    producer.send(Message(topic, STAMP.pack(0, -1, 0, 0)))  # route lookup and connection, before the clock
    padding = b"p" * max(0, body_bytes - STAMP.size)
    go.wait()
    for index, (rate, seconds, warmup_s) in enumerate(phases):
        if senders:
            result = send_paced_sync(producer, topic, index, rate, seconds, warmup_s, padding, senders)
        else:
            result = send_paced(producer, topic, index, rate, seconds, warmup_s, padding)
        out.put((index, *result))
    producer.shutdown()


def send_paced_sync(producer: Producer, topic: str, index: int, rate: float, seconds: float,
                    warmup_s: float, padding: bytes, senders: int) -> tuple[int, int, Histogram]:
    """`senders` threads of synchronous sends; thread k sends sequence numbers k, k + senders, ...
    on the same schedule as send_paced (rate 0: each as fast as its round trips allow)."""
    period = 1.0 / rate if rate > 0 else 0.0
    total = int(rate * seconds) if rate > 0 else None
    results: list[tuple[int, int, Histogram]] = []
    started = time.perf_counter()

    def sender(k: int) -> None:
        acked, failed, acks, seq = 0, 0, Histogram(), k
        while (seq < total) if total is not None else (time.perf_counter() - started < seconds):
            elapsed = time.perf_counter() - started
            if seq * period > elapsed:
                time.sleep(seq * period - elapsed)
            sent_ns = time.time_ns()
            try:
                producer.send(Message(topic, STAMP.pack(sent_ns, index, seq, elapsed >= warmup_s) + padding))
                acks.record((time.time_ns() - sent_ns) // 1000)
                acked += 1
            except Exception:  # noqa: BLE001 - a failed send is counted, the load goes on
                failed += 1
            seq += senders
        results.append((acked, failed, acks))

    threads = [threading.Thread(target=sender, args=(k,)) for k in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    merged = Histogram()
    for _acked, _failed, acks in results:
        merged.merge(acks)
    return sum(r[0] for r in results), sum(r[1] for r in results), merged


def send_paced(producer: Producer, topic: str, index: int, rate: float, seconds: float, warmup_s: float,
               padding: bytes) -> tuple[int, int, Histogram]:
    """Send at `rate` (0: as fast as MAX_RATE_WINDOW sends in flight allow) for `seconds`; returns
    (acknowledged, failed, send -> ack latencies) once every send settled."""
    period = 1.0 / rate if rate > 0 else 0.0
    window = threading.BoundedSemaphore(MAX_RATE_WINDOW) if rate <= 0 else None
    acks = Histogram()
    # Outcomes are counted as they settle: holding every future until the end made the garbage
    # collector walk all of them (110,000 futures at 5,000 msg/s), and its gen-2 passes stalled the
    # sender and the I/O thread for up to 1 s.
    state = {"settled": 0, "failed": 0}
    all_settled = threading.Condition()

    def settled(future: Any, sent_ns: int) -> None:
        failed = future.exception() is not None
        if not failed:
            acks.record((time.time_ns() - sent_ns) // 1000)
        with all_settled:
            state["settled"] += 1
            state["failed"] += failed
            all_settled.notify_all()
        if window is not None:
            window.release()

    total = int(rate * seconds) if rate > 0 else None  # paced: an exact count; max rate: by time
    started = time.perf_counter()
    seq = 0
    while (seq < total) if total is not None else (time.perf_counter() - started < seconds):
        elapsed = time.perf_counter() - started
        delay = seq * period - elapsed
        if delay > 0:  # sleep at least PACING_TICK_S: fewer wake-ups, messages go in tiny bursts
            time.sleep(max(delay, PACING_TICK_S))
        if window is not None:
            window.acquire()
        sent_ns = time.time_ns()
        stamp = STAMP.pack(sent_ns, index, seq, elapsed >= warmup_s)
        future = producer.send_async(Message(topic, stamp + padding))
        future.add_done_callback(lambda done, sent_ns=sent_ns: settled(done, sent_ns))
        seq += 1
    with all_settled:
        all_settled.wait_for(lambda: state["settled"] >= seq, timeout=60)  # seq: sends made
        failed = state["failed"] + seq - state["settled"]
    return seq - failed, failed, acks


@dataclass
class Phase:
    rate: float
    seconds: float
    warmup_s: float
    latency: Histogram = field(default_factory=Histogram)
    arrivals: list[float] = field(default_factory=list)
    seen: set[int] = field(default_factory=set)
    duplicates: int = 0
    sent: int = 0
    failed: int = 0
    cpu_cores: dict[str, float] = field(default_factory=dict)
    acks: Histogram = field(default_factory=Histogram)


class LatencyListener:
    """Records each message's send -> listener latency into its phase (thread-safe)."""

    def __init__(self, phases: list[Phase]) -> None:
        self.phases = phases
        self.lock = threading.Lock()

    def __call__(self, messages: list) -> ConsumeStatus:
        now_ns = time.time_ns()
        with self.lock:
            for message in messages:
                sent_ns, index, seq, measured = STAMP.unpack_from(message.body)
                if index < 0:
                    continue
                phase = self.phases[index]
                if seq in phase.seen:
                    phase.duplicates += 1
                    continue
                phase.seen.add(seq)
                phase.arrivals.append(now_ns / 1e9)
                if measured:
                    phase.latency.record(max(0, (now_ns - sent_ns) // 1000))
        return ConsumeStatus.CONSUME_SUCCESS


def run_e2e(args: argparse.Namespace) -> int:
    target = open_target(args, {})
    phases = [Phase(rate, args.duration + args.warmup, args.warmup) for rate in args.rate]
    try:
        create_topic(target.namesrv, args.topic, args.queues)
        consumer = PushConsumer(f"bench-e2e-{int(time.time())}", namesrv=target.namesrv)
        consumer.subscribe(args.topic)
        consumer.register_listener(LatencyListener(phases))
        consumer.start()
        ctx = mp.get_context("spawn")
        go, out = ctx.Event(), ctx.Queue()
        schedule = [(p.rate, p.seconds, p.warmup_s) for p in phases]
        sender = ctx.Process(target=producer_process, daemon=True,
                             args=(target.namesrv, args.topic, schedule, args.body, args.senders, go, out,
                                   args.auto_batch))
        sender.start()
        watch = CpuWatch(target.monitor, {"producer": sender.pid})
        time.sleep(2.0)  # the producer process imports and connects; its first send warms the route
        watch.start()
        go.set()
        for _ in phases:
            index, sent, failed, acks = out.get(timeout=max(p.seconds for p in phases) * 3 + 60)
            phase = phases[index]
            phase.sent, phase.failed, phase.acks, phase.cpu_cores = sent, failed, acks, watch.stop()
            watch.start()
            print(f"rate {phase.rate:,.0f} msg/s done ({sent:,} acknowledged, {failed} failed)", flush=True)
        sender.join(30)
        time.sleep(1.0)  # stragglers
        consumer.shutdown()
        print_e2e(args, phases)
        if args.json:
            label = args.label or "e2e " + " ".join(f"{r:g}" for r in args.rate)
            label += " auto-batch" if args.auto_batch and not args.label else ""
            record = new_result("e2e", label, vars_of(args))
            record["result"] = {"phases": [phase_json(p) for p in phases]}
            write_json(args.json, record)
    finally:
        target.close()
    return 0


def max_stall_ms(arrivals: list[float], rate: float) -> float:
    """The longest time between two consecutive deliveries beyond the send period (1 / rate)."""
    ordered = sorted(arrivals)
    longest = max((b - a for a, b in zip(ordered, ordered[1:], strict=False)), default=0.0)
    return max(0.0, longest - (1.0 / rate if rate > 0 else 0.0)) * 1000


def phase_json(phase: Phase) -> dict[str, Any]:
    return {"rate": phase.rate, "seconds": phase.seconds, "warmup_s": phase.warmup_s, "sent": phase.sent,
            "failed": phase.failed, "delivered": len(phase.seen), "duplicates": phase.duplicates,
            "latency_ms": phase.latency.summary_ms(), "send_ack_ms": phase.acks.summary_ms(),
            "max_stall_ms": round(max_stall_ms(phase.arrivals, phase.rate), 1), "cpu_cores": phase.cpu_cores}


def print_e2e(args: argparse.Namespace, phases: list[Phase]) -> None:
    header = ("offered msg/s", "acked", "delivered", "missing", "p50 ms", "p99 ms", "p99.9 ms", "max ms",
              "max stall ms")
    rows = []
    for phase in phases:
        summary = phase.latency.summary_ms()
        offered = fmt_rate(phase.rate) if phase.rate > 0 else f"max ({phase.sent / phase.seconds:,.0f})"
        rows.append((offered, f"{phase.sent:,}", f"{len(phase.seen):,}",
                     f"{phase.sent - len(phase.seen):,}",  # acknowledged and never delivered
                     fmt_ms(summary["p50"]), fmt_ms(summary["p99"]),
                     fmt_ms(summary["p999"]), fmt_ms(summary["max"]),
                     fmt_ms(max_stall_ms(phase.arrivals, phase.rate))))
    print()
    print(f"end to end: producer time.time_ns() in the body -> PushConsumer listener, {args.body:,} B, "
          f"{args.queues} queues, {args.warmup:g} s warm-up excluded")
    print(table(rows, header))
    print("issue 5 target at 5,000 msg/s: p50 <= 2 ms, p99 <= 10 ms, p99.9 <= 50 ms")
    for phase in phases:
        acks = phase.acks.summary_ms()
        print(f"at {phase.rate:,.0f} msg/s: send -> ack p50 {fmt_ms(acks['p50'])} / p99 "
              f"{fmt_ms(acks['p99'])} / max {fmt_ms(acks['max'])} ms; "
              f"CPU cores {cpu_line(phase.cpu_cores) or '< 0.01 each'}")


# ---------------------------------------------------------------------------- arguments


def vars_of(args: argparse.Namespace) -> dict[str, Any]:
    return {key: value for key, value in vars(args).items() if not callable(value)}


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_argument_group("broker")
    where.add_argument("--start-broker", action="store_true", help="start a throwaway broker for the run")
    where.add_argument("--namesrv", help="namesrv of a running broker (instead of --start-broker)")
    where.add_argument("--store-dir", help="store dir of that running broker (for its CPU figures)")
    where.add_argument("--flush", default="ASYNC_FLUSH", choices=("ASYNC_FLUSH", "SYNC_FLUSH"))
    where.add_argument("-p", "--property", action="append", help="broker.conf key=value for --start-broker")
    where.add_argument("--wait-quiet", type=float, default=0.0,
                       help="wait up to this many s for a quiet machine")
    parser.add_argument("--topic", default="BenchmarkConsume")
    parser.add_argument("--queues", type=int, default=8)
    parser.add_argument("-s", "--body", type=int, default=1024, help="message body bytes")
    parser.add_argument("--json", help="write the result as JSON here (bench.py report renders it)")
    parser.add_argument("--label", help="label of the JSON result")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`consume`: backlog drain."""
    add_common_arguments(parser)
    parser.add_argument("-n", "--messages", type=int, default=1_000_000)
    parser.add_argument("--client", choices=("push", "lite"), default="push")
    parser.add_argument("--pull-batch", type=int, default=32, help="pullBatchSize asked per pull (32)")
    parser.add_argument("--consume-batch", type=int, default=1, help="consume_message_batch_max_size (1)")
    parser.add_argument("--threads", type=int, default=20, help="consume threads (20)")
    parser.add_argument("--max-transfer", type=int, default=32,
                        help="broker maxTransferCountOnMessageInMemory with --start-broker (32)")
    parser.add_argument("--timeout", type=float, default=600.0, help="give up draining after this many s")


def add_e2e_arguments(parser: argparse.ArgumentParser) -> None:
    """`e2e`: delivery latency at fixed rates."""
    add_common_arguments(parser)
    parser.add_argument("--rate", type=float, action="append",
                        help=f"offered msg/s, 0 = as fast as {MAX_RATE_WINDOW} sends in flight allow; "
                        "repeat for several runs (default: 5000 then 1)")
    parser.add_argument("--senders", type=int, default=0, help="0: asynchronous sends from one thread "
                        "(default); N: N threads of synchronous sends sharing the rate")
    parser.add_argument("--auto-batch", action="store_true",
                        help="the producer's synchronous sends through Producer(auto_batch=True)")
    parser.add_argument("-d", "--duration", type=float, default=20.0, help="measured seconds per rate")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds per rate not measured")


def run(args: argparse.Namespace) -> int:
    return run_consume(args)


def run_e2e_command(args: argparse.Namespace) -> int:
    args.rate = args.rate or [5000.0, 1.0]
    return run_e2e(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_consume.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    add_arguments(commands.add_parser("consume", help="backlog drain rate"))
    add_e2e_arguments(commands.add_parser("e2e", help="delivery latency at fixed rates"))
    args = parser.parse_args(argv)
    return run(args) if args.command == "consume" else run_e2e_command(args)


if __name__ == "__main__":
    sys.exit(main())
