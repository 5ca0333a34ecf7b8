"""Figure 8: one hop more: runners -> edge broker -> central broker -> subscriber, against runners -> one
broker -> subscriber, measured alternately in the same run.

- Throughput: ``event_handler`` called as fast as it goes for ``n`` events; messages/s from the first call
  to the subscriber's last receipt (distinct ``seq``s counted: a repeat never stands in for a loss).
- Latency: ``event_handler`` at a fixed rate, p50/p99 from the call to the subscriber's receipt (as figure 4);
  the difference between the two paths is what the second hop adds.

Every broker runs as by default (history on).  The edge forwards to the central broker with ``--upstream``.

    from benchmarks import hops, common
    result = hops.run(common.load_corpus(), reps=3, n=20000, rates=(1000,), seconds=2)
"""
from __future__ import annotations

import contextlib
import time
from array import array

from zmq_emitter.runner import plugin

from . import common
from .hotpath import publisher_of
from .latency import _one as latency_of, through

PATHS = {"one": "runner -> broker -> subscriber", "two": "runner -> edge -> central -> subscriber"}


def _throughput(config, sub, events: list, path: str) -> dict:
    handler, n = plugin.event_handler, len(events)
    sub.call("record")
    t0 = time.monotonic_ns()
    for event in events:
        handler(config, event)
    publisher_of(config).flush(60)
    got = sub.call("times", n, 60, path)
    received = array("q")
    with open(path, "rb") as f:
        received.frombytes(f.read())
    distinct = len(set(got["seqs"]))
    return {"rate": distinct / ((max(received) - t0) / 1e9) if len(received) else 0.0,
            "received": distinct, "sent": n}


def run(corpus: list[dict], reps: int, n: int, rates=(1000,), seconds: float = 2.0) -> dict:
    samples: dict = {path: {"throughput": [], **{rate: [] for rate in rates}} for path in PATHS}
    with common.Tmp() as tmp, contextlib.ExitStack() as stack:
        one = stack.enter_context(common.BrokerProcess(tmp, "one"))
        central = stack.enter_context(common.BrokerProcess(tmp, "central"))
        edge = stack.enter_context(common.BrokerProcess(tmp, "edge", extra=("--upstream", central.frontend)))
        ends = {"one": (one.frontend, one.backend), "two": (edge.frontend, central.backend)}
        subs = {path: stack.enter_context(common.Worker("recv", "sub", "connect", backend))
                for path, (_, backend) in ends.items()}
        configs = {path: common.RunnerConfig(runner_zmq_url=frontend) for path, (frontend, _) in ends.items()}
        for path in PATHS:
            common.connect_through(lambda: plugin.event_handler(configs[path], corpus[0]), [subs[path]], 30)
        for rep, path in common.alternate(list(PATHS), reps):
            samples[path]["throughput"].append(
                _throughput(configs[path], subs[path], common.cycle(corpus, n), f"{tmp}/t-{path}-{rep}"))
            for rate in rates:
                events = common.cycle(corpus, max(10, int(rate * seconds)))
                samples[path][rate].append(latency_of(through(configs[path]), subs[path], events, rate,
                                                      f"{tmp}/l-{path}-{rep}-{rate}"))
    data: dict = {}
    rows = []
    for path, label in PATHS.items():
        d = {"throughput": common.summary(r["rate"] for r in samples[path]["throughput"]),
             "lost": sum(r["sent"] - r["received"] for r in samples[path]["throughput"])}
        for rate in rates:
            runs = samples[path][rate]
            d[str(rate)] = {key: common.summary(r[key] for r in runs) for key in ("p50_us", "p99_us")}
            d["lost"] += sum(r["sent"] - r["received"] for r in runs)
        data[path] = d
        rows.append([label, common.spread(d["throughput"]),
                     *(f"{common.spread(d[str(r)]['p50_us'])} / {common.spread(d[str(r)]['p99_us'])}" for r in rates),
                     f"{d['lost']} lost"])
    ratio = data["two"]["throughput"]["median"] / data["one"]["throughput"]["median"]
    data["ratio"] = ratio
    added = {str(rate): {q: data["two"][str(rate)][q]["median"] - data["one"][str(rate)][q]["median"]
                         for q in ("p50_us", "p99_us")} for rate in rates}
    data["added_us"] = added
    targets = [{"target": "nothing lost on either path", "value": f"{data['one']['lost'] + data['two']['lost']} lost",
                "met": data["one"]["lost"] + data["two"]["lost"] == 0}]
    return {"title": f"8. One hop more: edge -> central against one broker ({n:,} events for throughput, "
                     f"{seconds}s per latency rate, x {reps} reps; medians (min-max)); two hops / one = {ratio:.2f}; "
                     "added per hop p50/p99 us: " + ", ".join(f"{r}/s: {a['p50_us']:.0f}/{a['p99_us']:.0f}"
                                                              for r, a in added.items()),
            "headers": ["path", "events/s end to end", *(f"p50 / p99 us at {r:,}/s" for r in rates), "delivery"],
            "rows": rows, "data": data, "targets": targets}
