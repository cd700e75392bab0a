"""MappedFile / MappedFileQueue: full-size atomic creation, prepared files, refresh, truncation."""
from __future__ import annotations

import os

import pytest

from rmqd.errors import CorruptFileError
from rmqd.store.filenames import name_to_offset, offset_to_name
from rmqd.store.mapped_file import MappedFile, Warm, prepare_file, remove_stale_tmp_files
from rmqd.store.mapped_file_queue import MappedFileQueue

FILE_SIZE = 64 * 1024


def test_names_are_twenty_digit_start_offsets():
    assert offset_to_name(1073741824) == "00000000001073741824"
    assert name_to_offset("00000000001073741824") == 1073741824
    for bad in ("123", "0000000000000000000x", "00000000000000000000.123.tmp"):
        with pytest.raises(ValueError):
            name_to_offset(bad)


def test_a_created_file_is_full_size_allocated_and_leaves_no_temporary_file(tmp_path):
    path = str(tmp_path / offset_to_name(0))
    mapped = MappedFile.create(path, FILE_SIZE)
    assert os.path.getsize(path) == FILE_SIZE and os.listdir(tmp_path) == [offset_to_name(0)]
    assert os.stat(path).st_blocks * 512 >= FILE_SIZE  # fallocated, not sparse
    assert bytes(mapped.mv) == bytes(FILE_SIZE)
    mapped.mv[10:13] = b"abc"
    mapped.flush(10, 13)
    mapped.close()
    assert open(path, "rb").read()[10:13] == b"abc"


def test_preparing_an_existing_file_keeps_its_content(tmp_path):
    path = str(tmp_path / offset_to_name(0))
    mapped = MappedFile.create(path, FILE_SIZE)
    mapped.mv[0:4] = b"data"
    assert prepare_file(path, FILE_SIZE) is False
    assert MappedFile.open(path, FILE_SIZE, readonly=True).mv[0:4] == b"data"


def test_a_file_of_another_size_is_reported_with_its_path(tmp_path):
    path = tmp_path / offset_to_name(0)
    path.write_bytes(bytes(100))
    with pytest.raises(CorruptFileError) as err:
        MappedFile.open(str(path), FILE_SIZE, readonly=True)
    assert err.value.path == str(path) and err.value.field == "file length"


def test_temporary_files_of_dead_processes_are_removed_and_others_kept(tmp_path):
    dead = tmp_path / f"{offset_to_name(0)}.999999999.tmp"
    alive = tmp_path / f"{offset_to_name(0)}.{os.getpid()}.tmp"
    dead.write_bytes(b"x")
    alive.write_bytes(b"x")
    remove_stale_tmp_files(str(tmp_path))
    assert not dead.exists() and alive.exists()


def test_get_or_create_uses_a_file_prepared_ahead(tmp_path):
    queue = MappedFileQueue(str(tmp_path), FILE_SIZE, readonly=False)
    queue.prepare(FILE_SIZE)
    assert queue.files == []  # prepared on disk only
    queue.get_or_create(0)
    second = queue.get_or_create(FILE_SIZE)
    assert [f.start_offset for f in queue.files] == [0, FILE_SIZE]
    assert second.path.endswith(offset_to_name(FILE_SIZE))
    assert queue.find(FILE_SIZE + 5) == (second, 5) and queue.find(3 * FILE_SIZE) is None
    with pytest.raises(ValueError, match="multiple"):
        queue.get_or_create(100)


def test_a_reader_refresh_picks_up_new_files_and_drops_deleted_ones(tmp_path):
    writer = MappedFileQueue(str(tmp_path), FILE_SIZE, readonly=False)
    for start in (0, FILE_SIZE, 2 * FILE_SIZE):
        writer.get_or_create(start)
    reader = MappedFileQueue(str(tmp_path), FILE_SIZE, readonly=True)
    view = reader.find(10)[0].mv[0:8]  # a view handed out before the file is deleted
    writer.get_or_create(3 * FILE_SIZE)
    writer.delete_files_before(2 * FILE_SIZE)
    reader.refresh()
    assert [f.start_offset for f in reader.files] == [2 * FILE_SIZE, 3 * FILE_SIZE]
    assert bytes(view) == bytes(8)  # still readable: unmapped when released


def test_truncate_after_zeroes_the_tail_in_place_and_deletes_later_files(tmp_path):
    queue = MappedFileQueue(str(tmp_path), FILE_SIZE, readonly=False)
    for start in (0, FILE_SIZE, 2 * FILE_SIZE):
        queue.get_or_create(start).mv[:] = b"\x07" * FILE_SIZE
    removed = queue.truncate_after(FILE_SIZE + 100)
    assert removed == FILE_SIZE + (FILE_SIZE - 100)
    assert [f.start_offset for f in queue.files] == [0, FILE_SIZE]
    second = open(tmp_path / offset_to_name(FILE_SIZE), "rb").read()
    assert second[:100] == b"\x07" * 100 and second[100:] == bytes(FILE_SIZE - 100)
    assert os.path.getsize(tmp_path / offset_to_name(FILE_SIZE)) == FILE_SIZE  # never shrunk
    assert open(tmp_path / offset_to_name(0), "rb").read() == b"\x07" * FILE_SIZE


def test_delete_files_before_never_deletes_the_last_file(tmp_path):
    queue = MappedFileQueue(str(tmp_path), FILE_SIZE, readonly=False)
    queue.get_or_create(0)
    assert queue.delete_files_before(10 * FILE_SIZE) == []
    assert queue.min_offset() == 0 and queue.max_file_end() == FILE_SIZE


def _write_bytes() -> int:
    """This process's write_bytes (/proc/self/io): bytes it made dirty, counted per folio."""
    with open("/proc/self/io") as io:
        return next(int(line.split()[1]) for line in io if line.startswith("write_bytes:"))


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="needs Linux /proc/self/io")
def test_a_file_warmed_in_pages_is_made_of_small_folios_so_a_small_commit_writes_back_little(tmp_path):
    # Deep in a file warmed for SYNC_FLUSH, dirtying one byte must dirty one 4 KiB page, not a 2 MiB
    # folio that the next msync would write back whole (what a warm-up through a mapping makes).
    size = 64 << 20
    path = str(tmp_path / offset_to_name(0))
    mapped = MappedFile.create(path, size, warm=Warm.PAGES)
    try:
        dirtied = []
        for pos in range(16 << 20, size, 8 << 20):
            before = _write_bytes()
            mapped.mv[pos] = 1
            dirtied.append(_write_bytes() - before)
            mapped.flush(pos, pos + 1)
        assert max(dirtied) <= 16 * 1024, f"bytes dirtied per 1-byte write: {dirtied}"
        assert open(path, "rb").read()[16 << 20] == 1
    finally:
        mapped.close()


def test_a_preparation_that_fails_leaves_no_temporary_file(tmp_path, monkeypatch):
    def no_space(fd, offset, length):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    with pytest.raises(OSError, match="No space"):
        prepare_file(str(tmp_path / offset_to_name(0)), FILE_SIZE)
    assert os.listdir(tmp_path) == []
