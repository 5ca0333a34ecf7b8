"""The ``zmq-emitter`` command: a thin layer over the library.

    zmq-emitter broker                 # fan runners' messages out to subscribers
    zmq-emitter tail                   # watch them in a terminal
    zmq-emitter demo                   # a real ansible-runner run, shown live

``zmq-emitter COMMAND --help`` lists each command's options.
"""
from __future__ import annotations

import signal
import sys
import threading
from typing import List, Optional

import typer
import zmq

from . import broker as broker_module
from . import tail as tail_module
from .config import check_endpoint
from .subscriber import DEFAULT_ENDPOINT

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="ZeroMQ event bus for ansible-runner: broker, tail and demo.")


def _split(values: List[str]) -> List[str]:
    """Options take repeated and comma-separated values alike."""
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"zmq-emitter: {message}", err=True)
    raise typer.Exit(code)


@app.command()
def broker(
    frontend: List[str] = typer.Option([broker_module.DEFAULT_FRONTEND], "--frontend", "-f",
                                       help="Endpoint(s) runners publish to (XSUB), comma-separated."),
    backend: List[str] = typer.Option([broker_module.DEFAULT_BACKEND], "--backend", "-b",
                                      help="Endpoint(s) subscribers connect to (XPUB), comma-separated."),
    stats_interval: Optional[float] = typer.Option(None, "--stats-interval", min=0.1,
                                                   help="Print traffic statistics every this many seconds."),
    max_message_size: int = typer.Option(broker_module.DEFAULT_MAX_MESSAGE_SIZE, "--max-message-size", min=1,
                                         help="Disconnect a publisher that sends a larger message (bytes)."),
    startup_grace: float = typer.Option(1.0, "--startup-grace", min=0,
                                        help="Seconds to let subscribers (re)connect before forwarding starts."),
) -> None:
    """Run a broker in the foreground until SIGINT or SIGTERM."""
    instance = broker_module.Broker(_split(frontend), _split(backend), max_message_size=max_message_size,
                                    startup_grace=startup_grace)
    try:
        instance.start()
    except broker_module.BrokerError as exc:
        _fail(str(exc))
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    typer.echo(f"zmq-emitter broker: runners publish to {', '.join(instance.frontend_endpoints)}; "
               f"subscribers connect to {', '.join(instance.backend_endpoints)}", err=True)
    try:
        broker_module.run_forever(instance, stats_interval, lambda line: typer.echo(line, err=True), stop)
    finally:
        instance.stop()


@app.command()
def tail(
    connect: List[str] = typer.Option([DEFAULT_ENDPOINT], "--connect", "-c",
                                      help="Broker backend or runner (bind mode) endpoint(s)."),
    topic: List[str] = typer.Option([], "--topic", "-t", help="status or event (default: both)."),
    ident: Optional[str] = typer.Option(None, "--ident", "-i", help="Only this run (filtered at the source)."),
    event: List[str] = typer.Option([], "--event", "-e", help="Only these events, e.g. runner_on_failed."),
    host: List[str] = typer.Option([], "--host", help="Only events of these hosts."),
    count: Optional[int] = typer.Option(None, "--count", "-n", min=1, help="Exit after this many messages."),
    fmt: str = typer.Option("pretty", "--format", help="pretty, json or stdout."),
    until_done: bool = typer.Option(False, "--until-done",
                                    help="Exit at the run's final status: 0 successful, 1 failed, 3 timeout, "
                                         "4 canceled, 5 error."),
    colour: Optional[bool] = typer.Option(None, "--color/--no-color", help="Colour (default: on a terminal)."),
) -> None:
    """Print runs' statuses and events as they arrive."""
    kinds = tuple(_split(topic)) or tail_module.protocol.KINDS
    for kind in kinds:
        if kind not in tail_module.protocol.KINDS:
            _fail(f"--topic {kind!r}: accepted: status, event", 2)
    if fmt not in tail_module.FORMATS:
        _fail(f"--format {fmt!r}: accepted: {', '.join(tail_module.FORMATS)}", 2)
    endpoints = _split(connect)
    for endpoint in endpoints:
        problem = check_endpoint(endpoint, bind=False)
        if problem:
            _fail(f"--connect {endpoint!r}: {problem}", 2)
    filters = tail_module.Filters(kinds=kinds, ident=ident, events=tuple(_split(event)), hosts=tuple(_split(host)))
    try:
        code = tail_module.run(endpoints, filters, fmt=fmt, count=count, until_done=until_done, colour=colour)
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:  # e.g. `zmq-emitter tail | head`
        sys.stderr.close()
        code = 0
    except zmq.ZMQError as exc:
        _fail(f"tail: {exc}")
    raise typer.Exit(code)


@app.command()
def demo(
    fail_host: str = typer.Option("web2", "--fail-host", help="Host whose task fails ('none' for a clean run)."),
    codec: str = typer.Option("json", "--codec", help="json or msgpack."),
) -> None:
    """Start a broker, run the bundled playbook with the plugin on, and show its events live."""
    from . import demo as demo_module

    try:
        code = demo_module.run(fail_host=fail_host, codec=codec)
    except demo_module.DemoError as exc:
        _fail(str(exc))
    raise typer.Exit(code)


def main() -> None:
    app(prog_name="zmq-emitter")


if __name__ == "__main__":
    main()
