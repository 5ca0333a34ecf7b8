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

import os
import time

import msgpack
import orjson
import zmq

from zmq_emitter.runner import plugin
from zmq_emitter import _threads, protocol

from . import common

CODECS = ("json", "msgpack")
FLOOR_ENCODERS = {"json": orjson.dumps, "msgpack": msgpack.packb}


def publisher_of(config):
    """The plugin's publisher for ``config`` (after a first event_handler call with it).

    The benchmarks reach into the plugin only for this, to flush it at the end: the
    messages it still buffers are part of the end-to-end time.
    """
    return plugin._routes[id(config)].publisher


SMALL = ", small events"  # the suffix of the small-event corpus's contenders


def run(corpus: list[dict], reps: int, n: int, small: list[dict] | None = None, burst: int = 0) -> dict:
    """The figure on the large-event ``corpus`` and, if given, on the ``small``-event one (median ~1 KB); then,
    if ``burst``, that many calls at full speed on each corpus through the default broker (table 1c)."""
    corpora = {"": common.cycle(corpus, n)}
    if small is not None:
        corpora[SMALL] = common.cycle(small, n)
    topics = {suffix: [protocol.topic("event", str(e.get("runner_ident")), str(e.get("event"))) for e in events]
              for suffix, events in corpora.items()}
    with common.Tmp() as tmp, common.BrokerProcess(tmp) as broker, \
            common.BrokerProcess(tmp, "nohistory", history=False) as plain_broker, \
            common.ProxyProcess(tmp) as proxy, \
            common.Worker("recv", "sub", "connect", broker.backend) as plugin_sub, \
            common.Worker("recv", "sub", "connect", plain_broker.backend) as plain_sub, \
            common.Worker("recv", "sub", "connect", proxy.backend) as floor_sub:
        # plugin contenders: name -> (runner config, its subscriber, its events)
        plugins = {}
        for suffix, events in corpora.items():
            for codec in CODECS:
                plugins[codec + suffix] = (common.RunnerConfig(runner_zmq_url=broker.frontend, runner_zmq_codec=codec),
                                           plugin_sub, events)
        plugins["json, broker --history none"] = (common.RunnerConfig(runner_zmq_url=plain_broker.frontend),
                                                  plain_sub, corpora[""])
        # The processes each contender's messages pass through, for the CPU they spend (table 1b)
        parties = {name: {"broker": broker.proc.pid, "subscriber": plugin_sub.proc.pid} for name in plugins}
        parties["json, broker --history none"] = {"broker": plain_broker.proc.pid, "subscriber": plain_sub.proc.pid}
        floor_parties = {"broker": proxy.proc.pid, "subscriber": floor_sub.proc.pid}
        for config, sub, _ in plugins.values():
            common.connect_through(lambda: plugin.event_handler(config, corpus[0]), [sub])

        ctx = zmq.Context()
        floor = ctx.socket(zmq.XPUB)
        floor.setsockopt(zmq.XPUB_NODROP, 1)
        floor.connect(proxy.frontend)
        common.connect_through(lambda: floor.send_multipart((topics[""][0], orjson.dumps(corpus[0]))), [floor_sub])

        def run_plugin(name: str) -> tuple[int, int, int]:
            handler, (config, _, events) = plugin.event_handler, plugins[name]
            cpu0, t0 = time.process_time_ns(), time.monotonic_ns()
            for event in events:
                handler(config, event)
            t_calls = time.monotonic_ns()
            publisher_of(config).flush(30)  # what the plugin deferred (buffered sends, resends) is its cost too
            return t0, t_calls, time.process_time_ns() - cpu0

        def run_floor(name: str) -> tuple[int, int, int]:
            codec, suffix = name.split(",")[0], name[len(name.split(",")[0]):]
            encode, send, more = FLOOR_ENCODERS[codec], floor.send, zmq.SNDMORE
            cpu0, t0 = time.process_time_ns(), time.monotonic_ns()
            for topic, event in zip(topics[suffix], corpora[suffix]):
                payload = encode(event)
                send(topic, more)
                send(payload)
            return t0, time.monotonic_ns(), time.process_time_ns() - cpu0

        floors = [codec + suffix for suffix in corpora for codec in CODECS]
        variants = [("plugin", name) for name in plugins] + [("floor", name) for name in floors]
        samples: dict = {v: {"e2e": [], "calls": [], "cpu": [], "lost": [], "duplicates": [], "unconfirmed": [],
                             "parts": []} for v in variants}
        for _, (who, name) in common.alternate(variants, reps):
            unconfirmed = publisher_of(plugins[name][0]).unconfirmed if who == "plugin" else 0
            pids = {"sender": os.getpid(), **(parties[name] if who == "plugin" else floor_parties)}
            cpu_before = {party: common.thread_cpu(pid) for party, pid in pids.items()}
            t0, t_calls, cpu = (run_plugin if who == "plugin" else run_floor)(name)
            if who == "plugin":  # count only this contender's publisher: nothing late from another lands here
                got = plugins[name][1].call("wait", n, 30, publisher_of(plugins[name][0]).id)
                # pushed out of the plugin's buffer before a broker acknowledged them (the history fell behind)
                samples[(who, name)]["unconfirmed"].append(publisher_of(plugins[name][0]).unconfirmed - unconfirmed)
            else:
                got = floor_sub.call("wait", n, 30)
            samples[(who, name)]["e2e"].append(n / ((got["last_ns"] - t0) / 1e9))
            samples[(who, name)]["calls"].append(n / ((t_calls - t0) / 1e9))
            # CPU of the sending process per event (its libzmq I/O thread included): what the
            # sender itself spends, apart from waiting for cores the other processes hold.
            samples[(who, name)]["cpu"].append(cpu / n / 1000)
            samples[(who, name)]["lost"].append(n - got["counts"][0])  # distinct (pub, seq): repeats hide nothing
            samples[(who, name)]["duplicates"].append(got["duplicates"][0])
            used = {party: common.cpu_used(cpu_before[party], common.thread_cpu(pid)) for party, pid in pids.items()}
            samples[(who, name)]["parts"].append({part: seconds / n * 1e6 for part, seconds in cpu_parts(used).items()})
        floor.close(linger=0)
        ctx.term()
        bursts = {suffix.lstrip(", ") or "large events": run_burst(plugins["json" + suffix][0], events, burst)
                  for suffix, events in corpora.items()} if burst else {}

    data = {f"{who}_{name}": {"e2e_per_s": common.summary(s["e2e"]), "calls_per_s": common.summary(s["calls"]),
                              "cpu_us_per_event": common.summary(s["cpu"]), "lost": sum(s["lost"]),
                              "duplicates": sum(s["duplicates"]), "unconfirmed": sum(s["unconfirmed"]),
                              "sent": n * reps,
                              "cpu_parts_us_per_event": {part: common.summary(r[part] for r in s["parts"])
                                                         for part in PARTS}}
            for (who, name), s in samples.items()}
    rows, targets = [], []
    for name in plugins:
        p, f = data[f"plugin_{name}"], data[f"floor_{floor_of(name)}"]
        ratio = p["e2e_per_s"]["median"] / f["e2e_per_s"]["median"]
        p["ratio_to_floor"] = ratio
        rows.append([f"plugin event_handler ({name})", common.spread(p["e2e_per_s"]), common.spread(p["calls_per_s"]),
                     common.spread(p["cpu_us_per_event"], "{:.1f}"), f"{p['lost']}/{p['sent']} ({p['duplicates']} dup)",
                     str(p["unconfirmed"]), f"{ratio:.2f}"])
        if "--history none" not in name:
            targets.append({"target": f"hot path >= 0.8 of the floor end to end, nothing lost ({name})",
                            "value": f"{ratio:.2f}, lost {p['lost']}", "met": ratio >= 0.8 and p["lost"] == 0})
    targets.append({"target": "no message pushed out of the plugin's buffer unacknowledged (default broker)",
                    "value": f"{sum(data[f'plugin_{name}']['unconfirmed'] for name in plugins)}",
                    "met": not any(data[f"plugin_{name}"]["unconfirmed"] for name in plugins)})
    for name in floors:
        f = data[f"floor_{name}"]
        rows.append([f"floor: encode + 2 raw sends ({name})", common.spread(f["e2e_per_s"]),
                     common.spread(f["calls_per_s"]), common.spread(f["cpu_us_per_event"], "{:.1f}"),
                     f"{f['lost']}/{f['sent']}", "-", "1.00"])
    figure = {"title": f"1. Hot path, end to end through a broker process (history on unless said; large-event corpus "
                     f"unless said) ({n} events x {reps} reps, events/s)",
            "headers": ["contender", "end to end /s median (min-max)", "calls /s (sender side)",
                        "sender CPU us/event (flush included)", "lost/sent (distinct)", "pushed out unacknowledged",
                        "ratio to floor"],
            "rows": rows, "data": data, "targets": targets, "tables": [cpu_table(data, plugins, floors)]}
    if bursts:
        data["bursts"] = bursts
        figure["tables"].append(burst_table(bursts, burst))
        pushed = sum(b["unconfirmed"] + b["dropped"] for b in bursts.values())
        targets.append({"target": f"a {burst:,}-event burst at full speed ends with nothing pushed out of the "
                                  "plugin's buffer (default broker, each corpus)",
                        "value": f"{pushed} pushed out", "met": pushed == 0})
    return figure


def run_burst(config, events: list, burst: int) -> dict:
    """``burst`` event_handler calls at full speed (``events`` cycled), then a flush: what the plugin had to push out
    of its bounded buffer because the broker's history did not acknowledge in time (or could not take it at all)."""
    publisher = publisher_of(config)
    before = (publisher.unconfirmed, publisher.dropped)
    calls, handler = common.cycle(events, burst), plugin.event_handler
    t0 = time.monotonic()
    for event in calls:
        handler(config, event)
    seconds = time.monotonic() - t0
    settled = publisher.flush(60)
    return {"calls_per_s": burst / seconds, "unconfirmed": publisher.unconfirmed - before[0],
            "dropped": publisher.dropped - before[1], "settled": settled}


def burst_table(bursts: dict, burst: int) -> dict:
    rows = [[corpus, f"{b['calls_per_s']:,.0f}", str(b["unconfirmed"]), str(b["dropped"]),
             "yes" if b["settled"] else "NO (60 s)"] for corpus, b in bursts.items()]
    return {"title": f"1c. A burst of {burst:,} event_handler calls at full speed through the default broker (json)",
            "headers": ["corpus", "calls/s", "pushed out unacknowledged", "pushed out unsent (lost)",
                        "all acknowledged after"], "rows": rows}


# Where the CPU of one event goes: each party's threads, by the names the project gives them (zmq_emitter/_threads.py)
PARTS = ("sender: handler", "sender: flush thread", "sender: libzmq I/O", "broker: history thread",
         "broker: proxy and libzmq I/O", "subscriber", "all")


def cpu_parts(used: dict[str, dict[str, float]]) -> dict[str, float]:
    """CPU seconds by part from ``common.cpu_used`` readings of the sender, the broker (or bare proxy) and the
    subscriber processes.  The sender's other threads are idle: its other contenders' sockets."""
    sender, broker, subscriber = used["sender"], used["broker"], used["subscriber"]
    io = sum(seconds for name, seconds in sender.items() if name.startswith("ZMQbg/"))
    flush = sender.get(_threads.os_name("zmq-emitter-flush"), 0.0)
    history = broker.get(_threads.os_name("zmq-emitter-history"), 0.0)
    parts = {"sender: handler": sender["all"] - io - flush, "sender: flush thread": flush, "sender: libzmq I/O": io,
             "broker: history thread": history, "broker: proxy and libzmq I/O": broker["all"] - history,
             "subscriber": subscriber["all"]}
    parts["all"] = sum(parts.values())
    return parts


def cpu_table(data: dict, plugins: dict, floors: list) -> dict:
    """Table 1b: CPU microseconds per event by part, and what the totals alone predict for the ratio to the floor."""
    rows = []
    for who, name in [("plugin", name) for name in plugins] + [("floor", name) for name in floors]:
        parts = data[f"{who}_{name}"]["cpu_parts_us_per_event"]
        floor_all = data[f"floor_{floor_of(name) if who == 'plugin' else name}"]["cpu_parts_us_per_event"]["all"]
        label = f"plugin ({name})" if who == "plugin" else f"floor ({name})"
        rows.append([label, *(f"{parts[part]['median']:.1f}" for part in PARTS),
                     f"{floor_all['median'] / parts['all']['median']:.2f}"])
    return {"title": "1b. Where the CPU of an event goes, every process of the path (microseconds per event, medians; "
                     "2 cores: the rate end to end follows the total)",
            "headers": ["contender", *PARTS, "floor's all / all"], "rows": rows}


def floor_of(name: str) -> str:
    """The floor a plugin contender is compared with: same codec, same corpus."""
    return name.split(",")[0] + (SMALL if name.endswith(SMALL) else "")
