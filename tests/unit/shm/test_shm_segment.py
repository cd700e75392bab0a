"""Segment lifecycle and the BrokerShm bundle: create/replace/attach/close, eventfds, store path."""
from __future__ import annotations

import os
import struct
import subprocess
import sys

import pytest

from shm import (
    DOORBELLS,
    RINGS,
    ShmError,
    attach_readonly,
    create_broker_shm,
    open_broker_shm,
    shm_path_for_store,
)
from shm.layout import LAYOUT_VERSION, SEGMENT_HEADER, SEGMENT_MAGIC
from shm.segment import Segment


def _write_header(path: str, creator_pid: int) -> None:
    with open(path, "wb") as file:
        file.write(SEGMENT_HEADER.pack(SEGMENT_MAGIC, LAYOUT_VERSION, len(RINGS), 8192, creator_pid, 0))
        file.write(bytes(8192 - SEGMENT_HEADER.size))


def test_store_path_is_dev_shm_rmqd_and_16_hex_of_the_absolute_store_dir(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = shm_path_for_store("store")
    assert path == shm_path_for_store(str(tmp_path / "store"))
    assert path.startswith("/dev/shm/rmqd-") and len(path.rsplit("-", 1)[1]) == 16
    int(path.rsplit("-", 1)[1], 16)
    assert path != shm_path_for_store(str(tmp_path / "other"))


def test_create_replaces_a_stale_segment_of_a_dead_creator(shm_path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=20)
    _write_header(shm_path, dead.pid)
    segment = Segment.create(shm_path, {})
    try:
        assert segment.header.creator_pid == os.getpid()
    finally:
        segment.close()


def test_create_replaces_a_garbage_file(shm_path) -> None:
    with open(shm_path, "wb") as file:
        file.write(b"junk")
    Segment.create(shm_path, {}).close()
    attached = Segment.attach(shm_path)
    assert attached.header.creator_pid == os.getpid()
    attached.close()


def test_create_refuses_a_segment_whose_creator_is_alive(shm_path) -> None:
    _write_header(shm_path, os.getppid())
    with pytest.raises(ShmError, match=f"in use by live pid {os.getppid()}") as caught:
        Segment.create(shm_path, {})
    assert shm_path in str(caught.value)
    assert os.path.getsize(shm_path) == 8192, "the live segment must be left alone"


def test_create_broker_shm_makes_one_nonblocking_eventfd_per_ring_and_doorbell(broker_shm) -> None:
    shm, eventfds = broker_shm
    assert set(eventfds) == set(RINGS) | set(DOORBELLS)
    assert len(set(eventfds.values())) == len(eventfds)
    for fd in eventfds.values():
        assert not os.get_blocking(fd)
        with pytest.raises(BlockingIOError):
            os.eventfd_read(fd)
    assert set(shm.rings) == set(RINGS) and set(shm.doorbells) == set(DOORBELLS)
    assert os.stat(shm.segment.path).st_mode & 0o777 == 0o600


def test_ring_sizes_from_the_caller_are_recorded_and_the_rest_default(shm_path) -> None:
    shm, _ = create_broker_shm(shm_path, {"request": 1 << 16})
    try:
        assert shm.rings["request"].capacity == 1 << 16
        assert shm.rings["ack"].capacity == 4 << 20
        reader = attach_readonly(shm_path)
        assert {name: ring.capacity for name, ring in reader.rings.items()} == \
            {name: ring.capacity for name, ring in shm.rings.items()}
        reader.close()
    finally:
        shm.close(close_eventfds=True)
        shm.unlink()
    assert not os.path.exists(shm_path)


def test_open_broker_shm_rejects_unknown_eventfd_names(broker_shm, shm_path) -> None:
    with pytest.raises(ValueError, match="unknown eventfd"):
        open_broker_shm(shm_path, {"requests": 5})


def test_a_process_without_an_eventfd_cannot_ring_silently(broker_shm, shm_path) -> None:
    child_side = open_broker_shm(shm_path, {"request": broker_shm[1]["request"]})
    try:
        with pytest.raises(ShmError, match="no eventfd for 'ack'"):
            child_side.rings["ack"].put(b"x")
        with pytest.raises(ShmError, match="no eventfd for 'flushed'"):
            child_side.doorbells["flushed"].ring()
        assert child_side.rings["request"].put(b"x")
    finally:
        child_side.close()


def test_close_is_idempotent_and_survives_a_held_entry_view(broker_shm, shm_path) -> None:
    shm, eventfds = broker_shm
    reader = open_broker_shm(shm_path, eventfds)
    shm.rings["request"].put(b"kept")
    [(_, view)] = reader.rings["request"].entries()
    reader.close()
    reader.close()
    assert bytes(view) == b"kept"  # the mapping stays until the last view goes


def test_positions_land_exactly_where_the_layout_says(broker_shm) -> None:
    shm, _ = broker_shm
    from shm.layout import POSITIONS, Layout
    for index, name in enumerate(POSITIONS):
        shm.positions.set(name, 0x0102030405060708 + index)
        raw = shm.segment.buf[Layout.position_offset(name):Layout.position_offset(name) + 8]
        assert struct.unpack("=q", raw) == (0x0102030405060708 + index,), name


def test_remove_segment_of_unlinks_only_that_stores_segment(tmp_path):
    # Given the segments of two stores, as two killed broker trees leave them
    from shm import create_broker_shm, remove_segment_of, shm_path_for_store

    paths = {name: shm_path_for_store(str(tmp_path / name)) for name in ("a", "b")}
    for path in paths.values():
        broker_shm, _fds = create_broker_shm(path, {})
        broker_shm.close(close_eventfds=True)
    try:
        # When the first store's segment is removed
        removed = remove_segment_of(str(tmp_path / "a"))
        # Then exactly that file is gone, and a second call reports nothing to remove
        assert removed is True
        assert not os.path.exists(paths["a"])
        assert os.path.exists(paths["b"])
        assert remove_segment_of(str(tmp_path / "a")) is False
    finally:
        for path in paths.values():
            if os.path.exists(path):
                os.unlink(path)
