"""CommitLog record codec: sizes, round-trip, strict decoding, Java hash, message ids."""
from __future__ import annotations

import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rmqd.errors import CorruptRecordError
from rmqd.protocol.codec import batch_spans, encode_batch
from rmqd.store import record as r

HOST = r.encode_host("192.168.0.7", 10911)


def _encode(buf, file_pos=0, **overrides) -> int:
    fields = dict(
        topic=b"TopicTest", queue_id=2, body=b"hello world", properties=r.encode_properties({"TAGS": "TagA"}),
        flag=7, sys_flag=r.SysFlag.TRANSACTION_COMMIT, born_timestamp_ms=1_700_000_000_123, born_host=HOST,
        store_host=HOST, reconsume_times=1, prepared_tx_offset=99, queue_offset=5, phy_offset=1234,
        store_timestamp_ms=1_700_000_000_456,
    )
    fields.update(overrides)
    return r.encode_record(buf, file_pos, **fields)


def test_fixed_head_struct_is_88_bytes_and_fixed_record_size_is_91():
    assert r.RECORD_HEAD.size == 88 == r.BODY_POS
    assert r.RECORD_FIXED_SIZE == 91
    assert r.BLANK_RECORD.size == r.BLANK_RECORD_SIZE == 8
    assert r.record_size(0, 0, 0) == 91


def test_field_positions_match_the_documented_layout():
    buf = bytearray(256)
    _encode(buf)
    assert r.RECORD_HEAD.unpack_from(buf, 0)[0] == int.from_bytes(buf[0:4], "big")
    assert buf[r.MAGIC_POS:r.MAGIC_POS + 4] == bytes.fromhex("daa320a7")
    assert int.from_bytes(buf[r.QUEUEID_POS:r.QUEUEID_POS + 4], "big") == 2
    assert int.from_bytes(buf[r.QUEUEOFFSET_POS:r.QUEUEOFFSET_POS + 8], "big") == 5
    assert int.from_bytes(buf[r.PHYSICALOFFSET_POS:r.PHYSICALOFFSET_POS + 8], "big") == 1234
    assert int.from_bytes(buf[r.STORETIMESTAMP_POS:r.STORETIMESTAMP_POS + 8], "big") == 1_700_000_000_456
    assert buf[r.BORNHOST_POS:r.BORNHOST_POS + 8] == HOST == buf[r.STOREHOST_POS:r.STOREHOST_POS + 8]
    assert int.from_bytes(buf[r.PREPAREDTX_POS:r.PREPAREDTX_POS + 8], "big") == 99
    assert buf[r.BODY_POS:r.BODY_POS + 11] == b"hello world"


def test_encoded_record_decodes_to_the_same_fields():
    buf = bytearray(300)
    size = _encode(buf, 17)
    rec = r.decode_record(buf, 17)
    assert size == rec.total_size == r.record_size(11, 9, len(r.encode_properties({"TAGS": "TagA"})))
    assert (rec.topic, rec.queue_id, rec.body) == ("TopicTest", 2, b"hello world")
    assert rec.properties == {"TAGS": "TagA"}
    assert (rec.flag, rec.sys_flag, rec.reconsume_times, rec.prepared_tx_offset) == (7, 8, 1, 99)
    assert (rec.queue_offset, rec.phy_offset) == (5, 1234)
    assert rec.born_timestamp_ms == 1_700_000_000_123 and rec.store_timestamp_ms == 1_700_000_000_456
    assert rec.body_crc == zlib.crc32(b"hello world") & 0x7FFFFFFF
    assert rec.magic == r.MESSAGE_MAGIC_V1


@given(
    body=st.binary(max_size=300),
    topic=st.from_regex(r"[%|a-zA-Z0-9_-]{1,127}", fullmatch=True),
    props=st.dictionaries(st.text("abcXYZ_", min_size=1, max_size=8), st.text(max_size=20).filter(
        lambda v: "\x01" not in v and "\x02" not in v), max_size=4),
    queue_id=st.integers(0, 2**31 - 1),
    queue_offset=st.integers(0, 2**62),
)
def test_any_record_round_trips_through_a_memoryview(body, topic, props, queue_id, queue_offset):
    buf = memoryview(bytearray(1024))
    size = _encode(buf, 3, body=body, topic=topic.encode(), properties=r.encode_properties(props),
                   queue_id=queue_id, queue_offset=queue_offset)
    rec = r.decode_record(buf, 3, limit=3 + size)
    assert (rec.body, rec.topic, rec.properties, rec.queue_id, rec.queue_offset) == (
        body, topic, props, queue_id, queue_offset)


def test_a_topic_longer_than_127_bytes_uses_the_v2_magic_with_a_two_byte_length():
    buf = bytearray(600)
    size = _encode(buf, topic=b"T" * 200)
    assert size == r.record_size(11, 200, 10) == 92 + 11 + 200 + 10
    rec = r.decode_record(buf, 0)
    assert rec.magic == r.MESSAGE_MAGIC_V2 and rec.topic == "T" * 200


def test_patch_stored_rewrites_only_the_three_writer_fields():
    buf = bytearray(200)
    size = _encode(buf, queue_offset=0, phy_offset=0, store_timestamp_ms=0)
    before = bytes(buf)
    r.patch_stored(buf, 0, 77, 88, 99)
    rec = r.decode_record(buf, 0)
    assert (rec.queue_offset, rec.phy_offset, rec.store_timestamp_ms) == (77, 88, 99)
    changed = [i for i in range(size) if buf[i] != before[i]]
    assert all(20 <= i < 36 or 56 <= i < 64 for i in changed)


def test_blank_record_carries_remaining_bytes_and_blank_magic():
    buf = bytearray(16)
    r.encode_blank(buf, 4, 12)
    assert bytes(buf[4:12]) == bytes.fromhex("0000000ccbd43194")
    assert r.peek_size_magic(buf, 4) == (12, r.BLANK_MAGIC)


@pytest.mark.parametrize(("pos", "value", "field"), [
    (4, b"\x00\x00\x00\x00", "MAGICCODE"),
    (0, (10).to_bytes(4, "big"), "TOTALSIZE"),
    (0, (5000).to_bytes(4, "big"), "TOTALSIZE"),
    (84, (9999).to_bytes(4, "big"), "BODYLENGTH"),
    (84, (0xFFFFFFFF).to_bytes(4, "big"), "BODYLENGTH"),
    (8, (1).to_bytes(4, "big"), "BODYCRC"),
    (36, (0x10).to_bytes(4, "big"), "SYSFLAG"),
])
def test_decode_rejects_a_damaged_field_by_name(pos, value, field):
    buf = bytearray(400)
    _encode(buf)
    buf[pos:pos + len(value)] = value
    with pytest.raises(CorruptRecordError) as err:
        r.decode_record(buf, 0)
    assert err.value.field == field and err.value.file_pos == 0


def test_decode_rejects_inconsistent_topic_and_properties_lengths():
    buf = bytearray(400)
    size = _encode(buf)
    buf[88 + 11] = 100  # topic length runs past the record
    with pytest.raises(CorruptRecordError, match="TOPICLENGTH"):
        r.decode_record(buf, 0)
    _encode(buf)
    buf[size - 12:size - 10] = (3).to_bytes(2, "big")  # properties length too short
    with pytest.raises(CorruptRecordError, match="PROPERTIESLENGTH"):
        r.decode_record(buf, 0)


def test_decode_rejects_a_record_past_the_limit_and_can_skip_the_crc():
    buf = bytearray(400)
    size = _encode(buf)
    with pytest.raises(CorruptRecordError, match="TOTALSIZE"):
        r.decode_record(buf, 0, limit=size - 1)
    buf[8:12] = b"\x00\x00\x00\x01"
    assert r.decode_record(buf, 0, verify_crc=False).body == b"hello world"


@pytest.mark.parametrize(("text", "expected"), [
    ("", 0),
    ("a", 97),
    ("hello", 99162322),
    ("TagA", 2598919),  # 84*31^3 + 97*31^2 + 103*31 + 65
    ("polygenelubricants", -2147483648),  # a well-known string whose hashCode is Integer.MIN_VALUE
    ("\u00e9", 0xE9),  # BMP: one code unit
    ("\U0001F600", 0xD83D * 31 + 0xDE00),  # non-BMP: surrogate pair D83D DE00 = 1772899
    ("a\U0001F600b", ((97 * 31 + 0xD83D) * 31 + 0xDE00) * 31 + 98),
])
def test_java_string_hash_matches_java_string_hashcode(text, expected):
    assert r.java_string_hash(text) == expected


def test_java_string_hash_wraps_like_a_signed_32_bit_int():
    value = 0
    for ch in "TopicTest#order-123456789":
        value = (value * 31 + ord(ch)) % 2**32
    expected = value - 2**32 if value >= 2**31 else value
    assert r.java_string_hash("TopicTest#order-123456789") == expected
    assert -(2**31) <= expected < 2**31


def _reference_java_hash(text: str) -> int:
    value = 0
    for unit in text.encode("ascii"):
        value = (value * 31 + unit) % 2**32
    return value - 2**32 if value >= 2**31 else value


@given(st.text(alphabet=st.characters(max_codepoint=127), max_size=1100))
def test_java_string_hash_fast_path_agrees_with_the_loop_for_any_ascii_string(text):
    assert r.java_string_hash(text) == _reference_java_hash(text)


def test_java_string_hash_of_long_strings_takes_the_loop_and_agrees():
    text = "k" * 5000  # past the fast path (int() of > 4300 digits is refused by CPython)
    assert r.java_string_hash(text) == _reference_java_hash(text)


def test_tags_hash_is_zero_without_tags():
    assert r.tags_hash(None) == 0 and r.tags_hash("") == 0 and r.tags_hash("TagA") == 2598919


def test_properties_round_trip_and_ignore_pairs_without_separator():
    props = {"TAGS": "TagA", "KEYS": "k1 k2", "UNIQ_KEY": "ABC", "ünï": "çödé"}
    raw = r.encode_properties(props)
    assert raw.startswith(b"TAGS\x01TagA\x02") and raw.endswith(b"\x02")
    assert r.decode_properties(raw) == props
    assert r.decode_properties(b"A\x011\x02junk\x02") == {"A": "1"}


def test_hosts_encode_ipv4_and_port_and_reject_ipv6():
    assert r.encode_host("127.0.0.1", 10911) == bytes.fromhex("7f0000010000" + "2a9f")
    assert r.decode_host(r.encode_host("10.1.2.3", 65535)) == ("10.1.2.3", 65535)
    with pytest.raises(ValueError):
        r.encode_host("::1", 1)


@pytest.mark.parametrize("phys", [[], [0], [0x1234], [0, 0xABCDEF, 1 << 40, (1 << 63) - 1],
                                  list(range(7, 7 + 64 * 1100, 1100))])
def test_offset_msg_ids_of_a_batch_join_each_ones_id(phys):
    host = r.encode_host("10.1.2.3", 10911)
    assert r.offset_msg_ids(host, phys) == ",".join(r.offset_msg_id(host, phy) for phy in phys)


def test_offset_msg_id_is_upper_hex_of_host_and_phy_offset():
    msg_id = r.offset_msg_id(r.encode_host("127.0.0.1", 10911), 0x1234)
    assert msg_id == "7F00000100002A9F0000000000001234"
    assert r.decode_offset_msg_id(msg_id) == (r.encode_host("127.0.0.1", 10911), 0x1234)
    with pytest.raises(ValueError):
        r.decode_offset_msg_id("ABC")


def test_encode_refuses_oversized_properties():
    with pytest.raises(ValueError, match="properties"):
        _encode(bytearray(40000), properties=b"x" * 32768)


@given(
    topic=st.one_of(st.binary(min_size=1, max_size=127), st.binary(min_size=128, max_size=300)),
    messages=st.lists(
        st.tuples(st.integers(-2**31, 2**31 - 1), st.binary(min_size=1, max_size=300),
                  st.binary(max_size=120), st.integers(0, 2**31 - 1), st.integers(0, 16)),
        min_size=1, max_size=8),
)
def test_encode_records_writes_the_same_bytes_as_encode_record_per_message(topic, messages):
    # Given the front's batch encoder and the one-record encoder over the same messages
    born_host, store_host = r.encode_host("10.0.0.1", 4321), r.encode_host("127.0.0.1", 10911)
    size = sum(r.record_size(len(body), len(topic), len(props)) for _f, body, props, _s, _c in messages)
    batch, single = bytearray(size + 16), bytearray(size + 16)
    # When both write the records back to back
    end = r.encode_records(memoryview(batch), 8, topic, 5, messages, 1_700_000_000_123, born_host, store_host)
    pos = 8
    for flag, body, props, sys_flag, reconsume in messages:
        pos += r.encode_record(single, pos, topic=topic, queue_id=5, body=body, properties=props, flag=flag,
                               sys_flag=sys_flag, born_timestamp_ms=1_700_000_000_123, born_host=born_host,
                               store_host=store_host, reconsume_times=reconsume)
    # Then the bytes and the end position are identical
    assert end == pos == size + 8
    assert batch == single


@given(
    topic=st.one_of(st.binary(min_size=1, max_size=127), st.binary(min_size=128, max_size=300)),
    items=st.lists(st.tuples(st.integers(-2**31, 2**31 - 1), st.binary(min_size=1, max_size=300),
                             st.binary(max_size=120)), min_size=1, max_size=8),
    sys_flag=st.integers(0, 2**31 - 1), reconsume=st.integers(0, 16),
)
def test_encode_record_spans_writes_the_same_bytes_as_encode_records(topic, items, sys_flag, reconsume):
    # Given a batch request body and where its messages lie in it (the front's batch path)
    source = encode_batch(items)
    spans = batch_spans(source)
    born_host, store_host = r.encode_host("10.0.0.1", 4321), r.encode_host("127.0.0.1", 10911)
    size = sum(r.record_size(len(body), len(topic), len(props)) for _f, body, props in items)
    from_spans, from_messages = bytearray(size + 16), bytearray(size + 16)
    # When both encoders write the records
    end = r.encode_record_spans(memoryview(from_spans), 8, topic, 5, memoryview(source), spans, sys_flag,
                                reconsume, 1_700_000_000_123, born_host, store_host)
    messages = [(flag, body, props, sys_flag, reconsume) for flag, body, props in items]
    end2 = r.encode_records(memoryview(from_messages), 8, topic, 5, messages, 1_700_000_000_123, born_host,
                            store_host)
    # Then the bytes and the end position are identical
    assert end == end2 == size + 8
    assert from_spans == from_messages


def test_encode_records_refuses_properties_over_32767_bytes():
    with pytest.raises(ValueError, match="properties are 32768 bytes"):
        r.encode_records(bytearray(40000), 0, b"T", 0, [(0, b"x", b"p" * 32768, 0, 0)], 0,
                         bytes(8), bytes(8))
