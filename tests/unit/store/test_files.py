"""Store lock, abort marker, atomic JSON with .bak fallback."""
from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

from rmqd.errors import StoreLockedError
from rmqd.store.files import (
    StoreLock,
    abort_exists,
    atomic_write_json,
    create_abort,
    read_json_with_bak,
    remove_abort,
)

HOLD_LOCK = """
import sys, time
from rmqd.store.files import StoreLock
StoreLock(sys.argv[1]).acquire()
print("locked", flush=True)
sys.stdin.read()
"""


def test_a_second_broker_cannot_lock_the_store_and_learns_the_holder_pid(tmp_path):
    store = str(tmp_path / "store")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, store], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StoreLockedError) as err:
            StoreLock(store).acquire()
        assert err.value.pid == holder.pid and store in str(err.value)
    finally:
        holder.kill()
        holder.wait()
    with StoreLock(store):  # free again once the holder is gone
        assert open(os.path.join(store, "lock")).read().strip() == str(os.getpid())


def test_the_lock_can_be_taken_again_after_release(tmp_path):
    lock = StoreLock(str(tmp_path))
    lock.acquire()
    lock.release()
    StoreLock(str(tmp_path)).acquire()


def test_abort_marker_is_created_detected_and_removed(tmp_path):
    store = str(tmp_path / "s")
    assert not abort_exists(store)
    create_abort(store)
    assert abort_exists(store)
    remove_abort(store)
    remove_abort(store)
    assert not abort_exists(store)


def test_atomic_json_keeps_the_previous_version_as_bak(tmp_path):
    path = str(tmp_path / "config" / "consumerOffset.json")
    atomic_write_json(path, {"offsetTable": {"T@g": {"0": 1}}})
    atomic_write_json(path, {"offsetTable": {"T@g": {"0": 2}}})
    assert read_json_with_bak(path) == {"offsetTable": {"T@g": {"0": 2}}}
    assert read_json_with_bak(path + ".bak") == {"offsetTable": {"T@g": {"0": 1}}}
    assert not os.path.exists(path + ".tmp")


def test_a_damaged_or_missing_json_falls_back_to_bak_and_says_so(tmp_path, caplog):
    path = str(tmp_path / "topics.json")
    atomic_write_json(path, {"v": 1})
    atomic_write_json(path, {"v": 2})
    with open(path, "w") as f:
        f.write('{"v": ')
    with caplog.at_level("WARNING", logger="rmqd.store"):
        assert read_json_with_bak(path) == {"v": 1}
    assert "topics.json.bak" in caplog.text
    os.unlink(path)
    assert read_json_with_bak(path) == {"v": 1}


def test_reading_json_that_never_existed_gives_none(tmp_path):
    assert read_json_with_bak(str(tmp_path / "nothing.json")) is None


def test_a_write_that_fills_the_disk_leaves_the_previous_json_and_no_tmp(tmp_path, monkeypatch):
    # Given a table already on disk
    path = str(tmp_path / "consumerOffset.json")
    atomic_write_json(path, {"offsetTable": {"a": 1}})
    # And a disk that takes 10 bytes, then answers ENOSPC (a short write first, as Linux does)
    real_write = os.write
    calls = []

    def filling_write(fd, data):
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[:10]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", filling_write)
    # When the next version is written
    with pytest.raises(OSError, match="No space left"):
        atomic_write_json(path, {"offsetTable": {"a": 2, "b": 3}})
    monkeypatch.setattr(os, "write", real_write)
    # Then the short write was not taken for a whole file: the old table is intact, no tmp is left
    assert calls[0] > 10 and len(calls) == 2
    assert read_json_with_bak(path) == {"offsetTable": {"a": 1}}
    assert sorted(os.listdir(tmp_path)) == ["consumerOffset.json"]
