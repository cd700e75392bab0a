"""The one error tree of rmqd. Every exception rmqd raises derives from `RmqError`.

RmqError
├── ConfigError            a broker.conf key or value is wrong (names the key, the value, the fix)
├── StoreError             the store cannot be used as asked
│   ├── CorruptFileError   bytes on disk do not match their format (path, file position, field)
│   │   └── CorruptRecordError   one CommitLog / ConsumeQueue / IndexFile record is bad
│   ├── RecordTooLargeError      a record does not fit in one CommitLog file
│   └── StoreLockedError   another broker holds the store's lock file (names the pid)
├── ProtocolError          a frame on the wire is malformed (says what is wrong with it)
└── ClientError            raised by the SDK at its public edge
    ├── MQClientError      the caller passed something invalid (topic name, body size, ...)
    ├── MQBrokerError      the broker answered with an error response code
    ├── RemotingTimeoutError   no response within the timeout
    └── RouteNotFoundError     no namesrv knows a route for the topic

Expected outcomes (a pull that finds nothing, a full ring) are return values, not exceptions.
"""
from __future__ import annotations


class RmqError(Exception):
    """Base of every rmqd error."""


class ConfigError(RmqError):
    """A configuration key or value is invalid."""


class StoreError(RmqError):
    """The store cannot do what was asked."""


class CorruptFileError(StoreError):
    """Bytes on disk do not match their documented format."""

    def __init__(self, path: str, file_pos: int, field: str, expected: object, actual: object) -> None:
        self.path = path
        self.file_pos = file_pos
        self.field = field
        self.expected = expected
        self.actual = actual
        where = f"{path} at file position {file_pos}" if path else f"file position {file_pos}"
        super().__init__(f"corrupt {field} in {where}: expected {expected}, found {actual}")


class CorruptRecordError(CorruptFileError):
    """One record (CommitLog message, ConsumeQueue unit, index entry) is damaged or torn."""


class RecordTooLargeError(StoreError):
    """A record is larger than a whole CommitLog file can hold."""


class StoreLockedError(StoreError):
    """Another broker process holds the store's lock file."""

    def __init__(self, store_dir: str, pid: int | None) -> None:
        self.store_dir = store_dir
        self.pid = pid
        holder = f"process {pid}" if pid else "another process"
        super().__init__(
            f"store {store_dir} is locked by {holder}; stop that broker first "
            f"(rmqd stop --store-dir {store_dir}) or choose another --store-dir"
        )


class ProtocolError(RmqError):
    """A frame received on the wire is malformed."""


class ClientError(RmqError):
    """Base of the errors raised by the SDK."""


class MQClientError(ClientError):
    """The caller passed an invalid argument (topic name, body size, properties, ...)."""


class MQBrokerError(ClientError):
    """The broker answered with an error response code."""

    def __init__(self, code: int, remark: str, broker_addr: str = "") -> None:
        self.code = code
        self.remark = remark
        self.broker_addr = broker_addr
        where = f" from {broker_addr}" if broker_addr else ""
        super().__init__(f"broker error {code}{where}: {remark}")


class RemotingTimeoutError(ClientError):
    """No response arrived within the timeout."""


class RemotingConnectError(ClientError):
    """The connection to a broker or namesrv could not be made, or broke before the response came
    (RocketMQ's RemotingConnectException): retryable, like a timeout."""


class RemotingTooMuchRequestError(ClientError):
    """The producer's async in-flight window stayed full for the whole send timeout (back pressure)."""


class RouteNotFoundError(ClientError):
    """No namesrv knows a route for the topic."""
