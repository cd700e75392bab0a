"""`rmqd status` (supervisor.broker_status) while a restarted supervisor has not yet replaced the
segment its killed predecessor left in /dev/shm."""
from __future__ import annotations

import os
import subprocess
import sys

import orjson

from shm import create_broker_shm, shm_path_for_store
from shm.heartbeats import STATE_RUNNING
from workers.supervisor import _pid_file, broker_status

SMALL_RINGS = {"request": 4096, "ack": 4096, "park": 1024, "wake": 1024, "arrival": 1024}


def test_a_killed_trees_segment_is_not_reported_as_the_new_supervisors(tmp_path):
    store = str(tmp_path / "store")
    os.makedirs(store)
    path = shm_path_for_store(store)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(30)
    shm, _ = create_broker_shm(path, SMALL_RINGS)
    try:
        # Given the segment of a tree killed while running: its supervisor's slot says "running"
        shm.heartbeats.register("supervisor", dead.pid)
        shm.heartbeats.set_state("supervisor", STATE_RUNNING)
        shm.heartbeats.register("writer", dead.pid)
        shm.heartbeats.set_state("writer", STATE_RUNNING)
        # And a new supervisor (this process) that wrote its pid file, before replacing the segment
        with open(_pid_file(store), "wb") as f:
            f.write(orjson.dumps({"pid": os.getpid(), "shm": path}))
        # Then status says it is booting, with none of the dead tree's states or positions
        report = broker_status(store)
        assert report["running"] and report["booting"], report
        assert report["processes"] == [] and report["positions"] == {}
        # And once the segment is the new supervisor's, status reports it
        shm.heartbeats.register("supervisor", os.getpid())
        report = broker_status(store)
        assert not report.get("booting")
        assert {p["name"] for p in report["processes"]} >= {"supervisor"}
        assert "write_pos" in report["positions"]
    finally:
        shm.close(close_eventfds=True)
        shm.unlink()
