"""``zmq-emitter web``: watch runs live in a browser.

    zmq-emitter web --connect tcp://BROKER:5558 --history tcp://BROKER:5559     # http://127.0.0.1:8080/

    from zmq_emitter.consumers.web.server import Options, serve
    serve(Options(endpoints=("tcp://127.0.0.1:5558",), history=("tcp://127.0.0.1:5559",)))

One process: a Starlette app on uvicorn, and a task feeding the run model (``model.Runs``) from an
``AsyncSubscriber`` (repeats dropped, gaps recovered from the broker's history, what is gone for good
shown on the pages).  At start it replays every run the history holds, so a restarted server shows
what it showed before.  Pages get updates by server-sent events (``/api/runs/stream``,
``/api/runs/IDENT/stream``), in batches a few times a second; a run's stream names its position in
each event's id (a per-publisher cursor, ``model.format_cursor``), which the browser sends back as
``Last-Event-ID`` when it reconnects, after this server or the network was away: the page goes on
from there, without a gap or a repeat.

Safe by default (docs/web.md): loopback only unless a token or basic-auth credentials are given;
requests naming another host are refused on loopback (DNS rebinding); a strict Content-Security-Policy
(scripts and styles from this server only, nothing inline); the page inserts every string as text.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import hmac
import ipaddress
import resource
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qs, urlencode

import orjson
import uvicorn  # (here, not in serve: the command's import of this module names a missing web extra)
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response, \
    StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..core import Gap
from ..subscriber import AsyncSubscriber
from .model import Runs, format_cursor, parse_cursor

STATIC = Path(__file__).resolve().parent / "static"
DEFAULT_LISTEN = "127.0.0.1:8080"
TOKEN_ENV, BASIC_AUTH_ENV = "ZMQ_EMITTER_WEB_TOKEN", "ZMQ_EMITTER_WEB_BASIC_AUTH"
COOKIE = "zmq_emitter_web"
# No inline script or style, nothing from elsewhere: a string that got into the page as HTML could do nothing.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"), (b"x-frame-options", b"DENY"),
                    (b"cross-origin-opener-policy", b"same-origin")]
BATCH_SECONDS = 0.1  # how often a stream sends what changed: updates are batched, never one message per event
SUMMARY_SECONDS = 0.5  # a run's head (host table, counts) at most this often
BATCH_RECORDS = 2000  # events per server-sent message at most
# ... and about this many bytes (one event's output may be 1 MiB): a page that does not read holds its stream's
# coroutine at one message, so that memory is this per stream, not the run's whole output.
BATCH_BYTES = 256 << 10
KEEPALIVE_SECONDS = 15.0
REPLAY_RETRY_SECONDS = 5.0
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
FILES_BESIDES_CONNECTIONS = 64  # the subscriber's sockets, static files being sent, the listening socket

class WebError(ValueError):
    """An option the server cannot use; the message names it, the value and what is accepted."""


@dataclasses.dataclass
class Options:
    """What ``zmq-emitter web`` was asked for (checked by ``listen_address`` and ``Auth.load``)."""

    endpoints: tuple[str, ...]
    history: tuple[str, ...] | None
    listen: str = DEFAULT_LISTEN
    token: str | None = None
    basic_auth: tuple[str, str] | None = None
    curve_server_key: str | None = None
    curve_secret_key_file: str | None = None
    max_runs: int = 200
    max_events: int = 50_000
    max_run_bytes: int = 256 << 20
    max_connections: int = 500


def listen_address(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8080`` for IPv6) as (host, port).

    >>> listen_address("127.0.0.1:8080")
    ('127.0.0.1', 8080)
    """
    host, sep, port = listen.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    # An IPv6 address only in brackets: "::1" would be host ":" and port 1.
    if not sep or not host or (":" in host) != bracketed or not port.isdigit() or int(port) > 65535:
        raise WebError(f"--listen {listen!r}: expected HOST:PORT (an IPv6 address in brackets), e.g. "
                       "127.0.0.1:8080 or [::1]:8080")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclasses.dataclass
class Auth:
    """Who may use the server: a bearer token and/or basic-auth credentials (constant-time compared).

    A browser given ``?token=T`` once gets a cookie (HttpOnly, SameSite=Strict) derived from the token,
    so that the token leaves the address bar; scripts can send ``Authorization: Bearer T``.
    """

    token: str | None = None
    basic: tuple[str, str] | None = None

    @property
    def required(self) -> bool:
        return self.token is not None or self.basic is not None

    def cookie_value(self) -> str:
        return hmac.new(self.token.encode(), b"zmq-emitter web session", hashlib.sha256).hexdigest()

    def allows(self, headers: Headers, cookie: str | None) -> bool:
        if not self.required:
            return True
        given = headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if self.token is not None:
            if scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), self.token.encode()):
                return True
            if cookie is not None and hmac.compare_digest(cookie.encode(), self.cookie_value().encode()):
                return True
        if self.basic is not None and scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return False
            return (hmac.compare_digest(user.encode(), self.basic[0].encode())
                    & hmac.compare_digest(password.encode(), self.basic[1].encode()))
        return False


def read_secret(path: str | None, env_value: str | None, option: str, env_name: str) -> str | None:
    """A token or ``user:password`` from a file (its first line) or an environment variable."""
    if path is not None:
        try:
            text = Path(path).read_text().strip().splitlines()
        except OSError as exc:
            raise WebError(f"{option} {path!r}: cannot be read ({exc.strerror})") from None
        if not text or not text[0].strip():
            raise WebError(f"{option} {path!r}: the file is empty")
        return text[0].strip()
    if env_value is not None:
        if not env_value.strip():
            raise WebError(f"{env_name} is set but empty")
        return env_value.strip()
    return None


def basic_credentials(text: str | None, where: str) -> tuple[str, str] | None:
    if text is None:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise WebError(f"{where}: expected one line USER:PASSWORD")
    return user, password


class Guard:
    """ASGI middleware: the security headers on every response, the Host check and authentication."""

    def __init__(self, app, auth: Auth, check_host: bool):
        self.app, self.auth, self.check_host = app, auth, check_host

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_secured(message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + SECURITY_HEADERS
            await send(message)

        headers = Headers(scope=scope)
        if self.check_host and not _loopback_host(headers.get("host", "")):
            # A page of another site that made its name resolve to 127.0.0.1 (DNS rebinding) is refused.
            return await PlainTextResponse("this server answers only to localhost, 127.0.0.1 or [::1]",
                                           421)(scope, receive, send_secured)
        if self.auth.required:
            cookies = Request(scope).cookies
            if not self.auth.allows(headers, cookies.get(COOKIE)):
                query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
                token = (query.get("token") or [None])[0]
                if token is not None and self.auth.token is not None and hmac.compare_digest(
                        token.encode(), self.auth.token.encode()):
                    rest = {k: v for k, v in query.items() if k != "token"}
                    # A path of this server, whatever the request's: "//evil.example" would send the browser there.
                    target = "/" + scope["path"].lstrip("/") + ("?" + urlencode(rest, doseq=True) if rest else "")
                    response = RedirectResponse(target, 303)
                    response.set_cookie(COOKIE, self.auth.cookie_value(), httponly=True, samesite="strict")
                    return await response(scope, receive, send_secured)
                challenge = {"www-authenticate": 'Basic realm="zmq-emitter web"'} if self.auth.basic else {}
                return await PlainTextResponse("authentication required (docs/web.md)", 401,
                                               headers=challenge)(scope, receive, send_secured)
        await self.app(scope, receive, send_secured)


def _files_for(connections: int) -> None:
    """Raise this process's limit of open files (ulimit -n) to what ``connections`` need, if it may."""
    need = connections + FILES_BESIDES_CONNECTIONS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return
    if hard != resource.RLIM_INFINITY and hard < need:
        raise WebError(f"--max-connections {connections}: this process may open {hard} files (ulimit -n), and "
                       f"needs {FILES_BESIDES_CONNECTIONS} besides its connections: give at most "
                       f"{max(1, hard - FILES_BESIDES_CONNECTIONS)}, or raise the limit")
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def _loopback_host(host_header: str) -> bool:
    host = host_header.rsplit(":", 1)[0] if not host_header.endswith("]") else host_header
    return host.strip("[]").lower() in LOOPBACK_NAMES


def _sse(event: str, data: bytes, event_id: str | None = None) -> bytes:
    head = b"" if event_id is None else b"id: " + event_id.encode() + b"\n"
    return head + b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"


class Feed:
    """The task that feeds ``runs`` from the bus: history first (every run it holds), then live."""

    def __init__(self, runs: Runs, options: Options, say: Callable[[str], None]):
        self.runs, self.options, self.say = runs, options, say
        self.skipped = 0  # messages the model could not take (a bug there, or a payload it did not foresee)

    async def run(self) -> None:
        options = self.options
        sub = AsyncSubscriber(list(options.endpoints), ["status/", "event/"], on_gap=self._gap,
                              on_error=lambda text: self.say(f"zmq-emitter web: {text}"),
                              curve_server_key=options.curve_server_key,
                              curve_secret_key_file=options.curve_secret_key_file, history=options.history)
        try:
            replay_due = 0.0 if options.history else None  # None: replayed (or no history to replay from)
            times_pending = False
            while True:
                if replay_due is not None and time.monotonic() >= replay_due:
                    # Every run the history holds, so that a (re)started server shows them.  A history not up yet
                    # is asked again while live messages come in: the runs it then replays are shown whole, those
                    # already seen live from where they were first seen (the library never hands out a
                    # publisher's earlier seq after a later one).
                    queued = await sub.replay()
                    if queued is None:
                        if replay_due == 0.0:
                            self.say("zmq-emitter web: the history did not answer; asking again every "
                                     f"{REPLAY_RETRY_SECONDS:g} s, showing live runs meanwhile")
                        replay_due = time.monotonic() + REPLAY_RETRY_SECONDS
                    else:
                        replay_due, times_pending = None, bool(queued)
                msg = await sub.recv(timeout=1.0)
                if msg is not None:
                    self._add(msg)
                elif times_pending:  # the replay is in: when the broker saw those runs, for their start times
                    self.runs.seen(await sub.runs())
                    times_pending = False
        finally:
            sub.close()

    def _add(self, msg) -> None:
        try:
            self.runs.add(msg, time.time())
        except Exception as exc:  # noqa: BLE001 -- a message the model cannot take is left out, not fatal:
            # it stays in the broker's history, so stopping would only stop again at the next start's replay.
            self.skipped += 1
            if self.skipped <= 10 or self.skipped % 1000 == 0:
                self.say(f"zmq-emitter web: left out message seq {msg.seq} of publisher {msg.publisher!r} "
                         f"(run {msg.ident[:200]!r}, {msg.name[:200]!r}): {exc!r} [{self.skipped} so far]")

    def ended(self, task: asyncio.Task) -> None:
        """The task ended other than by the server stopping (a bug: the library raises nothing for what comes off
        the network): say so and stop the server, so that a supervisor starts it again, rather than serve pages
        that no longer update."""
        if task.cancelled() or task.exception() is None:
            return
        self.say(f"zmq-emitter web: the subscriber stopped: {task.exception()!r}; stopping")
        signal.raise_signal(signal.SIGTERM)

    def _gap(self, gap: Gap) -> None:
        self.say(f"zmq-emitter web: missed {gap.count} message(s) of publisher {gap.publisher}: "
                 f"seq {gap.first}..{gap.last}")
        self.runs.gap(gap)


def create_app(runs: Runs, auth: Auth | None = None, check_host: bool = True,
               feed: Feed | None = None) -> Starlette:
    """The ASGI app on ``runs`` (fed by ``feed``, started with the app, if given)."""

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-cache"})

    async def run_list(request: Request) -> Response:
        return JSONResponse(runs.summaries(), headers={"cache-control": "no-store"})

    async def run_detail(request: Request) -> Response:
        run = runs.get(request.path_params["ident"])
        if run is None:
            return JSONResponse({"error": "no such run (yet)"}, 404)
        return Response(orjson.dumps(run.detail()), media_type="application/json",
                        headers={"cache-control": "no-store"})

    async def event_json(request: Request) -> Response:
        run = runs.get(request.path_params["ident"])
        record = None if run is None else run.by_key.get((request.path_params["pub"], request.path_params["seq"]))
        if record is None:
            return JSONResponse({"error": "this server no longer holds that event"}, 404)
        return Response(record.raw, media_type="application/json", headers={"cache-control": "no-store"})

    async def runs_stream(request: Request) -> Response:
        async def body():
            yield b"retry: 1000\n\n"
            sent: dict[str, int] = {}
            gaps_sent, version, quiet_since = 0, -1, time.monotonic()
            while not await request.is_disconnected():
                if runs.version != version:
                    version = runs.version
                    changed = [run.summary() for run in list(runs.runs.values()) if sent.get(run.ident) != run.version]
                    gone = [ident for ident in sent if ident not in runs.runs]
                    sent = {ident: run.version for ident, run in runs.runs.items()}
                    if changed or gone:
                        yield _sse("runs", orjson.dumps({"changed": changed, "gone": gone}))
                    if len(runs.gaps) != gaps_sent:
                        gaps_sent = len(runs.gaps)
                        yield _sse("gaps", orjson.dumps(runs.gaps[-50:]))
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since > KEEPALIVE_SECONDS:
                    yield b": keep-alive\n\n"
                    quiet_since = time.monotonic()
                await asyncio.sleep(SUMMARY_SECONDS)
        return _stream(body())

    async def run_stream(request: Request) -> Response:
        ident = request.path_params["ident"]
        positions = parse_cursor(request.headers.get("last-event-id") or request.query_params.get("cursor"))

        async def body():
            yield b"retry: 1000\n\n"
            current, index, version, summary_at, quiet_since = None, 0, -1, 0.0, time.monotonic()
            while not await request.is_disconnected():
                run = runs.get(ident)
                if run is not None and run is not current:  # first seen, or evicted and seen again
                    current, index, version = run, 0, -1
                if run is not None and run.version != version:
                    batch, size, full = [], 0, False
                    for index, record in run.after(positions, index):
                        batch.append(record.view)
                        positions[record.pub] = record.seq
                        size += len(record.view)
                        if len(batch) >= BATCH_RECORDS or size >= BATCH_BYTES:
                            full = True
                            break
                    index = index + 1 if full else run.end
                    if batch:
                        yield _sse("events", b"[" + b",".join(batch) + b"]", format_cursor(positions))
                    now = time.monotonic()
                    if not full:
                        if now - summary_at >= SUMMARY_SECONDS or run.finished:
                            yield _sse("run", orjson.dumps(run.detail()))
                            summary_at, version = now, run.version
                        quiet_since = now
                        await asyncio.sleep(BATCH_SECONDS)
                    continue  # more held than one message takes: the next at once
                if time.monotonic() - quiet_since > KEEPALIVE_SECONDS:
                    yield b": keep-alive\n\n"
                    quiet_since = time.monotonic()
                await asyncio.sleep(BATCH_SECONDS)
        return _stream(body())

    @contextlib.asynccontextmanager
    async def lifespan(app):
        task = None if feed is None else asyncio.get_running_loop().create_task(feed.run())
        if task is not None:
            task.add_done_callback(feed.ended)
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    app = Starlette(routes=[
        Route("/", index),
        Route("/favicon.ico", lambda request: Response(status_code=204)),
        Route("/api/runs", run_list),
        Route("/api/runs/stream", runs_stream),
        Route("/api/runs/{ident:path}/stream", run_stream),
        Route("/api/runs/{ident:path}/events/{pub:str}/{seq:int}", event_json),
        Route("/api/runs/{ident:path}", run_detail),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ], lifespan=lifespan)
    app.add_middleware(Guard, auth=auth or Auth(), check_host=check_host)
    return app


def _stream(body) -> StreamingResponse:
    return StreamingResponse(body, media_type="text/event-stream",
                             headers={"cache-control": "no-store", "x-accel-buffering": "no"})


def serve(options: Options, say: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
          ) -> None:
    """Serve until interrupted (Ctrl-C, SIGTERM).  Raises ``WebError`` for options it cannot use."""
    host, port = listen_address(options.listen)
    auth = Auth(options.token, options.basic_auth)
    loopback = is_loopback(host)
    if not loopback and not auth.required:
        raise WebError(f"--listen {options.listen!r} is not a loopback address: anyone who can reach it would see "
                       f"every run; give --token-file FILE or --basic-auth-file FILE (or {TOKEN_ENV} / "
                       f"{BASIC_AUTH_ENV}), or listen on 127.0.0.1 (docs/web.md)")
    _files_for(options.max_connections)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise WebError(f"--listen {options.listen!r}: cannot listen there ({exc.strerror})") from None
    sock.listen(128)
    bound = sock.getsockname()[1]
    runs = Runs(options.max_runs, options.max_events, options.max_run_bytes)
    feed = Feed(runs, options, say)
    app = create_app(runs, auth, check_host=loopback and not auth.required, feed=feed)
    shown = f"[{host}]" if ":" in host else host
    say(f"zmq-emitter web: serving http://{shown}:{bound}/ ; runs from {', '.join(options.endpoints)}"
        + (f", history {', '.join(options.history)}" if options.history else ", no history")
        + ("; authentication required" if auth.required else ""))
    # Beyond max_connections a request gets a 503 at once, rather than the process running out of files: then it
    # could accept nothing more, not even the page of someone who had nothing to do with the flood.
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1, lifespan="on",
                            limit_concurrency=options.max_connections)
    uvicorn.Server(config).run(sockets=[sock])
