"""Smoke test of `bench.py consume` and `bench.py e2e`: the tools still run and report sane tables.

The figures themselves belong in docs/BENCHMARKS.md, not in tests; this only proves that each
subcommand starts and stops its own broker, moves every message and prints its final table.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.broker_harness import REPO_ROOT

pytestmark = pytest.mark.process

BENCH = [sys.executable, "loadtest/bench.py"]


def run_bench(*args: str) -> str:
    done = subprocess.run([*BENCH, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_bench_consume_drains_the_whole_backlog_and_reports_its_rate():
    out = run_bench("consume", "--start-broker", "-n", "3000", "--queues", "4")
    assert re.search(r"messages drained\s+3,000", out), out
    rate = re.search(r"msgs/s\s+([\d,]+)", out)
    assert rate and int(rate.group(1).replace(",", "")) > 0, out


def test_bench_e2e_delivers_every_message_and_reports_percentiles():
    out = run_bench("e2e", "--start-broker", "--rate", "200", "-d", "1", "--warmup", "0.5", "--queues", "4")
    row = re.search(r"^200\s+([\d,]+)\s+([\d,]+)\s+0\s+([\d.]+)\s+([\d.]+)", out, re.MULTILINE)
    assert row, out
    sent, delivered = (int(row.group(i).replace(",", "")) for i in (1, 2))
    assert sent == delivered == 300 and float(row.group(3)) > 0, out
