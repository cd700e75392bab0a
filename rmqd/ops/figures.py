"""Broker figures for operators, from shm counters and the store (no Prometheus here).

What is measured, and where it comes from:
  put / get TPS          shm put_messages_total (writer) and pull_messages_total (front), sampled once
                         a second by the metrics process (`RateSampler`) over 10 s / 1 min / 10 min,
                         as RocketMQ's StoreStatsService; the rates are published in the shm `rates`
                         line so that GET_BROKER_RUNTIME_INFO (the front) reports the same figures
  send RT histogram      the front counts every answered send (`SendRtRecorder`, buckets
                         SEND_RT_BUCKETS_MS) and publishes the counts once a second in the shm
                         `send_rt_hist` line, their sum in send_rt_sum_us
  flush latency          shm flush_time_us_total / flush_total (flusher)
  ring depths            published-but-unreleased bytes of each shm ring
  dispatch / flush lag   write_pos - dispatch_pos, write_pos - flush_pos (bytes)
  disk ratio             disk_used_ppm (cleaner)
  per-group lag          config/consumerOffset.json (the front persists it every 5 s) against each
                         ConsumeQueue's max offset (`group_lags`)

`runtime_figures` gives them as RocketMQ-style strings for GET_BROKER_RUNTIME_INFO (mqadmin
brokerStatus / clusterList); rmqd.ops.metrics turns the same figures into Prometheus families.
Library only: no loops, no threads. The recorder and the rate publisher each have one writer process.
"""
from __future__ import annotations

import bisect
import os
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from rmqd.broker.consumer_offsets import TOPIC_GROUP_SEPARATOR
from rmqd.store.files import read_json_with_bak
from shm import flags

SEND_RT_BUCKETS_MS: tuple[int, ...] = (1, 2, 5, 10, 50, 100, 500)  # and +Inf: 8 counters, one shm line
RATE_WINDOWS_S: tuple[int, ...] = (10, 60, 600)
RATE_WINDOW_NAMES: tuple[str, ...] = ("10s", "1m", "10m")
# Words of the shm `rates` line: TPS x1000 per window, then flush latency and the sample time.
PUT_TPS_WORDS = (0, 1, 2)
GET_TPS_WORDS = (3, 4, 5)
FLUSH_LATENCY_US_WORD = 6
SAMPLED_AT_MS_WORD = 7
MILLI = 1000


# ---------------------------------------------------------------- send RT histogram (front)

class SendRtRecorder:
    """The front's side of the send RT histogram (the front is the only writer of its shm lines).

    `observe(seconds)` once per answered send counts in process memory (~0.25 us); `publish()`
    copies the totals into shm, once per housekeeping round (1 s), so readers lag by at most that.
    """

    def __init__(self, positions: Any) -> None:
        self._shm_counts = positions.send_rt_hist_words()
        self._positions = positions
        self._bounds_s = [ms / 1000 for ms in SEND_RT_BUCKETS_MS]
        self._counts = list(self._shm_counts)  # continue from what a previous front published
        self._sum_s = positions.send_rt_sum_us / 1_000_000

    def observe(self, seconds: float) -> None:
        self._counts[bisect.bisect_left(self._bounds_s, seconds)] += 1
        self._sum_s += seconds

    def publish(self) -> None:
        for index, count in enumerate(self._counts):
            self._shm_counts[index] = count
        self._positions.set_send_rt_sum_us(int(self._sum_s * 1_000_000))


def send_rt_counts(positions: Any) -> list[int]:
    """The 8 bucket counts (not cumulative), SEND_RT_BUCKETS_MS order then +Inf."""
    return list(positions.send_rt_hist_words())


def describe_send_rt(counts: list[int]) -> str:
    """RocketMQ's putMessageDistributeTime style: "[<=1ms]:5 [1~2ms]:0 ... [500ms~]:0"."""
    bounds = (0, *SEND_RT_BUCKETS_MS)
    parts = [f"[<={bounds[1]}ms]:{counts[0]}"]
    parts += [f"[{bounds[i]}~{bounds[i + 1]}ms]:{counts[i]}" for i in range(1, len(SEND_RT_BUCKETS_MS))]
    parts.append(f"[{SEND_RT_BUCKETS_MS[-1]}ms~]:{counts[-1]}")
    return " ".join(parts)


# ---------------------------------------------------------------- rates (metrics process)

@dataclass(frozen=True)
class Rates:
    put_tps: tuple[float, ...]        # per RATE_WINDOWS_S
    get_tps: tuple[float, ...]
    flush_latency_s: float            # mean flush time over the shortest window
    sampled_at_ms: int


class RateSampler:
    """Counter samples over the longest window; rates over each window (RocketMQ StoreStatsService).

    `sample()` once a second from one thread; `rates()` is pure over the samples taken so far.
    """

    def __init__(self, windows_s: tuple[int, ...] = RATE_WINDOWS_S) -> None:
        self.windows_s = windows_s
        self._samples: deque[tuple[float, int, int, int, int]] = deque()

    def sample(self, now_s: float, put_total: int, get_total: int, flush_total: int,
               flush_time_us: int) -> None:
        self._samples.append((now_s, put_total, get_total, flush_total, flush_time_us))
        while len(self._samples) > 2 and now_s - self._samples[1][0] >= max(self.windows_s):
            self._samples.popleft()

    def _oldest_within(self, window_s: float) -> tuple[float, int, int, int, int]:
        newest_s = self._samples[-1][0]
        for sample in self._samples:
            if newest_s - sample[0] <= window_s:
                return sample
        return self._samples[-1]

    def rates(self, sampled_at_ms: int | None = None) -> Rates:
        if len(self._samples) < 2:
            zeros = tuple(0.0 for _ in self.windows_s)
            return Rates(zeros, zeros, 0.0, sampled_at_ms or 0)
        newest = self._samples[-1]
        put, get = [], []
        for window_s in self.windows_s:
            oldest = self._oldest_within(window_s)
            elapsed = newest[0] - oldest[0]
            put.append((newest[1] - oldest[1]) / elapsed if elapsed > 0 else 0.0)
            get.append((newest[2] - oldest[2]) / elapsed if elapsed > 0 else 0.0)
        oldest = self._oldest_within(self.windows_s[0])
        flushes = newest[3] - oldest[3]
        latency_s = (newest[4] - oldest[4]) / 1_000_000 / flushes if flushes > 0 else 0.0
        at_ms = sampled_at_ms if sampled_at_ms is not None else int(time.time() * 1000)
        return Rates(tuple(put), tuple(get), latency_s, at_ms)


def publish_rates(positions: Any, rates: Rates) -> None:
    """Write `rates` into the shm `rates` line (owner: the metrics process)."""
    words = positions.rates_words()
    for word, tps in zip(PUT_TPS_WORDS, rates.put_tps):
        words[word] = int(tps * MILLI)
    for word, tps in zip(GET_TPS_WORDS, rates.get_tps):
        words[word] = int(tps * MILLI)
    words[FLUSH_LATENCY_US_WORD] = int(rates.flush_latency_s * 1_000_000)
    words[SAMPLED_AT_MS_WORD] = rates.sampled_at_ms


def read_rates(positions: Any) -> Rates:
    """The rates the metrics process last published (all zero before its first sample)."""
    words = positions.rates_words()
    put = tuple(words[w] / MILLI for w in PUT_TPS_WORDS)
    get = tuple(words[w] / MILLI for w in GET_TPS_WORDS)
    return Rates(put, get, words[FLUSH_LATENCY_US_WORD] / 1_000_000, words[SAMPLED_AT_MS_WORD])


# ---------------------------------------------------------------- consumer lag

@dataclass(frozen=True)
class QueueLag:
    group: str
    topic: str
    queue_id: int
    consumer_offset: int
    max_offset: int

    @property
    def lag(self) -> int:
        return max(0, self.max_offset - self.consumer_offset)


def read_consumer_offsets(path: str) -> dict[tuple[str, str], dict[int, int]]:
    """{(group, topic): {queue_id: offset}} from consumerOffset.json ("topic@group" keys)."""
    data = read_json_with_bak(path) or {}
    table: dict[tuple[str, str], dict[int, int]] = {}
    for key, queues in (data.get("offsetTable") or {}).items():
        topic, sep, group = str(key).rpartition(TOPIC_GROUP_SEPARATOR)
        if sep:
            table[(group, topic)] = {int(qid): int(offset) for qid, offset in queues.items()}
    return table


def group_lags(offsets: Mapping[tuple[str, str], Mapping[int, int]], cq_store: Any) -> list[QueueLag]:
    """One QueueLag per committed (group, topic, queue), against that ConsumeQueue's max offset."""
    lags = []
    for (group, topic), queues in sorted(offsets.items()):
        for queue_id, offset in sorted(queues.items()):
            lags.append(QueueLag(group, topic, queue_id, offset, cq_store.get(topic, queue_id).max_offset()))
    return lags


def lag_by_group(lags: list[QueueLag]) -> dict[tuple[str, str], int]:
    """Total lag per (group, topic)."""
    totals: dict[tuple[str, str], int] = {}
    for item in lags:
        totals[(item.group, item.topic)] = totals.get((item.group, item.topic), 0) + item.lag
    return totals


class ShmSource(Protocol):
    """What the figures read: a BrokerShm (or anything with the same three attributes)."""

    positions: Any
    rings: Mapping[str, Any]
    heartbeats: Any


def runtime_figures(shm: ShmSource) -> dict[str, str]:
    """Figures for GET_BROKER_RUNTIME_INFO / mqadmin brokerStatus (RocketMQ-style names and strings)."""
    p = shm.positions
    rates = read_rates(p)
    counts = send_rt_counts(p)
    sends = sum(counts)
    usage = p.disk_used_ppm / 1_000_000
    writable, reason = flags.is_writable(p)
    figures = {
        "putTps": " ".join(f"{tps:.1f}" for tps in rates.put_tps),
        "getTransferedTps": " ".join(f"{tps:.1f}" for tps in rates.get_tps),
        "putMessageDistributeTime": describe_send_rt(counts),
        "sendRtAvgMs": f"{p.send_rt_sum_us / 1000 / sends:.3f}" if sends else "0",
        "flushLatencyMs": f"{rates.flush_latency_s * 1000:.3f}",
        "flushAvgMs": f"{p.flush_time_us_total / 1000 / p.flush_total:.3f}" if p.flush_total else "0",
        "flushBehindBytes": str(p.write_pos - p.flush_pos),
        "dispatchBehindBytes": str(p.write_pos - p.dispatch_pos),
        "commitLogDiskRatio": f"{usage:.4f}",
        "storeWritable": "true" if writable else f"false: {reason}",
        "runningFlags": ",".join(flags.describe(p.writer_flags, p.cleaner_flags)) or "OK",
    }
    for name, ring in shm.rings.items():
        figures[f"ring.{name}.depthBytes"] = str(ring.depth_bytes())
    return figures


def consumer_offsets_path(config_dir: str) -> str:
    return os.path.join(config_dir, "consumerOffset.json")
