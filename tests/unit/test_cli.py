"""`rmqd` and `mqadmin` command lines, driven in-process with typer's CliRunner.

The entry points the CLI calls (workers.supervisor, workers.namesrv, rmqd.store.verify,
rmqd.client.admin) are replaced by recording fakes in sys.modules: these tests check what the
CLI passes and prints, not the broker (the process tests do that).
"""
from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from cli.main import app as rmqd_app
from cli.mqadmin import app as mqadmin_app
from rmqd.config import BrokerConfig
from rmqd.errors import MQBrokerError
from rmqd.exit_codes import EXIT_CONFIG, EXIT_ERROR, EXIT_OK, EXIT_STORE_CORRUPT, EXIT_USAGE

runner = CliRunner()


def fake_module(monkeypatch: pytest.MonkeyPatch, name: str, **functions) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(functions)
    monkeypatch.setitem(sys.modules, name, module)
    return module


@pytest.fixture
def supervisor(monkeypatch: pytest.MonkeyPatch) -> dict:
    """A fake workers.supervisor; returns the dict where its functions record their arguments."""
    calls: dict = {}

    def run_broker(cfg: BrokerConfig, *, embedded_namesrv: bool, namesrv_port: int, daemon: bool) -> int:
        calls["run_broker"] = (cfg, embedded_namesrv, namesrv_port, daemon)
        return calls.get("exit_code", EXIT_OK)

    def stop_broker(store_dir: str, timeout_s: float) -> int:
        calls["stop_broker"] = (store_dir, timeout_s)
        return EXIT_OK

    def broker_status(store_dir: str) -> dict:
        calls["broker_status"] = store_dir
        return calls["status"]

    fake_module(monkeypatch, "workers.supervisor", run_broker=run_broker, stop_broker=stop_broker,
                broker_status=broker_status)
    return calls


# ---------------------------------------------------------------- help

def test_rmqd_help_lists_every_command() -> None:
    result = runner.invoke(rmqd_app, ["--help"])
    assert result.exit_code == 0
    for command in ("start", "stop", "status", "namesrv", "broker", "inspect", "verify"):
        assert command in result.output


def test_mqadmin_help_lists_rocketmq_command_names() -> None:
    result = runner.invoke(mqadmin_app, ["--help"])
    assert result.exit_code == 0
    for command in ("updateTopic", "topicList", "topicRoute", "topicStatus", "clusterList",
                    "consumerProgress", "wipeWritePerm", "addWritePerm"):
        assert command in result.output


def test_python_dash_m_cli_main_runs_the_app() -> None:
    done = subprocess.run([sys.executable, "-m", "cli.main", "--help"], capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0 and "start" in done.stdout


# ---------------------------------------------------------------- start / broker

def test_config_errors_exit_7_with_one_line_per_problem(tmp_path: Path, supervisor: dict) -> None:
    conf = tmp_path / "broker.conf"
    conf.write_text("flushDiskTyp=SYNC_FLUSH\nlistenPort=x\n")
    result = runner.invoke(rmqd_app, ["start", "-c", str(conf), "--flush", "FAST"])
    assert result.exit_code == EXIT_CONFIG
    problems = [line for line in result.output.splitlines() if line.startswith("rmqd: config error:")]
    assert len(problems) == 3
    assert "did you mean 'flushDiskType'?" in problems[0]
    assert "FAST" in problems[2] and "ASYNC_FLUSH or SYNC_FLUSH" in problems[2]
    assert "run_broker" not in supervisor


def test_property_without_equals_sign_is_a_usage_error(supervisor: dict) -> None:
    result = runner.invoke(rmqd_app, ["start", "-p", "listenPort"])
    assert result.exit_code == EXIT_USAGE
    assert "KEY=VALUE" in result.output


def test_start_embeds_a_namesrv_and_named_flags_win(tmp_path: Path, supervisor: dict) -> None:
    conf = tmp_path / "broker.conf"
    conf.write_text("listenPort=10001\nbrokerName=from-file\ndefaultTopicQueueNums=2\n")
    supervisor["exit_code"] = 3
    result = runner.invoke(rmqd_app, [
        "start", "-c", str(conf), "--store-dir", str(tmp_path / "s"), "--port", "10002",
        "--namesrv-port", "9999", "--flush", "SYNC_FLUSH",
        "-p", "listenPort=10003", "-p", "defaultTopicQueueNums=4",
    ])
    assert result.exit_code == 3, result.output
    cfg, embedded, namesrv_port, daemon = supervisor["run_broker"]
    assert (embedded, namesrv_port, daemon) == (True, 9999, False)
    assert cfg.namesrvAddr == "127.0.0.1:9999"
    assert (cfg.listenPort, cfg.brokerName, cfg.defaultTopicQueueNums) == (10002, "from-file", 4)
    assert cfg.flushDiskType == "SYNC_FLUSH"
    assert cfg.store_dir == str(tmp_path / "s")


def test_start_with_namesrv_uses_it_and_embeds_none(supervisor: dict) -> None:
    result = runner.invoke(rmqd_app, ["start", "--namesrv", "10.0.0.1:9876", "--daemon"])
    assert result.exit_code == EXIT_OK, result.output
    cfg, embedded, _, daemon = supervisor["run_broker"]
    assert (embedded, daemon, cfg.namesrvAddr) == (False, True, "10.0.0.1:9876")


def test_start_says_when_the_embedded_namesrv_replaces_a_configured_one(supervisor: dict) -> None:
    result = runner.invoke(rmqd_app, ["start", "-p", "namesrvAddr=10.0.0.5:9876"])
    assert result.exit_code == EXIT_OK, result.output
    assert supervisor["run_broker"][0].namesrvAddr == "127.0.0.1:9876"
    assert "namesrvAddr=10.0.0.5:9876 is replaced by the embedded namesrv 127.0.0.1:9876" in result.output


def test_broker_never_embeds_a_namesrv(supervisor: dict) -> None:
    result = runner.invoke(rmqd_app, ["broker", "-p", "namesrvAddr=10.0.0.2:9876"])
    assert result.exit_code == EXIT_OK, result.output
    cfg, embedded, _, _ = supervisor["run_broker"]
    assert (embedded, cfg.namesrvAddr) == (False, "10.0.0.2:9876")


# ---------------------------------------------------------------- stop / status / namesrv / verify

def test_stop_passes_the_absolute_store_dir_and_timeout(tmp_path: Path, supervisor: dict,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(rmqd_app, ["stop", "--store-dir", "relative", "--timeout", "7"])
    assert result.exit_code == EXIT_OK
    assert supervisor["stop_broker"] == (str(tmp_path / "relative"), 7.0)


STATUS = {
    "supervisor_pid": 4242, "running": True,
    "processes": [{"name": "writer", "pid": 4243, "state": "running", "alive": True, "restarts": 0,
                   "last_beat_age_ms": 12}],
    "positions": {"write_pos": 1024, "flush_pos": 512},
    "rings": {"request": 0},
}


def test_status_prints_tables_and_exits_zero_when_running(supervisor: dict) -> None:
    supervisor["status"] = STATUS
    result = runner.invoke(rmqd_app, ["status", "--store-dir", "/tmp/rmqd-x"])
    assert result.exit_code == EXIT_OK
    assert supervisor["broker_status"] == "/tmp/rmqd-x"
    lines = result.output.splitlines()
    assert any(line.split()[:3] == ["writer", "4243", "running"] for line in lines)
    assert any(line.split() == ["write_pos", "1024"] for line in lines)


def test_status_json_and_exit_1_when_not_running(supervisor: dict) -> None:
    supervisor["status"] = dict(STATUS, running=False, processes=[])
    result = runner.invoke(rmqd_app, ["status", "--json"])
    assert result.exit_code == EXIT_ERROR
    assert orjson.loads(result.output)["positions"] == {"write_pos": 1024, "flush_pos": 512}


def test_namesrv_passes_host_port_and_namesrv_conf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []

    def main(listen_addr: str, **timing: int) -> int:
        seen.append((listen_addr, timing))
        return EXIT_OK

    fake_module(monkeypatch, "workers.namesrv", main=main)
    conf = tmp_path / "namesrv.conf"
    conf.write_text("listenPort=9000\nscanNotActiveBrokerInterval=2000\n")
    result = runner.invoke(rmqd_app, ["namesrv", "-c", str(conf), "--port", "9999", "--host", "0.0.0.0"])
    assert result.exit_code == EXIT_OK
    assert seen == [("0.0.0.0:9999", {"scan_interval_ms": 2000, "broker_expiry_ms": 120_000})]


def test_verify_reports_problems_and_exits_4(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_module(monkeypatch, "rmqd.store.verify", verify_store=lambda store_dir: [f"{store_dir}/x: torn"])
    result = runner.invoke(rmqd_app, ["verify", "--store-dir", str(tmp_path)])
    assert result.exit_code == EXIT_STORE_CORRUPT
    assert f"{tmp_path}/x: torn" in result.output


def test_verify_of_a_clean_store_exits_zero(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_module(monkeypatch, "rmqd.store.verify", verify_store=lambda store_dir: [])
    result = runner.invoke(rmqd_app, ["verify", "--store-dir", str(tmp_path)])
    assert result.exit_code == EXIT_OK and "clean" in result.output


# ---------------------------------------------------------------- inspect

def write_commitlog(path: Path, bodies: list[bytes], file_size: int = 4096) -> list[int]:
    """A CommitLog file with one record per body; returns each record's file position."""
    record = pytest.importorskip("rmqd.store.record")
    host = record.encode_host("127.0.0.1", 10911)
    buf = bytearray(file_size)
    positions, file_pos = [], 0
    for queue_offset, body in enumerate(bodies):
        positions.append(file_pos)
        file_pos += record.encode_record(
            buf, file_pos, topic=b"Orders", queue_id=1, body=body,
            properties=record.encode_properties({"TAGS": "TagA", "KEYS": f"order-{queue_offset}"}),
            born_timestamp_ms=1_700_000_000_000, born_host=host, store_host=host,
            queue_offset=queue_offset, phy_offset=file_pos, store_timestamp_ms=1_700_000_000_123)
    path.write_bytes(bytes(buf))
    return positions


def test_inspect_commitlog_prints_every_record(tmp_path: Path) -> None:
    path = tmp_path / "00000000000000000000"
    write_commitlog(path, [b"hello", b"world"])
    result = runner.invoke(rmqd_app, ["inspect", "commitlog", str(path), "--json"])
    assert result.exit_code == EXIT_OK, result.output
    rows = orjson.loads(result.output)
    assert [(row["topic"], row["queue_offset"], row["keys"], row["body_preview"]) for row in rows] == [
        ("Orders", 0, "order-0", "hello"), ("Orders", 1, "order-1", "world")]


def test_inspect_commitlog_reports_a_corrupt_record_with_file_and_position(tmp_path: Path) -> None:
    path = tmp_path / "00000000000000000000"
    positions = write_commitlog(path, [b"hello", b"world"])
    data = bytearray(path.read_bytes())
    data[positions[1] + 88] ^= 0xFF  # first body byte of the second record: BODYCRC no longer matches
    path.write_bytes(bytes(data))
    result = runner.invoke(rmqd_app, ["inspect", "commitlog", str(path)])
    assert result.exit_code == EXIT_STORE_CORRUPT
    assert "Orders" in result.output  # the good first record is still printed
    assert str(path) in result.output and "BODYCRC" in result.output and str(positions[1]) in result.output


def test_inspect_consumequeue_stops_at_the_first_zero_unit(tmp_path: Path) -> None:
    consume_queue = pytest.importorskip("rmqd.store.consume_queue")
    path = tmp_path / f"{40:020d}"  # file starting at byte 40 = queue offset 2
    path.write_bytes(consume_queue.CQ_UNIT.pack(100, 50, 7) + consume_queue.CQ_UNIT.pack(150, 60, 8)
                     + bytes(consume_queue.CQ_UNIT_SIZE * 3))
    result = runner.invoke(rmqd_app, ["inspect", "consumequeue", str(path), "--json"])
    assert result.exit_code == EXIT_OK, result.output
    assert orjson.loads(result.output) == [
        {"queue_offset": 2, "phy_offset": 100, "size": 50, "tags_hash": 7},
        {"queue_offset": 3, "phy_offset": 150, "size": 60, "tags_hash": 8},
    ]


def test_inspect_of_a_missing_path_is_a_usage_error(tmp_path: Path) -> None:
    result = runner.invoke(rmqd_app, ["inspect", "commitlog", str(tmp_path / "absent")])
    assert result.exit_code == EXIT_USAGE and "no such file" in result.output


# ---------------------------------------------------------------- mqadmin

@pytest.fixture
def admin(monkeypatch: pytest.MonkeyPatch) -> list:
    """A fake rmqd.client.admin.MQAdmin; returns the list of calls it recorded."""
    calls: list = []

    class FakeMQAdmin:
        def __init__(self, namesrv: str) -> None:
            calls.append(("namesrv", namesrv))

        def start(self) -> None:
            calls.append(("start",))

        def shutdown(self) -> None:
            calls.append(("shutdown",))

        def create_topic(self, topic, read_nums, write_nums, perm, cluster=None, broker_addr=None) -> None:
            calls.append(("create_topic", topic, read_nums, write_nums, perm, cluster, broker_addr))

        def topic_list(self) -> list[str]:
            return ["Orders", "TBW102"]

        def wipe_write_perm(self, broker_name: str) -> int:
            raise MQBrokerError(17, f"broker {broker_name} unknown")

    fake_module(monkeypatch, "rmqd.client.admin", MQAdmin=FakeMQAdmin)
    return calls


def test_mqadmin_update_topic_passes_rocketmq_flags(admin: list) -> None:
    result = runner.invoke(mqadmin_app, ["updateTopic", "-n", "10.0.0.1:9876", "-c", "DefaultCluster",
                                         "-t", "Orders", "-r", "4", "-w", "4", "-p", "6"])
    assert result.exit_code == EXIT_OK, result.output
    assert admin == [("namesrv", "10.0.0.1:9876"), ("start",),
                     ("create_topic", "Orders", 4, 4, 6, "DefaultCluster", None), ("shutdown",)]


def test_mqadmin_update_topic_needs_a_cluster_or_a_broker(admin: list) -> None:
    result = runner.invoke(mqadmin_app, ["updateTopic", "-t", "Orders"])
    assert result.exit_code == EXIT_USAGE and "-c CLUSTER" in result.output
    assert admin == []


def test_mqadmin_namesrv_defaults_to_the_environment(admin: list, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NAMESRV_ADDR", "10.9.9.9:9876")
    result = runner.invoke(mqadmin_app, ["topicList"])
    assert result.exit_code == EXIT_OK
    assert admin[0] == ("namesrv", "10.9.9.9:9876")
    assert result.output.split() == ["VALUE", "Orders", "TBW102"]


def test_mqadmin_prints_the_broker_remark_and_exits_1(admin: list) -> None:
    result = runner.invoke(mqadmin_app, ["wipeWritePerm", "-b", "broker-z"])
    assert result.exit_code == EXIT_ERROR
    assert "mqadmin: broker broker-z unknown" in result.output
    assert admin[-1] == ("shutdown",)
