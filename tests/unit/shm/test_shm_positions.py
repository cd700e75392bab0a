"""Positions, flags and heartbeats: typed access, cross-process visibility, never torn."""
from __future__ import annotations

import json
import time

import pytest

from shm import POSITIONS, BrokerShm, attach_readonly, open_broker_shm
from shm.flags import (
    DISK_CLEAN_FORCIBLY,
    NOT_WRITABLE_DISK_FULL,
    WRITE_ERROR,
    WRITER_STOPPING,
    describe,
    is_writable,
)
from shm.heartbeats import STATE_RUNNING, STATE_STARTING
from tests.helpers import wait_until


def test_each_named_setter_writes_only_its_own_position(broker_shm) -> None:
    shm, _ = broker_shm
    for index, name in enumerate(POSITIONS):
        getattr(shm.positions, f"set_{name}")(index + 1)
    assert [getattr(shm.positions, name) for name in POSITIONS] == list(range(1, len(POSITIONS) + 1))
    assert shm.positions.as_dict() == {name: shm.positions.get(name) for name in POSITIONS}


def test_positions_hold_the_full_signed_64_bit_range(broker_shm) -> None:
    shm, _ = broker_shm
    shm.positions.set_write_pos(2**63 - 1)
    shm.positions.set_min_phy_offset(-1)
    assert (shm.positions.write_pos, shm.positions.min_phy_offset) == (2**63 - 1, -1)


def test_a_second_attach_in_the_same_process_sees_the_writes(broker_shm, shm_path) -> None:
    shm, eventfds = broker_shm
    other = open_broker_shm(shm_path, eventfds)
    try:
        shm.positions.set_flush_pos(4096)
        assert other.positions.flush_pos == 4096
    finally:
        other.close()


@pytest.mark.timeout(60)
def test_positions_and_heartbeats_written_by_another_process_are_read_here(
        broker_shm, shm_path, peers) -> None:
    shm, eventfds = broker_shm
    before_ns = time.monotonic_ns()
    proc = peers.start("write-positions", shm_path, eventfds)
    assert proc.wait(timeout=20) == 0, proc.stderr.read().decode()
    assert [shm.positions.get(name) for name in POSITIONS] == [1000 + i for i in range(len(POSITIONS))]
    assert shm.heartbeats.pid("writer") == proc.pid
    assert shm.heartbeats.state("writer") == STATE_RUNNING
    assert shm.heartbeats.restarts("writer") == 7
    assert before_ns < shm.heartbeats.last_beat_ns("writer") <= time.monotonic_ns()


@pytest.mark.timeout(60)
def test_a_position_counting_up_in_another_process_is_never_torn_and_never_goes_back(
        broker_shm, shm_path, peers, peer_lib) -> None:
    shm, eventfds = broker_shm
    count = 1 << 20
    proc = peers.start("count-up", shm_path, eventfds, count)
    pattern, last, reads = peer_lib.TEAR_PATTERN, 0, 0
    deadline = time.monotonic() + 20
    while proc.poll() is None and time.monotonic() < deadline:
        for _ in range(1000):
            value = shm.positions.write_pos
            assert value % pattern == 0 and value // pattern < count, f"torn read {value:#x}"
            assert value >= last, f"went back from {last:#x} to {value:#x}"
            last = value
        reads += 1000
    assert proc.wait(timeout=20) == 0
    assert shm.positions.write_pos == (count - 1) * pattern
    assert reads > 0


def test_readonly_attach_reads_everything_and_refuses_writes(broker_shm, shm_path) -> None:
    shm, _ = broker_shm
    shm.positions.set_dispatch_pos(77)
    shm.heartbeats.register("front", pid=4242)
    assert shm.rings["ack"].put(b"x" * 10)
    reader = attach_readonly(shm_path)
    try:
        snapshot = reader.snapshot()
        assert snapshot["positions"]["dispatch_pos"] == 77
        assert snapshot["heartbeats"]["front"]["pid"] == 4242
        assert snapshot["heartbeats"]["front"]["state"] == "starting"
        assert snapshot["rings"]["ack"]["depth_bytes"] == 24
        json.dumps(snapshot)
        with pytest.raises(TypeError):
            reader.positions.set_dispatch_pos(1)
    finally:
        reader.close()


def test_heartbeat_register_beat_state_and_reset(broker_shm) -> None:
    shm, _ = broker_shm
    beats = shm.heartbeats
    assert beats.age_ms("cleaner") is None
    beats.register("cleaner", pid=99)
    assert (beats.pid("cleaner"), beats.state("cleaner")) == (99, STATE_STARTING)
    first = beats.last_beat_ns("cleaner")
    wait_until(lambda: time.monotonic_ns() > first, 1.0)
    beats.beat("cleaner")
    assert beats.last_beat_ns("cleaner") > first
    assert 0 <= beats.age_ms("cleaner") < 10_000
    beats.set_restarts("cleaner", 3)
    beats.reset("cleaner")
    assert (beats.pid("cleaner"), beats.state("cleaner"), beats.last_beat_ns("cleaner")) == (0, 0, 0)
    assert beats.restarts("cleaner") == 3


def test_heartbeat_slots_of_different_processes_are_independent(broker_shm) -> None:
    shm: BrokerShm = broker_shm[0]
    for index, name in enumerate(shm.heartbeats.names):
        shm.heartbeats.register(name, pid=100 + index)
    names = shm.heartbeats.names
    assert [shm.heartbeats.pid(n) for n in names] == [100 + i for i in range(len(names))]


@pytest.mark.parametrize(("writer_flags", "cleaner_flags", "writable", "reason"), [
    (0, 0, True, ""),
    (0, DISK_CLEAN_FORCIBLY, True, ""),
    (0, NOT_WRITABLE_DISK_FULL, False, "disk full"),
    (WRITE_ERROR, 0, False, "write error"),
    (WRITER_STOPPING, 0, False, "shutting down"),
])
def test_is_writable_reads_the_owner_flags(broker_shm, writer_flags, cleaner_flags, writable, reason) -> None:
    shm, _ = broker_shm
    shm.positions.set_writer_flags(writer_flags)
    shm.positions.set_cleaner_flags(cleaner_flags)
    shm.positions.set_disk_used_ppm(912_345)
    ok, why = is_writable(shm.positions)
    assert ok is writable and reason in why


def test_describe_names_set_bits_and_shows_unknown_ones_in_hex() -> None:
    assert describe(WRITE_ERROR | 0x100, NOT_WRITABLE_DISK_FULL) == [
        "WRITE_ERROR", "0x100", "NOT_WRITABLE_DISK_FULL"]
