"""Golden files: checked-in bytes of each store format decode to the expected values and re-encode
to the same bytes. The files are built field by field from the RocketMQ layouts by
tests/golden/make_store_golden.py (independently of rmqd's encoders); each .json names its source.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib

from rmqd.store import record as r
from rmqd.store.checkpoint import CheckpointData, decode_checkpoint, encode_checkpoint
from rmqd.store.consume_queue import CQ_UNIT
from rmqd.store.index_file import (
    INDEX_ENTRY,
    INDEX_SLOT,
    IndexFile,
    decode_index_header,
    index_file_size,
    index_key_hash,
)

GOLDEN = pathlib.Path(__file__).resolve().parents[2] / "golden"


def _golden(name: str) -> tuple[bytes, dict]:
    return (GOLDEN / f"{name}.bin").read_bytes(), json.loads((GOLDEN / f"{name}.json").read_text())


def test_golden_commitlog_record_decodes_to_the_expected_fields_and_re_encodes_identically():
    raw, exp = _golden("commitlog_record_v1")
    rec = r.decode_record(raw, 0)
    assert rec._replace(born_host=r.decode_host(rec.born_host), store_host=r.decode_host(rec.store_host)) == (
        exp["total_size"], exp["magic"], exp["body_crc"], exp["queue_id"], exp["flag"], exp["queue_offset"],
        exp["phy_offset"], exp["sys_flag"], exp["born_timestamp_ms"], tuple(exp["born_host"]),
        exp["store_timestamp_ms"], tuple(exp["store_host"]), exp["reconsume_times"],
        exp["prepared_tx_offset"],
        exp["body"].encode(), exp["topic"], exp["properties"])
    assert r.offset_msg_id(rec.store_host, rec.phy_offset) == exp["offset_msg_id"]
    buf = bytearray(len(raw))
    size = r.encode_record(
        buf, 0, topic=rec.topic.encode(), queue_id=rec.queue_id, body=rec.body,
        properties=r.encode_properties(rec.properties), flag=rec.flag, sys_flag=rec.sys_flag,
        born_timestamp_ms=rec.born_timestamp_ms, born_host=r.encode_host(*exp["born_host"]),
        store_host=r.encode_host(*exp["store_host"]), reconsume_times=rec.reconsume_times,
        prepared_tx_offset=rec.prepared_tx_offset, queue_offset=rec.queue_offset, phy_offset=rec.phy_offset,
        store_timestamp_ms=rec.store_timestamp_ms)
    assert size == len(raw) and bytes(buf) == raw


def test_golden_blank_record_decodes_and_re_encodes_identically():
    raw, exp = _golden("blank_record")
    assert r.peek_size_magic(raw, 0) == (exp["total_size"], exp["magic"]) and exp["magic"] == r.BLANK_MAGIC
    buf = bytearray(8)
    r.encode_blank(buf, 0, exp["total_size"])
    assert bytes(buf) == raw


def test_golden_consumequeue_unit_decodes_and_re_encodes_identically():
    raw, exp = _golden("consumequeue_unit")
    assert CQ_UNIT.unpack(raw) == (exp["phy_offset"], exp["size"], exp["tags_hash"])
    assert r.tags_hash(exp["tags"]) == exp["tags_hash"]
    assert CQ_UNIT.pack(exp["phy_offset"], exp["size"], r.tags_hash(exp["tags"])) == raw


def test_golden_checkpoint_decodes_and_re_encodes_identically():
    raw, exp = _golden("checkpoint")
    data = decode_checkpoint(raw, "golden")
    assert data == CheckpointData(**{k: v for k, v in exp.items() if not k.startswith("_")})
    assert encode_checkpoint(data) == raw


def test_golden_index_file_decodes_and_the_same_puts_write_the_same_bytes(tmp_path):
    raw, exp = _golden("index_file_small")
    slots, count = exp["max_hash_slots"], exp["max_index_count"]
    assert len(raw) == index_file_size(slots, count)
    assert dataclasses.asdict(decode_index_header(raw)) == exp["header"]
    assert [INDEX_SLOT.unpack_from(raw, 40 + 4 * i)[0] for i in range(slots)] == exp["slots"]
    for i, entry in enumerate(exp["entries"], start=1):
        fields = INDEX_ENTRY.unpack_from(raw, 40 + 4 * slots + 20 * i)
        assert fields == (entry["key_hash"], entry["phy_offset"], entry["time_diff_s"], entry["prev_index"])
        assert index_key_hash(entry["key"]) == entry["key_hash"]
    index_file = IndexFile.create(str(tmp_path / "20240101000000000"), slots, count)
    for key, phy_offset, store_ms in exp["puts"]:
        assert index_file.put_key(key, phy_offset, store_ms)
    assert bytes(index_file.mapped.mv) == raw
