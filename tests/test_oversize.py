"""Events larger than the broker accepts (docs/protocol.md, "Events too large to send").

Real ``ansible-runner run`` processes printing 20 MB and 5 MB, real broker processes with
their default and a smaller ``--max-message-size``, ``tail --until-done`` and ``zmq-emitter runs``.
"""
from __future__ import annotations

import json
import subprocess
import time

import pytest
import zmq

from zmq_emitter import protocol
from zmq_emitter.runner import oversize
from zmq_emitter.runner.config import Config
from zmq_emitter.runner.plugin import Publisher

from conftest import BIN, FINAL_STATUSES, BrokerProcess, job_events, runner_env

BIG_PLAYBOOK = """\
- name: one large event between two small ones
  hosts: db1
  gather_facts: false
  tasks:
    - name: before
      ansible.builtin.debug:
        msg: small
    - name: large
      ansible.builtin.debug:
        msg: "{{ 'x' * (size | int) }}"
    - name: after
      ansible.builtin.debug:
        msg: small
"""


def until_flowing(frontend: str, sub: zmq.Socket) -> None:
    """A probe publisher's messages reach ``sub`` through the broker: the path is up."""
    probe = Publisher(Config(url=(frontend,), linger=0))
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            probe.send(b"event/probe/probe", probe.header_prefix("json"), b"{}")
            if sub.poll(100):
                while sub.poll(200):
                    sub.recv_multipart()
                return
        raise AssertionError("no probe got through the broker")
    finally:
        probe.close()


@pytest.mark.parametrize("size, broker_args, limit", [
    (20_000_000, (), 16 * 2**20),
    (5_000_000, ("--max-message-size", "1000000"), 1_000_000),
], ids=["20MB-default-broker", "5MB-broker-max-1000000"])
def test_an_event_larger_than_the_broker_accepts_arrives_cut_and_everything_after_it_arrives(
        project, tmp_path, size, broker_args, limit):
    (project / "project" / "big.yml").write_text(BIG_PLAYBOOK)
    broker = BrokerProcess(f"ipc://{tmp_path}/f", f"ipc://{tmp_path}/b", "--startup-grace", "0", *broker_args)
    context = zmq.Context()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"status/big/")
    sub.setsockopt(zmq.SUBSCRIBE, b"event/big/")
    sub.setsockopt(zmq.SUBSCRIBE, b"event/probe/")
    sub.connect(broker.backend)
    tail = None
    try:
        until_flowing(broker.frontend, sub)
        tail = subprocess.Popen([str(BIN / "zmq-emitter"), "tail", "--connect", broker.backend, "--history",
                                 broker.history, "--replay", "--ident", "big", "--until-done", "--format", "json"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        run = subprocess.run([str(BIN / "ansible-runner"), "run", str(project), "-p", "big.yml", "--ident", "big",
                              "--cmdline", f"-e size={size}"],
                             env=runner_env(RUNNER_ZMQ_URL=broker.frontend), capture_output=True, text=True,
                             timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        messages, deadline = [], time.monotonic() + 60
        while time.monotonic() < deadline:
            if sub.poll(200):
                msg = protocol.decode(sub.recv_multipart())
                messages.append(msg)
                if msg.kind == "status" and msg.name in FINAL_STATUSES:
                    break
        assert messages and messages[-1].name == "successful", [m.name for m in messages]
        assert tail.wait(30) == 0, tail.stderr.read()
        runs = subprocess.run([str(BIN / "zmq-emitter"), "runs", "--history", broker.history],
                              capture_output=True, text=True, timeout=30)
    finally:
        if tail is not None and tail.poll() is None:
            tail.kill()
        broker.stop()
        context.destroy(0)

    events = [m.payload for m in messages if m.kind == "event"]
    written = job_events(project, "big")
    assert [e["uuid"] for e in events] == [e["uuid"] for e in written]
    cut = [e for e in events if protocol.TRUNCATED in e]
    assert len(cut) == 1 and cut[0]["event"] == "runner_on_ok"
    assert cut[0][protocol.TRUNCATED]["limit"] == limit and cut[0][protocol.TRUNCATED]["bytes"] > size
    assert len(next(m.raw_payload for m in messages if m.kind == "event" and protocol.TRUNCATED in m.payload)) <= limit
    assert [e for e in events if protocol.TRUNCATED not in e] == [e for e in written if len(json.dumps(e)) < size]
    assert "1 of" in run.stderr and "sent cut" in run.stderr
    assert any(line.split()[:2] == ["big", "successful"] for line in runs.stdout.splitlines()), runs.stdout


def test_shrink_cuts_long_texts_keeps_the_rest_and_says_what_it_did():
    event = {"event": "runner_on_ok", "uuid": "u", "counter": 7, "stdout": "y" * 100_000,
             "event_data": {"task": "large", "res": {"msg": "y" * 100_000, "changed": False}}}
    payload = protocol.encode_json(event)
    cut = protocol.decode_json(oversize.shrink(payload, "json", 65536))
    assert cut["stdout"] == "y" * 1024 + oversize.CUT
    assert cut["event_data"]["res"] == {"msg": "y" * 1024 + oversize.CUT, "changed": False}
    assert cut["event_data"]["task"] == "large" and cut["counter"] == 7
    assert cut[protocol.TRUNCATED] == {"bytes": len(payload), "limit": 65536}


def test_shrink_replaces_values_too_large_even_cut_then_falls_back_to_a_notice():
    many = {"event": "runner_on_ok", "uuid": "u", "counter": 1, "created": "2024-01-01T00:00:00",
            "runner_ident": "r", "event_data": {"task": "t", "res": {"results": ["z" * 100] * 5000}}}
    payload = protocol.encode_msgpack(many)
    cut = protocol.decode_msgpack(oversize.shrink(payload, "msgpack", 65536))
    assert cut["event_data"] == {"task": "t", "res": oversize.REPLACED}
    wide = dict(many, **{f"field{i}": ["w" * 100] * 30 for i in range(100)})  # each value small, together large
    notice = protocol.decode_json(oversize.shrink(protocol.encode_json(wide), "json", 65536))
    assert set(notice) == {"event", "uuid", "counter", "created", "runner_ident", protocol.TRUNCATED}
