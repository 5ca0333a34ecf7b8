"""Figure 4: latency from the event_handler call to a subscriber's receipt, through a broker process.

The sender takes ``time.monotonic_ns()`` just before each ``event_handler`` call and
calls at a fixed rate (sleeping while ahead of schedule, never spinning: 2 shared
cores); the subscriber process takes ``time.monotonic_ns()`` as each message arrives.
Both read CLOCK_MONOTONIC of the same machine.  Messages pair up in order; the header's
``seq`` proves the order and that nothing is missing.

    from benchmarks import latency, common
    result = latency.run(common.load_corpus(), reps=3, rates=(1000, 10000), seconds=2)
"""
from __future__ import annotations

import time
from array import array

from zmq_emitter.runner import plugin

from . import common
from .hotpath import publisher_of


def paced_calls(config, events: list, rate: float) -> tuple[array, int, int]:
    """``event_handler`` on each event at ``rate`` (sleeping while ahead, never spinning); the monotonic_ns
    taken before each call, and the monotonic_ns at the start and after the last call."""
    handler, period, sent = plugin.event_handler, 1e9 / rate, array("q")
    t_start = time.monotonic_ns()
    for i, event in enumerate(events):
        ahead = t_start + i * period - time.monotonic_ns()
        if ahead > 200_000:
            time.sleep(ahead / 1e9)
        sent.append(time.monotonic_ns())
        handler(config, event)
    return sent, t_start, time.monotonic_ns()


def _one(config, sub, events: list, rate: float, path: str) -> dict:
    n = len(events)
    sub.call("record")
    sent, t_start, t_end = paced_calls(config, events, rate)
    publisher_of(config).flush(30)
    got = sub.call("times", n, 30, path)
    received = array("q")
    with open(path, "rb") as f:
        received.frombytes(f.read())
    seqs = got["seqs"]
    in_order = all(b == a + 1 for a, b in zip(seqs, seqs[1:]))
    latencies = sorted((r - s) / 1000 for r, s in zip(received, sent))  # microseconds
    return {"achieved_rate": n / ((t_end - t_start) / 1e9), "received": len(received), "sent": n,
            "in_order": in_order, "p50_us": common.percentile(latencies, 50),
            "p99_us": common.percentile(latencies, 99), "max_us": latencies[-1]}


def run(corpus: list[dict], reps: int, rates=(1000, 10000), seconds: float = 2.0) -> dict:
    data: dict = {}
    with common.Tmp() as tmp, common.BrokerProcess(tmp) as broker, \
            common.Worker("recv", "sub", "connect", broker.backend) as sub:
        config = common.RunnerConfig(runner_zmq_url=broker.frontend)
        common.connect_through(lambda: plugin.event_handler(config, corpus[0]), [sub])
        samples: dict = {rate: [] for rate in rates}
        for rep, rate in common.alternate(list(rates), reps):
            events = common.cycle(corpus, max(10, int(rate * seconds)))
            samples[rate].append(_one(config, sub, events, rate, f"{tmp}/times-{rep}-{rate}"))
    rows, targets = [], []
    for rate, runs in samples.items():
        d = {key: common.summary(r[key] for r in runs) for key in ("p50_us", "p99_us", "max_us", "achieved_rate")}
        d["lost"] = sum(r["sent"] - r["received"] for r in runs)
        d["in_order"] = all(r["in_order"] for r in runs)
        data[str(rate)] = d
        rows.append([f"{rate:,} events/s", common.spread(d["achieved_rate"]), common.spread(d["p50_us"]),
                     common.spread(d["p99_us"]), common.spread(d["max_us"]),
                     f"{d['lost']} lost, {'in order' if d['in_order'] else 'OUT OF ORDER'}"])
        sustained = d["achieved_rate"]["median"] >= 0.95 * rate
        targets.append({"target": f"sender sustains {rate:,} events/s (latency measured at that rate)",
                        "value": f"{d['achieved_rate']['median']:,.0f}/s", "met": sustained})
    return {"title": f"4. Latency event_handler -> subscriber via broker ({seconds}s per rate x {reps} reps, "
                     "microseconds, medians of the per-rep figure (min-max))",
            "headers": ["target rate", "achieved /s", "p50 us", "p99 us", "max us", "delivery"],
            "rows": rows, "data": data, "targets": targets}
