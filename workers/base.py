"""WorkerProcess: what every broker process shares, so each process file is only about its job.

A worker is started by the supervisor as `python -m workers.<name> --config-json ... --shm PATH
--fds JSON [--abnormal]`, with the eventfds of its rings and doorbells inherited (pass_fds).

Life cycle (RocketMQ's ServiceThread + gunicorn's worker):
    setup()            failure -> EXIT_BOOT_FAILED; the supervisor halts the boot instead of looping
    state = running    the supervisor boots the next process only after this
    loop:  beat; run_once() -> did work?; if not: idle_wait() on the wait sources (eventfds of
           rings/doorbells, with a timeout: a lost wake-up costs latency, never a hang)
    teardown()         on SIGTERM/SIGINT (first: finish the batch; second: exit at once) or when
                       the supervisor is gone (PR_SET_PDEATHSIG + a parent pid check)

Deleted store files: when the cleaner bumps positions.files_deleted_seq, the loop calls
release_deleted_files() before the next run_once, so this process unmaps the deleted files (only
the last unmap frees their disk blocks, and mappings count against vm.max_map_count). The default
covers the attributes the workers use: `commit_log` and `index` are refreshed, `cq_store` closes
its open queues (they reopen on demand).

Signal handlers only set a flag; `signal.set_wakeup_fd` makes a signal wake the idle wait at once.
The loop catches nothing broad: an unexpected exception ends the process with EXIT_ERROR and the
supervisor applies its written policy.
"""
from __future__ import annotations

import argparse
import ctypes
import logging
import logging.handlers
import os
import select
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson

from rmqd.config import BrokerConfig
from rmqd.exit_codes import EXIT_BOOT_FAILED, EXIT_ERROR, EXIT_OK
from shm import BrokerShm, open_broker_shm
from shm.heartbeats import STATE_RUNNING, STATE_STARTING, STATE_STOPPED, STATE_STOPPING

PR_SET_PDEATHSIG = 1
SUPERVISOR_PID_ENV = "RMQD_SUPERVISOR_PID"
LOG_FORMAT = "%(asctime)s {name}[%(process)d] %(levelname)s %(name)s: %(message)s"


def setup_logging(process_name: str, logs_dir: str | None) -> None:
    """Log to stderr and to {logs_dir}/{process_name}.log, each line naming its process."""
    root = logging.getLogger()
    root.handlers.clear()
    formatter = logging.Formatter(LOG_FORMAT.format(name=process_name))
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if logs_dir:
        os.makedirs(logs_dir, exist_ok=True)
        handlers.append(logging.handlers.RotatingFileHandler(
            os.path.join(logs_dir, f"{process_name}.log"), maxBytes=64 << 20, backupCount=5))
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(os.environ.get("RMQD_LOG_LEVEL", "INFO"))


def supervisor_pid() -> int:
    """The pid of the process that started us: the supervisor names itself in RMQD_SUPERVISOR_PID,
    so a child that starts after its supervisor already died (and was re-parented) still notices."""
    return int(os.environ.get(SUPERVISOR_PID_ENV) or os.getppid())


def die_with_parent() -> None:
    """Ask the kernel to SIGTERM us when the supervisor dies (children exit with it)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the parent pid check in the loop still ends us


def _always() -> bool:
    return True


class WorkerProcess:
    """Base of every broker process. Subclasses set `name` and implement setup/run_once/teardown."""

    name = "worker"
    idle_timeout_s = 0.5

    def __init__(self, cfg: BrokerConfig, shm: BrokerShm, *, abnormal: bool = False) -> None:
        self.cfg = cfg
        self.shm = shm
        self.abnormal = abnormal
        self.stop_requested = False
        self._wait_sources: list[tuple[Any, Callable[[], bool], Callable[[], bool]]] = []
        self._parent_pid = supervisor_pid()
        self._signal_r, self._signal_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    # -- to override -------------------------------------------------------------------------
    def setup(self) -> None:
        """Open files and attach rings. Runs before READY is published."""

    def run_once(self) -> bool:
        """Do one bounded batch of work; return whether anything was done."""
        return False

    def teardown(self) -> None:
        """Finish in-flight work and close files (graceful stop)."""

    def idle_timeout(self) -> float:
        """How long the next idle wait may block (seconds)."""
        return self.idle_timeout_s

    def release_deleted_files(self) -> None:
        """The cleaner deleted store files: drop this process's mappings of them (see module doc)."""
        for name in ("commit_log", "index"):
            files = getattr(self, name, None)
            if files is not None:
                files.refresh()
        cq_store = getattr(self, "cq_store", None)
        if cq_store is not None:
            cq_store.close_all()

    # -- machinery ---------------------------------------------------------------------------
    def add_wait_source(self, doorbell: Any, ready: Callable[[], bool],
                        wanted: Callable[[], bool] | None = None) -> None:
        """Wake the idle wait when `doorbell` is rung; `ready()` says whether there is work.

        For a ring consumer: `add_wait_source(ring.doorbell, ring.ready)`. With `wanted`, the
        doorbell is armed only while `wanted()` is true: when nobody is waiting, the producer
        skips the eventfd write and this process is not woken for news it does not need yet.
        """
        self._wait_sources.append((doorbell, ready, wanted or _always))

    def idle_wait(self, timeout_s: float) -> None:
        """Block until a wait source is rung, a signal arrives, or `timeout_s` passes.

        Every source's waiting flag is set and its condition re-checked before blocking, so a
        producer that published just before we slept is never missed (shm/doorbell.py).
        """
        sources = [(doorbell, ready) for doorbell, ready, wanted in self._wait_sources if wanted()]
        for doorbell, _ready in sources:
            doorbell.arm()
        if not any(ready() for _doorbell, ready in sources):
            self._poller.poll(max(0.0, timeout_s) * 1000.0)
        for doorbell, _ready in sources:
            doorbell.disarm()
        try:
            os.read(self._signal_r, 512)
        except BlockingIOError:
            pass

    def handle_sigterm(self, signum: int, frame: object) -> None:
        if self.stop_requested:
            os._exit(EXIT_OK)  # second signal: exit now (rq's cold shutdown)
        self.stop_requested = True

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.handle_sigterm)
        signal.signal(signal.SIGINT, self.handle_sigterm)
        signal.set_wakeup_fd(self._signal_w, warn_on_full_buffer=False)

    def parent_alive(self) -> bool:
        return os.getppid() == self._parent_pid

    def run(self) -> int:
        self.install_signal_handlers()
        self._poller = select.poll()
        self._poller.register(self._signal_r, select.POLLIN)
        heartbeats = self.shm.heartbeats
        heartbeats.register(self.name, os.getpid())
        heartbeats.set_state(self.name, STATE_STARTING)
        try:
            self.setup()
        except Exception:
            logging.getLogger(f"rmqd.{self.name}").exception("%s failed to boot", self.name)
            return EXIT_BOOT_FAILED
        for doorbell, _ready, _wanted in self._wait_sources:
            self._poller.register(doorbell.fileno(), select.POLLIN)
        heartbeats.set_state(self.name, STATE_RUNNING)
        logging.getLogger(f"rmqd.{self.name}").info("%s ready", self.name)
        positions = self.shm.positions
        deleted_seq = positions.files_deleted_seq
        try:
            while not self.stop_requested and self.parent_alive():
                heartbeats.beat(self.name)
                if positions.files_deleted_seq != deleted_seq:
                    deleted_seq = positions.files_deleted_seq
                    self.release_deleted_files()
                if not self.run_once():
                    self.idle_wait(self.idle_timeout())
        finally:
            heartbeats.set_state(self.name, STATE_STOPPING)
            self.teardown()
        heartbeats.set_state(self.name, STATE_STOPPED)
        return EXIT_OK


def parse_worker_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="an rmqd broker process (started by the supervisor)")
    parser.add_argument("--config-json", required=True, help="the BrokerConfig as JSON")
    parser.add_argument("--shm", required=True, help="path of the broker's shared-memory segment")
    parser.add_argument("--fds", default="{}", help="JSON map of ring/doorbell name -> inherited eventfd")
    parser.add_argument("--abnormal", action="store_true", help="the last stop was not clean")
    return parser.parse_args(argv)


def run_from_argv(worker_class: type[WorkerProcess], argv: list[str] | None = None) -> int:
    """Entry point of every worker module: parse, attach, run, map failures to exit codes."""
    args = parse_worker_args(argv)
    cfg = BrokerConfig.from_dict(orjson.loads(args.config_json))
    setup_logging(worker_class.name, cfg.logs_dir)
    die_with_parent()
    log = logging.getLogger(f"rmqd.{worker_class.name}")
    if os.getppid() != supervisor_pid():
        log.error("supervisor %d is gone; not starting", supervisor_pid())
        return EXIT_BOOT_FAILED
    try:
        shm = open_broker_shm(args.shm, {k: int(v) for k, v in orjson.loads(args.fds).items()})
    except Exception:
        log.exception("cannot attach shared memory %s", args.shm)
        return EXIT_BOOT_FAILED
    started = time.monotonic()
    try:
        code = worker_class(cfg, shm, abnormal=args.abnormal).run()
    except Exception:
        log.exception("%s failed after %.1f s", worker_class.name, time.monotonic() - started)
        code = EXIT_ERROR
    finally:
        shm.close()
    log.info("%s exiting with code %d", worker_class.name, code)
    return code
