"""Broker and namesrv configuration: RocketMQ's broker.conf keys, their defaults and their checks.

Owns: the name, type, default, unit and allowed values of every configuration key; the parsing of
java .properties files (RocketMQ's broker.conf syntax); the store paths derived from
storePathRootDir.

Attribute names ARE the broker.conf keys, camelCase as operators type them (`brokerName=broker-a`
in a file is `cfg.brokerName` in code), so this module is the one place where field names are not
snake_case and keep RocketMQ's unit-less spelling: each key's docstring gives its unit instead.
Time keys are milliseconds unless they say otherwise, sizes are bytes, ratios are percent of the
disk holding the store. Keys marked "rmqd only" do not exist in RocketMQ.

Who calls it: the CLI builds one BrokerConfig per broker (defaults < file < `-p key=value` <
named flags) with `BrokerConfig.load`; the supervisor passes it to each child process with
`to_dict()` / `from_dict()`. Every construction path validates, so a BrokerConfig that exists is
valid. Instances are plain dataclasses: treat them as read-only after load; reading from several
threads is safe.
"""
from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Self

from rmqd.errors import ConfigError
from rmqd.store.mapped_file import Warm

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

FLUSH_DISK_TYPES = ("ASYNC_FLUSH", "SYNC_FLUSH")
BROKER_ROLES = ("ASYNC_MASTER", "SYNC_MASTER", "SLAVE")
# Same value as rmqd.store.consume_queue.CQ_UNIT_SIZE (test_config checks it); not imported so that
# loading a config never loads the store.
CQ_UNIT_SIZE = 20
DELAY_UNIT_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}

Check = Callable[[Any], str | None]  # returns the expected form when the value is wrong, else None


# ---------------------------------------------------------------- value checks

def _at_least(low: int) -> Check:
    return lambda value: None if value >= low else f"an integer >= {low}"


def _between(low: int, high: int) -> Check:
    return lambda value: None if low <= value <= high else f"an integer from {low} to {high}"


def _multiple_of(unit: int, why: str) -> Check:
    return lambda value: None if value > 0 and value % unit == 0 else f"a positive multiple of {unit} ({why})"


def _power_of_two(low: int) -> Check:
    return lambda value: None if value >= low and value & (value - 1) == 0 else f"a power of two >= {low}"


def _one_of(*choices: str) -> Check:
    return lambda value: None if value in choices else " or ".join(choices)


_NAME = re.compile(r"[A-Za-z0-9_-]{1,127}")
_HOST_PORT = re.compile(r"([^\s:;]+):([0-9]{1,5})")
_DELAY_LEVEL = re.compile(r"([0-9]+)([smhd])")


def _name(value: str) -> str | None:
    """Cluster and broker names: RocketMQ registers them as topics, so they follow the topic rule."""
    return None if _NAME.fullmatch(value) else "1-127 characters from A-Z a-z 0-9 _ -"


def _ipv4(value: str) -> str | None:
    """brokerIP1 goes into every record's 8-byte STOREHOST field, which holds IPv4 only."""
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        return "an IPv4 address such as 127.0.0.1 (STOREHOST in the CommitLog record is IPv4)"
    return None


def _addresses(value: str) -> str | None:
    parts = [part.strip() for part in value.split(";") if part.strip()]
    ok = bool(parts) and all(_valid_host_port(part) for part in parts)
    return None if ok else "host:port, several separated by ';' (e.g. 127.0.0.1:9876;10.0.0.2:9876)"


def _valid_host_port(text: str) -> bool:
    match = _HOST_PORT.fullmatch(text)
    return bool(match) and 1 <= int(match.group(2)) <= 65535


def _hours(value: str) -> str | None:
    try:
        parse_delete_when(value)
    except ValueError:
        return "hours of the day 00-23 separated by ';' (e.g. 04 or 04;16)"
    return None


def _delay_levels(value: str) -> str | None:
    try:
        parse_delay_levels(value)
    except ValueError:
        return "space-separated durations like 1s 5s 1m 2h (units s, m, h, d)"
    return None


def _non_empty(value: str) -> str | None:
    return None if value.strip() else "a non-empty string"


def parse_delete_when(text: str) -> list[int]:
    """`deleteWhen` ("04" or "04;16") -> hours of the day. Raises ValueError when malformed."""
    hours = []
    for part in text.split(";"):
        part = part.strip()
        if not re.fullmatch(r"[0-9]{1,2}", part) or int(part) > 23:
            raise ValueError(f"not an hour 00-23: {part!r}")
        hours.append(int(part))
    return hours


def parse_delay_levels(text: str) -> list[int]:
    """`messageDelayLevel` ("1s 5s ... 2h") -> delay in ms of level 1, 2, ... Raises ValueError."""
    levels_ms = []
    for part in text.split():
        match = _DELAY_LEVEL.fullmatch(part)
        if not match or int(match.group(1)) == 0:
            raise ValueError(f"not a delay like 5s, 1m, 2h: {part!r}")
        levels_ms.append(int(match.group(1)) * DELAY_UNIT_MS[match.group(2)])
    if not levels_ms:
        raise ValueError("no delay levels")
    return levels_ms


def _key(default: Any, check: Check | None = None) -> Any:
    """A configuration key: its default and the check its value must pass (besides its type)."""
    return field(default=default, metadata={"check": check})


# ---------------------------------------------------------------- shared mechanics

class _PropertiesConfig:
    """Loading, validation and serialisation shared by BrokerConfig and NamesrvConfig."""

    def __post_init__(self) -> None:
        problems = [p for f in dataclasses.fields(self) if (p := _field_problem(self, f))]
        if problems:
            raise ConfigError("\n".join(problems))

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None,
             overrides: Mapping[str, object] | None = None) -> Self:
        """Build a config from defaults, then a .properties file, then `overrides` (last wins).

        Args:
            path: a broker.conf-style file (key=value or key: value, # and ! comments); None = none.
            overrides: key -> value (str, or int/bool); they win over the file.
        Raises:
            ConfigError: one line per problem (unknown key with the closest known key, bad value
                with the expected form), every problem of the file and the overrides at once.
        """
        problems: list[str] = []
        entries = _read_file(os.fspath(path), problems) if path is not None else []
        entries += [("command line", key, _as_text(value)) for key, value in (overrides or {}).items()]
        values: dict[str, object] = {}
        for where, key, text in entries:
            _assign(cls, values, where, key, text, problems)
        if problems:
            raise ConfigError("\n".join(problems))
        return cls(**values)

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Self:
        """Rebuild from `to_dict()` output (e.g. in a child process). Validates like `load`."""
        known = _fields_by_name(cls)
        unknown = [_unknown_key("from_dict", key, known) for key in data if key not in known]
        if unknown:
            raise ConfigError("\n".join(unknown))
        return cls(**data)

    def to_dict(self) -> dict[str, object]:
        """Every key -> value (plain str/int/bool: orjson- and pickle-friendly)."""
        return dataclasses.asdict(self)

    def to_properties(self) -> str:
        """Every key as a .properties file that `load` reads back to an equal config."""
        lines = [f"# {type(self).__name__}: java .properties, RocketMQ broker.conf key names"]
        lines += [f"{f.name}={_escape(_as_text(getattr(self, f.name)))}" for f in dataclasses.fields(self)]
        return "\n".join(lines) + "\n"


def _fields_by_name(cls: type) -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _field_problem(config: object, f: dataclasses.Field[Any], where: str = "") -> str | None:
    """The problem with `config`'s value of field `f`, or None if it is valid."""
    value = getattr(config, f.name)
    expected = _type_problem(type(f.default), value) or _check_problem(f, value)
    if expected is None:
        return None
    return f"{where or type(config).__name__}: bad value for {f.name}: {value!r}; expected {expected}"


def _check_problem(f: dataclasses.Field[Any], value: object) -> str | None:
    check = f.metadata["check"]
    return check(value) if check else None


def _type_problem(kind: type, value: object) -> str | None:
    if type(value) is kind or (kind is str and isinstance(value, str)):
        return None
    return {bool: "true or false", int: "an integer", str: "a string"}[kind]


def _assign(cls: type, values: dict[str, object], where: str, key: str, text: str,
            problems: list[str]) -> None:
    """Parse one key=value into `values`, or append the reason it is wrong to `problems`."""
    known = _fields_by_name(cls)
    if key not in known:
        problems.append(_unknown_key(where, key, known))
        return
    f = known[key]
    try:
        value = _parse_text(type(f.default), text)
    except ValueError as exc:
        problems.append(f"{where}: bad value for {key}: {text!r}; expected {exc}")
        return
    expected = _check_problem(f, value)
    if expected is not None:
        problems.append(f"{where}: bad value for {key}: {text!r}; expected {expected}")
        return
    values[key] = value


def _unknown_key(where: str, key: str, known: Mapping[str, object]) -> str:
    by_lower = {name.lower(): name for name in known}
    close = [by_lower[key.lower()]] if key.lower() in by_lower else difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean {close[0]!r}?" if close else "no similar key; the keys are listed in rmqd/config.py"
    return f"{where}: unknown key {key!r}; {hint}"


_INT_TEXT = re.compile(r"[+-]?[0-9]+")


def _parse_text(kind: type, text: str) -> object:
    """A .properties value as `kind`. Raises ValueError whose message is the expected form."""
    text = text.strip()
    if kind is bool:
        if text.lower() not in ("true", "false"):
            raise ValueError("true or false")
        return text.lower() == "true"
    if kind is int:
        if not _INT_TEXT.fullmatch(text):
            raise ValueError("an integer in plain digits, no unit suffix")
        return int(text)
    return text


def _as_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _escape(text: str) -> str:
    """Backslashes doubled; non-printable BMP characters (line breaks among them) as \\uXXXX."""
    return "".join(
        "\\\\" if ch == "\\" else ch if ch.isprintable() or ord(ch) > 0xFFFF else f"\\u{ord(ch):04x}"
        for ch in text
    )


# ---------------------------------------------------------------- .properties syntax

# key = escaped chars or anything but whitespace, '=', ':', '\'; then an optional '=' or ':' separator.
_KEY_VALUE = re.compile(r"((?:\\.|[^\s=:\\])*)\s*[=:]?\s*(.*)", re.DOTALL)
_UNESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}


def _read_file(path: str, problems: list[str]) -> list[tuple[str, str, str]]:
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{path}: cannot read the config file: {exc}")
        return []
    return parse_properties(text, path)


def parse_properties(text: str, source: str) -> list[tuple[str, str, str]]:
    """Java .properties text -> [(f"{source}:{line}", key, value)] in file order.

    Supports key=value, key: value and key value; # and ! comment lines; blank lines; a backslash
    at the end of a line continues the value on the next line; \\t \\n \\r \\f \\uXXXX escapes.
    Whitespace around keys and values is trimmed (RocketMQ's own loader trims values too).
    """
    entries = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        lineno = index + 1
        logical = lines[index].lstrip()
        index += 1
        if not logical or logical[0] in "#!":  # comment lines never continue
            continue
        while _continues(logical):
            logical = logical[:-1] + (lines[index].lstrip() if index < len(lines) else "")
            index += 1
        key, value = _split_key_value(logical)
        entries.append((f"{source}:{lineno}", key, value))
    return entries


def _continues(line: str) -> bool:
    trailing = len(line) - len(line.rstrip("\\"))
    return trailing % 2 == 1


def _split_key_value(line: str) -> tuple[str, str]:
    match = _KEY_VALUE.match(line)
    key, value = match.groups() if match else (line, "")
    return _unescape(key), _unescape(value.rstrip())


def _unescape(text: str) -> str:
    def replace(match: re.Match[str]) -> str:
        escaped = match.group(1)
        if escaped.startswith("u"):
            return chr(int(escaped[1:], 16))
        return _UNESCAPES.get(escaped, escaped)

    return re.sub(r"\\(u[0-9a-fA-F]{4}|.)", replace, text)


# ---------------------------------------------------------------- the configurations

@dataclass(kw_only=True)
class BrokerConfig(_PropertiesConfig):
    """One broker's configuration. Field names are RocketMQ broker.conf keys; see the module doc."""

    # --- identity and network
    brokerClusterName: str = _key("DefaultCluster", _name)
    """Name of the cluster the broker registers under with the namesrvs."""
    brokerName: str = _key("broker-a", _name)
    """Name shared by a master and its slaves."""
    brokerId: int = _key(0, _at_least(0))
    """0 = master, > 0 = slave."""
    brokerRole: str = _key("ASYNC_MASTER", _one_of(*BROKER_ROLES))
    """ASYNC_MASTER, SYNC_MASTER or SLAVE."""
    namesrvAddr: str = _key("127.0.0.1:9876", _addresses)
    """host:port of every namesrv, separated by ';'. The broker registers with each one."""
    brokerIP1: str = _key("127.0.0.1", _ipv4)
    """IPv4 address clients reach this broker at; also the STOREHOST of every record."""
    listenPort: int = _key(10911, _between(1, 65535))
    """TCP port of the front process (the ZeroMQ ROUTER clients connect to)."""
    brokerPermission: int = _key(6, _between(0, 7))
    """Permission bits of the whole broker: 4 = read, 2 = write, 1 = inherit (6 = read + write)."""
    registerNameServerPeriod: int = _key(30_000, _between(10_000, 60_000))
    """ms between registrations with every namesrv (RocketMQ allows 10000-60000)."""

    # --- store files
    storePathRootDir: str = _key("~/store", _non_empty)
    """Store directory (commitlog/, consumequeue/, index/, config/, checkpoint, abort, lock); ~ expands."""
    mappedFileSizeCommitLog: int = _key(1 * GIB, _at_least(4096))
    """bytes per CommitLog file (1 GiB). A record never spans two files."""
    warmMapedFileEnable: bool = _key(True)
    """Write every page of the next CommitLog file in the cleaner, before the writer reaches it.
    RocketMQ's key; rmqd defaults to true (RocketMQ: false): on this machine kind the writer's own
    page faults cost ~3 us per 1 KiB message on the send path (docs/BENCHMARKS.md). SYNC_FLUSH warms
    whatever this says, in 4 KiB pages, so that a group commit writes back only its own pages;
    ASYNC_FLUSH in large folios (mapped_file.Warm, `warm_commit_log`)."""
    mappedFileSizeConsumeQueue: int = _key(300_000 * CQ_UNIT_SIZE, _multiple_of(CQ_UNIT_SIZE, "whole units"))
    """bytes per ConsumeQueue file: 300,000 units of 20 bytes."""
    maxMessageSize: int = _key(4 * MIB, _at_least(1))
    """bytes: largest message body (and whole batch) the broker accepts (4 MiB)."""
    messageIndexEnable: bool = _key(True)
    """Build the IndexFile (query by key, by unique key)."""
    maxHashSlotNum: int = _key(5_000_000, _at_least(1))
    """hash slots per IndexFile (4 bytes each)."""
    maxIndexNum: int = _key(5_000_000 * 4, _at_least(1))
    """entries per IndexFile (20 bytes each)."""

    # --- flushing
    flushDiskType: str = _key("ASYNC_FLUSH", _one_of(*FLUSH_DISK_TYPES))
    """SYNC_FLUSH: SEND_OK after fsync (group commit). ASYNC_FLUSH: SEND_OK once in the page cache."""
    flushIntervalCommitLog: int = _key(500, _at_least(1))
    """ms: ASYNC_FLUSH flushes the CommitLog at least this often."""
    flushCommitLogLeastPages: int = _key(4, _at_least(0))
    """4 KiB pages: ASYNC_FLUSH flushes earlier once this many pages are dirty."""
    flushCommitLogThoroughInterval: int = _key(10_000, _at_least(1))
    """ms: flush every dirty CommitLog page at least this often, whatever their number."""
    flushIntervalConsumeQueue: int = _key(1000, _at_least(1))
    """ms between ConsumeQueue flushes."""
    flushConsumeQueueLeastPages: int = _key(2, _at_least(0))
    """4 KiB pages: minimum dirty ConsumeQueue pages for a flush."""
    flushConsumeQueueThoroughInterval: int = _key(60_000, _at_least(1))
    """ms: flush every dirty ConsumeQueue page at least this often."""
    syncFlushTimeout: int = _key(5000, _at_least(1))
    """ms a SYNC_FLUSH producer waits for the fsync before getting FLUSH_DISK_TIMEOUT."""

    # --- cleaning and disk protection
    deleteWhen: str = _key("04", _hours)
    """Hours of the day (00-23, ';'-separated) when expired files are deleted."""
    fileReservedTime: int = _key(48, _at_least(1))
    """hours a CommitLog file is kept after its last write (RocketMQ ships 72; rmqd 48)."""
    cleanResourceInterval: int = _key(10_000, _at_least(1))
    """ms between two runs of the cleaner."""
    diskMaxUsedSpaceRatio: int = _key(75, _between(10, 95))
    """percent: above it, expired files are deleted at any hour, not only at deleteWhen."""
    diskSpaceCleanForciblyRatio: int = _key(85, _between(10, 95))
    """percent: above it, the oldest files are deleted even if not expired."""
    diskSpaceWarningLevelRatio: int = _key(90, _between(10, 95))
    """percent: above it, writes are refused (SERVICE_NOT_AVAILABLE); reads keep working."""
    cleanFileForciblyEnable: bool = _key(True)
    """Allow the forced deletion above diskSpaceCleanForciblyRatio."""
    deleteCommitLogFilesInterval: int = _key(100, _at_least(0))
    """ms the cleaner waits between two CommitLog file deletions of one pass."""
    deleteConsumeQueueFilesInterval: int = _key(100, _at_least(0))
    """ms the cleaner waits after each ConsumeQueue that lost files in one pass."""

    # --- topics, sending, pulling
    autoCreateTopicEnable: bool = _key(True)
    """Create a topic on its first send (with defaultTopicQueueNums queues)."""
    autoCreateSubscriptionGroup: bool = _key(True)
    """Create a consumer group on its first use."""
    defaultTopicQueueNums: int = _key(8, _at_least(1))
    """queues of an auto-created topic."""
    waitTimeMillsInSendQueue: int = _key(200, _at_least(1))
    """ms a send may wait for the writer before the broker answers SYSTEM_BUSY."""
    longPollingEnable: bool = _key(True)
    """Hold pulls that find nothing until a message arrives or the consumer's timeout passes."""
    shortPollingTimeMills: int = _key(1000, _at_least(0))
    """ms a pull is held when longPollingEnable is false."""
    maxTransferCountOnMessageInMemory: int = _key(32, _at_least(1))
    """messages: most messages one pull response returns."""
    maxTransferBytesOnMessageInMemory: int = _key(256 * KIB, _at_least(1))
    """bytes: most bytes one pull response returns (256 KiB)."""
    flushConsumerOffsetInterval: int = _key(5000, _at_least(1))
    """ms between writes of config/consumerOffset.json."""
    channelExpiredTimeout: int = _key(120_000, _at_least(1))
    """ms without a heartbeat after which a consumer leaves its group (its queues are rebalanced)."""
    messageDelayLevel: str = _key("1s 5s 10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m 20m 30m 1h 2h", _delay_levels)
    """Delay of each delay level, level 1 first (units s, m, h, d)."""

    # --- rmqd only
    namesrvListenPort: int = _key(9876, _between(1, 65535))
    """rmqd only. TCP port of the namesrv that `rmqd start` embeds."""
    shmRequestRingBytes: int = _key(64 * MIB, _power_of_two(4096))
    """rmqd only. bytes of the front -> writer request ring in shared memory."""
    shmAckRingBytes: int = _key(4 * MIB, _power_of_two(4096))
    """rmqd only. bytes of the writer -> front ack ring."""
    shmSmallRingBytes: int = _key(1 * MIB, _power_of_two(4096))
    """rmqd only. bytes of each of the park, wake and arrival rings."""
    sendAckSpinMicros: int = _key(150, _between(0, 10_000))
    """rmqd only. µs the front keeps checking for the writer's acknowledgement, while sends are in
    flight and nothing else is ready, before it sleeps in poll; 0 = never spin. One sleep and
    wake-up costs ~30-60 µs of latency and CPU on a VM whose idle vCPUs halt; the spin costs at
    most this much CPU per wait and ends as soon as a request or an acknowledgement arrives.
    ASYNC_FLUSH only: with SYNC_FLUSH the send then waits for the flush anyway."""
    heartbeatTimeoutMills: int = _key(10_000, _at_least(1))
    """rmqd only. ms without a heartbeat after which the supervisor treats a child as hung."""
    metricsPort: int = _key(5557, _between(0, 65535))
    """rmqd only. TCP port of the Prometheus endpoint (http://brokerIP1:metricsPort/metrics); 0 = off."""
    selfInspectionInterval: int = _key(60_000, _at_least(0))
    """rmqd only. ms between two self-inspection probes to SELF_TEST_TOPIC (send + receive); 0 = off."""

    # --- derived values
    @property
    def store_dir(self) -> str:
        """storePathRootDir with ~ expanded, made absolute."""
        return os.path.abspath(os.path.expanduser(self.storePathRootDir))

    @property
    def commitlog_dir(self) -> str:
        return os.path.join(self.store_dir, "commitlog")

    @property
    def consumequeue_dir(self) -> str:
        return os.path.join(self.store_dir, "consumequeue")

    @property
    def index_dir(self) -> str:
        return os.path.join(self.store_dir, "index")

    @property
    def config_dir(self) -> str:
        return os.path.join(self.store_dir, "config")

    @property
    def logs_dir(self) -> str:
        return os.path.join(self.store_dir, "logs")

    @property
    def checkpoint_path(self) -> str:
        return os.path.join(self.store_dir, "checkpoint")

    @property
    def abort_path(self) -> str:
        return os.path.join(self.store_dir, "abort")

    @property
    def lock_path(self) -> str:
        return os.path.join(self.store_dir, "lock")

    @property
    def flush_sync(self) -> bool:
        """True for SYNC_FLUSH: a send is acknowledged only after its fsync."""
        return self.flushDiskType == "SYNC_FLUSH"

    @property
    def warm_commit_log(self) -> Warm:
        """How new CommitLog files are warmed (mapped_file.Warm): SYNC_FLUSH always, in 4 KiB pages
        (its small group commits must write back little); ASYNC_FLUSH in large folios when
        warmMapedFileEnable (fewer faults for the writer, cheaper periodic flushes)."""
        if self.flush_sync:
            return Warm.PAGES
        return Warm.FOLIOS if self.warmMapedFileEnable else Warm.OFF

    @property
    def namesrv_addrs(self) -> list[str]:
        """namesrvAddr split into its host:port entries."""
        return [part.strip() for part in self.namesrvAddr.split(";") if part.strip()]

    @property
    def delete_hours(self) -> list[int]:
        """deleteWhen as hours of the day."""
        return parse_delete_when(self.deleteWhen)

    @property
    def delay_levels_ms(self) -> list[int]:
        """messageDelayLevel in ms; index 0 is delay level 1."""
        return parse_delay_levels(self.messageDelayLevel)


@dataclass(kw_only=True)
class NamesrvConfig(_PropertiesConfig):
    """The namesrv's configuration (RocketMQ's namesrv.conf keys)."""

    listenPort: int = _key(9876, _between(1, 65535))
    """TCP port the namesrv listens on."""
    rmqdHome: str = _key("~/rmqd", _non_empty)
    """Directory for the namesrv's own files (RocketMQ: rocketmqHome); ~ expands."""
    scanNotActiveBrokerInterval: int = _key(10_000, _at_least(1))
    """ms between scans for brokers whose registration expired."""
    brokerChannelExpiredTime: int = _key(120_000, _at_least(1))
    """ms after a broker's last registration at which its routes are dropped."""
