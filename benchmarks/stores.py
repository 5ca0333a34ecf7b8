"""Figure 10: where the history lives: memory, the local journal, NATS JetStream R1 and R3, in one run.

Four broker processes, one per contender, measured alternately (each repetition in reversed order):

- ``memory``: the default history; ``journal``: ``--history-dir``; ``jetstream_r1`` / ``jetstream_r3``:
  ``--jetstream`` on a 3-node nats-server cluster this figure starts on loopback ports
  (``benchmarks/nats_cluster.py``, the one the tests use), streams of 1 and 3 replicas.
- Throughput: a publisher speaking the runner's side of the protocol (an XPUB: numbered messages
  out, the broker's ``ACK`` frames in) sends ``n`` corpus events as fast as the broker acknowledges,
  with at most ``WINDOW`` unacknowledged (a runner keeps what is not acknowledged, in a bounded buffer);
  acknowledged messages/s from the first send to the acknowledgement of the last.
- Acknowledgement latency: the same publisher at a fixed rate; per message, from its send to the
  first ``ACK`` covering its seq; p50/p99.  With JetStream that includes the store's acknowledgement
  (R3: a quorum of the three nodes), which is the point of the figure.

Without nats-server the figure is skipped, saying why.

    from benchmarks import stores, common
    result = stores.run(common.load_corpus(), reps=3, n=5000, rates=(1000,), seconds=2)
"""
from __future__ import annotations

import contextlib
import secrets
import time
from array import array

import orjson
import zmq

from zmq_emitter import protocol

from . import common
from .nats_cluster import NATS_SERVER, NatsCluster

CONTENDERS = {"memory": "history in memory", "journal": "journal (--history-dir)",
              "jetstream_r1": "JetStream R1", "jetstream_r3": "JetStream R3 (3 nodes)"}
WINDOW = 1000            # unacknowledged messages at most (the plugin's buffer holds 10,000 by default)
STREAM_BYTES = 2 ** 30   # --jetstream-max-bytes of each stream: the oldest go first, the disk stays bounded
GIVE_UP = 60.0           # seconds without a new acknowledgement before a measurement stops, counting the rest


class AckedPublisher:
    """The runner's side of the protocol, bare: numbered messages out through an XPUB, ``ACK`` frames in.

        pub = AckedPublisher(ctx, broker.frontend); pub.wait_subscribed()
        result = pub.throughput(frames_list)          # or pub.paced(frames_list, rate)
    """

    def __init__(self, ctx: zmq.Context, endpoint: str):
        self.sock = ctx.socket(zmq.XPUB)
        self.sock.setsockopt(zmq.XPUB_NODROP, 1)
        self.sock.setsockopt(zmq.SNDHWM, 100_000)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.subscribed = False
        self.pub = ""  # the publisher of the messages sent now (``messages``)

    def wait_subscribed(self, timeout: float = 30.0) -> None:
        """Until the broker's data subscription arrives (before it, a PUB drops what it sends)."""
        deadline = time.monotonic() + timeout
        while not self.subscribed:
            if time.monotonic() > deadline or not self.sock.poll(int(max(0.0, deadline - time.monotonic()) * 1000)):
                raise RuntimeError(f"the broker did not subscribe within {timeout}s")
            self._read()

    def _read(self) -> int | None:
        """One incoming frame: a subscription, or an acknowledgement (its acks for our publisher)."""
        frame = self.sock.recv()
        if frame[:1] == b"\x01" and not frame.startswith(b"\x01" + protocol.PRESENCE_PREFIX):
            self.subscribed = True
            return None
        ack = protocol.parse_ack(frame)
        return ack.acks.get(self.pub) if ack is not None else None

    def messages(self, events: list[dict], ident: str) -> list[list[bytes]]:
        """``events`` as protocol messages of a new publisher (a fresh ``pub`` each call), seq 1..n."""
        self.pub = secrets.token_hex(8)
        prefix = protocol.header_prefix("json", self.pub)
        return [[protocol.topic("event", ident, str(e.get("event"))), prefix + b"%d}" % (i + 1), orjson.dumps(e)]
                for i, e in enumerate(events)]

    def _acks(self, acked_at: array, acked: int, wait_ms: int) -> int:
        """Read what came within ``wait_ms``; the time each newly acknowledged seq was acknowledged."""
        if not self.sock.poll(wait_ms):
            return acked
        now = time.monotonic_ns()
        while True:
            up_to = self._read()
            if up_to is not None and up_to > acked:
                acked_at[acked:up_to] = array("q", [now] * (up_to - acked))
                acked = up_to
            if not self.sock.poll(0):
                return acked

    def throughput(self, messages: list[list[bytes]]) -> dict:
        n, sent, acked, sock = len(messages), 0, 0, self.sock
        acked_at = array("q", [0] * n)
        t0 = last_progress = time.monotonic_ns()
        while acked < n:
            while sent < n and sent - acked < WINDOW:
                try:
                    sock.send_multipart(messages[sent], zmq.NOBLOCK)
                except zmq.Again:
                    break
                sent += 1
            before = acked
            acked = self._acks(acked_at, acked, 1 if sent < n and sent - acked < WINDOW else 100)
            now = time.monotonic_ns()
            if acked > before:
                last_progress = now
            elif now - last_progress > GIVE_UP * 1e9:
                break
        end = acked_at[acked - 1] if acked else time.monotonic_ns()
        return {"rate": acked / ((end - t0) / 1e9) if acked else 0.0, "acked": acked, "sent": n}

    def paced(self, messages: list[list[bytes]], rate: float) -> dict:
        n, period, sock = len(messages), 1e9 / rate, self.sock
        sent_at, acked_at, acked = array("q", [0] * n), array("q", [0] * n), 0
        t_start = time.monotonic_ns()
        for i, frames in enumerate(messages):
            while True:  # read acknowledgements while ahead of schedule
                ahead = t_start + i * period - time.monotonic_ns()
                if ahead <= 200_000:
                    break
                acked = self._acks(acked_at, acked, max(1, int(ahead / 1e6)))
            sent_at[i] = time.monotonic_ns()
            sock.send_multipart(frames)
            acked = self._acks(acked_at, acked, 0)
        last_progress = time.monotonic_ns()
        while acked < n and time.monotonic_ns() - last_progress < GIVE_UP * 1e9:
            before = acked
            acked = self._acks(acked_at, acked, 100)
            if acked > before:
                last_progress = time.monotonic_ns()
        latencies = sorted((acked_at[i] - sent_at[i]) / 1000 for i in range(acked))  # microseconds
        return {"acked": acked, "sent": n, "p50_us": common.percentile(latencies, 50) if latencies else 0.0,
                "p99_us": common.percentile(latencies, 99) if latencies else 0.0,
                "max_us": latencies[-1] if latencies else 0.0}

    def close(self) -> None:
        self.sock.close(0)


def _brokers(tmp, stack: contextlib.ExitStack, urls: str) -> dict:
    jetstream = ("--jetstream", urls, "--jetstream-max-bytes", str(STREAM_BYTES))  # a subject prefix per stream
    return {
        "memory": stack.enter_context(common.BrokerProcess(tmp, "memory")),
        "journal": stack.enter_context(common.BrokerProcess(tmp, "journal", on_disk=True)),
        "jetstream_r1": stack.enter_context(common.BrokerProcess(
            tmp, "r1", extra=(*jetstream, "--jetstream-stream", "BENCH_R1", "--jetstream-prefix", "bench-r1",
            "--jetstream-replicas", "1"))),
        "jetstream_r3": stack.enter_context(common.BrokerProcess(
            tmp, "r3", extra=(*jetstream, "--jetstream-stream", "BENCH_R3", "--jetstream-prefix", "bench-r3",
            "--jetstream-replicas", "3"))),
    }


def run(corpus: list[dict], reps: int, n: int, rates=(1000,), seconds: float = 2.0) -> dict:
    if NATS_SERVER is None:
        return {"skipped": "10. History stores: skipped: nats-server not installed (apt-get install nats-server)"}
    try:
        import nats  # noqa: F401 (the broker's --jetstream needs nats-py)
    except ImportError:
        return {"skipped": "10. History stores: skipped: nats-py not installed (pip install '.[jetstream]')"}
    samples: dict = {c: {"throughput": [], **{rate: [] for rate in rates}} for c in CONTENDERS}
    ctx = zmq.Context()
    with common.Tmp() as tmp, contextlib.ExitStack() as stack:
        cluster = stack.enter_context(NatsCluster(tmp / "nats"))
        cluster.wait_ready()
        brokers = _brokers(tmp, stack, cluster.urls)
        publishers = {c: AckedPublisher(ctx, brokers[c].frontend) for c in CONTENDERS}
        stack.callback(lambda: [p.close() for p in publishers.values()])
        for c, pub in publishers.items():  # connected, and acknowledging (JetStream: the stream made)
            pub.wait_subscribed()
            warm = pub.throughput(pub.messages(corpus[:10], f"warm-{c}"))
            if warm["acked"] < warm["sent"]:
                raise RuntimeError(f"{c}: the broker acknowledged {warm['acked']} of {warm['sent']} warm-up messages")
        for rep, c in common.alternate(list(CONTENDERS), reps):
            pub = publishers[c]
            samples[c]["throughput"].append(pub.throughput(pub.messages(common.cycle(corpus, n), f"t-{c}-{rep}")))
            for rate in rates:
                events = common.cycle(corpus, max(10, int(rate * seconds)))
                samples[c][rate].append(pub.paced(pub.messages(events, f"l-{c}-{rep}-{rate}"), rate))
    ctx.term()
    data: dict = {}
    rows = []
    for c, label in CONTENDERS.items():
        d = {"throughput": common.summary(r["rate"] for r in samples[c]["throughput"]),
             "unacknowledged": sum(r["sent"] - r["acked"] for r in samples[c]["throughput"])}
        for rate in rates:
            d[str(rate)] = {key: common.summary(r[key] for r in samples[c][rate]) for key in ("p50_us", "p99_us")}
            d["unacknowledged"] += sum(r["sent"] - r["acked"] for r in samples[c][rate])
        data[c] = d
        rows.append([label, common.spread(d["throughput"]),
                     *(f"{common.spread(d[str(r)]['p50_us'])} / {common.spread(d[str(r)]['p99_us'])}" for r in rates),
                     f"{d['unacknowledged']} unacknowledged"])
    memory = data["memory"]["throughput"]["median"]
    data["ratio_to_memory"] = {c: data[c]["throughput"]["median"] / memory for c in CONTENDERS}
    unacked = sum(data[c]["unacknowledged"] for c in CONTENDERS)
    targets = [{"target": "every message acknowledged, by every store", "value": f"{unacked} unacknowledged",
                "met": unacked == 0}]
    return {"title": f"10. History stores: acknowledged messages/s and acknowledgement latency ({n:,} events for "
                     f"throughput, at most {WINDOW:,} unacknowledged; {seconds}s per latency rate; x {reps} reps; "
                     "medians (min-max)); of memory: " + ", ".join(f"{c} {r:.2f}" for c, r in
                                                                  data["ratio_to_memory"].items()),
            "headers": ["history", "acknowledged/s", *(f"ack p50 / p99 us at {r:,}/s" for r in rates), "delivery"],
            "rows": rows, "data": data, "targets": targets}
