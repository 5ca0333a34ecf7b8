"""The ansible-runner plugin: publish every status change and every Ansible event on ZeroMQ.

ansible-runner finds this module through the entry point ``zmq`` in the group
``ansible_runner.plugins`` and calls, synchronously and for every run of the process::

    status_handler(runner_config, {"status": "running", "runner_ident": "..."})
    event_handler(runner_config, {"event": "runner_on_ok", "runner_ident": "...", ...})

Enable it with ``RUNNER_ZMQ_URL=tcp://127.0.0.1:5557 ansible-runner run ...`` or the
key ``runner_zmq_url`` in ``env/settings`` (all settings: ``config.py`` and the README).

Design, because every playbook pays for what this module costs:

- One ZeroMQ context and one socket per process (per distinct transport setting),
  made on first use, shared by every run and thread, guarded by a lock so that
  multipart messages never interleave.  A forked child makes its own.
- The socket is an XPUB: a PUB that also tells us when a peer has subscribed.  A PUB
  drops what it sends before the peer's subscription has arrived (the slow joiner), so
  until a subscription is there, messages wait in the plugin's own bounded buffer.
  With ``XPUB_NODROP`` a full libzmq queue makes ``send`` fail at once instead of
  dropping silently; the message then waits in that buffer too.  Nothing blocks the run.
- A broker with history acknowledges what it received (``ACK`` frames upstream); the
  plugin then keeps sent messages until acknowledged and sends the rest again, in order,
  when a broker comes back after a restart (docs/reliability.md: at least once).  That
  state machine is ``outbox.Outbox``, without sockets; this module does the I/O around it.
- A daemon thread flushes the buffer while anything is in it, so nothing waits for the
  next event.
- An event larger than a broker accepts is sent cut (oversize.py): one comparison per
  message on the hot path.
- What the buffer bound forces out is counted and reported in one log line at exit, and
  in the closing report ``publisher/<id>/closed`` that the broker records.
- At interpreter exit the buffer is flushed for up to ``runner_zmq_linger`` ms (or
  ``runner_zmq_reconnect_wait`` ms for a broker that acknowledged before and is away), so
  the final status of ``ansible-runner run`` arrives; what is still not acknowledged is
  written to the spool (spool.py), which the next process to the same destination sends
  first, before its own messages.
"""
from __future__ import annotations

import atexit
import logging
import os
import secrets
import sys
import threading
import time
from typing import Any, Callable

import zmq
from zmq.utils.monitor import recv_monitor_message

from .. import _threads, protocol, security
from . import redact, spool
from .config import Config, ConfigError, load, spool_directory
from .outbox import Entry, Outbox

log = logging.getLogger("zmq_emitter")

_POLL_INTERVAL = 0.01  # seconds between looks at the socket's incoming subscriptions
# Seconds the hot path leaves a full socket alone: libzmq takes sends again only once its reader has
# drained half the queue (a few ms), and every refused try would cost an exception.
_RETRY_INTERVAL = 0.001
_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)  # plain ints: IntFlag arithmetic per frame is Python-level
_LAST = int(zmq.NOBLOCK)
_send = zmq.backend.Socket.send  # the Cython layer under zmq.Socket.send (copies, never zero-copy)
_monotonic = time.monotonic
_HANDSHAKE_FAILED = {zmq.EVENT_HANDSHAKE_FAILED_AUTH: "refused this runner's CURVE key (is its public key in the "
                                                      "broker's --publisher-keys directory?)",
                     zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "failed the CURVE handshake (is runner_zmq_curve_server_key "
                                                          "the broker's public key?)",
                     zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "failed the CURVE handshake"}
_HANDSHAKE_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                     | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
_MAX_BACKOFF = 30.0  # seconds between attempts to a broker that refused the handshake, at most
# Kept messages, freed when acknowledged while new ones come, leave glibc's heap in pieces it does not give
# back (a process making 1,000,000 calls at full speed grew to ~700 MiB for a buffer of at most 64 MiB, 40 MiB
# after malloc_trim): the flush thread hands freed memory back each time this many payload bytes were let go,
# at most every _TRIM_INTERVAL seconds (each trim walks the heap: ~1 ms for a small one).
_TRIM_AFTER = 8 * 2**20
_TRIM_INTERVAL = 0.05
_entry = tuple.__new__  # Entry(...) without NamedTuple's Python-level __new__: half the cost on the hot path


class Publisher:
    """One XPUB socket, its outbox (outbox.py) and the thread that flushes it.  Thread-safe.

    >>> pub = Publisher(Config(bind=("tcp://127.0.0.1:*",)))
    >>> pub.send(b"status/run-1/starting", pub.header_prefix("json"), b'{"status":"starting"}')
    >>> pub.close()
    """

    def __init__(self, config: Config):
        self.id = secrets.token_hex(8)
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._linger_ms = config.linger
        self._reconnect_wait_ms = config.reconnect_wait
        self._outbox = Outbox(self.id, max_messages=config.buffer_messages, max_bytes=config.buffer_bytes,
                              max_message_size=config.max_message_size, warn=_say)
        self._next_poll = 0.0
        self._retry_at = 0.0  # the socket refused a send: the hot path only buffers until then
        self._trim_at = 0.0  # the flush thread hands freed memory back no sooner than this
        self._closed = False
        self._troubles: set = set()  # socket errors said once
        self._awaiting_broker = False  # at exit: a broker that acknowledged before was away

        self._context = zmq.Context()  # our own: never the host application's Context.instance()
        sock = self._context.socket(zmq.XPUB)
        sock.setsockopt(zmq.XPUB_NODROP, 1)   # full queue -> EAGAIN, never a silent drop
        sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # see every (re)subscription, e.g. a restarted broker's
        # Queue only to live connections: when a broker goes away its queue goes with it and
        # the plugin's own buffer (re)sends, in order, what the broker did not acknowledge.
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.SNDHWM, config.sndhwm)
        sock.setsockopt(zmq.LINGER, config.linger)
        if config.heartbeat:
            # A broker whose host is cut off keeps its TCP connection open for many minutes: its
            # queue fills to SNDHWM and then, with XPUB_NODROP, every send fails, the other brokers
            # of a redundant pair starved with it.  Heartbeats drop such a connection; the broker
            # is then away, and gets again what it did not acknowledge when it is back.
            sock.setsockopt(zmq.HEARTBEAT_IVL, config.heartbeat)
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3 * config.heartbeat)
            sock.setsockopt(zmq.HEARTBEAT_TTL, 3 * config.heartbeat)  # the broker drops its end likewise
        self._socket = sock
        self._handshakes: zmq.Socket | None = None
        self._refused: dict[str, float] = {}   # endpoint -> when to connect again
        self._backoff: dict[str, float] = {}   # endpoint -> seconds to wait after its next refusal
        try:
            if config.curve_server_key:  # CURVE client of the broker (security.py)
                security.curve_client(sock, config.curve_server_key, config.curve_key_pair)
                # libzmq gives up for good on a connection whose CURVE handshake failed (a key the
                # broker does not list): watch for it, say it once, connect again with a back-off.
                self._handshakes = sock.get_monitor_socket(_HANDSHAKE_EVENTS)
            for endpoint in config.url:
                sock.connect(endpoint)
            for endpoint in config.bind:
                sock.bind(endpoint)
                security.restrict_ipc(sock.getsockopt_string(zmq.LAST_ENDPOINT), config.ipc_mode)
        except security.SecurityError as exc:
            self._abandon()
            raise ConfigError(f"zmq_emitter: runner_zmq_ipc_mode/runner_zmq_curve_*: {exc}") from None
        except zmq.ZMQError as exc:
            self._abandon()
            raise ConfigError(f"zmq_emitter: cannot use endpoint from runner_zmq_url/runner_zmq_bind "
                              f"{config.url + config.bind}: {exc}") from None
        self.last_endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT) if config.bind else None
        self._spool: spool.Spool | None = None
        self.claims: list[spool.Claim] = []  # spooled messages of earlier processes, sent before ours
        self.spooled: list[tuple[str, int]] = []  # at close: (publisher, messages) written to the spool
        directory = spool_directory(config.spool)
        if directory is not None and config.url:  # (bind mode has no destination to come back to)
            self._spool = spool.Spool(directory, config.url, max_messages=config.spool_messages,
                                      max_bytes=config.spool_bytes)
            try:
                self.claims = self._spool.claim()
                for claim in self.claims:
                    self._outbox.adopt(claim.pub, claim.entries, claim.last)
            except Exception as exc:  # whatever is in those files, the run goes on (what was claimed is
                # taken back by a later process once this one is gone)
                _say(f"zmq_emitter: cannot take over the spool in {self._spool.directory}: {exc!r}")
                self._outbox = Outbox(self.id, max_messages=config.buffer_messages, max_bytes=config.buffer_bytes,
                                      max_message_size=config.max_message_size, warn=_say)
                self.claims = []
            for note in self._spool.notes:
                _say(note)
        # Buffered messages must not wait for the next event (a long task, the last run of a
        # long-lived process): a daemon thread flushes them and reads acknowledgements while
        # anything is buffered, and sleeps otherwise.
        self._buffered = threading.Event()
        _threads.thread(self._flush_in_background, "zmq-emitter-flush").start()
        if not self._outbox.settled:  # spooled messages taken over
            self._buffered.set()
        atexit.register(self.close)

    def header_prefix(self, codec: str) -> bytes:
        return protocol.header_prefix(codec, self.id)

    @property
    def dropped(self) -> int:
        """Own messages pushed out of the full buffer before they were ever sent."""
        return self._outbox.own.dropped

    @property
    def unconfirmed(self) -> int:
        """Own messages pushed out of the full buffer after sending, never acknowledged."""
        return self._outbox.own.unconfirmed

    @property
    def truncated(self) -> int:
        """Own messages sent cut, being larger than the limit (oversize.py)."""
        return self._outbox.own.truncated

    @property
    def _acknowledging(self) -> bool:  # read by tests/test_plugin.py
        return self._outbox.retaining

    # -- the hot path -------------------------------------------------------------------

    def send(self, topic: bytes, header_prefix: bytes, payload: bytes) -> None:
        """Publish one message, or keep it in the buffer if no peer can take it now.  Never blocks."""
        with self._lock:
            box = self._outbox
            seq = box.seq = box.seq + 1  # the outbox's counter, stamped where the header is made
            header = header_prefix + b"%d}" % seq
            if len(payload) > box.limit:  # larger than a broker accepts: sent cut (oversize.py)
                cut = box.cut(_entry(Entry, (seq, topic, header, payload)))
                if cut is None:
                    return
                payload = cut.payload
            now = _monotonic()
            if now >= self._next_poll:
                self._next_poll = now + _POLL_INTERVAL
                self._read_incoming()
            if box.waiting or not box.subscribed:  # (closed: never subscribed)
                self._keep(_entry(Entry, (seq, topic, header, payload)))
                if now >= self._retry_at:
                    self._flush()
                return
            sock = self._socket
            try:
                # Three plain sends through pyzmq's Cython layer: its Python wrapper and send_multipart
                # cost more than libzmq spends sending.  libzmq checks the high-water mark on whole
                # messages, so a message whose first frame was accepted is accepted whole.
                _send(sock, topic, _MORE)
                _send(sock, header, _MORE)
                _send(sock, payload, _LAST)
            except zmq.Again:  # the peer's queue is full (XPUB_NODROP): it waits
                self._keep(_entry(Entry, (seq, topic, header, payload)))
                self._retry_at = now + _RETRY_INTERVAL
                return
            except zmq.ZMQError as exc:
                self._keep(_entry(Entry, (seq, topic, header, payload)))
                self._trouble(exc)
                return
            if box.retaining and box.retain(_entry(Entry, (seq, topic, header, payload))):
                self._buffered.set()  # the first one: the flush thread reads acknowledgements from now on

    # -- everything off the hot path ----------------------------------------------------

    def _read_incoming(self) -> None:
        """Hand the outbox the (un)subscriptions and acknowledgements peers sent since the last look."""
        sock, box = self._socket, self._outbox
        try:
            while sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                box.upstream(sock.recv(zmq.NOBLOCK))
        except zmq.Again:
            pass
        except zmq.ZMQError as exc:
            self._trouble(exc)

    def _send_frames(self, entry: Entry) -> None:
        sock = self._socket  # as in send(), for a buffered entry
        _send(sock, entry.topic, _MORE)
        _send(sock, entry.header, _MORE)
        _send(sock, entry.payload, _LAST)

    def _flush_in_background(self) -> None:
        while not self._closed:
            self._buffered.wait()
            if self._closed:
                return
            self._hand_memory_back()
            with self._lock:
                if self._closed:
                    return
                self._read_incoming()
                self._flush()
                self._watch_handshakes()
                if self._outbox.settled:
                    self._buffered.clear()
            time.sleep(_POLL_INTERVAL)

    def _hand_memory_back(self) -> None:
        """malloc_trim once enough was freed; without the lock, which handlers sending at full speed may hold
        for long stretches (a count read or reset a little off is harmless: it only moves the next trim)."""
        box, now = self._outbox, time.monotonic()
        if box.freed >= _TRIM_AFTER and now >= self._trim_at:
            box.freed, self._trim_at = 0, now + _TRIM_INTERVAL
            _malloc_trim(0)

    def _keep(self, entry: Entry) -> None:
        box = self._outbox
        if box.keep(entry):
            self._buffered.set()
        elif box.closed and box.after_close == 1:
            _say(f"zmq_emitter: publisher {self.id} is closed (process exit); messages handed to it from now "
                 "on are dropped")

    def _flush(self) -> None:
        """Send buffered messages, oldest first, while peers take them."""
        box = self._outbox
        if not box.subscribed:
            return
        try:
            while (entry := box.next_unsent()) is not None:
                self._send_frames(entry)
                box.was_sent()
        except zmq.Again:
            self._retry_at = _monotonic() + _RETRY_INTERVAL
        except zmq.ZMQError as exc:
            self._trouble(exc)

    def _watch_handshakes(self) -> None:
        """Connect again, after a back-off, to a broker that refused the CURVE handshake (said once)."""
        monitor = self._handshakes
        if monitor is None:
            return
        now = time.monotonic()
        while monitor.poll(0):
            event = recv_monitor_message(monitor)
            endpoint = event["endpoint"].decode(errors="replace")
            if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._backoff.pop(endpoint, None)
            elif event["event"] in _HANDSHAKE_FAILED and endpoint not in self._refused:
                backoff = self._backoff.get(endpoint)
                if backoff is None:
                    _say(f"zmq_emitter: publisher {self.id}: the broker at {endpoint} "
                         f"{_HANDSHAKE_FAILED[event['event']]}; trying again every {_MAX_BACKOFF:g} s at most")
                    backoff = 1.0
                self._refused[endpoint] = now + backoff
                self._backoff[endpoint] = min(backoff * 2, _MAX_BACKOFF)
        for endpoint, when in list(self._refused.items()):
            if now >= when:
                del self._refused[endpoint]
                try:
                    self._socket.disconnect(endpoint)
                except zmq.ZMQError:
                    pass  # gone already with the refused connection
                self._socket.connect(endpoint)

    def _trouble(self, exc: zmq.ZMQError) -> None:
        """A socket error other than a full queue: the messages wait; say it once per kind of error."""
        if exc.errno not in self._troubles:
            self._troubles.add(exc.errno)
            _say(f"zmq_emitter: publisher {self.id}: socket error {exc} (errno {exc.errno}); messages wait "
                 "in the buffer")

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until everything is sent (and acknowledged, by a broker that does)."""
        deadline = time.monotonic() + timeout
        return self._wait(lambda: deadline)

    def _settle(self, start: float) -> bool:
        """``flush`` for the exit: up to ``runner_zmq_linger`` after ``start``; up to
        ``runner_zmq_reconnect_wait`` once a broker that has acknowledged before was seen away."""
        linger_end = start + self._linger_ms / 1000
        reconnect_end = start + self._reconnect_wait_ms / 1000

        def deadline() -> float:
            # Sticky: a broker that came back still has to acknowledge what it gets again.
            self._awaiting_broker = self._awaiting_broker or self._outbox.awaits_broker()
            return max(linger_end, reconnect_end) if self._awaiting_broker else linger_end

        return self._wait(deadline)

    def _wait(self, deadline: Callable[[], float]) -> bool:
        """Send, read acknowledgements, until nothing is left (True) or ``deadline()`` (asked under the lock) passes."""
        while True:
            with self._lock:
                self._read_incoming()
                self._flush()
                self._watch_handshakes()
                if self._outbox.settled:
                    return True
                end = deadline()
            remaining = end - time.monotonic()
            if remaining <= 0:
                return False
            # A sleep, not a poll of the socket: a ZeroMQ socket must never be used by two threads at once,
            # and the flush thread (or a handler's send) may hold it now.  (A poll here, outside the lock,
            # let two threads process the socket's commands together: libzmq crashed the run with SIGSEGV
            # when a broker's connection was being re-established at exit.)
            time.sleep(min(remaining, 0.005))

    def close(self) -> None:
        """Flush, send the closing report, flush again, close, and report what did not get through.

        The waits together last up to ``runner_zmq_linger`` ms, or ``runner_zmq_reconnect_wait``
        ms while a broker that acknowledged before is away.  The report comes after the first
        wait, so that its ``buffered`` says what was still not done then.
        """
        if self._closed or os.getpid() != self._pid:
            return  # closed already, or a forked child: the parent's socket is not ours
        start = time.monotonic()
        box, own = self._outbox, self._outbox.own
        self._settle(start)
        with self._lock:
            published = box.seq
            report = {"publisher": self.id, "published": published, "dropped": own.dropped,
                      "unconfirmed": own.unconfirmed, "truncated": own.truncated,
                      "buffered": len(own.sent) + len(own.unsent)}
        if published:
            self.send(protocol.topic("publisher", self.id, "closed"), self.header_prefix("json"),
                      protocol.encode_json(report))
            self._settle(start)
        with self._lock:
            self._closed = True
            box.close()
            self._buffered.set()  # lets the flush thread see it and end
            leftovers = [(stream, stream.pending()) for stream in box.streams]
            # What libzmq still queues (sent to a peer that does not acknowledge) gets what is
            # left of the linger time to go out.
            remaining_ms = max(0, int(self._linger_ms - (time.monotonic() - start) * 1000))
            if self._handshakes is not None:
                self._socket.disable_monitor()
                self._handshakes.close(0)
            self._socket.close(linger=remaining_ms)
            self._context.term()
        _forget(self)
        if self._spool is not None:
            try:
                failed = set()
                for stream, pending in leftovers:
                    written, notes = self._spool.store(stream.pub, pending,
                                                       last=box.seq if stream is own else stream.last)
                    for note in notes:
                        _say(note)
                    if not written:
                        failed.add(stream.pub)
                    elif pending:
                        self.spooled.append((stream.pub, len(pending)))
                # A file taken over is removed only once what it still held is stored again; if that
                # failed (a full disk), the file goes back as it was: nothing already safe is lost.
                self._spool.release([claim for claim in self.claims if claim.pub not in failed])
                self._spool.give_back([claim for claim in self.claims if claim.pub in failed])
            except Exception as exc:  # never an exception at exit; what was claimed is taken back later
                _say(f"zmq_emitter: publisher {self.id}: spooling in {self._spool.directory} failed: {exc!r}")
        self._report(published, leftovers)

    def spool_report(self) -> list[tuple[str, int, int, int]]:
        """After ``close``: for each publisher taken over from the spool, (pub, messages taken,
        acknowledged or delivered, spooled again)."""
        again = dict(self.spooled)
        report = []
        for claim in self.claims:
            stream = next(s for s in self._outbox.streams if s.pub == claim.pub)
            left = again.get(claim.pub, 0)
            report.append((claim.pub, len(claim.entries), len(claim.entries) - left - stream.dropped
                           - stream.unconfirmed, left))
        return report

    def _report(self, published: int, leftovers: list) -> None:
        """One line on stderr (or the log) for each kind of trouble at exit."""
        box, own = self._outbox, self._outbox.own
        pending = dict((stream.pub, entries) for stream, entries in leftovers)[self.id]
        undelivered = sum(1 for entry in own.unsent if entry.seq <= published)
        unacknowledged = sum(1 for entry in own.sent if entry.seq <= published)
        if self.id in dict(self.spooled):  # else the spool is off, or could not be written: the loss is said
            if pending:
                waited = (f"runner_zmq_reconnect_wait={self._reconnect_wait_ms} ms for the broker to come back"
                          if self._awaiting_broker else f"runner_zmq_linger={self._linger_ms} ms")
                _say(f"zmq_emitter: publisher {self.id}: {len(pending)} messages not acknowledged by exit (waited "
                     f"{waited}) are spooled in {self._spool.directory}: the next process publishing there sends "
                     "them first (or `zmq-emitter spool --send`)")
            undelivered = unacknowledged = 0
        if own.dropped or undelivered:
            _say("zmq_emitter: publisher %s lost %d of %d messages: %d pushed out of the full buffer "
                 "(runner_zmq_buffer_messages/_bytes), %d still undelivered at exit (no peer within "
                 "runner_zmq_linger=%d ms)" % (self.id, own.dropped + undelivered, published,
                                               own.dropped, undelivered, self._linger_ms))
        if own.unconfirmed or unacknowledged:
            _say("zmq_emitter: publisher %s: %d of %d messages were sent but never acknowledged by the "
                 "broker (%d pushed out of the buffer, %d at exit); they may or may not have arrived"
                 % (self.id, own.unconfirmed + unacknowledged, published, own.unconfirmed, unacknowledged))
        if own.truncated:
            _say(f"zmq_emitter: publisher {self.id}: {own.truncated} of {published} messages were larger than "
                 f"{box.limit} bytes (runner_zmq_max_message_size, or a broker's --max-message-size) and were "
                 f"sent cut, marked {protocol.TRUNCATED}")
        for stream in box.streams[:-1]:  # taken over from the spool
            if stream.dropped or stream.unconfirmed:
                _say(f"zmq_emitter: spooled publisher {stream.pub}: {stream.dropped} messages pushed out of the full "
                     f"buffer unsent (lost), {stream.unconfirmed} sent but pushed out before any acknowledgement")

    def _abandon(self) -> None:
        self._closed = True
        if self._handshakes is not None:
            self._handshakes.close(0)
        self._socket.close(linger=0)
        self._context.term()


def _find_malloc_trim() -> Callable[[int], Any]:
    """glibc's malloc_trim (hands free heap pages back to the OS), or a no-op where there is none (musl, macOS)."""
    try:
        import ctypes
        return ctypes.CDLL(None).malloc_trim  # a ctypes call releases the GIL while it runs
    except (OSError, AttributeError):
        return lambda pad: 0


_malloc_trim = _find_malloc_trim()


def _say(message: str) -> None:
    """A warning: logged, or on stderr if logging is muted.

    `ansible-runner run` mutes the root logger (level 99, a NullHandler), which would hide
    the one line saying that messages were lost.
    """
    if log.isEnabledFor(logging.WARNING):
        log.warning("%s", message)
    else:
        print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------
# The handlers and the per-process state behind them


class _Route:
    """What one runner configuration resolved to: its publisher and codec, or nothing."""

    __slots__ = ("runner_config", "publisher", "encode", "header_prefix", "scrub")

    def __init__(self, runner_config: Any, publisher: Publisher | None, config: Config):
        self.runner_config = runner_config  # kept to tell a reused id() from the same object
        pattern = redact.secret_name_pattern(config.redact_names)
        # Only the `starting` status carries the env; it gets a redacted copy (redact.py).
        self.scrub = lambda data: redact.redact_status(data, redact=config.redact, send_env=config.send_env,
                                                         pattern=pattern)
        self.publisher = publisher
        self.encode = protocol.ENCODERS[config.codec]
        self.header_prefix = publisher.header_prefix(config.codec) if publisher else b""


_routes: dict[int, _Route] = {}        # id(runner_config) -> _Route
_publishers: dict[tuple, Publisher] = {}  # Config.transport() -> Publisher
_topics: dict[tuple, bytes] = {}       # (kind, ident, name) -> topic frame
_resolve_lock = threading.Lock()


def _resolve(runner_config: Any) -> _Route:
    config = load(getattr(runner_config, "settings", None))
    with _resolve_lock:
        publisher = None
        if config.active:
            publisher = _publishers.get(config.transport())
            if publisher is None:
                publisher = _publishers[config.transport()] = Publisher(config)
        if len(_routes) > 256:  # runner configs come and go in long-lived processes
            _routes.clear()
        route = _routes[id(runner_config)] = _Route(runner_config, publisher, config)
        return route


def _forget(publisher: Publisher) -> None:
    """A closed publisher is not handed out again: a later run of this process gets a new one."""
    with _resolve_lock:
        for key, value in list(_publishers.items()):
            if value is publisher:
                del _publishers[key]


def _topic(kind: str, ident: Any, name: Any) -> bytes:
    key = (kind, ident, name)
    try:
        topic = _topics.get(key)
    except TypeError:  # an ident or name that is not hashable (a list...): no cache, never an exception
        return protocol.topic(kind, "" if ident is None else str(ident), "" if name is None else str(name))
    if topic is None:
        if len(_topics) > 4096:
            _topics.clear()
        topic = _topics[key] = protocol.topic(kind, "" if ident is None else str(ident),
                                              "" if name is None else str(name))
    return topic


def event_handler(runner_config: Any, data: dict) -> None:
    """Publish one Ansible event (topic ``event/<ident>/<event>``).  ansible-runner calls this."""
    route = _routes.get(id(runner_config))
    if route is None or route.runner_config is not runner_config:
        route = _resolve(runner_config)
    if route.publisher is not None:
        topic = _topic("event", data.get("runner_ident"), data.get("event"))
        route.publisher.send(topic, route.header_prefix, route.encode(data))


def status_handler(runner_config: Any, data: dict) -> None:
    """Publish one status change (topic ``status/<ident>/<status>``).  ansible-runner calls this."""
    route = _routes.get(id(runner_config))
    if route is None or route.runner_config is not runner_config:
        route = _resolve(runner_config)
    if route.publisher is not None:
        topic = _topic("status", data.get("runner_ident"), data.get("status"))
        if "env" in data:  # the `starting` status: publish a redacted copy, never touch data
            data = route.scrub(data)
        route.publisher.send(topic, route.header_prefix, route.encode(data))


def _forget_after_fork() -> None:
    # The child must never touch its parent's sockets; it builds its own on first use.
    # A lock another thread held at the fork would stay held forever in the child.
    global _resolve_lock
    _routes.clear()
    _publishers.clear()
    _resolve_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)
