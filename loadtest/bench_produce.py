"""`bench.py produce` and `bench.py overload`: the producer benchmark (RocketMQ's benchmark Producer).

    python loadtest/bench.py produce --start-broker --flush ASYNC_FLUSH -s 1024 -b 64 -m sync -t 8 -d 10
    python loadtest/bench.py produce --namesrv 127.0.0.1:9876 --store-dir ~/store -m async -w 512
    python loadtest/bench.py overload --start-broker --factor 3 -d 30

Load: `--processes` spawned processes, each with one Producer (rmqd.client) and `--threads` sender
threads. A sync sender has one request in flight (`send` / `send_batch`); an async sender keeps up to
`--window` (`send_async` / `send_batch_async`); a oneway sender fires `send_oneway` and counts what
it handed off. `--rate` paces the senders (total msg/s); 0 sends as fast as they can. Every
`--interval` seconds each process hands a Snapshot (ok/failed counts, latency histogram) to the
parent, which prints one line (send TPS, RT avg/p50/p99/max, failures, and the broker's own counters:
stored msg/s, messages per group commit, messages per fsync), then a final table, the ceilings
measured in the same run (ceilings.py) and each result as a fraction of them, and the issue 4 targets
that apply. `--json PATH` saves everything (see README for the shape).

Overload (issue 4 Done-when 4): measure capacity (or take `--capacity`), offer `--factor` times it
with many async senders, large windows and no SDK retries for `--duration`, sampling the RSS of every
broker process every second, then measure a lone synchronous sender the moment the load stops.

The parent process only orchestrates and watches (broker counters, psutil): it sends nothing itself
except the recovery probe. Processes are started with `spawn` (no zmq context crosses a fork).
"""
from __future__ import annotations

import argparse
import inspect
import itertools
import multiprocessing as mp
import os
import queue
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loadtest import ceilings as ceil  # noqa: E402
from loadtest._broker import (  # noqa: E402
    BrokerMonitor,
    ProcSample,
    PySpyRecorder,
    ThrowawayBroker,
    add_broker_arguments,
    counter_delta,
    cpu_cores,
    machine_busy_cores,
    machine_sample,
    proc_sample,
)
from loadtest._stats import (  # noqa: E402
    Histogram,
    Recorder,
    Snapshot,
    fmt_fraction,
    fmt_ms,
    fmt_rate,
    merge_all,
    new_result,
    table,
    write_json,
)
from rmqd.client import Message, MQAdmin, Producer, SendStatus  # noqa: E402
from rmqd.errors import ClientError, MQBrokerError, RemotingTimeoutError  # noqa: E402
from rmqd.protocol import RequestCode, ResponseCode, decode, encode_batch, encode_request  # noqa: E402
from rmqd.protocol.codec import FRAME_PREFIX_SIZE  # noqa: E402
from rmqd.store.record import Prop, encode_properties  # noqa: E402

DEFAULT_TOPIC = "BenchmarkTest"  # RocketMQ's benchmark topic
READY_TIMEOUT_S = 60.0
START_MARGIN_S = 0.3
MIB = 1 << 20
MACHINE = "_machine"  # pseudo process: the whole machine's busy CPU
WINDOWED = ("async", "flood")  # modes with many requests in flight per sender thread
BUSY_WARNING_CORES = 0.2
FIRST_OPAQUE = 10**11  # flood opaques: always OPAQUE_DIGITS decimal digits
OPAQUE_DIGITS = 12
QUEUE_SPREAD = 8  # the flood sender spreads its requests over queue ids 0..7 (the broker folds them)
BACK_PRESSURE = "not sent: back pressure"  # flood: the socket's send queue was full (SNDHWM)
RESPONSE_HEAD, OPAQUE_KEY = b'{"code":', b'"opaque":'
FLOOD_BURST = 64  # flood requests sent back to back before answers are read
PROFILED = ("front", "writer", "flusher", "dispatcher")


# ---------------------------------------------------------------------------- workload


@dataclass(frozen=True, slots=True)
class Workload:
    """What every load process does (picklable: it crosses the spawn boundary)."""

    namesrv: str
    topic: str = DEFAULT_TOPIC
    body: int = 1024
    batch: int = 1
    mode: str = "sync"  # sync | async | oneway
    processes: int = 1
    threads: int = 1
    window: int = 256
    rate: float = 0.0  # total msg/s over all processes; 0 = as fast as possible
    retries: int = 2
    timeout_ms: int = 3000
    auto_batch: bool = False  # Producer(auto_batch=True): concurrent sync sends leave in batches

    @property
    def concurrency(self) -> int:
        """Requests that may be in flight at once over all processes."""
        per_thread = self.window if self.mode in WINDOWED else 1
        return self.processes * self.threads * per_thread


@dataclass(frozen=True, slots=True)
class Schedule:
    warmup_s: float = 1.0
    duration_s: float = 10.0
    interval_s: float = 2.0

    def boundaries(self, measure_at: float) -> list[float]:
        """Ends of the reporting intervals (wall clock); the last one is measure_at + duration."""
        ends, t = [], measure_at
        while t + self.interval_s < measure_at + self.duration_s - 1e-6:
            t += self.interval_s
            ends.append(t)
        return [*ends, measure_at + self.duration_s]


class Pacer:
    """Spaces one thread's sends so that it offers `msgs_per_s` (no-op when the rate is 0)."""

    def __init__(self, msgs_per_s: float, msgs_per_send: int) -> None:
        self.period = msgs_per_send / msgs_per_s if msgs_per_s > 0 else 0.0
        self.next = time.perf_counter()

    def wait(self) -> None:
        if not self.period:
            return
        self.next += self.period
        delay = self.next - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        elif delay < -1.0:  # far behind (window full): do not burst to catch up
            self.next = time.perf_counter()


def failure_reason(exc: BaseException) -> str:
    if isinstance(exc, MQBrokerError):
        return _code_name(exc.code)
    if isinstance(exc, RemotingTimeoutError):
        return "timeout"
    return type(exc).__name__


def record_outcome(rec: Recorder, msgs: int, started_ns: int, result: Any, exc: BaseException | None) -> None:
    if exc is not None:
        rec.failed(failure_reason(exc))
    elif result.status is SendStatus.SEND_OK:
        rec.ok(msgs, (time.perf_counter_ns() - started_ns) // 1000)
    else:
        rec.failed(result.status.value)


# ---------------------------------------------------------------------------- senders (load process)


def build_messages(work: Workload) -> list[Message]:
    body = os.urandom(work.body)
    return [Message(work.topic, body) for _ in range(work.batch)]


def sync_sender(producer: Producer, work: Workload, rec: Recorder, stop: threading.Event) -> None:
    msgs = build_messages(work)
    send: Callable[[], Any] = (partial(producer.send_batch, msgs) if work.batch > 1
                               else partial(producer.send, msgs[0]))
    pacer = Pacer(work.rate / (work.processes * work.threads), len(msgs))
    while not stop.is_set():
        pacer.wait()
        rec.offered(len(msgs))
        started = time.perf_counter_ns()
        try:
            result = send()
        except ClientError as exc:
            record_outcome(rec, len(msgs), started, None, exc)
            continue
        record_outcome(rec, len(msgs), started, result, None)


def async_sender(producer: Producer, work: Workload, rec: Recorder, stop: threading.Event) -> None:
    msgs = build_messages(work)
    if work.batch > 1:
        if not hasattr(producer, "send_batch_async"):
            raise SystemExit("--mode async with --batch > 1 needs Producer.send_batch_async; use --mode sync "
                             "with more --threads")
        submit: Callable[[], Any] = partial(producer.send_batch_async, msgs)
    else:
        submit = partial(producer.send_async, msgs[0])
    window = threading.Semaphore(work.window)
    pacer = Pacer(work.rate / (work.processes * work.threads), len(msgs))

    def done(future: Any, started: int) -> None:
        window.release()
        exc = future.exception()
        record_outcome(rec, len(msgs), started, None if exc else future.result(), exc)

    while not stop.is_set():
        pacer.wait()
        if not window.acquire(timeout=0.05):
            continue
        rec.offered(len(msgs))
        started = time.perf_counter_ns()
        try:
            future = submit()
        except ClientError as exc:
            window.release()
            record_outcome(rec, len(msgs), started, None, exc)
            continue
        future.add_done_callback(partial(done, started=started))
    drain_deadline = time.monotonic() + work.timeout_ms / 1000 + 2.0
    for _ in range(work.window):  # wait for the window to empty: every answer or timeout is counted
        if not window.acquire(timeout=max(0.0, drain_deadline - time.monotonic())):
            break


def oneway_sender(producer: Producer, work: Workload, rec: Recorder, stop: threading.Event) -> None:
    if work.batch > 1:
        raise SystemExit("--mode oneway sends single messages (RocketMQ sendOneway); drop --batch")
    msg = build_messages(work)[0]
    pacer = Pacer(work.rate / (work.processes * work.threads), 1)
    while not stop.is_set():
        pacer.wait()
        try:
            producer.send_oneway(msg)
        except ClientError as exc:
            rec.failed(failure_reason(exc))
            continue
        rec.offered(1)


class FloodSender:
    """Raw ZeroMQ sender (no SDK): the cheapest client that still waits for answers, for overload.

    One DEALER per thread to the (first) master broker; SEND_MESSAGE / SEND_BATCH_MESSAGE frames of
    the same wire format as the SDK's, without UNIQ_KEY; up to `window` requests in flight, each
    answered or counted as a timeout after `timeout_ms`. No retries. A Python SDK client costs more
    CPU per message than the broker on this 2-core machine; this one offers several times more.
    """

    def __init__(self, producer: Producer, work: Workload, rec: Recorder, stop: threading.Event) -> None:
        import zmq

        self.zmq, self.work, self.rec, self.stop = zmq, work, rec, stop
        with MQAdmin(work.namesrv) as admin:
            addr = admin.master_addrs()[0]
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        for option, value in ((zmq.LINGER, 0), (zmq.SNDHWM, 100_000), (zmq.RCVHWM, 100_000)):
            self.sock.setsockopt(option, value)
        self.sock.connect(f"tcp://{addr}")
        self.sent_at: dict[int, int] = {}
        self.opaques = itertools.count(FIRST_OPAQUE)
        self.templates = flood_templates(work)
        self.timeout_ns = work.timeout_ms * 1_000_000

    def run(self) -> None:
        work = self.work
        pacer = Pacer(work.rate / (work.processes * work.threads), work.batch * FLOOD_BURST)
        try:
            while not self.stop.is_set():
                self.take_answers()
                room = self.work.window - len(self.sent_at)
                if room <= 0:
                    self.expire(time.perf_counter_ns())
                    self.sock.poll(20)
                    continue
                pacer.wait()
                self.send_burst(min(room, FLOOD_BURST))
            deadline = time.monotonic() + self.work.timeout_ms / 1000 + 1.0
            while self.sent_at and time.monotonic() < deadline:
                if self.sock.poll(20):
                    self.take_answers()
                self.expire(time.perf_counter_ns())
            for _ in self.sent_at:
                self.rec.failed("timeout")
        finally:
            self.sock.close(0)

    def send_burst(self, count: int) -> None:
        """Send `count` requests back to back; one Recorder call for the burst."""
        sock, noblock, sent_at, templates = self.sock, self.zmq.NOBLOCK, self.sent_at, self.templates
        sent = 0
        for _ in range(count):
            opaque = next(self.opaques)
            template, at = templates[opaque % QUEUE_SPREAD]
            frame = bytearray(template)
            frame[at:at + OPAQUE_DIGITS] = b"%d" % opaque
            try:
                sock.send(frame, noblock)
            except self.zmq.Again:  # SNDHWM reached: the broker is not reading (TCP back pressure)
                break
            sent_at[opaque] = time.perf_counter_ns()
            sent += 1
        self.rec.offered(count * self.work.batch)
        if sent < count:
            self.rec.failed(BACK_PRESSURE, count - sent)

    def take_answers(self) -> None:
        """Read every answer waiting (no exception per empty read); one Recorder call for all."""
        sock, pollin, events, sent_at = self.sock, self.zmq.POLLIN, self.zmq.EVENTS, self.sent_at
        answers = Snapshot()
        while sock.getsockopt(events) & pollin:
            code, opaque = peek_code_opaque(sock.recv())
            started = sent_at.pop(opaque, None)
            if started is None:
                continue  # answered after we counted it as a timeout
            if code == ResponseCode.SUCCESS:
                answers.ok_msgs += self.work.batch
                answers.ok_requests += 1
                answers.latency.record((time.perf_counter_ns() - started) // 1000)
            else:
                reason = _code_name(code)
                answers.failures[reason] = answers.failures.get(reason, 0) + 1
        if answers.ok_requests or answers.failures:
            self.rec.add(answers)

    def expire(self, now_ns: int) -> None:
        while self.sent_at:
            opaque, started = next(iter(self.sent_at.items()))
            if now_ns - started < self.timeout_ns:
                return
            del self.sent_at[opaque]
            self.rec.failed("timeout")


def peek_code_opaque(frame: bytes) -> tuple[int, int]:
    """(code, opaque) of a response frame without parsing its JSON header when it has the usual
    shape `{"code":N,"opaque":M,...` (rmqd.protocol.codec writes it so); full decode otherwise."""
    code_start = FRAME_PREFIX_SIZE + len(RESPONSE_HEAD)
    if frame.startswith(RESPONSE_HEAD, FRAME_PREFIX_SIZE):
        code_end = frame.find(b",", code_start)
        if frame.startswith(OPAQUE_KEY, code_end + 1):
            start = code_end + 1 + len(OPAQUE_KEY)
            return int(frame[code_start:code_end]), int(frame[start:frame.find(b",", start)])
    reply = decode(frame)
    return reply.code, reply.opaque


def flood_templates(work: Workload) -> list[tuple[bytes, int]]:
    """One request frame per queue id (what the SDK sends, minus ids) and where its opaque sits.

    Opaques run from 10**11 up, so they always have OPAQUE_DIGITS digits and a send only patches
    them into a copy of the template: no JSON encoding per message.
    """
    body = os.urandom(work.body)
    properties = encode_properties({Prop.WAIT: "true"})
    code, payload = RequestCode.SEND_MESSAGE, body
    if work.batch > 1:
        code, payload = RequestCode.SEND_BATCH_MESSAGE, encode_batch([(0, body, properties)] * work.batch)
    templates = []
    for queue_id in range(QUEUE_SPREAD):
        fields = {"producerGroup": "benchmark_flood", "topic": work.topic, "defaultTopic": "TBW102",
                  "defaultTopicQueueNums": QUEUE_SPREAD, "sysFlag": 0, "bornHost": "127.0.0.1:0", "flag": 0,
                  "bornTimestamp": int(time.time() * 1000), "properties": properties.decode(),
                  "reconsumeTimes": 0, "batch": work.batch > 1, "queueId": queue_id}
        frame = encode_request(code, FIRST_OPAQUE, fields, payload)
        templates.append((frame, frame.index(b"%d" % FIRST_OPAQUE)))
    return templates


def _code_name(code: int) -> str:
    try:
        return ResponseCode(code).name
    except ValueError:
        return f"code {code}"


def flood_sender(producer: Producer, work: Workload, rec: Recorder, stop: threading.Event) -> None:
    FloodSender(producer, work, rec, stop).run()


SENDERS = {"sync": sync_sender, "async": async_sender, "oneway": oneway_sender, "flood": flood_sender}


def load_process(work: Workload, schedule: Schedule, index: int, out: Any, go: Any, start_at: Any) -> None:
    """Body of one spawned load process; reports ("kind", index, payload) tuples on `out`."""
    try:
        _load_process(work, schedule, index, out, go, start_at)
    except BaseException:  # noqa: BLE001 - the parent must hear about any failure
        out.put(("error", index, traceback.format_exc()))
        raise


def _load_process(work: Workload, schedule: Schedule, index: int, out: Any, go: Any, start_at: Any) -> None:
    producer = make_producer(f"benchmark_producer_{os.getpid()}", work)
    try:
        prime(producer, work)
        out.put(("ready", index, None))
        if not go.wait(READY_TIMEOUT_S):
            return
        rec, stop = Recorder(), threading.Event()
        sender = SENDERS[work.mode]
        threads = [threading.Thread(target=sender, args=(producer, work, rec, stop), daemon=True,
                                    name=f"sender-{i}") for i in range(work.threads)]
        _sleep_until(start_at.value)
        for thread in threads:
            thread.start()
        measure_at = start_at.value + schedule.warmup_s
        _sleep_until(measure_at)
        rec.take()  # warm-up: discarded
        for k, end in enumerate(schedule.boundaries(measure_at)):
            _sleep_until(end)
            out.put(("interval", index, (k, rec.take())))
        stop.set()
        for thread in threads:
            thread.join(work.timeout_ms / 1000 + 5.0)
        out.put(("tail", index, rec.take()))
    finally:
        producer.shutdown()
        out.put(("done", index, None))


def make_producer(group: str, work: Workload) -> Producer:
    """A started Producer with the workload's timeout, retries and (when the SDK has one) async window."""
    wanted = {"send_timeout_ms": work.timeout_ms, "retry_times_when_send_failed": work.retries,
              "retry_times_when_send_async_failed": work.retries,
              "back_pressure_for_async_send_num": max(10_000, work.threads * work.window),
              "auto_batch": work.auto_batch}
    accepted = inspect.signature(Producer).parameters
    producer = Producer(group, work.namesrv, **{k: v for k, v in wanted.items() if k in accepted})
    producer.start()
    return producer


def prime(producer: Producer, work: Workload) -> None:
    """One send before the clock starts: route lookup, connection, topic auto-creation (bounded)."""
    deadline = time.monotonic() + 30.0
    msg = Message(work.topic, b"prime")
    while True:
        try:
            producer.send(msg)
            return
        except ClientError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _sleep_until(wall_time: float) -> None:
    delay = wall_time - time.time()
    if delay > 0:
        time.sleep(delay)


# ---------------------------------------------------------------------------- orchestration (parent)


@dataclass
class LoadRun:
    """What the parent saw of one load: merged snapshots and broker samples per interval."""

    intervals: list[Snapshot] = field(default_factory=list)
    ends_s: list[float] = field(default_factory=list)  # interval ends, seconds since measuring began
    samples: list[tuple[dict[str, int], dict[str, ProcSample]]] = field(default_factory=list)
    tail: Snapshot = field(default_factory=Snapshot)
    errors: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def total(self) -> Snapshot:
        return merge_all(self.intervals)


class LoadRunner:
    """Spawns the load processes, keeps them in step, merges what they report, samples the broker."""

    def __init__(self, work: Workload, schedule: Schedule, monitor: BrokerMonitor,
                 on_interval: Callable[[LoadRun, int], None],
                 on_end: Callable[[], None] | None = None, profiler: PySpyRecorder | None = None) -> None:
        self.work, self.schedule, self.monitor = work, schedule, monitor
        self.on_interval, self.on_end, self.profiler = on_interval, on_end, profiler
        self.ctx = mp.get_context("spawn")
        self.out = self.ctx.Queue()
        self.run = LoadRun()
        self.pending: dict[int, list[Snapshot]] = {}
        self.done: set[int] = set()
        self.client_pids: dict[str, int] = {}

    def execute(self) -> LoadRun:
        go, start_at = self.ctx.Event(), self.ctx.Value("d", 0.0)
        procs = [self.ctx.Process(target=load_process, daemon=True, name=f"bench-load-{i}",
                                  args=(self.work, self.schedule, i, self.out, go, start_at))
                 for i in range(self.work.processes)]
        for proc in procs:
            proc.start()
        try:
            self.client_pids = {f"client-{i}": p.pid for i, p in enumerate(procs)}
            self._await_ready(procs)
            start_at.value = time.time() + START_MARGIN_S
            go.set()
            self._follow(start_at.value + self.schedule.warmup_s, procs)
        finally:
            for proc in procs:
                proc.join(timeout=10)
                if proc.is_alive():
                    proc.kill()
                    proc.join(timeout=5)
        if self.run.errors:
            raise RuntimeError("load process failed:\n" + "\n".join(self.run.errors))
        return self.run

    def _await_ready(self, procs: list[Any]) -> None:
        ready: set[int] = set()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while len(ready) < len(procs):
            kind, index, payload = self._get(deadline, procs)
            if kind == "ready":
                ready.add(index)
            elif kind == "error":
                raise RuntimeError(f"load process {index} failed to start:\n{payload}")

    def _get(self, deadline: float, procs: list[Any]) -> tuple[str, int, Any]:
        while True:
            try:
                return self.out.get(timeout=0.2)
            except queue.Empty:
                if any(p.exitcode not in (None, 0) for p in procs):
                    raise RuntimeError("a load process died; see its traceback above") from None
                if time.monotonic() > deadline:
                    raise TimeoutError("load processes did not answer in time") from None

    def _follow(self, measure_at: float, procs: list[Any]) -> None:
        ends = self.schedule.boundaries(measure_at)
        _sleep_until(measure_at)
        self.run.samples.append(self._sample())
        if self.profiler is not None:
            pids = {n: p.pid for n, p in self.monitor.processes().items() if n in PROFILED}
            self.profiler.start({**pids, **self.client_pids}, self.schedule.duration_s)
        for k, end in enumerate(ends):
            self._collect_until(end)
            self.run.samples.append(self._sample())
            self.run.ends_s.append(end - measure_at)
            if k == len(ends) - 1 and self.on_end is not None:
                self.on_end()
        self.run.elapsed_s = ends[-1] - measure_at
        deadline = time.monotonic() + self.work.timeout_ms / 1000 + 30.0
        while len(self.done) < len(procs) and time.monotonic() < deadline:
            self._handle(*self._get(deadline, procs))
        self._print_ready_intervals()

    def _collect_until(self, wall_end: float) -> None:
        while (left := wall_end - time.time()) > 0:
            try:
                self._handle(*self.out.get(timeout=min(left, 0.2)))
            except queue.Empty:
                pass
        self._print_ready_intervals()

    def _handle(self, kind: str, index: int, payload: Any) -> None:
        if kind == "interval":
            k, snap = payload
            self.pending.setdefault(k, []).append(snap)
            self._print_ready_intervals()
        elif kind == "tail":
            self.run.tail.merge(payload)
        elif kind == "done":
            self.done.add(index)
        elif kind == "error":
            self.run.errors.append(f"process {index}:\n{payload}")

    def _print_ready_intervals(self) -> None:
        k = len(self.run.intervals)
        while len(self.pending.get(k, [])) == self.work.processes and len(self.run.samples) > k + 1:
            self.run.intervals.append(merge_all(self.pending.pop(k)))
            self.on_interval(self.run, k)
            k += 1

    def _sample(self) -> tuple[dict[str, int], dict[str, ProcSample]]:
        procs = self.monitor.sample()
        for name, pid in self.client_pids.items():
            sample = proc_sample(pid)
            if sample is not None:
                procs[name] = sample
        procs[MACHINE] = machine_sample()
        return self.monitor.counters(), procs


# ---------------------------------------------------------------------------- figures


def tps(snap: Snapshot, work: Workload) -> int:
    """Messages acknowledged OK (oneway: messages handed to the SDK, nobody acknowledges them)."""
    return snap.offered_msgs if work.mode == "oneway" else snap.ok_msgs


def broker_figures(before: dict[str, int], after: dict[str, int], seconds: float) -> dict[str, float | None]:
    delta = counter_delta(before, after)
    msgs, groups = delta.get("put_messages_total"), delta.get("write_groups_total")
    flushes, put_bytes = delta.get("flush_total"), delta.get("put_bytes_total")
    flush_us = delta.get("flush_time_us_total")
    rt_count, rt_sum_us = delta.get("send_rt_count"), delta.get("send_rt_sum_us")
    return {
        "front_rt_avg_ms": rt_sum_us / rt_count / 1000 if rt_count and rt_sum_us is not None else None,
        "flush_avg_us": flush_us / flushes if flush_us is not None and flushes else None,
        "flush_busy": flush_us / 1e6 / seconds if flush_us is not None and seconds else None,
        "msgs_per_s": msgs / seconds if msgs is not None and seconds else None,
        "mb_per_s": put_bytes / seconds / 1e6 if put_bytes is not None and seconds else None,
        "groups_per_s": groups / seconds if groups is not None and seconds else None,
        "flushes_per_s": flushes / seconds if flushes is not None and seconds else None,
        "msgs_per_group": msgs / groups if msgs is not None and groups else None,
        "msgs_per_flush": msgs / flushes if msgs is not None and flushes else None,
    }


def interval_line(run: LoadRun, k: int, work: Workload) -> str:
    snap, seconds = run.intervals[k], interval_seconds(run, k)
    rt = snap.latency.summary_ms()
    broker = broker_figures(run.samples[k][0], run.samples[k + 1][0], seconds)
    line = (f"[{run.ends_s[k]:6.1f}s] Send TPS: {fmt_rate(tps(snap, work) / seconds):>9} | RT ms avg "
            f"{fmt_ms(rt['avg'])} p50 {fmt_ms(rt['p50'])} p99 {fmt_ms(rt['p99'])} max {fmt_ms(rt['max'])} | "
            f"failed {snap.failed}")
    if snap.failures:
        line += " (" + ", ".join(f"{r} {n}" for r, n in sorted(snap.failures.items())) + ")"
    if broker["msgs_per_s"] is not None:
        line += f" | broker {fmt_rate(broker['msgs_per_s'])} msg/s"
    if broker["msgs_per_group"]:
        line += f", {broker['msgs_per_group']:.1f} msgs/group"
    if broker["msgs_per_flush"]:
        line += f", {broker['msgs_per_flush']:.1f} msgs/fsync"
    return line


def broker_memory(procs: dict[str, ProcSample], kind: str) -> int:
    """Sum of `rss` or `anon` bytes over the broker's processes (load processes left out)."""
    return sum(getattr(s, kind) for name, s in procs.items() if not name.startswith("client"))


def print_interval(run: LoadRun, k: int, work: Workload, prefix: str = "") -> None:
    print(prefix + interval_line(run, k, work), flush=True)


def summarize(run: LoadRun, work: Workload) -> tuple[dict[str, Any], dict[str, Any]]:
    """(result, broker) sections of the JSON result for the measured window."""
    total, seconds = run.total, run.elapsed_s
    failures = dict(total.failures)
    for reason, n in run.tail.failures.items():
        failures[reason] = failures.get(reason, 0) + n
    result = {
        "msgs_per_s": tps(total, work) / seconds, "requests_per_s": total.ok_requests / seconds,
        "mb_per_s": tps(total, work) * work.body / seconds / 1e6,
        "offered_msgs_per_s": total.offered_msgs / seconds, "rt_ms": total.latency.summary_ms(),
        "ok_msgs": total.ok_msgs, "failed": sum(failures.values()), "failures": failures,
        "seconds": seconds, "acked_after_end": run.tail.ok_msgs,
        "peak_interval_msgs_per_s": max((tps(s, work) / interval_seconds(run, k)
                                         for k, s in enumerate(run.intervals)), default=0.0),
    }
    (c0, p0), (c1, p1) = run.samples[0], run.samples[-1]
    broker = broker_figures(c0, c1, seconds)
    broker["cpu_cores"] = cores = cpu_cores(p0, p1, seconds)
    if MACHINE in cores:
        cores["other programs"] = round(max(0.0, cores.pop(MACHINE) - sum(cores.values())), 3)
    rss = [broker_memory(procs, "rss") for _c, procs in run.samples]
    anon = [broker_memory(procs, "anon") for _c, procs in run.samples]
    broker["rss_mib_max"] = max(rss) / MIB if any(rss) else None
    broker["anon_mib_max"] = max(anon) / MIB if any(anon) else None
    return result, broker


def interval_seconds(run: LoadRun, k: int) -> float:
    return run.ends_s[k] - (run.ends_s[k - 1] if k else 0.0)


def intervals_json(run: LoadRun, work: Workload) -> list[dict[str, Any]]:
    rows = []
    for k, snap in enumerate(run.intervals):
        seconds = interval_seconds(run, k)
        broker = broker_figures(run.samples[k][0], run.samples[k + 1][0], seconds)
        rows.append({"t": round(run.ends_s[k], 3), "msgs_per_s": tps(snap, work) / seconds,
                     "rt_ms": snap.latency.summary_ms(), "failed": snap.failed, "failures": snap.failures,
                     "broker_msgs_per_s": broker["msgs_per_s"], "msgs_per_group": broker["msgs_per_group"],
                     "msgs_per_flush": broker["msgs_per_flush"],
                     "broker_rss_mib": broker_memory(run.samples[k + 1][1], "rss") / MIB})
    return rows


def final_table(result: dict[str, Any], broker: dict[str, Any], work: Workload) -> str:
    rt = result["rt_ms"]
    rows = [
        ("send TPS (msg/s)" + (" handed off, oneway" if work.mode == "oneway" else " acknowledged"),
         fmt_rate(result["msgs_per_s"])),
        ("best interval (msg/s)", fmt_rate(result["peak_interval_msgs_per_s"])),
        ("requests/s", fmt_rate(result["requests_per_s"])),
        ("MB/s of bodies", f"{result['mb_per_s']:.1f}"),
        ("RT avg / p50 / p99 / max (ms)", " / ".join(fmt_ms(rt[k]) for k in ("avg", "p50", "p99", "max"))),
        ("failures", f"{result['failed']}" + (f" {result['failures']}" if result["failures"] else "")),
        ("broker-side RT avg (ms): front hand-off to answer", fmt_ms(broker.get("front_rt_avg_ms"))),
        ("broker stored msg/s (put_messages_total)", fmt_rate(broker.get("msgs_per_s"))),
        ("broker group commits/s (write_groups_total)", fmt_rate(broker.get("groups_per_s"))),
        ("messages per group commit", _fmt_opt(broker.get("msgs_per_group"))),
        ("broker fdatasync/s (flush_total)", fmt_rate(broker.get("flushes_per_s"))),
        ("messages per fsync", _fmt_opt(broker.get("msgs_per_flush"))),
        ("flusher: avg flush (us) / share of time flushing",
         f"{_fmt_opt(broker.get('flush_avg_us'))} / {fmt_fraction(broker.get('flush_busy'))}"),
        ("broker RSS max / anon max (MiB)",
         f"{_fmt_opt(broker.get('rss_mib_max'))} / {_fmt_opt(broker.get('anon_mib_max'))}"),
        ("CPU cores", " ".join(f"{n} {c:.2f}" for n, c in sorted(broker.get("cpu_cores", {}).items()))
         or "-"),
    ]
    return table(rows, ("metric", "value"), align="ll")


def profile_table(profile: dict[str, list[tuple[str, float]]], out_dir: str) -> str:
    rows = [(name, f"{share:.0%}", frame) for name, frames in profile.items() for frame, share in frames]
    header = (f"py-spy: own samples per process (collapsed stacks in {out_dir})", "share", "function")
    return table(rows, header, align="lrl")


def _fmt_opt(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


# ---------------------------------------------------------------------------- broker + setup


@dataclass
class Target:
    """The broker under test and how to watch it."""

    namesrv: str
    monitor: BrokerMonitor
    flush: str
    ceiling_dir: str
    broker: ThrowawayBroker | None = None
    busy_before: float = 0.0

    def close(self) -> None:
        self.monitor.close()
        if self.broker is not None:
            self.broker.stop()


def warn_if_busy(wait_quiet_s: float = 0.0) -> float:
    """Busy cores before the run (waiting up to `wait_quiet_s` for a quiet machine); warns when busy."""
    deadline = time.monotonic() + wait_quiet_s
    busy = machine_busy_cores(0.5)
    while busy > BUSY_WARNING_CORES and time.monotonic() < deadline:
        busy = machine_busy_cores(1.0)
    if busy > BUSY_WARNING_CORES:
        print(f"WARNING: other programs keep {busy:.2f} cores busy before the run: figures will be low "
              "and noisy on this 2-core machine", flush=True)
    return busy


def open_target(args: argparse.Namespace) -> Target:
    busy = warn_if_busy(args.wait_quiet)
    target = _open_target(args)
    target.busy_before = busy
    return target


def _open_target(args: argparse.Namespace) -> Target:
    if args.start_broker:
        props = dict(p.split("=", 1) for p in args.property or [])
        broker = ThrowawayBroker(args.flush, props, parent_dir=args.store_parent, keep_store=args.keep_store)
        print(f"starting a throwaway broker ({args.flush}) in {broker.store_dir} ...", flush=True)
        broker.start()
        monitor = BrokerMonitor(broker.store_dir, supervisor_pid=broker.supervisor_pid)
        return Target(broker.namesrv_addr, monitor, args.flush, broker.root, broker)
    if not args.namesrv:
        raise SystemExit("give --namesrv HOST:PORT of a running broker, or --start-broker")
    monitor = BrokerMonitor(args.store_dir, namesrv=args.namesrv)
    ceiling_dir = args.store_dir or args.store_parent or os.getcwd()
    return Target(args.namesrv, monitor, args.flush, ceiling_dir)


def create_topic(namesrv: str, topic: str, queues: int) -> None:
    with MQAdmin(namesrv) as admin:
        deadline = time.monotonic() + 30.0
        while True:
            try:
                admin.create_topic(topic, read_queue_nums=queues, write_queue_nums=queues)
                return
            except ClientError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)  # the broker registers with the namesrv shortly after it is ready


def workload_from(args: argparse.Namespace, namesrv: str, **overrides: Any) -> Workload:
    work = Workload(namesrv=namesrv, topic=args.topic, body=args.body, batch=args.batch, mode=args.mode,
                    processes=args.processes, threads=args.threads, window=args.window, rate=args.rate,
                    retries=args.retries, timeout_ms=args.timeout_ms,
                    auto_batch=getattr(args, "auto_batch", False))
    return Workload(**{**asdict(work), **overrides})


def describe(work: Workload, flush: str, schedule: Schedule) -> str:
    window = f", window {work.window}" if work.mode in WINDOWED else ""
    rate = f", paced to {work.rate:,.0f} msg/s" if work.rate else ""
    rate += ", auto_batch" if work.auto_batch else ""
    return (f"{flush}, {work.mode} x {work.threads} thread(s) x {work.processes} process(es){window}, "
            f"batch {work.batch} x {work.body:,} B, {work.concurrency} in flight max{rate}, "
            f"{schedule.duration_s:g} s (+{schedule.warmup_s:g} s warm-up)")


def config_json(work: Workload, flush: str, schedule: Schedule, args: argparse.Namespace) -> dict[str, Any]:
    return {**asdict(work), "flush": flush, "concurrency": work.concurrency,
            "duration_s": schedule.duration_s, "warmup_s": schedule.warmup_s, "queues": args.queues,
            "broker": "throwaway (--start-broker)" if args.start_broker else args.namesrv}


# ---------------------------------------------------------------------------- `bench.py produce`


def add_workload_arguments(parser: argparse.ArgumentParser, *, mode: str, threads: int, window: int,
                           duration: float, interval: float, retries: int, processes: int = 1) -> None:
    """Options shared by produce and overload (and by later benches that send)."""
    add_broker_arguments(parser,
                         start_help="start a throwaway broker in a temp store, stop it by PID at the end")
    load = parser.add_argument_group("load")
    load.add_argument("--topic", default=DEFAULT_TOPIC)
    load.add_argument("--queues", type=int, default=8, help="queues of the topic (created before the run)")
    load.add_argument("-s", "--body", type=int, default=1024, help="body size in bytes")
    load.add_argument("-b", "--batch", type=int, default=1, help="messages per request (send_batch when > 1)")
    load.add_argument("-m", "--mode", choices=tuple(SENDERS), default=mode)
    load.add_argument("-t", "--threads", type=int, default=threads, help="sender threads per process")
    load.add_argument("-P", "--processes", type=int, default=processes, help="load processes")
    load.add_argument("-w", "--window", type=int, default=window,
                      help="requests in flight per async/flood thread (overload: 0 = never binding)")
    load.add_argument("--rate", type=float, default=0.0, help="offered msg/s in total (0: max)")
    load.add_argument("--retries", type=int, default=retries, help="SDK retryTimesWhenSendFailed")
    load.add_argument("--timeout-ms", type=int, default=3000, help="SDK send timeout")
    load.add_argument("--auto-batch", action="store_true",
                      help="Producer(auto_batch=True): concurrent sync sends leave in batches "
                           "(RocketMQ autoBatch)")
    timing = parser.add_argument_group("timing and output")
    timing.add_argument("-d", "--duration", type=float, default=duration, help="measured seconds")
    timing.add_argument("--warmup", type=float, default=1.0, help="seconds sent but not measured")
    timing.add_argument("--interval", type=float, default=interval, help="seconds between report lines")
    timing.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                        help="first wait up to SECONDS until other programs use < 0.2 cores")
    timing.add_argument("--no-ceilings", action="store_true", help="skip the ceiling measurements")
    timing.add_argument("--ceiling-seconds", type=float, default=0.5, help="seconds per ceiling measurement")
    timing.add_argument("--json", metavar="PATH", help="write the result as JSON")
    timing.add_argument("--py-spy", metavar="DIR",
                        help="py-spy record front/writer/flusher/dispatcher/clients into DIR during the run")
    timing.add_argument("--label", help="name of this run in reports (default: derived from the options)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_workload_arguments(parser, mode="sync", threads=1, window=256, duration=10.0, interval=2.0, retries=2)


def default_label(work: Workload, flush: str) -> str:
    size = f"{work.body // 1024} KiB" if work.body % 1024 == 0 else f"{work.body} B"
    senders = work.threads * work.processes
    conc = f"{senders} sender{'s' if senders != 1 else ''}"
    if work.mode in WINDOWED:
        conc += f" w{work.window}"
    if work.auto_batch:
        conc += " auto-batch"
    return f"{flush.split('_')[0]} {work.mode} {work.batch}x{size} {conc}"


def run(args: argparse.Namespace) -> int:
    target = open_target(args)
    try:
        create_topic(target.namesrv, args.topic, args.queues)
        work = workload_from(args, target.namesrv)
        schedule = Schedule(args.warmup, args.duration, args.interval)
        measured = None if args.no_ceilings else _measure_ceilings(target, work, args.ceiling_seconds)
        print(f"produce: {describe(work, target.flush, schedule)}", flush=True)
        profiler = PySpyRecorder(args.py_spy) if args.py_spy else None
        printer = partial(print_interval, work=work)
        outcome = LoadRunner(work, schedule, target.monitor, printer, profiler=profiler).execute()
        profile = profiler.finish() if profiler else {}
    finally:
        target.close()
    result = result_of("produce", args.label or default_label(work, target.flush), outcome, work, target,
                       config_json(work, target.flush, schedule, args))
    report_against_ceilings(result, measured)
    if profile:
        result["profile"] = profile
        print("\n" + profile_table(profile, args.py_spy))
    if args.json:
        write_json(args.json, result)
    return 0 if not result["result"]["failed"] else 1


def result_of(bench: str, label: str, outcome: LoadRun, work: Workload, target: Target,
              config: dict[str, Any]) -> dict[str, Any]:
    """The JSON result of one load run; prints its final table."""
    result = new_result(bench, label, config)
    result["machine"]["busy_cores_before"] = round(target.busy_before, 2)
    result["result"], result["broker"] = summarize(outcome, work)
    result["intervals"] = intervals_json(outcome, work)
    print("\n" + final_table(result["result"], result["broker"], work))
    return result


def _measure_ceilings(target: Target, work: Workload, seconds: float) -> dict[str, Any]:
    print(f"measuring ceilings in {target.ceiling_dir} ...", flush=True)
    return ceil.measure(target.ceiling_dir, work.body, work.batch, seconds)


def report_against_ceilings(result: dict[str, Any], measured: dict[str, Any] | None) -> None:
    if measured is not None:
        result["ceilings"] = measured
        result["fractions"] = ceil.fractions(result, measured)
        print("\n" + ceil.ceilings_table(measured))
        print("\n" + ceil.fractions_table(result["fractions"]))
    result["targets"] = ceil.targets(result)
    if result["targets"]:
        print("\n" + ceil.targets_table(result["targets"]))


# ---------------------------------------------------------------------------- `bench.py overload`


def add_overload_arguments(parser: argparse.ArgumentParser) -> None:
    add_workload_arguments(parser, mode="flood", threads=1, window=0, duration=30.0, interval=1.0,
                           retries=0, processes=2)
    over = parser.add_argument_group("overload")
    over.add_argument("--factor", type=float, default=3.0, help="offered load as a multiple of capacity")
    over.add_argument("--capacity", type=float, default=0.0,
                      help="capacity in msg/s (0: measure it first with a --probe-seconds run)")
    over.add_argument("--probe-seconds", type=float, default=5.0)
    over.add_argument("--probe-window", type=int, default=64, help="async window per thread for the probe")
    over.add_argument("--recovery-seconds", type=float, default=5.0)


class RecoveryProbe:
    """One synchronous sender started the moment the load stops; records when each send ended."""

    def __init__(self, namesrv: str, topic: str, body: int, seconds: float) -> None:
        self.producer = make_producer("benchmark_recovery", Workload(namesrv=namesrv, retries=0))
        self.msg = Message(topic, os.urandom(body))
        prime(self.producer, Workload(namesrv=namesrv, topic=topic))
        self.seconds = seconds
        self.sends: list[tuple[float, int | None, str]] = []  # (seconds after start, latency us, failure)
        self.thread = threading.Thread(target=self._run, name="recovery-probe", daemon=True)

    def _run(self) -> None:
        started = time.perf_counter()
        while (now := time.perf_counter()) - started < self.seconds:
            t0 = time.perf_counter_ns()
            try:
                self.producer.send(self.msg)
                self.sends.append((now - started, (time.perf_counter_ns() - t0) // 1000, ""))
            except ClientError as exc:
                self.sends.append((now - started, None, failure_reason(exc)))

    def summary(self) -> dict[str, Any]:
        self.thread.join(self.seconds + 10)
        self.producer.shutdown()
        first_second, rest = Histogram(), Histogram()
        failures: dict[str, int] = {}
        first_ok = None
        for at, us, reason in self.sends:
            if us is None:
                failures[reason] = failures.get(reason, 0) + 1
                continue
            first_ok = at + us / 1e6 if first_ok is None else first_ok
            (first_second if at < 1.0 else rest).record(us)
        return {"first_ok_after_ms": None if first_ok is None else first_ok * 1000, "failures": failures,
                "first_second_rt_ms": first_second.summary_ms(), "after_rt_ms": rest.summary_ms(),
                "sends": len(self.sends)}


def run_overload(args: argparse.Namespace) -> int:
    target = open_target(args)
    try:
        create_topic(target.namesrv, args.topic, args.queues)
        capacity = args.capacity or _probe_capacity(args, target)
        offered = capacity * args.factor
        window = args.window or open_loop_window(offered, args.timeout_ms, args.processes * args.threads)
        work = workload_from(args, target.namesrv, rate=offered, window=window)
        schedule = Schedule(args.warmup, args.duration, args.interval)
        probe = RecoveryProbe(target.namesrv, args.topic, args.body, args.recovery_seconds)
        print(f"overload: offering {offered:,.0f} msg/s = {args.factor:g} x capacity {capacity:,.0f}: "
              f"{describe(work, target.flush, schedule)}", flush=True)
        outcome = LoadRunner(work, schedule, target.monitor,
                             partial(print_interval, work=work), on_end=probe.thread.start).execute()
        recovery = probe.summary()
    finally:
        target.close()
    result = result_of("overload", args.label or f"overload {args.factor:g}x {target.flush.split('_')[0]}",
                       outcome, work, target, config_json(work, target.flush, schedule, args))
    result["result"].update(overload_figures(outcome, work, capacity, offered), recovery=recovery)
    print("\n" + overload_table(result["result"]))
    if args.json:
        write_json(args.json, result)
    return 0


def open_loop_window(rate: float, timeout_ms: int, senders: int) -> int:
    """A window per sender that never binds: every request of one timeout period may be in flight."""
    return max(1000, int(rate * timeout_ms / 1000 / senders) + 1)


def _probe_capacity(args: argparse.Namespace, target: Target) -> float:
    work = workload_from(args, target.namesrv, window=args.probe_window, retries=2)
    schedule = Schedule(args.warmup, args.probe_seconds, args.probe_seconds)
    print(f"probing capacity: {describe(work, target.flush, schedule)}", flush=True)
    outcome = LoadRunner(work, schedule, target.monitor,
                         partial(print_interval, work=work, prefix="  probe ")).execute()
    return max(1.0, tps(outcome.total, work) / outcome.elapsed_s)


def overload_figures(run: LoadRun, work: Workload, capacity: float, offered: float) -> dict[str, Any]:
    total, seconds = run.total, run.elapsed_s
    refused = total.failures.get(BACK_PRESSURE, 0)
    answers = total.ok_requests + total.failed - refused
    busy = total.failures.get(ResponseCode.SYSTEM_BUSY.name, 0)
    rss = [(run.ends_s[k - 1] if k else 0.0, broker_memory(procs, "rss"), broker_memory(procs, "anon"))
           for k, (_c, procs) in enumerate(run.samples)]
    return {
        "capacity_msgs_per_s": capacity, "target_offered_msgs_per_s": offered,
        "offered_msgs_per_s": total.offered_msgs / seconds,
        "offered_factor": total.offered_msgs / seconds / capacity,
        "busy_answers": busy, "answers": answers, "busy_share": busy / answers if answers else None,
        "timeouts": total.failures.get("timeout", 0),
        "back_pressure_share": refused / total.offered_msgs if total.offered_msgs else None,
        "rss_timeline_mib": [(round(t, 1), round(r / MIB, 1), round(a / MIB, 1)) for t, r, a in rss],
        "rss_mib_max": max(r for _t, r, _a in rss) / MIB, "anon_mib_max": max(a for _t, _r, a in rss) / MIB,
        "per_process_rss_mib_max": _per_process_max(run),
    }


def _per_process_max(run: LoadRun) -> dict[str, float]:
    peak: dict[str, float] = {}
    for _c, procs in run.samples:
        for name, s in procs.items():
            if name == MACHINE:
                continue
            peak[name] = max(peak.get(name, 0.0), round(s.rss / MIB, 1))
    return peak


def overload_table(res: dict[str, Any]) -> str:
    rec, peaks = res["recovery"], res["per_process_rss_mib_max"]
    first, after = rec["first_second_rt_ms"], rec["after_rt_ms"]
    rows = [
        ("capacity (msg/s)", fmt_rate(res["capacity_msgs_per_s"])),
        ("offered (msg/s) / factor achieved", f"{fmt_rate(res['offered_msgs_per_s'])} / "
                                               f"{res['offered_factor']:.2f}x"),
        ("accepted (msg/s)", fmt_rate(res["msgs_per_s"])),
        ("offered but held back by TCP/zmq back pressure", fmt_fraction(res["back_pressure_share"])),
        ("requests timed out (no answer in the timeout)", f"{res['timeouts']:,}"),
        ("SYSTEM_BUSY share of answers", f"{fmt_fraction(res['busy_share'])} ({res['busy_answers']:,} of "
                                          f"{res['answers']:,})"),
        ("broker RSS max (MiB), all processes", f"{res['rss_mib_max']:,.1f}"),
        ("broker anon RSS max (MiB), all processes", f"{res['anon_mib_max']:,.1f}"),
        ("per process RSS max (MiB)", " ".join(f"{n} {v:g}" for n, v in sorted(peaks.items())
                                                if not n.startswith("client"))),
        ("recovery: first OK send after load stop (ms)", fmt_ms(rec["first_ok_after_ms"])),
        ("recovery: 1st second p50 / p99 / max (ms)", f"{fmt_ms(first['p50'])} / {fmt_ms(first['p99'])} / "
                                                      f"{fmt_ms(first['max'])}"),
        ("recovery: after p50 / p99 / max (ms)", f"{fmt_ms(after['p50'])} / {fmt_ms(after['p99'])} / "
                                                 f"{fmt_ms(after['max'])}"),
        ("recovery: sends / failures", f"{rec['sends']:,} / {rec['failures'] or 0}"),
    ]
    return table(rows, ("overload", "value"), align="ll")
