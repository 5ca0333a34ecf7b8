"""The ``zmq-emitter`` command: a thin layer over the library.

    zmq-emitter broker                 # fan runners' messages out to subscribers
    zmq-emitter tail                   # watch them in a terminal
    zmq-emitter demo                   # a real ansible-runner run, shown live

``zmq-emitter COMMAND --help`` lists each command's options.
"""
from __future__ import annotations

import dataclasses
import logging
import logging.handlers
import os
import signal
import sys
import threading
import time
from typing import List, Optional

import typer
from typer.core import TyperCommand
import zmq

from . import __version__, security
from ._text import check_endpoint, split_commas
from .broker import broker as broker_module, metrics as metrics_module
from .broker.jetstream import JETSTREAM_MAX_MESSAGE_SIZE, JetStreamSettings
from .consumers import tail as tail_module
from .consumers.subscriber import DEFAULT_ENDPOINT, Subscriber

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="ZeroMQ event bus for ansible-runner: broker, tail, web and demo.")


def _print_version(wanted: bool) -> None:
    if wanted:
        typer.echo(f"zmq-emitter {__version__}")
        raise typer.Exit()


@app.callback()
def _options(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                          help="Print the version and exit.")) -> None:
    """The options before COMMAND."""


# The CURVE options of the commands that connect to a broker as clients (tail, web, runs): one definition each.
_CURVE_SERVER_KEY = typer.Option(None, "--curve-server-key", metavar="KEY",
                                 help="The broker's public key (.key file or z85 text): CURVE encryption.")
_CURVE_SUBSCRIBER_SECRET = typer.Option(None, "--curve-secret-key-file", metavar="FILE",
                                        help="This subscriber's .key_secret file, for a broker that checks keys.")


def _split(values: List[str]) -> List[str]:
    """Options take repeated and comma-separated values alike."""
    return list(split_commas(values))


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"zmq-emitter: {message}", err=True)
    raise typer.Exit(code)


def _history_endpoints(values: List[str]) -> List[str]:
    """``--history`` values (repeated or comma-separated), each checked."""
    endpoints = _split(values)
    for endpoint in endpoints:
        problem = check_endpoint(endpoint, bind=False)
        if problem:
            _fail(f"--history {endpoint!r}: {problem}", 2)
    return endpoints


@app.command()
def broker(
    frontend: List[str] = typer.Option([broker_module.DEFAULT_FRONTEND], "--frontend", "-f", metavar="ENDPOINT",
                                       help="Endpoint(s) runners publish to (XSUB), comma-separated."),
    backend: List[str] = typer.Option([broker_module.DEFAULT_BACKEND], "--backend", "-b", metavar="ENDPOINT",
                                      help="Endpoint(s) subscribers connect to (XPUB), comma-separated."),
    history: List[str] = typer.Option([broker_module.DEFAULT_HISTORY], "--history", metavar="ENDPOINT",
                                      help="Endpoint(s) of the history service (replay, gap recovery, "
                                           "acknowledgements); 'none' turns history off."),
    history_runs: int = typer.Option(100, "--history-runs", metavar="N", min=1, help="Runs the history keeps."),
    history_bytes: int = typer.Option(64 * 2**20, "--history-bytes", metavar="BYTES", min=0, help="Bytes of messages the history keeps."),
    history_dir: Optional[str] = typer.Option(None, "--history-dir", metavar="DIR",
                                              help="Keep the history on disk in this directory too: a restarted "
                                                   "broker (even after SIGKILL) starts with it."),
    stats_interval: Optional[float] = typer.Option(None, "--stats-interval", metavar="SECONDS", min=0.1,
                                                   help="Print traffic statistics every this many seconds."),
    max_message_size: Optional[int] = typer.Option(
        None, "--max-message-size", metavar="BYTES", min=1,
        help=f"Disconnect a publisher that sends a larger message (bytes; runners cut larger events). Default "
             f"{broker_module.DEFAULT_MAX_MESSAGE_SIZE}; {JETSTREAM_MAX_MESSAGE_SIZE} with --jetstream (what fits NATS's "
             "default max_payload of 1 MiB with the headers)."),
    startup_grace: float = typer.Option(1.0, "--startup-grace", metavar="SECONDS", min=0,
                                        help="Seconds to let subscribers (re)connect before forwarding starts."),
    curve_secret_key_file: Optional[str] = typer.Option(
        None, "--curve-secret-key-file", metavar="FILE", help="The broker's .key_secret file: CURVE on both sides (docs/security.md)."),
    publisher_keys: Optional[str] = typer.Option(
        None, "--publisher-keys", metavar="DIR", help="With CURVE: directory of the public keys (*.key) of runners allowed to publish."),
    subscriber_keys: Optional[str] = typer.Option(
        None, "--subscriber-keys", metavar="DIR", help="With CURVE: directory of the public keys (*.key) of allowed subscribers."),
    ipc_mode: str = typer.Option("600", "--ipc-mode", metavar="MODE",
                                 help="Permissions of ipc:// socket files the broker binds (octal, or keep)."),
    name: Optional[str] = typer.Option(None, "--name", metavar="NAME",
                                       help="The name runners know this broker by, the same across its restarts "
                                            "(default: derived from this host's name and --frontend)."),
    upstream: List[str] = typer.Option([], "--upstream", metavar="ENDPOINT",
                                       help="Frontend endpoint(s) of central broker(s), comma-separated: this edge "
                                            "broker forwards everything to them too (docs/operations.md)."),
    upstream_server_key: Optional[str] = typer.Option(
        None, "--upstream-server-key", metavar="KEY", help="The central broker's public key (.key file or z85 text): CURVE on the "
                                            "upstream link, as a client with --curve-secret-key-file's key pair."),
    metrics: Optional[str] = typer.Option(None, "--metrics", metavar="HOST:PORT",
                                          help="Serve Prometheus metrics on http://HOST:PORT/metrics "
                                               "(docs/operations.md, \"Metrics\"); off by default."),
    # -- JetStream (broker/jetstream.py); credentials only from files or the environment --
    jetstream: List[str] = typer.Option([], "--jetstream", metavar="URL",
                                        help="NATS server(s) nats://HOST:PORT, comma-separated: store the history in "
                                             "JetStream and acknowledge only what it stored (docs/operations.md). "
                                             "Credentials: ZMQ_EMITTER_NATS_USER/_PASSWORD/_TOKEN or the files below."),
    jetstream_stream: str = typer.Option("ZMQ_EMITTER", "--jetstream-stream", metavar="NAME", help="The JetStream stream's name."),
    jetstream_prefix: str = typer.Option("zmq-emitter", "--jetstream-prefix", metavar="PREFIX",
                                         help="The stream's subjects: PREFIX.IDENT.KIND.NAME.PUB (streams of "
                                              "one NATS account may not share subjects: one prefix per stream)."),
    jetstream_replicas: int = typer.Option(1, "--jetstream-replicas", metavar="N", min=1, max=5,
                                           help="Copies of each message in the cluster (3: acknowledged means on a "
                                                "quorum of machines)."),
    jetstream_max_age: float = typer.Option(0, "--jetstream-max-age", metavar="SECONDS", min=0,
                                            help="Seconds the stream keeps a message (0: no limit)."),
    jetstream_max_bytes: int = typer.Option(-1, "--jetstream-max-bytes", metavar="BYTES", min=-1,
                                            help="Bytes the stream keeps, oldest dropped first (-1: no limit)."),
    jetstream_duplicate_window: float = typer.Option(600, "--jetstream-duplicate-window", metavar="SECONDS", min=1,
                                                     help="Seconds within which a message sent again is stored once."),
    jetstream_creds: Optional[str] = typer.Option(None, "--jetstream-creds", metavar="FILE", help="NATS NKey/JWT credentials file."),
    jetstream_password_file: Optional[str] = typer.Option(
        None, "--jetstream-password-file", metavar="FILE", help="File holding the NATS password (user: ZMQ_EMITTER_NATS_USER)."),
    jetstream_token_file: Optional[str] = typer.Option(None, "--jetstream-token-file", metavar="FILE",
                                                       help="File holding the NATS token."),
    jetstream_tls_ca: Optional[str] = typer.Option(None, "--jetstream-tls-ca", metavar="FILE",
                                                   help="CA certificate file: TLS to the NATS servers."),
) -> None:
    """Run a broker in the foreground until SIGINT or SIGTERM."""
    curve, mode = _broker_security(curve_secret_key_file, publisher_keys, subscriber_keys, ipc_mode)
    try:
        metrics_address = metrics_module.parse_address(metrics) if metrics is not None else None
    except metrics_module.MetricsError as exc:
        _fail(str(exc), 2)
    history_endpoints = [] if _split(history) == ["none"] else _split(history)
    if history_dir is not None and not history_endpoints:
        _fail("--history-dir needs the history service: drop --history none", 2)
    upstream_endpoints, upstream_curve = _upstream(_split(upstream), upstream_server_key, curve)
    if name is not None and not name.strip():
        _fail("--name: give a non-empty name (or leave it out for the default)", 2)
    jetstream_settings = None
    if jetstream:
        if not history_endpoints:
            _fail("--jetstream needs the history service: drop --history none", 2)
        try:
            jetstream_settings = JetStreamSettings.from_sources(
                _split(jetstream), password_file=jetstream_password_file, token_file=jetstream_token_file,
                stream=jetstream_stream, prefix=jetstream_prefix, replicas=jetstream_replicas, max_age=jetstream_max_age,
                max_bytes=jetstream_max_bytes, duplicate_window=jetstream_duplicate_window,
                creds_file=jetstream_creds, tls_ca=jetstream_tls_ca)
        except ValueError as exc:
            _fail(str(exc), 2)
    if max_message_size is None:
        max_message_size = JETSTREAM_MAX_MESSAGE_SIZE if jetstream else broker_module.DEFAULT_MAX_MESSAGE_SIZE
    held_logs = _HeldLogs()
    instance = broker_module.Broker(_split(frontend), _split(backend), history_endpoints,
                                    history_runs=history_runs, history_bytes=history_bytes, history_dir=history_dir,
                                    max_message_size=max_message_size,
                                    startup_grace=startup_grace, curve=curve, ipc_mode=mode, name=name,
                                    upstream=upstream_endpoints, upstream_curve=upstream_curve,
                                    jetstream=jetstream_settings)
    try:
        instance.start()
    except broker_module.BrokerError as exc:
        held_logs.let_through()
        _fail(str(exc))
    metrics_server = None
    if metrics_address is not None:
        try:
            metrics_server = metrics_module.serve(instance, *metrics_address)
        except metrics_module.MetricsError as exc:
            instance.stop()
            held_logs.let_through()
            _fail(str(exc))
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    typer.echo(f"zmq-emitter broker: runners publish to {', '.join(instance.frontend_endpoints)}; "
               f"subscribers connect to {', '.join(instance.backend_endpoints)}; "
               f"history at {', '.join(instance.history_endpoints) or 'none'}"
               + (f", on disk in {history_dir} ({instance.history_loaded} messages loaded)"
                  if history_dir else "")
               + (f"; metrics at {metrics_server.url}" if metrics_server else ""), err=True)
    if upstream_endpoints:
        typer.echo(f"zmq-emitter broker: forwarding upstream to {', '.join(upstream_endpoints)}"
                   + (" (CURVE)" if upstream_curve else ""), err=True)
    if jetstream_settings is not None:
        typer.echo(f"zmq-emitter broker: storing in JetStream stream {jetstream_settings.stream} "
                   f"(R{jetstream_settings.replicas}) at {', '.join(jetstream_settings.servers)}", err=True)
    if curve is not None:
        typer.echo(f"zmq-emitter broker: CURVE on, public key {curve.pair.public.decode()}; publishers: "
                   f"{curve.publisher_keys or 'any key'}; subscribers: {curve.subscriber_keys or 'any key'}", err=True)
    held_logs.let_through()  # what the broker logged while starting (a journal's skipped records), after the start line
    try:
        broker_module.run_forever(instance, stats_interval, lambda line: typer.echo(line, err=True), stop)
    finally:
        if metrics_server is not None:
            metrics_server.close()
        instance.stop()


@app.command()
def tail(
    connect: List[str] = typer.Option([DEFAULT_ENDPOINT], "--connect", "-c", metavar="ENDPOINT",
                                      help="Broker backend or runner (bind mode) endpoint(s)."),
    topic: List[str] = typer.Option([], "--topic", "-t", metavar="KIND", help="status or event (default: both)."),
    ident: Optional[str] = typer.Option(None, "--ident", "-i", metavar="RUN", help="Only this run (filtered at the source)."),
    event: List[str] = typer.Option([], "--event", "-e", metavar="EVENT", help="Only these events, e.g. runner_on_failed (statuses too only with --topic)."),
    host: List[str] = typer.Option([], "--host", metavar="HOST", help="Only events of these hosts."),
    count: Optional[int] = typer.Option(None, "--count", "-n", metavar="N", min=1, help="Exit after this many messages."),
    fmt: str = typer.Option("pretty", "--format", metavar="FORMAT", help="pretty, json or stdout."),
    until_done: bool = typer.Option(False, "--until-done",
                                    help="Exit at the run's final status: 0 successful, 1 failed, 3 timeout, "
                                         "4 canceled, 5 error (without --ident: of the first run seen)."),
    timeout: Optional[float] = typer.Option(None, "--timeout", metavar="SECONDS", min=0,
                                            help="Give up after this many seconds: exit 124 if --until-done or "
                                                 "--count was still waiting (0 otherwise)."),
    colour: Optional[bool] = typer.Option(None, "--color/--no-color", help="Colour (default: on a terminal)."),
    replay: bool = typer.Option(False, "--replay", help="Print the broker's history first (of --ident, or of every "
                                                        "run it knows), then go on live."),
    history: List[str] = typer.Option([], "--history", metavar="ENDPOINT", help="The broker's history endpoint, for --replay and for "
                                      f"recovering gaps (default with --replay: {broker_module.DEFAULT_HISTORY}); "
                                      "several (a redundant pair): asked in turn, the next when one does not answer."),
    curve_server_key: Optional[str] = _CURVE_SERVER_KEY,
    curve_secret_key_file: Optional[str] = _CURVE_SUBSCRIBER_SECRET,
) -> None:
    """Print runs' statuses and events as they arrive."""
    # --event NAME asks for those events only: statuses too only if --topic says so.
    kinds = tuple(_split(topic)) or (("event",) if event else tail_module.protocol.KINDS)
    for kind in kinds:
        if kind not in tail_module.protocol.KINDS:
            _fail(f"--topic {kind!r}: accepted: {', '.join(tail_module.protocol.KINDS)}", 2)
    if fmt not in tail_module.FORMATS:
        _fail(f"--format {fmt!r}: accepted: {', '.join(tail_module.FORMATS)}", 2)
    endpoints = _split(connect)
    for endpoint in endpoints:
        problem = check_endpoint(endpoint, bind=False)
        if problem:
            _fail(f"--connect {endpoint!r}: {problem}", 2)
    if replay and until_done and ident is None:
        _fail("--replay --until-done needs --ident RUN: which run's final status to wait for "
              "(`zmq-emitter runs` lists the runs the history knows)", 2)
    filters = tail_module.Filters(kinds=kinds, ident=ident, events=tuple(_split(event)), hosts=tuple(_split(host)))
    try:
        histories = _history_endpoints(history) or ([broker_module.DEFAULT_HISTORY] if replay else None)
        code = tail_module.run(endpoints, filters, fmt=fmt, count=count, until_done=until_done, colour=colour,
                               curve_server_key=curve_server_key, curve_secret_key_file=curve_secret_key_file,
                               history=histories, replay=replay, timeout=timeout)
    except security.SecurityError as exc:
        _fail(f"tail: {exc}", 2)
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:  # e.g. `zmq-emitter tail | head`
        sys.stderr.close()
        code = 0
    except zmq.ZMQError as exc:
        _fail(f"tail: {exc}")
    raise typer.Exit(code)


class _ManCommand(TyperCommand):
    """A usage line as man pages write it: a required argument is NAME (typer writes {NAME})."""

    def collect_usage_pieces(self, ctx):
        return [piece.strip("{}") for piece in super().collect_usage_pieces(ctx)]


@app.command()
def web(
    connect: List[str] = typer.Option([DEFAULT_ENDPOINT], "--connect", "-c", metavar="ENDPOINT",
                                      help="Broker backend endpoint(s); several: a redundant pair."),
    history: List[str] = typer.Option([broker_module.DEFAULT_HISTORY], "--history", metavar="ENDPOINT",
                                      help="The broker's history endpoint(s): the runs it holds are shown at start, "
                                           "gaps are recovered from it ('none': live runs only)."),
    listen: str = typer.Option("127.0.0.1:8080", "--listen", metavar="HOST:PORT", help="HOST:PORT to serve on; anything but loopback "
                                                                  "needs --token-file or --basic-auth-file."),
    token_file: Optional[str] = typer.Option(None, "--token-file", metavar="FILE", help="A file whose first line is the access "
                                             "token (or ZMQ_EMITTER_WEB_TOKEN): open http://HOST:PORT/?token=TOKEN."),
    basic_auth_file: Optional[str] = typer.Option(None, "--basic-auth-file", metavar="FILE", help="A file whose first line is "
                                                  "USER:PASSWORD (or ZMQ_EMITTER_WEB_BASIC_AUTH): HTTP basic auth."),
    max_runs: int = typer.Option(200, "--max-runs", metavar="N", min=1, help="Runs held (the oldest finished ones go first)."),
    max_events: int = typer.Option(50_000, "--max-events", metavar="N", min=100, help="Events held per run (the oldest go first)."),
    max_run_mib: int = typer.Option(256, "--max-run-mib", metavar="MIB", min=1, help="MiB of events held per run (the oldest go "
                                                                         "first)."),
    max_connections: int = typer.Option(500, "--max-connections", metavar="N", min=1, help="Connections at once (each "
                                        "open page holds one); beyond them a request gets 503."),
    curve_server_key: Optional[str] = _CURVE_SERVER_KEY,
    curve_secret_key_file: Optional[str] = _CURVE_SUBSCRIBER_SECRET,
) -> None:
    """Watch runs live in a browser.

    See docs/web.md; needs the web extra of the package.
    """
    try:
        from .consumers.web import server as web_module
    except ImportError as exc:
        _fail(f"web: {(exc.name or 'a module').split('.')[0]} is not installed: pip install 'ansible-runner-zmq[web]'")
    endpoints = _split(connect)
    for endpoint in endpoints:
        problem = check_endpoint(endpoint, bind=False)
        if problem:
            _fail(f"--connect {endpoint!r}: {problem}", 2)
    histories = None if [h.strip().lower() for h in history] == ["none"] else _history_endpoints(history)
    try:
        token = web_module.read_secret(token_file, os.environ.get(web_module.TOKEN_ENV), "--token-file",
                                       web_module.TOKEN_ENV)
        basic = web_module.basic_credentials(
            web_module.read_secret(basic_auth_file, os.environ.get(web_module.BASIC_AUTH_ENV), "--basic-auth-file",
                                   web_module.BASIC_AUTH_ENV),
            f"--basic-auth-file {basic_auth_file!r}" if basic_auth_file else web_module.BASIC_AUTH_ENV)
        security.ClientCurve.load(curve_server_key, curve_secret_key_file)  # a bad key: said now, not at connect
        options = web_module.Options(tuple(endpoints), tuple(histories) if histories else None, listen, token, basic,
                                     curve_server_key, curve_secret_key_file, max_runs, max_events,
                                     max_run_mib << 20, max_connections)
        web_module.serve(options)
    except web_module.WebError as exc:
        _fail(f"web: {exc}", 2)
    except security.SecurityError as exc:
        _fail(f"web: --curve-server-key/--curve-secret-key-file: {exc}", 2)
    except KeyboardInterrupt:
        raise typer.Exit(130)


@app.command(cls=_ManCommand)
def keygen(
    # Described in the docstring: typer's row for an argument shows a type placeholder (NAME <str>).
    name: str = typer.Argument(..., metavar="NAME", hidden=True),
    directory: str = typer.Option(".", "--dir", "-d", metavar="DIR", help="Directory to write the key files into."),
    force: bool = typer.Option(False, "--force", help="Replace existing key files of that name."),
) -> None:
    """Write a CURVE key pair, for a broker, runner or subscriber.

    In the format of zmq.auth: NAME.key is the public key, NAME.key_secret the key pair (mode 0600).
    """
    try:
        public_file, secret_file = security.generate_keys(directory, name, force=force)
    except (security.SecurityError, OSError) as exc:
        _fail(f"keygen: {exc}")
    typer.echo(f"public key: {public_file} ({security.load_public_key(public_file).decode()})")
    typer.echo(f"secret key: {secret_file} (mode 0600; keep it on this machine)")


class _HeldLogs(logging.handlers.MemoryHandler):
    """The library's log lines on stderr, held back until ``let_through``: the start-up line comes first."""

    def __init__(self) -> None:
        self.target_stream = logging.StreamHandler(sys.stderr)
        self.target_stream.setFormatter(logging.Formatter("zmq-emitter broker: %(message)s"))
        super().__init__(10_000, flushLevel=logging.CRITICAL + 1, target=self.target_stream)
        self.logger = logging.getLogger("zmq_emitter")
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False
        self.logger.addHandler(self)

    def let_through(self) -> None:
        self.logger.addHandler(self.target_stream)
        self.logger.removeHandler(self)
        self.close()  # flushes what was held


def _broker_security(secret_key_file: str | None, publisher_keys: str | None, subscriber_keys: str | None,
                     ipc_mode: str):
    try:
        mode = security.parse_ipc_mode(ipc_mode)
    except ValueError as exc:
        _fail(f"--ipc-mode: {exc}", 2)
    if secret_key_file is None:
        if publisher_keys or subscriber_keys:
            _fail("--publisher-keys/--subscriber-keys need --curve-secret-key-file (the broker's key pair)", 2)
        return None, mode
    try:
        return security.ServerCurve.load(secret_key_file, publisher_keys, subscriber_keys), mode
    except security.SecurityError as exc:
        _fail(str(exc), 2)


def _upstream(endpoints: List[str], server_key: str | None, curve: security.ServerCurve | None):
    """The checked --upstream endpoints and the CURVE client set-up of the link (None: plain)."""
    for endpoint in endpoints:
        problem = check_endpoint(endpoint, bind=False)
        if problem:
            _fail(f"--upstream {endpoint!r}: {problem} (a central broker's frontend, e.g. "
                  "tcp://central.example:5557)", 2)
    if not endpoints:
        if server_key:
            _fail("--upstream-server-key needs --upstream (the central broker's frontend endpoint)", 2)
        return [], None
    if not server_key:
        return endpoints, None
    try:  # the edge's own key pair (its --curve-secret-key-file), else a key of the moment: encrypted only
        return endpoints, security.ClientCurve(security.load_public_key(server_key),
                                               curve.pair if curve is not None else None)
    except security.SecurityError as exc:
        _fail(f"--upstream-server-key: {exc}", 2)


@app.command()
def runs(
    history: List[str] = typer.Option([broker_module.DEFAULT_HISTORY], "--history", metavar="ENDPOINT",
                                      help="The broker's history endpoint; several (a redundant pair): asked in "
                                           "turn, the next when one does not answer within 2 s."),
    timeout: float = typer.Option(5.0, "--timeout", metavar="SECONDS", min=0.1, help="Seconds to wait for an answer (from any of them)."),
    curve_server_key: Optional[str] = _CURVE_SERVER_KEY,
    curve_secret_key_file: Optional[str] = typer.Option(
        None, "--curve-secret-key-file", metavar="FILE", help="This client's .key_secret file, for a broker that checks keys "
                                              "(a subscriber key: the history serves subscribers)."),
) -> None:
    """List the runs a broker's history knows, with their last status."""
    histories = _history_endpoints(history)
    try:
        sub = Subscriber([], history=histories, history_timeout=timeout, curve_server_key=curve_server_key,
                         curve_secret_key_file=curve_secret_key_file)
    except security.SecurityError as exc:
        _fail(f"runs: --curve-server-key/--curve-secret-key-file: {exc}", 2)
    with sub:
        try:
            answer = sub.request("runs")
        except tail_module.protocol.ProtocolError as exc:
            _fail(f"runs: {exc}")
    if answer is None:
        _fail(f"runs: no answer from {sub.histories.name} within {timeout:g}s"
              + ("" if curve_server_key else " (a broker with CURVE needs --curve-server-key)"))
    typer.echo(tail_module.RUNS_HEADER)
    listed = answer[0].get("runs")
    for run in listed if isinstance(listed, list) else []:
        typer.echo(tail_module.format_run(run))


@app.command()
def spool(
    directory: Optional[str] = typer.Option(None, "--dir", metavar="DIR", help="The spool directory (default: runner_zmq_spool / "
                                            "RUNNER_ZMQ_SPOOL, else $XDG_STATE_HOME/zmq-emitter/spool)."),
    send: bool = typer.Option(False, "--send", help="Send what waits now, each destination with the runner_zmq_* "
                                                    "settings of this environment, and say what was acknowledged."),
    timeout: float = typer.Option(10.0, "--timeout", metavar="SECONDS", min=0.1, help="With --send: seconds to wait for each "
                                                                   "destination's broker to acknowledge."),
) -> None:
    """List or send what processes left unacknowledged in the spool.

    A process's exit spools what its broker had not acknowledged by then; the next process
    publishing to that broker sends it first.
    """
    from .runner import config as runner_config, plugin, spool as spool_module

    try:
        settings = runner_config.load(None)
    except runner_config.ConfigError as exc:
        _fail(str(exc), 2)
    root = runner_config.spool_directory(settings.spool) if directory is None else os.path.expanduser(directory)
    if root is None:
        _fail("the spool is off (runner_zmq_spool is none); name one with --dir", 2)
    files = spool_module.listing(root)
    if not send:
        if not files:
            typer.echo(f"nothing waits in {root}")
            return
        typer.echo(f"{'DESTINATION':<40}  {'PUBLISHER':<16}  {'MESSAGES':>8}  {'BYTES':>10}  {'SEQ':<15}  "
                   f"{'AGE':>8}  STATE")
        now = time.time()
        for f in files:
            state = f"claimed by {f.claimed_by}" if f.claimed_by else "waiting"
            typer.echo(f"{','.join(f.destination):<40}  {f.pub:<16}  {f.messages:>8}  {f.bytes:>10}  "
                       f"{f'{f.first}-{f.last}':<15}  {_age(now - f.created):>8}  {state}")
        return
    code = 0
    for destination in sorted({tuple(f.destination) for f in files if f.claimed_by is None and f.destination}):
        config = dataclasses.replace(settings, url=destination, bind=(), spool=root, linger=int(timeout * 1000))
        try:
            publisher = plugin.Publisher(config)
        except runner_config.ConfigError as exc:
            _fail(str(exc))
        publisher.close()
        for pub, taken, done, again in publisher.spool_report():
            typer.echo(f"{','.join(destination)}: publisher {pub}: {done} of {taken} messages acknowledged (or, "
                       f"by a broker that does not acknowledge, delivered), {again} spooled again")
            code = 1 if again else code
    raise typer.Exit(code)


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


@app.command()
def demo(
    fail_host: str = typer.Option("web2", "--fail-host", metavar="HOST", help="Host whose task fails ('none' for a clean run)."),
    codec: str = typer.Option("json", "--codec", metavar="CODEC", help="json or msgpack."),
) -> None:
    """A real run of the bundled playbook, its events shown live."""
    from . import demo as demo_module

    try:
        code = demo_module.run(fail_host=fail_host, codec=codec)
    except demo_module.DemoError as exc:
        _fail(str(exc))
    raise typer.Exit(code)


eda_app = typer.Typer(no_args_is_help=True, help="The Event-Driven Ansible source (docs/eda.md).")
app.add_typer(eda_app, name="eda")


@eda_app.command("install")
def eda_install(
    path: Optional[str] = typer.Option(None, "--path", metavar="DIR", help="Collections directory to install into "
                                       "(default: ansible-galaxy's own, such as ~/.ansible/collections)."),
) -> None:
    """Install the collection zmq_emitter.eda, shipped in this package.

    Offline, with ansible-galaxy.
    """
    import shutil
    import subprocess

    from .consumers import eda

    galaxy = shutil.which("ansible-galaxy")
    if galaxy is None:
        _fail("ansible-galaxy not found on PATH: install ansible-core (pip install 'ansible-runner-zmq[eda]')")
    raise typer.Exit(subprocess.call(eda.install_command(galaxy, path)))


@eda_app.command("sources")
def eda_sources() -> None:
    """Print the source file's directory, for ansible-rulebook -S.

    The source is then named runner_events.
    """
    from .consumers import eda

    typer.echo(str(eda.SOURCES))


def main() -> None:
    app(prog_name="zmq-emitter")


if __name__ == "__main__":
    main()
