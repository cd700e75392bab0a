"""Start a real broker tree with `rmqd start` for process and crash tests, and always clean it up.

Every broker gets free ports and its own store under the test's tmp_path. `stop()` uses `rmqd
stop`; `kill_tree()` sends SIGKILL to every pid of the tree (supervisor + children + namesrv).
The fixture's finalizer kills whatever is still alive, by PID, so a failing test leaves nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from shm import remove_segment_of
from tests.helpers import free_port, wait_until

BROKER_PROCESSES = ("writer", "flusher", "dispatcher", "cleaner", "holder", "front")
RMQD = [sys.executable, "-m", "cli.main"]
REPO_ROOT = str(Path(__file__).resolve().parent.parent)


class BrokerTree:
    def __init__(
        self,
        store_dir: Path,
        *,
        flush: str = "ASYNC_FLUSH",
        properties: dict[str, object] | None = None,
        port: int | None = None,
        namesrv_port: int | None = None,
    ) -> None:
        self.store_dir = str(store_dir)
        self.flush = flush
        self.properties = {
            "mappedFileSizeCommitLog": 16 << 20,
            "mappedFileSizeConsumeQueue": 60_000,
            "shmRequestRingBytes": 16 << 20,
            "metricsPort": 0,
            **(properties or {}),
        }
        self.port = port or free_port()
        self.namesrv_port = namesrv_port or free_port()
        self.process: subprocess.Popen | None = None
        self.known_pids: set[int] = set()
        self.output_path = os.path.join(self.store_dir + ".out")
        os.makedirs(self.store_dir, exist_ok=True)

    @property
    def namesrv_addr(self) -> str:
        return f"127.0.0.1:{self.namesrv_port}"

    @property
    def broker_addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start_command(self) -> list[str]:
        cmd = [
            *RMQD,
            "start",
            "--store-dir",
            self.store_dir,
            "--port",
            str(self.port),
            "--namesrv-port",
            str(self.namesrv_port),
            "--flush",
            self.flush,
        ]
        for key, value in self.properties.items():
            cmd += ["-p", f"{key}={value}"]
        return cmd

    def start(self, timeout_s: float = 60.0) -> BrokerTree:
        out = open(self.output_path, "ab")  # noqa: SIM115 - handed to the child, closed on stop
        env = {**os.environ, "PYTHONPATH": REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.process = subprocess.Popen(
            self.start_command(),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=REPO_ROOT,
        )
        out.close()
        self.known_pids.add(self.process.pid)
        wait_until(self._ready_or_dead, timeout_s, "broker tree to become ready")
        if self.process.poll() is not None:
            raise AssertionError(
                f"rmqd start exited with {self.process.returncode}:\n{self.output()[-4000:]}"
            )
        return self

    def __enter__(self) -> BrokerTree:
        """`with BrokerTree(...) as tree:` starts the tree and always cleans it up."""
        try:
            return self.start()
        except BaseException:
            self.cleanup()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()

    def _ready_or_dead(self) -> bool:
        if self.process.poll() is not None:
            return True
        status = self.status()
        for proc in status.get("processes", []):
            self.known_pids.add(proc["pid"])
        states = {p["name"]: p["state"] for p in status.get("processes", [])}
        # The supervisor turns "running" only once every process of its table is up.
        return status.get("running", False) and states.get("supervisor") == "running"

    def status(self) -> dict:
        from workers.supervisor import broker_status

        return broker_status(self.store_dir)

    def pids(self) -> dict[str, int]:
        pids = {p["name"]: p["pid"] for p in self.status().get("processes", []) if p["pid"]}
        if self.process is not None:
            pids["supervisor"] = self.process.pid
        self.known_pids.update(pids.values())
        return pids

    def output(self) -> str:
        try:
            with open(self.output_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def stop(self, timeout_s: float = 60.0) -> int:
        """`rmqd stop`; returns its exit code and waits for the supervisor to exit."""
        env = {**os.environ, "PYTHONPATH": REPO_ROOT}
        result = subprocess.run(
            [*RMQD, "stop", "--store-dir", self.store_dir],
            env=env,
            cwd=REPO_ROOT,
            capture_output=True,
            timeout=timeout_s,
        )
        if self.process is not None:
            self.process.wait(timeout_s)
        return result.returncode

    def kill_tree(self) -> None:
        """SIGKILL every process of the tree at once (a power cut, as far as processes go)."""
        pids = set(self.pids().values()) | self.known_pids
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.process is not None:
            self.process.wait(10)
        wait_until(lambda: not any(_alive(p) for p in pids), 10, "killed processes to disappear")

    def cleanup(self) -> None:
        for pid in self.known_pids:
            if _alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self.process is not None and self.process.poll() is None:
            self.process.wait(10)
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in self.known_pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not any(_alive(p) for p in self.known_pids):
            remove_segment_of(self.store_dir)  # a killed tree leaves its segment in /dev/shm


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
