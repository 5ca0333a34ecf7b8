"""The plugin's outbox: what is sent, kept, sent again or lost, and why.  No sockets.

Sans-I/O, as ``consumers.subscriber.Tracker`` is for subscribers: the ``Publisher``
(plugin.py) does the socket I/O and tells the outbox what happened; the outbox keeps the
state and decides.  It is fed every frame the socket receives from upstream
(subscriptions, brokers' presences, acknowledgements) and asked what to send next.

    >>> box = Outbox("9f86d081884c7d65", max_messages=100, max_bytes=2**20)
    >>> box.upstream(b"\\x01")               # a peer subscribed to everything
    >>> box.subscribed, box.waiting
    (True, 0)
    >>> box.keep(Entry(box.stamp(), b"status/r/running", b'{"seq":1}', b"{}"))  # the socket could not take it
    >>> box.next_unsent().seq                # the Publisher sends it, then:
    1
    >>> box.was_sent(); box.settled
    True
"""
from __future__ import annotations

import collections
from typing import NamedTuple

from .. import protocol


class Entry(NamedTuple):
    """One message as it goes on the wire: its sequence number and its three frames."""

    seq: int
    topic: bytes
    header: bytes
    payload: bytes


class Outbox:
    """Sequence numbers, the bounded buffer and acknowledgements of one publisher.

    The buffer holds, oldest first, messages sent but not yet acknowledged by a broker
    (``sent``, kept only once a broker has acknowledged something: ``retaining``), then
    messages not sent yet (``unsent``).  Its bounds push out the oldest: counted as
    ``unconfirmed`` if it had been sent, ``dropped`` if not.

    Read on the hot path, kept up to date by every method: ``subscribed`` (a peer can take
    messages), ``waiting`` (how many are not sent yet), ``retaining``.
    """

    def __init__(self, pub: str, *, max_messages: int, max_bytes: int):
        self.pub = pub
        self.seq = 0
        self.max_messages, self.max_bytes = max_messages, max_bytes
        self.sent: collections.deque[Entry] = collections.deque()
        self.unsent: collections.deque[Entry] = collections.deque()
        self.size = 0         # payload bytes in sent and unsent
        self.subscribed = False
        self.waiting = 0
        self.retaining = False  # a peer acknowledges what it received (a broker with history)
        self.dropped = 0        # pushed out of the full buffer before they were ever sent
        self.unconfirmed = 0    # pushed out of the full buffer after sending, never acknowledged
        self._subscriptions: set[bytes] = set()
        self._brokers: dict[str, str] = {}  # brokers that acknowledge: name -> token (protocol.Presence)

    def stamp(self) -> int:
        """The next sequence number."""
        self.seq += 1
        return self.seq

    @property
    def settled(self) -> bool:
        """Nothing left to send, nothing waiting for an acknowledgement."""
        return not self.sent and not self.unsent

    # -- what the Publisher did ---------------------------------------------------------

    def keep(self, entry: Entry) -> bool:
        """``entry`` could not be sent now: it waits, after everything waiting already.

        True if the outbox was settled before (the Publisher wakes its flush thread).
        """
        was_settled = self.settled
        self.unsent.append(entry)
        self.waiting += 1
        self._grow(entry)
        return was_settled

    def retain(self, entry: Entry) -> bool:
        """``entry`` was sent; keep it until a broker acknowledges it (call only when ``retaining``).

        True if the outbox was settled before (the Publisher wakes its flush thread).
        """
        sent = self.sent
        sent.append(entry)
        self.size += len(entry.payload)
        if len(sent) + self.waiting > self.max_messages or self.size > self.max_bytes:
            self._push_out()
        return len(sent) == 1 and not self.waiting

    def next_unsent(self) -> Entry | None:
        """The oldest message not sent yet; after the socket took it, call ``was_sent``."""
        return self.unsent[0] if self.unsent else None

    def was_sent(self) -> None:
        entry = self.unsent.popleft()
        self.waiting -= 1
        if self.retaining:
            self.sent.append(entry)
        else:
            self.size -= len(entry.payload)

    # -- what came from upstream ----------------------------------------------------------

    def upstream(self, frame: bytes) -> None:
        """One frame the socket received: a (un)subscription, a broker's presence, an acknowledgement."""
        if frame[:1] in (b"\x01", b"\x00"):
            presence = protocol.parse_presence(frame[1:])
            if presence is not None:  # a broker that acknowledges, (dis)connecting
                if frame[:1] == b"\x01":
                    self._brokers[presence.broker] = presence.token
                elif self._brokers.get(presence.broker) == presence.token:
                    del self._brokers[presence.broker]
            elif frame[:1] == b"\x01":
                if not self._subscriptions:
                    # A peer is (back) after none was: what the last one did not
                    # acknowledge goes again, before anything newer.
                    self.unsent.extendleft(reversed(self.sent))
                    self.waiting += len(self.sent)
                    self.sent.clear()
                self._subscriptions.add(frame[1:])
                self.subscribed = True
            else:
                self._subscriptions.discard(frame[1:])
                self.subscribed = bool(self._subscriptions)
        else:
            ack = protocol.parse_ack(frame)
            # Only a present broker's own token counts: a subscriber cannot acknowledge.
            if ack is not None and self._brokers.get(ack.broker) == ack.token:
                acked = ack.acks.get(self.pub)
                if isinstance(acked, int):
                    self.retaining = True
                    self._acknowledge(acked)

    def _acknowledge(self, seq: int) -> None:
        sent, unsent = self.sent, self.unsent
        while sent and sent[0].seq <= seq:
            self.size -= len(sent.popleft().payload)
        while unsent and unsent[0].seq <= seq:  # queued again for a broker that has them (its history on disk)
            self.size -= len(unsent.popleft().payload)
            self.waiting -= 1

    # -- the bounds -------------------------------------------------------------------------

    def _grow(self, entry: Entry) -> None:
        self.size += len(entry.payload)
        self._push_out()

    def _push_out(self) -> None:
        sent, unsent = self.sent, self.unsent
        while len(sent) + len(unsent) > self.max_messages or self.size > self.max_bytes:
            if sent:  # sent and probably delivered: only the chance to send it again is lost
                self.size -= len(sent.popleft().payload)
                self.unconfirmed += 1
            else:
                self.size -= len(unsent.popleft().payload)
                self.waiting -= 1
                self.dropped += 1
