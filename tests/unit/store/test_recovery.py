"""Store recovery: torn CommitLog tail, ConsumeQueue rebuild past the checkpoint, bounded work."""
from __future__ import annotations

import os

import pytest

from rmqd.store import record as r
from rmqd.store.checkpoint import Checkpoint, CheckpointData
from rmqd.store.commit_log import CommitLog
from rmqd.store.consume_queue import ConsumeQueueStore
from rmqd.store.dispatch import dispatch_record_to_cq
from rmqd.store.index_file import IndexService
from rmqd.store.recovery import recover_store

CL_FILE_SIZE = 64 * 1024
CQ_FILE_SIZE = 100 * 20
QUEUES = [("TopicA", 0), ("TopicA", 1), ("TopicB", 0)]


class StoreBuilder:
    """Writes records like the writer and dispatches like the dispatcher, in-process."""

    def __init__(self, store_dir: str, batch) -> None:
        self.store_dir = store_dir
        self.batch = batch
        self.log = CommitLog(store_dir, CL_FILE_SIZE, readonly=False)
        self.cq = ConsumeQueueStore(store_dir, CQ_FILE_SIZE, readonly=False)
        self.next_offsets: dict[tuple[str, int], int] = {}
        self.records: list[tuple[int, str, int, int]] = []  # (phy, topic, qid, queue_offset)
        self.dispatched_to = 0

    def append(self, count: int, body_size: int = 700, sys_flag: int = 0, keyed: bool = False) -> None:
        for i in range(count):
            topic, qid = QUEUES[len(self.records) % len(QUEUES)]
            plain = sys_flag in (0, r.SysFlag.TRANSACTION_COMMIT)
            queue_offset = self.next_offsets.get((topic, qid), 0) if plain else 0
            props = {"TAGS": "TagA", "KEYS": f"key-{len(self.records)} common"} if keyed else None
            src = self.batch(topic, qid, [bytes([65 + i % 26]) * body_size], props, sys_flag=sys_flag)
            phy = self.log.append_records(src, 1, queue_offset, 1_700_000_000_000 + len(self.records))[0]
            if plain:
                self.next_offsets[(topic, qid)] = queue_offset + 1
            self.records.append((phy, topic, qid, queue_offset if plain else -1))

    def dispatch(self, upto_index: int) -> None:
        end = self.records[upto_index][0] if upto_index < len(self.records) else self.log.write_pos
        for phy, rec in self.log.iter_records(self.dispatched_to, end):
            dispatch_record_to_cq(self.cq, phy, rec)
        self.dispatched_to = end
        self.cq.flush_all()

    def checkpoint(self, flush_index: int, dispatch_index: int, index_index: int | None = None) -> None:
        index_index = dispatch_index if index_index is None else index_index
        data = CheckpointData(commitlog_flush_pos=self.records[flush_index][0],
                              cq_dispatch_pos=self.records[dispatch_index][0],
                              index_dispatch_pos=self.records[index_index][0])
        Checkpoint(os.path.join(self.store_dir, "checkpoint")).store(data)

    def close(self) -> None:
        self.cq.close_all()
        self.log.close()


def _zero_from(store_dir: str, phy: int) -> None:
    name = os.path.join(store_dir, "commitlog", f"{phy - phy % CL_FILE_SIZE:020d}")
    with open(name, "r+b") as f:
        f.seek(phy % CL_FILE_SIZE)
        f.write(bytes(CL_FILE_SIZE - phy % CL_FILE_SIZE))


def _xor_byte(store_dir: str, phy: int) -> None:
    name = os.path.join(store_dir, "commitlog", f"{phy - phy % CL_FILE_SIZE:020d}")
    with open(name, "r+b") as f:
        f.seek(phy % CL_FILE_SIZE)
        old = f.read(1)[0]
        f.seek(phy % CL_FILE_SIZE)
        f.write(bytes([old ^ 0x5A]))


def _recover(store_dir: str, abnormal: bool = True, recheck_bytes: int = 1):
    """recheck_bytes=1: re-validate only the last record before the checkpoint (exact counts below)."""
    return recover_store(store_dir, commitlog_file_size=CL_FILE_SIZE, cq_file_size=CQ_FILE_SIZE,
                         abnormal=abnormal, index_enabled=True, max_hash_slots=64, max_index_count=50,
                         recheck_bytes=recheck_bytes)


def _expected_units(records, upto_index):
    units: dict[tuple[str, int], list[int]] = {}
    for phy, topic, qid, queue_offset in records[:upto_index]:
        if queue_offset >= 0:
            assert len(units.setdefault((topic, qid), [])) == queue_offset
            units[(topic, qid)].append(phy)
    return units


def _units_on_disk(store_dir: str) -> dict[tuple[str, int], list[int]]:
    cq = ConsumeQueueStore(store_dir, CQ_FILE_SIZE, readonly=True)
    return {key: [u[0] for u in cq.get(*key).read_range(0, 10_000)] for key in cq.list_queues()}


def test_abnormal_recovery_cuts_the_torn_tail_and_rebuilds_consume_queues(store_dir, batch):
    # Given 100 records over several files, checkpointed at 60, dispatched to 80 and beyond the tear,
    builder = StoreBuilder(store_dir, batch)
    builder.append(100)
    builder.dispatch(80)
    builder.checkpoint(flush_index=70, dispatch_index=60)
    builder.dispatch(100)  # units for the records that the tear destroys exist too
    builder.close()
    # and the CommitLog torn in the middle of record 90
    _zero_from(store_dir, builder.records[90][0] + 40)
    # When recovering after a crash
    result = _recover(store_dir)
    # Then the log ends before record 90, and every queue holds exactly the units of records 0..89
    assert result.write_pos == builder.records[90][0]
    assert result.records_scanned == 31  # from the record before min(cq_dispatch_pos, flush): bounded
    assert result.truncated_bytes > 0 and result.cq_units_cut == 10
    expected = _expected_units(builder.records, 90)
    assert _units_on_disk(store_dir) == expected
    assert result.queue_offsets == {key: len(phys) for key, phys in expected.items()}
    cp = Checkpoint(os.path.join(store_dir, "checkpoint")).load()
    assert cp.commitlog_flush_pos == cp.cq_dispatch_pos == result.write_pos
    assert cp.physic_msg_timestamp_ms == 1_700_000_000_089


def test_consume_queue_units_lost_past_the_checkpoint_are_rebuilt(store_dir, batch):
    builder = StoreBuilder(store_dir, batch)
    builder.append(50)
    builder.dispatch(20)
    builder.checkpoint(flush_index=49, dispatch_index=20)
    builder.close()
    result = _recover(store_dir)
    assert result.cq_units_redispatched == 30 and result.truncated_bytes == 0
    assert _units_on_disk(store_dir) == _expected_units(builder.records, 50)


def test_prepared_and_rolled_back_records_get_no_consume_queue_unit(store_dir, batch):
    builder = StoreBuilder(store_dir, batch)
    builder.append(6)
    builder.append(3, sys_flag=r.SysFlag.TRANSACTION_PREPARED)
    builder.append(3, sys_flag=r.SysFlag.TRANSACTION_ROLLBACK)
    builder.append(3, sys_flag=r.SysFlag.TRANSACTION_COMMIT)
    builder.close()
    result = _recover(store_dir)
    assert result.records_scanned == 15 and result.cq_units_redispatched == 9
    assert _units_on_disk(store_dir) == _expected_units(builder.records, 15)


def test_a_second_recovery_after_a_clean_stop_scans_only_the_last_record(store_dir, batch):
    builder = StoreBuilder(store_dir, batch)
    builder.append(40)
    builder.close()
    first = _recover(store_dir)
    again = _recover(store_dir, abnormal=False)
    assert again.write_pos == first.write_pos and again.records_scanned == 1
    assert again.truncated_bytes == 0 and again.queue_offsets == first.queue_offsets


def test_a_corrupt_checkpoint_makes_recovery_scan_from_the_first_file(store_dir, batch, caplog):
    builder = StoreBuilder(store_dir, batch)
    builder.append(30)
    builder.checkpoint(flush_index=29, dispatch_index=29)
    builder.close()
    with open(os.path.join(store_dir, "checkpoint"), "r+b") as f:
        f.seek(75)
        f.write(b"\xff")
    result = _recover(store_dir)
    assert result.records_scanned == 30 and "corrupt checkpoint" in caplog.text
    assert result.queue_offsets == {key: 10 for key in QUEUES}


def test_recovering_an_empty_store_gives_position_zero(store_dir):
    result = _recover(store_dir)
    assert (result.write_pos, result.queue_offsets, result.records_scanned) == (0, {}, 0)
    assert Checkpoint(os.path.join(store_dir, "checkpoint")).load() == CheckpointData()


# Entries from the index checkpoint (record 20) on are cut and records 20..29 re-indexed, 2 keys each.
@pytest.mark.parametrize(("indexed_upto", "cut", "rebuilt"), [(35, 30, 20), (25, 10, 20)])
def test_index_entries_past_the_checkpoint_are_cut_and_re_indexed_up_to_the_end(
        store_dir, batch, indexed_upto, cut, rebuilt):
    # Given 40 keyed records (2 keys each), indexed up to `indexed_upto` (checkpoint: 20), torn in record 30
    builder = StoreBuilder(store_dir, batch)
    builder.append(40, keyed=True)
    builder.dispatch(40)
    builder.checkpoint(flush_index=39, dispatch_index=25, index_index=20)
    index = IndexService(store_dir, max_hash_slots=64, max_index_count=50, readonly=False)
    for phy, rec in builder.log.iter_records(0, builder.records[indexed_upto][0]):
        index.build_for_record(phy, rec)
    index.close()
    builder.close()
    _zero_from(store_dir, builder.records[30][0] + 100)
    # When recovering
    result = _recover(store_dir)
    # Then every surviving record is found by its keys exactly once, and nothing past the end is
    index = IndexService(store_dir, max_hash_slots=64, max_index_count=50, readonly=True)
    phys = [phy for phy, *_ in builder.records]
    assert [index.query("TopicA", f"key-{i}") + index.query("TopicB", f"key-{i}") for i in range(31)] == (
        [[phys[i]] for i in range(30)] + [[]])
    common = index.query("TopicA", "common", max_num=100) + index.query("TopicB", "common", max_num=100)
    assert sorted(common) == phys[:30]
    assert (result.index_entries_cut, result.index_keys_rebuilt) == (cut, rebuilt)
    assert Checkpoint(os.path.join(store_dir, "checkpoint")).load().index_dispatch_pos == result.write_pos


def test_a_record_indexed_under_only_one_of_its_keys_is_re_indexed_under_all(store_dir, batch):
    # Given 10 keyed records, the index checkpoint at record 5, and record 5 indexed under its
    # first key only (the dispatcher was killed between two puts)
    builder = StoreBuilder(store_dir, batch)
    builder.append(10, keyed=True)
    builder.dispatch(10)
    builder.checkpoint(flush_index=9, dispatch_index=9, index_index=5)
    index = IndexService(store_dir, max_hash_slots=64, max_index_count=50, readonly=False)
    records = list(builder.log.iter_records(0, builder.log.write_pos))
    for phy, rec in records[:5]:
        index.build_for_record(phy, rec)
    phy5, rec5 = records[5]
    index.put_key(rec5.topic, "key-5", phy5, rec5.store_timestamp_ms)
    index.close()
    builder.close()
    # When recovering
    _recover(store_dir)
    # Then record 5 is found under both keys, once each, and so are the records after it
    index = IndexService(store_dir, max_hash_slots=64, max_index_count=50, readonly=True)
    assert index.query(rec5.topic, "key-5") == [phy5]
    assert sorted(index.query("TopicA", "common", max_num=100) + index.query("TopicB", "common", max_num=100)
                  ) == [phy for phy, _ in records]


def test_without_the_index_recovery_starts_at_the_consume_queue_checkpoint(store_dir, batch):
    builder = StoreBuilder(store_dir, batch)
    builder.append(30, keyed=True)
    builder.checkpoint(flush_index=29, dispatch_index=20, index_index=0)
    builder.close()
    result = recover_store(store_dir, commitlog_file_size=CL_FILE_SIZE, cq_file_size=CQ_FILE_SIZE,
                           abnormal=True, recheck_bytes=1)
    assert result.records_scanned == 11 and not os.path.exists(os.path.join(store_dir, "index"))
    assert Checkpoint(os.path.join(store_dir, "checkpoint")).load().index_dispatch_pos == 0


@pytest.mark.parametrize("damage", ["cut", "garble"])
def test_a_last_record_damaged_after_a_clean_stop_is_found_and_cut(store_dir, batch, damage):
    # Given a cleanly stopped store (checkpoint at the end) whose last record is then damaged
    builder = StoreBuilder(store_dir, batch)
    builder.append(30, keyed=True)
    builder.dispatch(30)
    builder.close()
    first = _recover(store_dir, abnormal=False)
    last_phy = builder.records[-1][0]
    if damage == "cut":
        _zero_from(store_dir, last_phy + 300)
    else:
        _xor_byte(store_dir, last_phy + 100)  # in the body: BODYCRC no longer matches
    # When the broker starts normally again (default re-check window)
    result = recover_store(store_dir, commitlog_file_size=CL_FILE_SIZE, cq_file_size=CQ_FILE_SIZE,
                           abnormal=False, index_enabled=True, max_hash_slots=64, max_index_count=50)
    # Then exactly that record is cut, with its ConsumeQueue unit and index entries
    assert first.write_pos > last_phy and result.write_pos == last_phy
    assert result.cq_units_cut == 1 and _units_on_disk(store_dir) == _expected_units(builder.records, 29)
    index = IndexService(store_dir, max_hash_slots=64, max_index_count=50, readonly=True)
    assert index.query("TopicB", "key-29") == [] and len(index.query("TopicA", "key-28")) == 1
