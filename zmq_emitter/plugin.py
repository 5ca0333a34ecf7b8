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
- What the buffer bound forces out is counted and reported in one log line at exit.
- At interpreter exit the buffer is flushed and the socket lingers up to
  ``runner_zmq_linger`` ms, so the final status of ``ansible-runner run`` arrives.
"""
from __future__ import annotations

import atexit
import collections
import logging
import os
import secrets
import threading
import time
from typing import Any

import zmq

from . import protocol
from .config import Config, ConfigError, load

log = logging.getLogger("zmq_emitter")

_POLL_INTERVAL = 0.01  # seconds between looks at the socket's incoming subscriptions


class Publisher:
    """One XPUB socket with its sequence numbers and its buffer.  Thread-safe.

    >>> pub = Publisher(Config(bind=("tcp://127.0.0.1:*",)))
    >>> pub.send(b"status/run-1/starting", pub.header_prefix("json"), b'{"status":"starting"}')
    >>> pub.close()
    """

    def __init__(self, config: Config):
        self.id = secrets.token_hex(8)
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._seq = 0
        self._linger_ms = config.linger
        self._max_messages = config.buffer_messages
        self._max_bytes = config.buffer_bytes
        self._pending: collections.deque = collections.deque()  # frames no peer took yet
        self._pending_bytes = 0
        self.dropped = 0  # messages pushed out of the full buffer, never sent
        self._subscriptions: set[bytes] = set()
        self._next_poll = 0.0
        self._closed = False

        self._context = zmq.Context()  # our own: never the host application's Context.instance()
        sock = self._context.socket(zmq.XPUB)
        sock.setsockopt(zmq.XPUB_NODROP, 1)   # full queue -> EAGAIN, never a silent drop
        sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # see every (re)subscription, e.g. a restarted broker's
        sock.setsockopt(zmq.SNDHWM, config.sndhwm)
        sock.setsockopt(zmq.LINGER, config.linger)
        self._socket = sock
        try:
            for endpoint in config.url:
                sock.connect(endpoint)
            for endpoint in config.bind:
                sock.bind(endpoint)
        except zmq.ZMQError as exc:
            self._abandon()
            raise ConfigError(f"zmq_emitter: cannot use endpoint from runner_zmq_url/runner_zmq_bind "
                              f"{config.url + config.bind}: {exc}") from None
        self.last_endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT) if config.bind else None
        atexit.register(self.close)

    def header_prefix(self, codec: str) -> bytes:
        return protocol.header_prefix(codec, self.id)

    # -- the hot path -------------------------------------------------------------------

    def send(self, topic: bytes, header_prefix: bytes, payload: bytes) -> None:
        """Publish one message, or keep it in the buffer if no peer can take it now.  Never blocks."""
        with self._lock:
            self._seq += 1
            frames = (topic, header_prefix + b"%d}" % self._seq, payload)
            now = time.monotonic()
            if now >= self._next_poll:
                self._next_poll = now + _POLL_INTERVAL
                self._read_subscriptions()
            if self._pending or not self._subscriptions:
                self._keep(frames)
                self._flush()
                return
            try:
                self._socket.send_multipart(frames, zmq.NOBLOCK)
            except zmq.ZMQError:  # EAGAIN: the peer's queue is full; ETERM etc.: keep it
                self._keep(frames)

    # -- everything off the hot path ----------------------------------------------------

    def _read_subscriptions(self) -> None:
        """Apply the (un)subscriptions peers sent since the last look."""
        sock = self._socket
        try:
            while sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                frame = sock.recv(zmq.NOBLOCK)
                if frame[:1] == b"\x01":
                    self._subscriptions.add(frame[1:])
                elif frame[:1] == b"\x00":
                    self._subscriptions.discard(frame[1:])
        except zmq.ZMQError:
            pass

    def _keep(self, frames: tuple) -> None:
        self._pending.append(frames)
        self._pending_bytes += len(frames[2])
        while len(self._pending) > self._max_messages or self._pending_bytes > self._max_bytes:
            self._pending_bytes -= len(self._pending.popleft()[2])
            self.dropped += 1

    def _flush(self) -> None:
        """Send buffered messages, oldest first, while peers take them."""
        if not self._subscriptions:
            return
        pending, sock = self._pending, self._socket
        try:
            while pending:
                sock.send_multipart(pending[0], zmq.NOBLOCK)
                self._pending_bytes -= len(pending.popleft()[2])
        except zmq.ZMQError:
            pass

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the buffer to empty; True if it did."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                self._read_subscriptions()
                self._flush()
                if not self._pending:
                    return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._socket.poll(min(remaining, 0.01) * 1000)

    def close(self) -> None:
        """Flush (bounded by the linger setting), close the socket and report what was lost."""
        if self._closed or os.getpid() != self._pid:
            return  # closed already, or a forked child: the parent's socket is not ours
        start = time.monotonic()
        self.flush(self._linger_ms / 1000)
        with self._lock:
            self._closed = True
            undelivered = len(self._pending)
            remaining_ms = max(0, int(self._linger_ms - (time.monotonic() - start) * 1000))
            self._socket.close(linger=remaining_ms)
            self._context.term()
        if self.dropped or undelivered:
            log.warning("zmq_emitter: publisher %s lost %d of %d messages: %d pushed out of the full buffer "
                        "(runner_zmq_buffer_messages/_bytes), %d still undelivered at exit (no peer within "
                        "runner_zmq_linger=%d ms)", self.id, self.dropped + undelivered, self._seq,
                        self.dropped, undelivered, self._linger_ms)

    def _abandon(self) -> None:
        self._closed = True
        self._socket.close(linger=0)
        self._context.term()


# ---------------------------------------------------------------------------------------
# The handlers and the per-process state behind them


class _Route:
    """What one runner configuration resolved to: its publisher and codec, or nothing."""

    __slots__ = ("runner_config", "publisher", "encode", "header_prefix")

    def __init__(self, runner_config: Any, publisher: Publisher | None, codec: str):
        self.runner_config = runner_config  # kept to tell a reused id() from the same object
        self.publisher = publisher
        self.encode = protocol.ENCODERS[codec]
        self.header_prefix = publisher.header_prefix(codec) if publisher else b""


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
        route = _routes[id(runner_config)] = _Route(runner_config, publisher, config.codec)
        return route


def _topic(kind: str, ident: Any, name: Any) -> bytes:
    key = (kind, ident, name)
    topic = _topics.get(key)
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
        route.publisher.send(topic, route.header_prefix, route.encode(data))


def _forget_after_fork() -> None:
    # The child must never touch its parent's sockets; it builds its own on first use.
    # A lock another thread held at the fork would stay held forever in the child.
    global _resolve_lock
    _routes.clear()
    _publishers.clear()
    _resolve_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)
