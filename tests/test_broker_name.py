"""`zmq-emitter broker --name`: the stable name runners know a broker by, in its presence upstream."""
from __future__ import annotations

import subprocess

import zmq

from conftest import BIN, BrokerProcess

from zmq_emitter import protocol
from zmq_emitter.broker.broker import default_name


def presence_of(frontend: str) -> protocol.Presence:
    """The presence a broker announces to a runner's socket that connects to ``frontend``."""
    context = zmq.Context()
    runner = context.socket(zmq.XPUB)
    runner.setsockopt(zmq.XPUB_VERBOSE, 1)
    try:
        runner.connect(frontend)
        while True:
            assert runner.poll(10_000), "no presence from the broker"
            presence = protocol.parse_presence(runner.recv()[1:])
            if presence is not None:
                return presence
    finally:
        runner.close(0)
        context.term()


def test_the_broker_announces_the_name_given_with_name_and_keeps_it_across_a_restart(tmp_path):
    broker = BrokerProcess(f"ipc://{tmp_path}/f", f"ipc://{tmp_path}/b", "--startup-grace", "0", "--name", "east-1")
    try:
        first = presence_of(broker.frontend)
        broker.kill()
        broker.start()
        second = presence_of(broker.frontend)
    finally:
        broker.stop()
    assert first.broker == second.broker == "east-1" and first.token != second.token


def test_without_name_the_broker_is_named_after_its_host_and_frontend(tmp_path):
    frontend = f"ipc://{tmp_path}/f"
    broker = BrokerProcess(frontend, f"ipc://{tmp_path}/b", "--startup-grace", "0")
    try:
        assert presence_of(frontend).broker == default_name([frontend])
    finally:
        broker.stop()


def test_an_empty_name_is_refused_with_the_option_named(tmp_path):
    result = subprocess.run([str(BIN / "zmq-emitter"), "broker", "--frontend", f"ipc://{tmp_path}/f",
                             "--backend", f"ipc://{tmp_path}/b", "--history", f"ipc://{tmp_path}/h", "--name", " "],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and result.stderr.startswith("zmq-emitter: --name") and "Traceback" not in result.stderr
