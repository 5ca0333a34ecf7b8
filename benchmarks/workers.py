"""The benchmarks' helper processes, one role each, driven by one-line commands on stdin.

Each role prints one JSON line when it is ready and one JSON line per command::

    python benchmarks/workers.py proxy ipc:///tmp/x/in ipc:///tmp/x/out 100000   # a bare zmq.proxy
    python benchmarks/workers.py recv sub connect ipc:///tmp/x/out 10 [event/,status/]  # 10 SUB sockets
        wait N TIMEOUT [PUB]  -> {"counts": [...], "duplicates": [...], "other": [...], "first_ns": .., "last_ns": ..}
                                 (counters then reset)
        record                -> from now on note every receipt time (ns) and seq of socket 0
        times N TIMEOUT PATH  -> as wait, then the noted times written to PATH, the seqs answered
    python benchmarks/workers.py recv pull bind ipc:///tmp/x/pull 1                # a PULL sink
    python benchmarks/workers.py http                                             # a counting HTTP server
    python benchmarks/workers.py producer ipc:///tmp/x/in CORPUS.json              # pre-encoded messages
        one / send N RATE     -> {"t0_ns": .., "t1_ns": ..}   (RATE 0: as fast as it can)
    python benchmarks/workers.py memory ipc:///tmp/x/in CORPUS.json CODEC          # event_handler, RSS
        calls N / flush / trim -> {"rss_kib": .., "seconds": .., "plugin_dropped": ..}

Times come from time.monotonic_ns (CLOCK_MONOTONIC), which all processes of the machine share.
"""
from __future__ import annotations

import http.server
import json
import sys
import threading
import time
from array import array
from pathlib import Path

import orjson
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def answer(value) -> None:
    sys.stdout.write(json.dumps(value) + "\n")
    sys.stdout.flush()


def commands():
    for line in sys.stdin:
        if line.strip():
            yield line.split()


def proxy(frontend: str, backend: str, hwm: str) -> None:
    """A bare XSUB/XPUB zmq.proxy: the ZeroMQ guide's Espresso pattern without the capture socket."""
    ctx = zmq.Context()
    xsub, xpub = ctx.socket(zmq.XSUB), ctx.socket(zmq.XPUB)
    xsub.setsockopt(zmq.RCVHWM, int(hwm))
    xpub.setsockopt(zmq.SNDHWM, int(hwm))
    xsub.bind(frontend)
    xpub.bind(backend)
    answer({"ready": True})
    zmq.proxy(xsub, xpub)  # until SIGTERM


class Distinct:
    """Counts distinct messages: a protocol message is known by (pub, seq), so a repeat (a resend after a
    broker restart) counts as a duplicate, never as a second delivery that could hide a loss.  Messages
    without a protocol header (the floor's two frames, other emitters' JSON) have no identity and count as
    they come."""

    def __init__(self):
        self.seen: dict[str, bytearray] = {}  # pub -> one byte per seq: seen or not

    def add(self, frames) -> tuple[str | None, bool]:
        """(pub or None, True if new)."""
        if len(frames) != 3:
            return None, True
        try:
            header = orjson.loads(frames[1].bytes)
            pub, seq = header["pub"], header["seq"]
        except (orjson.JSONDecodeError, TypeError, KeyError):
            return None, True
        bits = self.seen.get(pub)
        if bits is None:
            bits = self.seen[pub] = bytearray()
        if seq >= len(bits):
            bits.extend(bytes(max(seq + 1 - len(bits), len(bits))))
        if bits[seq]:
            return pub, False
        bits[seq] = 1
        return pub, True


def recv(kind: str, mode: str, endpoint: str, count: str = "1", prefixes: str = "") -> None:
    """Count every distinct message on ``count`` sockets; answer ``wait`` once each has N or the time is up.

    A SUB subscribes to each of the comma-separated ``prefixes``, or to everything.  ``wait N TIMEOUT PUB``
    counts only publisher PUB's messages toward N (others, e.g. a previous contender's late arrivals, are
    reported as ``other``).
    """
    ctx = zmq.Context()
    sockets = []
    for _ in range(int(count)):
        sock = ctx.socket(zmq.SUB if kind == "sub" else zmq.PULL)
        sock.setsockopt(zmq.RCVHWM, 0 if kind == "pull" else 1000)
        if kind == "sub":
            for prefix in prefixes.split(",") if prefixes else [""]:
                sock.setsockopt(zmq.SUBSCRIBE, prefix.encode())
        (sock.bind if mode == "bind" else sock.connect)(endpoint)
        sockets.append(sock)
    poller = zmq.Poller()
    for sock in sockets:
        poller.register(sock, zmq.POLLIN)
    poller.register(sys.stdin.fileno(), zmq.POLLIN)
    answer({"ready": True})

    # Per socket and publisher (None: messages without one): [distinct messages, first and last receipt ns].
    tally: list[dict] = [{} for _ in sockets]
    duplicates = [0] * len(sockets)
    distinct = [Distinct() for _ in sockets]
    only_pub = None
    command = None  # (target, deadline, path) while a wait is open
    recording, times, headers = False, array("q"), []
    index = {sock: i for i, sock in enumerate(sockets)}
    while True:
        timeout = 100 if command is None else max(0, (command[1] - time.monotonic()) * 1000)
        for item, _ in poller.poll(timeout):
            if item == sys.stdin.fileno():
                line = sys.stdin.readline().split()
                if not line:
                    return
                if line[0] == "record":
                    recording, times, headers = True, array("q"), []
                    answer({"recording": True})
                    continue
                target, seconds = int(line[1]), float(line[2])
                command = (target, time.monotonic() + seconds, line[3] if line[0] == "times" else None)
                only_pub = line[3] if line[0] == "wait" and len(line) > 3 else None
                continue

            i = index[item]
            for _ in range(1000):  # drain, but come back to stdin and the other sockets
                try:
                    frames = item.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                now = time.monotonic_ns()
                pub, new = distinct[i].add(frames)
                if not new:
                    duplicates[i] += 1
                    continue
                entry = tally[i].get(pub)
                if entry is None:
                    entry = tally[i][pub] = [0, now, now]
                entry[0] += 1
                entry[2] = now
                last_ns = now
                if recording and i == 0:
                    times.append(last_ns)
                    headers.append(frames[1].bytes if len(frames) == 3 else b"{}")
        if command is None:
            continue
        if only_pub is None:  # every publisher counts
            mine = [[sum(e[0] for e in t.values()), min((e[1] for e in t.values()), default=0),
                     max((e[2] for e in t.values()), default=0)] for t in tally]
        else:
            mine = [t.get(only_pub, [0, 0, 0]) for t in tally]
        counts = [m[0] for m in mine]
        if min(counts) >= command[0] or time.monotonic() >= command[1]:
            result = {"counts": counts, "duplicates": duplicates,
                      "other": [sum(e[0] for e in t.values()) - c for t, c in zip(tally, counts)],
                      "first_ns": min((m[1] for m in mine if m[0]), default=0),
                      "last_ns": max((m[2] for m in mine), default=0)}
            if command[2]:
                with open(command[2], "wb") as out:
                    times.tofile(out)
                result["seqs"] = [orjson.loads(h).get("seq") for h in headers]
            answer(result)
            if command[2]:
                recording, times, headers = False, array("q"), []
            tally, duplicates = [{} for _ in sockets], [0] * len(sockets)
            command, only_pub = None, None


def http_sink() -> None:
    """A threaded HTTP server on a free loopback port that answers 200 to every POST and counts them."""
    lock, state = threading.Lock(), {"count": 0, "first_ns": 0, "last_ns": 0}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
            now = time.monotonic_ns()
            with lock:
                state["count"] += 1
                state["first_ns"] = state["first_ns"] or now
                state["last_ns"] = now

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    answer({"ready": True, "url": f"http://127.0.0.1:{server.server_address[1]}/events"})
    for command in commands():
        target, deadline = int(command[1]), time.monotonic() + float(command[2])
        while time.monotonic() < deadline and state["count"] < target:
            time.sleep(0.005)
        with lock:
            answer({"counts": [state["count"]], "first_ns": state["first_ns"], "last_ns": state["last_ns"]})
            state.update(count=0, first_ns=0, last_ns=0)


def producer(frontend: str, corpus_path: str) -> None:
    """Pre-encoded protocol messages of the corpus, sent through an XPUB with XPUB_NODROP.

    With NODROP a full queue blocks the (blocking) send instead of dropping, so the
    producer slows down to what the path takes and loses nothing on its own side.
    """
    from zmq_emitter import protocol

    corpus = json.loads(Path(corpus_path).read_bytes())
    prefix = protocol.header_prefix("json", "benchproducer0000")
    messages = [(protocol.topic("event", str(e.get("runner_ident")), str(e.get("event"))), protocol.encode_json(e))
                for e in corpus]
    ctx = zmq.Context()
    sock = ctx.socket(zmq.XPUB)
    sock.setsockopt(zmq.XPUB_NODROP, 1)
    sock.connect(frontend)
    seq = 0
    answer({"ready": True})
    for command in commands():
        n, rate = (1, 0.0) if command[0] == "one" else (int(command[1]), float(command[2]))
        t0 = time.monotonic_ns()
        for i in range(n):
            if rate:  # paced: sleep while ahead of the schedule, never spin (2 cores are shared)
                ahead = t0 + i * 1e9 / rate - time.monotonic_ns()
                if ahead > 200_000:
                    time.sleep(ahead / 1e9)
            seq += 1
            topic, payload = messages[i % len(messages)]
            sock.send_multipart((topic, prefix + b"%d}" % seq, payload))
        answer({"t0_ns": t0, "t1_ns": time.monotonic_ns()})


def memory(frontend: str, corpus_path: str, codec: str) -> None:
    """Calls zmq_emitter.event_handler in this process and reports its resident size.

    ``flush`` waits for the plugin's buffer to empty; ``trim`` hands freed heap back to the
    OS (glibc malloc_trim), telling memory still held from memory merely not returned.
    """
    import ctypes

    from benchmarks.common import RunnerConfig, rss_kib
    from zmq_emitter.runner import plugin

    corpus = json.loads(Path(corpus_path).read_bytes())
    config = RunnerConfig(runner_zmq_url=frontend, runner_zmq_codec=codec)
    answer({"ready": True, "rss_kib": rss_kib()})
    for command in commands():
        t0 = time.monotonic()
        if command[0] == "calls":
            handler, size = plugin.event_handler, len(corpus)
            for i in range(int(command[1])):
                handler(config, corpus[i % size])
        elif command[0] == "flush":
            plugin._routes[id(config)].publisher.flush(30)
        elif command[0] == "trim":
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        seconds = time.monotonic() - t0
        publishers = list(plugin._publishers.values())  # for their public loss counters
        answer({"rss_kib": rss_kib(), "seconds": seconds,
                "plugin_dropped": sum(getattr(p, "dropped", 0) + getattr(p, "unconfirmed", 0) for p in publishers)})


ROLES = {"proxy": proxy, "recv": recv, "http": http_sink, "producer": producer, "memory": memory}

if __name__ == "__main__":
    ROLES[sys.argv[1]](*sys.argv[2:])
