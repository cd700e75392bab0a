"""Self-inspection: send a probe to SELF_TEST_TOPIC, receive it back, time the round trip.

The operations notes this project came from ran "every minute, a client sends a message and
checks when it is received" (自动化巡检). The metrics process does it against the broker's own
address (brokerIP1:listenPort) every selfInspectionInterval, through the SDK's RemotingClient, so
the probe crosses every stage a real message crosses: the front, the request ring, the writer, the
dispatcher, the ConsumeQueue and a long-polled pull. The namesrv is not involved: the probe
judges this broker, not its routes.

`probe()` sends one message whose body is a unique token to queue 0, then pulls from the queue
offset the broker answered with, long polling until the token comes back or the timeout passes.
The result carries the send RT and the send-to-receive RT, or what went wrong. Pulls do not commit
offsets, so probes leave no consumer group behind. Thread-safety: as RemotingClient (any thread).
"""
from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from rmqd.client._remoting import RemotingClient
from rmqd.errors import RmqError
from rmqd.protocol import PullSysFlag, RequestCode, ResponseCode
from rmqd.store.record import decode_record, encode_properties

SELF_TEST_TOPIC = "SELF_TEST_TOPIC"  # RocketMQ's system topic, created by every broker (1 queue)
PROBE_GROUP = "rmqd_self_inspection"
PULL_MARGIN_MS = 1000  # network timeout of a held pull = its suspend time + this


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    rt_s: float = 0.0         # send start to probe received
    send_rt_s: float = 0.0    # send start to SEND_OK
    queue_offset: int = -1
    error: str = ""


def probe(remoting: RemotingClient, broker_addr: str, timeout_s: float,
          clock: Callable[[], float] = time.monotonic) -> ProbeResult:
    """One probe: send, then pull until it is back. Never raises for a broker or network failure."""
    token = f"rmqd-inspect-{os.getpid()}-{uuid.uuid4().hex}".encode()
    started = clock()
    deadline = started + timeout_s
    try:
        sent = remoting.invoke(broker_addr, RequestCode.SEND_MESSAGE, _send_fields(token), token,
                               timeout_ms=_ms_left(deadline, clock))
    except RmqError as exc:
        return ProbeResult(False, error=f"send failed: {exc}")
    send_rt_s = clock() - started
    if sent.code != ResponseCode.SUCCESS:
        return ProbeResult(False, send_rt_s=send_rt_s, error=f"send answered {sent.code}: {sent.remark}")
    queue_offset = sent.field_int("queueOffset", -1)
    try:
        found = _pull_until_found(remoting, broker_addr, sent.field_int("queueId", 0), queue_offset, token,
                                  deadline, clock)
    except RmqError as exc:
        return ProbeResult(False, send_rt_s=send_rt_s, queue_offset=queue_offset, error=f"pull failed: {exc}")
    if not found:
        return ProbeResult(False, send_rt_s=send_rt_s, queue_offset=queue_offset,
                           error=f"not received within {timeout_s:.1f} s")
    return ProbeResult(True, clock() - started, send_rt_s, queue_offset)


def _ms_left(deadline: float, clock: Callable[[], float]) -> int:
    return max(1, int((deadline - clock()) * 1000))


def _send_fields(token: bytes) -> dict[str, object]:
    return {
        "producerGroup": PROBE_GROUP, "topic": SELF_TEST_TOPIC, "defaultTopic": "TBW102",
        "defaultTopicQueueNums": 1, "queueId": 0, "sysFlag": 0, "bornTimestamp": int(time.time() * 1000),
        "bornHost": "127.0.0.1:0", "flag": 0, "reconsumeTimes": 0, "batch": False,
        "properties": encode_properties({"KEYS": token.decode(), "WAIT": "true"}).decode(),
    }


def _pull_until_found(remoting: RemotingClient, broker_addr: str, queue_id: int, queue_offset: int,
                      token: bytes, deadline: float, clock: Callable[[], float]) -> bool:
    offset = queue_offset
    while clock() < deadline:
        suspend_ms = _ms_left(deadline, clock)
        fields = {"consumerGroup": PROBE_GROUP, "topic": SELF_TEST_TOPIC, "queueId": queue_id,
                  "queueOffset": offset, "maxMsgNums": 32, "sysFlag": int(PullSysFlag.SUSPEND),
                  "commitOffset": 0, "suspendTimeoutMillis": suspend_ms, "subscription": "*"}
        reply = remoting.invoke(broker_addr, RequestCode.PULL_MESSAGE, fields,
                                timeout_ms=suspend_ms + PULL_MARGIN_MS)
        if reply.code == ResponseCode.SUCCESS and _holds(reply.body, token):
            return True
        if reply.code not in (ResponseCode.SUCCESS, ResponseCode.PULL_NOT_FOUND,
                              ResponseCode.PULL_RETRY_IMMEDIATELY):
            raise RmqError(f"pull answered {reply.code}: {reply.remark}")
        offset = reply.field_int("nextBeginOffset", offset)
    return False


def _holds(body: bytes | memoryview, token: bytes) -> bool:
    """Whether the pulled records (concatenated, RocketMQ's pull body) include the probe."""
    view = memoryview(body)
    pos = 0
    while pos < len(view):
        record = decode_record(view, pos, verify_crc=False)
        if record.body == token:
            return True
        pos += record.total_size
    return False
