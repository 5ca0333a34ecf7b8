"""The subscriber library: subscribe, iterate over decoded messages, be told of every gap.

Blocking::

    from zmq_emitter.consumers import Subscriber
    with Subscriber("tcp://127.0.0.1:5558", topics=["status"]) as sub:
        for msg in sub:
            print(msg.ident, msg.name)          # e.g. "2f1c... successful"

asyncio::

    from zmq_emitter.consumers import AsyncSubscriber
    async with AsyncSubscriber("tcp://127.0.0.1:5558") as sub:
        async for msg in sub:
            ...

Nothing missed, or told exactly what (docs/reliability.md)::

    sub = Subscriber("tcp://127.0.0.1:5558", history="tcp://127.0.0.1:5559")
    sub.replay("my-run")      # the run's history first, then live messages, no gap or repeat at the seam
    ...                       # a gap in a publisher's seq is fetched from the history, in order
    sub.reconnect()           # new connections, then everything that passed meanwhile
    sub.gaps                  # what the history no longer held: publisher and seq range

The logic lives once, in the sans-I/O ``Tracker`` (decoding, duplicates, gaps in each
publisher's sequence numbers, filling gaps); ``Subscriber`` and ``AsyncSubscriber`` only
decide how frames and history answers are received.  A message that does not decode is
counted and skipped, never raised: a subscriber survives any bytes on its socket.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
from typing import AsyncIterator, Callable, Iterable, Iterator

import zmq
import zmq.asyncio

from .. import protocol, security
from ..protocol import Message, ProtocolError

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

    Recovery from a broker's history (``recovers=True``) is a dialogue with the I/O layer:
    ``accept`` returns the ``Gap`` instead of the message that revealed it; the caller fetches
    the gap's messages and hands them to ``fill``, which queues them, then that message, in
    ``ready``.  ``Subscriber`` and ``AsyncSubscriber`` differ only in how they fetch.
    """

    def __init__(self, topics: Iterable[bytes | str] = (b"",), *, recovers: bool = False,
                 on_gap: Callable[[Gap], None] | None = None,
                 on_invalid: Callable[[list[bytes], ProtocolError], None] | None = None):
        self.prefixes = tuple(t.encode() if isinstance(t, str) else t for t in topics)
        self.track_gaps = _covers_everything(self.prefixes)
        self.recovers = recovers
        self.ready: collections.deque[Message] = collections.deque()  # to hand out before reading the socket
        self.on_gap = on_gap or _warn_gap
        self.on_invalid = on_invalid or _warn_invalid_once(self)
        self.counts = Counts()
        self.gaps: list[Gap] = []
        self.last_seq: dict[str, int] = {}
        self._revealed_by: Message | None = None  # the message after the gap being recovered

    def accept(self, frames: list[bytes], *, detect_gaps: bool = True) -> Message | Gap | None:
        """The decoded message; None for input that is skipped (undecodable, or seen before);
        a ``Gap`` to recover first (only with ``recovers``): pass its messages to ``fill``."""
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
            gap = Gap(msg.publisher, last + 1, msg.seq - 1)
            if self.recovers:
                self._revealed_by = msg
                return gap
            self.lost(gap)
        return msg

    def behind(self, publishers: Iterable[dict]) -> list[Gap]:
        """The gaps between what this tracker saw and what a broker's history received
        (the ``publishers`` of its ``runs`` answer), for publishers this tracker knows.
        They count as seen from now on: ``fill`` each with what the history returns."""
        gaps = []
        for pub in publishers:
            last = self.last_seq.get(pub["publisher"])
            if last is not None and pub["last_seq"] > last:
                gaps.append(Gap(pub["publisher"], last + 1, pub["last_seq"]))
                self.last_seq[pub["publisher"]] = pub["last_seq"]
        return gaps

    def fill(self, gap: Gap, fetched: list[list[bytes]] | None) -> int:
        """Queue the messages of ``gap`` that the history returned, in order, and report the rest as lost.

        Messages outside this subscription's topics are not queued (and not lost: they were not
        asked for).  The message that revealed the gap, if any, is queued after them.
        """
        found: dict[int, Message] = {}
        for frames in fetched or []:
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
        wanted = [found[seq] for seq in sorted(found) if found[seq].topic.startswith(self.prefixes)]
        self.counts.recovered += len(wanted)
        self.counts.received += len(wanted)
        self.ready.extend(wanted)
        if self._revealed_by is not None:
            self.ready.append(self._revealed_by)
            self._revealed_by = None
        return len(wanted)

    def queue_replay(self, info: dict, messages: list[list[bytes]]) -> int:
        """Queue a history ``replay`` answer before live messages; report what it no longer holds."""
        queued = 0
        for frames in messages:
            msg = self.accept(frames, detect_gaps=False)
            if msg is not None:
                self.ready.append(msg)
                queued += 1
        for publisher, first, last in info.get("missing", []):
            self.lost(Gap(publisher, first, last))
        return queued

    def positions(self) -> dict[str, int]:
        """``last_seq`` less what is still queued in ``ready`` (seen, not yet handed out)."""
        positions = dict(self.last_seq)
        for msg in reversed(self.ready):  # oldest last: it decides
            positions[msg.publisher] = msg.seq - 1
        return positions

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


def _socket(context: zmq.Context, endpoints: list[str], topics: tuple[bytes, ...],
            rcvhwm: int, curve: security.ClientCurve | None = None) -> zmq.Socket:
    sock = context.socket(zmq.SUB)
    if curve is not None:  # before connect: CURVE options apply to the connects that follow
        curve.apply(sock)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, rcvhwm)
    for topic in topics:
        sock.setsockopt(zmq.SUBSCRIBE, topic)
    for endpoint in endpoints:
        sock.connect(endpoint)
    return sock


def _covers_everything(prefixes: tuple[bytes, ...]) -> bool:
    subscribed = set(prefixes)
    return b"" in subscribed or {b"status", b"event"} <= subscribed or {b"status/", b"event/"} <= subscribed


def _fetch_requests(gap: Gap) -> Iterator[dict]:
    """The ``fetch`` requests that cover ``gap`` (one request covers at most ``protocol.MAX_FETCH``)."""
    for first in range(gap.first, gap.last + 1, protocol.MAX_FETCH):
        yield {"pub": gap.publisher, "first": first, "last": min(gap.last, first + protocol.MAX_FETCH - 1)}


class _SubscriberBase:
    """What both subscriber flavours share: options, the SUB socket, the Tracker and its counts.

    The I/O each flavour adds: ``recv``; ``request`` to the broker's history service (REQ/REP);
    ``replay`` (a run's history before live messages); ``catch_up`` (everything the history
    received from known publishers since the last message seen); ``reconnect``.
    """

    def __init__(self, context: zmq.Context, own_context: bool, endpoints: str | Iterable[str],
                 topics: Iterable[bytes | str], on_gap, on_invalid, rcvhwm: int, curve_server_key,
                 curve_secret_key_file, history: str | None, history_timeout: float):
        self._curve = security.ClientCurve.load(curve_server_key, curve_secret_key_file)  # docs/security.md
        self._own_context = own_context
        self.context = context
        self.endpoints = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        self.tracker = Tracker(topics, recovers=history is not None, on_gap=on_gap, on_invalid=on_invalid)
        self._rcvhwm = rcvhwm
        self.socket = _socket(context, self.endpoints, self.tracker.prefixes, rcvhwm, self._curve)
        self.history = history
        self.history_timeout = history_timeout
        self._requester: zmq.Socket | None = None

    @property
    def counts(self) -> Counts:
        return self.tracker.counts

    @property
    def gaps(self) -> list[Gap]:
        return self.tracker.gaps

    @property
    def positions(self) -> dict[str, int]:
        """Each publisher's last ``seq`` handed to the caller (or reported lost): save it with what you
        stored, to ``resume`` from it, e.g. in a process that restarted."""
        return self.tracker.positions()

    def disconnect(self) -> None:
        """Drop the connections (closes the SUB socket); the positions stay, for ``reconnect``."""
        self.socket.close(linger=0)

    def _new_socket(self) -> None:
        """A fresh SUB socket on the same endpoints and topics (the old connections are dropped)."""
        self.disconnect()
        self.socket = _socket(self.context, self.endpoints, self.tracker.prefixes, self._rcvhwm, self._curve)

    def _requester_socket(self) -> zmq.Socket:
        if self.history is None:
            raise ValueError("this subscriber has no history endpoint (history=...)")
        if self._requester is None:
            self._requester = self.context.socket(zmq.REQ)
            self._requester.setsockopt(zmq.LINGER, 0)
            if self._curve is not None:
                self._curve.apply(self._requester)
            self._requester.connect(self.history)
        return self._requester

    def _drop_requester(self) -> None:
        """A REQ that got no reply cannot send again: the next request opens a new one."""
        if self._requester is not None:
            self._requester.close(linger=0)
            self._requester = None

    def close(self) -> None:
        self._drop_requester()
        self.socket.close(linger=0)
        if self._own_context:
            self.context.term()


class Subscriber(_SubscriberBase):
    """A SUB socket on one or more endpoints, yielding decoded ``Message`` objects.

    ``topics`` are prefixes (see ``subscriptions()``); ``""`` is everything.
    ``recv(timeout)`` returns None on timeout; iterating blocks until ``close()``.
    With ``history`` (the broker's history service), gaps are recovered from it and
    ``replay``, ``catch_up``, ``resume`` and ``runs`` are available.
    """

    def __init__(self, endpoints: str | Iterable[str] = DEFAULT_ENDPOINT, topics: Iterable[bytes | str] = ("",), *,
                 on_gap: Callable[[Gap], None] | None = None,
                 on_invalid: Callable[[list[bytes], ProtocolError], None] | None = None,
                 rcvhwm: int = 100_000, context: zmq.Context | None = None,
                 curve_server_key: str | bytes | None = None, curve_secret_key_file: str | None = None,
                 history: str | None = None, history_timeout: float = 5.0):
        super().__init__(context or zmq.Context(), context is None, endpoints, topics, on_gap, on_invalid,
                         rcvhwm, curve_server_key, curve_secret_key_file, history, history_timeout)

    # -- the broker's history (the ZeroMQ guide's Clone pattern: subscribe first, then snapshot) --

    def request(self, op: str, **fields) -> tuple[dict, list[list[bytes]]] | None:
        """One request to the broker's history service; None if it did not answer in time."""
        requester = self._requester_socket()
        requester.send(protocol.request(op, **fields))
        if not requester.poll(int(self.history_timeout * 1000)):
            self._drop_requester()
            return None
        return protocol.parse_reply(requester.recv_multipart())

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
            if answer is not None:
                queued += self.tracker.queue_replay(*answer)
        return queued

    def catch_up(self) -> int | None:
        """Queue everything the history received from known publishers after the last message seen.

        For the moments a consumer must be sure it is up to date: after ``reconnect``, at the
        end of a stream (a gap is otherwise seen only when a later message arrives).  Returns
        the number of messages queued, None if the history did not answer.
        """
        answer = self.request("runs")
        if answer is None:
            return None
        return sum(self.tracker.fill(gap, self._fetch(gap)) for gap in self.tracker.behind(answer[0]["publishers"]))

    def resume(self, positions: dict[str, int]) -> int | None:
        """Go on from ``positions`` (a ``positions`` saved earlier, e.g. by a process that restarted)."""
        self.tracker.last_seq.update(positions)
        return self.catch_up()

    def reconnect(self) -> int | None:
        """Connect again (after ``disconnect``, or to drop the connections and make new ones),
        then ``catch_up`` on what passed meanwhile."""
        self._new_socket()
        return self.catch_up() if self.history is not None else 0

    def _fetch(self, gap: Gap) -> list[list[bytes]]:
        fetched: list[list[bytes]] = []
        for fields in _fetch_requests(gap):
            answer = self.request("fetch", **fields)
            if answer is None:
                break  # what was not fetched is reported as lost by Tracker.fill
            fetched.extend(answer[1])
        return fetched

    # -- live messages --

    def recv(self, timeout: float | None = None) -> Message | None:
        """The next valid message, or None if none came within ``timeout`` seconds."""
        poll_ms = None if timeout is None else max(0, int(timeout * 1000))
        while True:
            if self.tracker.ready:
                return self.tracker.ready.popleft()
            if poll_ms is not None and not self.socket.poll(poll_ms):
                return None
            msg = self.tracker.accept(self.socket.recv_multipart())
            if isinstance(msg, Gap):
                self.tracker.fill(msg, self._fetch(msg))
            elif msg is not None:
                return msg

    def __iter__(self) -> Iterator[Message]:
        while True:
            yield self.recv()

    def __enter__(self) -> "Subscriber":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncSubscriber(_SubscriberBase):
    """The asyncio twin of ``Subscriber``: ``await sub.recv()``, ``async for msg in sub``,
    and the same history operations, awaited."""

    def __init__(self, endpoints: str | Iterable[str] = DEFAULT_ENDPOINT, topics: Iterable[bytes | str] = ("",), *,
                 on_gap: Callable[[Gap], None] | None = None,
                 on_invalid: Callable[[list[bytes], ProtocolError], None] | None = None,
                 rcvhwm: int = 100_000, context: zmq.asyncio.Context | None = None,
                 curve_server_key: str | bytes | None = None, curve_secret_key_file: str | None = None,
                 history: str | None = None, history_timeout: float = 5.0):
        super().__init__(context or zmq.asyncio.Context(), context is None, endpoints, topics, on_gap, on_invalid,
                         rcvhwm, curve_server_key, curve_secret_key_file, history, history_timeout)

    async def request(self, op: str, **fields) -> tuple[dict, list[list[bytes]]] | None:
        """One request to the broker's history service; None if it did not answer in time."""
        requester = self._requester_socket()
        await requester.send(protocol.request(op, **fields))
        if not await requester.poll(int(self.history_timeout * 1000)):
            self._drop_requester()
            return None
        return protocol.parse_reply(await requester.recv_multipart())

    async def runs(self) -> list[dict]:
        answer = await self.request("runs")
        return answer[0]["runs"] if answer else []

    async def replay(self, ident: str | None = None) -> int:
        idents = [ident] if ident is not None else [run["ident"] for run in await self.runs()]
        queued = 0
        for one in idents:
            answer = await self.request("replay", ident=one, from_seq=1)
            if answer is not None:
                queued += self.tracker.queue_replay(*answer)
        return queued

    async def catch_up(self) -> int | None:
        answer = await self.request("runs")
        if answer is None:
            return None
        queued = 0
        for gap in self.tracker.behind(answer[0]["publishers"]):
            queued += self.tracker.fill(gap, await self._fetch(gap))
        return queued

    async def resume(self, positions: dict[str, int]) -> int | None:
        self.tracker.last_seq.update(positions)
        return await self.catch_up()

    async def reconnect(self) -> int | None:
        self._new_socket()
        return await self.catch_up() if self.history is not None else 0

    async def _fetch(self, gap: Gap) -> list[list[bytes]]:
        fetched: list[list[bytes]] = []
        for fields in _fetch_requests(gap):
            answer = await self.request("fetch", **fields)
            if answer is None:
                break
            fetched.extend(answer[1])
        return fetched

    async def recv(self, timeout: float | None = None) -> Message | None:
        poll_ms = None if timeout is None else max(0, int(timeout * 1000))
        while True:
            if self.tracker.ready:
                return self.tracker.ready.popleft()
            if poll_ms is not None and not await self.socket.poll(poll_ms):
                return None
            msg = self.tracker.accept(await self.socket.recv_multipart())
            if isinstance(msg, Gap):
                self.tracker.fill(msg, await self._fetch(msg))
            elif msg is not None:
                return msg

    async def __aiter__(self) -> AsyncIterator[Message]:
        while True:
            yield await self.recv()

    async def __aenter__(self) -> "AsyncSubscriber":
        return self

    async def __aexit__(self, *exc) -> None:
        self.close()
