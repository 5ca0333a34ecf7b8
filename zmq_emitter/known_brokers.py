"""The brokers a publisher knows upstream, and whose acknowledgements count (sans-I/O).

Shared by both kinds of publisher: a runner's outbox (runner/outbox.py) and an edge broker's
link to its central broker (broker/upstream.py).  They are fed brokers' presences and
acknowledgements (docs/protocol.md, "Upstream"); this module keeps who is known and present
and checks tokens, the same way for both.

- Brokers are known by name: present while their presence subscription is there, away after
  it went; known for good once seen (a broker that comes back gets what it has not acknowledged).
- An acknowledgement counts only with the token of the one presence its broker's name holds.
  Two presences claiming one name at once (a subscriber can send presence-shaped
  subscriptions, which brokers pass upstream) make that name's acknowledgements count for
  nothing until one claim goes away: never released by a forged acknowledgement, at worst kept longer.
- At most ``MAX_BROKERS`` names (forged presences cannot grow memory).

    >>> brokers = KnownBrokers(warn_once=lambda key, text: print(text))
    >>> broker = brokers.arrive(protocol.Presence("central", "t0k", 2**24))
    >>> brokers.acknowledging(protocol.Ack("central", "t0k", {"p1": 3})) is broker
    True
    >>> brokers.acknowledging(protocol.Ack("central", "forged", {"p1": 9})) is None
    ignoring acknowledgements in the name of broker 'central' without the token of its presence
    True
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from . import protocol

MAX_BROKERS = 16  # names beyond this are ignored (forged presences cannot grow memory)


@dataclasses.dataclass(eq=False)
class KnownBroker:
    """A broker that acknowledges, as a publisher knows it."""

    name: str
    claims: dict[str, int] = dataclasses.field(default_factory=dict)  # token -> max_message_size, while subscribed
    acked: dict[str, int] = dataclasses.field(default_factory=dict)   # pub -> highest seq it acknowledged
    acknowledged: bool = False  # it has acknowledged something

    @property
    def present(self) -> bool:
        return bool(self.claims)

    @property
    def token(self) -> str | None:
        """The token its acknowledgements must carry; None while away or while two claims conflict."""
        return next(iter(self.claims)) if len(self.claims) == 1 else None


class KnownBrokers(dict):
    """name -> ``KnownBroker``; ``warn_once(key, text)`` says each kind of trouble once (the caller's logger)."""

    def __init__(self, warn_once: Callable[[tuple, str], None], prefix: str = ""):
        super().__init__()
        self._warn_once, self._prefix = warn_once, prefix

    def arrive(self, presence: protocol.Presence) -> KnownBroker | None:
        """A presence came: the broker it names (new or known), or None if there are too many names."""
        broker = self.get(presence.broker)
        if broker is None:
            if len(self) >= MAX_BROKERS:
                self._warn_once(("brokers",), f"{self._prefix}more than {MAX_BROKERS} broker names announced; "
                                              f"ignoring {presence.broker!r} and any further one")
                return None
            broker = self[presence.broker] = KnownBroker(presence.broker)
        if broker.claims and presence.token not in broker.claims:
            self._warn_once(("conflict", presence.broker),
                            f"{self._prefix}two presences claim broker {presence.broker!r} at once; its "
                            "acknowledgements count for nothing until one goes (a subscriber sending "
                            "presence-shaped subscriptions?)")
        broker.claims[presence.token] = presence.max_message_size
        return broker

    def leave(self, presence: protocol.Presence) -> bool:
        """A presence went (its connection did); True if it was one of a known broker's claims."""
        broker = self.get(presence.broker)
        return broker is not None and broker.claims.pop(presence.token, None) is not None

    def acknowledging(self, ack: protocol.Ack) -> KnownBroker | None:
        """The broker whose acknowledgement ``ack`` is, if its token is that of the broker's one presence."""
        broker = self.get(ack.broker)
        if broker is None or broker.token is None or broker.token != ack.token:
            # Not the token of the one present broker of that name: a subscriber's frame
            # passed upstream, an old broker process, or a name in conflict.
            self._warn_once(("token", ack.broker if broker else None),
                            f"{self._prefix}ignoring acknowledgements in the name of "
                            f"{'broker ' + repr(ack.broker) if broker else 'unknown brokers'} without the token "
                            "of its presence")
            return None
        broker.acknowledged = True
        return broker

    def lowest(self, pub: str) -> int:
        """The highest seq of ``pub`` every known broker, present or away, has acknowledged (0: none known)."""
        return min((broker.acked.get(pub, 0) for broker in self.values()), default=0)
