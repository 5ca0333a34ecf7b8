"""Figure 4: latency from the event_handler call to a subscriber's receipt, through a broker process.

The sender takes ``time.monotonic_ns()`` just before each ``event_handler`` call and
calls at a fixed rate (sleeping while ahead of schedule, never spinning: 2 shared
cores); the subscriber process takes ``time.monotonic_ns()`` as each message arrives.
Both read CLOCK_MONOTONIC of the same machine.  Messages pair up in order; the header's
``seq`` proves the order and that nothing is missing.

Two baselines, paced and received the same way, alternating with it: the plugin through a
broker started with ``--history none`` (what the history and the acknowledgements add), and
the floor, the same three frames sent raw (``orjson.dumps`` and three pyzmq sends) through a
bare ``zmq.proxy`` process (what this machine's scheduling alone gives).

    from benchmarks import latency, common
    result = latency.run(common.load_corpus(), reps=3, rates=(1000, 10000), seconds=2)
"""
from __future__ import annotations

import os
import time
from array import array

import orjson
import zmq

from zmq_emitter import protocol
from zmq_emitter.runner import plugin

from . import common
from .hotpath import publisher_of


def paced(send_one, events: list, rate: float) -> tuple[array, int, int]:
    """``send_one(i, event)`` on each event at ``rate`` (sleeping while ahead, never spinning); the monotonic_ns
    taken before each call, and the monotonic_ns at the start and after the last call."""
    period, sent = 1e9 / rate, array("q")
    t_start = time.monotonic_ns()
    for i, event in enumerate(events):
        ahead = t_start + i * period - time.monotonic_ns()
        if ahead > 200_000:
            time.sleep(ahead / 1e9)
        sent.append(time.monotonic_ns())
        send_one(i, event)
    return sent, t_start, time.monotonic_ns()


def paced_calls(config, events: list, rate: float) -> tuple[array, int, int]:
    """``paced`` ``event_handler`` calls with ``config``."""
    handler = plugin.event_handler
    return paced(lambda i, event: handler(config, event), events, rate)


def paced_raw(sock: zmq.Socket, events: list, rate: float) -> tuple[array, int, int]:
    """``paced`` for the floor: each event as the plugin's three frames, encoded and sent raw."""
    more = zmq.SNDMORE
    header = protocol.header_prefix("json", f"floor{os.getpid()}x{time.monotonic_ns()}")  # new per call: never repeats

    def send_one(i: int, event: dict) -> None:
        sock.send(b"event/floor/runner_on_ok", more)
        sock.send(header + b"%d}" % (i + 1), more)
        sock.send(orjson.dumps(event))
    return paced(send_one, events, rate)


def through(runner_config):
    """The ``send`` of ``_one`` for event_handler calls with ``runner_config``: paced, then the plugin's buffer flushed
    (what it deferred arrives within the measurement)."""
    def send(events: list, rate: float) -> tuple[array, int, int]:
        result = paced_calls(runner_config, events, rate)
        publisher_of(runner_config).flush(30)
        return result
    return send


def _one(send, sub, events: list, rate: float, path: str) -> dict:
    """One repetition at ``rate``: ``send(events, rate)`` paces the calls and returns what ``paced_calls`` does."""
    n = len(events)
    sub.call("record")
    sent, t_start, t_end = send(events, rate)
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


PATHS = ("broker", "broker --history none", "floor")  # the figure, then its two baselines


def run(corpus: list[dict], reps: int, rates=(1000, 10000), seconds: float = 2.0) -> dict:
    with common.Tmp() as tmp, common.BrokerProcess(tmp) as broker, \
            common.BrokerProcess(tmp, "nohistory", history=False) as plain_broker, common.ProxyProcess(tmp) as proxy, \
            common.Worker("recv", "sub", "connect", broker.backend) as sub, \
            common.Worker("recv", "sub", "connect", plain_broker.backend) as plain_sub, \
            common.Worker("recv", "sub", "connect", proxy.backend) as floor_sub:
        config = common.RunnerConfig(runner_zmq_url=broker.frontend)
        plain_config = common.RunnerConfig(runner_zmq_url=plain_broker.frontend)
        common.connect_through(lambda: plugin.event_handler(config, corpus[0]), [sub])
        common.connect_through(lambda: plugin.event_handler(plain_config, corpus[0]), [plain_sub])
        ctx = zmq.Context()
        floor = ctx.socket(zmq.XPUB)
        floor.setsockopt(zmq.XPUB_NODROP, 1)
        floor.connect(proxy.frontend)
        common.connect_through(lambda: floor.send_multipart([b"event/floor/runner_on_ok", b"{}"]), [floor_sub])

        paths = {"broker": (through(config), sub), "broker --history none": (through(plain_config), plain_sub),
                 "floor": (lambda events, rate: paced_raw(floor, events, rate), floor_sub)}
        samples: dict = {(path, rate): [] for path in PATHS for rate in rates}
        for rep, (path, rate) in common.alternate(list(samples), reps):
            events = common.cycle(corpus, max(10, int(rate * seconds)))
            send, receiver = paths[path]
            samples[(path, rate)].append(_one(send, receiver, events, rate, f"{tmp}/times-{rep}-{rate}"))
        floor.close(linger=0)
        ctx.term()

    rows, targets, by_path = [], [], {path: {} for path in PATHS}
    for (path, rate), runs in samples.items():
        d = {key: common.summary(r[key] for r in runs) for key in ("p50_us", "p99_us", "max_us", "achieved_rate")}
        d["lost"] = sum(r["sent"] - r["received"] for r in runs)
        d["in_order"] = all(r["in_order"] for r in runs)
        by_path[path][str(rate)] = d
        rows.append([path, f"{rate:,} events/s", common.spread(d["achieved_rate"]), common.spread(d["p50_us"]),
                     common.spread(d["p99_us"]), common.spread(d["max_us"]),
                     f"{d['lost']} lost, {'in order' if d['in_order'] else 'OUT OF ORDER'}"])
    data = by_path["broker"]
    for rate, d in data.items():
        targets.append({"target": f"sender sustains {int(rate):,} events/s (latency measured at that rate)",
                        "value": f"{d['achieved_rate']['median']:,.0f}/s",
                        "met": d["achieved_rate"]["median"] >= 0.95 * int(rate)})
    if "10000" in data:
        p99 = {path: by_path[path]["10000"]["p99_us"]["median"] for path in PATHS}
        targets.append({"target": "p99 < 1 ms at 10,000 events/s through the default broker",
                        "value": f"{p99['broker']:,.0f} us (history none: {p99['broker --history none']:,.0f} us; "
                                 f"the floor: {p99['floor']:,.0f} us)", "met": p99["broker"] < 1000})
    return {"title": f"4. Latency event_handler -> subscriber via broker, and two baselines ({seconds}s per rate x "
                     f"{reps} reps, microseconds, medians of the per-rep figure (min-max))",
            "headers": ["path", "target rate", "achieved /s", "p50 us", "p99 us", "max us", "delivery"],
            "rows": rows, "data": data, "baselines": {path: by_path[path] for path in PATHS[1:]},
            "targets": targets}
