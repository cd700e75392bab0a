"""UNIQ_KEY message ids and client ids."""
from __future__ import annotations

import os
import socket
import threading

from rmqd.client import _ids
from rmqd.client._ids import UNIQ_KEY, local_ip, new_client_id, new_uniq_key, new_uniq_keys


def test_uniq_key_is_32_upper_case_hex_with_ip_and_pid_in_front():
    key = new_uniq_key()
    assert len(key) == 32 and key == key.upper() and int(key, 16) >= 0
    ip, pid, _salt, _ms, _counter = UNIQ_KEY.unpack(bytes.fromhex(key))
    assert socket.inet_ntoa(ip) == local_ip() and pid == os.getpid() & 0xFFFF


def test_uniq_keys_from_many_threads_never_collide():
    keys: list[str] = []
    lock = threading.Lock()

    def make() -> None:
        batch = [new_uniq_key() for _ in range(10_000)]
        with lock:
            keys.extend(batch)

    threads = [threading.Thread(target=make) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(keys) == 40_000 and len(set(keys)) == 40_000


def test_a_batch_of_ids_counts_on_from_single_ids_and_wraps_its_counter_like_them(monkeypatch):
    for count in (1, 7, 8, 64, 300):  # both ways of formatting a batch
        monkeypatch.setattr(_ids, "_counter", 0xFFFF - 5)  # the batch crosses the u16 wrap
        single = new_uniq_key()
        batch = new_uniq_keys(count)
        assert len(batch) == count and len(set(batch)) == count
        counters = [UNIQ_KEY.unpack(bytes.fromhex(key))[4] for key in [single, *batch]]
        assert counters == [(0xFFFF - 4 + n) & 0xFFFF for n in range(count + 1)]
        for key in batch:  # same process part and layout as a single id
            assert len(key) == 32 and key == key.upper() and key[:20] == single[:20]


def test_uniq_keys_in_a_forked_child_differ_from_the_parents():
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report one key and leave at once
        os.write(write_fd, new_uniq_key().encode())
        os._exit(0)
    os.close(write_fd)
    child_key = os.read(read_fd, 64).decode()
    os.close(read_fd)
    os.waitpid(pid, 0)
    assert child_key[12:20] != new_uniq_key()[12:20]  # the per-process salt was drawn again


def test_client_ids_are_ip_at_pid_at_random_and_unique_per_object():
    ids = {new_client_id() for _ in range(100)}
    assert len(ids) == 100
    ip, pid, _random = next(iter(ids)).split("@")
    assert ip == local_ip() and pid == str(os.getpid())
