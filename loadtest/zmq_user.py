"""Locust users built on the rmqd SDK (rmqd.client): producers and consumers that report every
request to locust's statistics. loadtest/locustfile.py exposes them; loadtest/README.md shows how
to run them.

    SyncProducerUser      Producer.send, one message per request               SEND
    AsyncProducerUser     Producer.send_async, up to --rmqd-window in flight   SEND_ASYNC
    BatchProducerUser     Producer.send_batch of --rmqd-batch messages         SEND_BATCH (one request)
    OrderedProducerUser   Producer.send with a sharding key (ordered)          SEND_ORDERLY
    PushConsumerUser      PushConsumer: every message received                 CONSUME (name "push ...")
    LitePullConsumerUser  LitePullConsumer.poll: every message received        CONSUME (name "lite-pull ...")

A send request's response time is the SDK call's round trip (async: send_async -> acknowledgement);
a CONSUME request's response time is the message's end-to-end latency: receive time minus its send
time, taken from the body when a user of this module (or `bench.py workload`) stamped it
(loadtest/workloads.py stamped_body, ns), else from the record's born timestamp (ms). Failures:
exceptions and any SendStatus other than SEND_OK. Settings: `--rmqd-*` options or the RMQD_*
environment variables (init_command_line_parser below); the producers' --rmqd-rate paces each user.

gevent: locust monkey-patches the standard library when it is imported, which would turn the SDK's
threads into greenlets and leave its blocking pyzmq calls (zmq.Poller.poll, DEALER recv) blocking
the one OS thread that runs every greenlet: one waiting user would freeze all of them. So the SDK
must run unpatched: this module re-executes locust with LOCUST_SKIP_MONKEY_PATCH=1 (locust's own
switch) when it finds the process patched, and every blocking SDK call runs in a real OS thread
of gevent's hub threadpool (`in_os_thread`); the user's greenlet waits cooperatively. SDK callbacks
(async send results, push listener calls) run on SDK threads and hand their results to the hub
with `loop.run_callback_threadsafe`, so locust's statistics are only touched from the hub thread.
Locust itself needs no patching: its runner, web UI and timers are gevent-native.

Thread-safety: users and module functions run in the gevent hub thread; only `_report_threadsafe`
and the listeners are called from SDK threads.
"""
from __future__ import annotations

import itertools
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import gevent
import gevent.monkey
from gevent.lock import Semaphore


def _ensure_unpatched() -> None:
    """Re-execute locust with LOCUST_SKIP_MONKEY_PATCH=1 if it monkey-patched this process."""
    if not gevent.monkey.is_module_patched("threading"):
        return
    if os.environ.get("LOCUST_SKIP_MONKEY_PATCH"):
        raise RuntimeError("threading is monkey-patched although LOCUST_SKIP_MONKEY_PATCH is set: "
                           "something else patched it; the rmqd SDK cannot run under gevent's patches")
    launcher = os.path.basename(sys.argv[0])
    if launcher not in ("locust", "__main__.py"):
        raise RuntimeError("run locust with LOCUST_SKIP_MONKEY_PATCH=1 in the environment: the rmqd "
                           "SDK's threads and blocking pyzmq calls must not be monkey-patched")
    os.environ["LOCUST_SKIP_MONKEY_PATCH"] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "locust", *sys.argv[1:]])


_ensure_unpatched()

from locust import User, constant, events, tag, task  # noqa: E402

REPO_ROOT = str(Path(__file__).resolve().parents[1])
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from loadtest.bench_produce import create_topic  # noqa: E402
from loadtest.workloads import STAMP, pace, sent_time_ns, stamped_body  # noqa: E402
from rmqd.client import (  # noqa: E402
    ConsumeFromWhere,
    ConsumeStatus,
    LitePullConsumer,
    Message,
    Producer,
    PushConsumer,
    SendStatus,
)

HUB = gevent.get_hub()
ASSIGNMENT_WAIT_S = 10.0  # a PushConsumerUser's on_start waits this long at most for its queues
SETTINGS = (  # option, environment variable, type, default, help
    ("namesrv", "RMQD_NAMESRV", str, "127.0.0.1:9876", "namesrv host:port of the broker under test"),
    ("topic", "RMQD_TOPIC", str, "LocustTest", "topic every user sends to and consumes from"),
    ("queues", "RMQD_QUEUES", int, 8, "queues of the topic, created at test start (0: leave it as is)"),
    ("body-size", "RMQD_BODY_SIZE", int, 1024, "message body bytes (at least 12: a send-time stamp)"),
    ("batch", "RMQD_BATCH", int, 16, "messages per BatchProducerUser request"),
    ("rate", "RMQD_RATE", float, 0.0, "msg/s offered by EACH producer user (0: as fast as it can)"),
    ("window", "RMQD_WINDOW", int, 64, "async sends in flight per AsyncProducerUser"),
    ("order-keys", "RMQD_ORDER_KEYS", int, 16, "distinct sharding keys of OrderedProducerUser"),
    ("group", "RMQD_GROUP", str, "locust", "consumer groups are GROUP_push and GROUP_lite"),
    ("consume-from", "RMQD_CONSUME_FROM", str, "last", "where a new group starts: last | first"),
    ("pull-batch", "RMQD_PULL_BATCH", int, 32, "pull_batch_size of the consumers"),
    ("timeout-ms", "RMQD_TIMEOUT_MS", int, 3000, "SDK send timeout"),
    ("threads", "RMQD_THREADS", int, 64, "OS threads for the SDK's blocking calls (gevent threadpool)"),
)


@events.init_command_line_parser.add_listener
def _add_options(parser: Any, **_kwargs: Any) -> None:
    group = parser.add_argument_group("rmqd (loadtest/zmq_user.py)")
    for name, env, kind, default, text in SETTINGS:
        group.add_argument(f"--rmqd-{name}", type=kind, default=default, env_var=env,
                           help=f"{text} (${env}, default {default})")


@dataclass(frozen=True, slots=True)
class Settings:
    namesrv: str
    topic: str
    queues: int
    body_size: int
    batch: int
    rate: float
    window: int
    order_keys: int
    group: str
    consume_from: str
    pull_batch: int
    timeout_ms: int
    threads: int

    @classmethod
    def of(cls, environment: Any) -> Settings:
        """From locust's parsed options; the RMQD_* variables or defaults when there are none."""
        options = getattr(environment, "parsed_options", None)
        values = {}
        for name, env, kind, default, _text in SETTINGS:
            attr = "rmqd_" + name.replace("-", "_")
            value = getattr(options, attr, None) if options is not None else None
            values[attr[5:]] = value if value is not None else kind(os.environ.get(env, default))
        if values["body_size"] < STAMP.size:
            raise ValueError(f"--rmqd-body-size must be at least {STAMP.size} (the send-time stamp)")
        return cls(**values)

    def start_from(self) -> ConsumeFromWhere:
        return ConsumeFromWhere.FIRST_OFFSET if self.consume_from == "first" else ConsumeFromWhere.LAST_OFFSET


# ---------------------------------------------------------------------------- gevent <-> OS threads


def in_os_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a blocking SDK call in an OS thread; the calling greenlet waits, the others run."""
    return HUB.threadpool.apply(partial(fn, *args, **kwargs))


def timed(fn: Callable[..., Any], *args: Any) -> tuple[float, Any, BaseException | None]:
    """(ms, result, exception) of one call; runs in the OS thread so the hop is not counted."""
    started = time.perf_counter()
    try:
        result = fn(*args)
    except Exception as exc:  # noqa: BLE001 - any error of a send is that request's failure
        return (time.perf_counter() - started) * 1000, None, exc
    return (time.perf_counter() - started) * 1000, result, None


class SendStatusError(Exception):
    """A send answered with a status other than SEND_OK (FLUSH_DISK_TIMEOUT, SLAVE_NOT_AVAILABLE, ...)."""


def report(request_type: str, name: str, ms: float, length: int, exc: BaseException | None = None) -> None:
    """One request into locust's statistics (hub thread only)."""
    events.request.fire(request_type=request_type, name=name, response_time=ms, response_length=length,
                        exception=exc, context={})


def report_send(request_type: str, name: str, ms: float, length: int, result: Any,
                exc: BaseException | None) -> None:
    if exc is None and result.status is not SendStatus.SEND_OK:
        exc = SendStatusError(result.status.value)
    report(request_type, name, ms, length, exc)


def report_consumed(name: str, latencies: list[tuple[float, int]]) -> None:
    for ms, length in latencies:
        report("CONSUME", name, ms, length)


def _report_threadsafe(fn: Callable[..., None], *args: Any) -> None:
    """From an SDK thread: run fn(*args) in the hub thread."""
    HUB.loop.run_callback_threadsafe(fn, *args)


def consume_latencies(messages: list) -> list[tuple[float, int]]:
    """(end-to-end ms, body bytes) per message: stamped send time, else the born timestamp."""
    now_ns = time.time_ns()
    out = []
    for message in messages:
        sent = sent_time_ns(message.body)
        ms = (now_ns - sent) / 1e6 if sent is not None else now_ns / 1e6 - message.born_timestamp_ms
        out.append((max(0.0, ms), len(message.body)))
    return out


class GreenPacer:
    """Spaces one user's sends to `msgs_per_s` without blocking other greenlets; catches up after a
    late wake-up (gevent timers have ~1 ms resolution), gives up a deficit of more than 1 s."""

    def __init__(self, msgs_per_s: float, msgs_per_send: int = 1) -> None:
        self.sends_per_s = msgs_per_s / msgs_per_send
        self.due = time.perf_counter()

    def wait(self) -> None:
        if self.sends_per_s > 0:
            self.due = pace(self.due, self.sends_per_s, gevent.sleep)


@events.init.add_listener
def _on_init(environment: Any, **_kwargs: Any) -> None:
    HUB.threadpool.maxsize = max(HUB.threadpool.maxsize, Settings.of(environment).threads)
    logging.getLogger("rmqd").setLevel(logging.WARNING)  # not one INFO line per queue and rebalance
    _pick_by_tags(environment)


def _pick_by_tags(environment: Any) -> None:
    """With --tags / --exclude-tags, leave out the rmqd users none of whose tasks is selected."""
    options = environment.parsed_options
    tags = set(getattr(options, "tags", None) or ())
    excluded = set(getattr(options, "exclude_tags", None) or ())
    if not tags and not excluded:
        return

    def picked(user: type) -> bool:
        if not issubclass(user, RmqdUser):
            return True
        sets = [getattr(t, "locust_tag_set", set()) for t in user.tasks]
        return any((not tags or s & tags) and not s & excluded for s in sets)

    environment.user_classes[:] = [u for u in environment.user_classes if picked(u)]


@events.test_start.add_listener
def _create_topic(environment: Any, **_kwargs: Any) -> None:
    """Create the topic with --rmqd-queues queues before the users start (master or local runner)."""
    settings = Settings.of(environment)
    if settings.queues > 0 and not _is_worker(environment):
        in_os_thread(create_topic, settings.namesrv, settings.topic, settings.queues)


def _is_worker(environment: Any) -> bool:
    return type(environment.runner).__name__ == "WorkerRunner"


# ---------------------------------------------------------------------------- users


class RmqdUser(User):
    """Base of the rmqd users: settings, and the SDK object's start/shutdown in an OS thread."""

    abstract = True
    wait_time = constant(0)  # producers pace themselves (--rmqd-rate); consumers wait in the SDK
    _ids = itertools.count()

    def on_start(self) -> None:
        self.settings = Settings.of(self.environment)
        self.index = next(RmqdUser._ids)
        self.client = self.make_client()
        in_os_thread(self.start_client)

    def make_client(self) -> Any:
        raise NotImplementedError

    def start_client(self) -> None:
        self.client.start()

    def subscribed(self, kind: type, suffix: str) -> Any:
        """A consumer of group GROUP_suffix subscribed to the topic (not started)."""
        settings = self.settings
        consumer = kind(f"{settings.group}_{suffix}", settings.namesrv, consume_from=settings.start_from(),
                        pull_batch_size=settings.pull_batch)
        consumer.subscribe(settings.topic)
        return consumer

    def on_stop(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            in_os_thread(client.shutdown)


class _ProducerUser(RmqdUser):
    abstract = True
    request_type = "SEND"
    msgs_per_request = 1

    def make_client(self) -> Producer:
        return Producer(f"locust_producer_{os.getpid()}_{self.index}", self.settings.namesrv,
                        send_timeout_ms=self.settings.timeout_ms)

    def on_start(self) -> None:
        super().on_start()
        self.name = self.settings.topic
        self.padding = b"p" * (self.settings.body_size - STAMP.size)
        self.pacer = GreenPacer(self.settings.rate, self.msgs_per_request)

    def message(self) -> Message:
        return Message(self.settings.topic, stamped_body(self.settings.body_size, self.padding))

    def send_sync(self, fn: Callable[..., Any], *args: Any) -> None:
        """One paced, blocking send (in an OS thread), reported when it settled."""
        self.pacer.wait()
        ms, result, exc = in_os_thread(timed, fn, *args)
        report_send(self.request_type, self.name, ms, self.settings.body_size * self.msgs_per_request,
                    result, exc)


class SyncProducerUser(_ProducerUser):
    """Producer.send: one request in flight per user (RocketMQ's synchronous send)."""

    @tag("produce", "sync")
    @task
    def send(self) -> None:
        self.send_sync(self.client.send, self.message())


class BatchProducerUser(_ProducerUser):
    """Producer.send_batch of --rmqd-batch messages; one locust request per batch."""

    request_type = "SEND_BATCH"

    def on_start(self) -> None:
        self.msgs_per_request = Settings.of(self.environment).batch
        super().on_start()

    @tag("produce", "batch")
    @task
    def send_batch(self) -> None:
        self.send_sync(self.client.send_batch, [self.message() for _ in range(self.msgs_per_request)])


class OrderedProducerUser(_ProducerUser):
    """Producer.send with a sharding key (same key -> same queue), keys cycling over --rmqd-order-keys."""

    request_type = "SEND_ORDERLY"

    def on_start(self) -> None:
        super().on_start()
        self.keys = itertools.cycle([f"order-{self.index}-{k}" for k in range(self.settings.order_keys)])

    @tag("produce", "ordered")
    @task
    def send_orderly(self) -> None:
        self.send_sync(partial(self.client.send, sharding_key=next(self.keys)), self.message())


class AsyncProducerUser(_ProducerUser):
    """Producer.send_async with up to --rmqd-window sends in flight per user."""

    request_type = "SEND_ASYNC"

    def on_start(self) -> None:
        super().on_start()
        self.window = Semaphore(self.settings.window)

    def on_stop(self) -> None:
        deadline = time.monotonic() + self.settings.timeout_ms / 1000 + 2.0
        for _ in range(self.settings.window):  # let the answers in flight be counted
            if not self.window.acquire(timeout=max(0.0, deadline - time.monotonic())):
                break
        super().on_stop()

    @tag("produce", "async")
    @task
    def send_async(self) -> None:
        self.pacer.wait()
        self.window.acquire()
        ms, exc = in_os_thread(self._submit, self.message())
        if exc is not None:
            self.window.release()
            report_send(self.request_type, self.name, ms, self.settings.body_size, None, exc)

    def _submit(self, message: Message) -> tuple[float, BaseException | None]:
        """OS thread: send_async and watch the future; (ms, exception) when it raised at once."""
        started = time.perf_counter()
        try:
            future = self.client.send_async(message)
        except Exception as exc:  # noqa: BLE001 - as in timed()
            return (time.perf_counter() - started) * 1000, exc
        future.add_done_callback(partial(self._settled, started=started))
        return 0.0, None

    def _settled(self, future: Any, started: float) -> None:
        """SDK callback thread: time it here, report and free the window in the hub."""
        ms = (time.perf_counter() - started) * 1000
        exc = future.exception()
        _report_threadsafe(self._report_settled, ms, None if exc else future.result(), exc)

    def _report_settled(self, ms: float, result: Any, exc: BaseException | None) -> None:
        self.window.release()
        report_send(self.request_type, self.name, ms, self.settings.body_size, result, exc)


class PushConsumerUser(RmqdUser):
    """A PushConsumer of group GROUP_push; every message becomes one CONSUME request."""

    def make_client(self) -> PushConsumer:
        consumer = self.subscribed(PushConsumer, "push")
        consumer.register_listener(partial(self._listener, f"push {self.settings.topic}"))
        return consumer

    def start_client(self) -> None:
        """Start, then wait (bounded) until the group gave this consumer its queues."""
        self.client.start()
        deadline = time.monotonic() + ASSIGNMENT_WAIT_S
        while not self.client.assignment() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not self.client.assignment():
            logging.getLogger(__name__).warning("%s owns no queue of %s after %.0f s", self.client.group,
                                                self.settings.topic, ASSIGNMENT_WAIT_S)

    @staticmethod
    def _listener(name: str, messages: list) -> ConsumeStatus:
        """SDK consume thread: measure now, report in the hub."""
        _report_threadsafe(report_consumed, name, consume_latencies(messages))
        return ConsumeStatus.CONSUME_SUCCESS

    @tag("consume", "push")
    @task
    def consume(self) -> None:
        gevent.sleep(1.0)  # the SDK's threads consume; this greenlet only keeps the user alive


class LitePullConsumerUser(RmqdUser):
    """A LitePullConsumer of group GROUP_lite polling in an OS thread; one CONSUME per message."""

    def make_client(self) -> LitePullConsumer:
        return self.subscribed(LitePullConsumer, "lite")

    @tag("consume", "lite-pull")
    @task
    def poll(self) -> None:
        latencies = in_os_thread(self._poll)
        report_consumed(f"lite-pull {self.settings.topic}", latencies)

    def _poll(self) -> list[tuple[float, int]]:
        try:
            return consume_latencies(self.client.poll(timeout_ms=1000))
        except Exception as exc:  # noqa: BLE001 - a failed poll is a failed request
            _report_threadsafe(report, "POLL", f"lite-pull {self.settings.topic}", 0.0, 0, exc)
            return []
