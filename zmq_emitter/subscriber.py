"""The subscriber library: subscribe, iterate over decoded messages, be told of every gap.

Blocking::

    from zmq_emitter.subscriber import Subscriber
    with Subscriber("tcp://127.0.0.1:5558", topics=["status"]) as sub:
        for msg in sub:
            print(msg.ident, msg.name)          # e.g. "2f1c... successful"

asyncio::

    from zmq_emitter.subscriber import AsyncSubscriber
    async with AsyncSubscriber("tcp://127.0.0.1:5558") as sub:
        async for msg in sub:
            ...

The logic lives once, in ``Tracker`` (decoding, duplicates, gaps in each publisher's
sequence numbers); ``Subscriber`` and ``AsyncSubscriber`` only decide how the frames
are received.  A message that does not decode is counted and skipped, never raised:
a subscriber survives any bytes on its socket.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
from typing import AsyncIterator, Callable, Iterable, Iterator

import zmq
import zmq.asyncio

from . import protocol, security
from .protocol import Message, ProtocolError

log = logging.getLogger("zmq_emitter.subscriber")

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5558"  # the broker's default backend


@dataclasses.dataclass(frozen=True)
class Gap:
    """Messages ``first``..``last`` (inclusive) of ``publisher`` never arrived."""

    publisher: str
    first: int
    last: int

    @property
    def count(self) -> int:
        return self.last - self.first + 1


@dataclasses.dataclass
class Counts:
    received: int = 0     # valid messages handed to the caller
    invalid: int = 0      # messages that did not decode, skipped
    duplicates: int = 0   # messages seen before (same publisher and seq), skipped
    missed: int = 0       # messages in gaps, gone for good
    recovered: int = 0    # messages of gaps fetched from the broker's history


def subscriptions(kinds: Iterable[str] = protocol.KINDS, ident: str | None = None,
                  events: Iterable[str] = ()) -> list[bytes]:
    """The topic prefixes to subscribe to, so that the publishers filter at the source.

    >>> subscriptions(["event"], ident="run-1", events=["runner_on_failed"])
    [b'event/run-1/runner_on_failed']
    """
    events = list(events)
    prefixes = []
    for kind in kinds:
        if kind == "publisher" and ident is not None:
            continue  # publishers' closing reports are not per run
        if ident is None:
            prefixes.append(kind.encode() + b"/")
        elif kind == "event" and events:
            prefixes.extend(protocol.topic("event", ident, name) for name in events)
        else:
            prefixes.append(protocol.run_prefix(kind, ident))
    return prefixes


class Tracker:
    """Sans-I/O core: frames in, Message (or None for skipped input) out.

    Gap detection follows each publisher's ``seq``; it is only meaningful when the
    subscription covers all of a publisher's messages, so it is on only then
    (``track_gaps``).  The first message of a publisher starts its sequence: joining
    mid-stream is not a gap.
    """

    def __init__(self, *, track_gaps: bool = True, on_gap: Callable[[Gap], None] | None = None,
                 on_invalid: Callable[[list[bytes], ProtocolError], None] | None = None,
                 recover: Callable[[Gap], list[list[bytes]] | None] | None = None):
        self.track_gaps = track_gaps
        self.recover = recover  # fetches a gap's messages from a broker's history (Subscriber does I/O)
        self.ready: collections.deque[Message] = collections.deque()  # recovered, then the message after them
        self.on_gap = on_gap or _warn_gap
        self.on_invalid = on_invalid or _warn_invalid_once(self)
        self.counts = Counts()
        self.gaps: list[Gap] = []
        self.last_seq: dict[str, int] = {}

    def accept(self, frames: list[bytes], *, detect_gaps: bool = True) -> Message | None:
        """The decoded message, or None for input that is skipped (undecodable, or seen before).

        On a gap, with ``recover`` set, the recovered messages are returned first, in order:
        this call returns the first of them and queues the rest, then this message, in ``ready``.
        """
        try:
            msg = protocol.decode(frames)
        except ProtocolError as exc:
            self.counts.invalid += 1
            self.on_invalid(frames, exc)
            return None
        last = self.last_seq.get(msg.publisher)
        if last is not None and msg.seq <= last:  # a publisher's seq only grows: this is a repeat
            self.counts.duplicates += 1
            return None
        self.last_seq[msg.publisher] = msg.seq
        self.counts.received += 1
        if detect_gaps and self.track_gaps and last is not None and msg.seq > last + 1:
            recovered = self._fill(Gap(msg.publisher, last + 1, msg.seq - 1))
            if recovered:
                self.ready.extend(recovered[1:])
                self.ready.append(msg)
                return recovered[0]
        return msg

    def _fill(self, gap: Gap) -> list[Message]:
        """Recover what the broker's history still holds of ``gap``; report the rest as lost."""
        found: dict[int, Message] = {}
        for frames in (self.recover(gap) or []) if self.recover else []:
            try:
                msg = protocol.decode(frames)
            except ProtocolError:
                continue
            if msg.publisher == gap.publisher and gap.first <= msg.seq <= gap.last:
                found[msg.seq] = msg
        first = gap.first
        for seq in sorted(found) + [gap.last + 1]:
            if seq > first:
                self.lost(Gap(gap.publisher, first, seq - 1))
            first = seq + 1
        self.counts.recovered += len(found)
        self.counts.received += len(found)
        return [found[seq] for seq in sorted(found)]

    def lost(self, gap: Gap) -> None:
        """Record and report messages that are gone for good."""
        self.gaps.append(gap)
        self.counts.missed += gap.count
        self.on_gap(gap)


def _warn_gap(gap: Gap) -> None:
    log.warning("missed %d message(s) of publisher %s: seq %d..%d", gap.count, gap.publisher, gap.first, gap.last)


def _warn_invalid_once(tracker: Tracker) -> Callable[[list[bytes], ProtocolError], None]:
    def warn(frames: list[bytes], exc: ProtocolError) -> None:
        if tracker.counts.invalid == 1:
            log.warning("skipping messages that are not zmq-emitter messages (first: %s); they are counted", exc)
    return warn


def _socket(context: zmq.Context, endpoints: str | Iterable[str], topics: Iterable[bytes | str],
            rcvhwm: int, curve: security.ClientCurve | None = None) -> zmq.Socket:
    sock = context.socket(zmq.SUB)
    if curve is not None:  # before connect: CURVE options apply to the connects that follow
        curve.apply(sock)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, rcvhwm)
    for topic in topics:
        sock.setsockopt(zmq.SUBSCRIBE, topic.encode() if isinstance(topic, str) else topic)
    for endpoint in [endpoints] if isinstance(endpoints, str) else endpoints:
        sock.connect(endpoint)
    return sock


def _covers_everything(topics: list[bytes | str]) -> bool:
    prefixes = {t.encode() if isinstance(t, str) else t for t in topics}
    return b"" in prefixes or {b"status", b"event"} <= prefixes or {b"status/", b"event/"} <= prefixes


class _TrackedSocket:
    """What both subscriber flavours share: a Tracker's counts and gaps."""

    tracker: Tracker

    @property
    def counts(self) -> Counts:
        return self.tracker.counts

    @property
    def gaps(self) -> list[Gap]:
        return self.tracker.gaps


class Subscriber(_TrackedSocket):
    """A SUB socket on one or more endpoints, yielding decoded ``Message`` objects.

    ``topics`` are prefixes (see ``subscriptions()``); ``""`` is everything.
    ``recv(timeout)`` returns None on timeout; iterating blocks until ``close()``.
    """

    def __init__(self, endpoints: str | Iterable[str] = DEFAULT_ENDPOINT, topics: Iterable[bytes | str] = ("",), *,
                 on_gap: Callable[[Gap], None] | None = None,
                 on_invalid: Callable[[list[bytes], ProtocolError], None] | None = None,
                 rcvhwm: int = 100_000, context: zmq.Context | None = None,
                 curve_server_key: str | bytes | None = None, curve_secret_key_file: str | None = None,
                 history: str | None = None, history_timeout: float = 5.0):
        curve = security.ClientCurve.load(curve_server_key, curve_secret_key_file)  # docs/security.md
        topics = list(topics)
        self._own_context = context is None
        self.context = context or zmq.Context()
        self._curve = curve
        self.socket = _socket(self.context, endpoints, topics, rcvhwm, curve)
        self.history = history
        self.history_timeout = history_timeout
        self._requester: zmq.Socket | None = None
        self.tracker = Tracker(track_gaps=_covers_everything(topics), on_gap=on_gap, on_invalid=on_invalid,
                               recover=self._fetch if history else None)

    # -- the broker's history (the ZeroMQ guide's Clone pattern: subscribe first, then snapshot) --

    def request(self, op: str, **fields) -> tuple[dict, list[list[bytes]]] | None:
        """One request to the broker's history service; None if it did not answer in time."""
        if self.history is None:
            raise ValueError("this Subscriber has no history endpoint (history=...)")
        if self._requester is None:
            self._requester = self.context.socket(zmq.REQ)
            self._requester.setsockopt(zmq.LINGER, 0)
            if self._curve is not None:
                self._curve.apply(self._requester)
            self._requester.connect(self.history)
        self._requester.send(protocol.request(op, **fields))
        if not self._requester.poll(int(self.history_timeout * 1000)):
            self._requester.close(linger=0)  # a REQ that got no reply cannot send again
            self._requester = None
            return None
        return protocol.parse_reply(self._requester.recv_multipart())

    def runs(self) -> list[dict]:
        """The runs the broker's history knows, each with its last status."""
        answer = self.request("runs")
        return answer[0]["runs"] if answer else []

    def replay(self, ident: str | None = None) -> int:
        """Queue the history of run ``ident`` (or of every run the broker knows) before live messages.

        Call it after constructing the Subscriber (the subscription is made first, so nothing
        falls between history and live messages; a live message already replayed is dropped).
        Returns how many messages were queued; what the history no longer holds is reported as lost.
        """
        idents = [ident] if ident is not None else [run["ident"] for run in self.runs()]
        queued = 0
        for one in idents:
            answer = self.request("replay", ident=one, from_seq=1)
            if answer is None:
                continue
            info, messages = answer
            for frames in messages:
                msg = self.tracker.accept(frames, detect_gaps=False)
                if msg is not None:
                    self.tracker.ready.append(msg)
                    queued += 1
            for publisher, first, last in info.get("missing", []):
                self.tracker.lost(Gap(publisher, first, last))
        return queued

    def _fetch(self, gap: Gap) -> list[list[bytes]] | None:
        answer = self.request("fetch", pub=gap.publisher, first=gap.first, last=gap.last)
        return answer[1] if answer else None

    def recv(self, timeout: float | None = None) -> Message | None:
        """The next valid message, or None if none came within ``timeout`` seconds."""
        poll_ms = None if timeout is None else max(0, int(timeout * 1000))
        while True:
            if self.tracker.ready:
                return self.tracker.ready.popleft()
            if poll_ms is not None and not self.socket.poll(poll_ms):
                return None
            msg = self.tracker.accept(self.socket.recv_multipart())
            if msg is not None:
                return msg

    def __iter__(self) -> Iterator[Message]:
        while True:
            yield self.recv()

    def close(self) -> None:
        if self._requester is not None:
            self._requester.close(linger=0)
        self.socket.close(linger=0)
        if self._own_context:
            self.context.term()

    def __enter__(self) -> "Subscriber":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncSubscriber(_TrackedSocket):
    """The asyncio twin of ``Subscriber``: ``await sub.recv()`` and ``async for msg in sub``."""

    def __init__(self, endpoints: str | Iterable[str] = DEFAULT_ENDPOINT, topics: Iterable[bytes | str] = ("",), *,
                 on_gap: Callable[[Gap], None] | None = None,
                 on_invalid: Callable[[list[bytes], ProtocolError], None] | None = None,
                 rcvhwm: int = 100_000, context: zmq.asyncio.Context | None = None,
                 curve_server_key: str | bytes | None = None, curve_secret_key_file: str | None = None):
        curve = security.ClientCurve.load(curve_server_key, curve_secret_key_file)  # docs/security.md
        topics = list(topics)
        self._own_context = context is None
        self.context = context or zmq.asyncio.Context()
        self.socket = _socket(self.context, endpoints, topics, rcvhwm, curve)
        self.tracker = Tracker(track_gaps=_covers_everything(topics), on_gap=on_gap, on_invalid=on_invalid)

    async def recv(self, timeout: float | None = None) -> Message | None:
        poll_ms = None if timeout is None else max(0, int(timeout * 1000))
        while True:
            if poll_ms is not None and not await self.socket.poll(poll_ms):
                return None
            msg = self.tracker.accept(await self.socket.recv_multipart())
            if msg is not None:
                return msg

    async def __aiter__(self) -> AsyncIterator[Message]:
        while True:
            yield await self.recv()

    def close(self) -> None:
        self.socket.close(linger=0)
        if self._own_context:
            self.context.term()

    async def __aenter__(self) -> "AsyncSubscriber":
        return self

    async def __aexit__(self, *exc) -> None:
        self.close()
