"""Federation: an edge broker's link to its central broker(s) (``zmq-emitter broker --upstream``).

An edge broker, next to its runners, forwards what its frontend receives to its own
subscribers (libzmq's proxy, as any broker) and to the frontend of a central broker, whose
subscribers see every site's runs.  Towards the central broker the edge is a publisher
like a runner, speaking the same upstream protocol (docs/protocol.md, "Upstream"): it
watches the central's presence, and its acknowledgements and requests to send again.

    zmq-emitter broker --frontend tcp://0.0.0.0:5557 --history-dir /var/lib/zmq-emitter \\
        --upstream tcp://central.example:5557

Who acknowledges what: the runners are acknowledged by the edge, from the edge's history
(on disk with ``--history-dir``), exactly as by a broker of their own: their buffers free up
as soon as the edge has a message, whatever the link to the central does.  The edge's
history is then the buffer of the hop to the central: what goes up is what the edge's
history recorded, with the runners' own ``pub`` and ``seq`` (so subscribers of the central
de-duplicate and find gaps end to end), and the edge keeps sending again, oldest first,
what the central has not acknowledged: when a central comes (back) and subscribes, and
when it asks for holes.  The bound: the edge's history (``--history-bytes``,
``--history-runs``).  What the edge's history forgets before the central acknowledged it is
counted (``lost`` in ``UpstreamStats``) and logged with its publisher and ``seq`` range;
the central sees the hole, asks for it, and, the edge having none of it, gives it up and
reports it as missing to its subscribers: never silent.

Only what is new to the edge's history goes up (a duplicate a runner sent again does not),
which also keeps a loop of brokers (A upstream of B upstream of A) from flooding: a message
goes round once, then each broker finds it in its history and stops.

The pieces: ``UpstreamLink`` is the state and the decisions, without sockets (sans-I/O, as
``acks.py`` and the runner's ``outbox.py`` are); ``Upstream`` is the XPUB socket connected to
the central broker(s) and the loop around the link, run by the broker's history thread (the
one thread that touches the history, so reading it needs no lock).  Every send is
non-blocking: a slow or absent central makes the edge keep more in its history, never
slows its proxy nor its acknowledgements to the runners.

    >>> link = UpstreamLink()
    >>> link.upstream(b"\\x01" + protocol.presence_topic(protocol.Presence("central", "t0k", 2**24)))
    >>> link.upstream(b"\\x01")                 # the central's data subscription, after its grace
    >>> link.holds("p1", first=1, upto=3)       # the edge's history holds p1's seq 1..3
    >>> link.due()
    [('p1', 1, 3)]
    >>> for seq in (1, 2, 3): link.was_sent("p1", seq)
    >>> link.upstream(protocol.ack_frame(protocol.Ack("central", "t0k", {"p1": 2})))
    >>> link.backlog(), link.due()
    (1, [])
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Callable, Iterable

import zmq
from zmq.utils.monitor import parse_monitor_message

from .. import protocol, security
from ..known_brokers import KnownBrokers
from ..link import MONITOR_EVENTS, Link
from .history import History, retained_in, tell_holdings

log = logging.getLogger("zmq_emitter.broker")

CHUNK = 1000        # sequence numbers looked at per publisher per round: the history thread's other work goes on
SWEEP_INTERVAL = 1.0  # seconds between looks at every publisher (given-up holes, forgotten publishers)
STATS_INTERVAL = 0.2  # seconds between snapshots of the state for ``Broker.upstream_stats()``


@dataclasses.dataclass(frozen=True)
class UpstreamStats:
    """The state of an edge broker's link upstream (``Broker.upstream_stats()``)."""

    endpoints: tuple[str, ...]
    connected: bool             # a connection to a central broker is up
    centrals: tuple[str, ...]   # names of the central brokers present (announced, connected)
    backlog: int                # messages the history holds that a known central has not acknowledged
    sent: int                   # messages sent up for the first time
    resent: int                 # messages sent up again (a central came back, or asked for a hole)
    lost: int                   # not acknowledged by a central, yet forgotten by this broker's history


class UpstreamLink:
    """What goes up and what the central brokers have, per publisher (see the module docstring).

    Fed by the shell: every frame the upstream socket receives (``upstream``), what the
    history holds (``holds``, ``forgotten``), what was sent (``was_sent``) or could not be
    because the history no longer has it (``missing``).  Asked: ``due`` (ranges to send now),
    ``backlog``.  ``own_name``: this broker's name, to recognise itself upstream (a loop).
    """

    def __init__(self, own_name: str | None = None, warn: Callable[[str], None] = log.warning):
        self.own_name = own_name
        self.warn = warn
        self._warned: set = set()
        self.centrals = KnownBrokers(self._warn_once, "upstream: ")  # by name: the same across their restarts
        self.subscribed = False     # a data subscription is there: sends reach a central
        self._arrived = False       # a central announced itself since the last data subscription
        self._subscriptions: set[bytes] = set()
        self._held: dict[str, tuple[int, int]] = {}  # pub -> (first, upto): the history holds first..upto, no hole
        self._next: dict[str, int] = {}   # pub -> the next seq to send
        self._high: dict[str, int] = {}   # pub -> the highest seq sent: below it, a send is a resend
        self.sent = self.resent = self.lost = 0

    # -- from the central brokers ------------------------------------------------------------

    def upstream(self, frame: bytes) -> None:
        """One frame from upstream: a (un)subscription, a central broker's presence, an acknowledgement."""
        flag, topic = frame[:1], frame[1:]
        if flag in (b"\x01", b"\x00"):
            if topic.startswith(protocol.PRESENCE_PREFIX):
                presence = protocol.parse_presence(topic)
                if presence is not None:
                    (self._arrive if flag == b"\x01" else self._leave)(presence)
            elif flag == b"\x01":
                # Only a central that came (back) gets what it has not acknowledged: a central passes up
                # its subscribers' subscriptions too, and one of them, coming while the central already
                # takes the messages, would otherwise send again everything not yet acknowledged.
                if not self.subscribed or self._arrived:
                    self._send_unacknowledged_again()
                self._arrived = False
                self._subscriptions.add(topic)
                self.subscribed = True
            else:
                self._subscriptions.discard(topic)
                self.subscribed = bool(self._subscriptions)
            return
        ack = protocol.parse_ack(frame)
        if ack is not None:
            self._acknowledge(ack)

    def _arrive(self, presence: protocol.Presence) -> None:
        if presence.broker == self.own_name:
            self._warn_once(("loop",), f"upstream: the broker upstream announces this broker's own name "
                                       f"{presence.broker!r}: --upstream points back at this broker (a loop); "
                                       "each message goes round once, then the history stops it")
        self.centrals.arrive(presence)
        self._arrived = True  # its data subscription (after its start-up grace) calls for the backlog

    def _leave(self, presence: protocol.Presence) -> None:
        self.centrals.leave(presence)

    def _acknowledge(self, ack: protocol.Ack) -> None:
        central = self.centrals.acknowledging(ack)
        if central is None:
            return
        for pub, seq in ack.acks.items():
            if pub in self._held and seq > central.acked.get(pub, 0):
                if seq > self._high.get(pub, 0):
                    self._warn_once(("beyond", ack.broker), f"upstream: broker {ack.broker!r} acknowledged "
                                    f"publisher {pub} up to seq {seq}, beyond what was sent: ignored")
                else:
                    central.acked[pub] = seq
        for pub, after in ack.resend.items():
            if pub in self._next:
                self._next[pub] = max(self._held[pub][0], min(self._next[pub], after + 1))

    def _send_unacknowledged_again(self) -> None:
        if not self.centrals:
            return  # no central acknowledges: what was sent is done
        for pub, (first, _) in self._held.items():
            self._next[pub] = max(first, min(self._next[pub], self.centrals.lowest(pub) + 1))

    # -- from the history ---------------------------------------------------------------------

    def holds(self, pub: str, first: int, upto: int) -> None:
        """The history holds (or held: see ``missing``) ``pub``'s messages ``first``..``upto`` without a hole."""
        self._held[pub] = (first, upto)
        self._next.setdefault(pub, first)

    def forgotten(self, pub: str) -> None:
        """The history forgot ``pub`` altogether: what no known central acknowledged of it is lost upstream."""
        held = self._held.pop(pub, None)
        if held is None:
            return
        nxt = self._next.pop(pub)
        self._high.pop(pub, None)
        done = max(self.centrals.lowest(pub) if self.centrals else nxt - 1, held[0] - 1)
        if held[1] > done:
            self.missing(pub, done + 1, held[1])
        for central in self.centrals.values():
            central.acked.pop(pub, None)

    def due(self) -> list[tuple[str, int, int]]:
        """(pub, first, last): what to send now, oldest first per publisher; nothing while no central subscribes."""
        if not self.subscribed:
            return []
        return [(pub, self._next[pub], upto) for pub, (_, upto) in self._held.items() if self._next[pub] <= upto]

    def was_sent(self, pub: str, seq: int) -> None:
        self._next[pub] = seq + 1
        if seq <= self._high.get(pub, 0):
            self.resent += 1
        else:
            self._high[pub] = seq
            self.sent += 1

    def missing(self, pub: str, first: int, last: int) -> None:
        """``pub``'s ``first``..``last`` are no longer in the history (its bounds) and were not acknowledged upstream."""
        self.lost += last - first + 1
        if pub in self._next:
            self._next[pub] = max(self._next[pub], last + 1)
            self._high[pub] = max(self._high.get(pub, 0), last)
        self.warn(f"upstream: publisher {pub} seq {first}..{last} forgotten by this broker's history "
                  "(--history-bytes/--history-runs) before a central broker acknowledged them: lost upstream "
                  "(the central reports them missing)")

    # -- state ------------------------------------------------------------------------------

    def publishers(self) -> list[str]:
        return list(self._held)

    def upto(self, pub: str) -> int:
        """The highest seq of ``pub`` the history holds without a hole (0: unknown)."""
        held = self._held.get(pub)
        return held[1] if held else 0

    def backlog(self) -> int:
        """Messages the history holds that some known central has not acknowledged (or, none known, not sent)."""
        total = 0
        for pub, (first, upto) in self._held.items():
            done = self.centrals.lowest(pub) if self.centrals else self._next[pub] - 1
            total += max(0, upto - max(done, first - 1))
        return total

    def present(self) -> tuple[str, ...]:
        return tuple(name for name, central in self.centrals.items() if central.present)

    def _warn_once(self, key: tuple, message: str) -> None:
        if key not in self._warned and len(self._warned) < 100:
            self._warned.add(key)
            self.warn(message)


class Upstream:
    """The upstream socket (an XPUB connected to the central brokers' frontends) around an ``UpstreamLink``.

    Made and driven by ``Broker``'s history thread: ``poll_socket`` goes into its poller,
    ``read`` when it is readable, ``pump(history, now)`` after each batch recorded and
    on every round; ``stats()`` from any thread.

        upstream = Upstream(context, ["tcp://central:5557"], name="edge-1")
        ...
        upstream.read(); upstream.pump(history, time.monotonic())
    """

    def __init__(self, context: zmq.Context, endpoints: Iterable[str], *, name: str, sndhwm: int = 100_000,
                 curve: security.ClientCurve | None = None):
        self.endpoints = tuple(endpoints)
        self.link = UpstreamLink(name)
        sock = self.socket = context.socket(zmq.XPUB)
        sock.setsockopt(zmq.XPUB_NODROP, 1)   # a full queue: EAGAIN, never a silent drop (sent again later)
        sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # every (re)subscription: a central that comes back
        sock.setsockopt(zmq.IMMEDIATE, 1)     # queue only to live connections: the history is the buffer
        sock.setsockopt(zmq.SNDHWM, sndhwm)
        sock.setsockopt(zmq.LINGER, 0)
        if curve is not None:  # before connect: CURVE client of the central, with this broker's key pair
            curve.apply(sock)
        self._monitor = sock.get_monitor_socket(MONITOR_EVENTS)
        self._connections = Link(self.endpoints, log.warning, client="edge broker", side="frontend")
        for endpoint in self.endpoints:
            sock.connect(endpoint)
        self._connected: set[str] = set()
        self._next_sweep = self._next_stats = 0.0
        self._more = False
        self._stats = UpstreamStats(self.endpoints, False, (), 0, 0, 0, 0)

    @property
    def more(self) -> bool:
        """The last ``pump`` left something to send: call it again soon."""
        return self._more

    def read(self) -> None:
        """Hand the link every frame the central brokers sent, and the monitor's events."""
        sock = self.socket
        while sock.poll(0):
            self.link.upstream(sock.recv())
        while self._monitor.poll(0):
            event = parse_monitor_message(self._monitor.recv_multipart())
            endpoint = event["endpoint"]
            endpoint = endpoint.decode(errors="replace") if isinstance(endpoint, bytes) else str(endpoint)
            self._connections.event(event["event"], endpoint, event["value"])
            if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._connected.add(endpoint)
            else:
                self._connected.discard(endpoint)
        for endpoint in self._connections.due():  # libzmq never tries a refused endpoint again by itself
            try:
                sock.disconnect(endpoint)
            except zmq.ZMQError:
                pass
            sock.connect(endpoint)

    def pump(self, history: History, now: float, heard: Iterable[str] = ()) -> None:
        """Tell the link what ``history`` holds (of the publishers ``heard``, or of all once a second),
        then send what is due, until the socket's queue is full."""
        link = self.link
        sweep = now >= self._next_sweep
        if sweep:
            self._next_sweep = now + SWEEP_INTERVAL
        tell_holdings(history, link, heard, sweep)
        self._more = False
        send = self.socket.send
        for pub, first, last in link.due():
            last = min(last, first + CHUNK - 1)
            try:
                for seq, frames in retained_in(history, link, pub, first, last):
                    send(frames[0], zmq.SNDMORE | zmq.NOBLOCK)
                    send(frames[1], zmq.SNDMORE | zmq.NOBLOCK)
                    send(frames[2], zmq.NOBLOCK)
                    link.was_sent(pub, seq)
            except zmq.Again:  # the central's queue is full: the rest waits in the history
                self._more = True
                break
            except zmq.ZMQError as exc:
                log.warning("upstream: cannot send: %s; the messages wait in the history", exc)
                self._more = True
                break
            if last < link.upto(pub):
                self._more = True
        if now >= self._next_stats:  # a snapshot for other threads (the backlog is a sum over publishers)
            self._next_stats = now + STATS_INTERVAL
            self._stats = UpstreamStats(self.endpoints, bool(self._connected), link.present(), link.backlog(),
                                        link.sent, link.resent, link.lost)

    def stats(self) -> UpstreamStats:
        """The state as of the last snapshot (at most ``STATS_INTERVAL`` old); safe from any thread."""
        return self._stats

    def close(self) -> None:
        self.socket.disable_monitor()
        self._monitor.close(linger=0)
        self.socket.close(linger=0)
