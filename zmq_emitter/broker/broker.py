"""The broker: runners publish to its frontend, any number of subscribers read its backend.

The ZeroMQ guide's Espresso pattern: an XSUB/XPUB proxy with a capture socket.  The
forwarding path is libzmq's own ``zmq_proxy_steerable``; no Python runs per message
between a runner and a subscriber.  Statistics come from the proxy's own counters
(``STATISTICS`` on its control socket), connection counts and refused handshakes from socket
monitors, the history's counters from a snapshot its thread takes every ``SNAPSHOT_INTERVAL``
seconds: ``stats()`` reads them all (``metrics.py`` serves them to Prometheus).

From the command line::

    zmq-emitter broker --frontend tcp://0.0.0.0:5557 --backend tcp://0.0.0.0:5558

From Python, in a thread of one's own process::

    >>> from zmq_emitter.broker import Broker
    >>> with Broker(["tcp://127.0.0.1:0"], ["tcp://127.0.0.1:0"], startup_grace=0) as broker:
    ...     broker.frontend_endpoints  # the ports the OS chose
    ['tcp://127.0.0.1:...']

Start-up grace: a broker that restarts while runners and subscribers are still
connected gets the runners' queued messages at once, before the subscribers have
reconnected, and a PUB socket drops what no subscriber is there to take.  So the
frontend subscribes, and the proxy starts forwarding, only ``startup_grace`` seconds
after the backend is bound; until then runners' messages wait in their own buffers.
With a history on disk (``history_dir``), the broker first acknowledges to the runners
what it had recorded before the restart, so that they do not send it again.

Acknowledgements (``acks.py``) cover, per publisher, what the history holds without a hole,
and with ``history_dir`` only what is written to disk: a disk that refuses writes is said
once (the ``zmq_emitter.broker`` logger), retried every second, and meanwhile nothing new is
acknowledged while the history goes on serving from memory.
"""
from __future__ import annotations

import dataclasses
import errno
import logging
import math
import os
import threading
import time
import uuid
import hashlib
import secrets
import socket
from typing import Callable, Iterable

import zmq
from zmq.utils.monitor import recv_monitor_message

from .. import _threads, protocol, security
from .acks import Acknowledgements
from .history import History, HistoryCounters
from .jetstream import JetStreamSettings, JetStreamStore, StoreStats
from .journal import JournalLocked
from .upstream import Upstream, UpstreamStats

DEFAULT_FRONTEND = "tcp://127.0.0.1:5557"
DEFAULT_BACKEND = "tcp://127.0.0.1:5558"
DEFAULT_HISTORY = "tcp://127.0.0.1:5559"
DEFAULT_MAX_MESSAGE_SIZE = 16 * 2**20
DISK_RETRY = 1.0  # seconds between tries of a history directory that refused a write
SNAPSHOT_INTERVAL = 0.5  # seconds between the history thread's snapshots of its counters (for stats())

log = logging.getLogger("zmq_emitter.broker")


# What to fix, for the bind errors whose libzmq text alone does not say it.
_BIND_HINTS = {
    errno.ENODEV: " (HOST must be an address or interface of this machine, or * / 0.0.0.0 for all)",
    zmq.EPROTONOSUPPORT: " (use tcp://HOST:PORT or ipc://PATH)",
    zmq.EINVAL: " (use tcp://HOST:PORT or ipc://PATH)",
}


def default_name(frontend: Iterable[str]) -> str:
    """A broker's name when none is given: the same for a broker restarted on this host and these endpoints."""
    text = socket.gethostname() + "|" + ",".join(sorted(frontend))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class BrokerError(RuntimeError):
    """The broker cannot start as asked; the message says which endpoint and why."""


_FRAMES = 3  # topic, header, payload (protocol.py)
_BATCH = 500  # captured messages the history thread records before it acknowledges
_FEW = 50  # a batch of fewer messages than this: light traffic, the history thread waits _PAUSE seconds
_PAUSE = 0.002

# The sides whose connections the manager thread watches (the ZAP domains of security.ServerCurve), and the
# monitor events that end a handshake refused, with the reason they stand for.
PUBLISHERS, SUBSCRIBERS, HISTORY = "publishers", "subscribers", "history"
_REFUSED = {zmq.EVENT_HANDSHAKE_FAILED_AUTH: "auth",          # a CURVE key that ZAP refused
            zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "protocol",  # no CURVE to a CURVE socket, a wrong server key
            zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "closed"}   # closed in the handshake: a port check, not ZeroMQ
_WATCHED = (zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
            | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


@dataclasses.dataclass
class Stats:
    """Counters of the proxy since start: messages and bytes in from runners, out to subscribers.

    "Out" is what the proxy handed to its XPUB once; libzmq copies it to each subscriber
    whose subscription matches.  Messages are the proxy's frame counts divided by three,
    exact for protocol traffic (a rogue peer's odd frame counts skew them).
    """

    messages_in: int = 0
    bytes_in: int = 0
    messages_out: int = 0
    bytes_out: int = 0
    subscribers: int = 0
    publishers: int = 0                # connections to the frontend open now (runners, or edge brokers)
    # Frontend connections that ended after their handshake: a publisher that closed or went away, or one
    # libzmq disconnected for a message over max_message_size (libzmq does not say which).
    publisher_disconnects: int = 0
    handshakes_refused: dict = dataclasses.field(default_factory=dict)  # (side, reason) -> count
    acks_sent: int = 0                 # acknowledgement frames sent to the publishers
    resend_requests: int = 0           # requests to a publisher to send a hole again (in those frames)
    history: HistoryCounters | None = None  # the history thread's last snapshot; None without a history


class Broker:
    """An XSUB/XPUB proxy running in threads of the calling process.

    ``start()`` binds every endpoint (raising BrokerError at once if one cannot be bound)
    and returns; ``stop()`` ends the proxy and closes every socket.
    """

    def __init__(self, frontend: Iterable[str] = (DEFAULT_FRONTEND,), backend: Iterable[str] = (DEFAULT_BACKEND,),
                 history: Iterable[str] = (), *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
                 startup_grace: float = 1.0, sndhwm: int = 100_000, rcvhwm: int = 100_000,
                 history_runs: int = 100, history_bytes: int = 64 * 2**20, history_dir: str | None = None,
                 capture_hwm: int = 100_000,
                 curve: security.ServerCurve | None = None, ipc_mode: int | None = security.DEFAULT_IPC_MODE,
                 name: str | None = None, upstream: Iterable[str] = (),
                 upstream_curve: security.ClientCurve | None = None, jetstream: JetStreamSettings | None = None):
        self.curve = curve          # CURVE on both sides, clients checked by ZAP (security.py)
        self.ipc_mode = ipc_mode    # permissions of bound ipc:// socket files; None leaves the umask's
        self._auth: security.Authenticator | None = None
        self.frontend_endpoints = list(frontend)
        self.backend_endpoints = list(backend)
        self.history_endpoints = list(history)  # the history service (REP); none: no history, no acks
        self.upstream_endpoints = list(upstream)  # central brokers' frontends this edge forwards to (upstream.py)
        self._upstream_curve = upstream_curve
        self._upstream: Upstream | None = None
        self.jetstream = jetstream  # the history stored in NATS JetStream too (jetstream.py); acks wait for it
        self._store: JetStreamStore | None = None
        self.history = History(history_runs, history_bytes)
        self.history_dir = history_dir  # the history on disk too: a restarted broker starts with it
        self.history_loaded = 0         # messages loaded from history_dir at start
        self.history_writable = True    # False while the disk under history_dir refuses writes
        self._disk_retry_at = 0.0
        self._disk_given_up = 0
        self._loaded_acks: dict[str, int] = {}
        self._capture_hwm = capture_hwm
        self.max_message_size = max_message_size
        self.startup_grace = startup_grace
        self._sndhwm, self._rcvhwm = sndhwm, rcvhwm
        self._context = zmq.Context()
        self._name = uuid.uuid4().hex  # of this process's inproc endpoints
        # How runners know this broker (protocol.Presence): the name is stable across restarts on
        # the same endpoints, the token is new each time and never leaves the upstream direction.
        self.name = name or default_name(self.frontend_endpoints)
        self._token = secrets.token_hex(16)
        self._stopping = threading.Event()
        self._forwarding = threading.Event()
        self._state_lock = threading.Lock()  # makes "stopping" and "forwarding" exclusive
        self._threads: list[threading.Thread] = []
        self._stats = Stats()
        self._stats_lock = threading.Lock()
        self._started = False
        self.started_at: float | None = None  # time.time() of start()
        self._ipc_files: list[tuple[str, int]] = []  # (path, inode) of the ipc:// files bound, removed at stop

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> "Broker":
        """Bind every endpoint and start the threads; BrokerError (with nothing left open) if it cannot."""
        try:
            self._start()
        except BaseException:
            self._close_all()  # the journal (and its lock), the sockets, the context: a failed start keeps nothing
            raise
        self._started = True
        self.started_at = time.time()
        return self

    def _start(self) -> None:
        if self.upstream_endpoints and not self.history_endpoints:
            raise BrokerError("--upstream needs the history (the edge sends the central broker what its history "
                              "recorded, and again what the central did not acknowledge): drop --history none")
        if self.jetstream is not None and not self.history_endpoints:
            raise BrokerError("--jetstream needs the history (what JetStream has not stored yet waits in it, "
                              "and it answers from the stream): drop --history none")
        if self.history_dir is not None and self.history_endpoints:
            try:
                self.history_loaded = self.history.persist_to(self.history_dir)
                self._loaded_acks = self.history.acks()
            except JournalLocked as exc:
                raise BrokerError(f"history directory {self.history_dir!r} (--history-dir): {exc.strerror}; "
                                  "give each broker a directory of its own") from None
            except OSError as exc:
                raise BrokerError(f"cannot use history directory {self.history_dir!r} (--history-dir): {exc}") from None
        ctx = self._context
        frontend = self._frontend = ctx.socket(zmq.XSUB)
        backend = self._backend = ctx.socket(zmq.XPUB)
        # Watched before binding: a peer reconnecting at once (a broker restart) is counted too.
        self._monitors = {frontend.get_monitor_socket(_WATCHED): PUBLISHERS,
                          backend.get_monitor_socket(_WATCHED): SUBSCRIBERS}
        # A hostile or broken publisher sending an oversized message is disconnected by libzmq.
        frontend.setsockopt(zmq.MAXMSGSIZE, self.max_message_size)
        frontend.setsockopt(zmq.RCVHWM, self._rcvhwm)
        backend.setsockopt(zmq.SNDHWM, self._sndhwm)
        for sock in (frontend, backend):
            sock.setsockopt(zmq.LINGER, 0)
        if self.curve is not None:  # the ZAP handler must be there before the first peer connects
            self._auth = self.curve.start_authenticator(ctx)
            self.curve.apply(frontend, backend)
        self.frontend_endpoints = self._bind(frontend, self.frontend_endpoints, "frontend")
        self.backend_endpoints = self._bind(backend, self.backend_endpoints, "backend")
        if self.history_endpoints:
            # ROUTER, not REP: a request that waits for JetStream (jetstream.py) must not hold up the next one.
            self._replier = ctx.socket(zmq.ROUTER)
            self._replier.setsockopt(zmq.LINGER, 0)
            self._monitors[self._replier.get_monitor_socket(_WATCHED)] = HISTORY
            if self.curve is not None:  # the history holds messages: subscribers' keys only
                security.curve_server(self._replier, self.curve.pair, security.ServerCurve.SUBSCRIBERS)
            self.history_endpoints = self._bind(self._replier, self.history_endpoints, "history")

        self._control_proxy_side = ctx.socket(zmq.PAIR)
        self._control_proxy_side.bind(f"inproc://control-{self._name}")
        self._control = ctx.socket(zmq.PAIR)
        self._control.connect(f"inproc://control-{self._name}")

        self._threads = [_threads.thread(self._run_proxy, "zmq-emitter-proxy"),
                         _threads.thread(self._run_manager, "zmq-emitter-manager")]
        self._capture = None
        if self.history_endpoints:
            # Capture is a PUB: at its high-water mark it drops copies, so the history can
            # fall behind under overload but can never slow or block forwarding.
            self._capture = ctx.socket(zmq.PUB)
            self._capture.setsockopt(zmq.SNDHWM, self._capture_hwm)
            self._stats.history = self.history.counters()
            self._capture.bind(f"inproc://capture-{self._name}")
            self._captured = ctx.socket(zmq.SUB)
            self._captured.setsockopt(zmq.RCVHWM, self._capture_hwm)
            self._captured.setsockopt(zmq.SUBSCRIBE, b"")
            self._captured.connect(f"inproc://capture-{self._name}")
            # Acknowledgements go upstream: into the backend like a subscriber's message,
            # through the proxy, out of the frontend to every publisher.
            backend.bind(f"inproc://backend-{self._name}")
            self._acker = ctx.socket(zmq.XSUB)
            self._acker.connect(f"inproc://backend-{self._name}")
            if self.upstream_endpoints:
                try:
                    self._upstream = Upstream(ctx, self.upstream_endpoints, name=self.name, sndhwm=self._sndhwm,
                                              curve=self._upstream_curve)
                except zmq.ZMQError as exc:
                    raise BrokerError(f"cannot connect to upstream endpoints {self.upstream_endpoints} "
                                      f"(--upstream): {exc}") from None
            if self.jetstream is not None:
                self._store = JetStreamStore(self.jetstream, ctx, name=f"zmq-emitter broker {self.name}",
                                             max_message_size=self.max_message_size).start()
            self._threads.append(_threads.thread(self._run_history, "zmq-emitter-history"))
        for thread in self._threads:
            thread.start()

    def _bind(self, sock: zmq.Socket, endpoints: list[str], side: str) -> list[str]:
        bound = []
        for endpoint in endpoints:
            port = endpoint.rpartition(":")[2] if endpoint.startswith("tcp://") else ""
            if port.isdigit() and int(port) > 65535:  # libzmq would silently bind port % 65536
                raise BrokerError(f"cannot bind {side} endpoint {endpoint!r}: the port must be 0..65535 "
                                  "(0 or *: any free port)")
            try:
                sock.bind(endpoint)
            except zmq.ZMQError as exc:
                hint = _BIND_HINTS.get(exc.errno, "")
                raise BrokerError(f"cannot bind {side} endpoint {endpoint!r}: {exc}{hint}") from None
            bound.append(sock.getsockopt_string(zmq.LAST_ENDPOINT))
            path = security.ipc_path(bound[-1])
            if path is not None:
                self._ipc_files.append((path, os.stat(path).st_ino))
            try:
                security.restrict_ipc(bound[-1], self.ipc_mode)
            except security.SecurityError as exc:
                raise BrokerError(f"{side} endpoint {endpoint!r}: {exc}") from None
        return bound

    def wait_forwarding(self, timeout: float | None = None) -> bool:
        """Block until the start-up grace is over and the proxy forwards messages."""
        return self._forwarding.wait(timeout)

    def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        with self._state_lock:
            self._stopping.set()
        for thread in self._threads:
            thread.join()
        self._close_all()

    def _close_all(self) -> None:
        for name in ("_frontend", "_backend", "_control", "_control_proxy_side",
                     "_replier", "_capture", "_captured", "_acker"):
            sock = getattr(self, name, None)
            if sock is not None:
                sock.close(linger=0)
        if self._upstream is not None:
            self._upstream.close()
            self._upstream = None
        for monitor in getattr(self, "_monitors", ()):
            monitor.close(linger=0)
        if self._store is not None:
            self._store.close()
            self._store = None
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        self.history.close()
        self._context.term()
        for path, inode in self._ipc_files:  # libzmq leaves them; a broker bound there since has its own
            try:
                if os.stat(path).st_ino == inode:
                    os.unlink(path)
            except OSError:
                pass
        self._ipc_files = []

    def __enter__(self) -> "Broker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def stats(self) -> Stats:
        """A copy of the counters, safe to call from any thread (e.g. a metrics scrape)."""
        with self._stats_lock:
            return dataclasses.replace(self._stats, handshakes_refused=dict(self._stats.handshakes_refused))

    def upstream_stats(self) -> UpstreamStats | None:
        """The link to the central broker(s) of an edge broker (``--upstream``); None without one.

        >>> # Broker(..., upstream=["tcp://central:5557"]).upstream_stats().backlog
        """
        upstream = self._upstream
        return upstream.stats() if upstream is not None else None

    def store_stats(self) -> StoreStats | None:
        """The history's store in NATS JetStream (``--jetstream``); None without one.

        >>> # Broker(..., jetstream=JetStreamSettings(["nats://127.0.0.1:4222"])).store_stats().backlog
        """
        store = self._store
        return store.stats() if store is not None else None

    # -- threads ------------------------------------------------------------------------

    def _run_proxy(self) -> None:
        # Runners send nothing before the frontend subscribes: until then what they publish
        # waits in their own bounded buffers.  A history loaded from disk is acknowledged to
        # them first, so that they do not send again what this broker already has.
        presence = protocol.presence_topic(protocol.Presence(self.name, self._token, self.max_message_size))
        # Announced at once: a presence subscription matches no message, so runners go on keeping
        # their messages until the data subscription below, but they accept this broker's acks.
        if self.history_endpoints:  # only a broker that acknowledges announces itself
            self._frontend.send(b"\x01" + presence)
        loaded = self._ack(self._loaded_acks) if self._loaded_acks else None
        deadline = time.monotonic() + self.startup_grace
        while time.monotonic() < deadline:
            if loaded:
                # To every runner connected by now.  Only a few times a second: an upstream
                # frame a runner has not read yet takes room in its queue, and a full queue
                # would drop the subscription sent after the grace.
                self._frontend.send(loaded)
            # Let the backend take in reconnecting subscribers (sockets act on socket calls).
            self._backend.getsockopt(zmq.EVENTS)
            if self._stopping.wait(min(0.25, max(0.0, deadline - time.monotonic()))):
                break
        with self._state_lock:
            if self._stopping.is_set():
                return
            self._forwarding.set()
        if loaded:
            self._frontend.send(loaded)
        self._frontend.send(b"\x01")  # subscribe to everything: runners send whether or not anyone listens
        try:
            zmq.proxy_steerable(self._frontend, self._backend, self._capture, self._control_proxy_side)
        except zmq.ContextTerminated:
            pass
        except zmq.ZMQError as exc:  # not seen in practice; said rather than left to a thread's traceback
            log.error("the proxy stopped forwarding: %s", exc)

    def _run_manager(self) -> None:
        """Owns the control and monitor sockets: counts connections, polls statistics, stops the proxy.

        Never waits on the proxy: a statistics request is answered when the proxy gets to it (if
        its thread ended, never), and the loop goes on checking for ``stop`` every 0.1 s.
        """
        poller = zmq.Poller()
        for monitor in self._monitors:
            poller.register(monitor, zmq.POLLIN)
        poller.register(self._control, zmq.POLLIN)
        asking, next_ask = False, 0.0  # a STATISTICS request not answered yet; when to send the next one
        while not self._stopping.is_set():
            for sock, _ in poller.poll(100):
                if sock is self._control:
                    self._read_proxy_counters(self._control.recv_multipart(zmq.NOBLOCK))
                    asking = False
                else:
                    self._count_connection(self._monitors[sock], recv_monitor_message(sock, zmq.NOBLOCK)["event"])
            now = time.monotonic()
            if self._forwarding.is_set() and not asking and now >= next_ask:
                self._control.send(b"STATISTICS", zmq.NOBLOCK)
                asking, next_ask = True, now + 0.1
        if self._forwarding.is_set():
            try:
                self._control.send(b"TERMINATE", zmq.NOBLOCK)
            except zmq.ZMQError:
                pass  # the proxy's thread has ended already

    def _count_connection(self, side: str, event: int) -> None:
        """One monitor event: a connection accepted or ended, or a handshake refused (which ends it too)."""
        with self._stats_lock:
            stats = self._stats
            if event in _REFUSED:
                key = (side, _REFUSED[event])
                stats.handshakes_refused[key] = stats.handshakes_refused.get(key, 0) + 1
                if side == PUBLISHERS:  # its disconnection (next) is not a publisher's that went away
                    stats.publisher_disconnects -= 1
                return
            step = 1 if event == zmq.EVENT_ACCEPTED else -1
            if side == SUBSCRIBERS:
                stats.subscribers += step
            elif side == PUBLISHERS:
                stats.publishers += step
                stats.publisher_disconnects += step < 0

    def _run_history(self) -> None:
        """Owns the capture, acknowledgement and history sockets; the only thread touching ``history``."""
        captured, replier, acker, history = self._captured, self._replier, self._acker, self.history
        acknowledgements = Acknowledgements(history, self.name, self._token)
        upstream, store = self._upstream, self._store
        heard: set[str] = set()  # publishers with messages new to the history since the last pump upstream
        poller = zmq.Poller()
        poller.register(captured, zmq.POLLIN)
        poller.register(replier, zmq.POLLIN)
        if store is not None:  # acknowledged: recorded, and stored in JetStream
            acknowledgements.limit = store.link.stored
            poller.register(store.wakeup, zmq.POLLIN)
        if upstream is not None:
            poller.register(upstream.socket, zmq.POLLIN)

        read_envelope = protocol.EnvelopeReader()  # topics and header prefixes checked once, then known
        # pyzmq's recv_multipart asks RCVMORE with an enum lookup per frame (~1.5 us each); a Frame's
        # ``more`` is free, and the Cython layer's recv skips the Python wrapper.
        recv, nowait = zmq.backend.Socket.recv, int(zmq.NOBLOCK)

        def record(batch: int | None) -> int:
            """Record captured copies: ``batch`` of them at most, or all there are (None); how many came.

            Per message: three receives, the envelope (a dict look-up or two), ``History.add``.
            One clock read and one hand-over to the acknowledgements per batch.
            """
            count, received, publishers = 0, time.time(), set()
            try:
                while batch is None or count < batch:
                    count += 1
                    topic = recv(captured, nowait, copy=False)
                    if not topic.more:
                        continue  # subscriptions and acknowledgements travel through the proxy too
                    header = recv(captured, nowait, copy=False)
                    if not header.more:
                        continue
                    payload = recv(captured, nowait, copy=False)
                    if payload.more:  # not a protocol message: skip the rest of it
                        while recv(captured, nowait, copy=False).more:
                            pass
                        continue
                    frames = [topic.bytes, header.bytes, payload.bytes]
                    try:
                        env = read_envelope(frames)
                    except protocol.ProtocolError:
                        continue
                    if history.add(env, frames, received):
                        heard.add(env.publisher)
                    publishers.add(env.publisher)
            except zmq.Again:
                pass
            finally:
                for publisher in publishers:
                    acknowledgements.heard(publisher)
            return count

        acks_sent = resend_requests = 0
        snapshot_at = 0.0
        full = False  # the last batch was as large as a batch gets: acknowledge now, whatever the interval
        while not self._stopping.is_set():
            timeout = 10 if upstream is not None and upstream.more else 100
            ack_at = acknowledgements.next_due()
            if ack_at is not None:  # an acknowledgement held back (Acknowledgements.interval) is due then
                timeout = min(timeout, max(0, math.ceil((ack_at - time.monotonic()) * 1000)))
            ready = dict(poller.poll(timeout))
            recorded = 0
            if captured in ready:
                recorded = record(_BATCH)
                full = recorded >= _BATCH  # a small batch, then acknowledge: publishers free their buffers sooner
            if replier in ready:
                # Everything forwarded before the request came is recorded first: a subscriber
                # fetching a gap it has just seen finds messages the proxy forwarded before it.
                record(None)
                request = replier.recv_multipart()  # routing frames, empty delimiter, the request
                envelope, body = request[:-1], request[-1]
                answer = history.answer(body) if store is None else store.ask(history, envelope, body)
                if answer is not None:  # else JetStream is read first: store.replies() below
                    replier.send_multipart(envelope + answer, copy=False)
            now = time.monotonic()
            if store is not None:
                store.collect(now, acknowledgements.moved)
                store.pump(history, now, heard)
                for reply in store.replies():
                    replier.send_multipart(reply, copy=False)
            # Acknowledged means recorded, on disk too with a history directory: while the disk
            # refuses, acknowledgements stop moving, so that runners keep what is not on disk.
            acknowledgements.paused = not self._write_journal(now)
            ack = acknowledgements.due(now, full=full)
            full = False
            if ack is not None:
                acker.send(protocol.ack_frame(ack))
                acks_sent += 1
                resend_requests += len(ack.resend)
            if now >= snapshot_at:  # for stats(): other threads never touch the history itself
                counters = history.counters()
                with self._stats_lock:
                    self._stats.history, self._stats.acks_sent = counters, acks_sent
                    self._stats.resend_requests = resend_requests
                if store is not None:
                    store.snapshot()
                snapshot_at = now + SNAPSHOT_INTERVAL
            if upstream is not None:  # what is new goes up too; never blocks (upstream.py)
                upstream.read()
                upstream.pump(history, now, heard)
            heard.clear()
            if captured in ready and recorded < _FEW and replier not in ready and upstream is None:
                # A few messages at a time (a playbook's pace, or 10,000 events/s): let more come before the next
                # look.  Each wake-up costs more than the messages it records, and this thread competes with the
                # forwarding (proxy, libzmq's I/O) for the cores.  Never when more came: near its capacity (a flood)
                # every pause would be throughput lost, the capture socket's queue would overflow, and runners
                # would keep, then push out, what the history did not get to acknowledge.  (Not on an edge
                # broker: this thread forwards upstream, and the pause would add to every hop.)
                time.sleep(_PAUSE)
        history.close()

    def _write_journal(self, now: float) -> bool:
        """Hand the history's new records to the disk; False while it refuses (said once, retried)."""
        journal = self.history.journal
        if journal is None:
            return True
        if not self.history_writable and now < self._disk_retry_at:
            return False
        given_up = journal.given_up
        try:
            self.history.sync()
        except OSError as exc:
            if self.history_writable:
                log.error("history: cannot write to %s (--history-dir): %s; serving from memory, acknowledging "
                          "nothing new until it is written (runners keep it); retrying every %g s",
                          self.history_dir, exc.strerror or exc, DISK_RETRY)
                self.history_writable = False
                self._disk_given_up = given_up
            self._disk_retry_at = now + DISK_RETRY
            return False
        if not self.history_writable:
            lost = journal.given_up - self._disk_given_up
            log.warning("history: writing to %s (--history-dir) again; acknowledging again%s", self.history_dir,
                        f"; {lost} older records beyond --history-bytes were not written" if lost else "")
            self.history_writable = True
        return True

    def _ack(self, acks: dict[str, int]) -> bytes:
        return protocol.ack_frame(protocol.Ack(self.name, self._token, acks))

    def _read_proxy_counters(self, reply: list[bytes]) -> None:
        values = [int.from_bytes(frame, "little") for frame in reply]
        # frontend: msgs in, bytes in, msgs out, bytes out; then the same for the backend.
        # libzmq's proxy counts message parts (frames); a protocol message is 3 frames.
        with self._stats_lock:
            self._stats.messages_in, self._stats.bytes_in = values[0] // _FRAMES, values[1]
            self._stats.messages_out, self._stats.bytes_out = values[6] // _FRAMES, values[7]


def run_forever(broker: Broker, stats_interval: float | None, report: Callable[[str], None],
                stop: threading.Event) -> None:
    """Serve until ``stop`` is set, printing statistics every ``stats_interval`` seconds."""
    last, last_time = broker.stats(), time.monotonic()
    while not stop.wait(stats_interval or 3600):
        if not stats_interval:
            continue
        now, current = time.monotonic(), broker.stats()
        elapsed = now - last_time
        report(f"in {current.messages_in - last.messages_in} msgs {current.bytes_in - last.bytes_in} B, "
               f"out {current.messages_out - last.messages_out} msgs {current.bytes_out - last.bytes_out} B "
               f"in {elapsed:.1f}s; subscribers {current.subscribers}; "
               f"total in {current.messages_in} out {current.messages_out}")
        last, last_time = current, now
