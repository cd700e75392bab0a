"""Metrics: the broker's Prometheus endpoint, its TPS sampler and its self-inspection probe.

Reads shm:   every position and counter, ring depths, heartbeats (nothing is written but its own)
Writes shm:  positions.rates (put/get TPS and flush latency, once a second), heartbeats[metrics]
Files:       config/consumerOffset.json and consumequeue/* read-only (per-group lag)
Network:     HTTP on brokerIP1:metricsPort (/metrics, Prometheus text format; metricsPort=0: off);
             a client of the broker's own front for the self-inspection probe
On crash:    restartable; it holds no state anyone else needs (rates restart from zero)

Once a second: sample the put/get counters (rmqd.ops.figures.RateSampler, RocketMQ's
StoreStatsService) and publish the rates in shm, so GET_BROKER_RUNTIME_INFO shows the same TPS.
Every LAG_INTERVAL_S: recompute per-group lag. Every selfInspectionInterval (60 s): in a
background thread, send a probe to SELF_TEST_TOPIC and receive it (rmqd.ops.inspect); its RT is a
metric and a log line, a miss a warning. The HTTP server is prometheus-client's, in its own
thread; the collector reads shm and snapshots this loop swaps in whole. A port already in use is
logged and retried every BIND_RETRY_S: the broker never stops over its metrics.
"""
from __future__ import annotations

import logging
import threading
import time

from prometheus_client import CollectorRegistry, start_http_server

from rmqd.client._remoting import RemotingClient
from rmqd.ops import figures, inspect
from rmqd.ops.metrics import BrokerCollector, FigureSource, InspectionState
from rmqd.store.consume_queue import ConsumeQueueStore
from workers.base import WorkerProcess, run_from_argv

log = logging.getLogger("rmqd.metrics")
SAMPLE_INTERVAL_S = 1.0
LAG_INTERVAL_S = 5.0
BIND_RETRY_S = 30.0
PROBE_TIMEOUT_S = 5.0
LAG_MAX_OPEN_QUEUES = 64


class Metrics(WorkerProcess):
    name = "metrics"

    def setup(self) -> None:
        cfg = self.cfg
        self.positions = self.shm.positions
        self.cq_store = ConsumeQueueStore(cfg.store_dir, cfg.mappedFileSizeConsumeQueue, readonly=True,
                                          max_open=LAG_MAX_OPEN_QUEUES)
        self.offsets_path = figures.consumer_offsets_path(cfg.config_dir)
        self.sampler = figures.RateSampler()
        self.source = FigureSource(self.shm)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(BrokerCollector(self.source))
        self.server = None
        self.broker_addr = f"{cfg.brokerIP1}:{cfg.listenPort}"
        self.probe_interval_s = cfg.selfInspectionInterval / 1000.0
        self.probe_thread: threading.Thread | None = None
        self.remoting: RemotingClient | None = None
        now = time.monotonic()
        self.next_bind = self.next_sample = self.next_lag = now
        self.next_probe = now + self.probe_interval_s
        self.maybe_serve(now)

    def run_once(self) -> bool:
        now = time.monotonic()
        self.maybe_serve(now)
        if now >= self.next_sample:
            self.next_sample = now + SAMPLE_INTERVAL_S
            self.sample_rates(now)
        if now >= self.next_lag:
            self.next_lag = now + LAG_INTERVAL_S
            offsets = figures.read_consumer_offsets(self.offsets_path)
            self.source.lags = figures.group_lags(offsets, self.cq_store)
        if self.probe_interval_s and now >= self.next_probe:
            self.next_probe = now + self.probe_interval_s
            self.start_probe()
        return False

    def idle_timeout(self) -> float:
        due = min(self.next_sample, self.next_lag)
        if self.probe_interval_s:
            due = min(due, self.next_probe)
        return max(0.01, min(due - time.monotonic(), SAMPLE_INTERVAL_S))

    # -- HTTP endpoint ---------------------------------------------------------------------------
    def maybe_serve(self, now: float) -> None:
        port = self.cfg.metricsPort
        if self.server is not None or not port or now < self.next_bind:
            return
        try:
            self.server, _thread = start_http_server(port, self.cfg.brokerIP1, self.registry)
        except OSError as exc:
            self.next_bind = now + BIND_RETRY_S
            log.error("cannot serve metrics on %s:%d (%s); retrying in %.0f s (metricsPort=0 turns it off)",
                      self.cfg.brokerIP1, port, exc, BIND_RETRY_S)
            return
        log.info("metrics on http://%s:%d/metrics", self.cfg.brokerIP1, port)

    # -- figures -----------------------------------------------------------------------------
    def sample_rates(self, now: float) -> None:
        p = self.positions
        self.sampler.sample(now, p.put_messages_total, p.pull_messages_total, p.flush_total,
                            p.flush_time_us_total)
        figures.publish_rates(p, self.sampler.rates())

    # -- self-inspection ---------------------------------------------------------------------
    def start_probe(self) -> None:
        if self.probe_thread is not None and self.probe_thread.is_alive():
            log.warning("self-inspection: the previous probe is still running; skipping this one")
            return
        if self.remoting is None:
            self.remoting = RemotingClient(name="rmqd-inspect")
        self.probe_thread = threading.Thread(target=self.probe_once, name="rmqd-inspect", daemon=True)
        self.probe_thread.start()

    def probe_once(self) -> None:
        timeout_s = min(PROBE_TIMEOUT_S, self.probe_interval_s)
        result = inspect.probe(self.remoting, self.broker_addr, timeout_s)
        before = self.source.inspection
        if result.ok:
            self.source.inspection = InspectionState(before.probes_ok + 1, before.probes_missed, result.rt_s,
                                                     time.time())
            log.info("self-inspection: probe to %s received in %.1f ms (send %.1f ms, queue offset %d)",
                     inspect.SELF_TEST_TOPIC, result.rt_s * 1000, result.send_rt_s * 1000,
                     result.queue_offset)
        else:
            self.source.inspection = InspectionState(before.probes_ok, before.probes_missed + 1,
                                                     before.last_rt_s, before.last_ok_at_s)
            log.warning("self-inspection: probe to %s on %s missed: %s", inspect.SELF_TEST_TOPIC,
                        self.broker_addr, result.error)

    def teardown(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        if self.probe_thread is not None:
            self.probe_thread.join(PROBE_TIMEOUT_S + 1)
        if self.remoting is not None:
            self.remoting.close()
        self.cq_store.close_all()


def main(argv: list[str] | None = None) -> int:
    return run_from_argv(Metrics, argv)


if __name__ == "__main__":
    raise SystemExit(main())
