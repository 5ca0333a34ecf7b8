"""The charts of benchmarks/RESULTS.md, drawn from a run's JSON (benchmarks/results/latest.json).

    .venv/bin/python benchmarks/charts.py                       # latest.json -> benchmarks/results/*.png
    .venv/bin/python benchmarks/charts.py RUN.json OUT_DIR

``benchmarks/run.py`` calls ``draw`` after every run, so the pictures always show the numbers in the
JSON beside them.  Each chart shows what its figure's target is about: ratios to the baseline measured
in the same run (with the target as a line), or the measured values with their spread.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent

if __package__ in (None, ""):
    sys.path.insert(0, str(HERE.parent))

from benchmarks import hotpath  # noqa: E402


def _bars(ax, labels: list[str], values: list[float], lows: list[float], highs: list[float], target: float | None,
          xlabel: str) -> None:
    y = range(len(labels))
    errors = [[v - lo for v, lo in zip(values, lows)], [hi - v for v, hi in zip(values, highs)]]
    ax.barh(list(y), values, xerr=errors, color="#4c72b0", ecolor="#333333", capsize=3)
    ax.set_yticks(list(y), labels)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    if target is not None:
        ax.axvline(target, color="#c44e52", linestyle="--", label=f"target {target:g}")
        ax.legend(loc="lower right")
    ax.grid(axis="x", alpha=0.3)


def _hotpath(figure: dict, ax) -> None:
    data = figure["data"]
    labels, values, lows, highs = [], [], [], []
    for key, d in data.items():
        if not key.startswith("plugin_"):
            continue
        floor = data[f"floor_{hotpath.floor_of(key[len('plugin_'):])}"]["e2e_per_s"]["median"]
        labels.append(key[len("plugin_"):])
        values.append(d["e2e_per_s"]["median"] / floor)
        lows.append(d["e2e_per_s"]["min"] / floor)
        highs.append(d["e2e_per_s"]["max"] / floor)
    _bars(ax, labels, values, lows, highs, 0.8, "event_handler end to end / floor (median, min-max)")
    ax.set_title("1. Hot path against the floor")


def _hotpath_cpu(figure: dict, ax) -> None:
    """Table 1b as stacked bars: the CPU of one event in every part of the path, each contender."""
    data = figure["data"]
    contenders = [key for key in data if key.startswith(("plugin_", "floor_")) and "cpu_parts_us_per_event" in data[key]]
    parts = [part for part in hotpath.PARTS if part != "all"]
    colours = ["#4c72b0", "#8da0cb", "#a6cee3", "#dd8452", "#f2b880", "#55a868"]
    left = [0.0] * len(contenders)
    for part, colour in zip(parts, colours):
        widths = [data[key]["cpu_parts_us_per_event"][part]["median"] for key in contenders]
        ax.barh(range(len(contenders)), widths, left=left, color=colour, label=part)
        left = [a + b for a, b in zip(left, widths)]
    ax.set_yticks(range(len(contenders)), [key.replace("_", ": ", 1) for key in contenders], fontsize="small")
    ax.invert_yaxis()
    ax.set_xlabel("CPU microseconds per event, every process of the path (median)")
    ax.legend(fontsize="x-small", loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title("1b. Where the CPU of an event goes")


def _fanout(figure: dict, ax) -> None:
    data = figure["data"]
    proxy = data["throughput_proxy"]["per_s"]["median"]
    labels, values, lows, highs = [], [], [], []
    for key in ("throughput_broker", "throughput_broker_disk", "throughput_broker_nohistory", "throughput_proxy"):
        if key in data:
            s = data[key]["per_s"]
            labels.append(key[len("throughput_"):].replace("_", " "))
            values.append(s["median"] / proxy)
            lows.append(s["min"] / proxy)
            highs.append(s["max"] / proxy)
    _bars(ax, labels, values, lows, highs, 0.9, "messages/s / bare zmq.proxy (median, min-max)")
    ax.set_title("3. Broker throughput against a bare proxy")


def _latency(figure: dict, ax) -> None:
    data = figure["data"]
    rates = list(data)
    for key, colour in (("p50_us", "#4c72b0"), ("p99_us", "#dd8452"), ("max_us", "#999999")):
        ax.plot([int(r) for r in rates], [data[r][key]["median"] for r in rates], marker="o", color=colour,
                label=key.replace("_us", ""))
    for path, colour in (("broker --history none", "#55a868"), ("floor", "#333333")):
        base = figure.get("baselines", {}).get(path)
        if base:
            ax.plot([int(r) for r in base], [base[r]["p99_us"]["median"] for r in base], marker="x", linestyle=":",
                    color=colour, label=f"p99, {path}")
    ax.axhline(1000, color="#c44e52", linestyle="--", label="p99 target 1 ms")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("events/s")
    ax.set_ylabel("microseconds (median of reps)")
    ax.legend()
    ax.grid(alpha=0.3)
    ax.set_title("4. Latency event_handler -> subscriber")


def _playbook(figure: dict, ax) -> None:
    paired = figure["data"].get("paired_zmq_vs_off")
    if not paired:
        return
    diffs = [d * 100 for d in paired["differences"]]
    ax.scatter(diffs, [0] * len(diffs), alpha=0.6, color="#4c72b0", label="one pair: zmq / off - 1")
    low, high = (v * 100 for v in paired["ci95"])
    ax.errorbar([paired["median"] * 100], [0.2], xerr=[[paired["median"] * 100 - low], [high - paired["median"] * 100]],
                fmt="o", color="#333333", capsize=4, label="median, 95% CI")
    ax.axvline(5, color="#c44e52", linestyle="--", label="target: CI below +5%")
    ax.axvline(0, color="#999999", linewidth=0.8)
    ax.set_yticks([])
    ax.set_ylim(-0.5, 0.7)
    ax.set_xlabel("% wall time, plugin on vs off, same repetition")
    ax.legend(loc="upper right", fontsize="small")
    ax.set_title("5. Real ansible-runner run: paired difference")


def _memory(figure: dict, ax) -> None:
    data = figure["data"]
    for key, colour in (("history_on", "#4c72b0"), ("history_off", "#dd8452")):
        if key in data:
            curve = data[key]["curve_rss_kib"]  # (calls made, VmRSS) after every fiftieth of the calls
            ax.plot([calls for calls, _ in curve], [kib / 1024 for _, kib in curve], marker=".", color=colour,
                    label=key.replace("_", " "))
            for point, marker in (("flushed", "s"), ("trimmed", "v")):  # after the calls: flush, then malloc_trim
                ax.plot([curve[-1][0]], [data[key]["rss_kib"][point] / 1024], marker=marker, color=colour,
                        linestyle="none", label=f"{key.replace('_', ' ')}, {point}")
    ax.set_xlabel("event_handler calls made")
    ax.set_ylabel("VmRSS MiB")
    ax.legend()
    ax.grid(alpha=0.3)
    ax.set_title(f"6. Memory over {data['calls']:,} event_handler calls")


def _hops(figure: dict, ax) -> None:
    data = figure["data"]
    labels = ["one broker", "edge -> central"]
    one = data["one"]["throughput"]["median"]
    stats = [data[path]["throughput"] for path in ("one", "two")]
    _bars(ax, labels, [s["median"] / one for s in stats], [s["min"] / one for s in stats],
          [s["max"] / one for s in stats], None, "events/s end to end / one broker (median, min-max)")
    ax.set_title("8. One hop more: edge and central broker against one broker")


def _eda(figure: dict, ax) -> None:
    data = figure["data"]
    styles = {("rulebook", "small"): ("#4c72b0", "-"), ("rulebook", "large"): ("#4c72b0", ":"),
              ("source", "small"): ("#dd8452", "-"), ("source", "large"): ("#dd8452", ":")}
    labels = {"rulebook": "rule's action starting", "source": "source's queue only", "small": "< 4 KB",
              "large": ">= 4 KB"}
    for (path, size), (colour, style) in styles.items():
        delays = data.get(path, {}).get(size, {}).get("delays_ms")
        if delays:  # the fraction of events whose delay is at most x: every event of every rep
            ax.plot(delays, [(i + 1) / len(delays) for i in range(len(delays))], color=colour, linestyle=style,
                    label=f"{labels[path]}, {labels[size]}")
    ax.axvline(data.get("target_p99_ms", 250), color="#c44e52", linestyle="--", label="p99 target")
    ax.set_xscale("log")
    ax.set_xlabel(f"ms from event_handler, at {data.get('rate', 0):g} events/s")
    ax.set_ylabel("fraction of events")
    ax.legend(loc="lower right", fontsize="small")
    ax.grid(alpha=0.3)
    ax.set_title("9. event_handler -> a rule's action starting in ansible-rulebook")


def _stores(figure: dict, ax) -> None:
    data = figure["data"]
    names = {"memory": "memory", "journal": "journal", "jetstream_r1": "JetStream R1", "jetstream_r3": "JetStream R3"}
    labels, stats = [], []
    for key, name in names.items():
        if key in data:
            rate = next(r for r in data[key] if r.isdigit())
            latency = data[key][rate]
            labels.append(f"{name}\nack p50 {latency['p50_us']['median'] / 1000:.1f} / "
                          f"p99 {latency['p99_us']['median'] / 1000:.1f} ms at {int(rate):,}/s")
            stats.append(data[key]["throughput"])
    _bars(ax, labels, [s["median"] for s in stats], [s["min"] for s in stats], [s["max"] for s in stats], None,
          "acknowledged messages/s (median, min-max)")
    ax.set_title("10. Where the history lives: memory, journal, JetStream")


CHARTS = {"hotpath": _hotpath, "hotpath_cpu": _hotpath_cpu, "fanout": _fanout, "latency": _latency, "playbook": _playbook, "memory": _memory,
          "hops": _hops, "eda": _eda, "stores": _stores}


SOURCES = {"hotpath_cpu": "hotpath"}  # a chart drawn from another figure's data


def draw(report: dict, out_dir: Path) -> list[Path]:
    """One PNG per figure the report holds (``<figure>.png`` in ``out_dir``); returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, chart in CHARTS.items():
        figure = report["figures"].get(SOURCES.get(name, name))
        if figure is None or "skipped" in figure:
            continue
        fig, ax = plt.subplots(figsize=(8, 3.6), layout="constrained")
        chart(figure, ax)
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


if __name__ == "__main__":
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "results" / "latest.json"
    target = Path(sys.argv[2]) if len(sys.argv) > 2 else source.parent
    for path in draw(json.loads(source.read_text()), target):
        print(path)
