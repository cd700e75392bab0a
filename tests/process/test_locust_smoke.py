"""Smoke test of the locust load test (issue 8, Done-when 1): loadtest/locustfile.py runs headless
for about 10 s with one user of each kind (sync, async, batch and ordered producers, a push and a
lite-pull consumer) against a broker this test starts, and every request succeeds and messages are
consumed by both consumers.

locust runs in a subprocess (`python -m locust`), never in pytest's process: importing locust
monkey-patches the standard library with gevent (and loadtest/zmq_user.py re-executes locust
without that patching, which this test goes through too). The figures come from locust's own
`--csv` output, the file an operator would read.
"""
from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.broker_harness import BrokerTree

pytestmark = pytest.mark.process

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCUSTFILE = str(REPO_ROOT / "loadtest" / "locustfile.py")
USERS = ("SyncProducerUser", "AsyncProducerUser", "BatchProducerUser", "OrderedProducerUser",
         "PushConsumerUser", "LitePullConsumerUser")
PRODUCER_TYPES = ("SEND", "SEND_ASYNC", "SEND_BATCH", "SEND_ORDERLY")
RUN_SECONDS = 10


def _stats_rows(csv_prefix: Path) -> dict[tuple[str, str], dict[str, str]]:
    with open(f"{csv_prefix}_stats.csv", newline="") as f:
        return {(row["Type"], row["Name"]): row for row in csv.DictReader(f)}


def _run_locust(namesrv: str, csv_prefix: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "RMQD_NAMESRV": namesrv, "RMQD_TOPIC": "LocustSmoke", "RMQD_QUEUES": "4",
           "RMQD_RATE": "200", "RMQD_BATCH": "8", "RMQD_CONSUME_FROM": "first", "RMQD_BODY_SIZE": "256"}
    env.pop("LOCUST_SKIP_MONKEY_PATCH", None)  # go through zmq_user's re-execution, as a user would
    cmd = [sys.executable, "-m", "locust", "-f", LOCUSTFILE, "--headless", "-u", str(len(USERS)),
           "-r", str(len(USERS)), "-t", f"{RUN_SECONDS}s", "--stop-timeout", "10", "--csv", str(csv_prefix),
           "--only-summary", "--loglevel", "WARNING", *USERS]
    # subprocess.run kills the child (one pid: the re-execution keeps it) when the timeout expires
    return subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_locust_headless_run_reports_producer_and_consumer_requests_without_failures(tmp_path: Path) -> None:
    assert importlib.util.find_spec("locust") is not None, "locust is missing: pip install -e '.[test]'"
    tree = BrokerTree(tmp_path / "store")
    try:
        tree.start()
        run = _run_locust(tree.namesrv_addr, tmp_path / "locust")
    finally:
        try:
            tree.stop()
        finally:
            tree.cleanup()
    out = (run.stdout + run.stderr)[-6000:]
    assert run.returncode == 0, out  # locust exits 1 when any request failed
    rows = _stats_rows(tmp_path / "locust")
    assert int(rows[("", "Aggregated")]["Failure Count"]) == 0, out
    sent = {kind: int(rows[(kind, "LocustSmoke")]["Request Count"]) for kind in PRODUCER_TYPES
            if (kind, "LocustSmoke") in rows}
    assert set(sent) == set(PRODUCER_TYPES) and all(n > 0 for n in sent.values()), (sent, out)
    consumed = {name: int(rows[("CONSUME", f"{name} LocustSmoke")]["Request Count"])
                for name in ("push", "lite-pull") if ("CONSUME", f"{name} LocustSmoke") in rows}
    assert consumed.get("push", 0) > 0 and consumed.get("lite-pull", 0) > 0, (consumed, sent, out)
    assert float(rows[("CONSUME", "push LocustSmoke")]["Median Response Time"]) > 0  # a latency, not a count
