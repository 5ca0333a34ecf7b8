"""A CURVE broker's history service: acknowledgements, `zmq-emitter runs` and replay over CURVE, and the
broker's log of refused keys (once a minute per key and side).  Real broker processes, real keys."""
from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pytest
import zmq

from conftest import BIN, job_events, run_cli, runner_env
from test_acks_broker import AckingPublisher
from test_security import Keys, handshake

from zmq_emitter import protocol, security
from zmq_emitter.consumers.subscriber import Subscriber

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="this libzmq has no CURVE")


@pytest.fixture
def keys(tmp_path) -> Keys:
    return Keys(tmp_path / "keys")


class CurveBroker:
    """``zmq-emitter broker`` with CURVE and both key directories, its stderr collected line by line."""

    def __init__(self, tmp_path: Path, keys: Keys):
        self.frontend, self.backend, self.history = (f"ipc://{tmp_path}/f", f"ipc://{tmp_path}/b",
                                                     f"ipc://{tmp_path}/h")
        self.proc = subprocess.Popen([str(BIN / "zmq-emitter"), "broker", "--frontend", self.frontend,
                                      "--backend", self.backend, "--history", self.history, "--startup-grace", "0",
                                      "--curve-secret-key-file", str(keys.secret("broker")),
                                      "--publisher-keys", str(keys.publishers),
                                      "--subscriber-keys", str(keys.subscribers)],
                                     stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + 30
        while not any("CURVE on" in line for line in self.lines):
            assert time.monotonic() < deadline and self.proc.poll() is None, self.lines
            time.sleep(0.02)

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def curve_broker(tmp_path, keys):
    broker = CurveBroker(tmp_path, keys)
    yield broker
    broker.stop()


def test_acknowledgements_runs_and_replay_all_work_over_curve(curve_broker, keys):
    context = zmq.Context()
    runner = AckingPublisher(context, curve_broker.frontend,
                             curve=security.ClientCurve(keys.pair("broker").public, keys.pair("runner")))
    try:
        runner.publish(200)
        deadline = time.monotonic() + 30
        while runner.kept and time.monotonic() < deadline:  # acknowledged through the CURVE frontend
            runner.pump()
            runner.sock.poll(10)
        assert not runner.kept and runner.acks[-1] == 200
    finally:
        runner.sock.close(0)
        context.term()

    listing = subprocess.run([str(BIN / "zmq-emitter"), "runs", "--history", curve_broker.history,
                              "--curve-server-key", str(keys.public("broker")),
                              "--curve-secret-key-file", str(keys.secret("reader"))],
                             capture_output=True, text=True, timeout=30)
    assert listing.returncode == 0, listing.stderr
    (row,) = [line for line in listing.stdout.splitlines() if line.startswith("flood ")]
    assert row.split()[2] == "200"

    with Subscriber([], history=curve_broker.history, curve_server_key=str(keys.public("broker")),
                    curve_secret_key_file=str(keys.secret("reader"))) as reader:
        info, replayed = reader.request("replay", ident="flood", from_seq=1)
    assert [protocol.decode(m).seq for m in replayed] == list(range(1, 201)) and info["missing"] == []


def test_a_real_run_over_curve_is_acknowledged_listed_and_replayed(curve_broker, keys, project):
    result = run_cli(project, "curved", runner_env(RUNNER_ZMQ_URL=curve_broker.frontend,
                                                   RUNNER_ZMQ_CURVE_SERVER_KEY=str(keys.public("broker")),
                                                   RUNNER_ZMQ_CURVE_SECRET_KEY_FILE=str(keys.secret("runner"))))
    assert "never acknowledged" not in result.stderr and "lost" not in result.stderr, result.stderr

    listing = subprocess.run([str(BIN / "zmq-emitter"), "runs", "--history", curve_broker.history,
                              "--curve-server-key", str(keys.public("broker")),
                              "--curve-secret-key-file", str(keys.secret("reader"))],
                             capture_output=True, text=True, timeout=30)
    assert listing.returncode == 0, listing.stderr
    (row,) = [line for line in listing.stdout.splitlines() if line.startswith("curved ")]
    assert row.split()[1] == "failed"

    with Subscriber([], history=curve_broker.history, curve_server_key=str(keys.public("broker")),
                    curve_secret_key_file=str(keys.secret("reader"))) as reader:
        info, replayed = reader.request("replay", ident="curved", from_seq=1)
    decoded = [protocol.decode(m) for m in replayed]
    assert info["missing"] == [] and [m.payload for m in decoded if m.kind == "event"] == job_events(project, "curved")


def test_runs_with_an_unlisted_key_gets_no_answer_and_says_what_to_check(curve_broker, keys):
    refused = subprocess.run([str(BIN / "zmq-emitter"), "runs", "--history", curve_broker.history, "--timeout", "1",
                              "--curve-server-key", str(keys.public("broker")),
                              "--curve-secret-key-file", str(keys.secret("runner"))],  # a publisher's key
                             capture_output=True, text=True, timeout=30)
    assert refused.returncode == 1 and "no answer from the history service" in refused.stderr
    plain = subprocess.run([str(BIN / "zmq-emitter"), "runs", "--history", curve_broker.history, "--timeout", "1"],
                           capture_output=True, text=True, timeout=30)
    assert plain.returncode == 1 and "--curve-server-key" in plain.stderr and "Traceback" not in plain.stderr


def test_refused_keys_are_logged_once_per_key_and_side_naming_both(curve_broker, keys):
    rogue = keys.pair("rogue")
    context = zmq.Context()
    try:
        for endpoint, kind in [(curve_broker.frontend, zmq.XPUB)] * 3 + [(curve_broker.backend, zmq.SUB)] * 3 \
                + [(curve_broker.history, zmq.REQ)] * 2:
            sock = context.socket(kind)
            security.curve_client(sock, keys.pair("broker").public, rogue)
            assert handshake(sock, endpoint) != "succeeded"
            sock.close(0)
        runner = context.socket(zmq.XPUB)  # a listed key: never logged
        security.curve_client(runner, keys.pair("broker").public, keys.pair("runner"))
        assert handshake(runner, curve_broker.frontend) == "succeeded"
        runner.close(0)
    finally:
        context.term()
    refusals, deadline = [], time.monotonic() + 10
    while len(refusals) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
        refusals = [line for line in curve_broker.lines if "refused a CURVE client" in line]
    assert len(refusals) == 2, curve_broker.lines
    publishers, subscribers = sorted(refusals, key=lambda line: "subscribers" in line)
    key = rogue.public.decode()
    assert "publishers side" in publishers and key in publishers and str(keys.publishers) in publishers
    assert "subscribers side" in subscribers and key in subscribers and str(keys.subscribers) in subscribers
    assert keys.pair("runner").public.decode() not in "\n".join(curve_broker.lines)
