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
    sub.gaps                  # what the history no longer held: publisher and seq range (the last 500-1,000)

A redundant pair of brokers: connect to both, ask either history (the one that answers)::

    Subscriber(["tcp://a:5558", "tcp://b:5558"], history=["tcp://a:5559", "tcp://b:5559"])

The logic lives once, in sans-I/O cores (``core.py``: ``Tracker`` for decoding, duplicates,
gaps and the history dialogues, ``Dialogue`` for requests and replies; ``zmq_emitter/link.py``: ``Link``
for the connections' health); ``Subscriber`` and ``AsyncSubscriber`` only move frames and wait.  A
message that does not decode is counted and skipped, never raised: a subscriber survives any
bytes on its socket, and any reply from a history service.
"""
from __future__ import annotations

import math
import time
from typing import Any, AsyncIterator, Callable, Iterable, Iterator

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from .. import protocol, security
from ..protocol import Message, ProtocolError
from .core import MAX_PUBLISHERS, Counts, Dialogue, Gap, Histories, Plan, Request, Tracker, _warn
from ..link import MONITOR_EVENTS, Link

__all__ = ["AsyncSubscriber", "Counts", "Gap", "Subscriber", "Tracker", "subscriptions", "DEFAULT_ENDPOINT"]

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5558"  # the broker's default backend


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


def _socket(context: zmq.Context, topics: tuple[bytes, ...], rcvhwm: int,
            curve: security.ClientCurve | None = None) -> tuple[zmq.Socket, zmq.Socket]:
    """A SUB socket, not connected yet, and its monitor (started first: no event is missed)."""
    sock = context.socket(zmq.SUB)
    if curve is not None:  # before connect: CURVE options apply to the connects that follow
        curve.apply(sock)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, rcvhwm)
    for topic in topics:
        sock.setsockopt(zmq.SUBSCRIBE, topic)
    monitor = sock.get_monitor_socket(MONITOR_EVENTS)
    monitor.setsockopt(zmq.LINGER, 0)
    return sock, monitor


def _single(request: Request) -> Plan:
    """The plan of one request: its reply's frames, or None."""
    return (yield request)


class _SubscriberBase:
    """What both subscriber flavours share: options, sockets, the sans-I/O core (``core.py``).

    The I/O each flavour adds: waiting for frames (``recv``), and driving the core's plans over
    a DEALER socket to the broker's history service (``_talk``).  Everything they decide is in
    ``Tracker`` (messages, gaps, the history dialogues), ``Dialogue`` (requests and replies)
    and ``Link`` (the connections' health).
    """

    def __init__(self, context: zmq.Context, own_context: bool, endpoints: str | Iterable[str],
                 topics: Iterable[bytes | str], on_gap, on_invalid, on_error, rcvhwm: int, curve_server_key,
                 curve_secret_key_file, history: str | Iterable[str] | None, history_timeout: float,
                 max_publishers: int):
        self._curve = security.ClientCurve.load(curve_server_key, curve_secret_key_file)  # docs/security.md
        self._own_context = own_context
        self.context = context
        self.endpoints = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        self.on_error = on_error or _warn
        if isinstance(history, str):
            history = [history]
        # Several endpoints: the histories of a redundant pair of brokers, asked in turn (core.Histories).
        self.histories = None if history is None else Histories(history, self.on_error)
        self.history = None if history is None else self.histories.endpoints
        self.tracker = Tracker(topics, recovers=history is not None, on_gap=on_gap, on_invalid=on_invalid,
                               on_error=self.on_error,
                               history_name=self.histories.name if history is not None else "no history service",
                               max_publishers=max_publishers)
        self._rcvhwm = rcvhwm
        self.history_timeout = history_timeout
        self._dealers: dict[int, zmq.Socket] = {}  # history endpoint index -> its DEALER
        self._dialogue: Dialogue | None = None  # a plan recv() has under way: it goes on at the next call
        self._connect()

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
        self.socket.disable_monitor()
        self._monitor.close(linger=0)
        self.socket.close(linger=0)

    def _connect(self) -> None:
        """A fresh SUB socket on the endpoints and topics, watched by its monitor."""
        self.socket, self._monitor = _socket(self.context, self.tracker.prefixes, self._rcvhwm, self._curve)
        self.link = Link(self.endpoints, self.on_error)
        for endpoint in self.endpoints:
            self.socket.connect(endpoint)

    def _connect_again(self, endpoint: str) -> None:
        """libzmq never tries again an endpoint that refused the handshake: connect it anew."""
        try:
            self.socket.disconnect(endpoint)
        except zmq.ZMQError:
            pass
        self.socket.connect(endpoint)

    def _link_events(self, frames: list[bytes]) -> None:
        event = parse_monitor_message(frames)
        endpoint = event["endpoint"]
        self.link.event(event["event"], endpoint.decode(errors="replace") if isinstance(endpoint, bytes)
                        else str(endpoint), event["value"])

    def _wake_at(self, deadline: float | None) -> int | None:
        """Milliseconds until the deadline, or until the core has something due (None: no limit)."""
        times = [t for t in (deadline, self.tracker.next_due(), self.link.next_due()) if t is not None]
        return None if not times else max(0, math.ceil((min(times) - time.monotonic()) * 1000))

    def _after_wait(self) -> None:
        for endpoint in self.link.due():
            self._connect_again(endpoint)

    def _dealer_socket(self, endpoint: int) -> zmq.Socket:
        """The DEALER to history endpoint number ``endpoint`` (made on first use)."""
        dealer = self._dealers.get(endpoint)
        if dealer is None:
            dealer = self._dealers[endpoint] = self.context.socket(zmq.DEALER)
            dealer.setsockopt(zmq.LINGER, 0)
            if self._curve is not None:
                self._curve.apply(dealer)
            dealer.connect(self.histories.endpoints[endpoint])
        return dealer

    def _dealer_poller(self, poller_class) -> Any:
        poller = poller_class()
        for dealer in self._dealers.values():
            poller.register(dealer, zmq.POLLIN)
        return poller

    def _drop_dealer(self) -> None:
        """After a request given up: new sockets, so that requests queued meanwhile are not sent late."""
        for dealer in self._dealers.values():
            dealer.close(linger=0)
        self._dealers.clear()

    def _require_history(self) -> None:
        if self.history is None:
            raise ValueError("this subscriber has no history endpoint (history=...)")

    def _dialogue_of(self, plan: Plan) -> Dialogue:
        return Dialogue(plan, self.history_timeout, histories=self.histories)

    def close(self) -> None:
        self._drop_dealer()
        if not self.socket.closed:
            self.disconnect()
        if self._own_context:
            self.context.term()


class Subscriber(_SubscriberBase):
    """A SUB socket on one or more endpoints, yielding decoded ``Message`` objects.

    ``topics`` are prefixes (see ``subscriptions()``); ``""`` is everything.
    ``recv(timeout)`` returns None on timeout; iterating blocks until ``close()``.
    With ``history`` (the broker's history service), gaps are recovered from it and
    ``replay``, ``catch_up``, ``resume`` and ``runs`` are available.  ``history`` may list
    several endpoints (the brokers of a redundant pair): a request one does not answer within
    2 s, or refuses, goes to the next, and later requests start with the one that answered
    (``core.Dialogue``); ``history_timeout`` bounds each request over all of them.  ``on_error(text)`` hears of
    trouble worth telling a person once (default: a log warning): a broker that refuses this
    subscriber's CURVE key (it is tried again, with a back-off), an endpoint not reached after
    a moment, a history service that does not answer or refuses a request, publishers forgotten.
    ``max_publishers``: how many publishers to remember, the most recently seen (``Tracker``).

        with Subscriber("tcp://127.0.0.1:5558", history="tcp://127.0.0.1:5559") as sub:
            sub.replay("my-run")
            for msg in sub:
                ...
    """

    def __init__(self, endpoints: str | Iterable[str] = DEFAULT_ENDPOINT, topics: Iterable[bytes | str] = ("",), *,
                 on_gap: Callable[[Gap], None] | None = None,
                 on_invalid: Callable[[list[bytes], ProtocolError], None] | None = None,
                 on_error: Callable[[str], None] | None = None,
                 rcvhwm: int = 100_000, context: zmq.Context | None = None,
                 curve_server_key: str | bytes | None = None, curve_secret_key_file: str | None = None,
                 history: str | Iterable[str] | None = None, history_timeout: float = 5.0,
                 max_publishers: int = MAX_PUBLISHERS):
        super().__init__(context or zmq.Context(), context is None, endpoints, topics, on_gap, on_invalid, on_error,
                         rcvhwm, curve_server_key, curve_secret_key_file, history, history_timeout, max_publishers)
        self._poller = zmq.Poller()
        self._poller.register(self.socket, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)

    # -- the broker's history (the ZeroMQ guide's Clone pattern: subscribe first, then snapshot) --

    def request(self, op: str, **fields) -> tuple[dict, list[list[bytes]]] | None:
        """One request to the broker's history service; None if it did not answer in time.
        Raises ``ProtocolError`` if it refused the request."""
        self._require_history()
        frames = self._run(_single(Request(op, fields)))
        return None if frames is None else protocol.parse_reply(frames)

    def runs(self) -> list[dict]:
        """The runs the broker's history knows, each with its last status."""
        answer = self.request("runs")
        return answer[0]["runs"] if answer else []

    def replay(self, ident: str | None = None) -> int | None:
        """Queue the history of run ``ident`` (or of every run the broker knows) before live messages.

        Every message once, in order per publisher (the runs of one process are merged);
        live messages join without a gap or repeat, whenever the subscription reaches the
        broker (docs/reliability.md, "Subscribers").  Returns how many messages were queued
        (0: the history has nothing of it, yet), None if the history did not answer; what the
        history no longer holds is reported as lost.
        """
        self._require_history()
        return self._run(self.tracker.replay(ident))

    def catch_up(self) -> int | None:
        """Queue everything the history received from known publishers after the last message seen.

        For the moments a consumer must be sure it is up to date: after ``reconnect``, at the
        end of a stream (a gap is otherwise seen only when a later message arrives).  Returns
        the number of messages queued, None if the history did not answer.
        """
        self._require_history()
        return self._run(self.tracker.catch_up())

    def resume(self, positions: dict[str, int]) -> int | None:
        """Go on from ``positions`` (a ``positions`` saved earlier, e.g. by a process that restarted)."""
        self.tracker.restore(positions)
        return self.catch_up()

    def reconnect(self) -> int | None:
        """Connect again (after ``disconnect``, or to drop the connections and make new ones),
        then ``catch_up`` on what passed meanwhile."""
        if not self.socket.closed:
            self.disconnect()
        self._connect()
        self._poller = zmq.Poller()
        self._poller.register(self.socket, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)
        return self._run(self.tracker.reconnected()) if self.history is not None else 0

    def _run(self, plan: Plan) -> Any:
        """Run a plan to its end; one that ``recv`` had under way is finished first."""
        if self._dialogue is not None:
            self._talk(self._dialogue, None)
            self._dialogue = None
        dialogue = self._dialogue_of(plan)
        self._talk(dialogue, None)
        return dialogue.result

    def _talk(self, dialogue: Dialogue, deadline: float | None) -> bool:
        """Advance ``dialogue`` until it is done (True) or ``deadline`` passes (False: it waits as it is)."""
        while not dialogue.done:
            frames = dialogue.outgoing()
            if frames is not None:
                self._dealer_socket(dialogue.endpoint).send_multipart(frames)
            ready = dict(self._dealer_poller(zmq.Poller).poll(dialogue.wait_ms(deadline)))
            for endpoint, dealer in list(self._dealers.items()):
                if dealer in ready:
                    dialogue.incoming(dealer.recv_multipart(), endpoint)
            if ready:
                continue
            if dialogue.expire():
                self._drop_dealer()
            elif deadline is not None and time.monotonic() >= deadline:
                return False
        return True

    # -- live messages --

    def recv(self, timeout: float | None = None) -> Message | None:
        """The next valid message, or None if none came within ``timeout`` seconds (the whole call)."""
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        tracker = self.tracker
        while True:
            if self._dialogue is not None:
                if not self._talk(self._dialogue, deadline):
                    return None
                self._dialogue = None
            if tracker.ready:
                return tracker.ready.popleft()
            plan = tracker.due()
            if plan is None:
                try:
                    frames = self.socket.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    if not self._wait(deadline):
                        return None
                    continue
                step = tracker.receive(frames)
                if step is None or isinstance(step, Message):
                    if step is not None:
                        return step
                    if deadline is not None and time.monotonic() >= deadline:
                        return None  # a stream of repeats or garbage does not hold the caller past its timeout
                    continue
                plan = step
            self._dialogue = self._dialogue_of(plan)

    def _wait(self, deadline: float | None) -> bool:
        """Wait for frames, monitor events or something due; False once the deadline has passed."""
        events = dict(self._poller.poll(self._wake_at(deadline)))
        if self._monitor in events:
            while self._monitor.poll(0):
                self._link_events(self._monitor.recv_multipart())
        self._after_wait()
        return self.socket in events or deadline is None or time.monotonic() < deadline

    def __iter__(self) -> Iterator[Message]:
        while True:
            yield self.recv()

    def __enter__(self) -> "Subscriber":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncSubscriber(_SubscriberBase):
    """The asyncio twin of ``Subscriber``: ``await sub.recv()``, ``async for msg in sub``,
    and the same history operations, awaited.  A call cancelled half-way (``asyncio.wait_for``)
    leaves the subscriber usable: a late reply to a request given up is recognised and dropped.

        async with AsyncSubscriber("tcp://127.0.0.1:5558", history="tcp://127.0.0.1:5559") as sub:
            await sub.replay("my-run")
            async for msg in sub:
                ...
    """

    def __init__(self, endpoints: str | Iterable[str] = DEFAULT_ENDPOINT, topics: Iterable[bytes | str] = ("",), *,
                 on_gap: Callable[[Gap], None] | None = None,
                 on_invalid: Callable[[list[bytes], ProtocolError], None] | None = None,
                 on_error: Callable[[str], None] | None = None,
                 rcvhwm: int = 100_000, context: zmq.asyncio.Context | None = None,
                 curve_server_key: str | bytes | None = None, curve_secret_key_file: str | None = None,
                 history: str | Iterable[str] | None = None, history_timeout: float = 5.0,
                 max_publishers: int = MAX_PUBLISHERS):
        super().__init__(context or zmq.asyncio.Context(), context is None, endpoints, topics, on_gap, on_invalid,
                         on_error, rcvhwm, curve_server_key, curve_secret_key_file, history, history_timeout,
                         max_publishers)
        self._make_poller()

    def _make_poller(self) -> None:
        self._poller = zmq.asyncio.Poller()
        self._poller.register(self.socket, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)

    async def request(self, op: str, **fields) -> tuple[dict, list[list[bytes]]] | None:
        """One request to the broker's history service; None if it did not answer in time.
        Raises ``ProtocolError`` if it refused the request."""
        self._require_history()
        frames = await self._run(_single(Request(op, fields)))
        return None if frames is None else protocol.parse_reply(frames)

    async def runs(self) -> list[dict]:
        answer = await self.request("runs")
        return answer[0]["runs"] if answer else []

    async def replay(self, ident: str | None = None) -> int | None:
        self._require_history()
        return await self._run(self.tracker.replay(ident))

    async def catch_up(self) -> int | None:
        self._require_history()
        return await self._run(self.tracker.catch_up())

    async def resume(self, positions: dict[str, int]) -> int | None:
        self.tracker.restore(positions)
        return await self.catch_up()

    async def reconnect(self) -> int | None:
        if not self.socket.closed:
            self.disconnect()
        self._connect()
        self._make_poller()
        return await self._run(self.tracker.reconnected()) if self.history is not None else 0

    async def _run(self, plan: Plan) -> Any:
        if self._dialogue is not None:
            await self._talk(self._dialogue, None)
            self._dialogue = None
        dialogue = self._dialogue_of(plan)
        await self._talk(dialogue, None)
        return dialogue.result

    async def _talk(self, dialogue: Dialogue, deadline: float | None) -> bool:
        while not dialogue.done:
            frames = dialogue.outgoing()
            if frames is not None:
                await self._dealer_socket(dialogue.endpoint).send_multipart(frames)
            ready = dict(await self._dealer_poller(zmq.asyncio.Poller).poll(dialogue.wait_ms(deadline)))
            for endpoint, dealer in list(self._dealers.items()):
                if dealer in ready:
                    dialogue.incoming(await dealer.recv_multipart(), endpoint)
            if ready:
                continue
            if dialogue.expire():
                self._drop_dealer()
            elif deadline is not None and time.monotonic() >= deadline:
                return False
        return True

    async def recv(self, timeout: float | None = None) -> Message | None:
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        tracker = self.tracker
        while True:
            if self._dialogue is not None:
                if not await self._talk(self._dialogue, deadline):
                    return None
                self._dialogue = None
            if tracker.ready:
                return tracker.ready.popleft()
            plan = tracker.due()
            if plan is None:
                try:
                    frames = await self.socket.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    if not await self._wait(deadline):
                        return None
                    continue
                step = tracker.receive(frames)
                if step is None or isinstance(step, Message):
                    if step is not None:
                        return step
                    if deadline is not None and time.monotonic() >= deadline:
                        return None
                    continue
                plan = step
            self._dialogue = self._dialogue_of(plan)

    async def _wait(self, deadline: float | None) -> bool:
        events = dict(await self._poller.poll(self._wake_at(deadline)))
        if self._monitor in events:
            while await self._monitor.poll(0):
                self._link_events(await self._monitor.recv_multipart())
        self._after_wait()
        return self.socket in events or deadline is None or time.monotonic() < deadline

    async def __aiter__(self) -> AsyncIterator[Message]:
        while True:
            yield await self.recv()

    async def __aenter__(self) -> "AsyncSubscriber":
        return self

    async def __aexit__(self, *exc) -> None:
        self.close()
