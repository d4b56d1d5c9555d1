#!/usr/bin/env python3
"""Plot a `wsgate-bench --churn` run: the gateway's RSS, open fds, runtime tasks, connections
and the p99 publish -> delivery latency over time, with the baseline taken before the load
(dashed) and the end of the load (dotted).

    python3 tools/soak/plot.py soak.jsonl soak.png

Needs matplotlib (`pip install matplotlib`, e.g. in a venv).
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(src, dst):
    rows = [json.loads(line) for line in open(src) if line.strip()]
    base = next(r for r in rows if r["phase"] == "baseline")
    summary = next((r for r in rows if r["phase"] == "summary"), None)
    series = [r for r in rows if r["phase"] in ("baseline", "load", "settle")]
    load = [r for r in rows if r["phase"] == "load"]
    t = [r["elapsed_s"] / 60 for r in series]
    load_end = load[-1]["elapsed_s"] / 60 if load else None

    panels = [
        ("rss_mib", "gateway RSS (MiB)"),
        ("fds", "open fds"),
        ("tasks", "runtime tasks"),
        ("connections", "connections"),
    ]
    fig, axes = plt.subplots(len(panels) + 1, 1, figsize=(8, 9), sharex=True)
    for ax, (key, label) in zip(axes, panels):
        ax.plot(t, [r["gateway"][key] for r in series], marker=".", lw=1)
        b = base["gateway"][key]
        if b is not None:
            ax.axhline(b, ls="--", c="grey", lw=1, label=f"baseline {b:g}")
            ax.legend(loc="upper right", fontsize=8)
        ax.set_ylabel(label, fontsize=9)
        ax.set_ylim(bottom=0)
    ax = axes[-1]
    lt = [r["elapsed_s"] / 60 for r in load]
    ax.plot(lt, [r["latency_ms"]["p99"] for r in load], marker=".", lw=1, label="p99")
    ax.plot(lt, [r["latency_ms"]["p50"] for r in load], marker=".", lw=1, label="p50")
    ax.set_ylabel("publish→delivery (ms)", fontsize=9)
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_xlabel("minutes")
    for a in axes:
        if load_end is not None:
            a.axvline(load_end, ls=":", c="k", lw=1)
        a.grid(alpha=0.3)
    p = base.get("params", {})
    title = (
        f"wsgate churn soak: {p.get('connect_rate', '?'):g} connects/s, "
        f"{p.get('open', '?')} open, {p.get('publish_rate', '?'):g} publishes/s, "
        f"{p.get('rooms', '?')} rooms, {p.get('misbehave', 0) * 100:g}% misbehaving"
    )
    if summary:
        title += (
            f"\nlost {summary['lost']}, duplicates {summary['duplicates']}, "
            f"{'PASS' if summary['pass'] else 'FAIL'}"
        )
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(dst, dpi=72)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: plot.py SOAK.jsonl OUT.png")
    main(sys.argv[1], sys.argv[2])
