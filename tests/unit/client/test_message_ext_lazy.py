"""The lazy MessageExt of a pull (decode_message_exts) against the eager decode, field by field."""
from __future__ import annotations

import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rmqd.client._consumer_core import decode_messages
from rmqd.errors import ProtocolError
from rmqd.message import MESSAGE_EXT_FIELDS, MessageExt, decode_message_exts
from rmqd.store.record import (
    SysFlag,
    decode_record,
    encode_host,
    encode_properties,
    encode_record,
    record_size,
)


def encode(body: bytes, properties: bytes, *, topic: bytes = b"Orders", sys_flag: int = 0,
           born: tuple[str, int] = ("10.0.0.1", 5555), store: tuple[str, int] = ("10.0.0.2", 10911),
           queue_offset: int = 7, phy_offset: int = 4096, reconsume_times: int = 0) -> bytes:
    buf = bytearray(record_size(len(body), len(topic), len(properties)))
    encode_record(buf, 0, topic=topic, queue_id=3, body=body, properties=properties, sys_flag=sys_flag,
                  born_timestamp_ms=1_700_000_000_123, born_host=encode_host(*born),
                  store_host=encode_host(*store), queue_offset=queue_offset, phy_offset=phy_offset,
                  store_timestamp_ms=1_700_000_000_456, reconsume_times=reconsume_times)
    return bytes(buf)


def eager(buf: bytes, broker_name: str = "broker-a") -> list[MessageExt]:
    """The reference: decode_record + MessageExt.from_record per record."""
    messages, pos = [], 0
    while pos < len(buf):
        record = decode_record(buf, pos, verify_crc=False)
        messages.append(MessageExt.from_record(record, broker_name))
        pos += record.total_size
    return messages


def assert_same(lazy: MessageExt, reference: MessageExt) -> None:
    for name in MESSAGE_EXT_FIELDS:
        assert getattr(lazy, name) == getattr(reference, name), name
    assert lazy.user_properties == reference.user_properties


UNIQ = encode_properties({"WAIT": "true", "UNIQ_KEY": "AC11000100002A9F0000000012345678"})
MIXED_RECORDS = {
    "producer defaults": encode(b"b" * 1024, UNIQ),
    "no properties": encode(b"plain", b""),
    "tags and several keys": encode(b"k", encode_properties(
        {"TAGS": "TagA", "KEYS": "order-1 order-2  order-3", "UNIQ_KEY": "U1", "user": "v"})),
    "non-ASCII property values": encode("zahlung: 10 €".encode(), encode_properties(
        {"TAGS": "Bestellung-Ü", "KEYS": "clé 鍵", "note": "größe ✓", "UNIQ_KEY": "U2"})),
    "compressed body": encode(zlib.compress(b"z" * 5000), UNIQ, sys_flag=SysFlag.COMPRESSED),
    "flagged compressed, not zlib": encode(b"not zlib", b"", sys_flag=SysFlag.COMPRESSED),
    "high IPv4 octets and ports": encode(b"h", UNIQ, born=("255.254.0.1", 65535),
                                         store=("192.168.200.10", 1)),
    "retried message": encode(b"r", encode_properties({"RETRY_TOPIC": "Orders", "UNIQ_KEY": "U3"}),
                              topic=b"%RETRY%cg", reconsume_times=3),
    "2-byte topic length (V2)": encode(b"v2", UNIQ, topic=b"T" * 200),
    "big offsets": encode(b"o", b"", queue_offset=2**40, phy_offset=2**62 + 17),
}


@pytest.mark.parametrize("name", MIXED_RECORDS)
def test_a_lazily_decoded_message_equals_the_eager_decode_on_every_attribute(name):
    buf = MIXED_RECORDS[name]
    [lazy], [reference] = decode_message_exts(buf, "broker-a"), eager(buf)
    assert_same(lazy, reference)
    assert lazy == reference and repr(lazy) == repr(reference)


def test_a_batch_of_records_back_to_back_decodes_to_the_same_messages_in_order():
    # Given every record above back to back, as a pull response holds them (batch sends are stored so)
    buf = b"".join(MIXED_RECORDS.values())
    lazy, reference = decode_message_exts(memoryview(buf), "broker-a"), eager(buf)
    assert len(lazy) == len(MIXED_RECORDS)
    for one, other in zip(lazy, reference):
        assert_same(one, other)


def test_each_lazy_field_alone_gives_the_eager_value():
    # Each attribute read first, on a fresh message, so no other field's decoding helped it.
    buf = MIXED_RECORDS["non-ASCII property values"]
    [reference] = eager(buf)
    for name in MESSAGE_EXT_FIELDS:
        [fresh] = decode_message_exts(buf, "broker-a")
        assert getattr(fresh, name) == getattr(reference, name), name


@pytest.mark.parametrize(("raw", "names"), [
    (b"A\x011\x02A\x012\x02A\x013\x02", ["A"]),  # a repeated name: the last one wins, as in the dict
    (b"junk\x02B\x01x\x01y\x02", ["B", "junk"]),  # a pair without \x01 is skipped; a value may hold \x01
    (b"X\x01TAGS\x01v\x02TAGS\x01real", ["TAGS", "X"]),  # a name inside a value is not a name
    (b"UNIQ_KEY\x01first\x02", ["UNIQ_KEY", "UNIQ", "KEY", ""]),
], ids=["repeated name", "pair without separator", "name inside a value", "prefixes of a name"])
def test_get_property_reads_one_property_exactly_as_the_properties_dict_has_it(raw, names):
    [lazy] = decode_message_exts(encode(b"p", raw))
    [reference] = eager(encode(b"p", raw))
    for name in [*names, "absent"]:
        assert lazy.get_property(name) == reference.properties.get(name), name
        assert lazy.get_property(name, "dflt") == reference.properties.get(name, "dflt"), name


def test_fields_derived_from_properties_are_fixed_when_the_dict_is_first_read():
    [lazy] = decode_message_exts(MIXED_RECORDS["tags and several keys"])
    [reference] = eager(MIXED_RECORDS["tags and several keys"])
    for message in (lazy, reference):
        message.properties["TAGS"] = "changed"
        message.properties["KEYS"] = "changed"
    assert (lazy.tags, lazy.keys, lazy.msg_id) == (reference.tags, reference.keys, reference.msg_id)
    assert lazy.get_property("TAGS") == "changed"


def test_every_field_can_be_assigned_like_on_the_dataclass():
    [lazy] = decode_message_exts(MIXED_RECORDS["producer defaults"])
    lazy.topic = "Other"
    lazy.reconsume_times += 1
    lazy.properties = {"TAGS": "new"}
    assert (lazy.topic, lazy.reconsume_times, lazy.properties) == ("Other", 1, {"TAGS": "new"})
    assert lazy.tags is None  # fixed before the dict was replaced, as with the eager dataclass
    with pytest.raises(TypeError):
        hash(lazy)


@st.composite
def records(draw) -> bytes:
    text = st.text(st.characters(blacklist_characters="\x00\x01\x02", blacklist_categories=("Cs",)),
                   max_size=12)
    properties = draw(st.dictionaries(text.filter(bool), text, max_size=5))
    for name, value in (("TAGS", draw(text)), ("KEYS", draw(text)), ("UNIQ_KEY", draw(text))):
        if draw(st.booleans()):
            properties[name] = value
    body = draw(st.binary(min_size=1, max_size=64))
    compressed = draw(st.booleans())
    ip = ".".join(str(draw(st.integers(0, 255))) for _ in range(4))
    return encode(zlib.compress(body) if compressed else body, encode_properties(properties),
                  sys_flag=SysFlag.COMPRESSED if compressed else 0, born=(ip, draw(st.integers(0, 65535))),
                  store=(ip, draw(st.integers(0, 65535))), queue_offset=draw(st.integers(0, 2**62)),
                  phy_offset=draw(st.integers(0, 2**62)), reconsume_times=draw(st.integers(0, 16)))


@settings(max_examples=150, deadline=None)
@given(st.lists(records(), min_size=1, max_size=4))
def test_any_records_decode_lazily_to_what_the_eager_decode_gives(batch):
    buf = b"".join(batch)
    lazy, reference = decode_message_exts(buf, "b"), eager(buf, "b")
    assert len(lazy) == len(reference)
    for one, other in zip(lazy, reference):
        assert_same(one, other)


def _damaged(offset: int, value: bytes, base: bytes = MIXED_RECORDS["producer defaults"]) -> bytes:
    return base[:offset] + value + base[offset + len(value):]


@pytest.mark.parametrize(("name", "buf"), [
    ("bad magic", _damaged(4, b"\x00\x00\x00\x00")),
    ("total size past the end", _damaged(0, (10_000).to_bytes(4, "big"))),
    ("truncated", MIXED_RECORDS["producer defaults"][:-5]),
    ("shorter than a head", MIXED_RECORDS["producer defaults"][:40]),
    ("IPv6 host flag", _damaged(36, SysFlag.BORNHOST_V6.to_bytes(4, "big"))),
    ("body length past the record", _damaged(84, (5000).to_bytes(4, "big"))),
    ("properties ending in a zero byte", MIXED_RECORDS["producer defaults"][:-1] + b"\x00"),
    ("topic with a zero byte", encode(b"t", UNIQ, topic=b"Ord\x00rs")),
    ("properties that are not UTF-8", encode(b"u", b"name\x01\xff\xfe\x02")),
], ids=lambda value: value if isinstance(value, str) else "")
def test_a_damaged_record_fails_the_pull_as_the_eager_decode_does(name, buf):
    with pytest.raises(Exception):  # noqa: B017 - the reference raises CorruptRecordError or UnicodeDecodeError
        eager(buf)
    with pytest.raises(ProtocolError, match="undecodable record"):
        decode_messages(buf, "broker-a")
