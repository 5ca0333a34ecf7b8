"""Figure 2: the plugin against its peers on the same events, each end to end into another process.

- plugin: zmq_emitter.event_handler through a ``zmq-emitter broker`` process to a subscriber.
- HTTP emitter: ``ansible_runner_http.event_handler`` (the ansible-runner-http package,
  one ``requests`` POST per event on a new session) to a local threaded HTTP server process.
- per-event ZeroMQ: what the original ansible-runner-zeromq example does per event: a new
  context and a new PUSH socket, ``send_json``, close, term.  (That example *binds* per
  event; here it connects to one PULL sink, so that one receiver can count every event.)

The floor of figure 1 runs here too, to show what any emitter could reach on this machine.
The peers are many times slower, so they get fewer events (the first
``n_slow`` of the same corpus, in the same order); rates are events per second.

    from benchmarks import peers, common
    result = peers.run(common.load_corpus(), reps=3, n_fast=20000, n_slow=300)
"""
from __future__ import annotations

import os
import time

import orjson
import zmq

from zmq_emitter.runner import plugin

from . import common
from .hotpath import publisher_of


def per_event_zmq_emitter(endpoint: str, data: dict) -> None:
    """A connection per event, like the original ansible-runner ZeroMQ example plugin."""
    context = zmq.Context()
    sink = context.socket(zmq.PUSH)
    sink.connect(endpoint)
    sink.send_json(data)
    sink.close()    # default linger: wait until the message is delivered
    context.term()


class FloorSender:
    """The floor of figure 1: orjson, then two raw sends (topic, payload) on an XPUB with XPUB_NODROP."""

    def __init__(self, endpoint: str):
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.XPUB)
        self.socket.setsockopt(zmq.XPUB_NODROP, 1)  # a full queue blocks the send: nothing dropped
        self.socket.connect(endpoint)

    def send_events(self, events: list) -> None:
        send, more, dumps = self.socket.send, zmq.SNDMORE, orjson.dumps
        for event in events:
            payload = dumps(event)
            send(b"event/%s/%s" % (str(event.get("runner_ident")).encode(), str(event.get("event")).encode()), more)
            send(payload)

    def close(self) -> None:
        self.socket.close(linger=0)
        self.context.term()


def run(corpus: list[dict], reps: int, n_fast: int, n_slow: int) -> dict:
    import ansible_runner_http  # the peer; a test extra

    os.environ.pop("RUNNER_HTTP_URL", None)  # it would override the settings below
    fast, slow = common.cycle(corpus, n_fast), common.cycle(corpus, n_slow)
    with common.Tmp() as tmp, common.BrokerProcess(tmp) as broker, common.ProxyProcess(tmp) as proxy, \
            common.Worker("recv", "sub", "connect", broker.backend) as plugin_sub, \
            common.Worker("recv", "sub", "connect", proxy.backend) as floor_sub, \
            common.Worker("http") as http_server, \
            common.Worker("recv", "pull", "bind", f"ipc://{tmp}/pull") as pull_sink:
        zmq_config = common.RunnerConfig(runner_zmq_url=broker.frontend)
        http_config = common.RunnerConfig(runner_http_url=http_server.ready["url"])
        common.connect_through(lambda: plugin.event_handler(zmq_config, corpus[0]), [plugin_sub])
        publisher = publisher_of(zmq_config)
        pull_endpoint = f"ipc://{tmp}/pull"
        floor = FloorSender(proxy.frontend)
        common.connect_through(lambda: floor.send_events(corpus[:1]), [floor_sub])

        def run_plugin() -> int:
            handler = plugin.event_handler
            t0 = time.monotonic_ns()
            for event in fast:
                handler(zmq_config, event)
            publisher.flush(30)
            return t0

        def run_http() -> int:
            handler = ansible_runner_http.event_handler
            t0 = time.monotonic_ns()
            for event in slow:
                handler(http_config, event)
            return t0

        def run_per_event() -> int:
            t0 = time.monotonic_ns()
            for event in slow:
                per_event_zmq_emitter(pull_endpoint, event)
            return t0

        def run_floor() -> int:
            t0 = time.monotonic_ns()
            floor.send_events(fast)
            return t0

        contenders = {"plugin": (run_plugin, plugin_sub, n_fast), "floor": (run_floor, floor_sub, n_fast),
                      "http": (run_http, http_server, n_slow),
                      "per_event_zmq": (run_per_event, pull_sink, n_slow)}
        samples: dict = {name: {"rate": [], "lost": []} for name in contenders}
        for _, name in common.alternate(list(contenders), reps):
            body, receiver, n = contenders[name]
            t0 = body()
            # the plugin's messages are counted as distinct (pub, seq) of its own publisher only
            got = receiver.call("wait", n, 30, *([publisher.id] if name == "plugin" else []))
            samples[name]["rate"].append(n / ((got["last_ns"] - t0) / 1e9))
            samples[name]["lost"].append(n - got["counts"][0])
        floor.close()

    data = {name: {"per_s": common.summary(s["rate"]), "lost": sum(s["lost"]),
                   "sent": contenders[name][2] * reps} for name, s in samples.items()}
    labels = {"plugin": "plugin event_handler (json) via broker",
              "floor": "floor: orjson + 2 raw sends via bare zmq.proxy",
              "http": "HTTP emitter (ansible-runner-http)",
              "per_event_zmq": "ZeroMQ, new context+socket per event"}
    base = data["plugin"]["per_s"]["median"]
    floor_rate = data["floor"]["per_s"]["median"]
    rows, targets = [], []
    for name, d in data.items():
        d["plugin_ratio"] = base / d["per_s"]["median"]
        d["floor_ratio"] = floor_rate / d["per_s"]["median"]
        rows.append([labels[name], common.spread(d["per_s"]), f"{d['lost']}/{d['sent']}",
                     f"{d['plugin_ratio']:.2f}x" if name in ("plugin", "floor") else f"{d['plugin_ratio']:.0f}x",
                     f"{d['floor_ratio']:.0f}x" if name in ("http", "per_event_zmq") else "-"])
    ratio = data["http"]["plugin_ratio"]
    targets.append({"target": "plugin >= 100x the HTTP emitter's event rate",
                    "value": f"{ratio:.0f}x (the floor itself: {data['http']['floor_ratio']:.0f}x)",
                    "met": ratio >= 100})
    return {"title": f"2. Peers on the same events ({n_fast} plugin / {n_slow} peer events x {reps} reps, events/s)",
            "headers": ["emitter", "events/s median (min-max)", "lost/sent", "plugin is faster by",
                        "floor is faster by"],
            "rows": rows, "data": data, "targets": targets}
