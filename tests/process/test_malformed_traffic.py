"""Malformed traffic on the broker and namesrv ports never takes a process down."""

from __future__ import annotations

import os
import random

import pytest
import zmq

from rmqd.client import LitePullConsumer, Message, Producer, SendStatus
from rmqd.protocol import codec
from rmqd.protocol.commands import MAX_FRAME_BYTES, PROTOCOL_VERSION, RequestCode, ResponseCode
from tests.broker_harness import BrokerTree

pytestmark = pytest.mark.process


@pytest.fixture
def broker(tmp_path):
    with BrokerTree(tmp_path / "store") as tree:
        yield tree


def _exchange(addr: str, frames: list[bytes], timeout_ms: int = 2000) -> list[bytes] | None:
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://{addr}")
    try:
        sock.send_multipart(frames)
        if sock.poll(timeout_ms):
            return sock.recv_multipart()
        return None
    finally:
        sock.close()


def _version_byte_changed(frame: bytes) -> bytes:
    return frame[:2] + bytes([PROTOCOL_VERSION + 7]) + frame[3:]


@pytest.mark.parametrize("target", ["broker", "namesrv"])
def test_garbage_gets_an_error_or_is_dropped_and_the_server_keeps_serving(broker, target):
    addr = broker.broker_addr if target == "broker" else broker.namesrv_addr
    rnd = random.Random(7)
    # Random bytes, short and long: no opaque can be recovered, so they are dropped (and logged).
    for size in (0, 1, 7, 8, 100, 5000):
        assert _exchange(addr, [rnd.randbytes(size)], timeout_ms=200) is None
    # A wrong protocol version is answered with VERSION_NOT_SUPPORTED.
    frame = codec.encode_request(RequestCode.GET_MAX_OFFSET, 41, {"topic": "x", "queueId": 0})
    reply = _exchange(addr, [_version_byte_changed(frame)])
    assert reply is not None and codec.decode(reply[0]).code == ResponseCode.VERSION_NOT_SUPPORTED
    # An unknown request code is answered with REQUEST_CODE_NOT_SUPPORTED.
    reply = _exchange(addr, [codec.encode_request(9999, 42, {})])
    assert reply is not None and codec.decode(reply[0]).code == ResponseCode.REQUEST_CODE_NOT_SUPPORTED
    assert codec.decode(reply[0]).opaque == 42
    # A truncated header and a multi-frame message are dropped.
    assert _exchange(addr, [frame[:12]], timeout_ms=200) is None
    assert _exchange(addr, [frame, b"extra", b"frames"], timeout_ms=200) is None
    # A frame larger than the limit disconnects that peer only.
    assert _exchange(addr, [os.urandom(MAX_FRAME_BYTES + 1024)], timeout_ms=300) is None
    # Then the broker still serves a real producer and consumer.
    _assert_serves(broker)


def test_bad_fields_get_a_response_code_and_a_remark(broker):
    cases = [
        (RequestCode.SEND_MESSAGE, {"topic": "bad topic!", "queueId": 0}, b"x", ResponseCode.MESSAGE_ILLEGAL),
        (RequestCode.SEND_MESSAGE, {"topic": "Fine", "queueId": "zero"}, b"x", ResponseCode.MESSAGE_ILLEGAL),
        (RequestCode.SEND_MESSAGE, {"topic": "Fine", "queueId": 0}, b"", ResponseCode.MESSAGE_ILLEGAL),
        (
            RequestCode.SEND_MESSAGE,
            {"topic": "Fine", "queueId": 0},
            b"x" * (4 << 20 | 1),
            ResponseCode.MESSAGE_ILLEGAL,
        ),
        (
            RequestCode.PULL_MESSAGE,
            {"topic": "NoSuchTopic", "queueId": 0, "queueOffset": 0, "consumerGroup": "g"},
            b"",
            ResponseCode.TOPIC_NOT_EXIST,
        ),
        (RequestCode.PULL_MESSAGE, {"topic": "TBW102"}, b"", ResponseCode.INVALID_PARAMETER),
        (RequestCode.HEART_BEAT, {}, b"not json", ResponseCode.INVALID_PARAMETER),
        (
            RequestCode.QUERY_CONSUMER_OFFSET,
            {"consumerGroup": "g", "topic": "NoSuchTopic", "queueId": 0},
            b"",
            ResponseCode.TOPIC_NOT_EXIST,
        ),
    ]
    for opaque, (code, fields, body, expected) in enumerate(cases, start=100):
        reply = _exchange(broker.broker_addr, [codec.encode_request(code, opaque, fields, body)])
        assert reply is not None, f"no reply to {code.name} {fields}"
        decoded = codec.decode(reply[0])
        assert (decoded.code, decoded.opaque) == (expected, opaque), (code.name, fields, decoded.remark)
        assert decoded.remark, f"{code.name} {fields}: error without a remark"
    _assert_serves(broker)


def _assert_serves(broker: BrokerTree) -> None:
    producer = Producer("malformed-check", namesrv=broker.namesrv_addr)
    producer.start()
    consumer = LitePullConsumer("malformed-check", namesrv=broker.namesrv_addr)
    try:
        result = producer.send(Message("StillServing", b"hello"))
        assert result.status is SendStatus.SEND_OK
        consumer.subscribe("StillServing", "*")
        consumer.start()
        bodies = []
        for _ in range(20):
            bodies += [m.body for m in consumer.poll(timeout_ms=500)]
            if bodies:
                break
        assert bodies == [b"hello"]
    finally:
        producer.shutdown()
        consumer.shutdown()
