"""Figure 3: the broker against a bare zmq.proxy, and fan-out to 1, 10 and 100 subscribers.

Every party is its own process: a producer (pre-encoded corpus messages, XPUB with
XPUB_NODROP so it blocks rather than drops), the proxy under test (``zmq-emitter broker``,
or a bare ``zmq.proxy`` with the broker's high-water marks), and subscriber processes
holding up to 25 SUB sockets each (100 subscribers = 4 processes: 100 Python processes
would not fit 2 cores; the broker sees 100 connections either way).

- Throughput: the producer sends as fast as it can; messages/s from its first send to the
  last receipt at one subscriber.  The broker runs as by default (history on: a capture
  socket feeds its history thread every message), with its history on disk (``--history-dir``)
  and with ``--history none``.
- Fan-out: the producer sends at a fixed rate; deliveries/s across all subscribers and
  messages lost (every subscriber must get every message; default high-water marks).

    from benchmarks import fanout, common
    result = fanout.run(common.corpus_file(), reps=3, n=50000, rate=2000, seconds=3)
"""
from __future__ import annotations

import contextlib

from . import common

PER_PROCESS = 25
FANOUT = (1, 10, 100)
LABELS = {"broker": "broker", "broker_disk": "broker --history-dir (history on disk)",
          "broker_nohistory": "broker --history none", "proxy": "bare zmq.proxy"}


def _subscribers(stack: contextlib.ExitStack, endpoints: dict, count: int) -> dict:
    """For each proxy under test, ``count`` SUB sockets in processes of up to 25; started together."""
    workers = {kind: [stack.enter_context(common.Worker("recv", "sub", "connect", endpoint,
                                                        min(PER_PROCESS, count - start), wait=False))
                      for start in range(0, count, PER_PROCESS)]
               for kind, endpoint in endpoints.items()}
    for group in workers.values():
        for worker in group:
            worker.wait_ready()
    return workers


def _phase(producer, subs: list, n: int, rate: float, timeout: float) -> dict:
    sent = producer.call("send", n, rate)
    got = common.call_all(subs, "wait", n, timeout)
    delivered = sum(sum(g["counts"]) for g in got)
    last = max(g["last_ns"] for g in got)
    sockets = sum(len(g["counts"]) for g in got)
    # counts are distinct (pub, seq) per socket: a repeat never stands in for a lost message
    return {"seconds": (last - sent["t0_ns"]) / 1e9, "delivered": delivered, "lost": n * sockets - delivered,
            "duplicates": sum(sum(g["duplicates"]) for g in got), "send_seconds": (sent["t1_ns"] - sent["t0_ns"]) / 1e9}


def run(corpus_path, reps: int, n: int, rate: float, seconds: float, fanout=FANOUT) -> dict:
    kinds = ("broker", "broker_disk", "broker_nohistory", "proxy")
    data: dict = {}
    with common.Tmp() as tmp, contextlib.ExitStack() as stack:
        targets_up = {"broker": stack.enter_context(common.BrokerProcess(tmp)),
                      "broker_disk": stack.enter_context(common.BrokerProcess(tmp, "disk", on_disk=True)),
                      "broker_nohistory": stack.enter_context(common.BrokerProcess(tmp, "plain", history=False)),
                      "proxy": stack.enter_context(common.ProxyProcess(tmp))}
        producers = {k: stack.enter_context(common.Worker("producer", t.frontend, corpus_path))
                     for k, t in targets_up.items()}

        # Throughput, one subscriber each.
        backends = {k: t.backend for k, t in targets_up.items()}
        subs = _subscribers(stack, backends, 1)
        for k in kinds:
            common.connect_through(lambda: producers[k].call("one"), subs[k])
        samples: dict = {k: {"rate": [], "lost": [], "duplicates": []} for k in kinds}
        for _, k in common.alternate(list(kinds), reps):
            result = _phase(producers[k], subs[k], n, 0, 60)
            samples[k]["rate"].append(n / result["seconds"])
            samples[k]["lost"].append(result["lost"])
            samples[k]["duplicates"].append(result["duplicates"])
        for k in kinds:
            data[f"throughput_{k}"] = {"per_s": common.summary(samples[k]["rate"]), "lost": sum(samples[k]["lost"]),
                                       "duplicates": sum(samples[k]["duplicates"]), "sent": n * reps}
        for workers in subs.values():
            for worker in workers:
                worker.stop()

        # Fan-out at a fixed rate.
        m = max(1, int(rate * seconds))
        fan_kinds = ("broker", "proxy")  # the broker as it runs by default, against the floor
        for count in fanout:
            with contextlib.ExitStack() as fan_stack:
                subs = _subscribers(fan_stack, {k: backends[k] for k in fan_kinds}, count)
                for k in fan_kinds:
                    common.connect_through(lambda: producers[k].call("one"), subs[k], timeout=30)
                samples = {k: {"rate": [], "lost": [], "send_rate": []} for k in fan_kinds}
                for _, k in common.alternate(list(fan_kinds), reps):
                    result = _phase(producers[k], subs[k], m, rate, seconds + 30)
                    samples[k]["rate"].append(result["delivered"] / result["seconds"])
                    samples[k]["lost"].append(result["lost"])
                    samples[k]["send_rate"].append(m / result["send_seconds"])
                for k in fan_kinds:
                    data[f"fanout_{count}_{k}"] = {
                        "deliveries_per_s": common.summary(samples[k]["rate"]), "lost": sum(samples[k]["lost"]),
                        "expected": m * count * reps, "achieved_send_rate": common.summary(samples[k]["send_rate"])}

    proxy_rate = data["throughput_proxy"]["per_s"]["median"]
    for k in kinds:
        data[f"throughput_{k}"]["ratio_to_proxy"] = data[f"throughput_{k}"]["per_s"]["median"] / proxy_rate
    ratio = data["throughput_broker"]["ratio_to_proxy"]
    rows = [[f"throughput, 1 subscriber: {LABELS[k]}", common.spread(data[f"throughput_{k}"]["per_s"]),
             f"{data[f'throughput_{k}']['lost']}/{data[f'throughput_{k}']['sent']}",
             f"{data[f'throughput_{k}']['ratio_to_proxy']:.2f}"] for k in kinds]
    for count in fanout:
        for k in fan_kinds:
            d = data[f"fanout_{count}_{k}"]
            d["sustained"] = d["deliveries_per_s"]["median"] >= 0.95 * count * rate
            rows.append([f"{count} subscriber(s) at {rate:,.0f} msg/s: {LABELS[k]}",
                         common.spread(d["deliveries_per_s"]),
                         f"{d['lost']}/{d['expected']}",
                         "kept up" if d["sustained"] else f"fell behind ({count * rate:,.0f}/s asked)"])
    lost = sum(data[f"fanout_{c}_broker"]["lost"] for c in fanout)
    plain = data["throughput_broker_nohistory"]["ratio_to_proxy"]
    disk = data["throughput_broker_disk"]["ratio_to_proxy"]
    targets = [{"target": "broker >= 0.9 of a bare zmq.proxy",
                "value": f"{ratio:.2f} (history on disk: {disk:.2f}; history off: {plain:.2f})",
                "met": ratio >= 0.9},
               {"target": f"fan-out to {'/'.join(map(str, fanout))} subscribers at {rate:,.0f} msg/s loses nothing",
                "value": f"lost {lost}", "met": lost == 0},
               {"target": f"subscribers keep up with {rate:,.0f} msg/s (deliveries >= 95% of subscribers x rate)",
                "value": ", ".join(f"{c}: {data[f'fanout_{c}_broker']['deliveries_per_s']['median']:,.0f}/s"
                                   for c in fanout),
                "met": all(data[f"fanout_{c}_broker"]["sustained"] for c in fanout)}]
    return {"title": f"3. Broker vs bare zmq.proxy ({n} msgs x {reps} reps) and fan-out ({m} msgs at "
                     f"{rate:,.0f}/s, per count x {reps} reps)",
            "headers": ["what", "msgs or deliveries /s median (min-max)", "lost/expected", "ratio to proxy / pace"],
            "rows": rows, "data": data, "targets": targets}
