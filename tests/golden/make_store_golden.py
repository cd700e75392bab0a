"""Regenerate the store golden files (run by hand: python tests/golden/make_store_golden.py).

The bytes are assembled field by field with plain struct.pack, straight from the RocketMQ layouts
named below, NOT with rmqd's encoders, so the golden test compares two independent writings of the
same format. Each .bin has a .json with the expected decoded values and the layout's source.
"""
from __future__ import annotations

import json
import pathlib
import struct
import zlib

HERE = pathlib.Path(__file__).parent


def _java_hash(s: str) -> int:
    h = 0
    raw = s.encode("utf-16-be")
    for i in range(0, len(raw), 2):
        h = (31 * h + int.from_bytes(raw[i:i + 2], "big")) % 2**32
    return h - 2**32 if h >= 2**31 else h


def commitlog_record() -> tuple[bytes, dict]:
    body = b"Hello RocketMQ"
    topic = b"TopicTest"
    props = b"TAGS\x01TagA\x02KEYS\x01order-1 order-2\x02UNIQ_KEY\x017F000001A1B218B4AAC2000000000000\x02"
    born_host = bytes([127, 0, 0, 1]) + struct.pack(">i", 54321)
    store_host = bytes([192, 168, 1, 10]) + struct.pack(">i", 10911)
    fixed = 4 + 4 + 4 + 4 + 4 + 8 + 8 + 4 + 8 + 8 + 8 + 8 + 4 + 8 + 4 + 1 + 2  # = 91
    total = fixed + len(body) + len(topic) + len(props)
    crc = zlib.crc32(body) & 0x7FFFFFFF
    raw = b"".join([
        struct.pack(">i", total),               # TOTALSIZE
        struct.pack(">I", 0xDAA320A7),          # MAGICCODE (MESSAGE_MAGIC_CODE, V1)
        struct.pack(">i", crc),                 # BODYCRC = UtilAll.crc32(body)
        struct.pack(">i", 1),                   # QUEUEID
        struct.pack(">i", 0),                   # FLAG
        struct.pack(">q", 42),                  # QUEUEOFFSET
        struct.pack(">q", 131072),              # PHYSICALOFFSET
        struct.pack(">i", 0),                   # SYSFLAG
        struct.pack(">q", 1700000000123),       # BORNTIMESTAMP
        born_host,                              # BORNHOST
        struct.pack(">q", 1700000000456),       # STORETIMESTAMP
        store_host,                             # STOREHOSTADDRESS
        struct.pack(">i", 0),                   # RECONSUMETIMES
        struct.pack(">q", 0),                   # Prepared Transaction Offset
        struct.pack(">i", len(body)), body,     # BODY
        struct.pack(">b", len(topic)), topic,   # TOPIC
        struct.pack(">h", len(props)), props,   # PROPERTIES
    ])
    expected = {
        "_source": "RocketMQ 4.x CommitLog.DefaultAppendMessageCallback.doAppend / MessageDecoder.decode",
        "total_size": total, "magic": 0xDAA320A7, "body_crc": crc, "queue_id": 1, "flag": 0,
        "queue_offset": 42, "phy_offset": 131072, "sys_flag": 0, "born_timestamp_ms": 1700000000123,
        "born_host": ["127.0.0.1", 54321], "store_timestamp_ms": 1700000000456,
        "store_host": ["192.168.1.10", 10911], "reconsume_times": 0, "prepared_tx_offset": 0,
        "body": body.decode(), "topic": topic.decode(),
        "properties": {"TAGS": "TagA", "KEYS": "order-1 order-2",
                       "UNIQ_KEY": "7F000001A1B218B4AAC2000000000000"},
        "offset_msg_id": "C0A8010A00002A9F0000000000020000",
    }
    return raw, expected


def blank_record() -> tuple[bytes, dict]:
    raw = struct.pack(">iI", 1234, 0xCBD43194)
    return raw, {"_source": "RocketMQ CommitLog BLANK_MAGIC_CODE end-of-file record (TOTALSIZE, MAGICCODE)",
                 "total_size": 1234, "magic": 0xCBD43194}


def consumequeue_unit() -> tuple[bytes, dict]:
    tags_code = _java_hash("TagA")
    raw = struct.pack(">q", 131072) + struct.pack(">i", 178) + struct.pack(">q", tags_code)
    return raw, {"_source": "RocketMQ ConsumeQueue.putMessagePositionInfo: offset i64, size i32, "
                            "tagsCode i64",
                 "phy_offset": 131072, "size": 178, "tags_hash": tags_code, "tags": "TagA"}


def checkpoint() -> tuple[bytes, dict]:
    head = struct.pack(">qqq", 1700000000456, 1700000000400, 1700000000300)
    ext = struct.pack(">IIqqq", 0x524D5143, 1, 262144, 131250, 131072)
    raw = head + bytes(40) + ext + struct.pack(">I", zlib.crc32(ext))
    raw += bytes(4096 - len(raw))
    return raw, {"_source": "RocketMQ StoreCheckpoint (physicMsgTimestamp@0, logicsMsgTimestamp@8, "
                            "indexMsgTimestamp@16) + rmqd extension@64 (see rmqd/store/checkpoint.py)",
                 "physic_msg_timestamp_ms": 1700000000456, "logics_msg_timestamp_ms": 1700000000400,
                 "index_msg_timestamp_ms": 1700000000300, "commitlog_flush_pos": 262144,
                 "cq_dispatch_pos": 131250, "index_dispatch_pos": 131072}


def main() -> None:
    for name, make in [("commitlog_record_v1", commitlog_record), ("blank_record", blank_record),
                       ("consumequeue_unit", consumequeue_unit), ("checkpoint", checkpoint),
                       ("index_file_small", index_file_small)]:
        raw, expected = make()
        (HERE / f"{name}.bin").write_bytes(raw)
        (HERE / f"{name}.json").write_text(json.dumps(expected, indent=2) + "\n")


def index_file_small() -> tuple[bytes, dict]:
    """An IndexFile with 4 hash slots and room for 4 entries (entry 0 unused), holding 3 keys."""
    slots, count, begin_ms = 4, 4, 1700000000000
    puts = [("TopicTest#order-1", 1000, begin_ms), ("TopicTest#order-2", 2000, begin_ms + 2500),
            ("TopicTest#order-1", 3000, begin_ms + 61000)]
    slot_values = [0] * slots
    entries = []
    used_slots = 0
    for i, (key, phy, ms) in enumerate(puts, start=1):
        key_hash = abs(_java_hash(key))
        key_hash = 0 if key_hash >= 2**31 else key_hash
        slot = key_hash % slots
        prev = slot_values[slot]
        used_slots += prev == 0
        entries.append({"key_hash": key_hash, "phy_offset": phy, "time_diff_s": (ms - begin_ms) // 1000,
                        "prev_index": prev, "key": key, "slot": slot})
        slot_values[slot] = i
    header = {"begin_timestamp_ms": begin_ms, "end_timestamp_ms": puts[-1][2], "begin_phy_offset": 1000,
              "end_phy_offset": 3000, "hash_slot_count": used_slots, "index_count": len(puts) + 1}
    raw = struct.pack(">qqqqii", *header.values())
    raw += b"".join(struct.pack(">i", v) for v in slot_values)
    raw += bytes(20)  # entry 0 is never used
    raw += b"".join(struct.pack(">iqii", e["key_hash"], e["phy_offset"], e["time_diff_s"], e["prev_index"])
                    for e in entries)
    raw += bytes(40 + 4 * slots + 20 * count - len(raw))
    return raw, {"_source": "RocketMQ IndexHeader (40 bytes) + IndexFile hash slots (4 bytes) and entries "
                            "(keyHash i32, phyOffset i64, timeDiff i32 seconds, prevIndex i32)",
                 "max_hash_slots": slots, "max_index_count": count, "header": header,
                 "slots": slot_values, "entries": entries, "puts": puts}


if __name__ == "__main__":
    main()
