"""AppendRequest/AppendResult (front <-> writer) and ParkedPull/Arrival (long polling) entry formats."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from rmqd.broker import hold
from rmqd.store import append_request as ar


def test_append_request_head_is_24_bytes_and_records_start_8_aligned():
    assert ar.APPEND_REQUEST_HEAD.size == ar.APPEND_REQUEST_HEAD_SIZE == 24
    assert ar.APPEND_RESULT_HEAD.size == ar.APPEND_RESULT_HEAD_SIZE == 32
    for topic_len in range(0, 40):
        start = ar.records_start(topic_len)
        assert start % 8 == 0 and start >= 24 + topic_len


@given(
    request_id=st.integers(0, 2**64 - 1),
    queue_id=st.integers(0, 2**31 - 1),
    topic=st.binary(min_size=1, max_size=127),
    records=st.binary(max_size=300),
    count=st.integers(0, 9),
)
def test_append_request_round_trips(request_id, queue_id, topic, records, count):
    buf = bytearray(ar.append_request_size(len(topic), len(records)))
    view = memoryview(buf)
    start = ar.encode_append_request_head(view, request_id, queue_id, count, len(records), topic)
    view[start : start + len(records)] = records
    decoded = ar.decode_append_request(view)
    assert decoded == (request_id, queue_id, count, topic, decoded.records)
    assert bytes(decoded.records) == records


@given(
    request_id=st.integers(0, 2**64 - 1),
    status=st.sampled_from(list(ar.PutStatus)),
    queue_offset=st.integers(-1, 2**62),
    end=st.integers(0, 2**62),
    phys=st.lists(st.integers(0, 2**62), max_size=50),
)
def test_append_result_round_trips(request_id, status, queue_offset, end, phys):
    buf = bytearray(ar.append_result_size(len(phys)))
    ar.encode_append_result(memoryview(buf), request_id, status, queue_offset, end, phys)
    assert ar.decode_append_result(memoryview(buf)) == (request_id, status, queue_offset, end, tuple(phys))


@given(
    offset=st.integers(0, 2**62),
    deadline=st.integers(0, 2**62),
    queue_id=st.integers(0, 1023),
    topic=st.binary(min_size=1, max_size=127),
    identity=st.binary(max_size=255),
    frame=st.binary(max_size=500),
)
def test_parked_pull_round_trips(offset, deadline, queue_id, topic, identity, frame):
    pull = hold.ParkedPull(offset, deadline, queue_id, topic, identity, frame)
    buf = bytearray(hold.parked_pull_size(topic, identity, frame))
    hold.encode_parked_pull(memoryview(buf), pull)
    assert hold.decode_parked_pull(memoryview(buf)) == pull


def test_arrival_round_trips():
    arrival = hold.Arrival(b"Orders", 7, 123_456)
    buf = bytearray(hold.arrival_size(arrival.topic))
    hold.encode_arrival(memoryview(buf), arrival)
    assert hold.decode_arrival(memoryview(buf)) == arrival
    assert hold.ARRIVAL_HEAD.size == hold.ARRIVAL_HEAD_SIZE
    assert hold.PARKED_PULL_HEAD.size == hold.PARKED_PULL_HEAD_SIZE
