"""The broker's history on NATS JetStream (``zmq-emitter broker --jetstream nats://HOST:PORT[,...]``).

Every message the broker's history records is stored in a JetStream stream too, and the
broker acknowledges a message to its runner only once JetStream has acknowledged storing
it: with a stream of three replicas, "acknowledged" means stored on a quorum of machines.

    zmq-emitter broker --jetstream nats://nats-1:4222,nats://nats-2:4222,nats://nats-3:4222 \\
        --jetstream-replicas 3 --jetstream-max-age 30d

Stored messages:

- subject ``<prefix>.<ident>.<kind>.<name>.<pub>`` (default prefix ``zmq-emitter``), each part one
  subject token (``token``: bytes other than ``A-Z a-z 0-9 - _`` as ``%XX``, so dots, ``*``, ``>``
  and spaces in idents are safe; over ``MAX_TOKEN`` characters cut, with a digest), so that one run
  (``zmq-emitter.<ident>.>``), one kind, one event name or one publisher (``zmq-emitter.*.*.*.<pub>``)
  is read without scanning the stream (a consumer filtered on it: NATS's subject index);
- header ``Nats-Msg-Id: <pub>:<seq>``: JetStream stores a message once within the stream's
  duplicate window, whoever sends it again (a runner after a broker restart, the other broker
  of a redundant pair, an edge and its central broker);
- headers ``Zmq-Topic`` and ``Zmq-Header``: the protocol's topic and header frames as they came,
  ``%XX`` for ``%``, spaces, control and non-ASCII bytes (``header_value``); the data: the payload
  frame's bytes as they came.

Threads: the history thread (``Broker._run_history``) never waits on NATS.  ``JetStreamStore``
runs the asyncio NATS client in a thread of its own; the history thread hands it messages
(at most ``MAX_INFLIGHT`` not answered yet) and reads back, per publisher, what JetStream
acknowledged (``StoreLink``, sans-I/O, as ``upstream.UpstreamLink`` is for federation).  The
memory history is the buffer: while NATS is unreachable forwarding goes on, acknowledgements
to runners stop (they keep and spool), and when NATS is back the store catches up from the
memory history, oldest first.  The bounds: what the memory history forgot (``--history-bytes``,
``--history-runs``) before JetStream stored it is counted (``lost``) and logged with its
publisher and ``seq`` range, never silent; a message over NATS's ``max_payload`` is counted
(``too_large``), logged and passed over (``StoreLink.refused``), so that its publisher's later
messages are still stored and acknowledged.

Reading back: ``replay`` and ``fetch`` requests that the memory history cannot answer in
full (a run it never saw or forgot, messages it no longer holds) are answered from the stream
as well, without blocking the history thread.
"""
from __future__ import annotations

import asyncio
import bisect
import collections
import dataclasses
import hashlib
import logging
import os
import re
import ssl
import threading
import time
import urllib.parse
from concurrent.futures import Future
from typing import Callable, Iterable

import zmq

from .. import _threads, protocol
from .history import History, _in_seq_order, retained_in, tell_holdings

log = logging.getLogger("zmq_emitter.broker")

DEFAULT_STREAM = "ZMQ_EMITTER"
DEFAULT_PREFIX = "zmq-emitter"
MAX_INFLIGHT = 10_000   # messages handed to the NATS thread and not answered yet: the bounded queue
PUBLISH_TIMEOUT = 3.0   # seconds a publish waits for JetStream's acknowledgement before it is sent again
RETRY_AFTER = 1.0       # seconds after a failed publish before sending again (NATS down: not in a tight loop)
# A server that hangs (stopped, a full disk, a network that drops packets) keeps its TCP connection:
# without pings answered for this long twice, the client drops it and goes to another server (nats-py's
# default, 2 minutes twice, would hold every acknowledgement for 4 minutes).
PING_INTERVAL = 3
READ_BATCH = 200       # messages per request when a history request reads the stream (at most ~200 MiB in flight,
                       # within the client's 256 MiB of pending bytes a subscription)
READ_TIMEOUT = 10.0     # seconds a history request waits for the stream before the memory's answer goes out
# --max-message-size with --jetstream by default: NATS's default max_payload (1 MiB) less room for the headers
# (message id, topic and header frames), so that runners, told the limit by the broker's presence, cut larger
# events and every message they send can be stored.
JETSTREAM_MAX_MESSAGE_SIZE = 2**20 - 64 * 1024
HEADER_ROOM = 64 * 1024
MAX_TOKEN = 180        # characters of one subject token at most (``token``)
ENV_USER, ENV_PASSWORD, ENV_TOKEN = "ZMQ_EMITTER_NATS_USER", "ZMQ_EMITTER_NATS_PASSWORD", "ZMQ_EMITTER_NATS_TOKEN"

_PLAIN = re.compile(r"[A-Za-z0-9_-]+")
_SAFE_TOKEN = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def token(text: str) -> str:
    """``text`` as one NATS subject token: bytes other than ``A-Z a-z 0-9 - _`` as ``%XX``; empty as ``%``.

    A token longer than ``MAX_TOKEN`` characters is cut, and ``~`` and a digest of the whole text
    follow (``~`` is never in a token otherwise): a subject stays far below NATS's control line
    (4 KiB by default: a publish on a longer subject is refused and the connection closed).

    >>> token("run.1 *"), token("5a1e-77"), len(token("x" * 5000))
    ('run%2E1%20%2A', '5a1e-77', 180)
    """
    if _PLAIN.fullmatch(text) and len(text) <= MAX_TOKEN:
        return text
    if not text:
        return "%"
    escaped = "".join(chr(b) if b in _SAFE_TOKEN else "%%%02X" % b for b in text.encode())
    if len(escaped) <= MAX_TOKEN:
        return escaped
    head = escaped[:MAX_TOKEN - 33]
    head = head[:head.rfind("%")] if "%" in head[-2:] else head  # never half of a %XX
    return f"{head}~{hashlib.sha256(text.encode()).hexdigest()[:32]}"


def untoken(text: str) -> str | None:
    """The inverse of ``token``; None for a cut token (the text is then read from a stored message)."""
    if "~" in text:
        return None
    return "" if text == "%" else urllib.parse.unquote(text)


def subject(prefix: str, env: protocol.Envelope) -> str:
    """The subject a message is stored on: ``<prefix>.<ident>.<kind>.<name>.<pub>``."""
    return f"{prefix}.{token(env.ident)}.{env.kind}.{token(env.name)}.{token(env.publisher)}"


def header_value(frame: bytes) -> str:
    """A frame as a NATS header value: ``%``, spaces, control and non-ASCII bytes as ``%XX``."""
    return urllib.parse.quote(frame, safe="!\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~")


def frames_of(headers: dict | None, data: bytes | None) -> list[bytes] | None:
    """The protocol frames of a stored message; None if it is not one this module stored."""
    if not headers or "Zmq-Topic" not in headers or "Zmq-Header" not in headers:
        return None
    return [urllib.parse.unquote_to_bytes(headers["Zmq-Topic"]),
            urllib.parse.unquote_to_bytes(headers["Zmq-Header"]), data or b""]


# ---------------------------------------------------------------------------------------------
# Settings


@dataclasses.dataclass
class JetStreamSettings:
    """Where and how to store: the servers, the stream, its retention, and the credentials.

    Credentials never come from the command line: ``from_sources`` reads them from files and
    the environment (``ZMQ_EMITTER_NATS_USER`` / ``ZMQ_EMITTER_NATS_PASSWORD``, ``ZMQ_EMITTER_NATS_TOKEN``).

        >>> JetStreamSettings.from_sources(["nats://127.0.0.1:4222"], replicas=3).stream
        'ZMQ_EMITTER'
    """

    servers: list[str]
    stream: str = DEFAULT_STREAM
    prefix: str = DEFAULT_PREFIX
    replicas: int = 1
    max_age: float = 0.0            # seconds; 0: no limit
    max_bytes: int = -1             # -1: no limit
    duplicate_window: float = 600.0  # seconds: a message sent again within it is stored once
    user: str | None = None
    password: str | None = None
    token: str | None = None
    creds_file: str | None = None   # NKey/JWT credentials (.creds)
    tls_ca: str | None = None       # CA file: TLS to NATS

    @classmethod
    def from_sources(cls, servers: Iterable[str], *, env: dict | None = None, password_file: str | None = None,
                     token_file: str | None = None, **settings) -> "JetStreamSettings":
        """Settings from options and the environment; ValueError naming the option if one cannot be used."""
        env = os.environ if env is None else env
        servers = list(servers)
        for server in servers:
            parsed = urllib.parse.urlparse(server)
            if parsed.scheme not in ("nats", "tls") or not parsed.hostname or parsed.password or parsed.username:
                raise ValueError(f"--jetstream {server!r}: use nats://HOST:PORT (or tls://HOST:PORT), comma-separated; "
                                 f"credentials go in files or the environment ({ENV_USER}, {ENV_PASSWORD}, "
                                 f"{ENV_TOKEN}, --jetstream-creds), never on the command line")
        stream = settings.get("stream", DEFAULT_STREAM)
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,255}", stream or ""):
            raise ValueError(f"--jetstream-stream {stream!r}: letters, digits, - and _ only")
        prefix = settings.get("prefix", DEFAULT_PREFIX)
        if not re.fullmatch(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*", prefix or "") or len(prefix) > 100:
            raise ValueError(f"--jetstream-prefix {prefix!r}: NATS subject tokens of letters, digits, - and _, "
                             "separated by dots (e.g. zmq-emitter or site1.zmq-emitter), 100 characters at most")
        for option, path in (("--jetstream-password-file", password_file), ("--jetstream-token-file", token_file),
                             ("--jetstream-creds", settings.get("creds_file")),
                             ("--jetstream-tls-ca", settings.get("tls_ca"))):
            if path is not None and not (os.path.isfile(path) and os.access(path, os.R_OK)):
                raise ValueError(f"{option} {path!r}: not a readable file")
        password = _read("--jetstream-password-file", password_file) if password_file else env.get(ENV_PASSWORD)
        token_ = _read("--jetstream-token-file", token_file) if token_file else env.get(ENV_TOKEN)
        return cls(servers, user=env.get(ENV_USER), password=password, token=token_, **settings)

    def connect_options(self) -> dict:
        options: dict = {}
        if self.user is not None:
            options.update(user=self.user, password=self.password or "")
        if self.token is not None:
            options["token"] = self.token
        if self.creds_file is not None:
            options["user_credentials"] = self.creds_file
        if self.tls_ca is not None:
            options["tls"] = ssl.create_default_context(cafile=self.tls_ca)
        return options


def _read(option: str, path: str) -> str:
    """A secret from a file: its text without the line end; ValueError naming ``option`` if unusable."""
    try:
        with open(path, encoding="utf-8") as f:
            secret = f.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{option} {path!r}: cannot be read ({getattr(exc, 'strerror', None) or exc})") from None
    if not secret:
        raise ValueError(f"{option} {path!r}: the file is empty; it must hold the secret on its first line")
    return secret


# ---------------------------------------------------------------------------------------------
# What is stored: the decisions, without sockets or NATS


class StoreLink:
    """Per publisher, what goes to JetStream and what it stored (see the module docstring).

    Fed by the history thread: what the history holds (``holds``, ``forgotten``), what was
    handed to the NATS thread (``handed``), what JetStream answered (``result``), what the
    history no longer has to send (``missing``).  ``stored``: per publisher, the highest seq
    up to which JetStream stored every message (from the first this broker saw): what may be
    acknowledged.

        >>> link = StoreLink()
        >>> link.holds("p1", first=1, upto=3)
        >>> link.due(now=0.0)
        [('p1', 1, 3)]
        >>> for seq in (1, 2, 3): link.handed("p1", seq)
        >>> link.result("p1", 2, True, now=0.0), link.result("p1", 1, True, now=0.0), link.stored
        (False, True, {'p1': 2})
        >>> link.result("p1", 3, False, now=0.0), link.due(now=0.5), link.due(now=1.0)
        (False, [], [('p1', 3, 3)])
        >>> link.missing("p1", 3, 3); link.stored   # forgotten by the memory before it was stored: logged
        {'p1': 3}
    """

    def __init__(self, max_inflight: int = MAX_INFLIGHT, warn: Callable[[str], None] = log.warning):
        self.max_inflight = max_inflight
        self.warn = warn
        self.stored: dict[str, int] = {}
        self._held: dict[str, tuple[int, int]] = {}   # pub -> (first, upto): the history holds them, no hole
        self._next: dict[str, int] = {}               # pub -> the next seq to hand over
        self._above: dict[str, set[int]] = {}         # pub -> seqs stored above ``stored``
        self.inflight = 0
        self.retry_at = 0.0
        self.handed_over = self.failed = self.lost = 0
        self.confirmed = 0   # messages JetStream acknowledged storing (or answered ``duplicate``: it had them)
        self.too_large = 0   # messages over NATS's max_payload: never stored, passed over (``refused``)
        self._refused: set[str] = set()  # publishers with a refused message logged already

    def holds(self, pub: str, first: int, upto: int) -> None:
        if pub not in self._held:
            self._next[pub] = first
            self.stored[pub] = first - 1
            self._above[pub] = set()
        self._held[pub] = (first, upto)

    def forgotten(self, pub: str) -> None:
        """The history forgot ``pub`` altogether: what it had not stored yet is lost to JetStream."""
        held = self._held.pop(pub, None)
        if held is None:
            return
        if held[1] > self.stored[pub]:
            self.missing(pub, self.stored[pub] + 1, held[1])
        del self._next[pub], self.stored[pub], self._above[pub]
        self._refused.discard(pub)

    def due(self, now: float) -> list[tuple[str, int, int]]:
        """(pub, first, last): what to hand over now, oldest first per publisher."""
        if now < self.retry_at or self.inflight >= self.max_inflight:
            return []
        return [(pub, self._next[pub], upto) for pub, (_, upto) in self._held.items() if self._next[pub] <= upto]

    def room(self) -> int:
        return self.max_inflight - self.inflight

    def already_stored(self, pub: str, seq: int) -> bool:
        return seq in self._above.get(pub, ())

    def handed(self, pub: str, seq: int) -> None:
        self._next[pub] = seq + 1
        self.inflight += 1
        self.handed_over += 1

    def result(self, pub: str, seq: int, ok: bool, now: float) -> bool:
        """JetStream's answer for one message; True if ``stored[pub]`` moved (a new acknowledgement is due)."""
        self.inflight -= 1
        if pub not in self._held:
            return False
        if not ok:
            self.failed += 1
            self._next[pub] = min(self._next[pub], self.stored[pub] + 1)  # from the first not stored, in order
            self.retry_at = now + RETRY_AFTER
            return False
        self.confirmed += 1
        return self._advance(pub, seq)

    def refused(self, pub: str, seq: int, size: int, limit: int) -> bool:
        """One message too large for NATS (``size`` bytes over its ``max_payload``, ``limit``): never storable.

        Counted and logged (the first of each publisher), and passed over like one stored, so that
        acknowledgements go on for the messages after it (it stays in the memory history); sending it
        again could only fail again, and holding acknowledgements for it would stall its runner for good.
        A runner learns the limit ahead: the broker announces a ``--max-message-size`` that fits NATS."""
        self.inflight -= 1
        self.too_large += 1
        if pub not in self._held:
            return False
        if pub not in self._refused:
            self._refused.add(pub)
            self.warn(f"jetstream: publisher {pub} seq {seq}: {size} bytes with its headers, over NATS's "
                      f"max_payload ({limit}): not stored in JetStream (served from the memory history while it "
                      "holds it); lower --max-message-size so that runners cut such events (later ones of this "
                      "publisher: counted, not logged)")
        return self._advance(pub, seq)

    def _advance(self, pub: str, seq: int) -> bool:
        stored = self.stored[pub]
        if seq != stored + 1:
            if seq > stored:
                self._above[pub].add(seq)
            return False
        above = self._above[pub]
        stored = seq
        while stored + 1 in above:
            stored += 1
            above.discard(stored)
        self.stored[pub] = stored
        return True

    def missing(self, pub: str, first: int, last: int) -> None:
        """``first``..``last`` of ``pub`` are no longer in the memory history and were not stored: lost.

        Counted and logged; acknowledgements then move past them (the runner is told, as after a
        hole given up: the memory history's bound, ``docs/reliability.md``)."""
        self.lost += last - first + 1
        self.warn(f"jetstream: publisher {pub} seq {first}..{last} forgotten by the memory history "
                  "(--history-bytes/--history-runs) before JetStream stored them: not in JetStream")
        if pub in self._held:
            above, stored = self._above[pub], self.stored[pub]
            above.update(range(max(first, stored + 1), last + 1))
            while stored + 1 in above:
                stored += 1
                above.discard(stored)
            self.stored[pub] = stored
            self._next[pub] = max(self._next[pub], last + 1)

    def publishers(self) -> list[str]:
        return list(self._held)


@dataclasses.dataclass(frozen=True)
class StoreStats:
    """The state of the store (``Broker.store_stats()``, the ``zmq_emitter_broker_jetstream_*`` metrics)."""

    stream: str
    connected: bool     # to NATS, with the stream in place
    backlog: int        # messages the memory history holds that JetStream has not stored yet
    inflight: int       # of those, handed to the NATS client and not answered yet
    handed_over: int    # publishes sent (again after a failure too)
    stored: int         # publishes JetStream acknowledged storing
    failed: int         # publishes that failed (timed out, NATS down, refused): sent again
    lost: int           # forgotten by the memory history before JetStream stored them
    too_large: int      # over NATS's max_payload: never stored, passed over (logged)


def _subtract(missing: list[list], found: set[tuple[str, int]]) -> list[list]:
    """The [pub, first, last] ranges of ``missing`` without the (pub, seq) keys in ``found``."""
    by_pub: dict[str, list[int]] = {}
    for pub, seq in found:
        by_pub.setdefault(pub, []).append(seq)
    for seqs in by_pub.values():
        seqs.sort()
    out = []
    for pub, first, last in missing:
        seqs = by_pub.get(pub, [])
        start = first
        for seq in seqs[bisect.bisect_left(seqs, first):bisect.bisect_right(seqs, last)]:
            if seq > start:
                out.append([pub, start, seq - 1])
            start = seq + 1
        if start <= last:
            out.append([pub, start, last])
    return out


# ---------------------------------------------------------------------------------------------
# The NATS side: an asyncio loop in a thread of its own


class JetStreamStore:
    """The NATS client's thread and the history thread's side of it (see the module docstring).

    Made and driven by ``Broker``: ``start()`` starts the thread (connecting goes on in the
    background: a NATS that is down when the broker starts is not an error); the history
    thread registers ``wakeup`` in its poller and calls ``collect`` and ``pump`` on every
    round, ``ask`` for each history request and ``replies`` for the ones answered later.

        store = JetStreamStore(JetStreamSettings(["nats://127.0.0.1:4222"]), context)
        store.start(); ...; store.collect(now); store.pump(history, now, heard); ...; store.close()
    """

    def __init__(self, settings: JetStreamSettings, context: zmq.Context, name: str = "zmq-emitter broker",
                 max_message_size: int = JETSTREAM_MAX_MESSAGE_SIZE):
        self.settings = settings
        self.max_message_size = max_message_size  # the broker's: to check against the server's max_payload
        self.link = StoreLink()
        self._name = name
        self._results: collections.deque = collections.deque()   # (pub, seq, ok, too_large) from the NATS thread
        address = f"inproc://jetstream-{id(self)}"
        self.wakeup = context.socket(zmq.PULL)   # a byte when results wait: the history thread's poller wakes
        self.wakeup.bind(address)
        self._waker = context.socket(zmq.PUSH)
        self._waker.setsockopt(zmq.SNDHWM, 1)
        self._waker.connect(address)
        self._waker_lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = _threads.thread(self._loop.run_forever, "zmq-emitter-jetstream")
        self._nc = self._js = None
        self.connected = False        # to NATS, with the stream in place
        self._said: str | None = None  # the last state logged: one line per change
        self._asked: list[_Merge] = []  # history requests waiting on the stream
        self._next_sweep = 0.0
        self._main: asyncio.Future | None = None
        self._closing = False
        self._stats = StoreStats(settings.stream, False, 0, 0, 0, 0, 0, 0, 0)

    # -- lifecycle (any thread) ---------------------------------------------------------------

    def start(self) -> "JetStreamStore":
        self._thread.start()
        self._main = asyncio.run_coroutine_threadsafe(self._connect(), self._loop)
        return self

    def close(self) -> None:
        self._closing = True  # closing the connection is no news to log
        if self._thread.is_alive():
            async def shut():
                if self._nc is not None:
                    try:
                        await asyncio.wait_for(self._nc.close(), 2)
                    except Exception:
                        pass
            if self._main is not None:
                self._main.cancel()  # still connecting: stop trying
            try:
                asyncio.run_coroutine_threadsafe(shut(), self._loop).result(5)
            except Exception:
                pass
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        self._waker.close(linger=0)
        self.wakeup.close(linger=0)

    # -- the NATS thread -----------------------------------------------------------------------

    def _state(self, connected: bool, why: str = "", problem: str | None = None) -> None:
        """Up, or down and why; one log line per change (a ``problem`` to fix is a change of its own)."""
        self.connected = connected
        said = "up" if connected else problem or "down"
        if said != self._said:
            self._said = said
            if connected:
                log.warning("jetstream: storing in stream %s at %s; acknowledging what it stored",
                            self.settings.stream, self._nc.connected_url.netloc if self._nc and self._nc.connected_url
                            else ",".join(self.settings.servers))
                limit = self._nc.max_payload if self._nc else 0
                if limit and self.max_message_size + HEADER_ROOM > limit:
                    log.error("jetstream: NATS takes messages of %d bytes at most (max_payload) and --max-message-size "
                              "is %d: a message within 64 KiB of that cannot be stored and is passed over (counted); "
                              "set --max-message-size %d or less so that runners cut such events",
                              limit, self.max_message_size, max(0, limit - HEADER_ROOM))
            elif problem:
                log.error("jetstream: %s; forwarding goes on, acknowledging nothing new until JetStream stores it "
                          "(runners keep it); trying again every few seconds", problem)
            else:
                log.warning("jetstream: NATS unreachable (%s); forwarding goes on, acknowledging nothing new until "
                            "JetStream stores it (runners keep it)", why or "not connected")
        self._wake()

    async def _connect(self) -> None:
        import nats  # the optional extra: only a broker with --jetstream needs it

        settings = self.settings

        async def disconnected():
            if self.connected and not self._closing:  # (not when this side closes after a problem)
                self._state(False, "connection lost")

        async def reconnected():
            self._state(True)

        async def error(exc):
            # While connecting, nats-py retries by itself and reports only here: a refusal to act on
            # (credentials) is said at once, not left to look like a server that is down.
            if self.connected or self._closing:
                log.debug("jetstream: %s", exc)
            elif "authorization" in str(exc).lower():
                self._state(False, problem=f"NATS refused the credentials ({exc}): check {ENV_USER}, "
                                           f"{ENV_PASSWORD}, {ENV_TOKEN}, --jetstream-password-file, "
                                           "--jetstream-token-file, --jetstream-creds")
            elif self._said in (None, "up", "down"):  # no server answers (at start too): said once, tried again;
                # after a refusal the server resets each try: that is the refusal again, not news
                self._state(False, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)

        while True:
            try:
                self._nc = await nats.connect(settings.servers, name=self._name, connect_timeout=2,
                                              reconnect_time_wait=0.5, max_reconnect_attempts=-1,
                                              ping_interval=PING_INTERVAL, max_outstanding_pings=2,
                                              disconnected_cb=disconnected, reconnected_cb=reconnected,
                                              error_cb=error, **settings.connect_options())
                self._js = self._nc.jetstream(timeout=PUBLISH_TIMEOUT)
                await self._ensure_stream()
                self._state(True)
                return
            except _StreamProblem as exc:
                self._state(False, problem=str(exc))
                pause = 5.0
            except Exception as exc:
                self._state(False, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
                pause = 1.0
            if self._nc is not None:
                try:
                    await self._nc.close()
                except Exception:
                    pass
                self._nc = None
            await asyncio.sleep(pause)

    async def _ensure_stream(self) -> None:
        """Make the stream, or bring its retention to the options; ``_StreamProblem`` naming what to fix.

        An existing stream of that name with other subjects is someone else's (or this broker's with
        another ``--jetstream-prefix``): it is left as it is, never taken over."""
        from nats.js import api
        from nats.js.errors import APIError, NotFoundError

        settings = self.settings
        subjects = [f"{settings.prefix}.>"]
        config = api.StreamConfig(name=settings.stream, subjects=subjects,
                                  num_replicas=settings.replicas, duplicate_window=settings.duplicate_window,
                                  max_age=settings.max_age or None, max_bytes=settings.max_bytes,
                                  storage=api.StorageType.FILE, retention=api.RetentionPolicy.LIMITS,
                                  discard=api.DiscardPolicy.OLD)
        jsm = self._nc.jsm()
        try:
            try:
                info = await jsm.stream_info(settings.stream)
            except NotFoundError:
                await jsm.add_stream(config)
                return
            if sorted(info.config.subjects or []) != subjects:
                raise _StreamProblem(f"stream {settings.stream} exists with subjects {info.config.subjects}, not "
                                     f"{subjects}: left as it is; give --jetstream-stream another name, or "
                                     "--jetstream-prefix the stream's prefix")
            await jsm.update_stream(config)  # retention, window and replicas as the options say now
        except APIError as exc:
            if isinstance(exc, NotFoundError) or exc.code in (None, 503):
                raise  # JetStream not ready (no leader yet): as if unreachable, retried
            raise _StreamProblem(f"stream {settings.stream}: NATS refused its settings ({exc.description}; "
                                 "--jetstream-stream, --jetstream-prefix, --jetstream-replicas, "
                                 "--jetstream-max-bytes)") from None

    def _wake(self) -> None:
        with self._waker_lock:
            try:
                self._waker.send(b"", zmq.NOBLOCK)
            except zmq.ZMQError:
                pass  # one byte waits already (or closing): the history thread will look

    def _publish_batch(self, batch: list) -> None:
        for item in batch:
            self._loop.create_task(self._publish(*item))

    async def _publish(self, pub: str, seq: int, subj: str, frames: list[bytes]) -> None:
        ok, too_large = False, None
        try:
            if self._js is not None and self.connected:
                headers = {"Nats-Msg-Id": f"{pub}:{seq}", "Zmq-Topic": header_value(frames[0]),
                           "Zmq-Header": header_value(frames[1])}
                # As NATS counts it (payload and header block): over max_payload, the client refuses it,
                # or the server closes the connection; it could never be stored.
                size = len(frames[2]) + 12 + sum(len(k) + len(v) + 4 for k, v in headers.items())
                if size > self._nc.max_payload:
                    too_large = (size, self._nc.max_payload)
                else:
                    await self._js.publish(subj, frames[2], timeout=PUBLISH_TIMEOUT, headers=headers)
                    ok = True
        except Exception:
            pass  # timed out, no responders (a leader election), disconnected: sent again from the history
        results = self._results
        was_empty = not results
        results.append((pub, seq, ok, too_large))
        if was_empty:
            self._wake()

    async def _read(self, filter_subject: str, keep: Callable[[protocol.Envelope], bool]) -> list[list[bytes]]:
        """The stored messages on ``filter_subject`` that ``keep``, in stream order, once each by (pub, seq).

        Through an ephemeral pull consumer filtered on the subject (no acknowledgements, in memory, gone
        when unused): NATS finds the matching messages by its subject index, and they come in batches of
        ``READ_BATCH``, not one request each."""
        from nats.js import api

        config = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.ALL, ack_policy=api.AckPolicy.NONE,
                                    inactive_threshold=READ_TIMEOUT, mem_storage=True, num_replicas=1)
        sub = await self._nc.jetstream().pull_subscribe(filter_subject, stream=self.settings.stream, config=config)
        out, seen = [], set()
        try:
            info = await sub.consumer_info()
            remaining = info.num_pending
            while remaining > 0 and len(out) < protocol.MAX_FETCH:
                batch = await sub.fetch(min(READ_BATCH, remaining), timeout=READ_TIMEOUT)
                remaining = batch[-1].metadata.num_pending if batch else 0
                for msg in batch:
                    frames = frames_of(msg.headers, msg.data)
                    try:
                        env = protocol.envelope(frames) if frames else None
                    except protocol.ProtocolError:
                        continue
                    if env is not None and (env.publisher, env.seq) not in seen and keep(env):
                        seen.add((env.publisher, env.seq))
                        out.append(frames)
        finally:
            await sub.unsubscribe()
            try:
                await self._nc.jsm().delete_consumer(self.settings.stream, info.name)
            except Exception:
                pass  # gone already, or NATS away: inactive_threshold removes it
        return out

    async def _runs(self, known: set[str]) -> tuple[list[dict], list[dict]]:
        """The runs the stream holds that are not in ``known`` (the memory's), and their publishers.

        From the stream's subject counts (one request), then the last message of each status subject (all
        requested at once; a run's final status is its last status message): a run's
        status, its message count, its publishers and their highest seq."""
        from nats.js.errors import NotFoundError

        jsm, settings = self._nc.jsm(), self.settings
        info = await jsm.stream_info(settings.stream, subjects_filter=f"{settings.prefix}.>")

        gate = asyncio.Semaphore(256)  # requests in flight at once: a stream of many runs must not flood NATS

        async def last_of(subj: str) -> tuple[int, protocol.Envelope, float | None] | None:
            try:
                async with gate:
                    msg = await jsm.get_last_msg(settings.stream, subj)
            except NotFoundError:
                return None
            frames = frames_of(msg.headers, msg.data)
            try:
                env = protocol.envelope(frames) if frames else None
            except protocol.ProtocolError:
                env = None
            return None if env is None else (msg.seq, env, msg.time.timestamp() if msg.time else None)

        runs: dict[str, dict] = {}
        status_subjects: dict[str, list[str]] = {}
        for subj, count in (info.state.subjects or {}).items():
            parts = subj[len(settings.prefix) + 1:].split(".")
            if len(parts) != 4 or parts[1] not in ("status", "event"):
                continue
            ident, pub = untoken(parts[0]), untoken(parts[3])
            if ident is None or pub is None:  # a token cut for its length (``token``): the message has it whole
                last = await last_of(subj)
                if last is None:
                    continue
                ident, pub = last[1].ident, last[1].publisher
            if ident in known:
                continue
            run = runs.setdefault(ident, {"ident": ident, "status": None, "messages": 0, "retained": 0,
                                          "publishers": set(), "first_seen": None, "last_seen": None})
            run["messages"] += count
            run["retained"] += count
            run["publishers"].add(pub)
            if parts[1] == "status":
                status_subjects.setdefault(ident, []).append(subj)
        publishers: dict[str, int] = {}
        pairs = [(ident, subj) for ident, subjects in status_subjects.items() for subj in subjects]
        lasts = await asyncio.gather(*(last_of(subj) for _, subj in pairs))  # concurrently, not one after another
        final: dict[str, tuple] = {}
        for (ident, _), last in zip(pairs, lasts):
            if last is None:
                continue
            seq, env, at = last
            publishers[env.publisher] = max(publishers.get(env.publisher, 0), env.seq)
            if ident not in final or seq > final[ident][0]:
                final[ident] = (seq, env.name, at)
        for ident, (_, status, at) in final.items():
            runs[ident]["status"], runs[ident]["last_seen"] = status, at
        summaries = [dict(run, publishers=sorted(run["publishers"])) for run in runs.values()]
        return summaries, [{"publisher": pub, "received": 0, "duplicates": 0, "missed": 0, "pending": 0,
                            "last_seq": seq, "acked": seq, "closed": None} for pub, seq in publishers.items()]

    # -- the history thread ---------------------------------------------------------------------

    def collect(self, now: float, moved: Callable[[str], None]) -> None:
        """Take JetStream's answers; ``moved(pub)`` for each publisher whose ``stored`` moved."""
        try:
            while self.wakeup.recv(zmq.NOBLOCK) is not None:
                pass
        except zmq.Again:
            pass
        results, link = self._results, self.link
        changed = set()
        while results:
            pub, seq, ok, too_large = results.popleft()
            if link.refused(pub, seq, *too_large) if too_large else link.result(pub, seq, ok, now):
                changed.add(pub)
        for pub in changed:
            moved(pub)

    def pump(self, history: History, now: float, heard: Iterable[str] = ()) -> None:
        """Tell the link what ``history`` holds (of ``heard``, or of all once a second); hand over what is due."""
        link = self.link
        sweep = now >= self._next_sweep
        if sweep:
            self._next_sweep = now + 1.0
        tell_holdings(history, link, heard, sweep)
        if not self.connected:
            return
        batch, room, prefix = [], link.room(), self.settings.prefix
        for pub, first, last in link.due(now):
            for seq, frames in retained_in(history, link, pub, first, min(last, first + room - len(batch) - 1)):
                link.handed(pub, seq)
                if link.already_stored(pub, seq):
                    link.result(pub, seq, True, now)
                    continue
                batch.append((pub, seq, subject(prefix, protocol.envelope(frames)), frames))
        if batch:
            self._loop.call_soon_threadsafe(self._publish_batch, batch)

    def ask(self, history: History, envelope: list[bytes], body: bytes) -> list[bytes] | None:
        """A history request: the memory's answer if it is whole (or NATS is down); else None, and the
        answer with the stream's messages too comes later from ``replies``, with ``envelope`` (the
        ROUTER's routing frames) in front."""
        answer = history.answer(body)
        if not self.connected:
            return answer
        try:
            req = protocol.decode_json(body)
            op = req.get("op")
            info, messages = protocol.parse_reply(answer)
        except Exception:
            return answer  # an error reply, or a request the memory refused: as it is
        prefix = self.settings.prefix
        if op == "runs":
            read = self._runs({run["ident"] for run in info["runs"]})
        elif op == "replay":
            ident, from_seq = str(req["ident"]), int(req.get("from_seq", 1))
            if info["count"] and not info["missing"]:
                return answer
            read = self._read(f"{prefix}.{token(ident)}.>", lambda env: env.ident == ident and env.seq >= from_seq)
        elif op == "fetch" and info["missing"]:
            pub, first = str(req["pub"]), int(req["first"])
            last = min(int(req["last"]), first + protocol.MAX_FETCH - 1)
            read = self._read(f"{prefix}.*.*.*.{token(pub)}",
                              lambda env: env.publisher == pub and first <= env.seq <= last)
        else:
            return answer
        future = asyncio.run_coroutine_threadsafe(asyncio.wait_for(read, READ_TIMEOUT), self._loop)
        future.add_done_callback(lambda _: self._wake())
        self._asked.append(_Merge(envelope, future, info, messages, answer))
        return None

    def replies(self) -> list[list[bytes]]:
        """The deferred answers that are ready, each with its routing envelope in front."""
        if not self._asked or not any(merge.future.done() for merge in self._asked):
            return []
        done = [merge for merge in self._asked if merge.future.done()]
        self._asked = [merge for merge in self._asked if not merge.future.done()]
        return [merge.envelope + merge.reply() for merge in done]

    # -- state ------------------------------------------------------------------------------------

    def backlog(self) -> int:
        """Messages the memory history holds that JetStream has not stored yet."""
        return sum(max(0, upto - self.link.stored.get(pub, upto)) for pub, (_, upto) in self.link._held.items())

    def snapshot(self) -> None:
        """Take the state for ``stats()``; called by the history thread (the only one touching ``link``)."""
        link = self.link
        self._stats = StoreStats(self.settings.stream, self.connected, self.backlog(), link.inflight,
                                 link.handed_over, link.confirmed, link.failed, link.lost, link.too_large)

    def stats(self) -> StoreStats:
        """The state as of the history thread's last snapshot; safe from any thread."""
        return self._stats


class _StreamProblem(Exception):
    """The stream cannot be used as the options say (its message names what to fix)."""


@dataclasses.dataclass
class _Merge:
    """A history request waiting for the stream: the memory's part, and the stream's to come."""

    envelope: list[bytes]
    future: Future
    info: dict
    messages: list[list[bytes]]
    memory_answer: list[bytes]

    def reply(self) -> list[bytes]:
        """The memory's messages and the stream's, once each, in seq order per publisher; ``missing``
        without what the stream had.  The memory's answer alone if the stream could not be read."""
        try:
            stored = self.future.result()
        except Exception as exc:
            log.warning("jetstream: could not read the stream for a history request (%s); answered from memory",
                        type(exc).__name__)
            return self.memory_answer
        info = dict(self.info)
        info.pop("ok", None)
        if isinstance(stored, tuple):  # runs: the memory's first (the live ones), then the stream's older ones
            runs, publishers = stored
            known = {pub["publisher"] for pub in info["publishers"]}
            info["runs"] = runs + info["runs"]
            info["publishers"] = info["publishers"] + [pub for pub in publishers if pub["publisher"] not in known]
            return protocol.reply(info)
        frames_by_key: dict[tuple[str, int], list[bytes]] = {}
        order: list[tuple[str, int]] = []
        for frames in [*stored, *self.messages]:
            env = protocol.envelope(frames)
            key = (env.publisher, env.seq)
            if key not in frames_by_key:
                frames_by_key[key] = frames
                order.append(key)
        found = set(frames_by_key)
        messages = [frames_by_key[key] for key in _in_seq_order(order)]
        info.update(count=len(messages), missing=_subtract(info.get("missing", []), found))
        return protocol.reply(info, messages)
