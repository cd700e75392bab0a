"""Smoke test of the benchmark tool: `bench.py produce --start-broker` runs and reports a sane table.

The benchmark itself is not part of the test suite (docs/BENCHMARKS.md); this only proves that the
tool still runs against the current broker and SDK: it starts and stops its own broker, measures
its ceilings, prints a final table with a non-zero send TPS and zero failures, and writes JSON that
`bench.py report` renders.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import orjson
import psutil
import pytest

from loadtest._broker import ThrowawayBroker, _alive, kill_pids
from shm import shm_path_for_store

pytestmark = pytest.mark.process

REPO_ROOT = Path(__file__).resolve().parents[2]
BENCH = str(REPO_ROOT / "loadtest" / "bench.py")


def _kill_leftovers(marker: str) -> None:
    """SIGKILL, by pid, any process whose command line names this test's directory."""
    kill_pids(proc.info["pid"] for proc in psutil.process_iter(["pid", "cmdline"])
              if proc.info["pid"] != os.getpid() and any(marker in arg for arg in proc.info["cmdline"] or ()))


def test_produce_with_a_started_broker_prints_a_final_table_with_tps_and_no_failures(tmp_path: Path) -> None:
    result_path = tmp_path / "result.json"
    cmd = [sys.executable, BENCH, "produce", "--start-broker", "--duration", "2",
           "--store-parent", str(tmp_path), "--ceiling-seconds", "0.2",
           "-p", "mappedFileSizeCommitLog=16777216", "--json", str(result_path)]
    try:
        run = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    finally:
        _kill_leftovers(str(tmp_path))
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    tps = re.search(r"^send TPS \(msg/s\) acknowledged\s+([\d,]+)$", run.stdout, re.MULTILINE)
    failures = re.search(r"^failures\s+(\d+)$", run.stdout, re.MULTILINE)
    assert tps and failures, out[-4000:]
    assert int(tps.group(1).replace(",", "")) > 0
    assert int(failures.group(1)) == 0
    assert "pwrite 4 KiB + fdatasync" in run.stdout  # the ceilings were measured in the same run
    result = orjson.loads(result_path.read_bytes())
    assert result["result"]["msgs_per_s"] > 0 and result["result"]["failed"] == 0
    assert result["broker"]["msgs_per_group"] >= 1.0
    assert not list(tmp_path.glob("rmqd-bench-*")), "the throwaway store was not deleted"
    report = subprocess.run([sys.executable, BENCH, "report", str(result_path), "--markdown"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=30)
    assert report.returncode == 0, report.stderr
    assert "| msg/s |" in report.stdout


def test_a_throwaway_broker_whose_tree_was_killed_leaves_no_process_and_no_segment(tmp_path: Path) -> None:
    broker = ThrowawayBroker(properties={"mappedFileSizeCommitLog": "16777216"}, parent_dir=str(tmp_path))
    try:
        broker.start()
        segment = shm_path_for_store(broker.store_dir)
        assert os.path.exists(segment)
        # Given a tree that cannot stop itself: its supervisor is gone, its workers are orphans
        broker.process.kill()
        broker.process.wait(10)
    finally:
        broker.stop()  # SIGKILLs what is left, waits until the kernel has reaped it
    assert not any(_alive(pid) for pid in broker.known_pids)
    assert not os.path.exists(segment)  # the segment of a killed tree is removed too
