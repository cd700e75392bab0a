"""BrokerConfig / NamesrvConfig: RocketMQ's defaults, .properties parsing, overrides, error reports."""
from __future__ import annotations

import ast
import dataclasses
import inspect
import os
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rmqd import config as config_module
from rmqd.config import GIB, KIB, MIB, BrokerConfig, NamesrvConfig, parse_properties
from rmqd.errors import ConfigError
from rmqd.store.mapped_file import Warm

# Values from RocketMQ 4.x: store/.../config/MessageStoreConfig.java, common/.../BrokerConfig.java,
# broker/.../BrokerStartup.java (listenPort 10911). fileReservedTime is 48 by rmqd's SPEC (RocketMQ: 72).
ROCKETMQ_DEFAULTS = {
    "brokerClusterName": "DefaultCluster",
    "brokerId": 0,
    "brokerRole": "ASYNC_MASTER",
    "listenPort": 10911,
    "brokerPermission": 6,
    "registerNameServerPeriod": 30_000,
    "mappedFileSizeCommitLog": 1 * GIB,
    "mappedFileSizeConsumeQueue": 300_000 * 20,
    "maxMessageSize": 4 * MIB,
    "messageIndexEnable": True,
    "maxHashSlotNum": 5_000_000,
    "maxIndexNum": 20_000_000,
    "flushDiskType": "ASYNC_FLUSH",
    "flushIntervalCommitLog": 500,
    "flushCommitLogLeastPages": 4,
    "flushCommitLogThoroughInterval": 10_000,
    "flushIntervalConsumeQueue": 1000,
    "flushConsumeQueueLeastPages": 2,
    "flushConsumeQueueThoroughInterval": 60_000,
    "syncFlushTimeout": 5000,
    "deleteWhen": "04",
    "fileReservedTime": 48,
    "cleanResourceInterval": 10_000,
    "diskMaxUsedSpaceRatio": 75,
    "diskSpaceCleanForciblyRatio": 85,
    "diskSpaceWarningLevelRatio": 90,
    "cleanFileForciblyEnable": True,
    "autoCreateTopicEnable": True,
    "autoCreateSubscriptionGroup": True,
    "defaultTopicQueueNums": 8,
    "waitTimeMillsInSendQueue": 200,
    "longPollingEnable": True,
    "shortPollingTimeMills": 1000,
    "maxTransferCountOnMessageInMemory": 32,
    "maxTransferBytesOnMessageInMemory": 256 * KIB,
    "flushConsumerOffsetInterval": 5000,
    "messageDelayLevel": "1s 5s 10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m 20m 30m 1h 2h",
}


def write_conf(tmp_path: Path, text: str, name: str = "broker.conf") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_error(*args, **kwargs) -> list[str]:
    """The problems ConfigError reports, one per line."""
    with pytest.raises(ConfigError) as caught:
        BrokerConfig.load(*args, **kwargs)
    return str(caught.value).splitlines()


# ---------------------------------------------------------------- defaults

@pytest.mark.parametrize(("key", "expected"), sorted(ROCKETMQ_DEFAULTS.items()))
def test_default_matches_rocketmq(key: str, expected: object) -> None:
    assert getattr(BrokerConfig(), key) == expected


def test_rmqd_only_keys_have_their_documented_defaults() -> None:
    cfg = BrokerConfig()
    assert (cfg.namesrvAddr, cfg.brokerIP1, cfg.brokerName, cfg.namesrvListenPort) == (
        "127.0.0.1:9876", "127.0.0.1", "broker-a", 9876)
    rings = (cfg.shmRequestRingBytes, cfg.shmAckRingBytes, cfg.shmSmallRingBytes)
    assert rings == (64 * MIB, 4 * MIB, 1 * MIB)
    assert cfg.heartbeatTimeoutMills == 10_000
    assert cfg.storePathRootDir == "~/store"


def test_namesrv_defaults() -> None:
    cfg = NamesrvConfig()
    assert cfg.listenPort == 9876
    assert (cfg.scanNotActiveBrokerInterval, cfg.brokerChannelExpiredTime) == (10_000, 120_000)


@pytest.mark.parametrize("config_class", [BrokerConfig, NamesrvConfig])
def test_every_key_has_a_docstring(config_class: type) -> None:
    class_node = ast.parse(inspect.getsource(config_class)).body[0]
    documented = set()
    for node, following in zip(class_node.body, class_node.body[1:]):
        is_doc = isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
        if isinstance(node, ast.AnnAssign) and is_doc and following.value.value.strip():
            documented.add(node.target.id)
    assert {f.name for f in dataclasses.fields(config_class)} - documented == set()


def test_cq_unit_size_agrees_with_the_consume_queue_format() -> None:
    consume_queue = pytest.importorskip("rmqd.store.consume_queue")
    assert config_module.CQ_UNIT_SIZE == consume_queue.CQ_UNIT_SIZE


# ---------------------------------------------------------------- .properties syntax

def test_properties_parser_handles_comments_separators_spaces_and_continuations() -> None:
    text = (
        "# a comment\n"
        "! another comment = not a key\n"
        "\n"
        "   brokerName = broker-b   \n"
        "flushDiskType:SYNC_FLUSH\n"
        "listenPort 10999\n"
        "messageDelayLevel=1s 5s \\\n"
        "      10s\n"
        "storePathRootDir=/data/a\\\\b\n"
        "brokerClusterName=\n"
    )
    entries = parse_properties(text, "broker.conf")
    assert [(where, key, value) for where, key, value in entries] == [
        ("broker.conf:4", "brokerName", "broker-b"),
        ("broker.conf:5", "flushDiskType", "SYNC_FLUSH"),
        ("broker.conf:6", "listenPort", "10999"),
        ("broker.conf:7", "messageDelayLevel", "1s 5s 10s"),
        ("broker.conf:9", "storePathRootDir", "/data/a\\b"),
        ("broker.conf:10", "brokerClusterName", ""),
    ]


def test_a_comment_line_ending_in_a_backslash_does_not_swallow_the_next_line() -> None:
    entries = parse_properties("# note \\\nbrokerId=1\n", "f")
    assert [(key, value) for _, key, value in entries] == [("brokerId", "1")]


def test_load_reads_a_rocketmq_style_broker_conf(tmp_path: Path) -> None:
    path = write_conf(tmp_path, (
        "brokerClusterName = DefaultCluster\n"
        "brokerName = broker-a\n"
        "brokerId = 0\n"
        "deleteWhen = 04\n"
        "fileReservedTime = 48\n"
        "brokerRole = ASYNC_MASTER\n"
        "flushDiskType = SYNC_FLUSH\n"
        "autoCreateTopicEnable = FALSE\n"
    ))
    cfg = BrokerConfig.load(path)
    assert cfg.flushDiskType == "SYNC_FLUSH" and cfg.flush_sync
    assert cfg.autoCreateTopicEnable is False
    assert cfg.brokerId == 0 and type(cfg.brokerId) is int


def test_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = write_conf(tmp_path, "listenPort=10999\nbrokerName=from-file\n")
    overrides = {"listenPort": "11000", "longPollingEnable": False, "defaultTopicQueueNums": 4}
    cfg = BrokerConfig.load(path, overrides)
    assert (cfg.listenPort, cfg.brokerName, cfg.longPollingEnable, cfg.defaultTopicQueueNums) == (
        11000, "from-file", False, 4)


def test_load_without_a_file_gives_the_defaults() -> None:
    assert BrokerConfig.load() == BrokerConfig()


# ---------------------------------------------------------------- errors

def test_unknown_key_names_the_file_the_line_and_the_closest_key(tmp_path: Path) -> None:
    path = write_conf(tmp_path, "brokerName=b\nflushDiskTyp=SYNC_FLUSH\n")
    assert load_error(path) == [f"{path}:2: unknown key 'flushDiskTyp'; did you mean 'flushDiskType'?"]


def test_unknown_key_that_differs_only_in_case_suggests_the_right_spelling() -> None:
    (problem,) = load_error(overrides={"listenport": "1"})
    assert "did you mean 'listenPort'?" in problem


def test_unknown_key_with_nothing_similar_says_so() -> None:
    (problem,) = load_error(overrides={"zzzzzz": "1"})
    assert "unknown key 'zzzzzz'" in problem and "no similar key" in problem


@pytest.mark.parametrize(("key", "value", "expected_form"), [
    ("autoCreateTopicEnable", "yes", "true or false"),
    ("listenPort", "10k", "an integer"),
    ("listenPort", "70000", "from 1 to 65535"),
    ("mappedFileSizeCommitLog", "0", ">= 4096"),
    ("mappedFileSizeConsumeQueue", "1001", "multiple of 20"),
    ("maxMessageSize", "-1", ">= 1"),
    ("flushDiskType", "FAST_FLUSH", "ASYNC_FLUSH or SYNC_FLUSH"),
    ("brokerRole", "MASTER", "ASYNC_MASTER or SYNC_MASTER or SLAVE"),
    ("deleteWhen", "24", "00-23"),
    ("deleteWhen", "04;x", "00-23"),
    ("diskMaxUsedSpaceRatio", "99", "from 10 to 95"),
    ("diskSpaceWarningLevelRatio", "5", "from 10 to 95"),
    ("brokerName", "broker a", "A-Z a-z 0-9 _ -"),
    ("brokerClusterName", "", "A-Z a-z 0-9 _ -"),
    ("brokerIP1", "::1", "IPv4"),
    ("namesrvAddr", "localhost", "host:port"),
    ("namesrvAddr", "a:1;b:99999", "host:port"),
    ("messageDelayLevel", "1s 5x", "durations"),
    ("storePathRootDir", "", "non-empty"),
    ("shmRequestRingBytes", str(3 * 4096), "power of two >= 4096"),
    ("shmSmallRingBytes", "2048", "power of two >= 4096"),
])
def test_bad_value_names_key_value_and_expected_form(key: str, value: str, expected_form: str) -> None:
    (problem,) = load_error(overrides={key: value})
    assert problem.startswith(f"command line: bad value for {key}: {value!r}; expected ")
    assert expected_form in problem


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = write_conf(tmp_path, "listenPort=x\nbrokerRole=BOSS\nflushDiskTyp=SYNC_FLUSH\n")
    problems = load_error(path, {"deleteWhen": "25"})
    assert [p.split(":")[:2] for p in problems[:3]] == [[str(path), "1"], [str(path), "2"], [str(path), "3"]]
    assert problems[3].startswith("command line: bad value for deleteWhen")
    assert len(problems) == 4


def test_missing_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    (problem,) = load_error(tmp_path / "absent.conf")
    assert str(tmp_path / "absent.conf") in problem and "cannot read" in problem


def test_constructing_directly_validates_too() -> None:
    with pytest.raises(ConfigError, match="bad value for listenPort: 0; expected an integer from 1 to 65535"):
        BrokerConfig(listenPort=0)
    with pytest.raises(ConfigError, match="listenPort: '1'; expected an integer"):
        BrokerConfig(listenPort="1")
    with pytest.raises(ConfigError, match="longPollingEnable: 1; expected true or false"):
        BrokerConfig(longPollingEnable=1)


def test_from_dict_rejects_unknown_keys() -> None:
    with pytest.raises(ConfigError, match="unknown key 'listenPrt'; did you mean 'listenPort'"):
        BrokerConfig.from_dict({"listenPrt": 1})


# ---------------------------------------------------------------- round trips and derived values

def test_to_properties_then_load_gives_an_equal_config(tmp_path: Path) -> None:
    cfg = BrokerConfig(storePathRootDir="/data/rmq store\\x", flushDiskType="SYNC_FLUSH", deleteWhen="04;16",
                       longPollingEnable=False, brokerId=2, namesrvAddr="10.0.0.1:9876;10.0.0.2:9876")
    path = write_conf(tmp_path, cfg.to_properties())
    assert BrokerConfig.load(path) == cfg


@given(st.text(min_size=1).filter(lambda text: text == text.strip() and text.strip()))
def test_any_store_path_survives_to_properties_and_parsing(store_path: str) -> None:
    cfg = BrokerConfig(storePathRootDir=store_path)
    entries = parse_properties(cfg.to_properties(), "generated")
    assert dict((key, value) for _, key, value in entries)["storePathRootDir"] == store_path


def test_to_dict_from_dict_round_trip_through_json() -> None:
    cfg = BrokerConfig(listenPort=12345, cleanFileForciblyEnable=False)
    assert BrokerConfig.from_dict(orjson.loads(orjson.dumps(cfg.to_dict()))) == cfg


def test_namesrv_config_loads_and_round_trips(tmp_path: Path) -> None:
    path = write_conf(tmp_path, "listenPort=9877\nscanNotActiveBrokerInterval=5000\n", "namesrv.conf")
    cfg = NamesrvConfig.load(path)
    assert (cfg.listenPort, cfg.scanNotActiveBrokerInterval) == (9877, 5000)
    assert NamesrvConfig.load(write_conf(tmp_path, cfg.to_properties(), "again.conf")) == cfg


def test_store_paths_are_absolute_and_expand_the_home_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/tester")
    cfg = BrokerConfig()
    assert cfg.store_dir == "/home/tester/store"
    assert (cfg.commitlog_dir, cfg.consumequeue_dir, cfg.index_dir, cfg.config_dir, cfg.logs_dir) == (
        "/home/tester/store/commitlog", "/home/tester/store/consumequeue", "/home/tester/store/index",
        "/home/tester/store/config", "/home/tester/store/logs")
    assert (cfg.checkpoint_path, cfg.abort_path, cfg.lock_path) == (
        "/home/tester/store/checkpoint", "/home/tester/store/abort", "/home/tester/store/lock")


def test_relative_store_dir_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert BrokerConfig(storePathRootDir="rel/store").store_dir == os.path.join(str(tmp_path), "rel", "store")


def test_derived_values() -> None:
    cfg = BrokerConfig(deleteWhen="04;16", namesrvAddr="a:1; b:2")
    assert cfg.delete_hours == [4, 16]
    assert cfg.namesrv_addrs == ["a:1", "b:2"]
    assert not cfg.flush_sync and BrokerConfig(flushDiskType="SYNC_FLUSH").flush_sync
    levels_ms = cfg.delay_levels_ms
    assert len(levels_ms) == 18
    assert (levels_ms[0], levels_ms[2], levels_ms[4], levels_ms[-1]) == (1000, 10_000, 60_000, 7_200_000)


@pytest.mark.parametrize(("flush", "warm_key", "expected"), [
    ("ASYNC_FLUSH", "false", Warm.OFF), ("ASYNC_FLUSH", "true", Warm.FOLIOS),
    ("SYNC_FLUSH", "false", Warm.PAGES), ("SYNC_FLUSH", "true", Warm.PAGES),
])
def test_commit_log_files_are_warmed_for_sync_flush_or_when_asked(flush, warm_key, expected):
    cfg = BrokerConfig.load(overrides={"flushDiskType": flush, "warmMapedFileEnable": warm_key})
    assert cfg.warm_commit_log is expected


def test_commit_log_files_are_warmed_by_default():
    assert BrokerConfig.load().warm_commit_log is Warm.FOLIOS
