"""Shared fixtures and helpers: real brokers (threads or processes), real ansible-runner projects, real
subscribers, and ways to wait for a condition instead of sleeping.

One place each: ``BrokerProcess`` (a ``zmq-emitter broker`` process), ``RawPublisher`` (a plain PUB
sending protocol frames), ``until_flowing``/``wait_subscribed`` (the slow joiner, waited out),
``receive``, ``wait_connected``, ``wait_until``, ``rss_mib``; ``network`` (hosts in Linux network
namespaces, ``netns.py``).
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterable

import pytest
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository: benchmarks/ is shared
from benchmarks.common import stop_process  # noqa: E402 (the benchmarks' processes stop the same way)
from zmq_emitter import protocol, security
from zmq_emitter.broker import Broker
from zmq_emitter.demo import PROJECT
from zmq_emitter.consumers.subscriber import Subscriber

BIN = Path(sys.executable).parent
FINAL_STATUSES = {"successful", "failed", "timeout", "canceled", "error"}


def pytest_addoption(parser):
    parser.addoption("--soak", action="store_true", help="run the long soak and stress tests")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--soak"):
        return
    skip = pytest.mark.skip(reason="soak test: run with --soak")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _spool_away_from_home(tmp_path_factory):
    """The plugin's spool (default $XDG_STATE_HOME/zmq-emitter/spool) in a temporary directory, never in ~."""
    os.environ["XDG_STATE_HOME"] = str(tmp_path_factory.mktemp("state"))


def runner_env(**zmq_settings: str) -> dict:
    """The environment for an ansible-runner subprocess: this venv first on PATH, no RUNNER_ZMQ_* leaking in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNNER_ZMQ_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(zmq_settings)
    return env


@pytest.fixture
def project(tmp_path) -> Path:
    """A fresh copy of the bundled demo project (ansible-runner writes its artifacts into it)."""
    target = tmp_path / "project"
    shutil.copytree(PROJECT, target)
    return target


def job_events(project: Path, ident: str) -> list[dict]:
    """The events ansible-runner wrote to artifacts/<ident>/job_events, in counter order."""
    files = (project / "artifacts" / ident / "job_events").glob("*.json")
    ordered = sorted(files, key=lambda f: int(f.name.split("-", 1)[0]))
    return [json.loads(f.read_text()) for f in ordered]


def run_cli(project: Path, ident: str, env: dict, *extra: str, fail_host: str = "web2",
            cmdline: str = "") -> subprocess.CompletedProcess:
    """``ansible-runner run`` of the demo playbook in its own process (``cmdline``: more ansible-playbook options)."""
    return subprocess.run([str(BIN / "ansible-runner"), "run", str(project), "-p", "demo.yml", "--ident", ident,
                           "--cmdline", f"-e fail_host={fail_host} {cmdline}".strip(), *extra],
                          env=env, capture_output=True, text=True, timeout=120)


def collect_run(sub: Subscriber, ident: str, timeout: float = 30.0) -> list:
    """Every message of run ``ident`` up to and including its final status."""
    messages, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = sub.recv(timeout=0.5)
        if msg is None or msg.ident != ident:
            continue
        messages.append(msg)
        if msg.kind == "status" and msg.name in FINAL_STATUSES:
            return messages
    raise AssertionError(f"run {ident}: no final status within {timeout}s; got {[m.name for m in messages]}")


def wait_recorded(history: str, publisher: str, seq: int, timeout: float = 30.0) -> None:
    """Until the broker's history (endpoint ``history``) has recorded ``publisher`` up to ``seq``.

    A publisher's flush waits for acknowledgements only once it has seen one: the first
    messages of a process may be flushed before the broker recorded them.
    """
    deadline = time.monotonic() + timeout
    with Subscriber([], history=history) as asker:
        while time.monotonic() < deadline:
            answer = asker.request("runs")
            if answer and any(p["publisher"] == publisher and p["last_seq"] >= seq for p in answer[0]["publishers"]):
                return
            time.sleep(0.05)
    raise AssertionError(f"the history did not record {publisher} up to seq {seq} within {timeout}s")


def wait_until(predicate: Callable[[], object], timeout: float = 30.0, interval: float = 0.02,
               message: str = "condition") -> None:
    """Poll ``predicate`` until it is true; AssertionError naming ``message`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{message}: not within {timeout}s")
        time.sleep(interval)


def wait_run_recorded(history: str, ident: str, timeout: float = 30.0) -> None:
    """Until the broker's history (endpoint ``history``) has recorded run ``ident`` up to its final status."""
    with Subscriber([], history=history) as asker:
        wait_until(lambda: any(run["ident"] == ident and run["status"] in FINAL_STATUSES for run in asker.runs()),
                   timeout, 0.05, f"the history did not record run {ident} to its final status")


# ---------------------------------------------------------------------------------------
# The slow joiner, waited out: a SUB's connect and subscription are asynchronous, and what a
# broker forwards before a subscription has arrived is not for that SUB.  Probes show the
# path is up; they are on run PROBE (tests' own runs never use it), each prober numbering
# them as a publisher of its own.

PROBE = "probe"


def _probe_arrived(sub, ident: str, timeout: float) -> bool:
    if isinstance(sub, zmq.Socket):  # a plain SUB socket
        return bool(sub.poll(int(timeout * 1000))) and f"/{ident}/".encode() in sub.recv_multipart()[0]
    msg = sub.recv(timeout=timeout)
    return msg is not None and msg.ident == ident


def until_flowing(subs: Iterable, send_probe: Callable[[], object], ident: str = PROBE,
                  timeout: float = 30.0) -> None:
    """Call ``send_probe()`` (which publishes one message of run ``ident``) until each of ``subs`` (Subscriber
    objects or plain SUB sockets) received one, then drain the probes still in flight: the path from that
    publisher through the broker to each subscriber is up.  Call it before anything else is published."""
    subs = list(subs)
    waiting, deadline = list(subs), time.monotonic() + timeout
    while waiting:
        if time.monotonic() > deadline:
            raise AssertionError(f"no probe reached {len(waiting)} of {len(subs)} subscribers within {timeout}s")
        send_probe()
        waiting = [sub for sub in waiting if not _probe_arrived(sub, ident, 0.05)]
    for sub in subs:
        while _probe_arrived(sub, ident, 0.2):
            pass


def wait_subscribed(frontend: str, *subs, ident: str = PROBE, timeout: float = 30.0) -> str:
    """Until the subscriptions of ``subs`` are in place at the broker whose frontend is ``frontend``
    (probes from a publisher of their own, see ``until_flowing``); that publisher's id."""
    with RawPublisher(frontend) as prober:
        prober.until_received(*subs, ident=ident, timeout=timeout)
        return prober.probe_pub


def wait_upstream(frontend: str, *topics: str, timeout: float = 30.0) -> None:
    """Until the broker whose frontend is ``frontend`` passes subscriptions to each of ``topics`` upstream, as a
    runner's XPUB sees them: subscribers anywhere (other processes too) have subscribed to them.

    The broker passes on only the first subscription to a topic: for topics no other subscriber has.
    """
    context = zmq.Context()
    watcher = context.socket(zmq.XPUB)
    watcher.setsockopt(zmq.XPUB_VERBOSE, 1)
    watcher.connect(frontend)
    try:
        wanted, seen, deadline = {b"\x01" + t.encode() for t in topics}, set(), time.monotonic() + timeout
        while not wanted <= seen:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not watcher.poll(remaining * 1000):
                raise AssertionError(f"subscriptions not passed upstream within {timeout}s: {wanted - seen}")
            seen.add(watcher.recv())
    finally:
        context.destroy(linger=0)


def wait_connected(endpoint: str, count: int, timeout: float = 30.0) -> None:
    """Until ``count`` peers are connected to the ipc:// endpoint a broker bound (Linux's /proc/net/unix).

    For subscribers in other processes (``zmq-emitter tail``, the examples), which a probe cannot
    ask: a SUB sends its subscription as soon as its connection is up, long before an
    ``ansible-runner run`` started afterwards publishes its first message.
    """
    path = endpoint.removeprefix("ipc://")

    def connected() -> int:
        with open("/proc/net/unix") as table:  # Num RefCount Protocol Flags Type St Inode Path; St 03: connected
            return sum(1 for line in table if line.split()[-1] == path and line.split()[5] == "03")

    wait_until(lambda: connected() >= count, timeout, 0.02, f"{count} peers connected to {endpoint}")


def receive(sub: Subscriber, count: int, ident: str | None = None, timeout: float = 10.0) -> list[protocol.Message]:
    """Up to ``count`` status and event messages (of run ``ident``, if given), leaving out probes and
    publishers' closing reports; fewer if they do not come within ``timeout`` seconds."""
    messages, deadline = [], time.monotonic() + timeout
    while len(messages) < count and time.monotonic() < deadline:
        msg = sub.recv(timeout=0.2)
        if msg is not None and msg.kind != "publisher" and msg.ident != PROBE and ident in (None, msg.ident):
            messages.append(msg)
    return messages


class RawPublisher:
    """A plain PUB socket sending protocol frames (or any frames), so that a test knows exactly what went in.

    ``send`` numbers its messages as publisher ``pub_id``; ``frames`` builds any message (another
    publisher, another seq, another codec) for ``send_frames``; ``until_received`` probes until
    this socket's path to the given subscribers is up.
    """

    def __init__(self, endpoint: str, pub_id: str = "feedfacecafebeef", *, context: zmq.Context | None = None,
                 linger: int = 1000, curve: security.ClientCurve | None = None):
        self._own_context = context is None
        self.context = context or zmq.Context()
        self.sock = self.context.socket(zmq.PUB)
        self.sock.setsockopt(zmq.LINGER, linger)
        if curve is not None:  # a CURVE client of a broker with CURVE
            curve.apply(self.sock)
        self.sock.connect(endpoint)
        self.pub_id, self.seq = pub_id, 0
        self.probe_pub, self._probes = secrets.token_hex(8), 0  # never a test's publisher

    def frames(self, ident: str, name: str, payload, *, pub: str | None = None, seq: int | None = None,
               codec: str = "json", kind: str = "event") -> list[bytes]:
        if seq is None:
            self.seq += 1
            seq = self.seq
        header = protocol.header_prefix(codec, pub or self.pub_id) + b"%d}" % seq
        return [protocol.topic(kind, ident, name), header, protocol.ENCODERS[codec](payload)]

    def send(self, ident: str, name: str, payload, **options) -> list[bytes]:
        frames = self.frames(ident, name, payload, **options)
        self.sock.send_multipart(frames)
        return frames

    def send_frames(self, frames: list[bytes]) -> None:
        self.sock.send_multipart(frames)

    def until_received(self, *subs, ident: str = PROBE, timeout: float = 30.0) -> None:
        """Probe (on run ``ident``, as a publisher of its own) until each of ``subs`` got one (``until_flowing``)."""
        def probe():
            self._probes += 1
            self.send(ident, "probe", {"probe": True}, pub=self.probe_pub, seq=self._probes)
        until_flowing(subs, probe, ident, timeout)

    def close(self) -> None:
        self.sock.close(linger=0)
        if self._own_context:
            self.context.term()

    def __enter__(self) -> "RawPublisher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def rss_mib(pid: int) -> float | None:
    """The resident memory of process ``pid`` in MiB; None if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


@pytest.fixture
def broker(tmp_path):
    """A broker in a thread of the test process, on ipc endpoints; forwarding at once."""
    instance = Broker([f"ipc://{tmp_path}/frontend"], [f"ipc://{tmp_path}/backend"], [f"ipc://{tmp_path}/history"],
                      startup_grace=0).start()
    instance.wait_forwarding(5)
    yield instance
    instance.stop()


class BrokerProcess:
    """``zmq-emitter broker`` as a real process.

    ``frontend``, ``backend`` and ``history`` are the endpoints it bound (a tcp port 0 becomes the
    port the OS chose); ``log`` collects its stderr lines as they come (read by a thread, so
    that a chatty broker never blocks on a full pipe); ``kill``/``start`` restart it on the
    same endpoints.  With ``host`` (a ``netns.Host``), it runs on that host of the test network;
    ``program``: another installation's ``zmq-emitter`` (the release test's fresh virtual environment).
    """

    def __init__(self, frontend: str, backend: str, *args: str, history: str | None = None, host=None,
                 program: Path = BIN / "zmq-emitter"):
        self.frontend, self.backend, self.args, self.host, self.program = frontend, backend, args, host, program
        if history is None:  # never the default tcp port: tests may run brokers side by side
            history = frontend.rsplit("/", 1)[0] + "/history" if frontend.startswith("ipc://") else "none"
        self.history = history
        self.proc: subprocess.Popen | None = None
        self.log: list[str] = []
        self.start()

    def start(self) -> None:
        argv = [str(self.program), "broker", "--frontend", self.frontend, "--backend", self.backend,
                "--history", self.history, *self.args]
        self.proc = subprocess.Popen(self.host.command(argv) if self.host else argv,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stderr.readline()
        assert "zmq-emitter broker:" in line, f"broker did not start: {line}{self.proc.stderr.read()}"
        self.start_line = line
        self.log.append(line)
        bound = {label: re.search(re.escape(label) + r" ([^;,]+)", line) for label in
                 ("runners publish to", "subscribers connect to", "history at")}
        self.frontend, self.backend = bound["runners publish to"][1].strip(), bound["subscribers connect to"][1].strip()
        if self.history != "none":
            self.history = bound["history at"][1].strip()
        self._reader = threading.Thread(target=lambda proc=self.proc: self.log.extend(proc.stderr), daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        """What the process wrote to stderr so far (all of it, once it has exited)."""
        if self.proc.poll() is not None:
            self._reader.join(10)
        return "".join(self.log)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc:
            stop_process(self.proc, 5)


@pytest.fixture
def broker_process(tmp_path):
    """``zmq-emitter broker`` in its own process, on ipc endpoints, with no start-up grace."""
    proc = BrokerProcess(f"ipc://{tmp_path}/frontend", f"ipc://{tmp_path}/backend", "--startup-grace", "0")
    yield proc
    proc.stop()


@pytest.fixture
def fresh_plugin():
    """The plugin's per-process state (publishers, routes) empty before the test, closed after it.

    In-process runs (``ansible_runner.run``, direct handler calls) share the test process's
    publishers; a test that counts sockets or sequence numbers needs to start from none.
    """
    from zmq_emitter.runner import plugin

    def reset():
        for publisher in list(plugin._publishers.values()):
            publisher.close()
        plugin._publishers.clear()
        plugin._routes.clear()

    reset()
    yield plugin
    reset()


@pytest.fixture
def inprocess_env(monkeypatch):
    """The test process's own environment made like ``runner_env()``, for in-process ``ansible_runner.run``.

    No RUNNER_ZMQ_* variable (set them with the returned monkeypatch), this venv first on
    PATH so that ansible-runner finds ansible-playbook.
    """
    for name in list(os.environ):
        if name.startswith("RUNNER_ZMQ_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    return monkeypatch


@pytest.fixture
def network():
    """A test network of hosts (``netns.Network``): skipped, with the reason, where namespaces cannot
    be made (not root, no iproute2); everything in it killed and removed after the test, pass or fail."""
    import netns
    reason = netns.unavailable()
    if reason:
        pytest.skip(reason)
    with netns.Network() as net:
        yield net
