"""Shared measurement pieces of the loadtest benchmarks: latency histogram, per-process recorder,
snapshots that cross process boundaries, plain-text tables and the JSON result file.

Used by bench_produce.py (and by any later bench module registered in bench.py: a consume or
end-to-end benchmark records through the same Recorder and writes the same JSON shape, so
`bench.py report` renders it without changes).

Thread-safety: `Recorder` is safe to call from any number of threads of one process (one lock,
held for a few dict operations). `Histogram` and `Snapshot` are plain values: not thread-safe,
picklable, mergeable across processes.
"""
from __future__ import annotations

import os
import platform
import shlex
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

RESULT_SCHEMA = 1
EXACT_BELOW_US = 10_000  # latencies below 10 ms are kept to the microsecond, above to 3 digits


def _bucket(us: int) -> int:
    if us < EXACT_BELOW_US:
        return us
    scale = 10 ** (len(str(us)) - 3)
    return us // scale * scale


@dataclass(slots=True)
class Histogram:
    """Latency histogram in microseconds: exact below 10 ms, 3 significant digits above."""

    counts: dict[int, int] = field(default_factory=dict)
    count: int = 0
    total_us: int = 0
    max_us: int = 0

    def record(self, us: int) -> None:
        key = us if us < EXACT_BELOW_US else _bucket(us)
        self.counts[key] = self.counts.get(key, 0) + 1
        self.count += 1
        self.total_us += us
        if us > self.max_us:
            self.max_us = us

    def merge(self, other: Histogram) -> None:
        for key, n in other.counts.items():
            self.counts[key] = self.counts.get(key, 0) + n
        self.count += other.count
        self.total_us += other.total_us
        self.max_us = max(self.max_us, other.max_us)

    def percentile_us(self, q: float) -> int:
        """Smallest recorded bucket at or above the q-th percentile (0 < q <= 100); 0 when empty."""
        if not self.count:
            return 0
        rank = max(1, int(self.count * q / 100 + 0.999999))
        seen = 0
        for key in sorted(self.counts):
            seen += self.counts[key]
            if seen >= rank:
                return key
        return self.max_us

    def summary_ms(self) -> dict[str, float]:
        """avg/p50/p99/p999/max in milliseconds (zeros when nothing was recorded)."""
        avg = self.total_us / self.count if self.count else 0.0
        return {"avg": avg / 1000, "p50": self.percentile_us(50) / 1000, "p99": self.percentile_us(99) / 1000,
                "p999": self.percentile_us(99.9) / 1000, "max": self.max_us / 1000}


@dataclass(slots=True)
class Snapshot:
    """What one process recorded during one interval (picklable; merge() adds another one in)."""

    ok_msgs: int = 0
    ok_requests: int = 0
    offered_msgs: int = 0  # messages handed to the SDK (acked or not); oneway counts only these
    failures: dict[str, int] = field(default_factory=dict)
    latency: Histogram = field(default_factory=Histogram)

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    def merge(self, other: Snapshot) -> None:
        self.ok_msgs += other.ok_msgs
        self.ok_requests += other.ok_requests
        self.offered_msgs += other.offered_msgs
        for reason, n in other.failures.items():
            self.failures[reason] = self.failures.get(reason, 0) + n
        self.latency.merge(other.latency)


class Recorder:
    """Counts outcomes of one process's senders; `take()` returns and resets the interval's snapshot."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._current = Snapshot()

    def offered(self, msgs: int) -> None:
        with self._lock:
            self._current.offered_msgs += msgs

    def ok(self, msgs: int, latency_us: int) -> None:
        with self._lock:
            snap = self._current
            snap.ok_msgs += msgs
            snap.ok_requests += 1
            snap.latency.record(latency_us)

    def failed(self, reason: str, count: int = 1) -> None:
        with self._lock:
            failures = self._current.failures
            failures[reason] = failures.get(reason, 0) + count

    def add(self, snap: Snapshot) -> None:
        """Merge outcomes counted elsewhere (a sender's local batch) in one locked step."""
        with self._lock:
            self._current.merge(snap)

    def take(self) -> Snapshot:
        with self._lock:
            snap, self._current = self._current, Snapshot()
        return snap


def merge_all(snapshots: list[Snapshot]) -> Snapshot:
    total = Snapshot()
    for snap in snapshots:
        total.merge(snap)
    return total


# ---------------------------------------------------------------------------- output


def table(rows: list[tuple[Any, ...]], header: tuple[str, ...] | None = None, align: str = "") -> str:
    """Plain-text table; `align` has one 'l' or 'r' per column (default: first left, others right)."""
    cells = [tuple(str(c) for c in row) for row in ([header] if header else []) + rows]
    columns = max(map(len, cells))
    align = (align or "l" + "r" * (columns - 1)).ljust(columns, "r")
    widths = [max(len(row[i]) for row in cells if i < len(row)) for i in range(columns)]
    lines = []
    for index, row in enumerate(cells):
        parts = [c.ljust(widths[i]) if align[i] == "l" else c.rjust(widths[i]) for i, c in enumerate(row)]
        lines.append("  ".join(parts).rstrip())
        if header and index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def fmt_rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def fmt_ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def fmt_fraction(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def machine_info() -> dict[str, Any]:
    """What the figures were measured on (recorded in every JSON result)."""
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
    except (ValueError, OSError):
        mem_gib = 0.0
    return {"cpus": os.cpu_count(), "mem_gib": round(mem_gib, 1), "python": platform.python_version(),
            "kernel": platform.release(), "machine": platform.machine()}


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in ["python", *sys.argv])


def new_result(bench: str, label: str, config: dict[str, Any]) -> dict[str, Any]:
    """Skeleton of one JSON result; `bench.py report` reads `result`, `broker`, `config`, `label`."""
    return {"schema": RESULT_SCHEMA, "bench": bench, "label": label, "command": command_line(),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_info(), "config": config,
            "result": {}, "broker": {}, "ceilings": {}, "fractions": [], "targets": [], "intervals": []}


def write_json(path: str, result: dict[str, Any]) -> None:
    with open(path, "wb") as f:
        f.write(orjson.dumps(result, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    print(f"result written to {path}")
