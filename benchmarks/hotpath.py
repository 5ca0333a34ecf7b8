"""Figure 1: the hot path, zmq_emitter.event_handler, against the floor, end to end.

Plugin: ``event_handler(runner_config, event)`` for every event of the corpus, through a
``zmq-emitter broker`` process to a subscriber process that counts every message.
Floor: the least any emitter must do: encode the event (orjson, or msgpack) and two raw
pyzmq sends (topic, payload) through a bare ``zmq.proxy`` process to a subscriber process.
The floor's socket is an XPUB with XPUB_NODROP, so a full queue blocks it instead of
dropping: it too loses nothing.  The plugin also runs (json) through a second broker
started with ``--history none``, to tell the plugin's cost from the history service's.

The rate is end to end: events / (last receipt at the subscriber - first call), both
read from CLOCK_MONOTONIC.  Contenders alternate, each repetition in reversed order.

    from benchmarks import hotpath, common
    result = hotpath.run(common.load_corpus(), reps=5, n=20000)
"""
from __future__ import annotations

import time

import msgpack
import orjson
import zmq

from zmq_emitter.runner import plugin
from zmq_emitter import protocol

from . import common

CODECS = ("json", "msgpack")
FLOOR_ENCODERS = {"json": orjson.dumps, "msgpack": msgpack.packb}


def publisher_of(config):
    """The plugin's publisher for ``config`` (after a first event_handler call with it).

    The benchmarks reach into the plugin only for this, to flush it at the end: the
    messages it still buffers are part of the end-to-end time.
    """
    return plugin._routes[id(config)].publisher


def run(corpus: list[dict], reps: int, n: int) -> dict:
    events = common.cycle(corpus, n)
    topics = [protocol.topic("event", str(e.get("runner_ident")), str(e.get("event"))) for e in events]
    with common.Tmp() as tmp, common.BrokerProcess(tmp) as broker, \
            common.BrokerProcess(tmp, "nohistory", history=False) as plain_broker, \
            common.ProxyProcess(tmp) as proxy, \
            common.Worker("recv", "sub", "connect", broker.backend) as plugin_sub, \
            common.Worker("recv", "sub", "connect", plain_broker.backend) as plain_sub, \
            common.Worker("recv", "sub", "connect", proxy.backend) as floor_sub:
        # plugin contenders: name -> (runner config, its subscriber)
        plugins = {codec: (common.RunnerConfig(runner_zmq_url=broker.frontend, runner_zmq_codec=codec), plugin_sub)
                   for codec in CODECS}
        plugins["json, broker --history none"] = (common.RunnerConfig(runner_zmq_url=plain_broker.frontend),
                                                  plain_sub)
        for config, sub in plugins.values():
            common.connect_through(lambda: plugin.event_handler(config, corpus[0]), [sub])

        ctx = zmq.Context()
        floor = ctx.socket(zmq.XPUB)
        floor.setsockopt(zmq.XPUB_NODROP, 1)
        floor.connect(proxy.frontend)
        common.connect_through(lambda: floor.send_multipart((topics[0], orjson.dumps(corpus[0]))), [floor_sub])

        def run_plugin(name: str) -> tuple[int, int, int]:
            handler, config = plugin.event_handler, plugins[name][0]
            cpu0, t0 = time.process_time_ns(), time.monotonic_ns()
            for event in events:
                handler(config, event)
            t_calls = time.monotonic_ns()
            publisher_of(config).flush(30)  # what the plugin deferred (buffered sends, resends) is its cost too
            return t0, t_calls, time.process_time_ns() - cpu0

        def run_floor(codec: str) -> tuple[int, int, int]:
            encode, send, more = FLOOR_ENCODERS[codec], floor.send, zmq.SNDMORE
            cpu0, t0 = time.process_time_ns(), time.monotonic_ns()
            for topic, event in zip(topics, events):
                payload = encode(event)
                send(topic, more)
                send(payload)
            return t0, time.monotonic_ns(), time.process_time_ns() - cpu0

        variants = [("plugin", name) for name in plugins] + [("floor", c) for c in CODECS]
        samples: dict = {v: {"e2e": [], "calls": [], "cpu": [], "lost": [], "duplicates": []} for v in variants}
        for _, (who, name) in common.alternate(variants, reps):
            t0, t_calls, cpu = (run_plugin if who == "plugin" else run_floor)(name)
            if who == "plugin":  # count only this contender's publisher: nothing late from another lands here
                got = plugins[name][1].call("wait", n, 30, publisher_of(plugins[name][0]).id)
            else:
                got = floor_sub.call("wait", n, 30)
            samples[(who, name)]["e2e"].append(n / ((got["last_ns"] - t0) / 1e9))
            samples[(who, name)]["calls"].append(n / ((t_calls - t0) / 1e9))
            # CPU of the sending process per event (its libzmq I/O thread included): what the
            # sender itself spends, apart from waiting for cores the other processes hold.
            samples[(who, name)]["cpu"].append(cpu / n / 1000)
            samples[(who, name)]["lost"].append(n - got["counts"][0])  # distinct (pub, seq): repeats hide nothing
            samples[(who, name)]["duplicates"].append(got["duplicates"][0])
        floor.close(linger=0)
        ctx.term()

    data = {f"{who}_{name}": {"e2e_per_s": common.summary(s["e2e"]), "calls_per_s": common.summary(s["calls"]),
                              "cpu_us_per_event": common.summary(s["cpu"]), "lost": sum(s["lost"]),
                              "duplicates": sum(s["duplicates"]), "sent": n * reps}
            for (who, name), s in samples.items()}
    rows, targets = [], []
    for name in plugins:
        codec = name.split(",")[0]
        p, f = data[f"plugin_{name}"], data[f"floor_{codec}"]
        ratio = p["e2e_per_s"]["median"] / f["e2e_per_s"]["median"]
        p["ratio_to_floor"] = ratio
        rows.append([f"plugin event_handler ({name})", common.spread(p["e2e_per_s"]), common.spread(p["calls_per_s"]),
                     common.spread(p["cpu_us_per_event"], "{:.1f}"), f"{p['lost']}/{p['sent']} ({p['duplicates']} dup)",
                     f"{ratio:.2f}"])
        if name in CODECS:
            targets.append({"target": f"hot path >= 0.8 of the floor end to end, nothing lost ({codec})",
                            "value": f"{ratio:.2f}, lost {p['lost']}", "met": ratio >= 0.8 and p["lost"] == 0})
    for codec in CODECS:
        f = data[f"floor_{codec}"]
        rows.append([f"floor: encode + 2 raw sends ({codec})", common.spread(f["e2e_per_s"]),
                     common.spread(f["calls_per_s"]), common.spread(f["cpu_us_per_event"], "{:.1f}"),
                     f"{f['lost']}/{f['sent']}", "1.00"])
    return {"title": f"1. Hot path, end to end through a broker process (history on unless said) "
                     f"({n} events x {reps} reps, events/s)",
            "headers": ["contender", "end to end /s median (min-max)", "calls /s (sender side)",
                        "sender CPU us/event (flush included)", "lost/sent (distinct)", "ratio to floor"],
            "rows": rows, "data": data, "targets": targets}
