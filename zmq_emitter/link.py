"""The health of a client's connections, from its socket's monitor (sans-I/O).

libzmq reconnects a dropped connection by itself, but never one whose handshake was refused
(a CURVE key the broker does not list): such a client would wait for ever, silently.
``Link`` reads the monitor's events and decides: say once that the broker refused, connect
again with a back-off (so a key added to the broker's directory later is let in), and say
once when an endpoint has not connected after a moment.  Shared by both sides that connect
to a broker as clients: ``Subscriber`` and ``AsyncSubscriber`` (consumers/subscriber.py) and
an edge broker's link to its central broker (broker/upstream.py) feed it the events and do
what ``due`` returns.

    >>> link = Link(["tcp://broker:5558"], report=print, clock=lambda: 0.0)
    >>> link.event(zmq.EVENT_HANDSHAKE_FAILED_AUTH, "tcp://broker:5558", 400)
    tcp://broker:5558 refused this subscriber (CURVE key not allowed, ZAP status 400); trying again, every 30 s at most
    >>> link.due(), link.next_due()           # (at time 0) connect again at time 1
    ([], 1.0)
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Callable, Iterable

import zmq

log = logging.getLogger("zmq_emitter.link")

# What a subscriber's monitor reports (few events: the monitor socket is read only when idle).
MONITOR_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                  | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                  | zmq.EVENT_DISCONNECTED)
WAITING_NOTICE_AFTER = 2.0  # seconds without a connection before saying so (once)
RETRY_FIRST, RETRY_MAX = 1.0, 30.0  # back-off of connecting again after a refused handshake


@dataclasses.dataclass
class _Endpoint:
    since: float                 # when it was (re)connected or lost: the waiting notice counts from here
    connected: bool = False
    was_connected: bool = False  # connected before: it went away
    told: bool = False           # a notice about this endpoint was given (until it connects)
    retry_at: float | None = None
    backoff: float = RETRY_FIRST


class Link:
    """The health of a SUB socket's connections, from its monitor's events (sans-I/O).

    ``event`` takes one monitor event; ``due`` returns the endpoints to connect again now (after
    a refused handshake: libzmq drops such a connection for good) and gives notices through
    ``report``: once per trouble, never per retry.

    (Example: the module docstring.)
    """

    def __init__(self, endpoints: Iterable[str], report: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic, *, client: str = "subscriber",
                 side: str = "backend"):
        self.report, self.clock = report, clock
        self.client, self.side = client, side  # named in the notices: who is refused, which endpoint it needs
        self.endpoints = {endpoint: _Endpoint(clock()) for endpoint in endpoints}

    def event(self, event: int, endpoint: str, value: int) -> None:
        state = self._state(endpoint)
        if state is None:
            return
        now = self.clock()
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            if state.told:
                log.info("connected to %s", endpoint)
            self.endpoints[self._name(endpoint)] = _Endpoint(now, connected=True)
        elif event == zmq.EVENT_DISCONNECTED:
            if state.connected:
                state.connected, state.was_connected, state.since = False, True, now
        else:  # a failed handshake: libzmq will not try this endpoint again by itself
            if not state.told:
                state.told = True
                self.report(f"{self._name(endpoint)} {_refusal(event, value, self.client)}; trying again, "
                            f"every {RETRY_MAX:g} s at most")
            state.connected, state.retry_at = False, now + state.backoff
            state.backoff = min(state.backoff * 2, RETRY_MAX)

    def due(self) -> list[str]:
        """Endpoints to connect again now; gives the waiting notices that are due."""
        now, again = self.clock(), []
        for endpoint, state in self.endpoints.items():
            if state.retry_at is not None and now >= state.retry_at:
                state.retry_at = None
                state.since = now
                again.append(endpoint)
            elif not state.connected and not state.told and now >= state.since + WAITING_NOTICE_AFTER:
                state.told = True
                self.report(f"lost the connection to {endpoint}; waiting for it to come back" if state.was_connected
                            else f"no connection to {endpoint} yet (is the broker running, and is this its "
                                 f"{self.side}?); waiting for it")
        return again

    def next_due(self) -> float | None:
        times = [s.retry_at for s in self.endpoints.values() if s.retry_at is not None]
        times += [s.since + WAITING_NOTICE_AFTER for s in self.endpoints.values() if not s.connected and not s.told]
        return min(times, default=None)

    def _name(self, endpoint: str) -> str:
        if endpoint in self.endpoints or len(self.endpoints) != 1:
            return endpoint
        return next(iter(self.endpoints))  # libzmq may report a resolved address for the one endpoint

    def _state(self, endpoint: str) -> _Endpoint | None:
        return self.endpoints.get(self._name(endpoint))


def _refusal(event: int, value: int, client: str) -> str:
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return f"refused this {client} (CURVE key not allowed, ZAP status {value})"
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        return "refused the handshake (a security mismatch: CURVE on one side only, or the wrong server key?)"
    return "dropped the connection during the handshake (the wrong server key, or a security mismatch?)"
