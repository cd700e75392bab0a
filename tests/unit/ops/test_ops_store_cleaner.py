"""StoreCleaner over a real small store: which CommitLog, ConsumeQueue and index files a pass deletes.

The clock, the disk state and the sleep between deletions are injected; the files are real
(64 KiB CommitLog files, 50-unit ConsumeQueue files) and their mtimes are set with os.utime.
"""
from __future__ import annotations

import os

from rmqd.broker.pull import GetStatus, MessageReader
from rmqd.ops.clean import MANUAL_DELETE_PASSES, StoreCleaner
from rmqd.store.commit_log import CommitLog
from rmqd.store.consume_queue import CQ_UNIT_SIZE, ConsumeQueue, ConsumeQueueStore
from rmqd.store.filenames import offset_to_name
from rmqd.store.index_file import IndexService
from rmqd.store.mapped_file import Warm
from rmqd.store.mapped_file_queue import MappedFileQueue
from tests.unit.ops.conftest import CQ_FILE_SIZE, FILE_SIZE, FakePositions, fill_store
from tests.unit.ops.test_ops_clean_rules import HOUR_S, local_time, state_at

TOPIC = "Orders"


def commitlog_starts(cfg) -> list[int]:
    return sorted(int(name) for name in os.listdir(cfg.commitlog_dir) if name.isdigit())


def age_commitlog(cfg, hours: float, now_s: float) -> None:
    for start in commitlog_starts(cfg):
        path = os.path.join(cfg.commitlog_dir, offset_to_name(start))
        os.utime(path, (now_s - hours * HOUR_S, now_s - hours * HOUR_S))


def store_with_files(cfg, messages: int = 300) -> tuple[list[int], FakePositions]:
    """~5 CommitLog files, the last one being written, plus a next file prepared ahead (as the
    cleaner does), so the file holding write_pos is NOT the last file on disk."""
    phys = fill_store(cfg, TOPIC, messages)
    write_pos = phys[-1]
    next_start = write_pos - write_pos % FILE_SIZE + FILE_SIZE
    MappedFileQueue(cfg.commitlog_dir, FILE_SIZE, readonly=True, warm=Warm.OFF).prepare(next_start)
    return phys, FakePositions().caught_up(write_pos)


def aged_store(cfg, hour: int, age_hours: float):
    """store_with_files, every CommitLog file last written `age_hours` before today's `hour`:00."""
    phys, positions = store_with_files(cfg)
    now = local_time(hour)
    age_commitlog(cfg, age_hours, now)
    return phys, positions, now


def run_one_pass(cfg, positions, now_s: float, used_ratio: float, sleeps: list[float] | None = None,
                 **policy) -> StoreCleaner:
    sleep = (sleeps if sleeps is not None else []).append
    cleaner = StoreCleaner(cfg, positions, clock=lambda: now_s, sleep=sleep)
    if policy:
        cleaner.policy = type(cleaner.policy)(**{**cleaner.policy.__dict__, **policy})
    cleaner.run_pass(state_at(used_ratio))
    return cleaner


def test_at_the_delete_hour_expired_files_go_oldest_first_and_the_active_file_stays(small_config) -> None:
    cfg = small_config
    phys, positions = store_with_files(cfg)
    now = local_time(4, 10)
    age_commitlog(cfg, 50, now)  # every file, the active one too, looks 50 h old
    starts = commitlog_starts(cfg)
    active = positions.write_pos - positions.write_pos % FILE_SIZE
    sleeps: list[float] = []
    run_one_pass(cfg, positions, now, 0.10, sleeps)
    assert commitlog_starts(cfg) == [active, active + FILE_SIZE]
    assert positions.min_phy_offset == active
    assert positions.files_deleted_seq == 1
    deleted = len(starts) - 2
    assert sleeps.count(0.1) >= deleted - 1  # deleteCommitLogFilesInterval between deletions


def test_outside_the_hour_and_below_75_percent_nothing_is_deleted(small_config) -> None:
    cfg = small_config
    _phys, positions, now = aged_store(cfg, 11, 50)
    before = commitlog_starts(cfg)
    run_one_pass(cfg, positions, now, 0.70)
    assert commitlog_starts(cfg) == before and positions.files_deleted_seq == 0


def test_above_75_percent_expired_files_go_at_any_hour_but_fresh_ones_stay(small_config) -> None:
    cfg = small_config
    _phys, positions, now = aged_store(cfg, 11, 1)
    first = os.path.join(cfg.commitlog_dir, offset_to_name(0))
    os.utime(first, (now - 49 * HOUR_S, now - 49 * HOUR_S))  # only the oldest file has expired
    run_one_pass(cfg, positions, now, 0.80)
    assert commitlog_starts(cfg)[0] == FILE_SIZE


def test_above_85_percent_unexpired_files_go_too_but_never_the_file_being_written(small_config) -> None:
    cfg = small_config
    _phys, positions, now = aged_store(cfg, 11, 0)
    active = positions.write_pos - positions.write_pos % FILE_SIZE
    run_one_pass(cfg, positions, now, 0.88)
    assert commitlog_starts(cfg) == [active, active + FILE_SIZE]


def test_with_forced_cleaning_off_unexpired_files_stay_even_above_85_percent(small_config) -> None:
    cfg = small_config
    _phys, positions, now = aged_store(cfg, 11, 0)
    before = commitlog_starts(cfg)
    run_one_pass(cfg, positions, now, 0.93, clean_forcibly_enable=False)
    assert commitlog_starts(cfg) == before


def test_files_not_yet_dispatched_or_flushed_stay_even_when_forced(small_config) -> None:
    cfg = small_config
    _phys, positions = store_with_files(cfg)
    positions.dispatch_pos = 2 * FILE_SIZE + 10
    positions.flush_pos = 3 * FILE_SIZE
    run_one_pass(cfg, positions, local_time(11), 0.95)
    assert commitlog_starts(cfg)[0] == 2 * FILE_SIZE


def test_consume_queue_and_index_files_wholly_below_the_new_min_offset_go(small_config) -> None:
    cfg = small_config
    phys, positions = store_with_files(cfg)
    index = IndexService(cfg.store_dir, max_hash_slots=16, max_index_count=64, readonly=False)
    for i, phy in enumerate(phys[:-1]):
        index.put_key(TOPIC, f"key-{i}", phy, 1_700_000_000_000 + i)
    index.flush()
    index_before = len(index.files)
    index.close()
    assert index_before >= 3
    now = local_time(4)
    age_commitlog(cfg, 50, now)
    run_one_pass(cfg, positions, now, 0.10)
    min_phy = positions.min_phy_offset
    # ConsumeQueue: a file goes when its last unit points below the min offset; the last file stays
    units_per_file = CQ_FILE_SIZE // CQ_UNIT_SIZE
    files_total = (len(phys) - 2) // units_per_file + 1
    last_unit_phy = [phys[min((f + 1) * units_per_file, len(phys) - 1) - 1] for f in range(files_total)]
    kept_expected = [f for f in range(files_total) if f == files_total - 1 or last_unit_phy[f] >= min_phy]
    queue = ConsumeQueue(cfg.store_dir, TOPIC, 0, CQ_FILE_SIZE, readonly=True)
    kept = [mapped.start_offset // CQ_FILE_SIZE for mapped in queue.queue.files]
    queue.close()
    assert kept == kept_expected and kept[0] > 0
    # Index: every file whose entries all point below the min offset is gone, the newest stays
    index = IndexService(cfg.store_dir, max_hash_slots=16, max_index_count=64, readonly=True)
    assert 1 <= len(index.files) < index_before
    assert all(f.header().end_phy_offset >= min_phy for f in index.files)
    index.close()


def test_a_pull_below_the_new_min_offset_is_told_the_offset_moved(small_config) -> None:
    cfg = small_config
    phys, positions, now = aged_store(cfg, 4, 50)
    run_one_pass(cfg, positions, now, 0.10)
    # A reader (as the front) asks for queue offset 0, whose files are gone
    commit_log = CommitLog(cfg.store_dir, FILE_SIZE, readonly=True)
    cq_store = ConsumeQueueStore(cfg.store_dir, CQ_FILE_SIZE, readonly=True)
    first_kept = next(i for i, phy in enumerate(phys[:-1]) if phy >= positions.min_phy_offset)
    reader = MessageReader(commit_log, cq_store)
    result = reader.get_messages(TOPIC, 0, 0, 32, 1 << 20, None, positions.write_pos)
    assert result.status is GetStatus.OFFSET_TOO_SMALL
    assert result.next_offset == result.min_offset == first_kept
    found = reader.get_messages(TOPIC, 0, first_kept, 4, 1 << 20, None, positions.write_pos)
    assert found.status is GetStatus.FOUND and found.message_count == 4
    cq_store.close_all()
    commit_log.close()


def test_a_manual_request_deletes_expired_files_at_any_hour_for_twenty_passes(small_config) -> None:
    cfg = small_config
    _phys, positions, now = aged_store(cfg, 11, 50)
    cleaner = StoreCleaner(cfg, positions, clock=lambda: now, sleep=lambda _s: None)
    assert cleaner.run_pass(state_at(0.1)).commitlog_deleted == []
    cleaner.request_manual()
    result = cleaner.run_pass(state_at(0.1))
    assert result.commitlog_deleted and "manual request" in " ".join(result.plan.reasons)
    assert cleaner.manual_passes_left == MANUAL_DELETE_PASSES - 1
    for _ in range(MANUAL_DELETE_PASSES - 1):
        cleaner.run_pass(state_at(0.1))
    assert cleaner.run_pass(state_at(0.1)).plan.run is False
