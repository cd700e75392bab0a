"""Message validation rules and MessageExt built from CommitLog records."""
from __future__ import annotations

import zlib

import pytest

from rmqd.errors import MQClientError
from rmqd.message import Message, MessageExt, MessageQueue, validate_message
from rmqd.store.record import (
    SysFlag,
    decode_record,
    encode_host,
    encode_properties,
    encode_record,
    offset_msg_id,
    record_size,
)


def test_a_plain_message_is_valid():
    msg = Message("Orders", b"x", tags="A", keys=["k1", "k2"], properties={"a": "b"}, delay_level=3)
    validate_message(msg)


@pytest.mark.parametrize(
    ("msg", "message"),
    [
        (Message("", b"x"), "non-empty string"),
        (Message("a" * 128, b"x"), "the limit is 127"),
        (Message("bad topic", b"x"), "characters outside"),
        (Message("Orders/1", b"x"), "characters outside"),
        (Message("TBW102", b"x"), "reserved system topic"),
        (Message("SCHEDULE_TOPIC_XXXX", b"x"), "reserved system topic"),
        (Message("RMQ_SYS_TRANS_HALF_TOPIC", b"x"), "reserved system topic"),
        (Message("rmq_sys_anything", b"x"), "reserved system topic"),
        (Message("Orders", b""), "body is empty"),
        (Message("Orders", "text"), "body must be bytes"),
        (Message("Orders", b"x", tags="A || B"), "may not contain '||'"),
        (Message("Orders", b"x", tags=" "), "non-blank"),
        (Message("Orders", b"x", keys=["a b"]), "contain no space"),
        (Message("Orders", b"x", keys=[1]), "str or a list of str"),
        (Message("Orders", b"x", properties={"k": 1}), "must be str"),
        (Message("Orders", b"x", properties={"k\x01": "v"}), "may not contain"),
        (Message("Orders", b"x", properties={"UNIQ_KEY": "v"}), "reserved by the SDK"),
        (Message("Orders", b"x", properties={"big": "v" * 40000}), "limit is 32767"),
        (Message("Orders", b"x", delay_level=19), "delay_level must be 0..18"),
        (Message("Orders", b"x", delay_level=1, deliver_at_ms=5), "not both"),
        (Message("Orders", b"x", deliver_at_ms=-1), "positive"),
        (Message("Orders", b"x", flag=2**31), "32-bit"),
        ("not a message", "expected a Message"),
    ],
)
def test_each_rule_is_refused_with_a_message_naming_it(msg, message):
    with pytest.raises(MQClientError, match=message):
        validate_message(msg)


def test_body_over_max_message_size_is_refused():
    validate_message(Message("Orders", b"x" * 100), max_message_size=100)
    with pytest.raises(MQClientError, match="maxMessageSize is 100"):
        validate_message(Message("Orders", b"x" * 101), max_message_size=100)


def test_retry_and_dlq_topics_are_accepted():
    validate_message(Message("%RETRY%cg", b"x"))
    validate_message(Message("%DLQ%cg", b"x"))


def test_key_list_splits_strings_on_spaces():
    assert Message("T", b"x", keys="a b  c").key_list() == ["a", "b", "c"]
    assert Message("T", b"x").key_list() == []


def test_message_queues_order_by_topic_broker_and_queue_id():
    queues = [MessageQueue("B", "a", 0), MessageQueue("A", "b", 1), MessageQueue("A", "b", 0),
              MessageQueue("A", "a", 9)]
    assert sorted(queues) == [queues[3], queues[2], queues[1], queues[0]]


def record(body: bytes, sys_flag: int = 0, properties: dict[str, str] | None = None):
    props = encode_properties(properties or {})
    buf = bytearray(record_size(len(body), 6, len(props)))
    encode_record(buf, 0, topic=b"Orders", queue_id=3, body=body, properties=props, sys_flag=sys_flag,
                  born_timestamp_ms=1000, born_host=encode_host("10.0.0.1", 5555),
                  store_host=encode_host("10.0.0.2", 10911), queue_offset=7, phy_offset=4096,
                  store_timestamp_ms=2000, reconsume_times=1)
    return decode_record(buf, 0)


def test_message_ext_carries_the_stored_fields_and_the_unique_key_as_msg_id():
    props = {"TAGS": "A", "KEYS": "k1 k2", "UNIQ_KEY": "ABC", "user": "v"}
    ext = MessageExt.from_record(record(b"body", properties=props), "broker-a")
    assert (ext.topic, ext.body, ext.tags, ext.keys) == ("Orders", b"body", "A", ["k1", "k2"])
    assert ext.msg_id == "ABC"
    assert (ext.queue_id, ext.queue_offset, ext.commitlog_offset) == (3, 7, 4096)
    assert (ext.born_host, ext.store_host) == ("10.0.0.1:5555", "10.0.0.2:10911")
    assert (ext.born_timestamp_ms, ext.store_timestamp_ms, ext.reconsume_times) == (1000, 2000, 1)
    assert ext.offset_msg_id == offset_msg_id(encode_host("10.0.0.2", 10911), 4096)
    assert ext.user_properties == {"user": "v"} and ext.broker_name == "broker-a"


def test_message_ext_without_unique_key_uses_the_offset_msg_id():
    ext = MessageExt.from_record(record(b"body"))
    assert ext.msg_id == ext.offset_msg_id and ext.tags is None and ext.keys == []


def test_compressed_bodies_are_inflated():
    ext = MessageExt.from_record(record(zlib.compress(b"z" * 5000), sys_flag=SysFlag.COMPRESSED))
    assert ext.body == b"z" * 5000


def test_a_body_flagged_compressed_that_does_not_inflate_is_delivered_raw():
    ext = MessageExt.from_record(record(b"not zlib", sys_flag=SysFlag.COMPRESSED))
    assert ext.body == b"not zlib"
