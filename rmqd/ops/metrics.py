"""The Prometheus side of the broker figures (rmqd.ops.figures): one custom collector.

`BrokerCollector` turns a `FigureSource` into metric families at scrape time. It runs in
prometheus-client's HTTP thread: it reads shm (safe from any thread) and the lag and inspection
snapshots, which the metrics process replaces whole (an attribute swap), never mutates.

Metric names (all prefixed rmqd_): put_messages_total, put_bytes_total, get_messages_total,
flushes_total, flush_seconds_total, put_tps{window}, get_tps{window}, flush_latency_seconds,
send_rt_seconds (histogram), position_bytes{position}, dispatch_lag_bytes, flush_lag_bytes,
ring_depth_bytes{ring}, disk_used_ratio, store_writable, heartbeat_age_seconds{process},
consumer_queue_lag_messages{group,topic,queue}, consumer_lag_messages{group,topic},
inspect_probes_total{result}, inspect_rt_seconds, inspect_last_success_timestamp_seconds.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from rmqd.ops.figures import (
    RATE_WINDOW_NAMES,
    SEND_RT_BUCKETS_MS,
    QueueLag,
    ShmSource,
    lag_by_group,
    read_rates,
    send_rt_counts,
)
from shm import flags


@dataclass(frozen=True)
class InspectionState:
    """The self-inspection results so far (rmqd.ops.inspect), swapped in whole after each probe."""

    probes_ok: int = 0
    probes_missed: int = 0
    last_rt_s: float = 0.0
    last_ok_at_s: float = 0.0


@dataclass
class FigureSource:
    """What the collector reads: the broker's shm plus snapshots the metrics process swaps in."""

    shm: ShmSource
    lags: list[QueueLag] = field(default_factory=list)
    inspection: InspectionState = field(default_factory=InspectionState)


class BrokerCollector:
    """prometheus-client custom collector: every figure, read when Prometheus scrapes."""

    def __init__(self, source: FigureSource) -> None:
        self.source = source

    def describe(self) -> list:
        return []  # unchecked collector: families are produced at scrape time only

    def collect(self) -> Iterator[Any]:
        source = self.source
        yield from _counters(source.shm.positions)
        yield from _gauges(source.shm)
        yield _send_rt_histogram(source.shm.positions)
        yield from _lag_families(source.lags)
        yield from _inspection_families(source.inspection)


COUNTERS = (  # (metric, help, shm position, scale)
    ("rmqd_put_messages", "Messages appended to the CommitLog.", "put_messages_total", 1),
    ("rmqd_put_bytes", "Record bytes appended to the CommitLog.", "put_bytes_total", 1),
    ("rmqd_get_messages", "Messages returned to pulls.", "pull_messages_total", 1),
    ("rmqd_flushes", "CommitLog flushes (fdatasync) done.", "flush_total", 1),
    ("rmqd_flush_seconds", "Time spent flushing the CommitLog.", "flush_time_us_total", 1e-6),
)


def _counters(p: Any) -> Iterator[Any]:
    for metric, help_text, position, scale in COUNTERS:
        yield CounterMetricFamily(metric, help_text, p.get(position) * scale)


def _gauges(shm: ShmSource) -> Iterator[Any]:
    p = shm.positions
    rates = read_rates(p)
    for name, help_text, values in (("rmqd_put_tps", "Messages put per second.", rates.put_tps),
                                    ("rmqd_get_tps", "Messages pulled per second.", rates.get_tps)):
        family = GaugeMetricFamily(name, help_text, labels=["window"])
        for window, value in zip(RATE_WINDOW_NAMES, values):
            family.add_metric([window], value)
        yield family
    yield GaugeMetricFamily("rmqd_flush_latency_seconds", "Mean CommitLog flush time over the last 10 s.",
                            rates.flush_latency_s)
    positions = GaugeMetricFamily("rmqd_position_bytes", "Positions in the CommitLog byte space.",
                                  labels=["position"])
    for name in ("write_pos", "flush_pos", "dispatch_pos", "min_phy_offset"):
        positions.add_metric([name], p.get(name))
    yield positions
    write_pos = p.write_pos
    yield GaugeMetricFamily("rmqd_dispatch_lag_bytes", "write_pos - dispatch_pos.",
                            write_pos - p.dispatch_pos)
    yield GaugeMetricFamily("rmqd_flush_lag_bytes", "write_pos - flush_pos.", write_pos - p.flush_pos)
    rings = GaugeMetricFamily("rmqd_ring_depth_bytes", "Bytes published and not yet released per shm ring.",
                              labels=["ring"])
    for name, ring in shm.rings.items():
        rings.add_metric([name], ring.depth_bytes())
    yield rings
    yield GaugeMetricFamily("rmqd_disk_used_ratio", "Used fraction of the store's disk.",
                            p.disk_used_ppm / 1e6)
    yield GaugeMetricFamily("rmqd_store_writable", "1 while sends are accepted.",
                            int(flags.is_writable(p)[0]))
    yield from _heartbeat_ages(shm.heartbeats)


def _heartbeat_ages(heartbeats: Any) -> Iterator[Any]:
    family = GaugeMetricFamily("rmqd_heartbeat_age_seconds", "Seconds since each process last beat.",
                               labels=["process"])
    now_ns = time.monotonic_ns()
    for name in heartbeats.names:
        age_ms = heartbeats.age_ms(name, now_ns)
        if age_ms is not None and heartbeats.pid(name):
            family.add_metric([name], age_ms / 1000)
    yield family


def _send_rt_histogram(p: Any) -> Any:
    counts = send_rt_counts(p)
    buckets, running = [], 0
    for bound_ms, count in zip((*SEND_RT_BUCKETS_MS, None), counts):
        running += count
        buckets.append(("+Inf" if bound_ms is None else repr(bound_ms / 1000), running))
    return HistogramMetricFamily("rmqd_send_rt_seconds", "Send response time (receipt to answer, front).",
                                 buckets=buckets, sum_value=p.send_rt_sum_us / 1_000_000)


def _lag_families(lags: list[QueueLag]) -> Iterator[Any]:
    per_queue = GaugeMetricFamily("rmqd_consumer_queue_lag_messages", "Max offset - committed offset.",
                                  labels=["group", "topic", "queue"])
    for item in lags:
        per_queue.add_metric([item.group, item.topic, str(item.queue_id)], item.lag)
    yield per_queue
    per_group = GaugeMetricFamily("rmqd_consumer_lag_messages",
                                  "Messages not yet consumed per group and topic.", labels=["group", "topic"])
    for (group, topic), lag in sorted(lag_by_group(lags).items()):
        per_group.add_metric([group, topic], lag)
    yield per_group


def _inspection_families(state: InspectionState) -> Iterator[Any]:
    probes = CounterMetricFamily("rmqd_inspect_probes", "Self-inspection probes by result.",
                                 labels=["result"])
    probes.add_metric(["ok"], state.probes_ok)
    probes.add_metric(["missed"], state.probes_missed)
    yield probes
    yield GaugeMetricFamily("rmqd_inspect_rt_seconds", "Send-to-receive time of the last successful probe.",
                            state.last_rt_s)
    yield GaugeMetricFamily("rmqd_inspect_last_success_timestamp_seconds", "When the last probe succeeded.",
                            state.last_ok_at_s)
