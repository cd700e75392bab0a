"""ConsumeQueue: unit format, put/get, ranges, rolling, reopen, max/min offsets, truncation, LRU store."""
from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rmqd.store.consume_queue import CQ_UNIT, CQ_UNIT_SIZE, ConsumeQueue, ConsumeQueueStore
from rmqd.store.filenames import offset_to_name

CQ_FILE_SIZE = 100 * CQ_UNIT_SIZE  # 100 units per file so that tests roll


def _put(queue: ConsumeQueue, count: int, start: int = 0) -> None:
    for i in range(start, start + count):
        queue.put(i, 1000 * i, 100 + i, -i)


def test_unit_struct_is_20_bytes_big_endian_phy_size_tags():
    assert CQ_UNIT.size == CQ_UNIT_SIZE == 20
    assert CQ_UNIT.pack(1, 2, -1) == bytes.fromhex("0000000000000001" "00000002" "ffffffffffffffff")


def test_put_units_read_back_and_roll_into_files_named_by_first_byte(store_dir):
    queue = ConsumeQueue(store_dir, "TopicTest", 3, CQ_FILE_SIZE, readonly=False)
    _put(queue, 250)
    assert queue.get(0) == (0, 100, 0) and queue.get(249) == (249000, 349, -249)
    assert queue.get(250) is None and queue.get(10_000) is None and queue.get(-1) is None
    names = sorted(os.listdir(os.path.join(store_dir, "consumequeue", "TopicTest", "3")))
    assert names == [offset_to_name(0), offset_to_name(CQ_FILE_SIZE), offset_to_name(2 * CQ_FILE_SIZE)]
    assert all(os.path.getsize(os.path.join(queue.dir, n)) == CQ_FILE_SIZE for n in names)


def test_read_range_crosses_files_and_stops_at_the_first_empty_unit(store_dir):
    queue = ConsumeQueue(store_dir, "T", 0, CQ_FILE_SIZE, readonly=False)
    _put(queue, 150)
    units = queue.read_range(95, 32)
    assert [u[0] // 1000 for u in units] == list(range(95, 127))
    assert len(queue.read_range(140, 32)) == 10
    assert queue.read_range(150, 32) == [] and queue.read_range(500, 4) == []


@pytest.mark.parametrize("count", [0, 1, 99, 100, 101, 200, 250])
def test_max_offset_is_the_next_queue_offset_to_write(store_dir, count):
    queue = ConsumeQueue(store_dir, "T", 0, CQ_FILE_SIZE, readonly=False)
    _put(queue, count)
    assert queue.max_offset() == count
    assert queue.min_offset() == 0


def test_reopened_queue_has_the_same_units_and_max_offset(store_dir):
    queue = ConsumeQueue(store_dir, "T", 1, CQ_FILE_SIZE, readonly=False)
    _put(queue, 170)
    queue.flush()
    queue.close()
    again = ConsumeQueue(store_dir, "T", 1, CQ_FILE_SIZE, readonly=False)
    assert again.max_offset() == 170
    assert again.read_range(0, 200) == [(1000 * i, 100 + i, -i) for i in range(170)]


def test_a_reader_sees_units_and_files_the_dispatcher_adds_later(store_dir):
    writer = ConsumeQueue(store_dir, "T", 0, CQ_FILE_SIZE, readonly=False)
    _put(writer, 10)
    reader = ConsumeQueue(store_dir, "T", 0, CQ_FILE_SIZE, readonly=True)
    assert reader.max_offset() == 10
    _put(writer, 150, start=10)
    assert reader.max_offset() == 160 and reader.get(159) == (159000, 259, -159)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(count=st.integers(1, 320), phy_end_units=st.integers(0, 330))
def test_truncate_beyond_keeps_exactly_the_units_inside_the_commitlog(tmp_path_factory, count, phy_end_units):
    store_dir = str(tmp_path_factory.mktemp("cq"))
    queue = ConsumeQueue(store_dir, "T", 0, CQ_FILE_SIZE, readonly=False)
    for i in range(count):
        queue.put(i, 100 * i, 100, 7)  # unit i covers CommitLog [100i, 100i + 100)
    phy_end = 100 * phy_end_units
    kept = min(count, phy_end_units)
    assert queue.truncate_beyond(phy_end) == count - kept
    assert queue.max_offset() == kept
    assert len(queue.read_range(0, 400)) == kept
    files = sorted(os.listdir(queue.dir))
    assert len(files) == max(1, -(-kept // 100))  # files left with no valid unit are deleted
    queue.close()
    assert ConsumeQueue(store_dir, "T", 0, CQ_FILE_SIZE, readonly=False).max_offset() == kept


def test_min_offset_skips_units_below_the_commitlog_min_and_old_files_are_deleted(store_dir):
    queue = ConsumeQueue(store_dir, "T", 0, CQ_FILE_SIZE, readonly=False)
    _put(queue, 250)
    assert queue.min_offset(min_phy=120_500) == 121
    assert queue.delete_files_before(150_000) == 1
    assert queue.min_offset() == 100 and queue.max_offset() == 250


def test_the_store_lists_queues_and_closes_least_recently_used_beyond_its_limit(store_dir):
    store = ConsumeQueueStore(store_dir, CQ_FILE_SIZE, readonly=False, max_open=2)
    for topic, qid in [("A", 0), ("A", 1), ("B", 0)]:
        store.get(topic, qid).put(0, 5, 6, 7)
    assert store.list_queues() == [("A", 0), ("A", 1), ("B", 0)]
    assert list(store._open) == [("A", 1), ("B", 0)]
    assert store.get("A", 0).get(0) == (5, 6, 7)  # reopened from disk after eviction
    store.flush_all()
    store.close_all()
    assert ConsumeQueueStore(store_dir, CQ_FILE_SIZE, readonly=True).get("A", 1).max_offset() == 1


def test_a_file_size_that_is_not_a_multiple_of_the_unit_is_refused(store_dir):
    with pytest.raises(ValueError, match="multiple of 20"):
        ConsumeQueue(store_dir, "T", 0, 1001, readonly=False)
