"""Figures and the Prometheus side: TPS windows, the send RT histogram, lags, the collector, the
metrics process's endpoint and its self-inspection probe, without starting a broker."""
from __future__ import annotations

import dataclasses
import logging
import os
import socket
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from rmqd.broker.consumer_offsets import ConsumerOffsetManager
from rmqd.client._remoting import RemotingClient
from rmqd.ops import figures, inspect
from rmqd.ops.metrics import BrokerCollector, FigureSource, InspectionState
from rmqd.store.consume_queue import ConsumeQueueStore
from tests.helpers import free_port, wait_until
from tests.unit.ops.conftest import fill_store
from workers.metrics import Metrics


def test_tps_is_measured_over_each_window_from_counter_samples() -> None:
    sampler = figures.RateSampler()
    for second in range(121):  # 50 msg/s for the first minute, 200 msg/s after
        put = 50 * min(second, 60) + 200 * max(0, second - 60)
        sampler.sample(float(second), put, 10 * second, flush_total=second, flush_time_us=250 * second)
    rates = sampler.rates(sampled_at_ms=123)
    assert rates.put_tps[0] == pytest.approx(200.0)            # last 10 s
    assert rates.put_tps[1] == pytest.approx(200.0)            # last minute
    assert rates.put_tps[2] == pytest.approx(125.0)            # all 120 s seen so far
    assert rates.get_tps == pytest.approx((10.0, 10.0, 10.0))
    assert rates.flush_latency_s == pytest.approx(250e-6)
    assert rates.sampled_at_ms == 123


def test_the_sampler_keeps_only_the_longest_window_of_samples() -> None:
    sampler = figures.RateSampler()
    for second in range(3000):
        sampler.sample(float(second), second, 0, 0, 0)
    assert len(sampler._samples) <= max(figures.RATE_WINDOWS_S) + 2
    assert sampler.rates().put_tps == pytest.approx((1.0, 1.0, 1.0))


def test_rates_published_in_shm_read_back_the_same(ops_shm) -> None:
    rates = figures.Rates((1.5, 2.25, 3.0), (4.0, 0.5, 0.0), 0.000321, 1_700_000_000_123)
    figures.publish_rates(ops_shm.positions, rates)
    assert figures.read_rates(ops_shm.positions) == rates


def test_the_send_rt_histogram_counts_each_send_in_its_bucket(ops_shm) -> None:
    recorder = figures.SendRtRecorder(ops_shm.positions)
    for seconds in (0.0004, 0.001, 0.0015, 0.003, 0.04, 0.7):
        recorder.observe(seconds)
    assert figures.send_rt_counts(ops_shm.positions) == [0] * 8  # published once per round
    recorder.publish()
    assert figures.send_rt_counts(ops_shm.positions) == [2, 1, 1, 0, 1, 0, 0, 1]
    assert ops_shm.positions.send_rt_sum_us == 400 + 1000 + 1500 + 3000 + 40_000 + 700_000
    assert figures.describe_send_rt([2, 1, 1, 0, 1, 0, 0, 1]) == (
        "[<=1ms]:2 [1~2ms]:1 [2~5ms]:1 [5~10ms]:0 [10~50ms]:1 [50~100ms]:0 [100~500ms]:0 [500ms~]:1")


def test_group_lag_compares_committed_offsets_with_the_queue_max_offset(small_config) -> None:
    cfg = small_config
    fill_store(cfg, "Orders", 120)
    os.makedirs(cfg.config_dir, exist_ok=True)
    offsets = ConsumerOffsetManager(figures.consumer_offsets_path(cfg.config_dir))
    offsets.commit("billing", "Orders", 0, 100)
    offsets.commit("audit", "Orders", 0, 7)
    offsets.persist()
    cq_store = ConsumeQueueStore(cfg.store_dir, cfg.mappedFileSizeConsumeQueue, readonly=True)
    lags = figures.group_lags(figures.read_consumer_offsets(figures.consumer_offsets_path(cfg.config_dir)),
                              cq_store)
    cq_store.close_all()
    assert [(q.group, q.topic, q.queue_id, q.consumer_offset, q.max_offset) for q in lags] == [
        ("audit", "Orders", 0, 7, 120), ("billing", "Orders", 0, 100, 120)]
    assert figures.lag_by_group(lags) == {("audit", "Orders"): 113, ("billing", "Orders"): 20}


def scrape_text(source: FigureSource) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BrokerCollector(source))
    return generate_latest(registry).decode()


def test_the_collector_exposes_every_figure_in_prometheus_text(ops_shm) -> None:
    p = ops_shm.positions
    p.set_write_pos(10_000)
    p.set_dispatch_pos(9_000)
    p.set_flush_pos(8_000)
    p.set_put_messages_total(42)
    p.set_disk_used_ppm(250_000)
    recorder = figures.SendRtRecorder(p)
    recorder.observe(0.0015)
    recorder.publish()
    figures.publish_rates(p, figures.Rates((5.0, 4.0, 3.0), (1.0, 1.0, 1.0), 0.002, 1))
    ops_shm.rings["request"].reserve(64)
    ops_shm.rings["request"].commit(0)
    ops_shm.rings["request"].publish()
    lags = [figures.QueueLag("billing", "Orders", 0, 10, 25), figures.QueueLag("billing", "Orders", 1, 5, 5)]
    text = scrape_text(FigureSource(ops_shm, lags, InspectionState(3, 1, 0.012, 1.0)))
    for line in (
        "rmqd_put_messages_total 42.0", 'rmqd_put_tps{window="10s"} 5.0', 'rmqd_get_tps{window="10m"} 1.0',
        "rmqd_flush_latency_seconds 0.002", "rmqd_dispatch_lag_bytes 1000.0", "rmqd_flush_lag_bytes 2000.0",
        'rmqd_ring_depth_bytes{ring="request"} 72.0', "rmqd_disk_used_ratio 0.25", "rmqd_store_writable 1.0",
        'rmqd_send_rt_seconds_bucket{le="0.001"} 0.0', 'rmqd_send_rt_seconds_bucket{le="0.002"} 1.0',
        'rmqd_send_rt_seconds_bucket{le="+Inf"} 1.0', "rmqd_send_rt_seconds_count 1.0",
        'rmqd_consumer_queue_lag_messages{group="billing",queue="0",topic="Orders"} 15.0',
        'rmqd_consumer_lag_messages{group="billing",topic="Orders"} 15.0',
        'rmqd_inspect_probes_total{result="ok"} 3.0', 'rmqd_inspect_probes_total{result="missed"} 1.0',
        "rmqd_inspect_rt_seconds 0.012",
    ):
        assert line in text, line


def test_runtime_figures_give_the_same_numbers_rocketmq_style(ops_shm) -> None:
    p = ops_shm.positions
    figures.publish_rates(p, figures.Rates((5.0, 4.0, 3.0), (1.0, 0.5, 0.25), 0.002, 1))
    p.set_write_pos(300)
    p.set_dispatch_pos(100)
    table = figures.runtime_figures(ops_shm)
    assert table["putTps"] == "5.0 4.0 3.0" and table["getTransferedTps"] == "1.0 0.5 0.2"
    assert table["dispatchBehindBytes"] == "200" and table["flushLatencyMs"] == "2.000"
    assert table["storeWritable"] == "true" and table["ring.request.depthBytes"] == "0"


@pytest.fixture
def metrics_worker(small_config, ops_shm):
    def make(port: int, **overrides) -> Metrics:
        cfg = dataclasses.replace(small_config, metricsPort=port, selfInspectionInterval=0, **overrides)
        worker = Metrics(cfg, ops_shm)
        worker.setup()
        made.append(worker)
        return worker

    made: list[Metrics] = []
    yield make
    for worker in made:
        worker.teardown()


def scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def test_a_busy_metrics_port_is_logged_and_retried_not_fatal(metrics_worker, caplog) -> None:
    port = free_port()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        with caplog.at_level(logging.ERROR, logger="rmqd.metrics"):
            worker = metrics_worker(port)
        assert worker.server is None and "cannot serve metrics" in caplog.text
    worker.next_bind = 0.0
    worker.run_once()
    assert worker.server is not None
    assert "rmqd_put_messages_total" in wait_until(lambda: scrape(port), 10, "the metrics endpoint")


def test_metrics_port_zero_turns_the_endpoint_off(metrics_worker) -> None:
    worker = metrics_worker(0)
    worker.run_once()
    assert worker.server is None


def test_a_missed_probe_is_counted_and_logged_as_a_warning(metrics_worker, caplog) -> None:
    worker = metrics_worker(0)
    worker.broker_addr = f"127.0.0.1:{free_port()}"  # nothing listens there
    worker.probe_interval_s = 0.3
    worker.remoting = RemotingClient(name="test-inspect")
    with caplog.at_level(logging.WARNING, logger="rmqd.metrics"):
        worker.probe_once()
    assert worker.source.inspection.probes_missed == 1 and worker.source.inspection.probes_ok == 0
    assert "self-inspection: probe to SELF_TEST_TOPIC" in caplog.text and "missed" in caplog.text


def test_the_probe_reports_why_it_failed() -> None:
    remoting = RemotingClient(name="test-probe")
    try:
        result = inspect.probe(remoting, f"127.0.0.1:{free_port()}", timeout_s=0.2)
    finally:
        remoting.close()
    assert result.ok is False and result.error.startswith("send failed")
