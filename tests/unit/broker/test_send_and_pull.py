"""Send preparation (front) -> CommitLog append (writer) -> ConsumeQueue -> pull reading (front)."""

from __future__ import annotations

import pytest

from rmqd.broker import send as send_logic
from rmqd.broker.pull import GetStatus, MessageReader, tag_codes_of
from rmqd.protocol import codec
from rmqd.protocol.commands import ResponseCode
from rmqd.store import append_request as ar
from rmqd.store import record as rec
from rmqd.store.commit_log import CommitLog
from rmqd.store.consume_queue import ConsumeQueueStore

STORE_HOST = rec.encode_host("127.0.0.1", 10911)
FILE_SIZE = 64 * 1024


def _append(commit_log, cq_store, prepared, queue_offset):
    buf = bytearray(prepared.entry_size())
    send_logic.encode_into(memoryview(buf), 1, prepared, STORE_HOST)
    request = ar.decode_append_request(memoryview(buf))
    phys = commit_log.append_records(request.records, request.record_count, queue_offset, 1_700_000_000_000)
    for i, phy in enumerate(phys):
        record = commit_log.read_record(phy)
        cq_store.get(record.topic, record.queue_id).put(
            queue_offset + i, phy, record.total_size, rec.tags_hash(record.properties.get("TAGS"))
        )
    return phys


@pytest.fixture
def store(tmp_path):
    writer_log = CommitLog(str(tmp_path), FILE_SIZE, readonly=False)
    cq_store = ConsumeQueueStore(str(tmp_path), 20 * 1000, readonly=False)
    reader = MessageReader(
        CommitLog(str(tmp_path), FILE_SIZE, readonly=True),
        ConsumeQueueStore(str(tmp_path), 20 * 1000, readonly=True),
    )
    return writer_log, cq_store, reader


def _send_fields(tags: str, queue_id: int = 0) -> dict:
    props = rec.encode_properties({"TAGS": tags, "UNIQ_KEY": f"id-{tags}"}).decode()
    return {
        "topic": "Orders",
        "queueId": queue_id,
        "sysFlag": 0,
        "bornTimestamp": 1,
        "properties": props,
        "bornHost": "10.0.0.1:5555",
    }


def test_sent_messages_are_read_back_byte_identical_in_queue_order(store):
    # Given three messages appended to queue 0 across a file roll
    writer_log, cq_store, reader = store
    bodies = [b"a" * 10, b"b" * 30_000, b"c" * 40_000]
    for offset, body in enumerate(bodies):
        prepared = send_logic.prepare_send(
            _send_fields("A"), memoryview(body), batch=False, write_queue_nums=4, max_message_size=1 << 20
        )
        _append(writer_log, cq_store, prepared, offset)
    # When the reader pulls from offset 0
    result = reader.get_messages("Orders", 0, 0, 32, 1 << 20, None, writer_log.write_pos)
    # Then it finds all three, in order, byte-identical, with their properties
    assert result.status is GetStatus.FOUND and result.next_offset == 3
    decoded = [rec.decode_record(view, 0) for view in result.buffers]
    assert [d.body for d in decoded] == bodies
    assert [d.queue_offset for d in decoded] == [0, 1, 2]
    assert decoded[0].properties["UNIQ_KEY"] == "id-A"
    assert rec.decode_host(decoded[0].born_host) == ("10.0.0.1", 5555)


def test_units_beyond_dispatch_pos_are_not_served(store):
    writer_log, cq_store, reader = store
    prepared = send_logic.prepare_send(
        _send_fields("A"), memoryview(b"x"), batch=False, write_queue_nums=4, max_message_size=1024
    )
    phys = _append(writer_log, cq_store, prepared, 0)
    result = reader.get_messages("Orders", 0, 0, 32, 1 << 20, None, dispatch_pos=phys[0])
    assert result.status is GetStatus.OFFSET_OVERFLOW_ONE and result.message_count == 0


def test_tag_filter_skips_other_tags_and_reports_no_match(store):
    writer_log, cq_store, reader = store
    for offset, tag in enumerate(["A", "B", "A", "C"]):
        prepared = send_logic.prepare_send(
            _send_fields(tag),
            memoryview(tag.encode()),
            batch=False,
            write_queue_nums=4,
            max_message_size=1024,
        )
        _append(writer_log, cq_store, prepared, offset)
    found = reader.get_messages("Orders", 0, 0, 32, 1 << 20, tag_codes_of("B || C"), writer_log.write_pos)
    assert [rec.decode_record(v, 0).body for v in found.buffers] == [b"B", b"C"]
    none = reader.get_messages("Orders", 0, 0, 32, 1 << 20, tag_codes_of("Z"), writer_log.write_pos)
    assert none.status is GetStatus.NO_MATCHED_MESSAGE and none.next_offset == 4


def test_offsets_outside_the_queue_are_reported_as_moved(store):
    writer_log, cq_store, reader = store
    prepared = send_logic.prepare_send(
        _send_fields("A"), memoryview(b"x"), batch=False, write_queue_nums=4, max_message_size=1024
    )
    _append(writer_log, cq_store, prepared, 0)
    badly = reader.get_messages("Orders", 0, 5, 32, 1 << 20, None, writer_log.write_pos)
    assert badly.status is GetStatus.OFFSET_OVERFLOW_BADLY and badly.next_offset == 0
    empty = reader.get_messages("Orders", 3, 0, 32, 1 << 20, None, writer_log.write_pos)
    assert empty.status is GetStatus.NO_MESSAGE_IN_QUEUE


def test_batch_send_becomes_one_record_per_message(store):
    writer_log, cq_store, reader = store
    items = [(0, f"m{i}".encode(), rec.encode_properties({"KEYS": f"k{i}"})) for i in range(5)]
    prepared = send_logic.prepare_send(
        _send_fields("A", queue_id=1),
        memoryview(codec.encode_batch(items)),
        batch=True,
        write_queue_nums=4,
        max_message_size=1 << 20,
    )
    assert prepared.count == 5
    _append(writer_log, cq_store, prepared, 0)
    result = reader.get_messages("Orders", 1, 0, 32, 1 << 20, None, writer_log.write_pos)
    decoded = [rec.decode_record(v, 0) for v in result.buffers]
    assert [d.body for d in decoded] == [b"m0", b"m1", b"m2", b"m3", b"m4"]
    assert [d.properties["KEYS"] for d in decoded] == ["k0", "k1", "k2", "k3", "k4"]


@pytest.mark.parametrize(
    "fields, body, remark",
    [
        ({"topic": "T", "queueId": 0}, b"", "empty"),
        ({"topic": "T", "queueId": -1}, b"x", "negative"),
        ({"topic": "T"}, b"x", "queueId"),
        ({"topic": "T", "queueId": "zero"}, b"x", "integer"),
        ({"topic": "T", "queueId": 0}, b"x" * 2000, "maxMessageSize"),
        ({"topic": "T", "queueId": 0, "properties": "k\x01" + "v" * 40000}, b"x", "properties"),
    ],
)
def test_bad_sends_are_rejected_with_a_clear_remark(fields, body, remark):
    result = send_logic.prepare_send(
        fields, memoryview(body), batch=False, write_queue_nums=4, max_message_size=1024
    )
    assert isinstance(result, send_logic.Rejection)
    assert result.code == ResponseCode.MESSAGE_ILLEGAL and remark in result.remark


def test_bad_batch_bodies_are_rejected():
    result = send_logic.prepare_send(
        {"topic": "T", "queueId": 0},
        memoryview(b"\x00\x00\x00\x05junk"),
        batch=True,
        write_queue_nums=4,
        max_message_size=1024,
    )
    assert isinstance(result, send_logic.Rejection) and "batch" in result.remark


def test_queue_id_beyond_write_queues_is_folded_like_rocketmq():
    result = send_logic.prepare_send(
        {"topic": "T", "queueId": 9}, memoryview(b"x"), batch=False, write_queue_nums=4, max_message_size=1024
    )
    assert result.queue_id == 1
