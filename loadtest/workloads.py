"""`bench.py workload`: the OpenMessaging Benchmark's standard workloads against rmqd (issue 8).

    python loadtest/bench.py workload --list
    python loadtest/bench.py workload 1-topic-16-queues-1kb --start-broker -d 30 --json docs/benchmarks
    python loadtest/bench.py workload all --start-broker -d 20 --json docs/benchmarks
    python loadtest/bench.py workload 1-topic-16-queues-1kb --start-broker --compare-locust

Each workload follows one published OMB workload file (workloads/*.yaml of openmessaging/benchmark):
one topic of N queues (OMB "partitions"), one producer, one subscription with one consumer, a
message size, and a producer rate. OMB's producer rate is 50,000 msg/s; this 2-core machine runs
the broker, the producer and the consumer on the same two cores, so the fixed-rate workloads offer
`--rate` (default FIXED_RATE, 5,000 msg/s) instead, and the max-rate workload finds the highest rate
that producer and consumer sustain with OMB's rate controller (producerRate: 0).

The load, as OMB's worker does it: a producer process sends asynchronously (`send_async`, at most
`--window` in flight) at the target rate, each body starting with its send time in ns
(`stamped_body`); a consumer process (PushConsumer of a new group, from the first offset) records
receive time - send time (end-to-end latency; both clocks are this machine's). Publish latency is
send_async -> acknowledgement as the producer sees it. Both processes report every `--interval`;
the parent prints one line per interval (publish and consume rate, backlog, latencies), measures
after `--warmup`, and saves JSON that `bench.py report` renders (table and PNG).

Kinds: fixed (the rate for `--duration` s); max (OMB RateController: every 3 s the rate rises while
the publish and receive backlogs stay under 1,000 messages, and falls toward what was achieved
when they do not; the result is the mean over the second half of the run); backlog (OMB
consumerBacklogSizeGB: the consumer stays paused while the producer builds `--backlog-mib` of
backlog at the fixed rate, then it starts and drains the backlog while the producer goes on;
reports build and drain time and the drain rate).

`stamped_body` / `sent_time_ns` are also used by the locust users (loadtest/zmq_user.py), so the
same bodies give the same end-to-end latency in both tools. This module never imports locust or
gevent. Runs in the caller's process plus two spawned processes per workload; not thread-safe.
"""
from __future__ import annotations

import argparse
import csv
import multiprocessing as mp
import os
import queue
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loadtest._broker import add_broker_arguments, cpu_cores, machine_sample, proc_sample  # noqa: E402
from loadtest._stats import (  # noqa: E402
    Recorder,
    Snapshot,
    fmt_ms,
    fmt_rate,
    merge_all,
    new_result,
    table,
    write_json,
)
from loadtest.bench_produce import (  # noqa: E402
    MACHINE,
    Target,
    broker_figures,
    create_topic,
    make_producer,
    open_target,
    prime,
    record_outcome,
)
from loadtest.bench_produce import Workload as SendWorkload  # noqa: E402
from rmqd.client import ConsumeFromWhere, ConsumeStatus, Message, PushConsumer  # noqa: E402
from rmqd.errors import ClientError  # noqa: E402

STAMP_MAGIC = b"RQTS"
STAMP = struct.Struct(">4sq")  # magic, send time (time.time_ns()): the head of every load body
FIXED_RATE = 5000.0  # msg/s this machine sustains with broker, producer and consumer on its 2 cores
MIB = 1 << 20
READY_TIMEOUT_S = 60.0
CONTROL_PERIOD_S = 3.0  # OMB WorkloadGenerator.findMaximumSustainableRate
BACKLOG_LIMIT = 1000  # OMB RateController PUBLISH_BACKLOG_LIMIT / RECEIVE_BACKLOG_LIMIT
MAX_RATE_START = 2000.0  # OMB starts at 10,000 msg/s; this machine's sustainable rate is below that
DRAINED_BELOW = 1000  # OMB buildAndDrainBacklog: drained when the backlog is <= max(1000, ...)
CATCH_UP_S = 10.0  # after the producer stops, the consumer gets this long to take the rest


def stamped_body(size: int, padding: bytes | None = None) -> bytes:
    """A body of `size` bytes (at least 12) that starts with the magic and time.time_ns()."""
    head = STAMP.pack(STAMP_MAGIC, time.time_ns())
    return head + (padding if padding is not None else b"p" * max(0, size - STAMP.size))


def sent_time_ns(body: bytes) -> int | None:
    """The send time stamped by `stamped_body`, or None for any other body."""
    if len(body) < STAMP.size or body[:4] != STAMP_MAGIC:
        return None
    return STAMP.unpack_from(body)[1]


# ---------------------------------------------------------------------------- the workloads


@dataclass(frozen=True, slots=True)
class Spec:
    """One standard workload; `omb` names the OpenMessaging Benchmark file it follows."""

    name: str
    queues: int
    body: int
    kind: str = "fixed"  # fixed | max | backlog
    omb: str = ""

    @property
    def title(self) -> str:
        size = f"{self.body // 1024} KiB" if self.body % 1024 == 0 else f"{self.body} B"
        rate = {"fixed": "fixed rate", "max": "max rate", "backlog": "backlog build + drain"}[self.kind]
        return f"1 topic / {self.queues} queue{'s' if self.queues > 1 else ''} / {size}, {rate}"


SPECS: dict[str, Spec] = {spec.name: spec for spec in (
    Spec("1-topic-1-queue-1kb", 1, 1024, omb="1-topic-1-partition-1kb.yaml"),
    Spec("1-topic-16-queues-1kb", 16, 1024, omb="1-topic-16-partitions-1kb.yaml"),
    Spec("1-topic-1-queue-100b", 1, 100, omb="1-topic-1-partition-100b.yaml"),
    Spec("1-topic-16-queues-100b", 16, 100, omb="1-topic-16-partition-100b.yaml"),
    Spec("max-rate-1-topic-16-queues-1kb", 16, 1024, kind="max",
         omb="1-topic-16-partitions-1kb.yaml with producerRate: 0"),
    Spec("backlog-1-topic-16-queues-1kb", 16, 1024, kind="backlog",
         omb="1-topic-100-partitions-1kb-4p-4c-200k-backlog.yaml (consumerBacklogSizeGB), scaled down"),
)}


@dataclass(frozen=True, slots=True)
class Load:
    """What the two load processes need (picklable: it crosses the spawn boundary)."""

    namesrv: str
    topic: str
    body: int
    window: int
    interval_s: float
    group: str
    timeout_ms: int = 3000


# ---------------------------------------------------------------------------- load processes


def child_main(role: str, load: Load, out: Any, go: Any, stop: Any, rate: Any, start_at: Any) -> None:
    """Body of a spawned load process (`role` producer or consumer); reports on `out`."""
    try:
        (_producer if role == "producer" else _consumer)(load, out, go, stop, rate, start_at)
    except BaseException:  # noqa: BLE001 - the parent must hear about any failure
        out.put(("error", role, traceback.format_exc()))
        raise
    finally:
        out.put(("done", role, None))


def _report_until_stopped(role: str, rec: Recorder, load: Load, out: Any, stop: Any, start_at: float) -> None:
    """Hand the recorder's snapshot to the parent at start_at + k * interval until `stop`."""
    k = 1
    while not stop.is_set():
        delay = start_at + k * load.interval_s - time.time()
        if delay > 0 and stop.wait(delay):
            break
        out.put(("interval", role, (k, rec.take())))
        k += 1


def _producer(load: Load, out: Any, go: Any, stop: Any, rate: Any, start_at: Any) -> None:
    work = SendWorkload(namesrv=load.namesrv, topic=load.topic, body=load.body, mode="async",
                        window=load.window, timeout_ms=load.timeout_ms)
    producer = make_producer(f"omb_producer_{os.getpid()}", work)
    try:
        prime(producer, work)
        out.put(("ready", "producer", None))
        if not go.wait(READY_TIMEOUT_S):
            return
        rec = Recorder()
        sender = threading.Thread(target=send_paced, args=(producer, load, rate, rec, stop), daemon=True)
        sender.start()
        _report_until_stopped("producer", rec, load, out, stop, start_at.value)
        sender.join(load.timeout_ms / 1000 + 10.0)
        out.put(("tail", "producer", rec.take()))
    finally:
        producer.shutdown()


def send_paced(producer: Any, load: Load, rate: Any, rec: Recorder, stop: Any) -> None:
    """send_async stamped bodies at `rate.value` msg/s (0: as fast as the window allows)."""
    window = threading.Semaphore(load.window)
    padding = b"p" * max(0, load.body - STAMP.size)

    def done(future: Any, started: int) -> None:
        window.release()
        exc = future.exception()
        record_outcome(rec, 1, started, None if exc else future.result(), exc)

    due = time.perf_counter()
    while not stop.is_set():
        due = pace(due, rate.value)
        if not window.acquire(timeout=0.05):
            continue
        rec.offered(1)
        started = time.perf_counter_ns()
        try:
            future = producer.send_async(Message(load.topic, stamped_body(load.body, padding)))
        except ClientError as exc:
            window.release()
            record_outcome(rec, 1, started, None, exc)
            continue
        future.add_done_callback(partial(done, started=started))
    deadline = time.monotonic() + load.timeout_ms / 1000 + 5.0
    for _ in range(load.window):  # every answer (or timeout) is counted before the tail report
        if not window.acquire(timeout=max(0.0, deadline - time.monotonic())):
            break


def pace(due: float, sends_per_s: float, sleep: Callable[[float], Any] = time.sleep) -> float:
    """Sleep until the next send is due at `sends_per_s`; returns the new due time (perf_counter).
    A late wake-up is caught up by the next sends; a deficit of more than 1 s is given up."""
    now = time.perf_counter()
    if sends_per_s <= 0:
        return now
    due += 1.0 / sends_per_s
    if due - now > 0:
        sleep(due - now)
    elif due - now < -1.0:  # far behind (window full): do not burst to catch up
        due = now
    return due


class LatencyRecorder:
    """PushConsumer listener: receive time - stamped send time of every stamped message."""

    def __init__(self) -> None:
        self.rec = Recorder()

    def __call__(self, messages: list) -> ConsumeStatus:
        now_ns = time.time_ns()
        for message in messages:
            sent = sent_time_ns(message.body)
            if sent is not None:  # the producer's unstamped priming message is not load
                self.rec.ok(1, max(0, now_ns - sent) // 1000)
        return ConsumeStatus.CONSUME_SUCCESS


def _consumer(load: Load, out: Any, go: Any, stop: Any, rate: Any, start_at: Any) -> None:
    """The consumer starts when `rate` (here: the resume flag) becomes non-zero."""
    listener = LatencyRecorder()
    consumer = PushConsumer(load.group, load.namesrv, consume_from=ConsumeFromWhere.FIRST_OFFSET)
    consumer.subscribe(load.topic)
    consumer.register_listener(listener)
    started = False
    try:
        if rate.value:
            consumer.start()
            started = True
        out.put(("ready", "consumer", None))
        if not go.wait(READY_TIMEOUT_S):
            return
        if not started:
            threading.Thread(target=_start_when_resumed, args=(consumer, rate, stop), daemon=True).start()
        _report_until_stopped("consumer", listener.rec, load, out, stop, start_at.value)
        out.put(("tail", "consumer", listener.rec.take()))
    finally:
        consumer.shutdown()


def _start_when_resumed(consumer: PushConsumer, resume: Any, stop: Any) -> None:
    while not resume.value:
        if stop.wait(0.05):
            return
    consumer.start()


# ---------------------------------------------------------------------------- the parent


@dataclass
class Row:
    """One interval as the parent saw it."""

    t: float  # seconds since the load started, at the interval's end
    pub: Snapshot
    con: Snapshot
    target_rate: float
    published: int  # totals since the start, for the backlog
    consumed: int
    counters: dict[str, int]
    procs: dict[str, Any]


class Session:
    """The producer and consumer processes of one workload, kept in step; rows as they complete."""

    def __init__(self, load: Load, rate: float, consumer_paused: bool, monitor: Any) -> None:
        self.load, self.monitor = load, monitor
        self.ctx = mp.get_context("spawn")
        self.out = self.ctx.Queue()
        self.go = self.ctx.Event()
        self.stop_producer, self.stop_consumer = self.ctx.Event(), self.ctx.Event()
        self.rate = self.ctx.Value("d", rate, lock=False)
        self.resume = self.ctx.Value("d", 0.0 if consumer_paused else 1.0, lock=False)
        self.start_at = self.ctx.Value("d", 0.0, lock=False)
        self.pending: dict[str, dict[int, Snapshot]] = {"producer": {}, "consumer": {}}
        self.tails: dict[str, Snapshot] = {}
        self.done: set[str] = set()
        self.published = self.consumed = 0
        self.k = 0
        self.procs = {
            role: self.ctx.Process(target=child_main, name=f"omb-{role}", daemon=True,
                                   args=(role, load, self.out, self.go, stop, flag, self.start_at))
            for role, stop, flag in (("consumer", self.stop_consumer, self.resume),
                                     ("producer", self.stop_producer, self.rate))}

    @property
    def pids(self) -> dict[str, int]:
        return {role: proc.pid for role, proc in self.procs.items() if proc.pid is not None}

    def start(self) -> None:
        for proc in self.procs.values():
            proc.start()
        ready: set[str] = set()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while len(ready) < 2:
            kind, role, _payload = self._get(deadline)
            if kind == "ready":
                ready.add(role)
        self.start_at.value = time.time() + 0.3
        self.sample_at_start = self.sample()
        self.go.set()

    def _get(self, deadline: float) -> tuple[str, str, Any]:
        while True:
            try:
                kind, role, payload = self.out.get(timeout=0.2)
            except queue.Empty:
                if any(p.exitcode not in (None, 0) for p in self.procs.values()):
                    raise RuntimeError("a load process died; see its traceback above") from None
                if time.monotonic() > deadline:
                    raise TimeoutError("the load processes did not answer in time") from None
                continue
            if kind == "error":
                raise RuntimeError(f"the {role} process failed:\n{payload}")
            if kind == "interval":
                k, snap = payload
                self.pending[role][k] = snap
            elif kind == "tail":
                self.tails[role] = payload
            elif kind == "done":
                self.done.add(role)
            return kind, role, payload

    def next_row(self) -> Row:
        """Blocks until both processes reported the next interval."""
        k = self.k + 1
        deadline = time.monotonic() + self.load.interval_s * 3 + 30.0
        while k not in self.pending["producer"] or k not in self.pending["consumer"]:
            self._get(deadline)
        self.k = k
        pub, con = self.pending["producer"].pop(k), self.pending["consumer"].pop(k)
        self.published += pub.ok_msgs
        self.consumed += con.ok_msgs
        counters, procs = self.sample()
        return Row(k * self.load.interval_s, pub, con, self.rate.value, self.published, self.consumed,
                   counters, procs)

    def sample(self) -> tuple[dict[str, int], dict[str, Any]]:
        procs = self.monitor.sample()
        for role, pid in self.pids.items():
            sample = proc_sample(pid)
            if sample is not None:
                procs[role] = sample
        procs[MACHINE] = machine_sample()
        return self.monitor.counters(), procs

    def finish(self) -> None:
        """Stop the producer, give the consumer CATCH_UP_S to take the rest, stop it, join both."""
        self.stop_producer.set()
        deadline = time.monotonic() + self.load.timeout_ms / 1000 + 20.0
        while "producer" not in self.done and time.monotonic() < deadline:
            self._drain_one(deadline)
        published = self.published + sum(s.ok_msgs for s in self.pending["producer"].values())
        published += self.tails.get("producer", Snapshot()).ok_msgs
        deadline = time.monotonic() + CATCH_UP_S
        while time.monotonic() < deadline and self._consumed_so_far() < published:
            self._drain_one(deadline)
        self.stop_consumer.set()
        deadline = time.monotonic() + 30.0
        while "consumer" not in self.done and time.monotonic() < deadline:
            self._drain_one(deadline)
        self.left_unconsumed = max(0, published - self._consumed_so_far())

    def _consumed_so_far(self) -> int:
        return (self.consumed + sum(s.ok_msgs for s in self.pending["consumer"].values())
                + self.tails.get("consumer", Snapshot()).ok_msgs)

    def _drain_one(self, deadline: float) -> None:
        try:
            self._get(deadline)
        except TimeoutError:
            pass

    def close(self) -> None:
        self.stop_producer.set()
        self.stop_consumer.set()
        for proc in self.procs.values():
            if proc.pid is None:
                continue
            proc.join(timeout=15)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)


# ---------------------------------------------------------------------------- driving a workload


class RateController:
    """OMB's max-sustainable-rate controller (RateController.nextRate, without latency targets)."""

    def __init__(self, min_factor: float = 0.01, max_factor: float = 1.0) -> None:
        self.min_factor, self.max_factor = min_factor, max_factor
        self.factor = max_factor
        self.published = self.received = 0

    def next_rate(self, rate: float, seconds: float, published: int, received: int) -> float:
        expected = rate * seconds
        delta_pub, delta_rec = published - self.published, received - self.received
        self.published, self.received = published, received
        receive_backlog = published - received
        if receive_backlog > BACKLOG_LIMIT:
            return self._toward(seconds, delta_rec, expected, receive_backlog)
        publish_backlog = expected - delta_pub
        if publish_backlog > BACKLOG_LIMIT:
            return self._toward(seconds, delta_pub, expected, publish_backlog)
        self.factor = min(self.max_factor, self.factor * 2)
        return rate * (1 + self.factor)

    def _toward(self, seconds: float, actual: float, expected: float, backlog: float) -> float:
        """Slow down toward what was achieved, less the backlog to work off."""
        self.factor = max(self.min_factor, self.factor / 2)
        next_expected = max(0.0, expected - backlog)
        return 0.2 * actual / seconds + 0.8 * next_expected / seconds


@dataclass
class Outcome:
    """The rows of one run and which of them were measured, plus the backlog phases."""

    rows: list[Row] = field(default_factory=list)
    measured: list[Row] = field(default_factory=list)
    phases: dict[str, Any] = field(default_factory=dict)


def interval_line(row: Row, prev: Row | None) -> str:
    seconds = row.t - (prev.t if prev else 0.0)
    pub, e2e = row.pub.latency.summary_ms(), row.con.latency.summary_ms()
    published, consumed = fmt_rate(row.pub.ok_msgs / seconds), fmt_rate(row.con.ok_msgs / seconds)
    return (f"[{row.t:6.1f}s] target {fmt_rate(row.target_rate):>7} | pub {published:>7} msg/s "
            f"p50 {fmt_ms(pub['p50'])} p99 {fmt_ms(pub['p99'])} | cons {consumed:>7} msg/s "
            f"e2e p50 {fmt_ms(e2e['p50'])} p99 {fmt_ms(e2e['p99'])} | backlog "
            f"{fmt_rate(max(0, row.published - row.consumed))} | failed {row.pub.failed}"
            + (" (" + ", ".join(f"{r} {n}" for r, n in sorted(row.pub.failures.items())) + ")"
               if row.pub.failures else ""))


def drive(session: Session, spec: Spec, args: argparse.Namespace) -> Outcome:
    outcome = Outcome()
    controller = RateController()
    backlog_msgs = int(args.backlog_mib * MIB // spec.body)
    last_control, prev = 0.0, None
    while True:
        row = session.next_row()
        outcome.rows.append(row)
        print(interval_line(row, prev), flush=True)
        prev = row
        if spec.kind == "backlog":
            if _backlog_step(session, row, outcome, backlog_msgs, args):
                break
            continue
        if row.t > args.warmup + 1e-6:
            outcome.measured.append(row)
        if spec.kind == "max" and row.t - last_control >= CONTROL_PERIOD_S - 1e-6:
            session.rate.value = controller.next_rate(session.rate.value, row.t - last_control,
                                                      row.published, row.consumed)
            last_control = row.t
        if row.t >= args.warmup + args.duration - 1e-6:
            break
    if spec.kind == "max":  # the controller's ramp is not the result: the second half is
        outcome.measured = outcome.measured[len(outcome.measured) // 2:]
    return outcome


def _backlog_step(session: Session, row: Row, outcome: Outcome, backlog_msgs: int,
                  args: argparse.Namespace) -> bool:
    """Backlog state machine: build -> drain -> done (True). The drain is the measured phase."""
    phases = outcome.phases
    backlog = row.published - row.consumed
    if "resumed_at" not in phases:
        if backlog >= backlog_msgs or row.t >= args.timeout:
            phases.update(resumed_at=row.t, backlog_built=backlog, build_published=row.published)
            print(f"backlog of {backlog:,} messages built in {row.t:.1f} s: starting the consumer",
                  flush=True)
            session.resume.value = 1.0
        return False
    outcome.measured.append(row)
    if backlog <= DRAINED_BELOW or row.t - phases["resumed_at"] >= args.timeout:
        phases.update(drained_at=row.t, backlog_left=backlog)
        print(f"backlog drained to {backlog:,} in {row.t - phases['resumed_at']:.1f} s", flush=True)
        return True
    return False


# ---------------------------------------------------------------------------- figures


def summarize(spec: Spec, outcome: Outcome, session: Session, rate: float) -> dict[str, Any]:
    rows = outcome.measured
    start = outcome.rows[outcome.rows.index(rows[0]) - 1] if outcome.rows.index(rows[0]) else None
    seconds = rows[-1].t - (start.t if start else 0.0)
    pub, con = merge_all([r.pub for r in rows]), merge_all([r.con for r in rows])
    failures = dict(pub.failures)
    for reason, n in session.tails.get("producer", Snapshot()).failures.items():
        failures[reason] = failures.get(reason, 0) + n
    result: dict[str, Any] = {
        "msgs_per_s": pub.ok_msgs / seconds, "consume_msgs_per_s": con.ok_msgs / seconds,
        "mb_per_s": pub.ok_msgs * spec.body / seconds / MIB,
        "consume_mb_per_s": con.ok_msgs * spec.body / seconds / MIB,
        "rt_ms": pub.latency.summary_ms(), "e2e_ms": con.latency.summary_ms(),
        "failed": sum(failures.values()), "failures": failures, "seconds": round(seconds, 3),
        "target_rate": rate if spec.kind != "max" else None,  # max: the controller's target oscillates
        "backlog_end": max(0, rows[-1].published - rows[-1].consumed),
        "unconsumed_after_stop": session.left_unconsumed,
    }
    if spec.kind == "backlog":
        result["backlog"] = backlog_figures(outcome)
    return result


def backlog_figures(outcome: Outcome) -> dict[str, Any]:
    phases = outcome.phases
    drain_s = phases.get("drained_at", outcome.rows[-1].t) - phases["resumed_at"]
    consumed = sum(r.con.ok_msgs for r in outcome.measured)
    return {"backlog_msgs": phases["backlog_built"], "build_s": phases["resumed_at"],
            "build_publish_msgs_per_s": phases["build_published"] / phases["resumed_at"],
            "drain_s": round(drain_s, 3), "drain_consume_msgs_per_s": consumed / drain_s if drain_s else 0.0,
            "backlog_left": phases.get("backlog_left")}


def broker_section(outcome: Outcome, session: Session) -> dict[str, Any]:
    rows = outcome.measured
    index = outcome.rows.index(rows[0])
    (c0, p0) = (outcome.rows[index - 1].counters, outcome.rows[index - 1].procs) if index else \
        session.sample_at_start
    seconds = rows[-1].t - (outcome.rows[index - 1].t if index else 0.0)
    broker = broker_figures(c0, rows[-1].counters, seconds)
    broker["cpu_cores"] = cores_with_others(p0, rows[-1].procs, seconds)
    return broker


def cores_with_others(before: dict[str, Any], after: dict[str, Any], seconds: float) -> dict[str, float]:
    """CPU cores per process; the machine's busy time beyond them becomes `other programs`."""
    cores = cpu_cores(before, after, seconds)
    if MACHINE in cores:
        cores["other programs"] = round(max(0.0, cores.pop(MACHINE) - sum(cores.values())), 3)
    return cores


def intervals_json(outcome: Outcome) -> list[dict[str, Any]]:
    rows, prev_t = [], 0.0
    for row in outcome.rows:
        seconds = row.t - prev_t
        prev_t = row.t
        rows.append({"t": row.t, "msgs_per_s": row.pub.ok_msgs / seconds,
                     "consume_msgs_per_s": row.con.ok_msgs / seconds, "target_rate": row.target_rate,
                     "backlog": max(0, row.published - row.consumed), "rt_ms": row.pub.latency.summary_ms(),
                     "e2e_ms": row.con.latency.summary_ms(), "failed": row.pub.failed})
    return rows


def result_table(spec: Spec, result: dict[str, Any], broker: dict[str, Any]) -> str:
    pub, e2e = result["rt_ms"], result["e2e_ms"]

    def lat(s: dict[str, float]) -> str:
        return " / ".join(fmt_ms(s[k]) for k in ("avg", "p50", "p99", "p999", "max"))

    rows = [("publish msg/s (acknowledged) / MB/s",
             f"{fmt_rate(result['msgs_per_s'])} / {result['mb_per_s']:.1f}"),
            ("consume msg/s / MB/s",
             f"{fmt_rate(result['consume_msgs_per_s'])} / {result['consume_mb_per_s']:.1f}"),
            ("target rate msg/s", fmt_rate(result["target_rate"])),
            ("publish latency avg / p50 / p99 / p99.9 / max ms", lat(pub)),
            ("end-to-end latency avg / p50 / p99 / p99.9 / max ms", lat(e2e)),
            ("publish failures", f"{result['failed']} {result['failures'] or ''}".strip()),
            ("backlog at the end / unconsumed after stop",
             f"{result['backlog_end']:,} / {result['unconsumed_after_stop']:,}"),
            ("CPU cores", " ".join(f"{n} {c:.2f}" for n, c in sorted(broker.get("cpu_cores", {}).items())
                                   if c >= 0.005) or "-")]
    if "backlog" in result:
        b = result["backlog"]
        built = f"{b['backlog_msgs']:,} in {b['build_s']:.1f} s at {fmt_rate(b['build_publish_msgs_per_s'])}"
        rows[2:2] = [("backlog built (msgs) in s, at publish msg/s", built),
                     ("drained in s, consume msg/s while draining",
                      f"{b['drain_s']:.1f} s at {fmt_rate(b['drain_consume_msgs_per_s'])}")]
    return table(rows, (f"{spec.name}: {spec.title}", "value"), align="ll")


# ---------------------------------------------------------------------------- running


def run_workload(spec: Spec, args: argparse.Namespace) -> dict[str, Any]:
    """Start (or use) a broker, run one workload, print and return its JSON record."""
    rate = 0.0 if spec.kind == "max" else args.rate
    target: Target = open_target(args)
    try:
        topic = f"{args.topic_prefix}-{spec.name}-{os.getpid()}-{int(time.time())}"
        create_topic(target.namesrv, topic, spec.queues)
        load = Load(namesrv=target.namesrv, topic=topic, body=spec.body, window=args.window,
                    interval_s=args.interval, group=f"omb_sub_{os.getpid()}_{int(time.time())}")
        print(f"\n=== {spec.name}: {spec.title} (OMB {spec.omb}); topic {topic}, "
              f"{'rate found by the controller' if spec.kind == 'max' else f'{rate:,.0f} msg/s'}, "
              f"window {args.window}", flush=True)
        session = Session(load, MAX_RATE_START if spec.kind == "max" else rate, spec.kind == "backlog",
                          target.monitor)
        try:
            session.start()
            outcome = drive(session, spec, args)
            session.finish()
        finally:
            session.close()
        result, broker = summarize(spec, outcome, session, rate), broker_section(outcome, session)
    finally:
        target.close()
    print(result_table(spec, result, broker), flush=True)
    record = new_result("workload", spec.name, config_json(spec, args, load, target))
    record.update(result=result, broker=broker, intervals=intervals_json(outcome))
    record["machine"]["busy_cores_before"] = target.busy_before
    return record


def config_json(spec: Spec, args: argparse.Namespace, load: Load, target: Target) -> dict[str, Any]:
    return {"workload": spec.name, "title": spec.title, "omb": spec.omb, "kind": spec.kind,
            "flush": target.flush, "mode": "async", "body": spec.body, "batch": 1, "queues": spec.queues,
            "concurrency": args.window, "rate": 0.0 if spec.kind == "max" else args.rate,
            "producers": 1, "consumers": 1, "duration_s": args.duration, "warmup_s": args.warmup,
            "backlog_mib": args.backlog_mib if spec.kind == "backlog" else None, "load": asdict(load),
            "broker": "throwaway (--start-broker)" if args.start_broker else args.namesrv}


# ---------------------------------------------------------------------------- the same workload via locust

LOCUST_USERS = ("AsyncProducerUser", "PushConsumerUser")
LOCUSTFILE = str(Path(__file__).resolve().parent / "locustfile.py")


def compare_with_locust(spec: Spec, args: argparse.Namespace, bench: dict[str, Any]) -> dict[str, Any]:
    """Run `spec` through loadtest/locustfile.py (one AsyncProducerUser at the same rate and window,
    one PushConsumerUser; see locust_layout) on a fresh broker; print both runs' figures and
    locust / bench.py."""
    if spec.kind != "fixed":
        raise SystemExit("--compare-locust compares fixed-rate workloads")
    target: Target = open_target(args)
    try:
        figures, cores = run_locust(spec, args, target)
    finally:
        target.close()
    layout = locust_layout(args)
    label = f"{spec.name} (locust, {len(layout)} process{'es' if len(layout) > 1 else ''})"
    record = new_result("locust", label, {**bench["config"], "tool": "locust",
                                          "locust_processes": {k: list(v) for k, v in layout.items()}})
    record["result"] = {**figures, "target_rate": args.rate}
    record["broker"] = {"cpu_cores": cores}
    record["comparison"] = comparison(bench["result"], figures)
    record["machine"]["busy_cores_before"] = target.busy_before
    rows = [(c["what"], _fmt_figure(c["bench"]), _fmt_figure(c["locust"]), f"{c['ratio']:.2f}",
             "yes" if c["within_20pct"] else "NO") for c in record["comparison"]]
    header = (f"{spec.name}: bench.py vs locust", "bench.py", "locust", "locust / bench", "within 20 %")
    print(table(rows, header))
    print("CPU cores: "
          + " ".join(f"{n} {c:.2f}" for n, c in sorted(cores.items()) if c >= 0.005))
    return record


def locust_layout(args: argparse.Namespace) -> dict[str, tuple[str, ...]]:
    """Locust processes to start -> their user classes: by default the producer and the consumer in
    two processes, as bench.py runs them; --locust-one-process puts both users in one."""
    if args.locust_one_process:
        return {"locust": LOCUST_USERS}
    return {f"locust-{user[:-len('User')].lower()}": (user,) for user in LOCUST_USERS}


def run_locust(spec: Spec, args: argparse.Namespace,
               target: Target) -> tuple[dict[str, Any], dict[str, float]]:
    """One headless locust run of `spec`; (figures over the measured window, CPU cores per process)."""
    topic = f"{args.topic_prefix}-locust-{spec.name}-{os.getpid()}-{int(time.time())}"
    create_topic(target.namesrv, topic, spec.queues)  # before either process starts, as for bench.py
    env = {**os.environ, "RMQD_NAMESRV": target.namesrv, "RMQD_TOPIC": topic, "RMQD_QUEUES": "0",
           "RMQD_BODY_SIZE": str(spec.body), "RMQD_RATE": str(args.rate), "RMQD_WINDOW": str(args.window),
           "RMQD_CONSUME_FROM": "first", "RMQD_GROUP": f"omb_locust_{os.getpid()}_{int(time.time())}"}
    seconds = args.warmup + args.duration
    with tempfile.TemporaryDirectory(prefix="rmqd-locust-") as tmp:
        procs = {}
        for name, users in locust_layout(args).items():
            cmd = [sys.executable, "-m", "locust", "-f", LOCUSTFILE, "--headless", "-u", str(len(users)),
                   "-r", str(len(users)), "-t", f"{seconds:g}s", "--stop-timeout", "15",
                   "--csv", os.path.join(tmp, name), "--csv-full-history", "--only-summary",
                   "--loglevel", "WARNING", *users]
            print(f"\n=== {spec.name} via locust ({name}): RMQD_RATE={args.rate:g} RMQD_WINDOW={args.window} "
                  f"RMQD_BODY_SIZE={spec.body} (topic of {spec.queues} queues) {' '.join(cmd[1:])}",
                  flush=True)
            procs[name] = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                           text=True)
        try:
            cores = _watch_locust(target, procs, args.warmup, seconds)
            for name, proc in procs.items():
                output, _ = proc.communicate(timeout=seconds + 120)
                print(output[-3000:], flush=True)
                if proc.returncode not in (0, 1):  # 1: some request failed (counted in the figures)
                    raise SystemExit(f"locust ({name}) exited with {proc.returncode}")
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(10)
        prefixes = [os.path.join(tmp, name) for name in procs]
        figures = locust_figures(prefixes, topic, args.warmup)
    return figures, cores


def _watch_locust(target: Target, procs: dict[str, Any], warmup_s: float, seconds: float) -> dict[str, float]:
    """CPU cores per process from the end of the warm-up to the last sample before locust stops."""
    launched = time.monotonic()
    before = after = _locust_sample(target, procs)
    started = ended = launched
    while time.monotonic() - launched < seconds and all(p.poll() is None for p in procs.values()):
        time.sleep(0.5)
        if any(p.poll() is not None for p in procs.values()):
            break
        if started == launched and time.monotonic() - launched >= warmup_s:
            before, started = _locust_sample(target, procs), time.monotonic()
        else:
            after, ended = _locust_sample(target, procs), time.monotonic()
    return cores_with_others(before, after, ended - started)


def _locust_sample(target: Target, procs: dict[str, Any]) -> dict[str, Any]:
    samples = target.monitor.sample()
    for name, proc in procs.items():
        sample = proc_sample(proc.pid)
        if sample is not None:
            samples[name] = sample
    samples[MACHINE] = machine_sample()
    return samples


def locust_figures(prefixes: list[str], topic: str, warmup_s: float) -> dict[str, Any]:
    """Rates and average latencies over the measured window from locust's --csv-full-history
    (cumulative totals once a second), percentiles of the whole run from its final --csv stats;
    each request type is read from the run (--csv prefix) that has it."""
    final: dict[tuple[str, str], dict[str, str]] = {}
    history: dict[tuple[str, str], list[dict[str, str]]] = {}
    first_t: dict[tuple[str, str], int] = {}
    for prefix in prefixes:
        with open(f"{prefix}_stats.csv", newline="") as f:
            final.update({(r["Type"], r["Name"]): r for r in csv.DictReader(f) if r["Type"]})
        with open(f"{prefix}_stats_history.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        began = min(int(r["Timestamp"]) for r in rows)
        for row in rows:
            if row["Type"]:
                history.setdefault((row["Type"], row["Name"]), []).append(row)
                first_t[(row["Type"], row["Name"])] = began
    figures: dict[str, Any] = {}
    for key, request in (("publish", ("SEND_ASYNC", topic)), ("e2e", ("CONSUME", f"push {topic}"))):
        rows = history[request]
        start = next(r for r in rows if int(r["Timestamp"]) - first_t[request] >= warmup_s)
        end = rows[-1]
        seconds = int(end["Timestamp"]) - int(start["Timestamp"])
        n0, n1 = int(start["Total Request Count"]), int(end["Total Request Count"])
        total_ms = (float(end["Total Average Response Time"]) * n1
                    - float(start["Total Average Response Time"]) * n0)
        whole = final[request]
        figures[key] = {"msgs_per_s": (n1 - n0) / seconds, "avg_ms": total_ms / max(1, n1 - n0),
                        "seconds": seconds, "requests": int(whole["Request Count"]),
                        "failed": int(whole["Failure Count"]),
                        "p50_ms": _num(whole["50%"]), "p99_ms": _num(whole["99%"]),
                        "p999_ms": _num(whole["99.9%"]), "max_ms": _num(whole["Max Response Time"])}
    publish, e2e = figures["publish"], figures["e2e"]
    return {"msgs_per_s": publish["msgs_per_s"], "consume_msgs_per_s": e2e["msgs_per_s"],
            "failed": publish["failed"],
            "rt_ms": {"avg": publish["avg_ms"], "p50": publish["p50_ms"], "p99": publish["p99_ms"],
                      "p999": publish["p999_ms"], "max": publish["max_ms"]},
            "e2e_ms": {"avg": e2e["avg_ms"], "p50": e2e["p50_ms"], "p99": e2e["p99_ms"],
                       "p999": e2e["p999_ms"], "max": e2e["max_ms"]},
            "seconds": publish["seconds"], "locust": figures}


def _num(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def comparison(bench: dict[str, Any], locust: dict[str, Any]) -> list[dict[str, Any]]:
    """locust / bench.py for the throughputs and the exact (average) latencies; percentiles of
    locust are rounded to whole ms below 100 ms, so they are shown but not compared."""
    pairs = [("publish msg/s", bench["msgs_per_s"], locust["msgs_per_s"]),
             ("consume msg/s", bench["consume_msgs_per_s"], locust["consume_msgs_per_s"]),
             ("publish latency avg ms", bench["rt_ms"]["avg"], locust["rt_ms"]["avg"]),
             ("e2e latency avg ms", bench["e2e_ms"]["avg"], locust["e2e_ms"]["avg"]),
             ("publish latency p50 ms (locust: whole ms)", bench["rt_ms"]["p50"], locust["rt_ms"]["p50"]),
             ("publish latency p99 ms", bench["rt_ms"]["p99"], locust["rt_ms"]["p99"]),
             ("e2e latency p50 ms (locust: whole ms)", bench["e2e_ms"]["p50"], locust["e2e_ms"]["p50"]),
             ("e2e latency p99 ms", bench["e2e_ms"]["p99"], locust["e2e_ms"]["p99"])]
    out = []
    for what, ours, theirs in pairs:
        ratio = (theirs or 0.0) / ours if ours else 0.0
        out.append({"what": what, "bench": ours, "locust": theirs, "ratio": round(ratio, 3),
                    "within_20pct": 0.8 <= ratio <= 1.2})
    return out


def _fmt_figure(value: float | None) -> str:
    if value is None:
        return "-"
    return fmt_rate(value) if value >= 100 else fmt_ms(value)


def selected(names: list[str]) -> list[Spec]:
    if names == ["all"]:
        return list(SPECS.values())
    unknown = [n for n in names if n not in SPECS]
    if unknown:
        raise SystemExit(f"unknown workload(s) {', '.join(unknown)}; --list shows them")
    return [SPECS[n] for n in names]


def json_path(args: argparse.Namespace, spec: Spec, suffix: str = "") -> str | None:
    """--json DIR: DIR/workloads-NAME.json (the directory is created); --json FILE.json for one run."""
    if not args.json:
        return None
    if args.json.endswith(".json") and len(args.names) == 1 and not suffix:
        return args.json
    os.makedirs(args.json, exist_ok=True)
    return os.path.join(args.json, f"workloads-{spec.name}{suffix}.json")


def run(args: argparse.Namespace) -> int:
    if args.list or not args.names:
        print(table([(s.name, s.title, s.omb) for s in SPECS.values()], ("workload", "what", "follows OMB"),
                    align="lll"))
        return 0
    for spec in selected(args.names):
        record = run_workload(spec, args)
        path = json_path(args, spec)
        if path:
            write_json(path, record)
        if args.compare_locust:
            locust_record = compare_with_locust(spec, args, record)
            path = json_path(args, spec, "-locust")
            if path:
                write_json(path, locust_record)
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="*", metavar="NAME", help="workload names, or `all` (see --list)")
    parser.add_argument("--list", action="store_true", help="list the workloads")
    add_broker_arguments(parser,
                         start_help="start a throwaway broker per workload, stop it by PID at the end")
    load = parser.add_argument_group("load")
    load.add_argument("--rate", type=float, default=FIXED_RATE,
                      help=f"msg/s of the fixed-rate and backlog workloads ({FIXED_RATE:,.0f}; OMB: 50,000)")
    load.add_argument("-w", "--window", type=int, default=256, help="async sends in flight at most (256)")
    load.add_argument("--backlog-mib", type=float, default=128.0, help="backlog to build (128 MiB)")
    load.add_argument("--topic-prefix", default="omb", help="topics are PREFIX-NAME-PID-TIME")
    timing = parser.add_argument_group("timing and output")
    timing.add_argument("-d", "--duration", type=float, default=30.0, help="measured seconds (30)")
    timing.add_argument("--warmup", type=float, default=5.0, help="seconds run but not measured (5)")
    timing.add_argument("--interval", type=float, default=1.0, help="seconds between report lines (1)")
    timing.add_argument("--timeout", type=float, default=300.0,
                        help="backlog: give up building or draining after this many s")
    timing.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                        help="first wait up to SECONDS until other programs use < 0.2 cores")
    timing.add_argument("--json", metavar="DIR|FILE.json",
                        help="write each result as DIR/workloads-NAME.json (or FILE.json for one workload)")
    timing.add_argument("--compare-locust", action="store_true",
                        help="then run the same workload through locust (loadtest/locustfile.py) on a "
                             "fresh broker and print both with their ratios")
    timing.add_argument("--locust-one-process", action="store_true",
                        help="--compare-locust: producer and consumer users in one locust process "
                             "(default: one locust process each, as bench.py runs them)")
