"""IndexFile / IndexService: layout sizes, hashing, put/query, chains, rolling, reopen, truncation."""
from __future__ import annotations

import os

import pytest

from rmqd.errors import CorruptFileError
from rmqd.store import record as r
from rmqd.store.index_file import (
    INDEX_ENTRY,
    INDEX_HEADER,
    INDEX_SLOT,
    IndexFile,
    IndexService,
    build_key,
    index_file_name,
    index_file_size,
    index_key_hash,
    infer_geometry,
)

BEGIN_MS = 1_700_000_000_000


def _service(store_dir: str, readonly: bool = False, slots: int = 8, count: int = 16) -> IndexService:
    return IndexService(store_dir, max_hash_slots=slots, max_index_count=count, readonly=readonly)


def _record(phy: int, props: dict[str, str], sys_flag: int = 0, store_ms: int = BEGIN_MS) -> r.MessageRecord:
    return r.MessageRecord(200, r.MESSAGE_MAGIC_V1, 0, 0, 0, 0, phy, sys_flag, 0, bytes(8), store_ms,
                           bytes(8), 0, 0, b"", "TopicTest", props)


def test_layout_structs_match_rocketmq_sizes():
    assert INDEX_HEADER.size == 40 and INDEX_SLOT.size == 4 and INDEX_ENTRY.size == 20
    assert index_file_size(5_000_000, 20_000_000) == 420_000_040


def test_key_hash_is_abs_java_hash_and_min_value_maps_to_zero():
    assert build_key("TopicTest", "k") == "TopicTest#k"
    assert index_key_hash("hello") == 99162322
    assert index_key_hash("polygenelubricants") == 0  # hashCode == Integer.MIN_VALUE
    negative = next(s for s in (f"key-{i}" for i in range(100)) if r.java_string_hash(s) < 0)
    assert index_key_hash(negative) == -r.java_string_hash(negative)


def test_file_names_are_local_time_to_the_millisecond():
    name = index_file_name(BEGIN_MS + 123)
    assert len(name) == 17 and name.endswith("123") and name.isdigit()


def test_put_keys_are_found_newest_first_with_colliding_slots(store_dir):
    service = _service(store_dir, slots=2)  # 2 slots: chains mix keys, hashes tell them apart
    for i in range(6):
        service.put_key("TopicTest", f"k{i % 3}", 100 * i, BEGIN_MS + 1000 * i)
    assert service.query("TopicTest", "k0") == [300, 0]
    assert service.query("TopicTest", "k2") == [500, 200]
    assert service.query("TopicTest", "k0", max_num=1) == [300]
    assert service.query("OtherTopic", "k0") == []


def test_query_filters_by_time_in_whole_seconds(store_dir):
    service = _service(store_dir)
    for i in range(5):
        service.put_key("T", "same", 10 * i, BEGIN_MS + 10_000 * i)
    assert service.query("T", "same", begin_ms=BEGIN_MS + 15_000, end_ms=BEGIN_MS + 35_000) == [30, 20]


def test_a_full_file_rolls_and_queries_span_files(store_dir):
    service = _service(store_dir, count=4)  # 3 entries per file (entry 0 is unused)
    for i in range(10):
        assert service.put_key("T", "key", i, BEGIN_MS + i)
    assert len(os.listdir(os.path.join(store_dir, "index"))) == 4
    assert service.query("T", "key") == list(range(9, -1, -1))
    second = service.files[1].header()
    assert (second.begin_phy_offset, second.end_phy_offset, second.index_count) == (3, 5, 4)


def test_a_reopened_service_and_a_reader_see_the_same_entries(store_dir):
    writer = _service(store_dir, count=4)
    for i in range(5):
        writer.put_key("T", "a", i, BEGIN_MS)
    writer.flush()
    reader = _service(store_dir, readonly=True, count=4)
    writer.put_key("T", "a", 5, BEGIN_MS)
    writer.put_key("T", "a", 6, BEGIN_MS)  # rolls to a third file the reader has not mapped yet
    assert reader.query("T", "a") == [6, 5, 4, 3, 2, 1, 0]
    writer.close()
    again = _service(store_dir, count=4)
    again.put_key("T", "a", 7, BEGIN_MS)
    assert again.query("T", "a")[:2] == [7, 6]


def test_build_for_record_indexes_uniq_key_and_every_key_once(store_dir):
    service = _service(store_dir)
    rec = _record(4096, {"UNIQ_KEY": "U1", "KEYS": "order-1 order-2", "TAGS": "x"})
    assert service.build_for_record(4096, rec) == 3
    assert service.build_for_record(4096, rec) == 0  # already indexed: recovery can re-dispatch
    assert [service.query("TopicTest", k) for k in ("U1", "order-1", "order-2")] == [[4096]] * 3
    rollback = _record(8192, {"KEYS": "order-3"}, sys_flag=r.SysFlag.TRANSACTION_ROLLBACK)
    assert service.build_for_record(8192, rollback) == 0
    prepared = _record(8192, {"KEYS": "order-3"}, sys_flag=r.SysFlag.TRANSACTION_PREPARED)
    assert service.build_for_record(8192, prepared) == 1


def test_truncate_beyond_leaves_the_bytes_of_a_file_that_never_had_those_entries(tmp_path):
    puts = [(f"T#k{i % 5}", 100 * i, BEGIN_MS + 1000 * i) for i in range(12)]
    cut = IndexFile.create(str(tmp_path / "20240101000000000"), 4, 16)
    fresh = IndexFile.create(str(tmp_path / "20240101000000001"), 4, 16)
    for key, phy, ms in puts:
        cut.put_key(key, phy, ms)
        if phy < 700:
            fresh.put_key(key, phy, ms)
    assert cut.truncate_beyond(700) == 5
    assert bytes(cut.mapped.mv[40:]) == bytes(fresh.mapped.mv[40:])
    assert cut.header() == fresh.header()


def test_a_file_of_the_wrong_size_is_refused(store_dir):
    _service(store_dir).put_key("T", "a", 1, BEGIN_MS)
    with pytest.raises(CorruptFileError, match="file length"):
        _service(store_dir, slots=9)


def test_a_put_torn_before_its_header_store_is_undone_and_the_chain_stays_whole(tmp_path):
    # Given three entries of one key, then a fourth whose entry and slot were stored but not its
    # header (the dispatcher was killed between the stores)
    index_file = IndexFile.create(str(tmp_path / "20240101000000000"), 4, 16)
    for phy in (100, 200, 300):
        index_file.put_key("T#k", phy, BEGIN_MS)
    header_before = bytes(index_file.mapped.mv[:40])
    index_file.put_key("T#k", 400, BEGIN_MS)
    index_file.mapped.mv[:40] = header_before
    index_file = IndexFile.open(index_file.path, 4, 16, readonly=False)
    # When the writer's recovery cuts nothing past the CommitLog end
    assert index_file.truncate_beyond(10_000) == 0
    # Then the torn entry is gone, the chain reaches every entry, and the next put links to it
    out: list[int] = []
    index_file.select("T#k", 64, 0, 2**62, out)
    assert out == [300, 200, 100]
    index_file.put_key("T#k", 500, BEGIN_MS)
    out = []
    index_file.select("T#k", 64, 0, 2**62, out)
    assert out == [500, 300, 200, 100]


@pytest.mark.parametrize(("slots", "count", "puts"), [(8, 16, 5), (4, 16, 15), (1000, 4000, 300), (7, 3, 2)])
def test_the_geometry_of_a_file_is_inferred_from_its_bytes(tmp_path, slots, count, puts):
    index_file = IndexFile.create(str(tmp_path / "20240101000000000"), slots, count)
    for i in range(puts):
        index_file.put_key(f"T#key-{i}", 1000 + 10 * i, BEGIN_MS + i)
    index_file.flush()
    assert infer_geometry(index_file.path) == (slots, count)


def test_an_index_file_without_entries_has_no_geometry_to_infer(tmp_path):
    index_file = IndexFile.create(str(tmp_path / "20240101000000000"), 8, 16)
    assert infer_geometry(index_file.path) is None
