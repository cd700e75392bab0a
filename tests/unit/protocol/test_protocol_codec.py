"""Frame and batch codec: round trips, golden bytes, and defensive decoding (fuzzed)."""
from __future__ import annotations

import struct

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rmqd.errors import ProtocolError
from rmqd.protocol import (
    PROTOCOL_VERSION,
    FrameKind,
    RequestCode,
    ResponseCode,
    batch_spans,
    code_name,
    decode,
    decode_batch,
    decode_json_body,
    encode_batch,
    encode_request,
    encode_response,
    iter_batch,
    malformed_reply,
    peek_opaque,
)
from rmqd.protocol.codec import FRAME_PREFIX


def _frame(header: bytes, body: bytes = b"", version: int = 1, kind: int = 0, magic: bytes = b"RQ") -> bytes:
    return magic + bytes([version, kind]) + struct.pack(">I", len(header)) + header + body


def test_request_codes_carry_rocketmq_numbers():
    assert RequestCode.SEND_MESSAGE == 10
    assert RequestCode.PULL_MESSAGE == 11
    assert RequestCode.QUERY_MESSAGE == 12
    assert RequestCode.HEART_BEAT == 34
    assert RequestCode.CONSUMER_SEND_MSG_BACK == 36
    assert RequestCode.END_TRANSACTION == 37
    assert RequestCode.GET_CONSUMER_LIST_BY_GROUP == 38
    assert RequestCode.REGISTER_BROKER == 103
    assert RequestCode.GET_ROUTEINFO_BY_TOPIC == 105
    assert RequestCode.GET_BROKER_CLUSTER_INFO == 106
    assert RequestCode.WIPE_WRITE_PERM_OF_BROKER == 205
    assert RequestCode.GET_ALL_TOPIC_LIST_FROM_NAMESERVER == 206
    assert RequestCode.DELETE_TOPIC_IN_NAMESRV == 216
    assert RequestCode.SEND_BATCH_MESSAGE == 320
    assert RequestCode.ADD_WRITE_PERM_OF_BROKER == 327


def test_response_codes_carry_rocketmq_numbers():
    expected = {
        "SUCCESS": 0, "SYSTEM_ERROR": 1, "SYSTEM_BUSY": 2, "REQUEST_CODE_NOT_SUPPORTED": 3,
        "FLUSH_DISK_TIMEOUT": 10, "SLAVE_NOT_AVAILABLE": 11, "FLUSH_SLAVE_TIMEOUT": 12, "MESSAGE_ILLEGAL": 13,
        "SERVICE_NOT_AVAILABLE": 14, "VERSION_NOT_SUPPORTED": 15, "NO_PERMISSION": 16, "TOPIC_NOT_EXIST": 17,
        "PULL_NOT_FOUND": 19, "PULL_RETRY_IMMEDIATELY": 20, "PULL_OFFSET_MOVED": 21, "QUERY_NOT_FOUND": 22,
    }
    assert {name: ResponseCode[name].value for name in expected} == expected


def test_code_name_names_known_codes_and_marks_unknown_ones():
    assert code_name(105, response=False) == "GET_ROUTEINFO_BY_TOPIC"
    assert code_name(17, response=True) == "TOPIC_NOT_EXIST"
    assert code_name(99999, response=False) == "UNKNOWN(99999)"


def test_request_frame_matches_the_documented_golden_bytes():
    frame = encode_request(RequestCode.GET_ROUTEINFO_BY_TOPIC, 7, {"topic": "T"}, b"xy")
    header = b'{"code":105,"opaque":7,"fields":{"topic":"T"}}'
    assert frame == b"RQ\x01\x00" + len(header).to_bytes(4, "big") + header + b"xy"


def test_oneway_and_response_frames_carry_their_kind_byte():
    assert encode_request(34, 1, oneway=True)[3] == FrameKind.ONEWAY
    assert encode_response(0, 1)[3] == FrameKind.RESPONSE
    assert FRAME_PREFIX.size == 8


def test_request_round_trips_code_opaque_fields_and_body():
    fields = {"topic": "Orders", "queueId": 3, "batch": False, "properties": "TAGS\x01A\x02"}
    cmd = decode(encode_request(RequestCode.SEND_MESSAGE, 2**40, fields, b"\x00body\xff"))
    assert (cmd.kind, cmd.code, cmd.opaque, cmd.fields, bytes(cmd.body)) == (
        FrameKind.REQUEST, 10, 2**40, fields, b"\x00body\xff")
    assert not cmd.is_response and not cmd.is_oneway


def test_response_round_trips_remark_and_accepts_memoryview_input():
    frame = encode_response(ResponseCode.TOPIC_NOT_EXIST, 9, {"x": 1}, "no route for Orders", b"b")
    cmd = decode(memoryview(bytearray(frame)))
    assert cmd.is_response and cmd.code == 17
    assert cmd.remark == "no route for Orders" and bytes(cmd.body) == b"b"


def test_decode_accepts_a_zmq_frame():
    zmq = pytest.importorskip("zmq")
    cmd = decode(zmq.Frame(encode_request(11, 5, {"queueOffset": 1})))
    assert cmd.code == 11 and cmd.fields["queueOffset"] == 1


def test_field_accessors_convert_and_reject_clearly():
    cmd = decode(encode_request(10, 1, {"queueId": "12", "topic": "T", "batch": "true", "bad": "x1"}))
    assert cmd.field_int("queueId") == 12
    assert cmd.field_str("topic") == "T"
    assert cmd.field_bool("batch") is True
    assert cmd.field_int("missing", default=-1) == -1
    with pytest.raises(ProtocolError, match="'bad' must be an integer"):
        cmd.field_int("bad")
    with pytest.raises(ProtocolError, match="missing string field 'producerGroup'"):
        cmd.field_str("producerGroup")


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (b"RQ\x01", "too short"),
        (_frame(b"{}", magic=b"XX"), "bad frame magic"),
        (_frame(b'{"code":1,"opaque":1}', version=2), "unsupported protocol version 2, expected 1"),
        (_frame(b'{"code":1,"opaque":1}', kind=7), "unknown frame kind 7"),
        (b"RQ\x01\x00\x00\x00\x00\x50{}", "frame truncated"),
        (_frame(b"[1,2]"), "header must be a JSON object"),
        (_frame(b"{not json"), "not valid UTF-8 JSON"),
        (_frame(b'{"opaque":1}'), "'code' must be an integer"),
        (_frame(b'{"code":1,"opaque":true}'), "'opaque' must be an integer"),
        (_frame(b'{"code":1,"opaque":1,"fields":[]}'), "'fields' must be a JSON object"),
        (_frame(b'{"code":1,"opaque":1,"fields":{"a":[1]}}'), "field 'a' must be"),
        (_frame(b'{"code":1,"opaque":1,"remark":5}'), "'remark' must be a string"),
        (b"RQ\x01\x00\x7f\xff\xff\xff", "exceeds the limit"),
    ],
)
def test_malformed_frames_raise_protocol_error_saying_what_is_wrong(frame, message):
    with pytest.raises(ProtocolError, match=message):
        decode(frame)


def test_non_bytes_input_raises_protocol_error():
    with pytest.raises(ProtocolError, match="not a bytes-like object"):
        decode(12345)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_raise_anything_but_protocol_error(data):
    try:
        decode(data)
    except ProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120), st.sampled_from([0, 1, 2]))
def test_random_headers_behind_a_valid_prefix_only_raise_protocol_error(header, kind):
    try:
        decode(_frame(header, kind=kind))
    except ProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                max_size=3),
                    max_leaves=8))
def test_arbitrary_json_headers_only_raise_protocol_error(value):
    try:
        header = orjson.dumps(value)
    except TypeError:  # integers beyond 64 bits: orjson refuses them, nothing to decode
        return
    try:
        decode(_frame(header))
    except ProtocolError:
        pass


def test_peek_opaque_recovers_the_opaque_of_a_wrong_version_frame():
    frame = _frame(b'{"code":10,"opaque":42,"fields":{}}', version=9)
    assert peek_opaque(frame) == 42
    assert peek_opaque(b"garbage garbage") is None


def test_malformed_reply_answers_version_not_supported_with_the_request_opaque():
    frame = _frame(b'{"code":10,"opaque":42}', version=PROTOCOL_VERSION + 1)
    with pytest.raises(ProtocolError) as info:
        decode(frame)
    reply = decode(malformed_reply(frame, info.value))
    assert (reply.code, reply.opaque) == (ResponseCode.VERSION_NOT_SUPPORTED, 42)
    assert "unsupported protocol version" in reply.remark


def test_malformed_reply_is_none_when_no_opaque_can_be_recovered():
    assert malformed_reply(b"\x00" * 20, ProtocolError("x")) is None


def test_json_body_must_be_an_object():
    assert decode_json_body(b'{"a": 1}') == {"a": 1}
    with pytest.raises(ProtocolError, match="route must be a JSON object"):
        decode_json_body(b"[]", what="route")
    with pytest.raises(ProtocolError, match="not valid UTF-8 JSON"):
        decode_json_body(b"\xff")


def test_batch_round_trips_flags_bodies_and_properties():
    items = [(0, b"one", b"TAGS\x01A\x02"), (7, b"", b""), (1, b"x" * 5000, b"K\x01V\x02")]
    decoded = [(flag, bytes(body), bytes(props)) for flag, body, props in iter_batch(encode_batch(items))]
    assert decoded == items


def test_batch_golden_bytes_follow_the_diagram():
    raw = encode_batch([(5, b"ab", b"P")])
    assert raw == struct.pack(">iii", 17, 5, 2) + b"ab" + struct.pack(">h", 1) + b"P"


def test_batch_with_properties_over_32767_bytes_is_refused_at_encode():
    with pytest.raises(ValueError, match="32767"):
        encode_batch([(0, b"x", b"p" * 32768)])


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x00\x00\x00\x20", "bytes left"),
        (struct.pack(">iii", 100, 0, 1) + b"a\x00\x00", "total_size 100 outside"),
        (struct.pack(">iii", 15, 0, 5) + b"a\x00\x00", "body_len 5"),
        (struct.pack(">iii", 15, 0, 1) + b"a\x00\x05", "properties_len 5"),
        (struct.pack(">iii", 15, 0, -1) + b"a\x00\x00", "body_len -1"),
    ],
)
def test_inconsistent_batch_raises_protocol_error(raw, message):
    with pytest.raises(ProtocolError, match=message):
        decode_batch(raw)
    with pytest.raises(ProtocolError, match=message):  # the front's form names the same problem
        batch_spans(raw)


def test_batch_spans_locate_what_iter_batch_yields_with_the_length_prefixed_properties():
    items = [(0, b"one", b"TAGS\x01A\x02"), (7, b"", b""), (-3, b"x" * 5000, b"K\x01V\x02" * 30)]
    raw = encode_batch(items)
    spans = batch_spans(raw)
    assert len(spans) == 4 * len(items)
    for (flag, body_start, body_len, tail_len), (want_flag, body, props) in zip(
            zip(*[iter(spans)] * 4), items):
        assert flag == want_flag and raw[body_start:body_start + body_len] == body
        tail = raw[body_start + body_len:body_start + body_len + tail_len]
        assert tail == struct.pack(">h", len(props)) + props  # as a CommitLog record stores them
    assert batch_spans(b"") == []  # the caller decides that no message is an error


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=100))
def test_random_batch_bytes_give_the_same_verdict_to_both_decoders(data):
    try:
        items = list(iter_batch(data))
    except ProtocolError:
        with pytest.raises(ProtocolError):
            batch_spans(data)
        return
    assert len(batch_spans(data)) == 4 * len(items)


def test_empty_batch_is_refused():
    with pytest.raises(ProtocolError, match="no message"):
        decode_batch(b"")


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=100))
def test_random_batch_bytes_never_raise_anything_but_protocol_error(data):
    try:
        decode_batch(data)
    except ProtocolError:
        pass
