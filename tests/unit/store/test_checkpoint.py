"""Checkpoint: layout sizes, round-trip, absent file, RocketMQ-only file, damage detection, atomic store."""
from __future__ import annotations

import os

import pytest

from rmqd.errors import CorruptFileError
from rmqd.store.checkpoint import (
    CHECKPOINT_CRC_POS,
    CHECKPOINT_EXTENSION,
    CHECKPOINT_EXTENSION_POS,
    CHECKPOINT_FILE_SIZE,
    CHECKPOINT_TIMESTAMPS,
    Checkpoint,
    CheckpointData,
    decode_checkpoint,
    encode_checkpoint,
)

DATA = CheckpointData(1_700_000_000_001, 1_700_000_000_002, 1_700_000_000_003, 65536, 4096, 2048)


def test_layout_sizes_match_the_diagram():
    assert CHECKPOINT_TIMESTAMPS.size == 24 and CHECKPOINT_EXTENSION.size == 32
    assert CHECKPOINT_EXTENSION_POS + CHECKPOINT_EXTENSION.size == CHECKPOINT_CRC_POS == 96
    assert len(encode_checkpoint(DATA)) == CHECKPOINT_FILE_SIZE == 4096


def test_stored_checkpoint_loads_back_after_reopen(tmp_path):
    path = str(tmp_path / "checkpoint")
    Checkpoint(path).store(DATA)
    assert Checkpoint(path).load() == DATA
    assert os.path.getsize(path) == 4096 and not os.path.exists(path + ".tmp")


def test_a_missing_checkpoint_loads_as_zeros(tmp_path):
    assert Checkpoint(str(tmp_path / "checkpoint")).load() == CheckpointData()


def test_a_rocketmq_checkpoint_without_the_extension_keeps_its_timestamps():
    raw = CHECKPOINT_TIMESTAMPS.pack(1, 2, 3) + bytes(4096 - 24)
    assert decode_checkpoint(raw) == CheckpointData(1, 2, 3, 0, 0, 0)


@pytest.mark.parametrize(("pos", "field"), [(64, "magic"), (68, "version"), (80, "crc32"), (96, "crc32")])
def test_a_damaged_extension_is_reported_with_path_and_field(tmp_path, pos, field):
    raw = bytearray(encode_checkpoint(DATA))
    raw[pos + 3] ^= 0x01
    path = tmp_path / "checkpoint"
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError) as err:
        Checkpoint(str(path)).load()
    assert err.value.field == field and err.value.path == str(path)


def test_a_truncated_checkpoint_is_reported():
    with pytest.raises(CorruptFileError, match="file length"):
        decode_checkpoint(b"\x00" * 50, "cp")
