"""The broker a benchmark runs against: a throwaway one it starts, or a running one it watches.

`ThrowawayBroker` runs `rmqd start` (the real CLI, as tests/broker_harness.py does, without importing
tests/) on free ports with its store in a fresh temporary directory, waits until every process
reports RUNNING, and stops it by PID (SIGTERM to the supervisor, then SIGKILL to any pid of the tree
still alive) and deletes the store. `BrokerMonitor` reads what the broker publishes: the shm
counters (put_messages_total, write_groups_total, flush_total, ...) through
workers.supervisor.broker_status when the store directory is on this machine, or GET_BROKER_RUNTIME_INFO
over the wire otherwise, and the CPU time and memory of every process of the tree through psutil.

Called by the bench modules (bench_produce.py, later consume/e2e benches) from their main thread.
Not thread-safe: one owner per object.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

REPO_ROOT = str(Path(__file__).resolve().parents[1])
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from rmqd.protocol import RequestCode, ResponseCode, decode_json_body  # noqa: E402
from shm import attach_readonly, remove_segment_of, shm_path_for_store  # noqa: E402
from workers.supervisor import PROCESSES, broker_status  # noqa: E402

BROKER_PROCESSES = tuple(name for name, *_ in PROCESSES)
RUNTIME_INFO_KEYS = {  # GET_BROKER_RUNTIME_INFO table key -> shm counter name
    "putMessageTimesTotal": "put_messages_total",
    "putMessageSizeTotal": "put_bytes_total",
    "writeGroupsTotal": "write_groups_total",
    "flushTotal": "flush_total",
}
LINE_NUMBER = re.compile(r":\d+\)$")
COUNTERS = ("put_messages_total", "put_bytes_total", "write_groups_total", "flush_total",
            "flush_time_us_total", "write_pos", "flush_pos")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class BrokerStartError(RuntimeError):
    """`rmqd start` exited or did not become ready in time."""


class ThrowawayBroker:
    """A broker on free ports with a temporary store; always `stop()` it (it is a context manager)."""

    def __init__(self, flush: str = "ASYNC_FLUSH", properties: dict[str, str] | None = None,
                 parent_dir: str | None = None, keep_store: bool = False) -> None:
        self.flush = flush
        self.properties = dict(properties or {})
        self.root = tempfile.mkdtemp(prefix="rmqd-bench-", dir=parent_dir)
        self.store_dir = os.path.join(self.root, "store")
        self.output_path = os.path.join(self.root, "rmqd.out")
        self.port, self.namesrv_port = free_port(), free_port()
        self.keep_store = keep_store
        self.process: subprocess.Popen | None = None
        self.known_pids: set[int] = set()

    @property
    def namesrv_addr(self) -> str:
        return f"127.0.0.1:{self.namesrv_port}"

    @property
    def supervisor_pid(self) -> int | None:
        return self.process.pid if self.process else None

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "cli.main", "start", "--store-dir", self.store_dir,
               "--port", str(self.port), "--namesrv-port", str(self.namesrv_port), "--flush", self.flush]
        for key, value in self.properties.items():
            cmd += ["-p", f"{key}={value}"]
        return cmd

    def start(self, timeout_s: float = 120.0) -> ThrowawayBroker:
        env = {**os.environ, "PYTHONPATH": REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
        with open(self.output_path, "ab") as out:
            self.process = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=env, cwd=REPO_ROOT)
        self.known_pids.add(self.process.pid)
        deadline = time.monotonic() + timeout_s
        while not self._ready():
            if self.process.poll() is not None:
                raise BrokerStartError(f"rmqd start exited with {self.process.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                self.stop()
                raise BrokerStartError(f"broker not ready after {timeout_s:.0f} s:\n{self.output()}")
            time.sleep(0.05)
        return self

    def _ready(self) -> bool:
        status = broker_status(self.store_dir)
        states = {}
        for proc in status.get("processes", []):
            self.known_pids.add(proc["pid"])
            states[proc["name"]] = proc["state"]
        return bool(status.get("running")) and all(states.get(n) == "running" for n in BROKER_PROCESSES)

    def output(self, tail_chars: int = 4000) -> str:
        try:
            with open(self.output_path, errors="replace") as f:
                return f.read()[-tail_chars:]
        except FileNotFoundError:
            return ""

    def stop(self, timeout_s: float = 60.0) -> None:
        """SIGTERM the supervisor (it stops its children in order); SIGKILL whatever pid is left."""
        if self.process is not None and self.process.poll() is None:
            self._ready()  # learn pids of processes restarted during the run
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                print(f"broker supervisor {self.process.pid} did not stop in {timeout_s:.0f} s: "
                      "killing the tree", file=sys.stderr)
        kill_pids(self.known_pids)
        if self.process is not None and self.process.poll() is None:
            self.process.wait(10)
        gone_by = time.monotonic() + 10.0  # a SIGKILLed process is alive until the kernel has reaped it
        while any(_alive(p) for p in self.known_pids) and time.monotonic() < gone_by:
            time.sleep(0.05)
        if not self.keep_store:
            if not any(_alive(p) for p in self.known_pids):
                remove_segment_of(self.store_dir)  # left behind when the tree had to be killed
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> ThrowawayBroker:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def kill_pids(pids: Iterable[int]) -> None:
    """SIGKILL every pid of `pids` that is still alive (gone and zombie pids are skipped)."""
    for pid in sorted(pids):
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@dataclass(slots=True)
class ProcSample:
    """CPU seconds and memory of one broker process at one moment."""

    cpu_s: float
    rss: int
    anon: int  # rss minus file-backed and shared pages (RssAnon): the process's own heap


class BrokerMonitor:
    """Counters and per-process CPU/memory of one broker (local store dir, or only its address)."""

    def __init__(self, store_dir: str | None = None, namesrv: str | None = None,
                 supervisor_pid: int | None = None) -> None:
        self.store_dir = store_dir
        self.namesrv = namesrv
        self.supervisor_pid = supervisor_pid
        self._procs: dict[str, psutil.Process] = {}
        self._admin: Any = None
        self._remoting: Any = None
        self._shm: Any = None

    @property
    def local(self) -> bool:
        return self.store_dir is not None

    def counters(self) -> dict[str, int]:
        """put_messages_total, write_groups_total, flush_total, ... ({} when nothing is readable)."""
        if self.store_dir is not None:
            positions = broker_status(self.store_dir).get("positions", {})
            counters = {name: int(positions[name]) for name in COUNTERS if name in positions}
            counters.update(self._send_rt_counters())
            return counters
        return self._remote_counters()

    def _send_rt_counters(self) -> dict[str, int]:
        """The front's send RT histogram (hand-off to the writer -> answer): count and sum (us)."""
        try:
            if self._shm is None:
                self._shm = attach_readonly(shm_path_for_store(self.store_dir))
            positions = self._shm.positions
            return {"send_rt_count": sum(positions.send_rt_hist_words()),
                    "send_rt_sum_us": positions.send_rt_sum_us}
        except (OSError, ValueError, AttributeError):  # broker gone, or a broker without these counters
            return {}

    def _remote_counters(self) -> dict[str, int]:
        if self.namesrv is None:
            return {}
        try:
            if self._remoting is None:
                from rmqd.client import MQAdmin
                from rmqd.client._remoting import RemotingClient
                self._admin = MQAdmin(self.namesrv)
                self._admin.start()
                self._remoting = RemotingClient(name="rmqd-bench-monitor")
            totals: dict[str, int] = {}
            for addr in self._admin.master_addrs():
                reply = self._remoting.invoke(addr, RequestCode.GET_BROKER_RUNTIME_INFO, {}, b"", 3000)
                if reply.code != ResponseCode.SUCCESS:
                    continue
                table = decode_json_body(reply.body).get("table", {})
                for key, name in RUNTIME_INFO_KEYS.items():
                    if key in table:
                        totals[name] = totals.get(name, 0) + int(float(table[key]))
            return totals
        except Exception as exc:  # noqa: BLE001 - a monitor must never stop a benchmark
            print(f"broker runtime info unavailable: {exc}", file=sys.stderr)
            return {}

    def processes(self) -> dict[str, psutil.Process]:
        """name -> psutil.Process for every live process of the tree (refreshed on restarts)."""
        pids: dict[str, int] = {}
        if self.store_dir is not None:
            status = broker_status(self.store_dir)
            pids = {p["name"]: p["pid"] for p in status.get("processes", []) if p.get("pid")}
            if status.get("supervisor_pid"):
                pids["supervisor"] = int(status["supervisor_pid"])
        elif self.supervisor_pid is not None:
            try:
                root = psutil.Process(self.supervisor_pid)
                pids = {"supervisor": root.pid}
                for child in root.children(recursive=True):
                    pids[_worker_name(child)] = child.pid
            except psutil.NoSuchProcess:
                pids = {}
        for name, pid in pids.items():
            known = self._procs.get(name)
            if known is None or known.pid != pid:
                try:
                    self._procs[name] = psutil.Process(pid)
                except psutil.NoSuchProcess:
                    self._procs.pop(name, None)
        return dict(self._procs)

    def sample(self) -> dict[str, ProcSample]:
        """CPU seconds and memory per process name (processes that vanished are left out)."""
        samples = {name: proc_sample(proc) for name, proc in self.processes().items()}
        return {name: sample for name, sample in samples.items() if sample is not None}

    def close(self) -> None:
        if self._shm is not None:
            self._shm.close()
            self._shm = None
        if self._remoting is not None:
            self._remoting.close()
            self._admin.shutdown()
            self._remoting = self._admin = None


def proc_sample(proc: psutil.Process | int) -> ProcSample | None:
    """CPU seconds and memory of one process (a pid or psutil.Process); None once it is gone."""
    try:
        proc = proc if isinstance(proc, psutil.Process) else psutil.Process(proc)
        with proc.oneshot():
            times, mem = proc.cpu_times(), proc.memory_info()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return ProcSample(times.user + times.system, mem.rss, mem.rss - mem.shared)


def machine_sample() -> ProcSample:
    """Busy CPU seconds of the whole machine (shows what other programs took during a run)."""
    times = psutil.cpu_times()
    return ProcSample(sum(times) - times.idle - getattr(times, "iowait", 0.0), 0, 0)


def machine_busy_cores(seconds: float = 1.0) -> float:
    """Cores the machine is busy with right now (before a run: anything above ~0.1 is noise)."""
    return psutil.cpu_percent(interval=seconds) / 100 * (psutil.cpu_count() or 1)


def _worker_name(proc: psutil.Process) -> str:
    """'writer' for `python -m workers.writer ...`; the pid otherwise."""
    try:
        cmdline = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return str(proc.pid)
    for arg in cmdline:
        if arg.startswith("workers."):
            return arg.split(".", 1)[1]
    return str(proc.pid)


def cpu_cores(before: dict[str, ProcSample], after: dict[str, ProcSample],
              seconds: float) -> dict[str, float]:
    """Cores used per process between two samples (a process restarted in between is left out)."""
    if seconds <= 0:
        return {}
    return {name: round((after[name].cpu_s - before[name].cpu_s) / seconds, 3)
            for name in after if name in before and after[name].cpu_s >= before[name].cpu_s}


def counter_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {name: after[name] - before[name] for name in after if name in before}


# ---------------------------------------------------------------------------- profiling


class PySpyRecorder:
    """`py-spy record` on chosen processes for one window; summarizes where each spent its CPU.

    Writes DIR/<name>.txt in py-spy's raw (collapsed stack) format, which flamegraph tools read, and
    returns the top functions by own (self) samples. Only samples holding the GIL are taken (`--gil`):
    on this VM py-spy cannot tell a thread blocked in poll() from a running one, so without it the
    waits dominate. py-spy must be on PATH (`pip install py-spy`).
    """

    def __init__(self, out_dir: str, rate_hz: int = 100) -> None:
        self.out_dir = out_dir
        self.rate_hz = rate_hz
        self.running: dict[str, subprocess.Popen] = {}
        if shutil.which("py-spy") is None:
            raise SystemExit("--py-spy needs py-spy on PATH: pip install py-spy")
        os.makedirs(out_dir, exist_ok=True)

    def start(self, pids: dict[str, int], seconds: float) -> None:
        for name, pid in pids.items():
            cmd = ["py-spy", "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))),
                   "--rate", str(self.rate_hz), "--nonblocking", "--gil", "--format", "raw",
                   "--output", os.path.join(self.out_dir, f"{name}.txt")]
            self.running[name] = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def finish(self, top: int = 8) -> dict[str, list[tuple[str, float]]]:
        """Wait for the recorders; name -> [(function (file:line), share of that process's samples)]."""
        summary = {}
        for name, proc in self.running.items():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            summary[name] = top_self_frames(os.path.join(self.out_dir, f"{name}.txt"), top)
        self.running.clear()
        return summary


def top_self_frames(path: str, top: int) -> list[tuple[str, float]]:
    """Functions ranked by samples in which they were the innermost frame, as shares of all samples."""
    counts: dict[str, int] = {}
    total = 0
    try:
        with open(path) as f:
            for line in f:
                stack, _, count = line.rstrip("\n").rpartition(" ")
                if not stack or not count.isdigit():
                    continue
                leaf = LINE_NUMBER.sub(")", stack.rsplit(";", 1)[-1])  # one row per function
                counts[leaf] = counts.get(leaf, 0) + int(count)
                total += int(count)
    except FileNotFoundError:
        return []
    ranked = sorted(counts.items(), key=lambda item: -item[1])[:top]
    return [(frame, n / total) for frame, n in ranked]


def add_broker_arguments(parser, *, start_help: str) -> None:
    """The "broker" option group every benchmark that talks to a broker shares."""
    target = parser.add_argument_group("broker")
    target.add_argument("-n", "--namesrv", help="host:port of the namesrv of a running broker")
    target.add_argument("--start-broker", action="store_true", help=start_help)
    target.add_argument("--flush", default="ASYNC_FLUSH", choices=("ASYNC_FLUSH", "SYNC_FLUSH"),
                        help="flushDiskType of the started broker (with --namesrv: only a label)")
    target.add_argument("--store-dir", help="store dir of the running broker (shm counters, CPU, RSS)")
    target.add_argument("--store-parent", help="where --start-broker makes its temp store (default: $TMPDIR)")
    target.add_argument("-p", "--property", action="append", metavar="KEY=VALUE",
                        help="broker.conf key for the started broker; repeatable")
    target.add_argument("--keep-store", action="store_true", help="keep the throwaway store")
