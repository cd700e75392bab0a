"""The clean and disk rules as pure functions: hours, the 75 / 85 / 90 % thresholds, file selection."""
from __future__ import annotations

import time

import pytest

from rmqd.config import BrokerConfig
from rmqd.ops import disk
from rmqd.ops.clean import (
    CleanPolicy,
    CommitLogFile,
    deletable_end,
    is_time_to_delete,
    plan_pass,
    select_commitlog_files,
)
from shm import flags

HOUR_S = 3600.0
LIMITS = disk.DiskLimits()  # 75 / 85 / 90 %


def local_time(hour: int, minute: int = 0) -> float:
    """Epoch seconds of today's local hour:minute (the rules look at the local hour, as RocketMQ)."""
    now = time.localtime()
    return time.mktime((now.tm_year, now.tm_mon, now.tm_mday, hour, minute, 0, 0, 0, -1))


def state_at(ratio: float) -> disk.DiskState:
    total = 1_000_000
    used = int(total * ratio)
    return disk.check_disk(disk.DiskUsage(total, used, total - used), LIMITS)


def files(count: int, size: int, mtimes_s: list[float]) -> list[CommitLogFile]:
    return [CommitLogFile(i * size, (i + 1) * size, mtimes_s[i], f"/store/commitlog/{i * size:020d}")
            for i in range(count)]


@pytest.mark.parametrize(("delete_when", "hour", "minute", "due"), [
    ("04", 4, 0, True), ("04", 4, 59, True), ("04", 5, 0, False), ("04", 3, 59, False),
    ("04;16", 16, 30, True), ("04;16", 12, 0, False), ("00;12", 0, 10, True),
])
def test_deletion_is_due_only_in_the_hours_of_delete_when(delete_when, hour, minute, due) -> None:
    policy = CleanPolicy.from_config(BrokerConfig(deleteWhen=delete_when))
    assert is_time_to_delete(policy, local_time(hour, minute)) is due


@pytest.mark.parametrize(("ratio", "space_to_delete", "clean_immediately", "full"), [
    (0.50, False, False, False),
    (0.75, False, False, False),  # "above": exactly 75 % is not above
    (0.76, True, False, False),
    (0.86, True, True, False),
    (0.90, True, True, False),
    (0.91, True, True, True),
])
def test_the_three_thresholds_classify_the_disk(ratio, space_to_delete, clean_immediately, full) -> None:
    state = state_at(ratio)
    expected = (space_to_delete, clean_immediately, full)
    assert (state.space_to_delete, state.clean_immediately, state.full) == expected


def test_the_limits_come_from_the_broker_conf_percentages() -> None:
    cfg = BrokerConfig(diskMaxUsedSpaceRatio=60, diskSpaceCleanForciblyRatio=70,
                       diskSpaceWarningLevelRatio=80)
    limits = disk.DiskLimits.from_config(cfg)
    assert (limits.max_used_ratio, limits.clean_forcibly_ratio, limits.warning_ratio) == (0.6, 0.7, 0.8)
    assert flags.unpack_disk_limits(limits.packed()) == (80, 70, 60)


def test_outside_delete_when_and_below_75_percent_no_pass_runs() -> None:
    plan = plan_pass(CleanPolicy(), local_time(10), state_at(0.70), manual=False)
    assert plan.run is False and plan.clean_at_once is False


@pytest.mark.parametrize(("hour", "ratio", "manual", "reason"), [
    (4, 0.10, False, "hour 04 is in deleteWhen"),
    (10, 0.80, False, "disk 80.0% used"),
    (10, 0.10, True, "manual request"),
])
def test_a_pass_runs_at_the_hour_above_75_percent_or_on_request(hour, ratio, manual, reason) -> None:
    plan = plan_pass(CleanPolicy(), local_time(hour), state_at(ratio), manual=manual)
    assert plan.run is True and plan.clean_at_once is False
    assert any(reason in r for r in plan.reasons)


def test_above_85_percent_the_pass_cleans_at_once_unless_forced_cleaning_is_off() -> None:
    assert plan_pass(CleanPolicy(), local_time(10), state_at(0.86), manual=False).clean_at_once is True
    off = CleanPolicy(clean_forcibly_enable=False)
    plan = plan_pass(off, local_time(10), state_at(0.86), manual=False)
    assert plan.run is True and plan.clean_at_once is False


def test_expired_files_go_oldest_first_and_the_last_file_never() -> None:
    now = local_time(4)
    listed = files(4, 100, [now - 50 * HOUR_S] * 4)
    chosen = select_commitlog_files(listed, now, CleanPolicy(), clean_at_once=False, safe_end=400)
    assert [f.start for f in chosen] == [0, 100, 200]


def test_the_scan_stops_at_the_first_unexpired_file_so_no_file_in_the_middle_goes() -> None:
    # Given a clock that jumped: the second file looks new, the third old again
    now = local_time(4)
    listed = files(4, 100, [now - 50 * HOUR_S, now - 1 * HOUR_S, now - 60 * HOUR_S, now])
    chosen = select_commitlog_files(listed, now, CleanPolicy(), clean_at_once=False, safe_end=400)
    assert [f.start for f in chosen] == [0]


def test_cleaning_at_once_takes_unexpired_files_but_never_past_the_safe_end() -> None:
    now = local_time(10)
    listed = files(5, 100, [now] * 5)
    chosen = select_commitlog_files(listed, now, CleanPolicy(), clean_at_once=True, safe_end=250)
    assert [f.start for f in chosen] == [0, 100]  # the file holding 250 stays


def test_at_most_ten_files_go_in_one_pass() -> None:
    now = local_time(4)
    listed = files(30, 100, [now - 100 * HOUR_S] * 30)
    chosen = select_commitlog_files(listed, now, CleanPolicy(), clean_at_once=False, safe_end=3000)
    assert len(chosen) == 10 and chosen[0].start == 0


@pytest.mark.parametrize(("write_pos", "dispatch_pos", "flush_pos", "cq_flush_pos", "expected"), [
    (350, 350, 350, 350, 300),  # the file being written (300..400) stays
    (400, 400, 400, 400, 400),  # at a file boundary the next file holds write_pos
    (350, 120, 350, 350, 120),  # not dispatched yet
    (350, 350, 90, 350, 90),    # not flushed yet
    (350, 350, 350, 200, 200),  # ConsumeQueue not flushed yet
])
def test_deletable_end_keeps_the_active_undispatched_and_unflushed_files(
        write_pos, dispatch_pos, flush_pos, cq_flush_pos, expected) -> None:
    assert deletable_end(write_pos, dispatch_pos, flush_pos, cq_flush_pos, 100) == expected


def test_the_disk_flags_follow_the_disk_both_ways() -> None:
    full = disk.cleaner_flags_for(0, state_at(0.93), clean_forcibly_enable=True)
    assert full == flags.NOT_WRITABLE_DISK_FULL | flags.DISK_CLEAN_FORCIBLY
    assert disk.cleaner_flags_for(full, state_at(0.87), True) == flags.DISK_CLEAN_FORCIBLY
    assert disk.cleaner_flags_for(full, state_at(0.87), False) == 0
    assert disk.cleaner_flags_for(full, state_at(0.40), True) == 0


def test_the_writer_is_asked_to_retry_only_when_a_new_file_fits_and_the_disk_is_not_full() -> None:
    error = flags.WRITE_ERROR | flags.WRITE_ERROR_NO_SPACE
    roomy = disk.check_disk(disk.DiskUsage(1000, 500, 500), LIMITS)
    cramped = disk.check_disk(disk.DiskUsage(1000, 500, 100), LIMITS)
    assert disk.writer_may_retry(error, roomy, room_needed_bytes=200) is True
    assert disk.writer_may_retry(error, cramped, room_needed_bytes=200) is False
    assert disk.writer_may_retry(error, state_at(0.95), room_needed_bytes=1) is False
    assert disk.writer_may_retry(0, roomy, room_needed_bytes=200) is False


def test_the_not_writable_remark_gives_the_used_ratio_and_the_thresholds(ops_shm) -> None:
    positions = ops_shm.positions
    positions.set_disk_used_ppm(934_000)
    positions.set_disk_limits(LIMITS.packed())
    positions.set_cleaner_flags(flags.NOT_WRITABLE_DISK_FULL)
    writable, remark = flags.is_writable(positions)
    assert writable is False
    assert "93.4% of the store's disk used" in remark
    assert "diskSpaceWarningLevelRatio=90%" in remark and "diskSpaceCleanForciblyRatio=85%" in remark
    assert "diskMaxUsedSpaceRatio=75%" in remark and "reads keep working" in remark
    positions.set_cleaner_flags(0)
    positions.set_writer_flags(flags.WRITE_ERROR | flags.WRITE_ERROR_NO_SPACE)
    writable, remark = flags.is_writable(positions)
    assert writable is False and "no space left on device" in remark and "93.4%" in remark
