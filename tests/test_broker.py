"""``zmq-emitter broker`` as a real process: endpoints, signals, statistics, size limit, start-up errors.

Publishers here are plain pyzmq PUB sockets sending protocol frames, so that the test
knows exactly what went in; the full path through ansible-runner is in test_subscriber.py.
"""
from __future__ import annotations

import re
import signal
import socket
import subprocess
import threading
import time

import pytest
import zmq
from conftest import BIN

from zmq_emitter.broker import broker as broker_module
from zmq_emitter.runner import config
from zmq_emitter import protocol
from zmq_emitter.consumers import subscriber
from zmq_emitter.broker import Broker
from zmq_emitter.consumers.subscriber import Subscriber


def start_broker(*args: str) -> tuple[subprocess.Popen, str]:
    """A ``zmq-emitter broker`` process (no history, no grace) and its one-line start-up message."""
    proc = subprocess.Popen([str(BIN / "zmq-emitter"), "broker", "--history", "none", "--startup-grace", "0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    assert line.startswith("zmq-emitter broker:"), line + proc.stderr.read()
    return proc, line


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def endpoints_in(line: str, label: str) -> list[str]:
    """The endpoints the start-up line names after ``label`` (e.g. 'runners publish to')."""
    return re.search(re.escape(label) + r" ([^;]+)", line).group(1).strip().split(", ")


class RawPublisher:
    """A PUB socket sending well-formed protocol messages with its own sequence numbers."""

    def __init__(self, context: zmq.Context, endpoint: str, pub_id: str = "feedfacecafebeef"):
        self.sock = context.socket(zmq.PUB)
        self.sock.setsockopt(zmq.LINGER, 1000)
        self.sock.connect(endpoint)
        self.prefix, self.seq = protocol.header_prefix("json", pub_id), 0

    def frames(self, ident: str, name: str, payload: dict) -> list[bytes]:
        self.seq += 1
        return [protocol.topic("event", ident, name), self.prefix + b"%d}" % self.seq, protocol.encode_json(payload)]

    def send(self, ident: str, name: str, payload: dict) -> list[bytes]:
        frames = self.frames(ident, name, payload)
        self.sock.send_multipart(frames)
        return frames


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def receive(sub: Subscriber, count: int, timeout: float = 10.0) -> list[protocol.Message]:
    messages, deadline = [], time.monotonic() + timeout
    while len(messages) < count and time.monotonic() < deadline:
        msg = sub.recv(timeout=0.2)
        if msg is not None and msg.name != "probe":  # late probes of publish_until_received
            messages.append(msg)
    return messages


def publish_until_received(pub: RawPublisher, sub: Subscriber, ident: str) -> None:
    """The PUB->broker->SUB path is up once a probe gets through (slow joiners on both sides)."""
    for _ in range(100):
        pub.send(ident, "probe", {"probe": True})
        if sub.recv(timeout=0.1) is not None:
            while sub.recv(timeout=0.2) is not None:  # drain probes still in flight
                pass
            return
    raise AssertionError("no probe got through the broker")


def test_defaults_fit_the_plugin_and_tail_defaults():
    # The broker listens where the plugin's documented default URL points and tail connects.
    assert broker_module.DEFAULT_FRONTEND == config.DEFAULT_FRONTEND
    assert broker_module.DEFAULT_BACKEND == subscriber.DEFAULT_ENDPOINT
    help_text = subprocess.run([str(BIN / "zmq-emitter"), "broker", "--help"], capture_output=True, text=True,
                               env={"COLUMNS": "200", "TERM": "dumb"}).stdout
    assert config.DEFAULT_FRONTEND in help_text and subscriber.DEFAULT_ENDPOINT in help_text


def test_tcp_and_ipc_endpoints_at_once_on_both_sides(tmp_path):
    proc, line = start_broker("--frontend", f"tcp://127.0.0.1:0,ipc://{tmp_path}/f",
                              "--backend", f"ipc://{tmp_path}/b,tcp://127.0.0.1:0")
    try:
        front, back = endpoints_in(line, "runners publish to"), endpoints_in(line, "subscribers connect to")
        assert front[0].startswith("tcp://127.0.0.1:") and front[1] == f"ipc://{tmp_path}/f"
        assert back[0] == f"ipc://{tmp_path}/b" and back[1].startswith("tcp://127.0.0.1:")
        context = zmq.Context()
        try:
            # Every frontend reaches every backend: a tcp and an ipc publisher, a tcp and an ipc subscriber.
            subs = [Subscriber(ep, context=context) for ep in back]
            pubs = [RawPublisher(context, ep, pub_id=f"{i:016x}") for i, ep in enumerate(front)]
            for pub in pubs:
                for sub in subs:
                    publish_until_received(pub, sub, "probe")
            sent = [pub.send("run", "runner_on_ok", {"from": ep}) for pub, ep in zip(pubs, front)]
            for sub in subs:
                got = receive(sub, 2)
                assert sorted(m.payload["from"] for m in got) == sorted(front)
            assert len(sent) == 2
            for s in subs:
                s.close()
            for p in pubs:
                p.sock.close(linger=0)
        finally:
            context.destroy(linger=0)
    finally:
        stop(proc)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_the_broker_cleanly_with_status_0(tmp_path, signum):
    proc, _ = start_broker("--frontend", f"ipc://{tmp_path}/f", "--backend", f"ipc://{tmp_path}/b")
    with Subscriber(f"ipc://{tmp_path}/b"):  # a connected peer must not keep it alive
        time.sleep(0.2)
        proc.send_signal(signum)
        try:
            status = proc.wait(timeout=10)
        finally:
            stop(proc)
    assert status == 0
    assert "Traceback" not in proc.stderr.read()


def test_stats_interval_reports_messages_bytes_and_subscribers(tmp_path):
    proc, _ = start_broker("--frontend", f"ipc://{tmp_path}/f", "--backend", f"ipc://{tmp_path}/b",
                           "--stats-interval", "0.3")
    context = zmq.Context()
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()
    try:
        subs = [Subscriber(f"ipc://{tmp_path}/b", context=context) for _ in range(3)]
        pub = RawPublisher(context, f"ipc://{tmp_path}/f")
        for sub in subs:
            publish_until_received(pub, sub, "probe")
        time.sleep(0.4)  # let a stats line pass, so the known messages fall into later intervals
        totals_before = [line for line in lines if "total in" in line][-1]
        before_in, before_out = map(int, re.search(r"total in (\d+) out (\d+)", totals_before).groups())
        sent = [pub.send("run", "runner_on_ok", {"n": n, "pad": "x" * n}) for n in range(40)]
        for sub in subs:
            assert len(receive(sub, 40)) == 40

        def totals():
            found = [re.search(r"total in (\d+) out (\d+)", line) for line in lines]
            return [tuple(map(int, m.groups())) for m in found if m]

        # "out" counts what the proxy handed to the XPUB once; libzmq fans it out to every subscriber.
        expected = (before_in + 40, before_out + 40)
        assert wait_for(lambda: expected in totals()), lines[-5:]
        # The per-interval counts of the lines after the baseline add up to the known traffic.
        after = lines[lines.index(totals_before) + 1:]
        upto = next(i for i, line in enumerate(after) if f"total in {expected[0]} out {expected[1]}" in line)
        interval = [re.search(r"in (\d+) msgs (\d+) B, out (\d+) msgs (\d+) B", line).groups()
                    for line in after[:upto + 1]]
        msgs_in, bytes_in, msgs_out, bytes_out = (sum(int(v[i]) for v in interval) for i in range(4))
        size = sum(len(f) for frames in sent for f in frames)
        assert (msgs_in, msgs_out) == (40, 40)
        assert (bytes_in, bytes_out) == (size, size)
        assert "subscribers 3" in after[upto]
        for sub in subs:
            sub.close()
        pub.sock.close(linger=0)
        assert wait_for(lambda: "subscribers 0" in lines[-1])
    finally:
        context.destroy(linger=0)
        stop(proc)


def test_oversized_message_is_not_forwarded_and_the_broker_keeps_serving(tmp_path):
    proc, _ = start_broker("--frontend", f"ipc://{tmp_path}/f", "--backend", f"ipc://{tmp_path}/b",
                           "--max-message-size", "2000")
    context = zmq.Context()
    try:
        with Subscriber(f"ipc://{tmp_path}/b", context=context) as sub:
            rogue, good = RawPublisher(context, f"ipc://{tmp_path}/f", "badbadbadbadbad0"), \
                RawPublisher(context, f"ipc://{tmp_path}/f", "900d900d900d900d")
            publish_until_received(good, sub, "good")
            publish_until_received(rogue, sub, "rogue")
            rogue.send("rogue", "runner_on_ok", {"big": "x" * 10_000})
            for n in range(20):
                good.send("good", "runner_on_ok", {"n": n})
            got = receive(sub, 20)
            assert [m.payload["n"] for m in got] == list(range(20))
            assert sub.recv(timeout=0.5) is None  # and nothing else: the oversized one never came
        assert proc.poll() is None
        rogue.sock.close(linger=0)
        good.sock.close(linger=0)
    finally:
        context.destroy(linger=0)
        stop(proc)


def _busy_port() -> socket.socket:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    return listener


@pytest.mark.parametrize("side, endpoint, says", [
    ("--frontend", "tcp://nonsense", "tcp://HOST:PORT"),
    ("--frontend", "foo://x", "tcp://HOST:PORT or ipc://PATH"),
    ("--backend", "foo://x", "tcp://HOST:PORT or ipc://PATH"),
    ("--frontend", "tcp://no-such-host.invalid:5557", "HOST must be an address"),
    ("--backend", "tcp://127.0.0.1:99999", "port must be"),
    ("--frontend", "ipc:///nonexistent-dir/for/sure", "No such file or directory"),
    ("--frontend", "PORT_IN_USE", "Address already in use"),
    ("--backend", "PORT_IN_USE", "Address already in use"),
])
def test_endpoint_errors_give_one_line_and_a_non_zero_exit(tmp_path, side, endpoint, says):
    listener = _busy_port()
    if endpoint == "PORT_IN_USE":
        endpoint = f"tcp://127.0.0.1:{listener.getsockname()[1]}"
    other = "--backend" if side == "--frontend" else "--frontend"
    try:
        result = subprocess.run([str(BIN / "zmq-emitter"), "broker", "--history", "none", side, endpoint,
                                 other, f"ipc://{tmp_path}/other"], capture_output=True, text=True, timeout=30)
    finally:
        listener.close()
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("zmq-emitter: "), result.stderr
    assert endpoint in lines[0] and says in lines[0]


def test_python_broker_in_a_thread_forwards_and_releases_its_ports():
    instance = Broker(["tcp://127.0.0.1:0"], ["tcp://127.0.0.1:0"], startup_grace=0).start()
    context = zmq.Context()
    try:
        assert instance.wait_forwarding(5)
        with Subscriber(instance.backend_endpoints, context=context) as sub:
            pub = RawPublisher(context, instance.frontend_endpoints[0])
            publish_until_received(pub, sub, "probe")
            pub.send("run", "runner_on_ok", {"hello": 1})
            assert receive(sub, 1)[0].payload == {"hello": 1}
            pub.sock.close(linger=0)
    finally:
        instance.stop()
        context.destroy(linger=0)
    # stop() closed every socket: the same ports can be bound again at once.
    again = Broker(instance.frontend_endpoints, instance.backend_endpoints, startup_grace=0).start()
    again.stop()


def test_frontend_subscribes_to_everything_and_forwards_subscriptions_upstream(tmp_path):
    proc, _ = start_broker("--frontend", f"ipc://{tmp_path}/f", "--backend", f"ipc://{tmp_path}/b")
    context = zmq.Context()
    try:
        upstream = context.socket(zmq.XPUB)  # what a runner's plugin sees of the broker
        upstream.setsockopt(zmq.XPUB_VERBOSE, 1)
        upstream.connect(f"ipc://{tmp_path}/f")

        def next_subscription() -> bytes:  # the broker's presence (protocol.Presence) travels here too: skip it
            while True:
                assert upstream.poll(10_000)
                frame = upstream.recv()
                if protocol.parse_presence(frame[1:]) is None:
                    return frame

        assert next_subscription() == b"\x01"  # everything: runners always send
        with Subscriber(f"ipc://{tmp_path}/b", [b"event/one-run/"], context=context):
            assert next_subscription() == b"\x01event/one-run/"
    finally:
        context.destroy(linger=0)
        stop(proc)


@pytest.mark.parametrize("history, says, status", [
    ("ipc", "cannot use history directory", 1),  # the directory is a regular file
    ("none", "--history-dir needs the history service", 2),
])
def test_history_dir_errors_give_one_line_and_a_non_zero_exit(tmp_path, history, says, status):
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    result = subprocess.run([str(BIN / "zmq-emitter"), "broker", "--frontend", f"ipc://{tmp_path}/f",
                             "--backend", f"ipc://{tmp_path}/b",
                             "--history", f"ipc://{tmp_path}/h" if history == "ipc" else "none",
                             "--history-dir", str(not_a_directory)], capture_output=True, text=True, timeout=30)
    assert result.returncode == status
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert says in line and ("--history" in line)
