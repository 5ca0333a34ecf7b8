"""The broker's bounded history of recent runs: the snapshot side of the ZeroMQ guide's Clone pattern.

The broker's capture thread feeds it every message it forwards; late joiners and
subscribers that missed messages ask it (REQ/REP, see ``protocol.request``) for:

- ``runs``: the runs it knows, each with its last status, and the publishers of those runs;
- ``replay``: one run's messages from a sequence number on;
- ``fetch``: a publisher's messages in a sequence range (gap recovery).

Bounds: at most ``max_runs`` runs (the least recently active run is forgotten first)
and ``max_bytes`` bytes of messages (the oldest messages are forgotten first).  What
was forgotten is reported as missing, never silently left out.  A publisher is
remembered while a retained run or message is its, or while the history waits for
messages of it to be sent again; then it is forgotten too.

Coverage, for acknowledgements: per publisher, the history counts from the first ``seq``
it saw; a ``seq`` that jumps leaves a *hole* (a copy the capture socket dropped under
overload), which a message sent again fills later.  ``acked`` is the highest ``seq`` up to
which nothing is missing: what the broker may acknowledge (``acks.py`` asks publishers to
send the holes again, and gives a hole up as lost when they cannot).

Counters (``counters()``): what it recorded, forgot and missed since the process started,
for the broker's metrics; the broker's history thread takes the snapshot, other threads read that.

Durability (optional, ``persist_to(directory)``): a ``Journal`` of append-only segment
files, reloaded when the broker starts again, even after SIGKILL.

    >>> h = History(max_runs=10, max_bytes=2**20)
    >>> frames = [b"status/run-1/running", protocol.header_prefix("json", "p1") + b"1}", b"{}"]
    >>> h.add(protocol.envelope(frames), frames)
    True
    >>> [run["status"] for run in h.runs()], h.acks()
    (['running'], {'p1': 1})
"""
from __future__ import annotations

import bisect
import collections
import dataclasses
import os
import time
from typing import Iterable, Iterator

from .. import protocol
from ..protocol import Envelope, ProtocolError
from .journal import Journal

GIVEN_UP_KEPT = 1000  # per publisher: the latest holes given up, reported by ``replay`` (``fetch`` needs none)


@dataclasses.dataclass
class RunInfo:
    ident: str
    status: str | None = None
    messages: int = 0                 # messages of this run received, in all
    first_seen: float = dataclasses.field(default_factory=time.time)
    last_seen: float = dataclasses.field(default_factory=time.time)
    first_seq: dict = dataclasses.field(default_factory=dict)   # publisher -> first seq of this run
    # (pub, seq) in arrival order; a key forgotten out of turn stays until it reaches the front
    keys: collections.deque = dataclasses.field(default_factory=collections.deque)
    retained: int = 0                 # keys still in the history

    def summary(self) -> dict:
        return {"ident": self.ident, "status": self.status, "messages": self.messages,
                "retained": self.retained, "publishers": sorted(self.first_seq),
                "first_seen": self.first_seen, "last_seen": self.last_seen}


@dataclasses.dataclass
class PublisherInfo:
    first_seq: int         # the first seq seen: coverage counts from here
    received: int = 0      # distinct messages received
    duplicates: int = 0    # messages received again (a publisher re-sending after a broker restart)
    missed: int = 0        # sequence numbers given up as lost (the publisher could not send them again)
    last_seq: int = 0      # the highest seq received
    holes: list = dataclasses.field(default_factory=list)  # [[first, last], ...] not received yet, in order
    given_up: collections.deque = dataclasses.field(  # [first, last] holes given up as lost, the latest ones
        default_factory=lambda: collections.deque(maxlen=GIVEN_UP_KEPT))
    closed: dict | None = None  # the publisher's own closing report, if it sent one
    retained: int = 0      # its messages in the history now
    runs: int = 0          # retained runs it published in
    late: set = dataclasses.field(default_factory=set)  # retained seqs that filled a hole (arrived out of order)

    @property
    def acked(self) -> int:
        """The highest seq up to which every message (from ``first_seq`` on) was received."""
        return self.holes[0][0] - 1 if self.holes else self.last_seq

    @property
    def pending(self) -> int:
        """Sequence numbers not received yet below ``last_seq`` (asked for again)."""
        return sum(last - first + 1 for first, last in self.holes)

    def summary(self, publisher: str) -> dict:
        return {"publisher": publisher, "received": self.received, "duplicates": self.duplicates,
                "missed": self.missed, "pending": self.pending, "last_seq": self.last_seq, "acked": self.acked,
                "closed": self.closed}

    def fill(self, seq: int) -> bool:
        """Take ``seq`` (not above ``last_seq``) out of its hole; False if it is in none (a duplicate)."""
        holes = self.holes
        i = bisect.bisect_right(holes, seq, key=lambda hole: hole[0]) - 1
        if i < 0 or holes[i][1] < seq:
            return False  # received before, or below first_seq (sent before this history knew the publisher)
        first, last = holes[i]
        if first == last:
            del holes[i]
        elif seq == first:
            holes[i][0] = seq + 1
        elif seq == last:
            holes[i][1] = seq - 1
        else:
            holes[i][1] = seq - 1
            holes.insert(i + 1, [seq + 1, last])
        return True

    def hole_at(self, seq: int) -> bool:
        i = bisect.bisect_right(self.holes, seq, key=lambda hole: hole[0]) - 1
        return i >= 0 and self.holes[i][1] >= seq


@dataclasses.dataclass(frozen=True)
class HistoryCounters:
    """A snapshot of a history: what it holds now, and counts since the process started (loaded records too)."""

    runs: int = 0                 # runs retained now
    messages: int = 0             # messages retained now
    bytes: int = 0                # bytes of them (all three frames)
    publishers: int = 0           # publishers remembered now
    pending: int = 0              # seqs missing below a publisher's last one, still asked for again
    received: int = 0             # distinct messages recorded
    duplicates: int = 0           # messages received again (and not recorded twice)
    dropped: int = 0              # seqs found missing when a later one came: copies the capture socket dropped,
    #                               or messages the publisher lost; sent again later, or else counted in missed
    missed: int = 0               # seqs given up as lost
    forgotten_runs: int = 0       # runs forgotten beyond max_runs
    forgotten_messages: int = 0   # messages forgotten, beyond max_bytes or with their run
    forgotten_bytes: int = 0
    final_statuses: dict = dataclasses.field(default_factory=dict)  # final status -> runs that ended so


class History:
    def __init__(self, max_runs: int = 100, max_bytes: int = 64 * 2**20):
        self.max_runs = max_runs
        self.max_bytes = max_bytes
        self.bytes = 0
        self._messages: collections.OrderedDict = collections.OrderedDict()  # (pub, seq) -> (ident, frames, size)
        self._runs: collections.OrderedDict[str, RunInfo] = collections.OrderedDict()
        self.publishers: dict[str, PublisherInfo] = {}
        self.holey: set[str] = set()  # publishers with holes
        self.journal: Journal | None = None
        # Since start, for counters(): a few additions per message, on the history thread only.
        self._received = self._duplicates = self._dropped = self._missed = 0
        self._forgotten_runs = self._forgotten_messages = self._forgotten_bytes = 0
        self._final_statuses: collections.Counter = collections.Counter()

    def persist_to(self, directory: str | os.PathLike) -> int:
        """Load what a journal in ``directory`` holds, then record every new message there too.

        Returns the number of messages loaded.  Raises OSError if the directory cannot be used.
        """
        journal = Journal(directory, self.max_bytes)
        loaded = 0
        try:
            for received, run_first_seq, frames in journal.load():
                try:
                    env = protocol.envelope(frames)
                except ProtocolError:
                    continue
                loaded += self.add(env, frames, received, run_first_seq)
        except BaseException:
            journal.close()  # the directory's lock with it
            raise
        self.journal = journal  # from now on: loaded records are not written again
        return loaded

    def sync(self) -> None:
        """Hand what was recorded to the OS: call before acknowledging it.  OSError if the disk refuses
        (what is not written stays queued for the next call: ``journal.py``)."""
        if self.journal is not None:
            self.journal.flush()

    def close(self) -> None:
        if self.journal is not None:
            self.journal.close()

    def add(self, env: Envelope, frames: list[bytes], received: float | None = None, run_first_seq: int = 0) -> bool:
        """Record one message; False if it was a duplicate.

        ``received``: when (default now); ``run_first_seq``: the first seq of this run from this
        publisher, when known from before (a journal's record), even if that message is gone.
        """
        received = time.time() if received is None else received
        pub = self.publishers.get(env.publisher)
        if pub is None:
            pub = self.publishers[env.publisher] = PublisherInfo(first_seq=env.seq)
        seq, last = env.seq, pub.last_seq
        if seq > last:  # the usual case: in order
            if last and seq > last + 1:  # copies missed: a hole, until they are sent again
                pub.holes.append([last + 1, seq - 1])
                self._dropped += seq - 1 - last
                self.holey.add(env.publisher)
            pub.last_seq = seq
        elif pub.fill(seq):
            pub.late.add(seq)
            if not pub.holes:
                self.holey.discard(env.publisher)
        else:
            pub.duplicates += 1
            self._duplicates += 1
            return False
        pub.received += 1
        self._received += 1
        pub.retained += 1
        key = (env.publisher, seq)
        if env.kind == "publisher":  # a closing report: kept for fetch, not part of any run
            pub.closed = _payload(frames)
            ident, first_seq = None, env.seq
        else:
            ident = env.ident
            run = self._runs.get(ident)
            if run is None:
                run = self._runs[ident] = RunInfo(ident, first_seen=received)
                while len(self._runs) > self.max_runs:
                    self._forget_run(next(iter(self._runs)))
            else:
                self._runs.move_to_end(ident)
            run.messages += 1
            run.last_seen = received
            first_seq = run.first_seq.get(env.publisher)
            if first_seq is None:  # this publisher's first message of this run (that the history knows of)
                pub.runs += 1
                first_seq = run.first_seq[env.publisher] = min(seq, run_first_seq or seq)
            elif seq < first_seq:  # filled a hole before it
                first_seq = run.first_seq[env.publisher] = seq
            if env.kind == "status":
                if env.name in protocol.FINAL_STATUSES and run.status not in protocol.FINAL_STATUSES:
                    self._final_statuses[env.name] += 1
                run.status = env.name
            run.keys.append(key)
            run.retained += 1

        size = len(frames[0]) + len(frames[1]) + len(frames[2])
        self._messages[key] = (ident, frames, size)
        self.bytes += size
        if self.journal is not None:
            self.journal.append(received, first_seq, frames)
        while self.bytes > self.max_bytes and self._messages:
            self._forget_oldest()
        return True

    def give_up(self, publisher: str) -> tuple[int, int] | None:
        """Count the publisher's first hole as lost for good (it cannot send it again); its range, or None."""
        pub = self.publishers.get(publisher)
        if pub is None or not pub.holes:
            return None
        first, last = pub.holes.pop(0)
        pub.missed += last - first + 1
        pub.given_up.append([first, last])
        self._missed += last - first + 1
        if not pub.holes:
            self.holey.discard(publisher)
            self._forget_publisher_if_idle(publisher)
        return first, last

    def _forget_oldest(self) -> None:
        key, (ident, _, size) = self._messages.popitem(last=False)
        pub = self.publishers[key[0]]
        # Each publisher's retained messages stay one range of seqs (minus holes), so that what is
        # forgotten is one range too: messages that filled a hole below this one go with it.
        below = [seq for seq in pub.late if seq < key[1]] if pub.late else ()
        self._forgotten(key, ident, size, pub)
        for seq in below:
            other = (key[0], seq)
            other_ident, _, other_size = self._messages.pop(other)
            self._forgotten(other, other_ident, other_size, pub)
        if not pub.retained:
            self._forget_publisher_if_idle(key[0])

    def _forgotten(self, key: tuple[str, int], ident: str | None, size: int, pub: PublisherInfo) -> None:
        """Bookkeeping for a message no longer in ``_messages``."""
        self.bytes -= size
        self._forgotten_messages += 1
        self._forgotten_bytes += size
        pub.retained -= 1
        if pub.late:
            pub.late.discard(key[1])
        run = self._runs.get(ident) if ident is not None else None
        if run is not None:
            run.retained -= 1
            keys, messages = run.keys, self._messages
            while keys and keys[0] not in messages:
                keys.popleft()

    def _forget_run(self, ident: str) -> None:
        run = self._runs.pop(ident)
        self._forgotten_runs += 1
        for key in run.keys:
            entry = self._messages.pop(key, None)
            if entry is not None:
                self.bytes -= entry[2]
                self._forgotten_messages += 1
                self._forgotten_bytes += entry[2]
                pub = self.publishers[key[0]]
                pub.retained -= 1
                pub.late.discard(key[1])
        for publisher in run.first_seq:
            self.publishers[publisher].runs -= 1
            self._forget_publisher_if_idle(publisher)

    def _forget_publisher_if_idle(self, publisher: str) -> None:
        pub = self.publishers[publisher]
        if not (pub.retained or pub.runs or pub.holes):
            del self.publishers[publisher]

    # -- queries ------------------------------------------------------------------------

    def counters(self) -> HistoryCounters:
        """What it holds and has counted, as one consistent snapshot (call from the thread that adds)."""
        return HistoryCounters(
            runs=len(self._runs), messages=len(self._messages), bytes=self.bytes, publishers=len(self.publishers),
            pending=sum(self.publishers[p].pending for p in self.holey), received=self._received,
            duplicates=self._duplicates, dropped=self._dropped, missed=self._missed,
            forgotten_runs=self._forgotten_runs, forgotten_messages=self._forgotten_messages,
            forgotten_bytes=self._forgotten_bytes, final_statuses=dict(self._final_statuses))

    def runs(self) -> list[dict]:
        return [run.summary() for run in self._runs.values()]

    def replay(self, ident: str, from_seq: int = 1) -> tuple[list[list[bytes]], list[list], list[list]]:
        """One run's retained messages with seq >= from_seq, each publisher's in seq order; per
        publisher what is no longer retained or was given up (``missing``); and the holes the
        broker is still asking its publishers for (``pending``: ask again later).

        Holes are a publisher's, not a run's: with runs of one process interleaved, a hole in
        the middle of this run's range may hold messages of the other run too."""
        run = self._runs.get(ident)
        if run is None:
            return [], [], []
        retained = [key for key in run.keys if key in self._messages]
        messages = [self._messages[key][1] for key in _in_seq_order(key for key in retained if key[1] >= from_seq)]
        missing = []
        first_retained: dict[str, int] = {}
        for pub, seq in retained:
            if seq < first_retained.get(pub, seq + 1):
                first_retained[pub] = seq
        for pub, first in run.first_seq.items():
            start = max(first, from_seq)
            end = first_retained.get(pub, self.publishers[pub].last_seq + 1) - 1
            if end >= start:
                missing.append([pub, start, end])
        pending = []
        for pub in run.first_seq:
            info = self.publishers[pub]
            start = max(run.first_seq[pub], from_seq)
            missing.extend([pub, max(a, start), b] for a, b in info.given_up if b >= start)
            pending.extend([pub, max(a, start), b] for a, b in info.holes if b >= start)
        return messages, missing, pending

    def fetch(self, publisher: str, first: int, last: int) -> tuple[list[list[bytes]], list[list]]:
        """A publisher's retained messages first..last, and the ranges not retained and gone for good
        (a hole the broker still asks the publisher for is not gone: see ``pending``)."""
        last = min(last, first + protocol.MAX_FETCH - 1)
        pub = self.publishers.get(publisher)
        if pub is not None:
            last = min(last, pub.last_seq)  # beyond: not published yet (or not received yet), not missing
        messages, missing = [], []
        for seq in range(first, last + 1):
            entry = self._messages.get((publisher, seq))
            if entry is not None:
                messages.append(entry[1])
            elif pub is not None and pub.hole_at(seq):
                continue
            elif missing and missing[-1][2] == seq - 1:
                missing[-1][2] = seq
            else:
                missing.append([publisher, seq, seq])
        return messages, missing

    def get(self, publisher: str, seq: int) -> list[bytes] | None:
        """The frames of one retained message, or None (not received, or forgotten)."""
        entry = self._messages.get((publisher, seq))
        return entry[1] if entry is not None else None

    def pending(self, publisher: str, first: int, last: int) -> list[list]:
        """The ranges of first..last not received yet that the publisher is asked to send again."""
        pub = self.publishers.get(publisher)
        if pub is None:
            return []
        return [[publisher, max(a, first), min(b, last)] for a, b in pub.holes if a <= last and b >= first]

    def acks(self) -> dict[str, int]:
        """Per publisher, the highest seq up to which the history received every message."""
        return {pub: info.acked for pub, info in self.publishers.items() if info.acked}

    def answer(self, request: bytes) -> list[bytes]:
        """Serve one history request (see ``protocol.request``); never raises on bad input."""
        try:
            req = protocol.decode_json(request)
            op = req["op"]
            if op == "runs":
                return protocol.reply({"runs": self.runs(),
                                       "publishers": [p.summary(k) for k, p in self.publishers.items()]})
            if op == "replay":
                messages, missing, pending = self.replay(str(req["ident"]), int(req.get("from_seq", 1)))
                return protocol.reply({"count": len(messages), "missing": missing, "pending": pending}, messages)
            if op == "fetch":
                pub, first, last = str(req["pub"]), int(req["first"]), int(req["last"])
                if not 1 <= first <= last:
                    return protocol.error_reply(f"bad request: fetch needs 1 <= first <= last, got {first}..{last}")
                messages, missing = self.fetch(pub, first, last)
                end = first + protocol.MAX_FETCH - 1
                info = {"count": len(messages), "missing": missing, "pending": self.pending(pub, first, min(last, end)),
                        "last_seq": self.publishers[pub].last_seq if pub in self.publishers else None}
                if last > end:
                    info["next"] = end + 1  # the request was cut at MAX_FETCH sequence numbers: ask again from here
                return protocol.reply(info, messages)
            return protocol.error_reply(f"unknown op {op!r}; accepted: runs, replay, fetch")
        except (ValueError, KeyError, TypeError) as exc:
            return protocol.error_reply(f"bad request: {exc!r}")


def tell_holdings(history: History, link, heard: Iterable[str], sweep: bool) -> None:
    """Tell ``link`` (an ``upstream.UpstreamLink`` or ``jetstream.StoreLink``: a forwarder whose buffer is
    the history) which publishers' messages the history holds without a hole: those ``heard`` from,
    or with ``sweep`` all of them, and then which publishers the history forgot altogether."""
    if sweep:
        for pub in [pub for pub in link.publishers() if pub not in history.publishers]:
            link.forgotten(pub)
        heard = history.publishers
    for pub in heard:
        info = history.publishers.get(pub)
        if info is not None and info.acked >= info.first_seq:
            link.holds(pub, info.first_seq, info.acked)


def retained_in(history: History, link, pub: str, first: int, last: int) -> Iterator[tuple[int, list[bytes]]]:
    """(seq, frames) of ``pub``'s messages ``first``..``last`` the history still holds, in order; each range
    it no longer holds is reported to ``link.missing(pub, a, b)`` once, before what follows it."""
    gap = None
    for seq in range(first, last + 1):
        frames = history.get(pub, seq)
        if frames is None:
            gap = (gap[0], seq) if gap else (seq, seq)
            continue
        if gap:
            link.missing(pub, *gap)
            gap = None
        yield seq, frames
    if gap:
        link.missing(pub, *gap)


def _in_seq_order(keys: Iterable[tuple[str, int]]) -> list[tuple[str, int]]:
    """``keys`` with each publisher's seqs sorted, keeping the publishers' interleaving."""
    keys = list(keys)
    by_publisher: dict[str, list[int]] = {}
    for pub, seq in keys:
        by_publisher.setdefault(pub, []).append(seq)
    ordered = {pub: iter(sorted(seqs)) for pub, seqs in by_publisher.items()}
    return [(pub, next(ordered[pub])) for pub, _ in keys]


def _payload(frames: list[bytes]) -> dict | None:
    try:
        return protocol.decode(frames).payload
    except protocol.ProtocolError:
        return None
