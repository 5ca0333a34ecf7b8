"""Shared fixtures: real brokers (threads or processes), real ansible-runner projects, real subscribers."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

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


def run_cli(project: Path, ident: str, env: dict, *extra: str, fail_host: str = "web2") -> subprocess.CompletedProcess:
    """``ansible-runner run`` of the demo playbook in its own process."""
    return subprocess.run([str(BIN / "ansible-runner"), "run", str(project), "-p", "demo.yml", "--ident", ident,
                           "--cmdline", f"-e fail_host={fail_host}", *extra],
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


def settle(seconds: float = 0.3) -> None:
    """Give a fresh SUB time to connect and its subscription time to reach the broker.

    A SUB's connect is asynchronous; what a broker forwards before the subscription has
    arrived is not for that SUB (ZeroMQ's slow joiner, subscriber side).
    """
    time.sleep(seconds)


@pytest.fixture
def broker(tmp_path):
    """A broker in a thread of the test process, on ipc endpoints; forwarding at once."""
    instance = Broker([f"ipc://{tmp_path}/frontend"], [f"ipc://{tmp_path}/backend"], [f"ipc://{tmp_path}/history"],
                      startup_grace=0).start()
    instance.wait_forwarding(5)
    yield instance
    instance.stop()


class BrokerProcess:
    """``zmq-emitter broker`` as a real process."""

    def __init__(self, frontend: str, backend: str, *args: str, history: str | None = None):
        self.frontend, self.backend, self.args = frontend, backend, args
        if history is None:  # never the default tcp port: tests may run brokers side by side
            history = frontend.rsplit("/", 1)[0] + "/history" if frontend.startswith("ipc://") else "none"
        self.history = history
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen([str(BIN / "zmq-emitter"), "broker", "--frontend", self.frontend,
                                      "--backend", self.backend, "--history", self.history, *self.args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stderr.readline()
        assert "zmq-emitter broker:" in line, f"broker did not start: {line}{self.proc.stderr.read()}"

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()


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
