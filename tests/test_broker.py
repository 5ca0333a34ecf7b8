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

import pytest
import zmq
from conftest import BIN, BrokerProcess, RawPublisher, receive, wait_until

from zmq_emitter.broker import broker as broker_module
from zmq_emitter import protocol
from zmq_emitter.runner import config
from zmq_emitter.consumers import subscriber
from zmq_emitter.broker import Broker
from zmq_emitter.consumers.subscriber import Subscriber


def start_broker(*args: str, frontend: str, backend: str) -> BrokerProcess:
    """A ``zmq-emitter broker`` process with no history and no grace."""
    return BrokerProcess(frontend, backend, "--startup-grace", "0", *args, history="none")


def endpoints_in(line: str, label: str) -> list[str]:
    """The endpoints the start-up line names after ``label`` (e.g. 'runners publish to')."""
    return re.search(re.escape(label) + r" ([^;]+)", line).group(1).strip().split(", ")


def test_defaults_fit_the_plugin_and_tail_defaults():
    # The broker listens where the plugin's documented default URL points and tail connects.
    assert broker_module.DEFAULT_FRONTEND == config.DEFAULT_FRONTEND
    assert broker_module.DEFAULT_BACKEND == subscriber.DEFAULT_ENDPOINT
    help_text = subprocess.run([str(BIN / "zmq-emitter"), "broker", "--help"], capture_output=True, text=True,
                               env={"COLUMNS": "200", "TERM": "dumb"}).stdout
    assert config.DEFAULT_FRONTEND in help_text and subscriber.DEFAULT_ENDPOINT in help_text


def test_tcp_and_ipc_endpoints_at_once_on_both_sides(tmp_path):
    broker = start_broker(frontend=f"tcp://127.0.0.1:0,ipc://{tmp_path}/f", backend=f"ipc://{tmp_path}/b,tcp://127.0.0.1:0")
    try:
        line = broker.start_line
        front, back = endpoints_in(line, "runners publish to"), endpoints_in(line, "subscribers connect to")
        assert front[0].startswith("tcp://127.0.0.1:") and front[1] == f"ipc://{tmp_path}/f"
        assert back[0] == f"ipc://{tmp_path}/b" and back[1].startswith("tcp://127.0.0.1:")
        context = zmq.Context()
        try:
            # Every frontend reaches every backend: a tcp and an ipc publisher, a tcp and an ipc subscriber.
            subs = [Subscriber(ep, context=context) for ep in back]
            pubs = [RawPublisher(ep, pub_id=f"{i:016x}", context=context) for i, ep in enumerate(front)]
            for pub in pubs:
                pub.until_received(*subs)
            sent = [pub.send("run", "runner_on_ok", {"from": ep}) for pub, ep in zip(pubs, front)]
            for sub in subs:
                got = receive(sub, 2)
                assert sorted(m.payload["from"] for m in got) == sorted(front)
            assert len(sent) == 2
            for s in subs:
                s.close()
            for p in pubs:
                p.close()
        finally:
            context.destroy(linger=0)
    finally:
        broker.kill()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_the_broker_cleanly_with_status_0(tmp_path, signum):
    broker = start_broker(frontend=f"ipc://{tmp_path}/f", backend=f"ipc://{tmp_path}/b")
    with Subscriber(broker.backend) as sub:  # a connected peer must not keep it alive
        with RawPublisher(broker.frontend) as pub:
            pub.until_received(sub)
        broker.proc.send_signal(signum)
        try:
            status = broker.proc.wait(timeout=10)
        finally:
            broker.kill()
    assert status == 0
    assert "Traceback" not in broker.stderr()


def test_stats_interval_reports_messages_bytes_and_subscribers(tmp_path):
    broker = start_broker("--stats-interval", "0.3", frontend=f"ipc://{tmp_path}/f", backend=f"ipc://{tmp_path}/b")
    lines = broker.log
    context = zmq.Context()

    def stats_lines() -> list[str]:
        return [line for line in list(lines) if "total in" in line]

    try:
        subs = [Subscriber(broker.backend, context=context) for _ in range(3)]
        pub = RawPublisher(broker.frontend, context=context)
        pub.until_received(*subs)
        # A stats line after the probes: the known messages fall into the intervals after it.
        seen = len(stats_lines())
        wait_until(lambda: len(stats_lines()) > seen, 10, message="a stats line")
        totals_before = stats_lines()[-1]
        before_in, before_out = map(int, re.search(r"total in (\d+) out (\d+)", totals_before).groups())
        sent = [pub.send("run", "runner_on_ok", {"n": n, "pad": "x" * n}) for n in range(40)]
        for sub in subs:
            assert len(receive(sub, 40)) == 40

        def totals():
            found = [re.search(r"total in (\d+) out (\d+)", line) for line in list(lines)]
            return [tuple(map(int, m.groups())) for m in found if m]

        # "out" counts what the proxy handed to the XPUB once; libzmq fans it out to every subscriber.
        expected = (before_in + 40, before_out + 40)
        wait_until(lambda: expected in totals(), 10, message=f"totals {expected}; last lines {lines[-5:]}")
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
        pub.close()
        wait_until(lambda: "subscribers 0" in lines[-1], 10, message="subscribers 0")
    finally:
        context.destroy(linger=0)
        broker.kill()


def test_oversized_message_is_not_forwarded_and_the_broker_keeps_serving(tmp_path):
    broker = start_broker("--max-message-size", "2000", frontend=f"ipc://{tmp_path}/f", backend=f"ipc://{tmp_path}/b")
    context = zmq.Context()
    try:
        with Subscriber(broker.backend, context=context) as sub:
            rogue = RawPublisher(broker.frontend, "badbadbadbadbad0", context=context)
            good = RawPublisher(broker.frontend, "900d900d900d900d", context=context)
            good.until_received(sub)
            rogue.until_received(sub)
            rogue.send("rogue", "runner_on_ok", {"big": "x" * 10_000})
            for n in range(20):
                good.send("good", "runner_on_ok", {"n": n})
            got = receive(sub, 20)
            assert [m.payload["n"] for m in got] == list(range(20))
            assert sub.recv(timeout=0.5) is None  # and nothing else: the oversized one never came
        assert broker.proc.poll() is None
        rogue.close()
        good.close()
    finally:
        context.destroy(linger=0)
        broker.kill()


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
            pub = RawPublisher(instance.frontend_endpoints[0], context=context)
            pub.until_received(sub)
            pub.send("run", "runner_on_ok", {"hello": 1})
            assert receive(sub, 1)[0].payload == {"hello": 1}
            pub.close()
    finally:
        instance.stop()
        context.destroy(linger=0)
    # stop() closed every socket: the same ports can be bound again at once.
    again = Broker(instance.frontend_endpoints, instance.backend_endpoints, startup_grace=0).start()
    again.stop()


def test_frontend_subscribes_to_everything_and_forwards_subscriptions_upstream(tmp_path):
    broker = start_broker(frontend=f"ipc://{tmp_path}/f", backend=f"ipc://{tmp_path}/b")
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
        broker.kill()


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


def test_a_broker_whose_proxy_stopped_answering_still_stops_and_reports_its_last_counts(tmp_path, monkeypatch):
    """The manager thread asks the proxy for statistics and never blocks on the answer: a proxy that has ended
    (here: returns at once, as when libzmq's proxy fails) neither hangs ``stop()`` nor ``stats()``."""
    monkeypatch.setattr(zmq, "proxy_steerable", lambda *sockets: None)
    broker = Broker([f"ipc://{tmp_path}/f"], [f"ipc://{tmp_path}/b"], startup_grace=0).start()
    assert broker.wait_forwarding(30)
    manager = next(t for t in broker._threads if t.name == "zmq-emitter-manager")
    manager.join(0.5)  # time for it to send STATISTICS, which nobody will answer
    assert broker.stats().messages_in == 0
    stopping = threading.Thread(target=broker.stop, daemon=True)
    stopping.start()
    stopping.join(30)
    assert not stopping.is_alive() and not manager.is_alive(), "stop() hung on a proxy that never answers"
