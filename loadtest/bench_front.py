"""The front's Python work per sent message, without sockets or other processes.

    python loadtest/bench_front.py [--body 1024] [--batch 64] [--requests 3000] [--runs 3]

Builds the request frame a Producer sends (SEND_BATCH_MESSAGE of --batch messages with the SDK's
properties and UNIQ_KEYs, or one SEND_MESSAGE_V2 with --batch 1), then times the steps the front
runs for it, each over --requests requests: `codec.decode` of the frame, `send.prepare_send`
(validation and the batch walk), `schedule.maybe_redirect` (the delay/timer check) and
`send.encode_into` (the CommitLog records written into a ring-sized buffer). Prints µs per message
for each step and their sum, for --runs rounds (the machine is shared: compare within one run).
What this leaves out (zmq receive/send, ring publish and wake-ups, the acknowledgement) is what
`bench.py produce` measures on a real broker. Not part of the test run.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = str(Path(__file__).resolve().parents[1])
sys.path.insert(0, REPO_ROOT)

from rmqd.broker import schedule  # noqa: E402
from rmqd.broker import send as send_logic  # noqa: E402
from rmqd.client._ids import new_uniq_keys  # noqa: E402
from rmqd.client.producer import wire_properties  # noqa: E402
from rmqd.config import BrokerConfig  # noqa: E402
from rmqd.message import Message  # noqa: E402
from rmqd.protocol import codec  # noqa: E402
from rmqd.protocol.commands import RequestCode  # noqa: E402
from rmqd.store import record as rec  # noqa: E402

TOPIC = "BenchFront"


def request_frame(body_bytes: int, batch: int) -> bytes:
    """The frame a Producer would send for `batch` messages of `body_bytes` (1: a single send)."""
    messages = [Message(TOPIC, b"x" * body_bytes) for _ in range(batch)]
    keys = new_uniq_keys(batch)
    fields = {"producerGroup": "bench", "topic": TOPIC, "defaultTopic": "TBW102", "defaultTopicQueueNums": 8,
              "queueId": 3, "sysFlag": 0, "bornTimestamp": time.time_ns() // 1_000_000, "flag": 0,
              "reconsumeTimes": 0, "bornHost": "127.0.0.1:40000"}
    if batch == 1:
        fields["properties"] = wire_properties(messages[0], keys[0])
        return codec.encode_request(RequestCode.SEND_MESSAGE_V2, 1, fields, messages[0].body)
    fields["properties"] = "WAIT\x01true\x02"
    items = [(0, m.body, wire_properties(m, k).encode()) for m, k in zip(messages, keys)]
    return codec.encode_request(RequestCode.SEND_BATCH_MESSAGE, 1, fields, codec.encode_batch(items))


def time_step(step: Callable[[], object], requests: int) -> float:
    started = time.perf_counter()
    for _ in range(requests):
        step()
    return time.perf_counter() - started


def run_once(frame: bytes, batch: int, requests: int) -> dict[str, float]:
    """µs per message of each step for one round."""
    cfg = BrokerConfig.load()
    is_batch = batch > 1
    cmd = codec.decode(frame)
    prepared = send_logic.prepare_send(cmd.fields, cmd.body, batch=is_batch, write_queue_nums=8,
                                       max_message_size=cfg.maxMessageSize)
    assert isinstance(prepared, send_logic.PreparedSend), prepared
    buf = memoryview(bytearray(prepared.entry_size()))
    store_host = rec.encode_host("127.0.0.1", 10911)
    steps: dict[str, Callable[[], object]] = {
        "decode": lambda: codec.decode(frame),
        "prepare_send": lambda: send_logic.prepare_send(
            cmd.fields, cmd.body, batch=is_batch, write_queue_nums=8, max_message_size=cfg.maxMessageSize),
        "maybe_redirect": lambda: schedule.maybe_redirect(prepared, batch=is_batch, cfg=cfg),
        "encode_into": lambda: send_logic.encode_into(buf, 1, prepared, store_host),
    }
    per_message = 1e6 / (requests * batch)
    return {name: time_step(step, requests) * per_message for name, step in steps.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--body", type=int, default=1024, help="body bytes per message")
    parser.add_argument("--batch", type=int, default=64, help="messages per request (1: SEND_MESSAGE_V2)")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    frame = request_frame(args.body, args.batch)
    print(f"front steps, µs per message: {args.batch} x {args.body} B per request, {args.requests} requests")
    print(f"{'run':>3}  {'decode':>8}  {'prepare':>8}  {'redirect':>8}  {'encode':>8}  {'total':>8}")
    for run in range(1, args.runs + 1):
        figures = run_once(frame, args.batch, args.requests)
        total = sum(figures.values())
        print(f"{run:>3}  {figures['decode']:8.2f}  {figures['prepare_send']:8.2f}  "
              f"{figures['maybe_redirect']:8.2f}  {figures['encode_into']:8.2f}  {total:8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
