"""Checkpoint: how far the CommitLog was flushed and the ConsumeQueues / index were dispatched.

Path:  {store_dir}/checkpoint, one 4096-byte page (RocketMQ StoreCheckpoint, OS_PAGE_SIZE).
Layout (big-endian):
  0    i64  physicMsgTimestamp     RocketMQ: store timestamp (ms) of the last flushed CommitLog record
  8    i64  logicsMsgTimestamp     RocketMQ: same for the ConsumeQueues
  16   i64  indexMsgTimestamp      RocketMQ: same for the index files
  24   40 bytes zero               (RocketMQ 5 puts masterFlushedOffset / confirmPhyOffset here)
  ---- rmqd extension (RocketMQ ignores bytes past its fields) ----
  64   u32  magic                  0x524d5143 ("RMQC")
  68   u32  version                1
  72   i64  commitlog_flush_pos    phy_offset up to which the CommitLog is fsync'ed
  80   i64  cq_dispatch_pos        phy_offset up to which ConsumeQueue units are written and flushed
  88   i64  index_dispatch_pos     phy_offset up to which index entries are written and flushed
  96   u32  crc32                  zlib.crc32 of bytes 64..96
  100  zeros up to 4096
  = 24 + 40 + 36 + 3996 zero bytes = 4096 bytes

A file whose extension is all zero (written by RocketMQ itself) loads with positions 0.
Writes are atomic: write `checkpoint.tmp`, fsync, rename over `checkpoint`, fsync the directory,
so a crash leaves either the old or the new checkpoint. One writer (the process that owns
recovery/flushing); readers may load at any time. Not thread-safe.
"""
from __future__ import annotations

import dataclasses
import os
import struct
import zlib

from rmqd.errors import CorruptFileError
from rmqd.store.mapped_file import fsync_dir

CHECKPOINT_FILE_SIZE = 4096
CHECKPOINT_TIMESTAMPS = struct.Struct(">qqq")
CHECKPOINT_TIMESTAMPS_POS = 0
CHECKPOINT_EXTENSION = struct.Struct(">IIqqq")
CHECKPOINT_EXTENSION_POS = 64
CHECKPOINT_CRC = struct.Struct(">I")
CHECKPOINT_CRC_POS = 96
CHECKPOINT_MAGIC = 0x524D5143
CHECKPOINT_VERSION = 1


@dataclasses.dataclass
class CheckpointData:
    physic_msg_timestamp_ms: int = 0
    logics_msg_timestamp_ms: int = 0
    index_msg_timestamp_ms: int = 0
    commitlog_flush_pos: int = 0
    cq_dispatch_pos: int = 0
    index_dispatch_pos: int = 0


def encode_checkpoint(data: CheckpointData) -> bytes:
    """The 4096-byte file content for `data`."""
    buf = bytearray(CHECKPOINT_FILE_SIZE)
    CHECKPOINT_TIMESTAMPS.pack_into(buf, CHECKPOINT_TIMESTAMPS_POS, data.physic_msg_timestamp_ms,
                                    data.logics_msg_timestamp_ms, data.index_msg_timestamp_ms)
    CHECKPOINT_EXTENSION.pack_into(buf, CHECKPOINT_EXTENSION_POS, CHECKPOINT_MAGIC, CHECKPOINT_VERSION,
                                   data.commitlog_flush_pos, data.cq_dispatch_pos, data.index_dispatch_pos)
    crc = zlib.crc32(buf[CHECKPOINT_EXTENSION_POS:CHECKPOINT_CRC_POS])
    CHECKPOINT_CRC.pack_into(buf, CHECKPOINT_CRC_POS, crc)
    return bytes(buf)


def decode_checkpoint(raw: bytes, path: str = "") -> CheckpointData:
    """Inverse of `encode_checkpoint`; raises CorruptFileError naming the bad field."""
    if len(raw) < CHECKPOINT_CRC_POS + CHECKPOINT_CRC.size:
        raise CorruptFileError(path, 0, "file length", CHECKPOINT_FILE_SIZE, len(raw))
    timestamps = CHECKPOINT_TIMESTAMPS.unpack_from(raw, CHECKPOINT_TIMESTAMPS_POS)
    magic, version, *positions = CHECKPOINT_EXTENSION.unpack_from(raw, CHECKPOINT_EXTENSION_POS)
    (crc,) = CHECKPOINT_CRC.unpack_from(raw, CHECKPOINT_CRC_POS)
    if magic == 0 and version == 0 and crc == 0 and not any(positions):
        return CheckpointData(*timestamps)  # a RocketMQ checkpoint without the rmqd extension
    if magic != CHECKPOINT_MAGIC:
        expected = f"{CHECKPOINT_MAGIC:#x}"
        raise CorruptFileError(path, CHECKPOINT_EXTENSION_POS, "magic", expected, f"{magic:#x}")
    if version != CHECKPOINT_VERSION:
        raise CorruptFileError(path, CHECKPOINT_EXTENSION_POS + 4, "version", CHECKPOINT_VERSION, version)
    actual_crc = zlib.crc32(raw[CHECKPOINT_EXTENSION_POS:CHECKPOINT_CRC_POS])
    if crc != actual_crc:
        raise CorruptFileError(path, CHECKPOINT_CRC_POS, "crc32", f"{actual_crc:#x}", f"{crc:#x}")
    return CheckpointData(*timestamps, *positions)


class Checkpoint:
    """The checkpoint file of one store."""

    def __init__(self, path: str) -> None:
        self.path = path

    def load(self) -> CheckpointData:
        """The stored positions; all zero if the file does not exist. Raises CorruptFileError."""
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return CheckpointData()
        return decode_checkpoint(raw, self.path)

    def store(self, data: CheckpointData) -> None:
        """Replace the checkpoint atomically and durably (tmp, fsync, rename, fsync dir)."""
        tmp = self.path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, encode_checkpoint(data))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        fsync_dir(os.path.dirname(self.path) or ".")
