"""Small store files: the lock, the abort marker, and atomically replaced JSON metadata.

  {store}/lock     exclusive fcntl.flock held by the running broker; contains its pid (text)
  {store}/abort    exists while a broker runs; present at start = the last run did not stop
                   cleanly, so recovery is "abnormal" (RocketMQ isTempFileExist)
  {store}/config/*.json   metadata (topics, groups, consumer offsets) written tmp -> fsync ->
                   rename, the previous version kept as `*.json.bak` (RocketMQ MixAll.string2File)

Any process may call these; each function is self-contained and thread-safe apart from
concurrent writers of the same JSON path (one owner per file).
"""
from __future__ import annotations

import fcntl
import logging
import os
from typing import Any

import orjson

from rmqd.errors import StoreLockedError
from rmqd.store.mapped_file import fsync_dir

log = logging.getLogger("rmqd.store")

LOCK_FILE_NAME = "lock"
ABORT_FILE_NAME = "abort"


class StoreLock:
    """The store's exclusive lock; held until `release()` or process exit."""

    def __init__(self, store_dir: str) -> None:
        self.store_dir = store_dir
        self.path = os.path.join(store_dir, LOCK_FILE_NAME)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock and write our pid; raises StoreLockedError(store_dir, holder pid) if held."""
        os.makedirs(self.store_dir, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreLockedError(self.store_dir, _read_pid(self.path)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip() or 0) or None
    except (OSError, ValueError):
        return None


def create_abort(store_dir: str) -> None:
    """Create the abort marker (durably) when a broker starts."""
    os.makedirs(store_dir, exist_ok=True)
    fd = os.open(os.path.join(store_dir, ABORT_FILE_NAME), os.O_WRONLY | os.O_CREAT, 0o644)
    os.close(fd)
    fsync_dir(store_dir)


def abort_exists(store_dir: str) -> bool:
    """True if the last broker on this store did not stop cleanly."""
    return os.path.exists(os.path.join(store_dir, ABORT_FILE_NAME))


def remove_abort(store_dir: str) -> None:
    """Remove the abort marker (durably) after a clean stop."""
    try:
        os.unlink(os.path.join(store_dir, ABORT_FILE_NAME))
    except FileNotFoundError:
        return
    fsync_dir(store_dir)


def atomic_write_json(path: str, obj: Any) -> None:
    """Write `obj` as JSON to `path` atomically and durably, keeping the previous file as `path.bak`.

    tmp -> fsync -> (path -> path.bak) -> (tmp -> path) -> fsync dir. A crash at any point leaves
    a complete file at `path` or at `path.bak`, which `read_json_with_bak` then uses.
    """
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    tmp = path + ".tmp"
    data = memoryview(orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        written = 0
        while written < len(data):  # a short write (disk filling up) must not pass as a whole file
            written += os.write(fd, data[written:])
        os.fsync(fd)
    except OSError:
        os.close(fd)
        os.unlink(tmp)  # nothing half-written is left behind; `path` and `path.bak` are untouched
        raise
    os.close(fd)
    if os.path.exists(path):
        os.replace(path, path + ".bak")
    os.replace(tmp, path)
    fsync_dir(directory)


def read_json_with_bak(path: str) -> Any | None:
    """The JSON at `path`, else at `path.bak` (logged), else None when neither is usable."""
    try:
        return _read_json(path)
    except FileNotFoundError:
        reason = "missing"
    except (orjson.JSONDecodeError, OSError) as err:
        reason = f"unreadable ({err})"
    bak = path + ".bak"
    try:
        obj = _read_json(bak)
    except FileNotFoundError:
        if reason != "missing":
            log.error("%s is %s and there is no %s", path, reason, bak)
        return None
    except (orjson.JSONDecodeError, OSError) as err:
        log.error("%s is %s and %s is unreadable too (%s)", path, reason, bak, err)
        return None
    log.warning("%s is %s; using the previous version %s", path, reason, bak)
    return obj


def _read_json(path: str) -> Any:
    with open(path, "rb") as f:
        return orjson.loads(f.read())
