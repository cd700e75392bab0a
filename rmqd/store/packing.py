"""Packing runs of fixed-layout records (ConsumeQueue units, IndexFile entries) with few struct calls.

`RunPacker(">qiq")` packs n consecutive items from a flat value list with one `pack_into` per up to
ITEMS_PER_CALL items, using one cached Struct per item count. Used by the dispatcher's batch path
(consume_queue.ConsumeQueue.put_units, index_file.IndexFile.put_hashes). Pure; an instance caches
Structs, so share it only within one thread (each store module keeps its own module-level one).
"""
from __future__ import annotations

import struct
from collections.abc import Sequence

ITEMS_PER_CALL = 256  # bounds the cached Structs (one per count up to this) and their argument lists


class RunPacker:
    """pack_into for runs of items of one big-endian layout, e.g. ">qiq"."""

    def __init__(self, item_format: str) -> None:
        if not item_format.startswith(">"):
            raise ValueError(f"item format {item_format!r} must be big-endian ('>...')")
        self._fields = item_format[1:]
        self.fields_per_item = len(struct.Struct(item_format).unpack(bytes(struct.calcsize(item_format))))
        self.item_size = struct.calcsize(item_format)
        self._packers: dict[int, struct.Struct] = {}

    def pack(self, buf, pos: int, values: Sequence[int], first: int, count: int) -> None:
        """Store items first..first+count-1 of the flat `values` at `pos` of `buf`."""
        fields = self.fields_per_item
        at = fields * first
        while count > 0:
            n = min(count, ITEMS_PER_CALL)
            packer = self._packers.get(n)
            if packer is None:
                packer = self._packers[n] = struct.Struct(">" + self._fields * n)
            packer.pack_into(buf, pos, *values[at:at + fields * n])
            pos += n * self.item_size
            at += fields * n
            count -= n
