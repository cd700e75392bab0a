"""Supervisor (`rmqd start`): boots, watches and stops the broker's processes by one written policy.

The whole policy is the PROCESSES table below. Boot: take the store lock, note whether the last
stop was clean (the abort file), create the abort file and the shared-memory segment, start the
namesrv (when embedded) and then each process in table order, waiting for it to publish READY in
its heartbeat slot before starting the next (dramatiq's "wait for workers" rule). A process that
exits during boot halts everything: the broker exits with EXIT_BOOT_FAILED and a message naming
the process, its exit status and its log file. It never loops.

Running: every 0.5 s reap children and apply the table's policy to any that exited, and check
heartbeats (a process silent for heartbeatTimeoutMills gets SIGABRT, then SIGKILL on the next
round, as gunicorn's murder_workers). Restarts are bounded: more than MAX_RESTARTS of one process
within RESTART_WINDOW_S (or MAX_REBOOTS whole-broker reboots) stops the broker with
EXIT_CHILD_FAILED.

Stop (SIGTERM/SIGINT, or `rmqd stop`): SIGTERM the processes in STOP_ORDER — the front first (stop
accepting, answer what is in flight), the writer (finish its batches), the dispatcher (dispatch
and flush the ConsumeQueue), the flusher last (final fdatasync and checkpoint) — then remove the
abort file only if every process exited cleanly, unlink the segment and release the lock.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

import orjson
import psutil

from rmqd.config import BrokerConfig
from rmqd.errors import StoreLockedError
from rmqd.exit_codes import (
    EXIT_BOOT_FAILED,
    EXIT_CHILD_FAILED,
    EXIT_ERROR,
    EXIT_OK,
    EXIT_STORE_LOCKED,
)
from rmqd.store.files import StoreLock, abort_exists, create_abort, remove_abort
from shm import BrokerShm, attach_readonly, create_broker_shm, shm_path_for_store
from shm.heartbeats import STATE_RUNNING
from workers.base import SUPERVISOR_PID_ENV, setup_logging

log = logging.getLogger("rmqd.supervisor")

RESTART = "restart"  # start this process again, alone
RESTART_ALL = "restart-all"  # stop every process and boot the broker again (abnormal recovery)

PROCESSES = (
    # name          module                start after    on unexpected exit
    ("writer", "workers.writer", None, RESTART_ALL),  # owns the CommitLog tail
    ("flusher", "workers.flusher", "writer", RESTART_ALL),  # SYNC_FLUSH acks wait on it
    ("dispatcher", "workers.dispatcher", "writer", RESTART),  # resumes from the checkpoint
    ("cleaner", "workers.cleaner", "writer", RESTART),
    ("holder", "workers.holder", "dispatcher", RESTART),  # parked pulls time out client-side
    ("front", "workers.front", "holder", RESTART),  # unacked sends are retried
    ("scheduler", "workers.scheduler", "front", RESTART),  # resumes from delayOffset.json (at-least-once)
    # Operations: metrics serves Prometheus, samples TPS and probes SELF_TEST_TOPIC through the front,
    # so it boots last and stops first; it holds no state, and its failure never stops the broker
    # beyond the restart budget (a busy metricsPort is retried inside it, not by restarts).
    ("metrics", "workers.metrics", "front", RESTART),
)
STOP_ORDER = ("metrics", "scheduler", "front", "holder", "writer", "dispatcher", "cleaner", "flusher")
NAMESRV = "namesrv"
MAX_RESTARTS, RESTART_WINDOW_S = 5, 60.0
MAX_REBOOTS, REBOOT_WINDOW_S = 3, 300.0
BOOT_TIMEOUT_S = 600.0  # recovery of a large unflushed tail may take a while; the child must stay alive
STOP_TIMEOUT_S = 30.0
PID_FILE = "rmqd.pid"


@dataclass
class Child:
    name: str
    module: str
    policy: str
    process: subprocess.Popen | None = None
    restarts: list[float] = field(default_factory=list)
    abort_sent: bool = False


# glibc malloc for the workers (the environment wins when it sets them). With the defaults, glibc
# gave back the dispatcher's 1 MiB CommitLog chunk copies to the kernel between rounds and
# faulted fresh pages for the next: 25,600 faults/s at 1 KiB full speed, a page fault costing
# several us in this VM (front: 6,500/s). Serving up to 4 MiB from the heap and keeping up to
# 64 MiB of freed heap: dispatcher 2,000 and front 0 faults/s, dispatcher CPU -18 %, 140,186 ->
# 146,576 msg/s (`perf stat -e page-faults -p PID` during `bench.py produce -s 1024 -b 64 -t 32`).
WORKER_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(4 << 20), "MALLOC_TRIM_THRESHOLD_": str(64 << 20)}


class BootFailed(Exception):
    """A process exited or timed out before it was ready."""


class StopDuringBoot(Exception):
    """SIGTERM/SIGINT arrived while booting: stop what was started, cleanly."""


class Supervisor:
    def __init__(self, cfg: BrokerConfig, *, embedded_namesrv: bool, namesrv_port: int) -> None:
        self.cfg = cfg
        self.embedded_namesrv = embedded_namesrv
        self.namesrv_addr = f"127.0.0.1:{namesrv_port}"
        self.children = {name: Child(name, module, policy) for name, module, _after, policy in PROCESSES}
        self.namesrv: Child | None = Child(NAMESRV, "workers.namesrv", RESTART) if embedded_namesrv else None
        self.shm: BrokerShm | None = None
        self.eventfds: dict[str, int] = {}
        self.shm_path = shm_path_for_store(cfg.store_dir)
        self.stop_requested = False
        self.reboots: list[float] = []
        self._signal_r, self._signal_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    # -- signals -----------------------------------------------------------------------------
    def handle_sigterm(self, signum: int, frame: object) -> None:
        self.stop_requested = True

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.handle_sigterm)
        signal.signal(signal.SIGINT, self.handle_sigterm)
        signal.set_wakeup_fd(self._signal_w, warn_on_full_buffer=False)

    # -- spawning ----------------------------------------------------------------------------
    def spawn(self, child: Child, *, abnormal: bool) -> None:
        if child.name == NAMESRV:
            cmd = [sys.executable, "-m", child.module, "--listen", self.namesrv_addr, "--supervised",
                   "--logs-dir", self.cfg.logs_dir]
            fds: tuple[int, ...] = ()
        else:
            cmd = [
                sys.executable,
                "-m",
                child.module,
                "--config-json",
                orjson.dumps(self.cfg.to_dict()).decode(),
                "--shm",
                self.shm_path,
                "--fds",
                orjson.dumps(self.eventfds).decode(),
            ]
            if abnormal:
                cmd.append("--abnormal")
            fds = tuple(self.eventfds.values())
        env = {**WORKER_MALLOC_ENV, **os.environ, SUPERVISOR_PID_ENV: str(os.getpid())}
        child.process = subprocess.Popen(cmd, pass_fds=fds, stdin=subprocess.DEVNULL, close_fds=True, env=env)
        child.abort_sent = False
        log.info("started %s (pid %d)", child.name, child.process.pid)

    def wait_ready(self, child: Child) -> None:
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        while True:
            code = child.process.poll()
            if code is not None:
                raise BootFailed(
                    f"{child.name} exited during boot with {describe_exit(code)}; "
                    f"see {os.path.join(self.cfg.logs_dir, child.name + '.log')}"
                )
            if self._is_ready(child):
                return
            if time.monotonic() > deadline:
                raise BootFailed(f"{child.name} was not ready after {BOOT_TIMEOUT_S:.0f} s")
            if self._sleep(0.01):
                raise StopDuringBoot()

    def _is_ready(self, child: Child) -> bool:
        if child.name == NAMESRV:
            host, _, port = self.namesrv_addr.rpartition(":")
            with socket.socket() as sock:
                return sock.connect_ex((host, int(port))) == 0
        heartbeats = self.shm.heartbeats
        return (
            heartbeats.pid(child.name) == child.process.pid and heartbeats.state(child.name) == STATE_RUNNING
        )

    def _sleep(self, seconds: float) -> bool:
        """Sleep, waking at once on a signal; returns whether a stop was requested."""
        select.select([self._signal_r], [], [], seconds)
        try:
            os.read(self._signal_r, 512)
        except BlockingIOError:
            pass
        return self.stop_requested

    # -- boot --------------------------------------------------------------------------------
    def boot(self, *, abnormal: bool) -> None:
        if abnormal:
            log.warning(
                "abort file found in %s: the last stop was not clean; abnormal recovery will run",
                self.cfg.store_dir,
            )
        ring_sizes = {
            "request": self.cfg.shmRequestRingBytes,
            "ack": self.cfg.shmAckRingBytes,
            "park": self.cfg.shmSmallRingBytes,
            "wake": self.cfg.shmSmallRingBytes,
            "arrival": self.cfg.shmSmallRingBytes,
        }
        self.shm, self.eventfds = create_broker_shm(self.shm_path, ring_sizes)
        self.shm.heartbeats.register("supervisor", os.getpid())  # state STARTING until every child is up
        if self.namesrv is not None:
            if self.namesrv.process is None or self.namesrv.process.poll() is not None:
                self.spawn(self.namesrv, abnormal=False)
                self.wait_ready(self.namesrv)
            # The namesrv does not attach to shm: the supervisor keeps its slot (pid, state).
            self.shm.heartbeats.register(NAMESRV, self.namesrv.process.pid)
            self.shm.heartbeats.set_state(NAMESRV, STATE_RUNNING)
        for name, _module, _after, _policy in PROCESSES:
            self.spawn(self.children[name], abnormal=abnormal)
            self.wait_ready(self.children[name])
        self.shm.heartbeats.set_state("supervisor", STATE_RUNNING)  # `rmqd status`: the broker is ready

    # -- running -----------------------------------------------------------------------------
    def watch(self) -> int:
        """Main loop; returns the exit code once a stop is requested or the policy gives up."""
        while not self._sleep(0.5):
            self.shm.heartbeats.beat("supervisor")
            if self.namesrv is not None and self.namesrv.process is not None:
                self.shm.heartbeats.beat(NAMESRV)  # the supervisor keeps the namesrv's slot
            failed = self.reap_children()
            if failed is not None:
                return failed
            self.check_heartbeats()
        return EXIT_OK

    def reap_children(self) -> int | None:
        for child in self._all_children():
            code = child.process.poll() if child.process else None
            if code is None:
                continue
            log.error(
                "%s (pid %d) exited unexpectedly with %s", child.name, child.process.pid, describe_exit(code)
            )
            if not self._within_budget(child):
                log.error(
                    "%s failed %d times within %.0f s: stopping the broker",
                    child.name,
                    len(child.restarts),
                    RESTART_WINDOW_S,
                )
                return EXIT_CHILD_FAILED
            if child.policy == RESTART_ALL:
                return self.reboot(child.name)
            self.spawn(child, abnormal=True)
            if self.shm is not None and child.name != NAMESRV:
                self.shm.heartbeats.set_restarts(child.name, len(child.restarts))
        return None

    def _within_budget(self, child: Child) -> bool:
        now = time.monotonic()
        child.restarts = [t for t in child.restarts if now - t < RESTART_WINDOW_S] + [now]
        return len(child.restarts) <= MAX_RESTARTS

    def reboot(self, cause: str) -> int | None:
        now = time.monotonic()
        self.reboots = [t for t in self.reboots if now - t < REBOOT_WINDOW_S] + [now]
        if len(self.reboots) > MAX_REBOOTS:
            log.error("broker rebooted %d times within %.0f s: giving up", len(self.reboots), REBOOT_WINDOW_S)
            return EXIT_CHILD_FAILED
        log.warning("%s died: stopping every broker process and booting again with abnormal recovery", cause)
        self.stop_children(include_namesrv=False)
        self.close_shm()
        try:
            self.boot(abnormal=True)
        except BootFailed as exc:
            log.error("reboot failed: %s", exc)
            return EXIT_BOOT_FAILED
        return None

    def check_heartbeats(self) -> None:
        timeout_ms = self.cfg.heartbeatTimeoutMills
        for child in self.children.values():
            age_ms = self.shm.heartbeats.age_ms(child.name)
            if age_ms is None or age_ms <= timeout_ms or child.process.poll() is not None:
                continue
            sig = signal.SIGKILL if child.abort_sent else signal.SIGABRT
            log.error(
                "%s (pid %d) silent for %.0f ms: sending %s", child.name, child.process.pid, age_ms, sig.name
            )
            child.process.send_signal(sig)
            child.abort_sent = True

    def _all_children(self) -> list[Child]:
        extra = [self.namesrv] if self.namesrv is not None else []
        return [*self.children.values(), *extra]

    # -- stop --------------------------------------------------------------------------------
    def stop_children(self, *, include_namesrv: bool) -> bool:
        """SIGTERM each process in STOP_ORDER and wait; returns whether all exited cleanly."""
        clean = True
        order = [self.children[name] for name in STOP_ORDER]
        if include_namesrv and self.namesrv is not None:
            order.append(self.namesrv)
        for child in order:
            clean &= stop_process(child)
        return clean

    def close_shm(self) -> None:
        if self.shm is not None:
            self.shm.close(close_eventfds=True)
            try:
                os.unlink(self.shm_path)
            except FileNotFoundError:
                pass
            self.shm = None


def stop_process(child: Child) -> bool:
    process = child.process
    if process is None:
        return True
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.error(
                "%s (pid %d) did not stop within %.0f s: killing it", child.name, process.pid, STOP_TIMEOUT_S
            )
            process.kill()
            process.wait()
    code = process.returncode
    log.info("%s stopped (%s)", child.name, describe_exit(code))
    child.process = None
    return code == EXIT_OK


def describe_exit(code: int) -> str:
    if code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"exit code {code}"


def _pid_file(store_dir: str) -> str:
    return os.path.join(store_dir, PID_FILE)


def run_broker(cfg: BrokerConfig, *, embedded_namesrv: bool, namesrv_port: int, daemon: bool) -> int:
    """`rmqd start`: run the broker in the foreground (or detached with `daemon`) until stopped."""
    os.makedirs(cfg.store_dir, exist_ok=True)
    if daemon:
        return daemonize(
            lambda: run_broker(
                cfg, embedded_namesrv=embedded_namesrv, namesrv_port=namesrv_port, daemon=False
            ),
            cfg,
        )
    setup_logging("supervisor", cfg.logs_dir)
    if embedded_namesrv:
        cfg.namesrvAddr = f"127.0.0.1:{namesrv_port}"
    try:
        lock = StoreLock(cfg.store_dir)
        lock.acquire()
    except StoreLockedError as exc:
        log.error("%s", exc)
        return EXIT_STORE_LOCKED
    supervisor = Supervisor(cfg, embedded_namesrv=embedded_namesrv, namesrv_port=namesrv_port)
    supervisor.install_signal_handlers()
    abnormal = abort_exists(cfg.store_dir)
    create_abort(cfg.store_dir)
    _write_pid_file(cfg, supervisor.shm_path)
    code = EXIT_ERROR
    try:
        supervisor.boot(abnormal=abnormal)
        log.info(
            "rmqd broker %s ready on %s:%d (namesrv %s, store %s, %s)",
            cfg.brokerName,
            cfg.brokerIP1,
            cfg.listenPort,
            cfg.namesrvAddr,
            cfg.store_dir,
            cfg.flushDiskType,
        )
        code = supervisor.watch()
    except BootFailed as exc:
        log.error("broker failed to boot: %s", exc)
        code = EXIT_BOOT_FAILED
    except StopDuringBoot:
        log.info("stop requested during boot")
        code = EXIT_OK
    finally:
        clean = supervisor.stop_children(include_namesrv=True)
        supervisor.close_shm()
        if clean and code == EXIT_OK:
            remove_abort(cfg.store_dir)
            log.info("broker stopped cleanly")
        else:
            log.warning(
                "broker stopped with exit code %d; abort file kept: next start runs abnormal recovery", code
            )
        _remove_pid_file(cfg.store_dir)
        lock.release()
    return code


def daemonize(run, cfg: BrokerConfig) -> int:
    """Detach (double fork, new session, output to {logs}/rmqd.out); the parent reports boot."""
    os.makedirs(cfg.logs_dir, exist_ok=True)
    ready_r, ready_w = os.pipe()
    if os.fork() > 0:
        os.close(ready_w)
        return _await_daemon(ready_r, cfg)
    os.close(ready_r)
    os.setsid()
    if os.fork() > 0:
        os._exit(EXIT_OK)
    out = os.open(os.path.join(cfg.logs_dir, "rmqd.out"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.set_inheritable(ready_w, False)  # held open until the daemon exits: EOF tells the parent
    os._exit(run())


def _await_daemon(ready_r: int, cfg: BrokerConfig) -> int:
    pid_file = _pid_file(cfg.store_dir)
    deadline = time.monotonic() + BOOT_TIMEOUT_S
    while time.monotonic() < deadline:
        status = broker_status(cfg.store_dir)
        states = {p["name"]: p["state"] for p in status["processes"]}
        if status["running"] and states.get("supervisor") == "running":  # set once boot completed
            print(f"rmqd started in the background (pid {status['supervisor_pid']}); logs in {cfg.logs_dir}")
            return EXIT_OK
        ready, _, _ = select.select([ready_r], [], [], 0.1)
        if ready and not os.read(ready_r, 1) and not os.path.exists(pid_file):
            print(f"rmqd failed to start; see {os.path.join(cfg.logs_dir, 'rmqd.out')}", file=sys.stderr)
            return EXIT_BOOT_FAILED
    print(f"rmqd did not become ready in {BOOT_TIMEOUT_S:.0f} s; see {cfg.logs_dir}", file=sys.stderr)
    return EXIT_BOOT_FAILED


def _write_pid_file(cfg: BrokerConfig, shm_path: str) -> None:
    path = _pid_file(cfg.store_dir)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(
            orjson.dumps(
                {
                    "pid": os.getpid(),
                    "shm": shm_path,
                    "store": cfg.store_dir,
                    "listen": f"{cfg.brokerIP1}:{cfg.listenPort}",
                    "namesrv": cfg.namesrvAddr,
                }
            )
        )
    os.replace(tmp, path)


def _remove_pid_file(store_dir: str) -> None:
    try:
        os.unlink(_pid_file(store_dir))
    except FileNotFoundError:
        pass


def _read_pid_file(store_dir: str) -> dict | None:
    try:
        with open(_pid_file(store_dir), "rb") as f:
            return orjson.loads(f.read())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None


def _supervisor_alive(info: dict | None) -> bool:
    if not info:
        return False
    try:
        return psutil.Process(int(info["pid"])).status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, KeyError, ValueError):
        return False


def stop_broker(store_dir: str, timeout_s: float = 60.0) -> int:
    """`rmqd stop`: SIGTERM the supervisor of `store_dir` and wait until every process is gone."""
    store_dir = os.path.abspath(os.path.expanduser(store_dir))
    info = _read_pid_file(store_dir)
    if not _supervisor_alive(info):
        print(f"no rmqd broker is running for store {store_dir}", file=sys.stderr)
        return EXIT_ERROR
    pids = [int(info["pid"])] + [p["pid"] for p in broker_status(store_dir)["processes"] if p["pid"]]
    os.kill(int(info["pid"]), signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = [pid for pid in pids if psutil.pid_exists(pid) and _not_zombie(pid)]
        if not alive:
            print(f"rmqd stopped (store {store_dir})")
            return EXIT_OK
        time.sleep(0.05)
    print(f"rmqd did not stop within {timeout_s:.0f} s; still running: {alive}", file=sys.stderr)
    return EXIT_ERROR


def _not_zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def broker_status(store_dir: str) -> dict:
    """`rmqd status`: processes with pids and states, shared positions and ring depths."""
    store_dir = os.path.abspath(os.path.expanduser(store_dir))
    info = _read_pid_file(store_dir)
    report: dict = {
        "store": store_dir,
        "supervisor_pid": info.get("pid") if info else None,
        "running": _supervisor_alive(info),
        "processes": [],
        "positions": {},
        "rings": {},
    }
    if not report["running"]:
        return report
    try:
        shm = attach_readonly(info["shm"])
    except Exception as exc:  # noqa: BLE001 - status must report, not crash
        report["error"] = f"cannot read shared memory {info['shm']}: {exc}"
        return report
    try:
        snapshot = shm.snapshot()
        owner = int((snapshot["heartbeats"].get("supervisor") or {}).get("pid") or 0)
        if owner != int(info["pid"]):
            # The segment a killed tree left behind, which this supervisor has not replaced yet (it
            # writes its pid file first): its states and positions are the dead tree's.
            report["booting"] = True
            return report
        now_ns = time.monotonic_ns()
        for name, slot in snapshot["heartbeats"].items():
            pid = int(slot.get("pid") or 0)
            if not pid:
                continue
            last = int(slot.get("last_beat_ns") or 0)
            report["processes"].append(
                {
                    "name": name,
                    "pid": pid,
                    "state": slot.get("state"),
                    "alive": psutil.pid_exists(pid) and _not_zombie(pid),
                    "restarts": int(slot.get("restarts") or 0),
                    "last_beat_age_ms": round((now_ns - last) / 1e6, 1) if last else None,
                }
            )
        report["positions"] = snapshot["positions"]
        report["rings"] = {name: ring["depth_bytes"] for name, ring in snapshot["rings"].items()}
    finally:
        shm.close()
    return report
