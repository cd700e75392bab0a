"""Crash harness in the style of OpenChaos's queue checker: load, kill -9 at random, restart, check.

One `ChaosRun` drives a real broker tree (tests/broker_harness.BrokerTree) through `cycles` rounds:

  1. load: producers (threads, one Producer each) send messages whose bodies are unique ids
     ("p{producer}-{seq}") and record each outcome: SEND_OK -> acked; an exception or another
     status -> unknown (the message may or may not be stored);
  2. at a random moment (after a random number of new acks, so the broker is serving) SIGKILL a
     random victim: one broker process (writer, flusher, dispatcher, front, holder, cleaner) or the
     whole tree (supervisor, children, namesrv);
  3. restart: for one process, wait until the supervisor replaced it (a new pid, every process
     running: it restarts that process alone or reboots the broker, per its PROCESSES policy);
     for the whole tree, run the same `rmqd start` command again;
  4. check the store: `rmqd stop` (a clean stop), then `rmqd verify --store-dir` must exit 0, then
     `rmqd start` again. verify reads a stopped store only: it refuses a store whose lock a running
     broker holds, since a live store changes under the check.

Then the producers stop, a consumer reads every queue from offset 0 to its max offset, and the
`QueueChecker` reports lost (acked, never delivered), duplicated (delivered more than once),
recovered (unknown outcome, delivered) and unexpected (delivered, never sent) messages.
"""

from __future__ import annotations

import collections
import os
import random
import signal
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass, field

import psutil

from rmqd.client import LitePullConsumer, Message, Producer, SendStatus
from rmqd.client.admin import MQAdmin
from rmqd.errors import ClientError
from rmqd.message import MessageQueue
from tests.broker_harness import BROKER_PROCESSES, REPO_ROOT, RMQD, BrokerTree
from tests.helpers import wait_until

TREE = "tree"
VICTIMS = (*BROKER_PROCESSES, TREE)
TOPIC = "ChaosQueue"


@dataclass
class CheckResult:
    """What the checker found; `lost` must be empty."""

    sent: int
    acked: int
    unknown: int
    delivered: int
    lost: list[str]
    duplicated: dict[str, int]  # id -> extra deliveries
    recovered: int
    unexpected: list[str]


class QueueChecker:
    """Outcome of every send (thread-safe) and, at the end, the comparison with what was delivered."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.acked: set[str] = set()
        self.unknown: set[str] = set()

    def record(self, message_id: str, acked: bool) -> None:
        with self._lock:
            (self.acked if acked else self.unknown).add(message_id)

    def acked_count(self) -> int:
        with self._lock:
            return len(self.acked)

    def check(self, delivered: list[str]) -> CheckResult:
        with self._lock:
            acked, unknown = set(self.acked), set(self.unknown) - self.acked
        counts = collections.Counter(delivered)
        return CheckResult(
            sent=len(acked) + len(unknown), acked=len(acked), unknown=len(unknown),
            delivered=len(delivered), lost=sorted(acked - counts.keys()),
            duplicated={m: n - 1 for m, n in counts.items() if n > 1},
            recovered=len(unknown & counts.keys()),
            unexpected=sorted(counts.keys() - acked - unknown))


class Load:
    """`producers` threads sending unique ids until stopped."""

    def __init__(self, namesrv: str, checker: QueueChecker, producers: int, body_bytes: int) -> None:
        self.namesrv = namesrv
        self.checker = checker
        self.stop_event = threading.Event()
        self.padding = b"." * max(0, body_bytes - 16)
        self.threads = [threading.Thread(target=self._send_loop, args=(p,), daemon=True)
                        for p in range(producers)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(30)
        assert not any(t.is_alive() for t in self.threads), "a producer thread did not stop"

    def _send_loop(self, producer_no: int) -> None:
        producer = Producer(f"chaos-producer-{producer_no}", namesrv=self.namesrv, send_timeout_ms=2000)
        producer.start()
        try:
            seq = 0
            while not self.stop_event.is_set():
                message_id = f"p{producer_no}-{seq}"
                seq += 1
                try:
                    result = producer.send(Message(TOPIC, message_id.encode() + b"|" + self.padding))
                except ClientError:
                    self.checker.record(message_id, acked=False)
                    self.stop_event.wait(0.05)  # the broker is down: do not spin on refused sends
                    continue
                self.checker.record(message_id, acked=result.status is SendStatus.SEND_OK)
        finally:
            producer.shutdown()


@dataclass
class ChaosRun:
    tree: BrokerTree
    cycles: int
    seed: int
    producers: int = 4
    body_bytes: int = 200
    acks_between_kills: tuple[int, int] = (50, 1500)
    kills: collections.Counter = field(default_factory=collections.Counter)
    restart_s: list[float] = field(default_factory=list)
    verify_failures: list[str] = field(default_factory=list)
    log: list[str] = field(default_factory=list)

    def run(self) -> CheckResult:
        rnd = random.Random(self.seed)
        checker = QueueChecker()
        self.tree.start()
        load = Load(self.tree.namesrv_addr, checker, self.producers, self.body_bytes)
        load.start()
        try:
            for cycle in range(self.cycles):
                self._await_acks(checker, rnd.randint(*self.acks_between_kills), f"before kill {cycle + 1}")
                victim = rnd.choice(VICTIMS)
                self.kills[victim] += 1
                self._kill_and_restart(victim)
                self._stop_verify_start(cycle)
            self._await_acks(checker, self.acks_between_kills[0], "after the last restart")
        finally:
            load.stop()
        return checker.check(self._read_everything())

    @staticmethod
    def _await_acks(checker: QueueChecker, count: int, when: str) -> None:
        """Wait for `count` more SEND_OKs: the broker is serving, and the kill lands mid-load."""
        target = checker.acked_count() + count
        wait_until(lambda: checker.acked_count() >= target, 90, f"{count} acks {when}")

    def _kill_and_restart(self, victim: str) -> None:
        started = time.monotonic()
        if victim == TREE:
            self.tree.kill_tree()
            self.tree.start()
        else:
            old_pid = self.tree.pids()[victim]
            os.kill(old_pid, signal.SIGKILL)
            wait_until(lambda: not _running(old_pid), 10, f"{victim} {old_pid} to die")
            wait_until(lambda: self._replaced(victim, old_pid), 90, f"{victim} to be restarted")
        self.restart_s.append(time.monotonic() - started)
        self.log.append(f"killed {victim}; serving again after {self.restart_s[-1]:.2f} s")

    def _replaced(self, victim: str, old_pid: int) -> bool:
        status = self.tree.status()
        states = {p["name"]: (p["pid"], p["state"]) for p in status.get("processes", [])}
        self.tree.known_pids.update(pid for pid, _ in states.values())
        new_pid, _ = states.get(victim, (old_pid, None))
        return new_pid != old_pid and all(states.get(n, (0, ""))[1] == "running" for n in BROKER_PROCESSES)

    def _stop_verify_start(self, cycle: int) -> None:
        stopped = self.tree.stop()
        verify = subprocess.run([*RMQD, "verify", "--store-dir", self.tree.store_dir],
                                env={**os.environ, "PYTHONPATH": REPO_ROOT}, cwd=REPO_ROOT,
                                capture_output=True, text=True, timeout=120)
        if verify.returncode != 0 or stopped != 0:
            self.verify_failures.append(f"cycle {cycle + 1} (stop exit {stopped}, verify exit "
                                        f"{verify.returncode}): {verify.stdout[-2000:]}")
        self.tree.start()

    def _read_everything(self) -> list[str]:
        return [body.split(b"|", 1)[0].decode() for body in read_all_bodies(self.tree.namesrv_addr, TOPIC)]

    def summary(self, result: CheckResult) -> str:
        """The printed report (docs/CRASH_TESTS.md records one per flush mode)."""
        kills = ", ".join(f"{name} {self.kills[name]}" for name in VICTIMS if self.kills[name])
        restarts = (f"median {statistics.median(self.restart_s):.2f} s, max {max(self.restart_s):.2f} s"
                    if self.restart_s else "-")
        duplicates = sum(result.duplicated.values())
        return "\n".join([
            f"chaos {self.tree.flush}: {self.cycles} kill -9 cycles (seed {self.seed}); kills: {kills}",
            f"  sent {result.sent}, acknowledged {result.acked}, unknown outcome {result.unknown}",
            f"  delivered {result.delivered} records: lost {len(result.lost)}, duplicated {duplicates} "
            f"({len(result.duplicated)} ids), recovered {result.recovered}, "
            f"unexpected {len(result.unexpected)}",
            f"  rmqd verify after each restart: "
            f"{self.cycles - len(self.verify_failures)}/{self.cycles} clean",
            f"  kill -> serving again: {restarts}",
        ])


def read_all_bodies(namesrv: str, topic: str, timeout_s: float = 180.0) -> list[bytes]:
    """The body of every record of every queue of `topic`, from offset 0 to the queue's max offset.

    The max offsets are read again once they are reached, until they stay put: the dispatcher may
    still be adding units when the first are read (sends have stopped, dispatch lags a little).
    """
    rows = _topic_status(namesrv, topic)
    expected = sum(row["max_offset"] for row in rows)
    consumer = LitePullConsumer(f"{topic}-checker", namesrv=namesrv, auto_commit=False)
    consumer.start()
    bodies: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        consumer.assign([MessageQueue(topic, row["broker_name"], row["queue_id"]) for row in rows])
        for queue in consumer.assignment():
            consumer.seek(queue, 0)
        while time.monotonic() < deadline:
            while len(bodies) < expected and time.monotonic() < deadline:
                bodies += [message.body for message in consumer.poll(timeout_ms=500)]
            again = sum(row["max_offset"] for row in _topic_status(namesrv, topic))
            if again == expected:
                break
            expected = again
    finally:
        consumer.shutdown()
    assert len(bodies) == expected, f"read {len(bodies)} of {expected} records of {topic} in {timeout_s} s"
    return bodies


def _topic_status(namesrv: str, topic: str) -> list[dict]:
    with MQAdmin(namesrv=namesrv) as admin:
        return admin.topic_status(topic)


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
