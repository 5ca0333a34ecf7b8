"""Helpers of the consumer tests (``test_*_edges.py``, ``test_consumer_*.py``).

- ``message``: the frames of one protocol message, as a publisher sends them;
- ``BoundPublisher``: a raw XPUB that subscribers connect to (bind mode), which tells when their
  subscriptions have arrived, so a test knows they are in place without sleeping;
- ``publisher_into``: a raw XPUB connected to a broker's frontend, once the broker subscribed;
- ``LateHop``: a forwarder between a broker's backend and a subscriber, started when the test
  says: a subscription that reaches the broker late, on demand;
- ``two_runs_of_one_process``: two ``ansible_runner.run_async`` runs in one process; ``wait_closed``
  until a broker's history has recorded them;
- ``tail`` / ``finish``: ``zmq-emitter tail`` as a real process;
- ``garbage`` / ``hostile_to_examples``: frames no subscriber may crash on.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import msgpack
import zmq

from conftest import BIN, FINAL_STATUSES, runner_env

from zmq_emitter import protocol
from zmq_emitter.consumers import Subscriber


def message(pub: str, seq: int, kind: str = "event", ident: str = "run", name: str = "runner_on_ok",
            payload: object = None, codec: str = "json") -> list[bytes]:
    payload = {"runner_ident": ident, "seq": seq} if payload is None else payload
    return [protocol.topic(kind, ident, name), protocol.header_prefix(codec, pub) + b"%d}" % seq,
            protocol.ENCODERS[codec](payload)]


class BoundPublisher:
    """An XPUB bound at ``endpoint``: subscribers connect to it as to a runner in bind mode."""

    def __init__(self, context: zmq.Context, endpoint: str):
        self.sock = context.socket(zmq.XPUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # every subscription, even one already known
        self.sock.bind(endpoint)
        self.endpoint = endpoint
        self.subscribed: list[bytes] = []

    def wait_subscribed(self, *prefixes: bytes, timeout: float = 30.0) -> None:
        """Until a subscriber's subscription to each of ``prefixes`` has arrived here (then it is in place)."""
        deadline = time.monotonic() + timeout
        while not set(prefixes) <= set(self.subscribed):
            assert time.monotonic() < deadline, f"subscriptions {prefixes} never came; got {self.subscribed}"
            if self.sock.poll(100):
                frame = self.sock.recv()
                if frame[:1] == b"\x01":
                    self.subscribed.append(frame[1:])

    def send(self, frames: list[bytes]) -> None:
        self.sock.send_multipart(frames)


def publisher_into(context: zmq.Context, frontend: str, curve=None) -> zmq.Socket:
    """An XPUB connected to a broker's frontend, returned once the broker's data subscription came."""
    sock = context.socket(zmq.XPUB)
    sock.setsockopt(zmq.LINGER, 0)
    if curve is not None:
        curve.apply(sock)
    sock.connect(frontend)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if sock.poll(100) and sock.recv() == b"\x01":  # (its presence comes first: \x01\x00zmq-emitter/broker ...)
            return sock
    raise AssertionError("the broker never subscribed")


class LateHop:
    """XSUB (to a broker's backend) -> XPUB (``endpoint``), forwarding only from ``start()`` on."""

    def __init__(self, context: zmq.Context, upstream: str, endpoint: str):
        self.context, self.upstream, self.endpoint = context, upstream, endpoint
        self._thread: threading.Thread | None = None
        self._control: zmq.Socket | None = None

    def start(self) -> None:
        xsub, xpub = self.context.socket(zmq.XSUB), self.context.socket(zmq.XPUB)
        for sock in (xsub, xpub):
            sock.setsockopt(zmq.LINGER, 0)
        xpub.bind(self.endpoint)
        xsub.connect(self.upstream)
        control = self.context.socket(zmq.PAIR)
        control.bind(f"inproc://late-hop-{id(self)}")
        self._control = self.context.socket(zmq.PAIR)
        self._control.connect(f"inproc://late-hop-{id(self)}")

        def forward():
            try:
                zmq.proxy_steerable(xsub, xpub, None, control)
            finally:
                for sock in (xsub, xpub, control):
                    sock.close(linger=0)

        self._thread = threading.Thread(target=forward, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._control.send(b"TERMINATE")
            self._thread.join(10)
            self._control.close(linger=0)


TWO_RUNS = """
import sys, ansible_runner
first, second = sys.argv[1:3]
runs = [ansible_runner.run_async(private_data_dir=path, playbook="demo.yml", ident=ident, quiet=True)
        for path, ident in ((first, "async-a"), (second, "async-b"))]
for thread, _ in runs:
    thread.join()
print(" ".join(runner.status for _, runner in runs))
"""


def two_runs_of_one_process(projects: tuple[Path, Path], frontend: str) -> None:
    """Runs ``async-a`` and ``async-b`` of the demo playbook at once, in one process (one publisher)."""
    result = subprocess.run([sys.executable, "-c", TWO_RUNS, *map(str, projects)],
                            env=runner_env(RUNNER_ZMQ_URL=frontend), capture_output=True, text=True, timeout=180)
    assert result.stdout.split() == ["failed", "failed"], result.stdout + result.stderr


def wait_closed(history: str, idents: set[str], timeout: float = 60.0) -> dict:
    """Until the history has the final status of each run in ``idents`` and the closing report of their
    publisher; that publisher's entry of the ``runs`` answer."""
    deadline = time.monotonic() + timeout
    with Subscriber([], history=history) as asker:
        while time.monotonic() < deadline:
            answer = asker.request("runs")
            if answer:
                runs = {run["ident"]: run for run in answer[0]["runs"]}
                if all(runs.get(ident, {}).get("status") in FINAL_STATUSES for ident in idents):
                    publishers = {pub for ident in idents for pub in runs[ident]["publishers"]}
                    closed = [p for p in answer[0]["publishers"] if p["publisher"] in publishers and p["closed"]]
                    if len(closed) == len(publishers) == 1:
                        return closed[0]
            time.sleep(0.1)
    raise AssertionError(f"the history did not record the end of {idents} within {timeout}s")


def tail(*args: str, host=None) -> subprocess.Popen:
    """``zmq-emitter tail ARGS`` writing to temporary files (a pipe nobody reads would fill and block it);
    with ``host`` (a ``netns.Host``), on that host of the test network."""
    out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    argv = [str(BIN / "zmq-emitter"), "tail", *args]
    proc = host.start(argv, stdout=out, stderr=err) if host else subprocess.Popen(argv, stdout=out, stderr=err)
    proc.out, proc.err = out, err
    return proc


def output(proc: subprocess.Popen) -> tuple[str, str]:
    texts = []
    for f in (proc.out, proc.err):
        f.seek(0)
        texts.append(f.read())
    return texts[0], texts[1]


def wait_output(proc: subprocess.Popen, says: str, stream: int = 1, timeout: float = 30.0) -> str:
    """Until ``says`` is in the process's stdout (0) or stderr (1); that text."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = output(proc)[stream]
        if says in text:
            return text
        assert proc.poll() is None, f"tail exited ({proc.returncode}): {output(proc)}"
        time.sleep(0.05)
    raise AssertionError(f"{says!r} never came: {output(proc)}")


def finish(proc: subprocess.Popen, timeout: float = 60) -> tuple[int, str, str]:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"tail did not exit: {output(proc)}") from None
    out, err = output(proc)
    assert "Traceback" not in err, err
    return proc.returncode, out, err


def garbage() -> list[list[bytes]]:
    """Everything a broken or hostile publisher might send, each not a valid protocol message."""
    good_header = protocol.header_prefix("json", "cccccccccccccccc") + b"1}"
    topic = protocol.topic("event", "raw-run", "runner_on_ok")
    random = [os.urandom(n) for n in (1, 17, 300)]
    return [
        random,                                                       # random frames
        [os.urandom(64)],                                             # one random frame
        [topic],                                                      # wrong frame counts
        [topic, good_header],
        [topic, good_header, b"{}", b"extra"],
        [topic, good_header, b"{not json"],                           # invalid JSON payload
        [topic, protocol.header_prefix("msgpack", "cccccccccccccccc") + b"2}", b"\xc1\xc1\xc1"],  # invalid msgpack
        [topic, protocol.header_prefix("msgpack", "cccccccccccccccc") + b"3}", msgpack.packb([1, 2])[:-1]],
        [topic, b"not a header", b"{}"],                              # bad headers
        [topic, b'{"v":2,"codec":"json","pub":"cc","seq":1}', b"{}"],
        [topic, b'{"v":1,"codec":"json","pub":"cc","seq":0}', b"{}"],
        [topic, b'{"v":1,"codec":"json","pub":"cc","seq":"1"}', b"{}"],
        [topic, b'{"v":1,"codec":"json","pub":5,"seq":1}', b"{}"],
        [topic, b'{"v":1,"codec":"yaml","pub":"cc","seq":1}', b"{}"],
        [topic, b"[1,2,3]", b"{}"],
        [b"event/\xff\xfe/x", good_header, b"{}"],                    # bad topics
        [b"event-without-separators", good_header, b"{}"],
        [b"bogus/run/name", good_header, b"{}"],
    ]


def hostile_to_examples() -> list[list[bytes]]:
    """``garbage()`` and what a client written literally from docs/protocol.md tripped on: headers and payloads of
    the wrong JSON type, pub and seq of the wrong type, nesting deeper than any parser's stack."""
    topic = protocol.topic("status", "hostile", "running")
    header = lambda pub, seq: b'{"v":1,"codec":"json","pub":%s,"seq":%s}' % (pub, seq)  # noqa: E731
    return garbage() + [
        [topic, b'["v", 1]', b"{}"], [topic, b'"v1"', b"{}"], [topic, b"null", b"{}"],
        [topic, header(b'["a"]', b"1"), b"{}"], [topic, header(b"5", b"1"), b"{}"],
        [topic, header(b'"eeeeeeeeeeeeeeee"', b'"1"'), b"{}"], [topic, header(b'"eeeeeeeeeeeeeeee"', b"1.5"), b"{}"],
        [topic, header(b'"eeeeeeeeeeeeeeee"', b"true"), b"{}"], [topic, header(b'"eeeeeeeeeeeeeeee"', b"-1"), b"{}"],
        [topic, header(b'"eeeeeeeeeeeeeeee"', b"1e400"), b"{}"],
        [topic, header(b'"eeeeeeeeeeeeeeee"', b"1"), b"[1, 2]"], [topic, header(b'"eeeeeeeeeeeeeeee"', b"2"), b'"x"'],
        [topic, header(b'"eeeeeeeeeeeeeeee"', b"3"), b"[" * 100_000 + b"]" * 100_000],
        [topic, protocol.header_prefix("msgpack", "eeeeeeeeeeeeeeee") + b"4}", b"\x91" * 100_000 + b"\xc0"],
        [topic, protocol.header_prefix("msgpack", "eeeeeeeeeeeeeeee") + b"5}", msgpack.packb([1])],
    ]
