"""Figure 6: resident size of a process that called zmq_emitter.event_handler a million times.

A fresh process (benchmarks/workers.py memory) publishes the corpus, repeated, through a
``zmq-emitter broker`` process to a subscriber process; once with the broker's history on
(the default: the plugin then keeps what it sent until the broker acknowledges it) and once
with ``--history none``.  VmRSS (/proc/self/status) is read after a warm-up of 1,000 calls
(sockets, caches and imports in place), halfway, at the end, after flushing the plugin's
buffer, and after glibc's malloc_trim (what is still held, against what was freed but not
handed back to the OS), and every fiftieth of the calls for the curve.

What a leak would show, three ways: growth between halfway and the end (a single pair of
readings: with the history on, the plugin keeps messages until acknowledged and hands freed
heap back in steps, so the size swings, and two readings land anywhere on the swing); the
highest reading of the second half above the highest of the first (the swing's envelope);
and what the process still holds once everything is acknowledged and freed memory handed
back (``trimmed``) above what it held after the warm-up.

    from benchmarks import memory, common
    result = memory.run(common.corpus_file(), calls=1_000_000)
"""
from __future__ import annotations

from . import common

POINTS = ("start", "warm", "half", "end", "flushed", "trimmed")
STEPS = 50  # RSS read after every fiftieth of the calls: the curve, and each half's highest reading


def _one(corpus_path, calls: int, codec: str, history: bool) -> dict:
    with common.Tmp() as tmp, common.BrokerProcess(tmp, history=history) as broker, \
            common.Worker("recv", "sub", "connect", broker.backend) as sub, \
            common.Worker("memory", broker.frontend, corpus_path, codec) as worker:
        rss = {"start": worker.ready["rss_kib"]}
        common.connect_through(lambda: worker.call("calls", 1), [sub])
        rss["warm"] = worker.call("calls", 1000)["rss_kib"]
        # The curve over the calls (charts.py draws it); halfway and the end are two of its points.
        curve, seconds, done = [(0, rss["warm"])], 0.0, 0
        for step in range(1, STEPS + 1):
            answer = worker.call("calls", calls * step // STEPS - done)
            done, seconds = calls * step // STEPS, seconds + answer["seconds"]
            curve.append((done, answer["rss_kib"]))
        rss["half"], rss["end"] = curve[STEPS // 2][1], curve[-1][1]
        flushed = worker.call("flush")
        rss["flushed"] = flushed["rss_kib"]
        rss["trimmed"] = worker.call("trim")["rss_kib"]
        sent = 1000 + calls  # since the connection check
        received = sub.call("wait", sent, 10)["counts"][0]
    return {"rss_kib": rss, "curve_rss_kib": curve, "calls_per_s": calls / seconds, "sent": sent,
            "received": received, "plugin_dropped": flushed["plugin_dropped"],
            "growth_kib": rss["end"] - rss["warm"], "growth_second_half_kib": rss["end"] - rss["half"],
            "peak_first_half_kib": max(kib for _, kib in curve[1:STEPS // 2 + 1]),
            "peak_second_half_kib": max(kib for _, kib in curve[STEPS // 2 + 1:]),
            "held_after_kib": rss["trimmed"] - rss["warm"]}


def run(corpus_path, calls: int, codec: str = "json") -> dict:
    data = {"calls": calls, "codec": codec,
            "history_on": _one(corpus_path, calls, codec, True),
            "history_off": _one(corpus_path, calls, codec, False)}
    rows = []
    for key, label in (("history_on", "broker history on (default)"), ("history_off", "broker --history none")):
        d = data[key]
        rows.append([label, f"{d['calls_per_s']:,.0f}"] + [f"{d['rss_kib'][p] / 1024:.0f}" for p in POINTS]
                    + [f"{d['growth_second_half_kib'] / 1024:+.1f}",
                       f"{d['peak_first_half_kib'] / 1024:.0f} / {d['peak_second_half_kib'] / 1024:.0f}",
                       f"{d['held_after_kib'] / 1024:+.1f}", f"{d['sent'] - d['received']}/{d['sent']}"])
    modes = ("history_on", "history_off")
    worst = max(data[k]["growth_second_half_kib"] for k in modes)
    # The envelope: the second half's highest reading within 5% (or 2 MiB) of the first half's
    envelope = all(data[k]["peak_second_half_kib"] <= max(1.05 * data[k]["peak_first_half_kib"],
                                                          data[k]["peak_first_half_kib"] + 2048) for k in modes)
    held = max(data[k]["held_after_kib"] for k in modes)
    targets = [{"target": "no growth of resident size over the second half of the calls, halfway -> end",
                "value": f"{worst / 1024:+.1f} MiB at most", "met": worst < 2048},
               {"target": "no growth of the envelope: the second half's highest reading within 5% (or 2 MiB) of the "
                          "first half's", "value": "; ".join(
                    f"{k.replace('_', ' ')}: {data[k]['peak_first_half_kib'] / 1024:.0f} -> "
                    f"{data[k]['peak_second_half_kib'] / 1024:.0f} MiB" for k in modes), "met": envelope},
               {"target": "nothing held after the calls once flushed and trimmed, against after the warm-up (< 2 MiB)",
                "value": f"{held / 1024:+.1f} MiB at most", "met": held < 2048}]
    return {"title": f"6. Memory of a process making {calls:,} event_handler calls ({codec}; VmRSS MiB)",
            "headers": ["broker", "calls/s", "start", "after 1k", "halfway", "end", "flushed", "trimmed",
                        "2nd half growth", "peak 1st / 2nd half", "held after", "lost/sent"],
            "rows": rows, "data": data, "targets": targets}
