"""CommitLog: append, roll with blank records, read, reopen, recover torn tails."""
from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rmqd.errors import RecordTooLargeError
from rmqd.store import record as r
from rmqd.store.commit_log import CommitLog
from rmqd.store.filenames import offset_to_name

COMMITLOG_FILE_SIZE = 64 * 1024  # small files so that every test rolls


def _fill(log: CommitLog, batch, count: int, body_size: int = 1000, queue_id: int = 0) -> list[int]:
    phys = []
    for i in range(count):
        src = batch("TopicTest", queue_id, [bytes([i % 256]) * body_size])
        phys += log.append_records(src, 1, i, 1000 + i)
    return phys


def test_appended_records_read_back_with_patched_offsets_and_timestamps(store_dir, batch):
    log = CommitLog(store_dir, COMMITLOG_FILE_SIZE, readonly=False)
    phys = log.append_records(batch("TopicTest", 3, [b"a", b"bb", b"ccc"]), 3, 10, 555)
    assert phys[0] == 0 and log.write_pos == phys[2] + log.read_record(phys[2]).total_size
    for i, phy in enumerate(phys):
        rec = log.read_record(phy)
        assert (rec.queue_offset, rec.phy_offset, rec.store_timestamp_ms) == (10 + i, phy, 555)
        assert rec.body == [b"a", b"bb", b"ccc"][i] and rec.queue_id == 3
    assert bytes(log.read(phys[1], 4)) == log.read_record(phys[1]).total_size.to_bytes(4, "big")


def test_a_record_that_does_not_fit_goes_to_the_next_file_after_a_blank_record(store_dir, batch):
    log = CommitLog(store_dir, COMMITLOG_FILE_SIZE, readonly=False)
    phys = _fill(log, batch, 200)
    names = sorted(os.listdir(os.path.join(store_dir, "commitlog")))
    assert names[:2] == [offset_to_name(0), offset_to_name(COMMITLOG_FILE_SIZE)] and len(names) >= 3
    size = log.read_record(phys[0]).total_size
    for phy in phys:
        assert phy // COMMITLOG_FILE_SIZE == (phy + size - 1) // COMMITLOG_FILE_SIZE  # never spans files
    first_in_second = next(p for p in phys if p >= COMMITLOG_FILE_SIZE)
    assert first_in_second == COMMITLOG_FILE_SIZE
    blank_phy = max(p for p in phys if p < COMMITLOG_FILE_SIZE) + size
    blank = r.peek_size_magic(log.read(blank_phy, 8), 0)
    assert blank == (COMMITLOG_FILE_SIZE - blank_phy, r.BLANK_MAGIC)
    assert [p for p, _ in log.iter_records(0, log.write_pos)] == phys


def test_a_batch_that_crosses_a_file_boundary_is_split_and_keeps_queue_offsets(store_dir, batch):
    log = CommitLog(store_dir, COMMITLOG_FILE_SIZE, readonly=False)
    bodies = [bytes([i]) * 3000 for i in range(40)]
    phys = log.append_records(batch("T", 1, bodies), 40, 100, 7)
    records = [log.read_record(p) for p in phys]
    assert [rec.queue_offset for rec in records] == list(range(100, 140))
    assert [rec.body for rec in records] == bodies
    assert any(p == COMMITLOG_FILE_SIZE for p in phys)


def test_a_record_larger_than_a_file_is_refused_and_nothing_is_written(store_dir, batch):
    log = CommitLog(store_dir, COMMITLOG_FILE_SIZE, readonly=False)
    with pytest.raises(RecordTooLargeError):
        log.append_records(batch("T", 0, [b"x", b"y" * COMMITLOG_FILE_SIZE]), 2, 0, 1)
    assert log.write_pos == 0


def test_a_record_that_exactly_fits_with_room_for_a_blank_stays_in_the_file(store_dir, batch):
    log = CommitLog(store_dir, COMMITLOG_FILE_SIZE, readonly=False)
    body_len = COMMITLOG_FILE_SIZE - 8 - r.record_size(0, 1, 10)
    phys = log.append_records(batch("T", 0, [b"z" * body_len, b"next"]), 2, 0, 1)
    assert phys == [0, COMMITLOG_FILE_SIZE]
    assert r.peek_size_magic(log.read(COMMITLOG_FILE_SIZE - 8, 8), 0) == (8, r.BLANK_MAGIC)


def test_reopening_and_recovering_finds_the_same_end_and_records(store_dir, batch):
    log = CommitLog(store_dir, COMMITLOG_FILE_SIZE, readonly=False)
    phys = _fill(log, batch, 150)
    end = log.write_pos
    log.flush()
    log.close()
    reopened = CommitLog(store_dir, COMMITLOG_FILE_SIZE, readonly=False)
    assert reopened.recover(0) == end and reopened.write_pos == end
    assert reopened.truncated_bytes == 0 and reopened.records_scanned == 150
    assert [p for p, _ in reopened.iter_records(0, end)] == phys
    more = reopened.append_records(batch("TopicTest", 0, [b"after"]), 1, 150, 1)
    assert more == [end]


def test_recovery_from_a_checkpoint_position_scans_only_the_rest(store_dir, batch):
    log = CommitLog(store_dir, COMMITLOG_FILE_SIZE, readonly=False)
    phys = _fill(log, batch, 150)
    assert log.recover(phys[100]) == log.write_pos
    assert log.records_scanned == 50


def test_a_reader_sees_new_files_after_refresh(store_dir, batch):
    writer = CommitLog(store_dir, COMMITLOG_FILE_SIZE, readonly=False)
    _fill(writer, batch, 1)
    reader = CommitLog(store_dir, COMMITLOG_FILE_SIZE, readonly=True)
    phys = _fill(writer, batch, 100)
    assert reader.read_record(phys[-1]).phy_offset == phys[-1]  # finds the new file by refreshing
    reader.refresh()
    assert len(reader.queue.files) == len(writer.queue.files)
    with pytest.raises(TypeError):
        reader.read(0, 4)[0:1] = b"x"  # read-only mapping


def test_delete_files_before_keeps_the_file_holding_the_offset_and_the_last_file(store_dir, batch):
    log = CommitLog(store_dir, COMMITLOG_FILE_SIZE, readonly=False)
    _fill(log, batch, 200)
    deleted = log.delete_files_before(2 * COMMITLOG_FILE_SIZE + 5)
    assert [os.path.basename(p) for p in deleted] == [offset_to_name(0), offset_to_name(COMMITLOG_FILE_SIZE)]
    assert log.min_offset() == 2 * COMMITLOG_FILE_SIZE


def _layout(log: CommitLog) -> list[tuple[int, int, int]]:
    """(start, intact_end, next) per record or blank up to write_pos."""
    items, phy = [], 0
    while phy < log.write_pos:
        size, magic = r.peek_size_magic(log.read(phy, 8), 0)
        if magic == r.BLANK_MAGIC:
            items.append((phy, phy + 8, phy + size))
        else:
            items.append((phy, phy + size, phy + size))
        phy += size
    return items


def _snapshot(store_dir: str) -> dict[str, bytes]:
    cl_dir = os.path.join(store_dir, "commitlog")
    return {n: open(os.path.join(cl_dir, n), "rb").read() for n in sorted(os.listdir(cl_dir))}


def _write_at(store_dir: str, phy: int, data: bytes) -> None:
    name = offset_to_name(phy - phy % COMMITLOG_FILE_SIZE)
    with open(os.path.join(store_dir, "commitlog", name), "r+b") as f:
        f.seek(phy % COMMITLOG_FILE_SIZE)
        f.write(data)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_torn_tail_is_cut_at_exactly_the_last_whole_record(tmp_path_factory, data, batch):
    # Given a CommitLog over three files, and the bytes from a random cut point on zeroed (a torn write)
    store_dir = str(tmp_path_factory.mktemp("torn"))
    log = CommitLog(store_dir, COMMITLOG_FILE_SIZE, readonly=False)
    bodies = [bytes([1 + i % 250]) * data.draw(st.integers(0, 3000)) for i in range(60)]
    for i, body in enumerate(bodies):
        log.append_records(batch("TopicTest", 0, [body]), 1, i, 1)
    items, end = _layout(log), log.write_pos
    log.close()
    cut = data.draw(st.integers(0, end - 1))
    _write_at(store_dir, cut, bytes(min(end, cut - cut % COMMITLOG_FILE_SIZE + COMMITLOG_FILE_SIZE) - cut))
    for start in range(cut - cut % COMMITLOG_FILE_SIZE + COMMITLOG_FILE_SIZE, end, COMMITLOG_FILE_SIZE):
        _write_at(store_dir, start, bytes(min(COMMITLOG_FILE_SIZE, end - start)))
    before = _snapshot(store_dir)
    expected = 0
    for _start, intact_end, nxt in items:
        if intact_end > cut:
            break
        expected = nxt
    # When recovering from the start
    log = CommitLog(store_dir, COMMITLOG_FILE_SIZE, readonly=False)
    # Then the end is the end of the last whole record, and nothing before it changed
    assert log.recover(0) == expected
    after = _snapshot(store_dir)
    for name, content in after.items():
        file_start = int(name)
        keep = max(0, min(COMMITLOG_FILE_SIZE, expected - file_start))
        assert content[:keep] == before[name][:keep]
        assert content[keep:] == bytes(COMMITLOG_FILE_SIZE - keep)
    assert max(int(n) for n in after) <= max(expected - expected % COMMITLOG_FILE_SIZE, 0)
    log.close()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(victim=st.integers(0, 79), byte_in_body=st.integers(0, 499))
def test_a_flipped_body_byte_ends_the_log_at_that_record(tmp_path_factory, victim, byte_in_body, batch):
    store_dir = str(tmp_path_factory.mktemp("flip"))
    log = CommitLog(store_dir, COMMITLOG_FILE_SIZE, readonly=False)
    phys = _fill(log, batch, 80, body_size=500)
    log.close()
    _write_at(store_dir, phys[victim] + r.BODY_POS + byte_in_body, b"\xff")
    log = CommitLog(store_dir, COMMITLOG_FILE_SIZE, readonly=False)
    assert log.recover(0) == phys[victim]
    log.close()


def test_recovery_logs_the_file_and_position_of_a_bad_record(store_dir, caplog, batch):
    log = CommitLog(store_dir, COMMITLOG_FILE_SIZE, readonly=False)
    phys = _fill(log, batch, 5)
    _write_at(store_dir, phys[3] + 4, b"\x00\x00\x00\x01")
    with caplog.at_level("INFO", logger="rmqd.store"):
        assert log.recover(0) == phys[3]
    assert f"{offset_to_name(0)} at file position {phys[3]}" in caplog.text and "MAGICCODE" in caplog.text


def test_recovery_of_an_empty_store_returns_zero(store_dir):
    log = CommitLog(store_dir, COMMITLOG_FILE_SIZE, readonly=False)
    assert log.recover(0) == 0


@pytest.mark.parametrize("props", [{"TAGS": "TagA", "K": "v"}, {}])
def test_zeroing_the_last_record_from_any_byte_on_cuts_that_whole_record(store_dir, batch, props):
    # Given two records, the second with a body, a topic and (maybe) properties
    log = CommitLog(store_dir, COMMITLOG_FILE_SIZE, readonly=False)
    phys = log.append_records(batch("TopicTest", 0, [b"first", b"second body"], props), 2, 0, 9)
    end = log.write_pos
    log.close()
    path = os.path.join(store_dir, "commitlog", offset_to_name(0))
    intact = open(path, "rb").read()
    for cut in range(phys[1], end):
        # When the bytes from `cut` to the end of the record were never written (zeros)
        with open(path, "r+b") as f:
            f.write(intact[:cut] + bytes(end - cut))
        log = CommitLog(store_dir, COMMITLOG_FILE_SIZE, readonly=False)
        # Then recovery ends before that record, unless zeroing changed nothing
        expected = end if intact[cut:end] == bytes(end - cut) else phys[1]
        assert log.recover(0) == expected, f"cut at {cut}"
        log.close()


def test_boundary_before_finds_a_record_start_at_least_a_window_back_within_the_file(store_dir, batch):
    log = CommitLog(store_dir, COMMITLOG_FILE_SIZE, readonly=False)
    phys = _fill(log, batch, 150)  # ~1.1 KB records over 3 files
    end = log.write_pos
    assert log.boundary_before(end, 1) == phys[-1]
    assert log.boundary_before(phys[-1], 3000) == phys[-4]
    second_file = COMMITLOG_FILE_SIZE
    assert log.boundary_before(phys[-1], 10 * COMMITLOG_FILE_SIZE) == 2 * second_file  # file start
    first_of_second = next(p for p in phys if p >= second_file)
    before_blank = max(p for p in phys if p < second_file)
    assert log.boundary_before(first_of_second, 1) == before_blank + log.read_record(before_blank).total_size
    assert log.boundary_before(0, 1000) == 0


def test_boundary_before_stops_at_a_size_that_cannot_be_right(store_dir, batch):
    log = CommitLog(store_dir, COMMITLOG_FILE_SIZE, readonly=False)
    phys = _fill(log, batch, 20)
    mapped, file_pos = log.queue.find(phys[5])
    mapped.mv[file_pos:file_pos + 4] = (10**9).to_bytes(4, "big")  # record 5's TOTALSIZE garbled
    assert log.boundary_before(log.write_pos, 1) == phys[5]
