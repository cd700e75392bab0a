"""Fixtures for the shm tests: a private segment path in /dev/shm and peer processes stopped by PID."""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from shm import BrokerShm, create_broker_shm

REPO_ROOT = Path(__file__).resolve().parents[3]
PEER_SCRIPT = Path(__file__).with_name("shm_peer.py")
SMALL_RINGS = {"request": 4096, "ack": 4096, "park": 1024, "wake": 1024, "arrival": 1024}


@pytest.fixture
def shm_path() -> Iterator[str]:
    path = f"/dev/shm/rmqd-test-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    yield path
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


@pytest.fixture
def broker_shm(shm_path: str) -> Iterator[tuple[BrokerShm, dict[str, int]]]:
    shm, eventfds = create_broker_shm(shm_path, SMALL_RINGS)
    yield shm, eventfds
    shm.close(close_eventfds=True)
    shm.unlink()


class Peers:
    """Starts shm_peer.py children; the fixture stops every one of them by PID."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []
        self._stderr: dict[int, str] = {}

    def start(self, role: str, path: str, eventfds: dict[str, int], *args: object) -> subprocess.Popen:
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
        command = [sys.executable, str(PEER_SCRIPT), role, path, json.dumps(eventfds), *map(str, args)]
        proc = subprocess.Popen(command, pass_fds=tuple(eventfds.values()), env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.procs.append(proc)
        return proc

    def stderr_of(self, proc: subprocess.Popen) -> str:
        """The exited peer's stderr (read once, then cached), for assertion messages."""
        if proc.pid not in self._stderr and proc.poll() is not None:
            self._stderr[proc.pid] = proc.stderr.read().decode(errors="replace")
        return self._stderr.get(proc.pid, "")

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.communicate(timeout=5)


@pytest.fixture
def peers() -> Iterator[Peers]:
    started = Peers()
    try:
        yield started
    finally:
        started.stop_all()


def _load_peer_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("shm_peer", PEER_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def peer_lib() -> ModuleType:
    """shm_peer.py as a module (expected_payload, STOP_KIND, TEAR_PATTERN) whatever pytest's import mode."""
    return _load_peer_module()
