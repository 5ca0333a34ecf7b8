"""The cost of reading history back from JetStream: ``runs``, a one-run ``replay`` and a ``fetch``, with N runs
in the stream and a broker whose memory holds none of them (docs/operations.md, "Where the history lives").

    .venv/bin/python benchmarks/stream_reads.py 200      # 200 runs of the corpus (124 messages each), R3

Fills a stream of 3 replicas on a 3-node nats-server cluster on loopback (``nats_cluster.py``) directly
with the broker's subjects and headers (``broker/jetstream.py``), starts ``zmq-emitter broker --jetstream``
on it, and times each request 6 times through the history service (the first includes warming up).
Not a figure of ``run.py``: the answer is a handful of numbers, stated in docs/operations.md.
"""
from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nats  # noqa: E402
import orjson  # noqa: E402

from benchmarks import common  # noqa: E402
from benchmarks.nats_cluster import NatsCluster  # noqa: E402
from zmq_emitter import protocol  # noqa: E402
from zmq_emitter.broker.jetstream import DEFAULT_PREFIX, DEFAULT_STREAM, header_value, subject  # noqa: E402
from zmq_emitter.consumers.subscriber import Subscriber  # noqa: E402


def publisher(run: int) -> str:
    return "%016x" % (run + 1)


async def fill(urls: str, runs: int, corpus: list[dict]) -> tuple[int, int]:
    """``runs`` runs (starting, the corpus's events, successful), each its own publisher; (messages, bytes)."""
    from nats.js import api

    nc = await nats.connect(urls.split(","))
    try:
        await nc.jsm().add_stream(api.StreamConfig(name=DEFAULT_STREAM, subjects=[f"{DEFAULT_PREFIX}.>"],
                                                   num_replicas=3, duplicate_window=600,
                                                   storage=api.StorageType.FILE))
        js = nc.jetstream()
        for run in range(runs):
            pub, ident = publisher(run), f"run-{run:04d}"
            prefix = protocol.header_prefix("json", pub)
            kinds = [("status", "starting", {})] + [("event", str(e.get("event")), e) for e in corpus] + \
                [("status", "successful", {})]
            sends = []
            for seq, (kind, name, payload) in enumerate(kinds, 1):
                frames = [protocol.topic(kind, ident, name), prefix + b"%d}" % seq, orjson.dumps(payload)]
                sends.append(js.publish(subject(DEFAULT_PREFIX, protocol.envelope(frames)), frames[2], headers={
                    "Nats-Msg-Id": f"{pub}:{seq}", "Zmq-Topic": header_value(frames[0]),
                    "Zmq-Header": header_value(frames[1])}))
            await asyncio.gather(*sends)
        state = (await nc.jsm().stream_info(DEFAULT_STREAM)).state
        return state.messages, state.bytes
    finally:
        await nc.close()


def timed(label: str, request) -> None:
    times, size = [], 0
    for _ in range(6):
        t0 = time.monotonic()
        size = request()
        times.append((time.monotonic() - t0) * 1000)
    print(f"{label}: {size} in " + ", ".join(f"{t:.0f}" for t in times) + " ms", flush=True)


def main(runs: int) -> None:
    corpus = common.load_corpus()
    with common.Tmp() as tmp, NatsCluster(tmp / "nats") as cluster:
        cluster.wait_ready()
        t0 = time.monotonic()
        messages, size = asyncio.run(fill(cluster.urls, runs, corpus))
        print(f"stream: {runs} runs, {messages} messages, {size / 1e6:.0f} MB, R3 (filled in "
              f"{time.monotonic() - t0:.0f} s)", flush=True)
        with common.BrokerProcess(tmp, "reader", extra=("--jetstream", cluster.urls, "--jetstream-replicas", "3")), \
                Subscriber([], history=f"ipc://{tmp}/reader-history", history_timeout=60) as asker:
            deadline = time.monotonic() + 60
            while not asker.runs():  # until the broker is on NATS (it connects in the background)
                if time.monotonic() > deadline:
                    raise RuntimeError("the broker did not read the stream within 60 s")
                time.sleep(0.2)
            target, pub = f"run-{runs // 2:04d}", publisher(runs // 2)
            timed("runs", lambda: f"{len(asker.runs())} runs")
            timed(f"replay {target}", lambda: f"{len(asker.request('replay', ident=target)[1])} messages")
            timed(f"fetch {pub} 50..60", lambda: f"{len(asker.request('fetch', pub=pub, first=50, last=60)[1])} "
                                               "messages")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
