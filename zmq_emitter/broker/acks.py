"""What a broker tells its publishers upstream: acknowledgements and requests to send again.

Sans-I/O: the history thread feeds it the publishers it heard from and the time, and sends
the ``protocol.Ack`` it returns; nothing here touches a socket or a clock.

- **Acknowledge only what the history holds**: per publisher, ``History.acked`` — the highest
  ``seq`` up to which every message (from the first one the history saw) was recorded.  The
  capture socket drops copies when the history falls behind (by design: it never slows
  forwarding), so the last ``seq`` received can be far ahead of that.
- **Ask for holes again** (``resend``): once when a publisher's first hole appears (or the
  one before it is filled), again every ``retry_after`` seconds while it stays.  The publisher
  sends everything it still keeps after ``acked``, oldest first.
- **Give a hole up** when it cannot be filled, so that acknowledgements move on: after
  ``give_up_after`` requests, the last of which the publisher answered (messages of it came
  after the request, yet not the hole: it no longer has those messages, e.g. pushed out of
  its full buffer), or ``abandon_after`` seconds after the first request whatever happened
  (a publisher that went away).  The history counts the hole as ``missed`` and reports it
  as missing; it is never acknowledged as received without being counted.  Every later hole
  those requests covered (each asks for everything after ``acked``) goes with it.

    >>> from zmq_emitter.broker.history import History
    >>> history = History()
    >>> acks = Acknowledgements(history, "broker-a", "token")
    >>> for seq in (1, 2, 5):  # 3 and 4: copies the capture socket dropped
    ...     frames = [b"event/r/x", protocol.header_prefix("json", "p1") + b"%d}" % seq, b"{}"]
    ...     _ = history.add(protocol.envelope(frames), frames)
    ...     acks.heard("p1")
    >>> ack = acks.due(now=0.0)
    >>> ack.acks, ack.resend
    ({'p1': 2}, {'p1': 2})
"""
from __future__ import annotations

import dataclasses
import logging

from .. import protocol
from .history import History

log = logging.getLogger("zmq_emitter.broker")


@dataclasses.dataclass
class _Request:
    """The last request to send again after ``acked``."""

    acked: int
    at: float          # when it was sent
    first_at: float    # when this hole was first asked for
    covers: int = 0    # the highest seq recorded then: every hole up to it was asked for too (all after ``acked``)
    times: int = 1
    answered: bool = False  # messages of the publisher came after it


class Acknowledgements:
    """Decides the ``protocol.Ack`` frames of one broker (see the module docstring)."""

    retry_after = 1.0      # seconds between requests for the same hole
    min_interval = 0.2     # seconds between any two requests to one publisher
    give_up_after = 5      # requests, the last one answered, before a hole counts as lost
    abandon_after = 600.0  # seconds after the first request: lost whatever happened
    # Seconds between two acknowledgements at most this often, unless a full batch came (``due(full=True)``): at a
    # moderate rate the history thread wakes for every few messages, and an acknowledgement each time cost the
    # broker (building it, the proxy forwarding it) and every runner (reading it) more than the messages did.
    interval = 0.005

    def __init__(self, history: History, broker: str, token: str):
        self.history = history
        self.broker, self.token = broker, token
        self._unacknowledged: set[str] = set()   # publishers heard from since the last acknowledgement
        self._heard: set[str] = set()            # publishers heard from since the last ``due``
        self._requests: dict[str, _Request] = {}  # publisher -> the last request to send again
        self.paused = False  # True while what the history recorded is not safe yet (a full disk)
        # Per publisher, the highest seq stored elsewhere too (JetStream: jetstream.py); None: no such store.
        # Acknowledged is then the lower of the two: recorded, and stored.
        self.limit: dict[str, int] | None = None
        self._acked_at = float("-inf")  # when the last acknowledgement was handed out

    def heard(self, publisher: str) -> None:
        """A message of ``publisher`` came (recorded or a duplicate: either way it wants an acknowledgement)."""
        self._heard.add(publisher)
        self._unacknowledged.add(publisher)

    def moved(self, publisher: str) -> None:
        """``limit`` moved for ``publisher``: an acknowledgement is due (unlike ``heard``, no message came)."""
        self._unacknowledged.add(publisher)

    def due(self, now: float, *, full: bool = False) -> protocol.Ack | None:
        """The acknowledgement to send now, if any; call after each batch (``full``: it had as many messages as a
        batch holds) and at ``next_due``.  Acknowledgements come at most every ``interval`` seconds, unless
        ``full`` or there is a request to send again."""
        history = self.history
        resend: dict[str, int] = {}
        for publisher in list(history.holey) + [p for p in self._requests if p not in history.holey]:
            self._request(publisher, now, resend)
        self._heard.clear()
        if self.paused:
            return protocol.Ack(self.broker, self.token, {}, resend) if resend else None
        if not (full or resend) and now < self._acked_at + self.interval:
            return None  # what was heard stays in _unacknowledged: acknowledged at next_due()
        acks, limit = {}, self.limit
        for publisher in self._unacknowledged:
            pub = history.publishers.get(publisher)
            acked = pub.acked if pub is not None else 0
            if limit is not None:
                acked = min(acked, limit.get(publisher, 0))
            if acked:
                acks[publisher] = acked
        self._unacknowledged.clear()
        if not acks and not resend:
            return None
        self._acked_at = now
        return protocol.Ack(self.broker, self.token, acks, resend)

    def next_due(self) -> float | None:
        """When ``due`` has an acknowledgement held back by ``interval`` to hand out (None: nothing waits)."""
        return self._acked_at + self.interval if self._unacknowledged and not self.paused else None

    def _give_up(self, publisher: str, request: _Request) -> None:
        """Count as missed the first hole and every later one the requests covered.  A request asks for everything
        kept after ``acked``: what the publisher did not send again of the first hole it no longer has of those
        either (after a flood that overflowed the capture, there can be hundreds: one at a time, each asked for
        ``give_up_after`` times, the acknowledgements took minutes to move past them)."""
        holes: list[tuple[int, int]] = []
        while True:
            pub = self.history.publishers.get(publisher)
            if pub is None or not pub.holes or (holes and pub.holes[0][1] > request.covers):
                break
            holes.append(self.history.give_up(publisher))
        shown = ", ".join(f"{first}..{last}" for first, last in holes[:3]) + (
            f" and {len(holes) - 3} more ranges" if len(holes) > 3 else "")
        log.warning("history: publisher %s did not send seq %s again after %d requests; %d messages counted as "
                    "missed", publisher, shown, request.times, sum(last - first + 1 for first, last in holes))

    def _request(self, publisher: str, now: float, resend: dict[str, int]) -> None:
        pub = self.history.publishers.get(publisher)
        request = self._requests.get(publisher)
        if pub is None or not pub.holes:
            self._requests.pop(publisher, None)
            return
        if request is not None and publisher in self._heard:
            request.answered = True
        acked = pub.acked
        if request is None or (request.acked != acked and now - request.at >= self.min_interval):
            # A new first hole: ask at once, or, after a request that filled the hole before it, once
            # that request's messages had time to come (asking during them would repeat them all).
            self._requests[publisher] = _Request(acked, now, now, covers=pub.last_seq)
            resend[publisher] = acked
            return
        if now - request.at < self.retry_after:
            return
        if (request.answered and request.times >= self.give_up_after) or now - request.first_at >= self.abandon_after:
            self._give_up(publisher, request)
            del self._requests[publisher]
            self._unacknowledged.add(publisher)  # its acknowledgement moves past the hole
            self._request(publisher, now, resend)  # the next hole, if any
            return
        request.at, request.times, request.answered = now, request.times + 1, False
        resend[publisher] = acked
