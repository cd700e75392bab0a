"""Operations on a real broker tree: the metrics endpoint under load, mqadmin's figures, the
self-inspection probe, and `mqadmin deleteExpiredCommitLog` with what must follow a deletion
(pulls below the min offset get OFFSET_MOVED, every process unmaps the deleted files)."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from rmqd.client import LitePullConsumer, Message, Producer
from rmqd.client._remoting import RemotingClient
from rmqd.client.admin import MQAdmin
from rmqd.protocol import RequestCode, ResponseCode
from rmqd.store.record import decode_record
from tests.broker_harness import REPO_ROOT, BrokerTree
from tests.helpers import free_port, wait_until

pytestmark = pytest.mark.process

Samples = dict[tuple[str, frozenset], float]


def scrape(port: int) -> Samples:
    """Every sample of the endpoint, keyed by (name, labels); {} while it does not answer."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return {}
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), float("nan"))


def pull(remoting: RemotingClient, addr: str, topic: str, queue_offset: int, max_count: int = 32):
    """One PULL_MESSAGE on queue 0 without holding: (response, bodies)."""
    fields = {"consumerGroup": "ops-check", "topic": topic, "queueId": 0, "queueOffset": queue_offset,
              "maxMsgNums": max_count, "sysFlag": 0, "commitOffset": 0, "suspendTimeoutMillis": 0,
              "subscription": "*"}
    response = remoting.invoke(addr, RequestCode.PULL_MESSAGE, fields, timeout_ms=5000)
    bodies, pos, view = [], 0, memoryview(response.body)
    while response.code == ResponseCode.SUCCESS and pos < len(view):
        record = decode_record(view, pos)
        bodies.append(record.body)
        pos += record.total_size
    return response, bodies


def read_queue(addr: str, topic: str, start: int = 0, limit: int = 100_000) -> list[bytes]:
    """Every body of queue 0 of `topic` from `start` to its end."""
    remoting = RemotingClient(name="ops-reader")
    got: list[bytes] = []
    offset = start
    try:
        while len(got) < limit:
            response, bodies = pull(remoting, addr, topic, offset)
            if response.code != ResponseCode.SUCCESS:
                break
            got += bodies
            offset = response.field_int("nextBeginOffset")
    finally:
        remoting.close()
    return got


def read_queue_following_moves(addr: str, topic: str, start: int) -> tuple[int, list[bytes]]:
    """(where reading began, bodies to the end), following OFFSET_MOVED while the cleaner deletes."""
    remoting = RemotingClient(name="ops-reader")
    try:
        for _ in range(100):  # each move skips at least one deleted file; bounded
            response, _bodies = pull(remoting, addr, topic, start)
            if response.code == ResponseCode.PULL_OFFSET_MOVED:
                start = response.field_int("nextBeginOffset")
                continue
            kept = read_queue(addr, topic, start=start)
            if kept:  # empty: the file at `start` went between the two pulls; follow again
                return start, kept
    finally:
        remoting.close()
    return start, []


def send_bodies(producer: Producer, topic: str, bodies: list[bytes]) -> None:
    for body in bodies:
        producer.send(Message(topic, body))


def test_metrics_move_under_load_and_mqadmin_shows_the_same_figures(tmp_path: Path) -> None:
    port = free_port()
    tree = BrokerTree(tmp_path / "store", properties={
        "metricsPort": port, "selfInspectionInterval": 1000, "flushConsumerOffsetInterval": 500})
    producer = Producer("ops-load", namesrv=None)
    try:
        tree.start()
        before = wait_until(lambda: scrape(port), 20, "the metrics endpoint")
        producer = Producer("ops-load", namesrv=tree.namesrv_addr)
        producer.start()
        # The loader goes on until the test has seen the counters move twice while it runs, so
        # "during" is a scrape taken under load however fast the sends are (bounded: 60 s, 200,000)
        stop, sent = threading.Event(), [0]

        def load() -> None:
            deadline = time.monotonic() + 60
            while not stop.is_set() and sent[0] < 200_000 and time.monotonic() < deadline:
                producer.send(Message("OpsLoad", b"m" * 200))
                sent[0] += 1

        loader = threading.Thread(target=load)
        loader.start()
        try:
            during = wait_until(lambda: (s := scrape(port))
                                and value(s, "rmqd_put_tps", window="10s") > 0 and s,
                                30, "a put rate above zero")
            later = wait_until(lambda: (s := scrape(port)) and value(s, "rmqd_put_bytes_total")
                               > value(during, "rmqd_put_bytes_total") and s, 30, "put bytes still growing")
            assert loader.is_alive(), "the loader stopped before the counters were seen moving under load"
        finally:
            stop.set()
            loader.join(60)
        assert not loader.is_alive()
        total = sent[0]
        after = wait_until(lambda: (s := scrape(port))
                           and value(s, "rmqd_put_messages_total") >= total
                           and value(s, "rmqd_inspect_probes_total", result="ok") >= 1 and s,
                           30, "every put counted and a probe received")
        assert value(during, "rmqd_put_messages_total") > value(before, "rmqd_put_messages_total")
        assert value(after, "rmqd_put_bytes_total") >= value(later, "rmqd_put_bytes_total") \
            > value(during, "rmqd_put_bytes_total")
        assert value(after, "rmqd_position_bytes", position="write_pos") > 200 * total
        assert value(after, "rmqd_flushes_total") > value(before, "rmqd_flushes_total")
        assert value(after, "rmqd_flush_seconds_total") > 0
        assert value(after, "rmqd_dispatch_lag_bytes") >= 0 and value(after, "rmqd_disk_used_ratio") > 0
        assert value(after, "rmqd_ring_depth_bytes", ring="request") >= 0
        assert value(after, "rmqd_inspect_rt_seconds") > 0
        assert value(after, "rmqd_store_writable") == 1
        assert "self-inspection: probe to SELF_TEST_TOPIC received" in tree.output()

        # A consumer group takes part of the topic: its lag shows in the endpoint and in statsAll
        consumer = LitePullConsumer("ops-group", namesrv=tree.namesrv_addr, auto_commit=False)
        consumer.subscribe("OpsLoad", "*")
        consumer.start()
        consumed = 0
        deadline = time.monotonic() + 30
        while consumed < 1000 and time.monotonic() < deadline:
            consumed += len(consumer.poll(timeout_ms=1000))
        consumer.commit()
        consumer.shutdown()
        lag = total - consumed
        lagged = wait_until(lambda: (s := scrape(port)) and value(
            s, "rmqd_consumer_lag_messages", group="ops-group", topic="OpsLoad") == lag and s,
            30, f"a lag of {lag} for ops-group")
        assert value(lagged, "rmqd_get_messages_total") >= consumed

        with MQAdmin(tree.namesrv_addr) as admin:
            (table,) = admin.broker_status().values()
            assert int(table["putMessageTimesTotal"]) >= total
            assert [float(x) for x in table["putTps"].split()][2] > 0  # the 10-minute window still sees it
            assert "putMessageDistributeTime" in table and table["storeWritable"] == "true"
            (row,) = admin.cluster_stats()
            assert row["addr"] == tree.broker_addr and row["writable"] == "true"
            stats = {(r["topic"], r["group"]): r for r in admin.stats_all()}
            assert stats[("OpsLoad", "ops-group")]["accumulation"] == lag
            assert stats[("OpsLoad", "ops-group")]["messages"] == total
        assert "rmqd_heartbeat_age_seconds" in {name for name, _labels in after}
        assert "metrics" in tree.pids()
    finally:
        producer.shutdown()
        tree.stop()
        tree.cleanup()


def mapped_deleted_files(pids: list[int], directory: str) -> list[str]:
    """Lines of /proc/PID/maps naming a deleted file under `directory`, for every pid."""
    found = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/maps") as maps:
                found += [f"{pid}: {line.strip()}" for line in maps
                          if directory in line and "(deleted)" in line]
        except FileNotFoundError:
            continue
    return found


def test_delete_expired_commitlog_by_hand_moves_pulls_and_frees_every_mapping(tmp_path: Path) -> None:
    not_now = f"{(time.localtime().tm_hour + 12) % 24:02d}"
    tree = BrokerTree(tmp_path / "store", properties={
        "mappedFileSizeCommitLog": 64 * 1024, "mappedFileSizeConsumeQueue": 100 * 20, "fileReservedTime": 1,
        "deleteWhen": not_now, "cleanResourceInterval": 500, "metricsPort": 0})
    producer = Producer("ops-old", namesrv=None)
    try:
        tree.start()
        with MQAdmin(tree.namesrv_addr) as admin:
            admin.create_topic("Old", 1, 1, broker_addr=tree.broker_addr)
        producer = Producer("ops-old", namesrv=tree.namesrv_addr)
        producer.start()
        bodies = [f"old-{i:05d}".encode() * 50 for i in range(1000)]  # 500 B each: ~10 files of 64 KiB
        send_bodies(producer, "Old", bodies)
        commitlog = os.path.join(tree.store_dir, "commitlog")
        before = sorted(os.listdir(commitlog))
        assert len(before) >= 8
        two_hours_ago = time.time() - 2 * 3600
        for name in before:
            os.utime(os.path.join(commitlog, name), (two_hours_ago, two_hours_ago))
        # Nothing goes by itself: not the deleteWhen hour, the disk is not full
        assert read_queue(tree.broker_addr, "Old", limit=64)[:1] == bodies[:1]
        done = subprocess.run([sys.executable, "-m", "cli.mqadmin", "deleteExpiredCommitLog", "-n",
                               tree.namesrv_addr], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        wait_until(lambda: len(os.listdir(commitlog)) <= 3, 30, "the expired CommitLog files to go")
        # A pull below the new min offset is told where to go on, and from there everything is intact
        remoting = RemotingClient(name="ops-check")
        try:
            moved = wait_until(lambda: (r := pull(remoting, tree.broker_addr, "Old", 0)[0]).code
                               == ResponseCode.PULL_OFFSET_MOVED and r, 10, "OFFSET_MOVED for offset 0")
        finally:
            remoting.close()
        first_kept = moved.field_int("nextBeginOffset")
        assert 0 < first_kept < len(bodies)
        # The pass may still be deleting (10 files a pass, 100 ms apart): follow the min offset.
        start, kept = read_queue_following_moves(tree.broker_addr, "Old", first_kept)
        assert first_kept <= start < len(bodies)
        assert kept == bodies[start:]
        queue_dir = os.path.join(tree.store_dir, "consumequeue", "Old", "0")
        wait_until(lambda: len(os.listdir(queue_dir)) < 10, 10, "the ConsumeQueue files below the min to go")
        # Every broker process has dropped its mappings of the deleted files (their blocks are free)
        pids = [pid for name, pid in tree.pids().items() if name not in ("supervisor", "namesrv")]
        assert wait_until(lambda: not mapped_deleted_files(pids, tree.store_dir), 15,
                          "no process to map a deleted store file")
        assert "manual request (deleteExpiredCommitLog)" in tree.output()
    finally:
        producer.shutdown()
        tree.stop()
        tree.cleanup()
