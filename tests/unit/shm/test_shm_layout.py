"""The region map: alignment, no overlaps, same layout on create and attach, version checks."""
from __future__ import annotations

import struct

import pytest

from shm import layout
from shm.layout import LINE_SIZE, Layout, decode_header
from shm.segment import Segment, ShmError, ShmVersionMismatch

RING_SIZES = [
    {},
    {"request": 64, "ack": 64, "park": 64, "wake": 64, "arrival": 64},
    {"request": 1 << 26, "ack": 1 << 22, "park": 1 << 20, "wake": 1 << 12, "arrival": 1 << 7},
]


@pytest.mark.parametrize("ring_sizes", RING_SIZES)
def test_every_region_is_line_aligned_and_none_overlap(ring_sizes: dict[str, int]) -> None:
    regions = Layout(ring_sizes).regions()
    for start, end, label in regions:
        assert start % LINE_SIZE == 0 and end % 8 == 0, label
    for (_, end, label), (next_start, _, next_label) in zip(regions, regions[1:], strict=False):
        assert end <= next_start, f"{label} overlaps {next_label}"
    assert regions[-1][1] <= Layout(ring_sizes).total_size


def test_positions_heartbeats_and_doorbells_each_get_their_own_line() -> None:
    offsets = [Layout.position_offset(n) for n in layout.POSITIONS]
    offsets += [Layout.heartbeat_offset(n) for n in layout.PROCESS_SLOTS]
    offsets += [Layout.doorbell_offset(n) for n in layout.DOORBELLS]
    assert len(set(o // LINE_SIZE for o in offsets)) == len(offsets)


def test_every_position_has_an_owner_process() -> None:
    assert set(layout.POSITION_OWNERS) == set(layout.POSITIONS)
    assert set(layout.POSITION_OWNERS.values()) <= set(layout.PROCESS_SLOTS)


def test_header_struct_sizes_match_the_diagram() -> None:
    assert layout.SEGMENT_HEADER.size == 40
    assert layout.RING_TABLE.size == LINE_SIZE
    assert layout.SEGMENT_MAGIC.to_bytes(8, "little") == b"RMQDSHM\x01"


def test_total_size_is_page_rounded_and_grows_with_ring_capacity() -> None:
    small = Layout({"request": 4096})
    big = Layout({"request": 1 << 20})
    assert small.total_size % layout.PAGE_SIZE == 0
    assert big.total_size - small.total_size == (1 << 20) - 4096


@pytest.mark.parametrize("capacity", [0, 32, 100, 4097])
def test_ring_capacity_must_be_a_power_of_two_of_at_least_64(capacity: int) -> None:
    with pytest.raises(ValueError, match="power of two"):
        Layout({"request": capacity})


def test_unknown_ring_name_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown ring"):
        Layout({"requests": 4096})


def test_attach_computes_the_same_layout_as_create(shm_path: str) -> None:
    sizes = {"request": 1 << 16, "ack": 1 << 12, "park": 256, "wake": 128, "arrival": 64}
    created = Segment.create(shm_path, sizes)
    attached = Segment.attach(shm_path)
    try:
        assert attached.layout == created.layout
        assert attached.layout.regions() == created.layout.regions()
        assert attached.layout.total_size == created.layout.total_size
        assert attached.header.ring_capacities == sizes
    finally:
        attached.close()
        created.close()


def test_header_records_creator_pid_and_size(shm_path: str) -> None:
    import os
    segment = Segment.create(shm_path, {})
    try:
        header = decode_header(segment.buf)
        assert (header.magic, header.layout_version) == (layout.SEGMENT_MAGIC, layout.LAYOUT_VERSION)
        assert header.creator_pid == os.getpid()
        assert header.total_size == segment.layout.total_size == os.path.getsize(shm_path)
    finally:
        segment.close()


def test_attach_to_another_layout_version_names_path_and_both_versions(shm_path: str) -> None:
    segment = Segment.create(shm_path, {})
    struct.pack_into("<I", segment.buf, 8, layout.LAYOUT_VERSION + 1)
    segment.close()
    with pytest.raises(ShmVersionMismatch) as caught:
        Segment.attach(shm_path)
    message = str(caught.value)
    assert shm_path in message
    assert f"version {layout.LAYOUT_VERSION + 1}" in message and f"expects {layout.LAYOUT_VERSION}" in message


def test_attach_to_a_file_with_bad_magic_raises_shm_error_naming_the_path(shm_path: str) -> None:
    with open(shm_path, "wb") as file:
        file.write(b"\x00" * 8192)
    with pytest.raises(ShmError, match="bad magic") as caught:
        Segment.attach(shm_path)
    assert shm_path in str(caught.value)


def test_attach_to_a_missing_segment_says_so(shm_path: str) -> None:
    with pytest.raises(ShmError, match="does not exist"):
        Segment.attach(shm_path)


def test_attach_to_a_truncated_segment_raises(shm_path: str) -> None:
    Segment.create(shm_path, {"request": 1 << 16}).close()
    with open(shm_path, "r+b") as file:
        file.truncate(8192)
    with pytest.raises(ShmError, match="file has 8192"):
        Segment.attach(shm_path)
