"""Chaos: kill -9 of a random broker process or the whole tree, under load, in both flush modes.

CI runs RMQD_CHAOS_CYCLES (default 3) cycles per flush mode. The recorded full run (docs/CRASH_TESTS.md):
    RMQD_CHAOS_CYCLES=20 python -m pytest -q -s -o timeout=0 tests/crash/test_chaos_queue.py
RMQD_CHAOS_SEED fixes the random choices (default: a new seed per run, printed in the summary).
"""

from __future__ import annotations

import os
import random

import pytest

from tests.broker_harness import BrokerTree
from tests.crash.chaos import ChaosRun

pytestmark = pytest.mark.crash

CYCLES = int(os.environ.get("RMQD_CHAOS_CYCLES", "3"))


@pytest.mark.parametrize("flush", ["SYNC_FLUSH", "ASYNC_FLUSH"])
def test_no_acknowledged_message_is_lost_across_random_kill_9_cycles(tmp_path, flush):
    seed = int(os.environ.get("RMQD_CHAOS_SEED", random.randrange(1 << 30)))
    tree = BrokerTree(tmp_path / "store", flush=flush, properties={
        "mappedFileSizeCommitLog": 1 << 20,  # the load rolls CommitLog files within a few cycles
        "maxHashSlotNum": 4096, "maxIndexNum": 16384,
        "defaultTopicQueueNums": 4,
    })
    run = ChaosRun(tree, cycles=CYCLES, seed=seed)
    try:
        result = run.run()
    finally:
        tree.cleanup()
    print("\n" + run.summary(result))
    print("\n".join(f"  {line}" for line in run.log))
    assert not result.lost, f"{len(result.lost)} acknowledged messages lost (seed {seed}): {result.lost[:10]}"
    assert not result.unexpected, f"delivered but never sent (seed {seed}): {result.unexpected[:10]}"
    assert not run.verify_failures, "\n".join(run.verify_failures)
