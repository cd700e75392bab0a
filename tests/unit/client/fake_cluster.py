"""In-process test doubles for the SDK tests: the real namesrv loop and a small fake broker.

`NamesrvThread` runs workers.namesrv.Namesrv (the production loop) in a thread. `FakeBroker` is a
ROUTER thread that speaks the broker side of the protocol the SDK uses (send, batch, pull with
long-poll holds, offsets, heartbeats, consumer lists, topic creation) over in-memory queues whose
records are real CommitLog records built with rmqd.store.record. Tests steer it with attributes
(`fail_codes`, `blackhole_sends`, `send_gate`, `min_offsets`) and read what it saw (`sends`, `holds`,
`offsets`).

Every thread here is bounded: it stops when its stop event is set, or after MAX_LOOPS polls.
"""
from __future__ import annotations

import threading
import time

import zmq

from rmqd.client._remoting import RemotingClient
from rmqd.protocol import (
    Command,
    PullSysFlag,
    RequestCode,
    ResponseCode,
    decode,
    decode_json_body,
    encode_json_body,
    encode_response,
    iter_batch,
)
from rmqd.store.record import (
    encode_host,
    encode_record,
    offset_msg_id,
    record_size,
)
from tests.helpers import free_port
from workers.namesrv import Namesrv

POLL_MS = 20
MAX_LOOPS = 50 * 60 * 5  # 20 ms polls: no helper thread outlives 5 minutes


class NamesrvThread:
    """The production namesrv loop, in a thread."""

    def __init__(self) -> None:
        self.addr = f"127.0.0.1:{free_port()}"
        self.namesrv = Namesrv(self.addr)
        self.namesrv.setup()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for _ in range(MAX_LOOPS):
            if self._stop.is_set():
                break
            self.namesrv.next_scan_ms = int(time.time() * 1000) + POLL_MS  # keep run_once's poll short
            self.namesrv.run_once()
        self.namesrv.teardown()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


class FakeBroker:
    """Broker side of the SDK protocol, in memory. See the module docstring."""

    def __init__(self, namesrv_addr: str, broker_name: str = "broker-a",
                 topics: dict[str, int] | None = None) -> None:
        self.namesrv_addr = namesrv_addr
        self.broker_name = broker_name
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.store_host = encode_host("127.0.0.1", self.port)
        self.topics: dict[str, int] = {"TBW102": 8, **(topics or {})}
        self.records: dict[tuple[str, int], list[bytes]] = {}
        self.store_times: dict[tuple[str, int], list[int]] = {}
        self.min_offsets: dict[tuple[str, int], int] = {}
        self.offsets: dict[tuple[str, str, int], int] = {}
        self.consumers: dict[str, set[str]] = {}
        self.sends: list[Command] = []
        self.holds: list[tuple[bytes, Command, float]] = []
        self.fail_codes: list[int | None] = []
        self.blackhole_sends = False
        self.send_gate = threading.Event()  # cleared by a test: the next send waits (<= 5 s) for it
        self.send_gate.set()
        self.phy_offset = 0
        self.client = RemotingClient()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(5)
        self.register()

    # -- control from tests ------------------------------------------------------------------
    def register(self) -> None:
        table = {name: {"topicName": name, "readQueueNums": n, "writeQueueNums": n, "perm": 6,
                        "topicSysFlag": 0} for name, n in self.topics.items()}
        fields = {"clusterName": "DefaultCluster", "brokerAddr": self.addr, "brokerName": self.broker_name,
                  "brokerId": 0, "haServerAddr": ""}
        body = encode_json_body({"topicConfigTable": table, "dataVersion": len(self.topics)})
        response = self.client.invoke(self.namesrv_addr, RequestCode.REGISTER_BROKER, fields, body)
        assert response.code == ResponseCode.SUCCESS, response.remark

    def stored(self, topic: str, queue_id: int) -> list[bytes]:
        return list(self.records.get((topic, queue_id), []))

    def all_stored(self, topic: str) -> int:
        return sum(len(recs) for (name, _), recs in self.records.items() if name == topic)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.client.close()

    # -- server loop -------------------------------------------------------------------------
    def _run(self) -> None:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(f"tcp://{self.addr}")
        self._ready.set()
        try:
            for _ in range(MAX_LOOPS):
                if self._stop.is_set():
                    break
                if sock.poll(POLL_MS):
                    ident, frame = sock.recv_multipart()
                    reply = self._handle(ident, decode(frame))
                    if reply is not None:
                        sock.send_multipart([ident, reply])
                self._serve_holds(sock)
        finally:
            sock.close(0)
            ctx.term()

    def _handle(self, ident: bytes, cmd: Command) -> bytes | None:
        handler = getattr(self, f"_on_{RequestCode(cmd.code).name.lower()}", None)
        if handler is None:
            return encode_response(ResponseCode.REQUEST_CODE_NOT_SUPPORTED, cmd.opaque, remark="fake broker")
        result = handler(ident, cmd)
        if result is None:
            return None
        code, fields, body = result
        return encode_response(code, cmd.opaque, fields, "", body)

    def _append(self, topic: str, queue_id: int, body: bytes, properties: bytes, flag: int, sys_flag: int,
                born_ms: int) -> tuple[int, int]:
        recs = self.records.setdefault((topic, queue_id), [])
        buf = bytearray(record_size(len(body), len(topic), len(properties)))
        now_ms = int(time.time() * 1000)
        queue_offset = self.min_offsets.get((topic, queue_id), 0) + len(recs)
        encode_record(buf, 0, topic=topic.encode(), queue_id=queue_id, body=body, properties=properties,
                      flag=flag, sys_flag=sys_flag, born_timestamp_ms=born_ms, born_host=self.store_host,
                      store_host=self.store_host, queue_offset=queue_offset, phy_offset=self.phy_offset,
                      store_timestamp_ms=now_ms)
        recs.append(bytes(buf))
        self.store_times.setdefault((topic, queue_id), []).append(now_ms)
        phy = self.phy_offset
        self.phy_offset += len(buf)
        return queue_offset, phy

    def _ensure_topic(self, topic: str, queues: int) -> None:
        if topic not in self.topics:
            self.topics[topic] = queues
            self.register()

    def _steered_send(self, cmd: Command):
        """What the test set up for this send: the (code, fields, body) to answer instead of storing,
        None for no answer at all, or False to store it normally."""
        self.sends.append(cmd)
        self.send_gate.wait(5)
        if self.blackhole_sends:
            return None
        code = self.fail_codes.pop(0) if self.fail_codes else None  # None in the list: answer normally
        return (code, {}, b"") if code is not None else False

    def _on_send_message(self, ident: bytes, cmd: Command):
        steered = self._steered_send(cmd)
        if steered is not False:
            return steered
        topic, queue_id = cmd.field_str("topic"), cmd.field_int("queueId")
        self._ensure_topic(topic, cmd.field_int("defaultTopicQueueNums", 8))
        properties = cmd.field_str("properties")
        queue_offset, phy = self._append(topic, queue_id, bytes(cmd.body), properties.encode(),
                                         cmd.field_int("flag"), cmd.field_int("sysFlag"),
                                         cmd.field_int("bornTimestamp"))
        offset_id = offset_msg_id(self.store_host, phy)  # msgId carries it too, as rmqd's front does
        return ResponseCode.SUCCESS, {"msgId": offset_id, "offsetMsgId": offset_id,
                                      "queueId": queue_id, "queueOffset": queue_offset}, b""

    def _on_send_batch_message(self, ident: bytes, cmd: Command):
        steered = self._steered_send(cmd)
        if steered is not False:
            return steered
        topic, queue_id = cmd.field_str("topic"), cmd.field_int("queueId")
        self._ensure_topic(topic, 8)
        offset_ids, first = [], None
        for flag, body, properties in iter_batch(cmd.body):
            queue_offset, phy = self._append(topic, queue_id, bytes(body), bytes(properties), flag, 0,
                                             cmd.field_int("bornTimestamp"))
            first = queue_offset if first is None else first
            offset_ids.append(offset_msg_id(self.store_host, phy))
        return ResponseCode.SUCCESS, {"msgId": ",".join(offset_ids), "offsetMsgId": ",".join(offset_ids),
                                      "queueId": queue_id, "queueOffset": first}, b""

    def _bounds(self, topic: str, queue_id: int) -> tuple[int, int]:
        low = self.min_offsets.get((topic, queue_id), 0)
        return low, low + len(self.records.get((topic, queue_id), []))

    def _on_pull_message(self, ident: bytes, cmd: Command):
        topic, queue_id = cmd.field_str("topic"), cmd.field_int("queueId")
        offset = cmd.field_int("queueOffset")
        low, high = self._bounds(topic, queue_id)
        fields = {"minOffset": low, "maxOffset": high}
        if offset < low or offset > high:
            moved_to = low if offset < low else high
            return ResponseCode.PULL_OFFSET_MOVED, {**fields, "nextBeginOffset": moved_to}, b""
        if offset == high:
            suspend_ms = cmd.field_int("suspendTimeoutMillis", 0)
            if cmd.field_int("sysFlag", 0) & PullSysFlag.SUSPEND and suspend_ms > 0:
                self.holds.append((ident, cmd, time.monotonic() + suspend_ms / 1000))
                return None
            return ResponseCode.PULL_NOT_FOUND, {**fields, "nextBeginOffset": offset}, b""
        recs = self.records[(topic, queue_id)][offset - low:offset - low + cmd.field_int("maxMsgNums")]
        return ResponseCode.SUCCESS, {**fields, "nextBeginOffset": offset + len(recs)}, b"".join(recs)

    def _serve_holds(self, sock: zmq.Socket) -> None:
        still = []
        for ident, cmd, deadline in self.holds:
            low, high = self._bounds(cmd.field_str("topic"), cmd.field_int("queueId"))
            if high > cmd.field_int("queueOffset") or time.monotonic() >= deadline:
                code, fields, body = self._on_pull_message(ident, _without_suspend(cmd))
                sock.send_multipart([ident, encode_response(code, cmd.opaque, fields, "", body)])
            else:
                still.append((ident, cmd, deadline))
        self.holds = still

    def _on_query_consumer_offset(self, ident: bytes, cmd: Command):
        key = (cmd.field_str("consumerGroup"), cmd.field_str("topic"), cmd.field_int("queueId"))
        if key not in self.offsets:
            return ResponseCode.QUERY_NOT_FOUND, {}, b""
        return ResponseCode.SUCCESS, {"offset": self.offsets[key]}, b""

    def _on_update_consumer_offset(self, ident: bytes, cmd: Command):
        key = (cmd.field_str("consumerGroup"), cmd.field_str("topic"), cmd.field_int("queueId"))
        self.offsets[key] = cmd.field_int("commitOffset")
        return ResponseCode.SUCCESS, {}, b""

    def _on_get_min_offset(self, ident: bytes, cmd: Command):
        low, _ = self._bounds(cmd.field_str("topic"), cmd.field_int("queueId"))
        return ResponseCode.SUCCESS, {"offset": low}, b""

    def _on_get_max_offset(self, ident: bytes, cmd: Command):
        _, high = self._bounds(cmd.field_str("topic"), cmd.field_int("queueId"))
        return ResponseCode.SUCCESS, {"offset": high}, b""

    def _on_search_offset_by_timestamp(self, ident: bytes, cmd: Command):
        key = (cmd.field_str("topic"), cmd.field_int("queueId"))
        low, high = self._bounds(*key)
        times = self.store_times.get(key, [])
        found = next((low + i for i, t in enumerate(times) if t >= cmd.field_int("timestamp")), high)
        return ResponseCode.SUCCESS, {"offset": found}, b""

    def _on_heart_beat(self, ident: bytes, cmd: Command):
        body = decode_json_body(cmd.body)
        for consumer in body.get("consumerDataSet", []):
            self.consumers.setdefault(consumer["groupName"], set()).add(body["clientID"])
        return ResponseCode.SUCCESS, {}, b""

    def _on_unregister_client(self, ident: bytes, cmd: Command):
        self.consumers.get(cmd.field_str("consumerGroup"), set()).discard(cmd.field_str("clientID"))
        return ResponseCode.SUCCESS, {}, b""

    def _on_get_consumer_list_by_group(self, ident: bytes, cmd: Command):
        ids = sorted(self.consumers.get(cmd.field_str("consumerGroup"), set()))
        return ResponseCode.SUCCESS, {}, encode_json_body({"consumerIdList": ids})

    def _on_update_and_create_topic(self, ident: bytes, cmd: Command):
        self.topics[cmd.field_str("topic")] = cmd.field_int("writeQueueNums")
        self.register()
        return ResponseCode.SUCCESS, {}, b""


def _without_suspend(cmd: Command) -> Command:
    fields = dict(cmd.fields, sysFlag=0, suspendTimeoutMillis=0)
    return Command(cmd.kind, cmd.code, cmd.opaque, fields, cmd.remark, cmd.body)


def has_route(namesrv_addr: str, topic: str) -> bool:
    """Whether the namesrv answers a route for `topic` (asked over the wire, like a client)."""
    client = RemotingClient()
    try:
        response = client.invoke(namesrv_addr, RequestCode.GET_ROUTEINFO_BY_TOPIC, {"topic": topic})
    finally:
        client.close()
    return response.code == ResponseCode.SUCCESS
