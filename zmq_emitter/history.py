"""The broker's bounded history of recent runs: the snapshot side of the ZeroMQ guide's Clone pattern.

The broker's capture thread feeds it every message it forwards; late joiners and
subscribers that missed messages ask it (REQ/REP, see ``protocol.request``) for:

- ``runs``: the runs it knows, each with its last status;
- ``replay``: one run's messages from a sequence number on;
- ``fetch``: a publisher's messages in a sequence range (gap recovery).

Bounds: at most ``max_runs`` runs (the least recently active run is forgotten first)
and ``max_bytes`` bytes of messages (the oldest messages are forgotten first).  What
was forgotten is reported as missing, never silently left out.

    >>> h = History(max_runs=10, max_bytes=2**20)
    >>> frames = [b"status/run-1/running", protocol.header_prefix("json", "p1") + b"1}", b"{}"]
    >>> h.add(protocol.envelope(frames), frames)
    >>> [run["status"] for run in h.runs()]
    ['running']
"""
from __future__ import annotations

import collections
import dataclasses
import time

from . import protocol
from .protocol import Envelope

MAX_FETCH = 100_000  # sequence numbers one fetch may cover


@dataclasses.dataclass
class RunInfo:
    ident: str
    status: str | None = None
    messages: int = 0                 # messages of this run received, in all
    first_seen: float = dataclasses.field(default_factory=time.time)
    last_seen: float = dataclasses.field(default_factory=time.time)
    first_seq: dict = dataclasses.field(default_factory=dict)   # publisher -> first seq of this run
    keys: collections.deque = dataclasses.field(default_factory=collections.deque)  # (pub, seq) retained

    def summary(self) -> dict:
        return {"ident": self.ident, "status": self.status, "messages": self.messages,
                "retained": len(self.keys), "publishers": sorted(self.first_seq),
                "first_seen": self.first_seen, "last_seen": self.last_seen}


@dataclasses.dataclass
class PublisherInfo:
    received: int = 0      # distinct messages received
    duplicates: int = 0    # messages received again (a publisher re-sending after a broker restart)
    missed: int = 0        # sequence numbers that never reached the broker
    last_seq: int = 0
    closed: dict | None = None  # the publisher's own closing report, if it sent one

    def summary(self, publisher: str) -> dict:
        return {"publisher": publisher, **dataclasses.asdict(self)}


class History:
    def __init__(self, max_runs: int = 100, max_bytes: int = 64 * 2**20):
        self.max_runs = max_runs
        self.max_bytes = max_bytes
        self.bytes = 0
        self._messages: collections.OrderedDict = collections.OrderedDict()  # (pub, seq) -> (ident, frames, size)
        self._runs: collections.OrderedDict[str, RunInfo] = collections.OrderedDict()
        self.publishers: dict[str, PublisherInfo] = {}

    def add(self, env: Envelope, frames: list[bytes]) -> bool:
        """Record one message; False if it was a duplicate (already recorded)."""
        pub = self.publishers.get(env.publisher)
        if pub is None:
            pub = self.publishers[env.publisher] = PublisherInfo()
        if env.seq <= pub.last_seq:
            pub.duplicates += 1
            return False
        if pub.last_seq and env.seq > pub.last_seq + 1:
            pub.missed += env.seq - pub.last_seq - 1
        pub.last_seq = env.seq
        pub.received += 1
        if env.kind == "publisher":
            pub.closed = _payload(frames)
            return True

        run = self._runs.get(env.ident)
        if run is None:
            run = self._runs[env.ident] = RunInfo(env.ident)
            while len(self._runs) > self.max_runs:
                self._forget_run(next(iter(self._runs)))
        else:
            self._runs.move_to_end(env.ident)
        run.messages += 1
        run.last_seen = time.time()
        run.first_seq.setdefault(env.publisher, env.seq)
        if env.kind == "status":
            run.status = env.name

        size = sum(len(f) for f in frames)
        key = (env.publisher, env.seq)
        self._messages[key] = (env.ident, frames, size)
        run.keys.append(key)
        self.bytes += size
        while self.bytes > self.max_bytes and self._messages:
            old_key, (ident, _, old_size) = self._messages.popitem(last=False)
            self._runs[ident].keys.popleft()  # a run's keys are in arrival order too
            self.bytes -= old_size
        return True

    def _forget_run(self, ident: str) -> None:
        run = self._runs.pop(ident)
        for key in run.keys:
            self.bytes -= self._messages.pop(key)[2]

    # -- queries ------------------------------------------------------------------------

    def runs(self) -> list[dict]:
        return [run.summary() for run in self._runs.values()]

    def replay(self, ident: str, from_seq: int = 1) -> tuple[list[list[bytes]], list[list]]:
        """One run's retained messages with seq >= from_seq, and per publisher what is no longer retained."""
        run = self._runs.get(ident)
        if run is None:
            return [], []
        messages = [self._messages[key][1] for key in run.keys if key[1] >= from_seq]
        missing = []
        first_retained: dict[str, int] = {}
        for pub, seq in run.keys:
            first_retained.setdefault(pub, seq)
        for pub, first in run.first_seq.items():
            start = max(first, from_seq)
            end = first_retained.get(pub, self.publishers[pub].last_seq + 1) - 1
            if end >= start:
                missing.append([pub, start, end])
        return messages, missing

    def fetch(self, publisher: str, first: int, last: int) -> tuple[list[list[bytes]], list[list]]:
        """A publisher's retained messages first..last, and the ranges not retained."""
        last = min(last, first + MAX_FETCH - 1)
        messages, missing = [], []
        for seq in range(first, last + 1):
            entry = self._messages.get((publisher, seq))
            if entry is not None:
                messages.append(entry[1])
            elif missing and missing[-1][2] == seq - 1:
                missing[-1][2] = seq
            else:
                missing.append([publisher, seq, seq])
        return messages, missing

    def acks(self) -> dict[str, int]:
        return {pub: info.last_seq for pub, info in self.publishers.items()}

    def answer(self, request: bytes) -> list[bytes]:
        """Serve one history request (see ``protocol.request``); never raises on bad input."""
        try:
            req = protocol.decode_json(request)
            op = req["op"]
            if op == "runs":
                return protocol.reply({"runs": self.runs(),
                                       "publishers": [p.summary(k) for k, p in self.publishers.items()]})
            if op == "replay":
                messages, missing = self.replay(str(req["ident"]), int(req.get("from_seq", 1)))
            elif op == "fetch":
                messages, missing = self.fetch(str(req["pub"]), int(req["first"]), int(req["last"]))
            else:
                return protocol.error_reply(f"unknown op {op!r}; accepted: runs, replay, fetch")
        except (ValueError, KeyError, TypeError) as exc:
            return protocol.error_reply(f"bad request: {exc!r}")
        return protocol.reply({"count": len(messages), "missing": missing}, messages)


def _payload(frames: list[bytes]) -> dict | None:
    try:
        return protocol.decode(frames).payload
    except protocol.ProtocolError:
        return None
