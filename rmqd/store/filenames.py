"""File names of the store: a file is named after the offset of its first byte, 20 digits.

Used by CommitLog files (phy_offset of the first byte) and ConsumeQueue files (byte offset of the
first unit, i.e. queue_offset * 20), as RocketMQ's UtilAll.offset2FileName. Pure functions.
"""
from __future__ import annotations

OFFSET_NAME_LENGTH = 20


def offset_to_name(offset: int) -> str:
    """20-digit zero-padded decimal name of the file starting at `offset` (>= 0)."""
    if offset < 0:
        raise ValueError(f"file start offset must be >= 0, got {offset}")
    return f"{offset:020d}"


def is_offset_name(name: str) -> bool:
    """True if `name` is exactly 20 decimal digits (temporary and other files are not)."""
    return len(name) == OFFSET_NAME_LENGTH and name.isdigit() and name.isascii()


def name_to_offset(name: str) -> int:
    """Inverse of `offset_to_name`; raises ValueError for anything but 20 digits."""
    if not is_offset_name(name):
        raise ValueError(f"not a 20-digit store file name: {name!r}")
    return int(name)
