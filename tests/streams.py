"""Helper processes for the churn and soak tests: real publishers, and a process of churning subscribers.

Each prints JSON lines on stdout::

    python tests/streams.py publish ENDPOINT IDENT COUNT RATE
        Publishes through the plugin's own handlers, as ansible-runner calls them: status `running`,
        COUNT events at RATE messages/s (0: as fast as it can), status `successful`; the plugin's
        closing report follows at exit.  Prints {"publisher": ID, "last_seq": N} (N: the closing
        report's seq) before exiting.

    python tests/streams.py churn BACKEND HISTORY SUBSCRIBERS PUBLISHERS SEED STEADY
        SUBSCRIBERS Subscribers (with gap recovery from HISTORY) in one thread; all but the first
        STEADY disconnect and reconnect at random once they have seen PUBLISHERS publishers.
        Prints {"ready": true} once each subscriber has received a probe (a message of run
        "probe", which the test sends meanwhile; probes count nowhere else); then, on the
        stdin line `finish {"<publisher>": last_seq, ...}`,
        reconnects any that are offline, catches each up to those seqs, and prints one line per
        subscriber: what it delivered (per publisher, runs of consecutive seqs in arrival order),
        what it reported lost, its counts and the times it was offline (time.monotonic).

    python tests/streams.py collect BACKENDS HISTORIES IDENTS HOW TIMEOUT
        One Subscriber connected to BACKENDS (comma-separated) with the history endpoints HISTORIES
        (comma-separated, in the order asked; "none": no history) until the final status of each run
        in IDENTS (comma-separated) or TIMEOUT seconds.  HOW: "live" (from now on), "replay" (each
        run's history first) or a JSON object {"<publisher>": seq} to ``resume`` from.  Prints
        {"ready": true} once connected (live), then one line per status or event message
        {"pub", "seq", "ident", "kind", "name", "counter"}, then {"done": true, "gaps": [...],
        "counts": {...}, "errors": [...]}.  (The subscriber of the network tests, run on a host
        of the test network.)
"""
from __future__ import annotations

import dataclasses
import json
import random
import sys
import time
from pathlib import Path

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zmq_emitter.consumers.subscriber import Subscriber  # noqa: E402


def answer(value) -> None:
    sys.stdout.write(json.dumps(value) + "\n")
    sys.stdout.flush()


class RunnerConfig:
    """What the plugin reads of ansible-runner's RunnerConfig: its ``settings``."""

    def __init__(self, **settings):
        self.settings = settings


def publish(endpoint: str, ident: str, count: str, rate: str) -> None:
    import zmq_emitter
    from zmq_emitter.runner import plugin

    config = RunnerConfig(runner_zmq_url=endpoint, runner_zmq_buffer_messages=100_000, runner_zmq_linger=30_000)
    count, rate = int(count), float(rate)
    zmq_emitter.status_handler(config, {"status": "running", "runner_ident": ident})
    start = time.monotonic()
    for counter in range(1, count + 1):
        zmq_emitter.event_handler(config, {"event": "runner_on_ok", "runner_ident": ident, "counter": counter,
                                           "uuid": f"{ident}-{counter}", "stdout": "ok: [web1]",
                                           "event_data": {"host": "web1", "task": "ping", "res": {"ping": "pong"}}})
        if rate and counter % 50 == 0:
            ahead = start + counter / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
    zmq_emitter.status_handler(config, {"status": "successful", "runner_ident": ident})
    (publisher,) = plugin._publishers.values()
    answer({"publisher": publisher.id, "last_seq": count + 3})  # running, COUNT events, successful, closing report


@dataclasses.dataclass
class Churning:
    sub: Subscriber
    steady: bool
    delivered: dict = dataclasses.field(default_factory=dict)  # publisher -> [[first, last], ...] in arrival order
    offline: list = dataclasses.field(default_factory=list)   # [[start, end], ...]
    back_at: float | None = None                               # offline until then
    next_churn: float = 0.0

    def note(self, msg) -> None:
        if msg.ident == PROBE:
            return
        runs = self.delivered.setdefault(msg.publisher, [])
        if runs and runs[-1][1] + 1 == msg.seq:
            runs[-1][1] = msg.seq
        else:
            runs.append([msg.seq, msg.seq])

    def drain(self) -> None:
        while (msg := self.sub.recv(timeout=0)) is not None:
            self.note(msg)

    def publishers_seen(self) -> int:
        return len(set(self.sub.tracker.last_seq) - probers)

    def summary(self) -> dict:
        return {"steady": self.steady, "delivered": self.delivered, "offline": self.offline,
                "lost": [[g.publisher, g.first, g.last] for g in self.sub.gaps if g.publisher not in probers],
                "counts": dataclasses.asdict(self.sub.counts)}


PROBE = "probe"
probers: set[str] = set()  # the publishers of probes


def churn(backend: str, history: str, subscribers: str, publishers: str, seed: str, steady: str) -> None:
    rng = random.Random(int(seed))
    context = zmq.Context()
    members = [Churning(Subscriber(backend, context=context, history=history, history_timeout=10,
                                   on_gap=lambda gap: None), steady=i < int(steady))
               for i in range(int(subscribers))]
    poller = zmq.Poller()
    owner = {}
    for member in members:
        poller.register(member.sub.socket, zmq.POLLIN)
        owner[member.sub.socket] = member
    poller.register(sys.stdin.fileno(), zmq.POLLIN)
    waiting = list(members)  # until each subscription is at the broker: none misses a publisher's first message
    while waiting:
        for member in list(waiting):
            msg = member.sub.recv(timeout=0.01)
            if msg is not None and msg.ident == PROBE:
                probers.add(msg.publisher)
                waiting.remove(member)
    answer({"ready": True})

    def go_online(member: Churning, now: float) -> None:
        member.sub.reconnect()  # new connections, then catch up from the history
        poller.register(member.sub.socket, zmq.POLLIN)
        owner[member.sub.socket] = member
        member.offline[-1][1] = now
        member.back_at = None
        member.next_churn = now + rng.uniform(0.3, 2.0)
        member.drain()

    finals = None
    while finals is None:
        now = time.monotonic()
        for member in members:
            if member.back_at is not None:
                if now >= member.back_at:
                    go_online(member, now)
            elif (not member.steady and now >= member.next_churn
                  and member.publishers_seen() >= int(publishers)):
                poller.unregister(member.sub.socket)
                del owner[member.sub.socket]
                member.sub.disconnect()
                member.offline.append([now, None])
                member.back_at = now + rng.uniform(0.05, 0.5)
        for sock, _ in poller.poll(20):
            if sock == sys.stdin.fileno():
                line = sys.stdin.readline().split(maxsplit=1)
                if line and line[0] == "finish":
                    finals = json.loads(line[1])
                continue
            owner[sock].drain()

    for member in members:
        if member.back_at is not None:
            go_online(member, time.monotonic())
    deadline = time.monotonic() + 60
    for member in members:
        while time.monotonic() < deadline:
            member.drain()
            seen = member.sub.positions
            if all(seen.get(pub, 0) >= last for pub, last in finals.items()):
                break
            member.sub.catch_up()
            member.drain()
            time.sleep(0.05)
        answer(member.summary())
    for member in members:
        member.sub.close()
    context.term()


def collect(backends: str, histories: str, idents: str, how: str, timeout: str) -> None:
    errors: list[str] = []
    sub = Subscriber(backends.split(","), history=None if histories == "none" else histories.split(","),
                     history_timeout=10, on_error=errors.append, on_gap=lambda gap: None)
    waiting, deadline = set(idents.split(",")), time.monotonic() + float(timeout)
    if how == "replay":
        for ident in sorted(waiting):
            sub.replay(ident)
    elif how != "live":
        sub.resume(json.loads(how))
    answer({"ready": True})
    while waiting and time.monotonic() < deadline:
        msg = sub.recv(timeout=0.5)
        if msg is None or msg.kind == "publisher":
            continue
        payload = msg.payload if isinstance(msg.payload, dict) else {}
        answer({"pub": msg.publisher, "seq": msg.seq, "ident": msg.ident, "kind": msg.kind, "name": msg.name,
                "counter": payload.get("counter")})
        if msg.kind == "status" and msg.name in ("successful", "failed", "timeout", "canceled", "error"):
            waiting.discard(msg.ident)
    answer({"done": True, "waiting": sorted(waiting), "gaps": [vars(gap) for gap in sub.gaps],
            "counts": vars(sub.counts), "errors": errors})
    sub.close()


if __name__ == "__main__":
    role, *args = sys.argv[1:]
    {"publish": publish, "churn": churn, "collect": collect}[role](*args)
