"""`bench.py report`: render JSON results of any benchmark as a markdown table and a PNG plot.

    python loadtest/bench.py report a.json b.json --markdown [--png OUT.png] [--out OUT.md]

Reads the shape written by loadtest/_stats.py new_result(): `label`, `bench`, `config` (flush, mode,
body, batch, concurrency), `result` (msgs_per_s, rt_ms{avg,p50,p99,max}, failed, plus overload and
recovery figures when present), `broker` (msgs_per_group, msgs_per_flush, cpu_cores), `fractions`,
`targets` and `intervals`. Missing keys print as "-", so other benchmarks only fill what they have.
The PNG needs matplotlib (pip install -e '.[loadtest]'); the markdown does not.
Runs in the caller's process; no shared state.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loadtest._stats import fmt_fraction, fmt_ms, fmt_rate  # noqa: E402

COLUMNS = ("run", "flush", "mode", "body x batch", "in flight", "msg/s", "MB/s", "p50 ms", "p99 ms", "max ms",
           "failed", "msgs/group", "msgs/fsync", "vs e2e ceiling")


def load(paths: list[str]) -> list[dict[str, Any]]:
    results = []
    for path in paths:
        with open(path, "rb") as f:
            results.append(orjson.loads(f.read()))
    return results


def _opt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def row(result: dict[str, Any]) -> list[str]:
    cfg, res, broker = result.get("config", {}), result.get("result", {}), result.get("broker", {})
    rt = res.get("rt_ms", {})
    e2e = next((f["fraction"] for f in result.get("fractions", []) if "prototype" in f["what"]), None)
    return [result.get("label", "?"), cfg.get("flush", "-"), cfg.get("mode", "-"),
            f"{cfg.get('body', '-')} B x {cfg.get('batch', '-')}", str(cfg.get("concurrency", "-")),
            fmt_rate(res.get("msgs_per_s")), _opt(res.get("mb_per_s")), fmt_ms(rt.get("p50")),
            fmt_ms(rt.get("p99")), fmt_ms(rt.get("max")), str(res.get("failed", "-")),
            _opt(broker.get("msgs_per_group")), _opt(broker.get("msgs_per_flush")), fmt_fraction(e2e)]


def markdown_table(header: tuple[str, ...] | list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


def targets_markdown(results: list[dict[str, Any]]) -> str:
    rows = [[t["what"], t["target"], r.get("label", "?"), "met" if t["met"] else "**not met**"]
            for r in results for t in r.get("targets", [])]
    return markdown_table(("target", "requires", "run", "status"), rows) if rows else ""


def cpu_markdown(results: list[dict[str, Any]]) -> str:
    names = sorted({n for r in results for n in r.get("broker", {}).get("cpu_cores", {})})
    if not names:
        return ""
    rows = [[r.get("label", "?")] + [_opt(r["broker"].get("cpu_cores", {}).get(n), 2) for n in names]
            for r in results]
    return markdown_table(["run (CPU cores)", *names], rows)


def overload_markdown(results: list[dict[str, Any]]) -> str:
    rows = []
    for r in results:
        res = r.get("result", {})
        if "busy_share" not in res:
            continue
        rec = res.get("recovery", {})
        after = rec.get("after_rt_ms", {})
        rows.append([r.get("label", "?"), fmt_rate(res.get("capacity_msgs_per_s")),
                     f"{fmt_rate(res.get('offered_msgs_per_s'))} ({res.get('offered_factor', 0):.2f}x)",
                     fmt_rate(res.get("msgs_per_s")), fmt_fraction(res.get("busy_share")),
                     _opt(res.get("rss_mib_max")), _opt(res.get("anon_mib_max")),
                     fmt_ms(rec.get("first_ok_after_ms")),
                     f"{fmt_ms(after.get('p50'))} / {fmt_ms(after.get('p99'))}",
                     str(sum((rec.get("failures") or {}).values()))])
    header = ("run", "capacity msg/s", "offered msg/s", "accepted msg/s", "SYSTEM_BUSY share", "RSS max MiB",
              "anon RSS max MiB", "first OK after stop ms", "recovery p50 / p99 ms", "recovery failures")
    return markdown_table(header, rows) if rows else ""


def workloads_markdown(results: list[dict[str, Any]]) -> str:
    """Publish and consume side of `bench.py workload` results (those with end-to-end latencies)."""
    rows = []
    for r in results:
        res = r.get("result", {})
        if "e2e_ms" not in res:
            continue
        pub, e2e, backlog = res.get("rt_ms", {}), res["e2e_ms"], res.get("backlog", {})
        rows.append([r.get("label", "?"), str(r.get("config", {}).get("queues", "-")),
                     str(r.get("config", {}).get("body", "-")), fmt_rate(res.get("target_rate")),
                     fmt_rate(res.get("msgs_per_s")), fmt_rate(res.get("consume_msgs_per_s")),
                     " / ".join(fmt_ms(pub.get(k)) for k in ("p50", "p99", "p999")),
                     " / ".join(fmt_ms(e2e.get(k)) for k in ("p50", "p99", "p999")),
                     str(res.get("failed", "-")),
                     f"{backlog['backlog_msgs']:,} in {backlog['build_s']:.0f} s" if backlog else "-",
                     f"{backlog['drain_s']:.1f} s, {fmt_rate(backlog['drain_consume_msgs_per_s'])} msg/s"
                     if backlog else "-"])
    header = ("workload", "queues", "body B", "target msg/s", "publish msg/s", "consume msg/s",
              "publish p50 / p99 / p99.9 ms", "end-to-end p50 / p99 / p99.9 ms", "failed", "backlog built",
              "backlog drained")
    return markdown_table(header, rows) if rows else ""


def render_markdown(results: list[dict[str, Any]]) -> str:
    parts = [markdown_table(COLUMNS, [row(r) for r in results])]
    for extra in (workloads_markdown(results), targets_markdown(results), overload_markdown(results),
                  cpu_markdown(results)):
        if extra:
            parts.append(extra)
    return "\n\n".join(parts) + "\n"


def render_png(results: list[dict[str, Any]], path: str) -> None:
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("--png needs matplotlib: pip install -e '.[loadtest]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r.get("label", "?") for r in results]
    fig, (ax_rate, ax_rt, ax_time) = plt.subplots(3, 1, figsize=(11, 12))
    rates = [r.get("result", {}).get("msgs_per_s") or 0 for r in results]
    ax_rate.barh(labels, rates, color="tab:blue")
    ax_rate.set_xlabel("msg/s (acknowledged)")
    ax_rate.set_title("throughput")
    for y, value in enumerate(rates):
        ax_rate.annotate(f"{value:,.0f}", (value, y), va="center", fontsize=8)
    _latency_bars(ax_rt, results, labels)
    for r in results:
        points = r.get("intervals", [])
        if points:
            line, = ax_time.plot([p["t"] for p in points], [p["msgs_per_s"] for p in points], marker=".",
                                 label=r.get("label"))
        if points and "consume_msgs_per_s" in points[0]:  # bench.py workload: the consumer too
            ax_time.plot([p["t"] for p in points], [p["consume_msgs_per_s"] for p in points], linestyle="--",
                         color=line.get_color(), label=f"{r.get('label')} (consume)")
    ax_time.set_xlabel("seconds since measuring began")
    ax_time.set_ylabel("msg/s per interval (log)")
    ax_time.set_yscale("symlog", linthresh=1000)
    ax_time.set_title("throughput over time")
    ax_time.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot written to {path}")


def _latency_bars(ax: Any, results: list[dict[str, Any]], labels: list[str]) -> None:
    ys = range(len(results))
    for offset, (key, color) in enumerate((("p50", "tab:green"), ("p99", "tab:orange"), ("max", "tab:red"))):
        values = [r.get("result", {}).get("rt_ms", {}).get(key) or 0 for r in results]
        ax.barh([y + (offset - 1) * 0.27 for y in ys], values, height=0.27, color=color, label=key)
    ax.set_yticks(list(ys), labels)
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlabel("round trip ms (symlog)")
    ax.set_title("send latency")
    ax.legend(fontsize=8)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", nargs="+", metavar="RESULT.json")
    parser.add_argument("--markdown", action="store_true", help="print the markdown tables")
    parser.add_argument("--out", help="also write the markdown to this file")
    parser.add_argument("--png", help="write a PNG plot (needs matplotlib)")


def run(args: argparse.Namespace) -> int:
    results = load(args.results)
    text = render_markdown(results)
    if args.markdown or not args.png:
        print(text, end="")
    if args.out:
        Path(args.out).write_text(text)
    if args.png:
        render_png(results, args.png)
    return 0
