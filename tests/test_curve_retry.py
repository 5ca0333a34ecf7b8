"""A runner whose CURVE key a broker refused tries again: a key added to the broker's directory later works."""
from __future__ import annotations

import shutil
import time

import pytest
import zmq

from zmq_emitter import security
from zmq_emitter.consumers.subscriber import Subscriber
from zmq_emitter.runner.config import Config
from zmq_emitter.runner.plugin import Publisher

from conftest import BrokerProcess

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="this libzmq has no CURVE")


def test_a_runner_refused_by_a_curve_broker_says_so_once_and_gets_through_once_its_key_is_added(tmp_path, caplog):
    keys, listed = tmp_path / "keys", tmp_path / "publishers"
    listed.mkdir()
    broker_public, broker_secret = security.generate_keys(keys, "broker")
    runner_public, runner_secret = security.generate_keys(keys, "runner")
    broker = BrokerProcess(f"ipc://{tmp_path}/f", f"ipc://{tmp_path}/b", "--startup-grace", "0",
                           "--curve-secret-key-file", str(broker_secret), "--publisher-keys", str(listed))
    publisher = Publisher(Config(url=(broker.frontend,), curve_server_key=security.load_public_key(broker_public),
                                 curve_key_pair=security.load_key_pair(runner_secret), linger=0, spool=None))
    try:
        with Subscriber([broker.backend], curve_server_key=str(broker_public)) as sub:
            header = publisher.header_prefix("json")
            publisher.send(b"status/refused/running", header, b'{"status": "running"}')
            deadline = time.monotonic() + 20
            while "refused this runner's CURVE key" not in caplog.text:
                assert time.monotonic() < deadline, "the refusal was never said"
                publisher.flush(0.1)
            shutil.copy(runner_public, listed / "runner.key")  # the operator adds the key
            deadline = time.monotonic() + 30
            while (msg := sub.recv(timeout=0.2)) is None:  # (the subscriber's own slow join: send more)
                assert time.monotonic() < deadline, "the runner never got through"
                publisher.send(b"status/refused/running", header, b'{"status": "running"}')
        assert msg.ident == "refused"
    finally:
        publisher.close()
        broker.stop()
    assert caplog.text.count("refused this runner's CURVE key") == 1
