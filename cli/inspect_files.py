"""`rmqd inspect commitlog|consumequeue|checkpoint|index PATH`: print any store file.

Each command decodes with the format's own module in rmqd.store (record, consume_queue,
checkpoint, index_file), so what it prints is what the broker reads: the way to check a format's
docstring diagram against real bytes. Read-only: files are mapped with ACCESS_READ, so inspecting a
running broker's store is safe. The store modules are imported inside the commands.
"""
from __future__ import annotations

import dataclasses
import mmap
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from cli import _output
from rmqd.errors import CorruptFileError
from rmqd.exit_codes import EXIT_STORE_CORRUPT, EXIT_USAGE

inspect_app = typer.Typer(help="Decode store files (read-only).", no_args_is_help=True)

FilePath = Annotated[Path, typer.Argument(help="A store file, or a directory of 20-digit files.")]
Limit = Annotated[int, typer.Option("--limit", "-l", help="Print at most N entries.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]

BODY_PREVIEW_BYTES = 48


@inspect_app.command()
def commitlog(path: FilePath, limit: Limit = 50, as_json: AsJson = False) -> None:
    """CommitLog records: position, offsets, topic, queue, tags, keys, body size."""
    from rmqd.store import record

    rows: list[dict[str, object]] = []
    for file_path in _store_files(path):
        try:
            with _mapped(file_path) as buf:
                _read_records(record, buf, rows, limit)
        except CorruptFileError as exc:
            _print_rows(rows, as_json, COMMITLOG_COLUMNS)
            _output.error(f"{file_path}: {exc}")
            raise typer.Exit(EXIT_STORE_CORRUPT) from None
        if len(rows) >= limit:
            break
    _print_rows(rows, as_json, COMMITLOG_COLUMNS)


@inspect_app.command()
def consumequeue(path: FilePath, limit: Limit = 50, as_json: AsJson = False) -> None:
    """ConsumeQueue units: queue offset, CommitLog offset, size, tags hash (stops at a zero unit)."""
    from rmqd.store.consume_queue import CQ_UNIT, CQ_UNIT_SIZE

    rows: list[dict[str, object]] = []
    for file_path in _store_files(path):
        first_queue_offset = _file_start(file_path) // CQ_UNIT_SIZE
        data = file_path.read_bytes()  # <= mappedFileSizeConsumeQueue (6 MB by default)
        units = CQ_UNIT.iter_unpack(data[: len(data) - len(data) % CQ_UNIT_SIZE])
        for index, (phy_offset, size, tags_hash) in enumerate(units):
            if len(rows) >= limit or (phy_offset, size, tags_hash) == (0, 0, 0):
                break
            rows.append({"queue_offset": first_queue_offset + index, "phy_offset": phy_offset,
                         "size": size, "tags_hash": tags_hash})
    _print_rows(rows, as_json, list(rows[0]) if rows else [])


@inspect_app.command()
def checkpoint(path: FilePath, as_json: AsJson = False) -> None:
    """The checkpoint file: RocketMQ's three timestamps and rmqd's positions."""
    from rmqd.store.checkpoint import Checkpoint

    if not path.is_file():
        _output.error(f"{path}: no such file")
        raise typer.Exit(EXIT_USAGE)
    try:
        data = dataclasses.asdict(Checkpoint(str(path)).load())
    except CorruptFileError as exc:
        _output.error(str(exc))
        raise typer.Exit(EXIT_STORE_CORRUPT) from None
    if as_json:
        _output.print_json(data)
        return
    rows = [[name, value, _when(name, value)] for name, value in data.items()]
    _output.print_table(["FIELD", "VALUE", ""], rows)


@inspect_app.command()
def index(path: FilePath, limit: Limit = 50, as_json: AsJson = False) -> None:
    """An IndexFile: its header, then its entries."""
    try:
        from rmqd.store.index_file import describe_file
    except ImportError:
        _output.error("inspect index is not available yet (needs rmqd.store.index_file.describe_file)")
        raise typer.Exit(EXIT_USAGE) from None
    report = describe_file(str(path), limit)
    if as_json:
        _output.print_json(report)
    else:
        _output.print_value(report)


# ---------------------------------------------------------------- helpers

COMMITLOG_COLUMNS = ["file_pos", "phy_offset", "size", "topic", "queue_id", "queue_offset", "stored",
                     "tags", "keys", "body_size"]


def _read_records(record, buf, rows: list[dict[str, object]], limit: int) -> None:
    """Append one row per record of one CommitLog file until its end, a blank record or `limit`."""
    file_pos = 0
    while len(rows) < limit and file_pos + record.BLANK_RECORD_SIZE <= len(buf):
        total_size, magic = record.peek_size_magic(buf, file_pos)
        if (total_size, magic) == (0, 0):
            return  # preallocated zeros: the end of written data
        if magic == record.BLANK_MAGIC:
            rows.append({"file_pos": file_pos, "size": total_size, "topic": "(blank: end of file)"})
            return
        message = record.decode_record(buf, file_pos)
        rows.append(_record_row(record, file_pos, message))
        file_pos += message.total_size


def _record_row(record, file_pos: int, message) -> dict[str, object]:
    props = message.properties
    return {
        "file_pos": file_pos, "phy_offset": message.phy_offset, "size": message.total_size,
        "topic": message.topic, "queue_id": message.queue_id, "queue_offset": message.queue_offset,
        "stored": _format_ms(message.store_timestamp_ms), "tags": props.get(record.Prop.TAGS, ""),
        "keys": props.get(record.Prop.KEYS, ""), "body_size": len(message.body),
        "msg_id": record.offset_msg_id(message.store_host, message.phy_offset),
        "born_host": "{}:{}".format(*record.decode_host(message.born_host)), "sys_flag": message.sys_flag,
        "reconsume_times": message.reconsume_times, "properties": props,
        "body_preview": message.body[:BODY_PREVIEW_BYTES].decode("utf-8", "backslashreplace"),
    }


def _print_rows(rows: list[dict[str, object]], as_json: bool, columns: list[str]) -> None:
    if as_json:
        _output.print_json(rows)
    else:
        _output.print_table([c.upper() for c in columns], [[row.get(c, "") for c in columns] for row in rows])


def _store_files(path: Path) -> list[Path]:
    """`path` itself, or the 20-digit-named files of a directory in offset order."""
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and p.name.isdigit() and len(p.name) == 20)
    if path.is_file():
        return [path]
    _output.error(f"{path}: no such file or directory")
    raise typer.Exit(EXIT_USAGE)


def _file_start(path: Path) -> int:
    return int(path.name) if path.name.isdigit() else 0


@contextmanager
def _mapped(path: Path) -> Iterator[mmap.mmap | bytes]:
    """The file's bytes, mapped read-only (an empty file cannot be mapped: it yields b"")."""
    with open(path, "rb") as file:
        if os.fstat(file.fileno()).st_size == 0:
            yield b""
            return
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            yield mapped


def _format_ms(timestamp_ms: int) -> str:
    if timestamp_ms <= 0:
        return "-"
    seconds = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp_ms / 1000))
    return f"{seconds}.{timestamp_ms % 1000:03d}"


def _when(name: str, value: object) -> str:
    return _format_ms(value) if name.endswith("timestamp_ms") and isinstance(value, int) else ""
