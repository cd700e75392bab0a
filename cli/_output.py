"""Output helpers of the CLI: column-aligned tables for people, JSON for scripts.

Owns how `rmqd` and `mqadmin` print results. Commands build plain Python values (dicts, lists,
NamedTuples, dataclasses) and hand them here; nothing else in cli/ formats columns.
"""
from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import TextIO

import orjson
import typer


def print_table(headers: Sequence[str], rows: Iterable[Sequence[object]], out: TextIO | None = None) -> None:
    """Print `rows` under `headers`, each column as wide as its widest cell, two spaces apart."""
    out = out or sys.stdout
    cells = [[str(h) for h in headers]] + [[_cell(value) for value in row] for row in rows]
    widths = [max(len(row[col]) for row in cells) for col in range(len(headers))]
    for row in cells:
        out.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() + "\n")


def print_json(value: object, out: TextIO | None = None) -> None:
    """Print `value` as indented JSON (NamedTuples become objects, bytes become hex)."""
    out = out or sys.stdout
    data = orjson.dumps(jsonable(value), option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
    out.write(data.decode() + "\n")


def print_value(value: object, out: TextIO | None = None) -> None:
    """Print any result as tables: a list of records, a mapping of records, or key/value pairs."""
    out = out or sys.stdout
    value = jsonable(value)
    if isinstance(value, Mapping):
        _print_mapping(value, out)
    elif isinstance(value, list) and value and all(isinstance(item, Mapping) for item in value):
        _print_records(value, out)
    elif isinstance(value, list):
        print_table(["VALUE"], [[item] for item in value], out)
    else:
        out.write(_cell(value) + "\n")


def error(message: str, program: str = "rmqd") -> None:
    """One line on stderr, prefixed with the program name."""
    typer.echo(f"{program}: {message}", err=True)


def jsonable(value: object) -> object:
    """`value` with NamedTuples and dataclasses turned into dicts, bytes into hex, recursively."""
    if hasattr(value, "_asdict"):
        value = value._asdict()
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {key: jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(item) for item in value]
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    return value


def _print_mapping(value: Mapping[object, object], out: TextIO) -> None:
    scalars = [(key, item) for key, item in value.items() if not isinstance(item, Mapping | list)]
    nested = [(key, item) for key, item in value.items() if isinstance(item, Mapping | list)]
    if scalars:
        print_table(["KEY", "VALUE"], scalars, out)
    for key, item in nested:
        out.write(f"\n{key}:\n")
        if isinstance(item, Mapping) and item and all(isinstance(v, Mapping) for v in item.values()):
            _print_records([{"NAME": name, **record} for name, record in item.items()], out)
        else:
            print_value(item, out)


def _print_records(records: list[Mapping[object, object]], out: TextIO) -> None:
    headers: list[object] = []
    for record in records:
        headers += [key for key in record if key not in headers]
    print_table([str(h) for h in headers], [[record.get(h, "") for h in headers] for record in records], out)


def _cell(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "-"
    if isinstance(value, Mapping | list):
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    return str(value)

