"""The plugin's outbox: what is sent, kept, sent again or lost, and why.  No sockets.

Sans-I/O, as ``consumers.subscriber.Tracker`` is for subscribers: the ``Publisher``
(plugin.py) does the socket I/O and tells the outbox what happened; the outbox keeps the
state and decides.  It is fed every frame the socket receives from upstream
(subscriptions, brokers' presences, acknowledgements: docs/protocol.md, "Upstream") and
asked what to send next.

    >>> box = Outbox("9f86d081884c7d65", max_messages=100, max_bytes=2**20, max_message_size=2**24)
    >>> box.upstream(b"\\x01")               # a peer subscribed to everything
    >>> box.subscribed, box.waiting
    (True, 0)
    >>> box.keep(Entry(1, b"status/r/running", b'{"seq":1}', b"{}"))  # the socket could not take it now
    True
    >>> box.next_unsent().seq                # the Publisher sends it, then says so:
    1
    >>> box.was_sent(); box.settled
    True

The rules (docs/reliability.md):

- Brokers are known by name (``protocol.Presence``; ``known_brokers.py``, shared with an
  edge broker's upstream link): present while their presence subscription is there, away
  after it went.  Once a broker is known, a sent message is kept until every known broker,
  present or away, has acknowledged it.
- A new connection (a data subscription arriving) gets again, in order and before
  anything newer, everything kept after the lowest position of any known broker: a broker
  that appears or comes back gets what it missed; the others get exact repeats.
- An acknowledgement counts only with the token of the one presence its broker's name
  holds (``known_brokers.py``).  An acknowledgement beyond what was sent is ignored.
- The buffer bounds push out the oldest: ``unconfirmed`` if it had been sent, ``dropped``
  if not.
- A payload over ``limit`` (the setting, or a smaller size a present broker announced) is
  never sent: it is replaced by ``oversize.shrink``'s cut version (``truncated``).
"""
from __future__ import annotations

import collections
import logging
from typing import Callable, Iterable, NamedTuple

from .. import protocol
from ..known_brokers import KnownBrokers
from . import oversize

log = logging.getLogger("zmq_emitter")

MIN_ANNOUNCED_SIZE = 64 * 1024  # an announced max_message_size below this is ignored (a forged presence could shrink every event)
_MAX_WARNINGS = 100


class Entry(NamedTuple):
    """One message as it goes on the wire: its sequence number and its three frames."""

    seq: int
    topic: bytes
    header: bytes
    payload: bytes


class Stream:
    """One publisher id's messages in the outbox: sent ones waiting for acknowledgements, then unsent ones.

    The outbox's own stream, and one for each publisher whose spooled messages this process
    took over (``Outbox.adopt``), sent with their original ``pub`` and ``seq``.
    """

    __slots__ = ("pub", "sent", "unsent", "last", "high", "dropped", "unconfirmed", "truncated")

    def __init__(self, pub: str, last: int | None = None):
        self.pub = pub
        self.sent: collections.deque[Entry] = collections.deque()    # in seq order
        self.unsent: collections.deque[Entry] = collections.deque()  # in seq order, to send (again)
        self.last = last       # an adopted stream: the highest seq its publisher stamped
        self.high = 0          # the highest seq sent and then queued to send again
        self.dropped = 0       # pushed out of the full buffer before they were ever sent
        self.unconfirmed = 0   # pushed out of the full buffer after sending, never acknowledged
        self.truncated = 0     # sent cut, being larger than the limit (oversize.py)

    def pending(self) -> list[Entry]:
        """What is not done yet, in seq order."""
        return [*self.sent, *self.unsent]


class Outbox:
    """Sequence numbers, the bounded buffer, brokers and their acknowledgements, for one publisher.

    Read on the hot path and kept up to date by every method: ``seq`` (the last one
    stamped; the Publisher increments it), ``limit``, ``waiting`` (entries not sent yet),
    ``subscribed`` (a peer can take messages), ``retaining`` (a broker is known: keep what
    is sent until acknowledged).
    """

    def __init__(self, pub: str, *, max_messages: int, max_bytes: int, max_message_size: int,
                 warn: Callable[[str], None] | None = None):
        self.own = Stream(pub)
        self.streams = [self.own]  # in sending order: adopted streams first
        self.seq = 0
        self.max_messages, self.max_bytes = max_messages, max_bytes
        self.max_message_size = max_message_size  # the setting; ``limit`` may be smaller
        self.limit = max_message_size
        self.count = 0     # entries in all streams, sent and unsent
        self.size = 0      # their payload bytes
        self.freed = 0     # payload bytes let go since the Publisher last handed memory back (it resets this)
        self.waiting = 0   # of which unsent
        self.subscribed = False
        self.retaining = False
        self.closed = False
        self.after_close = 0  # handed over after close(): dropped
        self._subscriptions: set[bytes] = set()
        self._sending: Stream | None = None
        self._warn = warn or log.warning
        self._warned: set = set()
        self.brokers = KnownBrokers(self._warn_once, "zmq_emitter: ")

    # -- state the Publisher asks about ---------------------------------------------------

    @property
    def settled(self) -> bool:
        """Nothing left to send, nothing waiting for an acknowledgement."""
        return not self.count

    def awaits_broker(self) -> bool:
        """Something is not done, and a broker that acknowledged before could still take it.

        True while such a broker is away, or while nothing is subscribed (a broker that came
        back has announced itself but not yet subscribed, in its start-up grace).
        """
        return bool(self.count) and any(b.acknowledged and (not b.present or not self.subscribed)
                                        for b in self.brokers.values())

    def sent_high(self, stream: Stream) -> int:
        """The highest seq of ``stream`` that can have reached a broker."""
        if stream.last is not None:
            return stream.last
        if not stream.unsent:
            return self.seq
        return max(stream.high, stream.unsent[0].seq - 1)

    # -- what the Publisher did with its own messages ---------------------------------------

    def keep(self, entry: Entry) -> bool:
        """Our own ``entry`` could not be sent now: it waits, after everything waiting already.

        True if the outbox was settled before (the Publisher wakes its flush thread).
        """
        if self.closed:
            self.after_close += 1
            return False
        self.own.unsent.append(entry)
        self.waiting += 1
        self._grow(entry)
        return self.count == 1

    def retain(self, entry: Entry) -> bool:
        """Our own ``entry`` was sent: keep it until acknowledged (call only when ``retaining``).

        True if the outbox was settled before (the Publisher wakes its flush thread).
        """
        self.own.sent.append(entry)
        count = self.count = self.count + 1
        size = self.size = self.size + len(entry[3])  # (a NamedTuple's field by name is a Python-level property)
        if count > self.max_messages or size > self.max_bytes:
            self._push_out()
        return count == 1

    def cut(self, entry: Entry) -> Entry | None:
        """Our own ``entry``, whose payload is over ``limit``, as it may be sent (None: not at all, dropped)."""
        return self._cut(self.own, entry)

    def next_unsent(self) -> Entry | None:
        """The next message to send, adopted streams first; after the socket took it, call ``was_sent``."""
        for stream in self.streams:
            if stream.unsent:
                self._sending = stream
                return stream.unsent[0]
        return None

    def was_sent(self) -> None:
        stream = self._sending
        entry = stream.unsent.popleft()
        self.waiting -= 1
        if entry.seq > stream.high:
            stream.high = entry.seq
        if self.retaining:
            stream.sent.append(entry)
        else:
            self._shrink_by(entry)

    def adopt(self, pub: str, entries: Iterable[Entry], last: int) -> Stream:
        """Take over another publisher's messages (from the spool), to send before our own."""
        stream = Stream(pub, last)
        self.streams.insert(len(self.streams) - 1, stream)
        for entry in entries:
            if len(entry.payload) > self.limit:
                entry = self._cut(stream, entry)
                if entry is None:
                    continue
            stream.unsent.append(entry)
            self.waiting += 1
            self._grow(entry)
        return stream

    def close(self) -> None:
        """From now on nothing is sent; what is handed over is counted in ``after_close`` and dropped."""
        self.closed = True
        self.subscribed = False

    # -- what came from upstream ------------------------------------------------------------

    def upstream(self, frame: bytes) -> None:
        """One frame the socket received: a (un)subscription, a broker's presence, an acknowledgement."""
        flag, topic = frame[:1], frame[1:]
        if flag == b"\x01" or flag == b"\x00":
            if topic.startswith(protocol.PRESENCE_PREFIX):  # matches no message: never a data subscription
                presence = protocol.parse_presence(topic)
                if presence is not None:
                    (self._arrive if flag == b"\x01" else self._leave)(presence)
            elif flag == b"\x01":
                self._subscriptions.add(topic)
                self.subscribed = not self.closed
                self._send_unacknowledged_again()
            else:
                self._subscriptions.discard(topic)
                self.subscribed = bool(self._subscriptions) and not self.closed
        else:
            ack = protocol.parse_ack(frame)
            if ack is not None:
                self._acknowledge(ack)

    def _arrive(self, presence: protocol.Presence) -> None:
        if self.brokers.arrive(presence) is None:
            return
        self.retaining = True
        if presence.max_message_size < MIN_ANNOUNCED_SIZE:
            self._warn_once(("small", presence.broker),
                            f"zmq_emitter: broker {presence.broker!r} announces max_message_size "
                            f"{presence.max_message_size}, below {MIN_ANNOUNCED_SIZE}: ignored "
                            "(set runner_zmq_max_message_size to go lower)")
        self._update_limit()

    def _leave(self, presence: protocol.Presence) -> None:
        if self.brokers.leave(presence):
            self._update_limit()

    def _acknowledge(self, ack: protocol.Ack) -> None:
        broker = self.brokers.acknowledging(ack)
        if broker is None:
            return
        acks, resend = ack.acks, ack.resend
        for stream in self.streams:
            seq = acks.get(stream.pub)
            if seq is not None and seq > broker.acked.get(stream.pub, 0):
                if seq > self.sent_high(stream):
                    self._warn_once(("beyond", ack.broker),
                                    f"zmq_emitter: broker {ack.broker!r} acknowledged publisher {stream.pub} up to "
                                    f"seq {seq}, beyond what was sent ({self.sent_high(stream)}): ignored")
                else:
                    broker.acked[stream.pub] = seq
                    self._release(stream)
            after = resend.get(stream.pub)
            if after is not None:
                self._send_again(stream, after)

    def _release(self, stream: Stream) -> None:
        """Forget what every known broker has acknowledged."""
        upto = self.brokers.lowest(stream.pub)
        sent, unsent = stream.sent, stream.unsent
        while sent and sent[0].seq <= upto:
            self._shrink_by(sent.popleft())
        while unsent and unsent[0].seq <= upto:  # queued again for a broker that had them (its history on disk)
            self._shrink_by(unsent.popleft())
            self.waiting -= 1

    def _send_unacknowledged_again(self) -> None:
        """A new connection: what any known broker has not acknowledged goes again, before anything newer.

        The new connection may be a broker that was away or is new; the data subscription
        comes after its presence, or, when its socket replays subscriptions to a new
        connection, before it: either way that broker is known or gets only newer messages.
        """
        if not self.brokers:
            return
        for stream in self.streams:
            self._send_again(stream, self.brokers.lowest(stream.pub))

    def _send_again(self, stream: Stream, after: int) -> None:
        sent = stream.sent
        if sent and sent[-1].seq > after:
            stream.high = max(stream.high, sent[-1].seq)
            while sent and sent[-1].seq > after:
                stream.unsent.appendleft(sent.pop())
                self.waiting += 1

    # -- the bounds ---------------------------------------------------------------------------

    def _update_limit(self) -> None:
        announced = [size for broker in self.brokers.values() for size in broker.claims.values()
                     if size >= MIN_ANNOUNCED_SIZE]
        limit = min([self.max_message_size, *announced])
        lower, self.limit = limit < self.limit, limit
        if lower:  # what waits must fit too
            for stream in self.streams:
                stream.sent = self._fit(stream, stream.sent, sent=True)
                stream.unsent = self._fit(stream, stream.unsent, sent=False)

    def _fit(self, stream: Stream, queue: collections.deque, *, sent: bool) -> collections.deque:
        """``queue`` with every entry over ``limit`` cut (or, if it cannot be, left out)."""
        if all(len(entry.payload) <= self.limit for entry in queue):
            return queue
        fitting: collections.deque[Entry] = collections.deque()
        for entry in queue:
            if len(entry.payload) > self.limit:
                self._shrink_by(entry)
                entry = self._cut(stream, entry)
                if entry is None:
                    if not sent:
                        self.waiting -= 1
                    continue
                self.count += 1
                self.size += len(entry.payload)
            fitting.append(entry)
        return fitting

    def _cut(self, stream: Stream, entry: Entry) -> Entry | None:
        """``entry`` with its payload shrunk to fit ``limit`` (counted in ``truncated``), or None (``dropped``)."""
        codec = protocol.decode_json(entry.header).get("codec")
        payload = oversize.shrink(entry.payload, codec if codec in protocol.ENCODERS else "json", self.limit)
        if payload is None:
            stream.dropped += 1
            return None
        stream.truncated += 1
        return entry._replace(payload=payload)

    def _grow(self, entry: Entry) -> None:
        self.count += 1
        self.size += len(entry.payload)
        if self.count > self.max_messages or self.size > self.max_bytes:
            self._push_out()

    def _push_out(self) -> None:
        """Push out the oldest until within bounds: sent ones first (only the chance to send again is lost)."""
        while self.count > self.max_messages or self.size > self.max_bytes:
            for stream in self.streams:
                if stream.sent:
                    self._shrink_by(stream.sent.popleft())
                    stream.unconfirmed += 1
                    break
            else:
                for stream in self.streams:
                    if stream.unsent:
                        self._shrink_by(stream.unsent.popleft())
                        self.waiting -= 1
                        stream.dropped += 1
                        break
                else:
                    return

    def _shrink_by(self, entry: Entry) -> None:
        self.count -= 1
        self.size -= len(entry.payload)
        self.freed += len(entry.payload)

    def _warn_once(self, key: tuple, message: str) -> None:
        if key in self._warned or len(self._warned) >= _MAX_WARNINGS:
            return
        self._warned.add(key)
        self._warn(message)
