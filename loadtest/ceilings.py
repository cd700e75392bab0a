"""The ceilings a benchmark run is measured against, measured on this machine in the same run.

    python loadtest/bench.py ceilings [--dir DIR] [--body 1024] [--batch 64]

- fdatasync: pwrite of a group (4 KiB and 64 KiB) into a file whose blocks are already written,
  then fdatasync, in the store's filesystem (PERFORMANCE_NOTES: 120-125 us p50, 7.3-8.0 k commits/s).
  That is the hard ceiling of SYNC_FLUSH group commits per second.
- memcpy: slice assignment of one body into a pre-faulted file mmap, streaming (notes: 65-88 ns for
  100 B, 138-207 ns for 1 KiB): the writer's per-record copy ceiling.
- ring: shm request-ring hand-off between two processes, one entry per batch (loadtest/bench_ring.py's
  run_case; notes: 498 k entries/s of 64 x 100 B, 218 k of 64 x 1 KiB).
- E2E_CEILINGS / ISSUE4_TARGETS: the prototype's end-to-end figures and the issue 4 targets, for the
  workloads they were measured on.

`measure(...)` returns a plain dict (stored in the JSON result); `fractions(...)` and `targets(...)`
compare one run's figures with it. Called from the main thread of bench.py; not thread-safe.
"""
from __future__ import annotations

import argparse
import mmap
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loadtest import bench_ring  # noqa: E402
from loadtest._stats import Histogram, fmt_fraction, fmt_ms, fmt_rate, table  # noqa: E402

FSYNC_SIZES = (4096, 65536)
MSYNC_BYTES = 16384  # a group of ~14 x 1 KiB messages
FSYNC_FILE_BYTES = 16 << 20
MMAP_FILE_BYTES = 64 << 20
RING_BYTES = 64 << 20
RECORD_OVERHEAD = 120  # CommitLog header (~91 B) + topic + the SDK's properties, per record, roughly

# PERFORMANCE_NOTES "Key figures": prototype end to end (client -> ROUTER front -> ring -> writer ->
# mmap -> ack), msg/s by (flush mode, batch, body bytes).
E2E_CEILINGS = {
    ("ASYNC_FLUSH", 1, 100): 59_000, ("ASYNC_FLUSH", 16, 100): 330_000, ("ASYNC_FLUSH", 64, 100): 870_000,
    ("ASYNC_FLUSH", 256, 100): 1_290_000, ("ASYNC_FLUSH", 1, 1024): 59_000,
    ("ASYNC_FLUSH", 16, 1024): 280_000, ("ASYNC_FLUSH", 64, 1024): 680_000,
    ("ASYNC_FLUSH", 256, 1024): 950_000,
    ("SYNC_FLUSH", 1, 100): 60_000, ("SYNC_FLUSH", 16, 100): 190_000, ("SYNC_FLUSH", 64, 100): 500_000,
    ("SYNC_FLUSH", 256, 100): 820_000, ("SYNC_FLUSH", 1, 1024): 60_000, ("SYNC_FLUSH", 16, 1024): 150_000,
    ("SYNC_FLUSH", 64, 1024): 370_000, ("SYNC_FLUSH", 256, 1024): 430_000,
}
MIN_E2E_CONCURRENCY = 8  # the prototype's end-to-end figures had 8-64 requests in flight
# A lone synchronous sender's p50 round trip in the notes: DEALER<->ROUTER over tcp with nothing
# behind it (ASYNC_FLUSH), and the prototype's lone sender with one fdatasync per message (SYNC_FLUSH).
LONE_SENDER_P50_MS = {
    "ASYNC_FLUSH": (0.058, "zmq DEALER<->ROUTER tcp round trip, 58 us p50 (notes)"),
    "SYNC_FLUSH": (0.318, "prototype lone sync sender with fdatasync, 318 us p50 (notes)"),
}
# Issue 4 "Done when": (name, flush, batch, body, concurrency or None, min msg/s, max p50 ms, max p99 ms)
ISSUE4_TARGETS = (
    ("issue 4 #1: ASYNC batch 64 x 1 KiB", "ASYNC_FLUSH", 64, 1024, None, 150_000, None, None),
    ("issue 4 #1: ASYNC batch 64 x 100 B", "ASYNC_FLUSH", 64, 100, None, 250_000, None, None),
    ("issue 4 #2: SYNC 1 KiB, 64 sync senders", "SYNC_FLUSH", 1, 1024, 64, 20_000, None, 10.0),
    ("issue 4 #3: 1 sync sender, 1 KiB, ASYNC", "ASYNC_FLUSH", 1, 1024, 1, None, 0.3, 1.0),
)


# ---------------------------------------------------------------------------- measurements


def measure_fdatasync(directory: str, write_bytes: int, seconds: float) -> dict[str, float]:
    """pwrite `write_bytes` at successive offsets of a pre-written file + fdatasync, for `seconds`."""
    fd, path = tempfile.mkstemp(prefix="rmqd-ceiling-fsync-", dir=directory)
    try:
        chunk = b"\x01" * (1 << 20)
        for _ in range(FSYNC_FILE_BYTES >> 20):
            os.write(fd, chunk)
        os.fdatasync(fd)
        payload = b"\x02" * write_bytes

        def commit(offset: int) -> None:
            os.pwrite(fd, payload, offset)
            os.fdatasync(fd)

        return _commit_loop(commit, write_bytes, seconds)
    finally:
        os.close(fd)
        os.unlink(path)


def measure_msync(directory: str, write_bytes: int, seconds: float) -> dict[str, float]:
    """Copy `write_bytes` into a warmed mmap (fallocate + one byte per page + fdatasync, as the
    broker prepares CommitLog files) and msync that range: the group commit the broker does."""
    fd, path = tempfile.mkstemp(prefix="rmqd-ceiling-msync-", dir=directory)
    try:
        os.posix_fallocate(fd, 0, FSYNC_FILE_BYTES)
        mm = mmap.mmap(fd, FSYNC_FILE_BYTES)
        mm[0:FSYNC_FILE_BYTES:mmap.PAGESIZE] = bytes(FSYNC_FILE_BYTES // mmap.PAGESIZE)
        os.fdatasync(fd)
        view, payload = memoryview(mm), b"\x02" * write_bytes

        def commit(offset: int) -> None:
            view[offset:offset + write_bytes] = payload
            aligned = offset - offset % mmap.PAGESIZE
            mm.flush(aligned, offset + write_bytes - aligned)

        try:
            return _commit_loop(commit, write_bytes, seconds)
        finally:
            view.release()
            mm.close()
    finally:
        os.close(fd)
        os.unlink(path)


def _commit_loop(commit: Callable[[int], None], write_bytes: int, seconds: float) -> dict[str, float]:
    """Run commit(offset) at successive offsets for `seconds`: commits/s and latency percentiles."""
    hist, offset = Histogram(), 0
    started = time.perf_counter()
    stop = started + seconds
    while time.perf_counter() < stop:
        t0 = time.perf_counter_ns()
        commit(offset)
        hist.record((time.perf_counter_ns() - t0) // 1000)
        offset = (offset + write_bytes) % (FSYNC_FILE_BYTES - write_bytes)
    elapsed = time.perf_counter() - started
    return {"write_bytes": write_bytes, "commits_per_s": hist.count / elapsed,
            "p50_us": hist.percentile_us(50), "p99_us": hist.percentile_us(99)}


def measure_mmap_copy(directory: str, body_bytes: int, seconds: float) -> dict[str, float]:
    """Stream copies of one body into a pre-faulted file mmap through a memoryview (as the writer)."""
    fd, path = tempfile.mkstemp(prefix="rmqd-ceiling-mmap-", dir=directory)
    try:
        os.ftruncate(fd, MMAP_FILE_BYTES)
        mm = mmap.mmap(fd, MMAP_FILE_BYTES)
        for page in range(0, MMAP_FILE_BYTES, mmap.PAGESIZE):  # pre-fault, as the warm-up does
            mm[page] = 0
        view = memoryview(mm)
        body = os.urandom(body_bytes)
        limit = MMAP_FILE_BYTES - body_bytes
        copies, offset = 0, 0
        started = time.perf_counter()
        stop = started + seconds
        while time.perf_counter() < stop:
            for _ in range(1000):
                view[offset:offset + body_bytes] = body
                offset += body_bytes
                if offset > limit:
                    offset = 0
            copies += 1000
        elapsed = time.perf_counter() - started
        view.release()
        mm.close()
        return {"body_bytes": body_bytes, "copies_per_s": copies / elapsed,
                "ns_per_copy": elapsed / copies * 1e9, "gb_per_s": copies * body_bytes / elapsed / 1e9}
    finally:
        os.close(fd)
        os.unlink(path)


def measure_ring(entry_bytes: int, seconds: float) -> dict[str, float]:
    """Request-ring hand-off of `entry_bytes` entries between two processes (bench_ring.run_case)."""
    entry_bytes = max(64, min(entry_bytes, RING_BYTES // 8))
    result = bench_ring.run_case(RING_BYTES, entry_bytes, 16, seconds)
    return {"entry_bytes": entry_bytes, "entries_per_s": result["entries_per_s"],
            "gb_per_s": result["gb_per_s"]}


def measure(directory: str, body_bytes: int, batch: int, seconds: float = 0.5) -> dict[str, Any]:
    """Every ceiling for one workload; about 4 x `seconds` plus a process start."""
    return {
        "dir": directory,
        "fdatasync": [measure_fdatasync(directory, size, seconds) for size in FSYNC_SIZES],
        "msync": measure_msync(directory, MSYNC_BYTES, seconds),
        "memcpy": measure_mmap_copy(directory, body_bytes, seconds),
        "ring": dict(measure_ring(batch * (body_bytes + RECORD_OVERHEAD), seconds), records_per_entry=batch),
    }


# ---------------------------------------------------------------------------- comparisons


def fsync_commits_per_s(ceilings: dict[str, Any], group_bytes: float) -> float:
    """Commits/s for a group of `group_bytes`, interpolated between the measured sizes (clamped)."""
    small, large = ceilings["fdatasync"][0], ceilings["fdatasync"][-1]
    span = large["write_bytes"] - small["write_bytes"]
    weight = min(1.0, max(0.0, (group_bytes - small["write_bytes"]) / span)) if span else 0.0
    seconds = (1 - weight) / small["commits_per_s"] + weight / large["commits_per_s"]
    return 1 / seconds


def nearest_e2e(flush: str, batch: int, body: int) -> tuple[tuple[str, int, int], int]:
    """The prototype figure of the closest measured workload (batch, then body size)."""
    batches = sorted({b for _f, b, _s in E2E_CEILINGS}, key=lambda b: (abs(b - batch), b))
    key = (flush, batches[0], 100 if body <= 400 else 1024)
    return key, E2E_CEILINGS[key]


def fractions(run: dict[str, Any], ceilings: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows (what, measured, ceiling, fraction, note) comparing one run with its ceilings."""
    cfg, res, broker = run["config"], run["result"], run.get("broker", {})
    msgs = res.get("msgs_per_s") or 0.0
    rows = []
    per_flush, per_group = broker.get("msgs_per_flush"), broker.get("msgs_per_group")
    if cfg.get("flush") == "SYNC_FLUSH" and per_flush:
        group_bytes = per_flush * (cfg["body"] + RECORD_OVERHEAD)
        commits = fsync_commits_per_s(ceilings, group_bytes)
        rows.append(_row("SYNC msg/s vs fdatasync/s x msgs per fsync", msgs, commits * per_flush,
                         f"{commits:,.0f} commits/s for {group_bytes / 1024:.1f} KiB groups "
                         f"x {per_flush:.1f}"))
        if broker.get("flush_avg_us") and "msync" in ceilings:
            raw = ceilings["msync"]
            rows.append(_row("flusher avg flush: raw msync p50 / broker (lower is better)",
                             broker["flush_avg_us"] / 1000, raw["p50_us"] / 1000,
                             f"raw: {raw['write_bytes'] // 1024} KiB copied into a warmed mmap + msync",
                             lower_is_better=True, unit="ms"))
        if broker.get("flushes_per_s"):
            rows.append(_row("fdatasync calls/s vs raw fdatasync rate", broker["flushes_per_s"], commits,
                             "how busy the flusher's disk is"))
    if ceilings.get("ring"):
        ring = ceilings["ring"]
        records_per_request = cfg.get("batch", 1)
        rows.append(_row("msg/s vs ring hand-off", msgs, ring["entries_per_s"] * records_per_request,
                         f"{ring['entries_per_s']:,.0f} entries/s of {ring['entry_bytes']:,} B x "
                         f"{records_per_request} msgs"))
    if ceilings.get("memcpy"):
        copy = ceilings["memcpy"]
        rows.append(_row("msg/s vs body memcpy into mmap", msgs, copy["copies_per_s"],
                         f"{copy['ns_per_copy']:.0f} ns per {copy['body_bytes']:,} B copy"))
    if per_group:
        rows.append(_row("msgs per group commit (writer drain)", per_group, None, "higher = better batching"))
    flush = cfg.get("flush") if cfg.get("flush") in ("SYNC_FLUSH", "ASYNC_FLUSH") else "ASYNC_FLUSH"
    if cfg.get("concurrency", 1) >= MIN_E2E_CONCURRENCY:
        key, figure = nearest_e2e(flush, cfg.get("batch", 1), cfg.get("body", 1024))
        rows.append(_row("msg/s vs prototype end to end (notes)", msgs, figure,
                         f"{key[0]} batch {key[1]} x {key[2]} B; 50-70 % = well built, 1/3 = first version"))
    elif cfg.get("mode") == "sync" and res.get("rt_ms", {}).get("p50"):
        floor_ms, source = LONE_SENDER_P50_MS[flush]
        rows.append(_row("p50 RT: floor / this run (lower is better)", res["rt_ms"]["p50"], floor_ms, source,
                         lower_is_better=True, unit="ms"))
    return rows


def _row(what: str, value: float, ceiling: float | None, note: str,
         lower_is_better: bool = False, unit: str = "") -> dict[str, Any]:
    if lower_is_better:
        fraction = ceiling / value if ceiling and value else None
    else:
        fraction = value / ceiling if ceiling else None
    return {"what": what, "value": value, "ceiling": ceiling, "fraction": fraction, "note": note,
            "unit": unit}


def targets(run: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 4 targets that apply to this run's workload, each with met True/False."""
    cfg, res = run["config"], run["result"]
    rt = res.get("rt_ms", {})
    rows = []
    for name, flush, batch, body, concurrency, min_rate, max_p50, max_p99 in ISSUE4_TARGETS:
        if (cfg.get("flush"), cfg.get("batch"), cfg.get("body")) != (flush, batch, body):
            continue
        if concurrency is not None and cfg.get("concurrency") != concurrency:
            continue
        checks = []
        if min_rate is not None:
            checks.append((f">= {min_rate:,} msg/s", res.get("msgs_per_s", 0) >= min_rate))
        if max_p50 is not None:
            checks.append((f"p50 <= {max_p50} ms", rt.get("p50", 1e9) <= max_p50))
        if max_p99 is not None:
            checks.append((f"p99 <= {max_p99} ms", rt.get("p99", 1e9) <= max_p99))
        if res.get("failed"):
            checks.append(("every message acknowledged", False))
        rows.append({"what": name, "target": ", ".join(c for c, _ in checks),
                     "met": all(ok for _c, ok in checks)})
    return rows


# ---------------------------------------------------------------------------- printing


def ceilings_table(ceilings: dict[str, Any]) -> str:
    rows = []
    for f in ceilings["fdatasync"]:
        rows.append((f"pwrite {f['write_bytes'] // 1024} KiB + fdatasync",
                     f"{fmt_rate(f['commits_per_s'])}/s",
                     f"p50 {f['p50_us']} us, p99 {f['p99_us']} us", "notes: 7.3-8.0 k/s, p50 120-125 us"))
    if "msync" in ceilings:
        m = ceilings["msync"]
        rows.append((f"copy {m['write_bytes'] // 1024} KiB into warmed mmap + msync",
                     f"{fmt_rate(m['commits_per_s'])}/s",
                     f"p50 {m['p50_us']} us, p99 {m['p99_us']} us", "notes: page-touched mmap 125 us p50"))
    copy = ceilings["memcpy"]
    rows.append((f"memcpy {copy['body_bytes']:,} B into mmap", f"{fmt_rate(copy['copies_per_s'])}/s",
                 f"{copy['ns_per_copy']:.0f} ns, {copy['gb_per_s']:.2f} GB/s",
                 "notes: 100 B 65-88 ns, 1 KiB 138-207"))
    ring = ceilings["ring"]
    rows.append((f"shm ring, {ring['entry_bytes']:,} B entries", f"{fmt_rate(ring['entries_per_s'])}/s",
                 f"{ring['gb_per_s']:.2f} GB/s", "notes: 498 k/s (6.4 KB), 218 k/s (64 KiB)"))
    return table(rows, ("ceiling (measured now, in " + ceilings["dir"] + ")", "rate", "detail", "reference"),
                 align="lrll")


def fractions_table(rows: list[dict[str, Any]]) -> str:
    return table([(r["what"], _fmt_value(r["value"], r["unit"]), _fmt_value(r["ceiling"], r["unit"]),
                   fmt_fraction(r["fraction"]), r["note"]) for r in rows],
                 ("comparison", "this run", "ceiling", "fraction", "how the ceiling is made"), align="lrrrl")


def _fmt_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "ms":
        return f"{fmt_ms(value)} ms"
    return fmt_rate(value) if value >= 100 else f"{value:.1f}"


def targets_table(rows: list[dict[str, Any]]) -> str:
    return table([(r["what"], r["target"], "MET" if r["met"] else "not met") for r in rows],
                 ("target", "requires", "status"), align="lll")


# ---------------------------------------------------------------------------- `bench.py ceilings`


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="directory in the store's filesystem")
    parser.add_argument("--body", type=int, default=1024, help="body bytes for the memcpy ceiling")
    parser.add_argument("--batch", type=int, default=64, help="messages per ring entry")
    parser.add_argument("--seconds", type=float, default=1.0, help="seconds per measurement")


def run(args: argparse.Namespace) -> int:
    print(ceilings_table(measure(args.dir, args.body, args.batch, args.seconds)))
    return 0

