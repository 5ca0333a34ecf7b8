"""The plugin's handlers called directly: threads, fork, endpoints, values the codecs cannot carry.

Real sockets and a real broker throughout; the runner configurations are plain objects
with the one attribute the plugin reads (``settings``), as ansible-runner hands them over.
"""
from __future__ import annotations

import copy
import json
import datetime
import subprocess
import sys
import textwrap
import threading
import time
from types import SimpleNamespace

import pytest
import zmq
from conftest import receive, wait_subscribed, wait_until

from zmq_emitter.runner import plugin
from zmq_emitter import protocol
from zmq_emitter.broker import Broker
from zmq_emitter.consumers.subscriber import Subscriber


def runner_config(**settings) -> SimpleNamespace:
    return SimpleNamespace(settings={f"runner_zmq_{k}": v for k, v in settings.items()})


def raw_sub(endpoint: str, context: zmq.Context) -> zmq.Socket:
    sock = context.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(endpoint)
    return sock


def flush(plugin_module) -> None:
    """Hand over what the plugin still holds.

    A message sent before the publisher's first subscription arrived waits in the plugin
    until its next send or process exit; a test process does neither, so it asks.
    """
    for publisher in plugin_module._publishers.values():
        assert publisher.flush(5), "no subscription reached the publisher"


# ---------------------------------------------------------------------------------------
# Threads


def test_threads_publishing_at_once_through_one_publisher_never_interleave_or_skip_seq(broker, fresh_plugin):
    threads_n, calls = 8, 2000
    total = threads_n * calls
    context = zmq.Context()
    sub = raw_sub(broker.backend_endpoints[0], context)
    try:
        wait_subscribed(broker.frontend_endpoints[0], sub)
        start = threading.Barrier(threads_n)
        errors = []

        def work(i: int) -> None:
            config = runner_config(url=broker.frontend_endpoints[0])  # a distinct runner_config per thread
            try:
                start.wait()
                for n in range(1, calls + 1):
                    if n % 2:
                        plugin.event_handler(config, {"event": "runner_on_ok", "runner_ident": f"t{i}", "n": n})
                    else:
                        plugin.status_handler(config, {"status": "running", "runner_ident": f"t{i}", "n": n})
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

        workers = [threading.Thread(target=work, args=(i,)) for i in range(threads_n)]
        for w in workers:
            w.start()
        frames_list, deadline = [], time.monotonic() + 30
        while any(w.is_alive() for w in workers) and time.monotonic() < deadline:
            if sub.poll(50):
                frames_list.append(sub.recv_multipart())
        for w in workers:
            w.join()
        flush(fresh_plugin)  # what met a full queue after the last call waits for a send (or exit)
        while len(frames_list) < total and sub.poll(1000):
            frames_list.append(sub.recv_multipart())
    finally:
        sub.close()
        context.term()

    assert errors == []
    assert len(fresh_plugin._publishers) == 1  # equal transport settings share one socket
    assert len(frames_list) == total
    assert all(len(frames) == 3 for frames in frames_list)
    messages = [protocol.decode(frames) for frames in frames_list]
    assert {m.publisher for m in messages} == {next(iter(fresh_plugin._publishers.values())).id}
    assert [m.seq for m in messages] == list(range(1, total + 1))
    for i in range(threads_n):  # each thread's messages whole and in its own order
        mine = [m for m in messages if m.ident == f"t{i}"]
        assert [m.payload["n"] for m in mine] == list(range(1, calls + 1))
        assert all(m.topic == (b"event/t%d/runner_on_ok" % i if m.payload["n"] % 2 else b"status/t%d/running" % i)
                   for m in mine)


# ---------------------------------------------------------------------------------------
# fork


FORK_SCRIPT = textwrap.dedent("""
    import os, sys
    from types import SimpleNamespace
    from zmq_emitter.runner import plugin
    config = SimpleNamespace(settings={"runner_zmq_url": sys.argv[1]})
    plugin.status_handler(config, {"status": "starting", "runner_ident": "parent"})
    pid = os.fork()
    if pid == 0:
        plugin.status_handler(config, {"status": "starting", "runner_ident": "child"})
        plugin.event_handler(config, {"event": "verbose", "runner_ident": "child"})
        sys.exit(0)  # a normal exit: atexit flushes the child's own publisher
    os.waitpid(pid, 0)
    plugin.status_handler(config, {"status": "successful", "runner_ident": "parent"})
""")


def test_forked_child_publishes_with_its_own_publisher_and_the_parent_keeps_working(broker, tmp_path):
    with Subscriber(broker.backend_endpoints) as sub:
        wait_subscribed(broker.frontend_endpoints[0], sub)
        result = subprocess.run([sys.executable, "-c", FORK_SCRIPT, broker.frontend_endpoints[0]],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        messages = receive(sub, 4)
    by_ident = {ident: [m for m in messages if m.ident == ident] for ident in ("parent", "child")}
    parent, child = by_ident["parent"], by_ident["child"]
    assert [(m.name, m.seq) for m in parent] == [("starting", 1), ("successful", 2)]
    assert [(m.kind, m.name, m.seq) for m in child] == [("status", "starting", 1), ("event", "verbose", 2)]
    assert parent[0].publisher == parent[1].publisher
    assert child[0].publisher == child[1].publisher != parent[0].publisher
    assert "lost" not in result.stderr  # neither process reports undelivered messages


# ---------------------------------------------------------------------------------------
# Values the codecs cannot carry


class Thing:
    def __str__(self) -> str:
        return "<a thing>"

    __repr__ = __str__


def _self_dict():
    d = {"a": 1}
    d["self"] = d
    return d


def _self_list():
    lst = [1]
    lst.append(lst)
    return lst


def _nested(depth: int, inner):
    for _ in range(depth):
        inner = [inner]
    return inner


UTC = datetime.timezone.utc
# (name, value, what a JSON subscriber gets, what a msgpack subscriber gets): the table in protocol.py
FALLBACKS = [
    ("bytes", b"caf\xc3\xa9 \xff", "café \\xff", b"caf\xc3\xa9 \xff"),
    ("bytearray", bytearray(b"ab"), "ab", b"ab"),
    ("set", {"x"}, ["x"], ["x"]),
    ("frozenset", frozenset({7}), [7], [7]),
    ("tuple", (1, "a"), [1, "a"], [1, "a"]),
    ("datetime", datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC), "2024-01-02T03:04:05+00:00",
     "2024-01-02T03:04:05+00:00"),
    ("date", datetime.date(2024, 1, 2), "2024-01-02", "2024-01-02"),
    ("object", Thing(), "<a thing>", "<a thing>"),
    ("int keys", {1: "a", None: "b"}, {"1": "a", "None": "b"}, {"1": "a", "None": "b"}),
    ("tuple key", {(1, 2): "a"}, {"(1, 2)": "a"}, {"(1, 2)": "a"}),
    ("huge int", 2**70, str(2**70), str(2**70)),
    ("huge negative int", -(2**63) - 1, str(-(2**63) - 1), str(-(2**63) - 1)),
    ("largest unsigned 64-bit int", 2**64 - 1, 2**64 - 1, 2**64 - 1),
    ("self-referencing dict", _self_dict(), {"a": 1, "self": "<recursion>"}, {"a": 1, "self": "<recursion>"}),
    ("self-referencing list", _self_list(), [1, "<recursion>"], [1, "<recursion>"]),
    ("lone surrogate", "a\udcff", "a\\udcff", "a\\udcff"),
    # 300 lists deep (orjson refuses more than 255 levels): the payload dict is level 1, so 199 lists stay
    ("nested 300 deep", _nested(300, 1), _nested(199, "<too deep>"), _nested(199, "<too deep>")),
]


@pytest.mark.parametrize("codec", protocol.CODECS)
def test_unencodable_values_arrive_as_the_documented_fallback_and_the_input_is_left_unchanged(
        broker, fresh_plugin, codec):
    config = runner_config(url=broker.frontend_endpoints[0], codec=codec)
    sent = []
    with Subscriber(broker.backend_endpoints) as sub:
        wait_subscribed(broker.frontend_endpoints[0], sub)
        for name, value, *_ in FALLBACKS:
            data = {"event": "verbose", "runner_ident": "values", "case": name, "value": value,
                    "plain": {"stays": ["as", "it", "was"]}}
            before = copy.deepcopy(data)
            plugin.event_handler(config, data)  # must not raise
            plugin.status_handler(config, {"status": "running", "runner_ident": "values", "value": value})
            # deep comparison through repr: == would recurse forever on the self-referencing cases
            assert repr(data) == repr(before), f"{name}: the handler changed its input"
            sent.append(name)
        flush(fresh_plugin)
        messages = receive(sub, 2 * len(sent))
    assert sub.counts.invalid == 0 and sub.gaps == []
    assert len(messages) == 2 * len(FALLBACKS)
    events = [m for m in messages if m.kind == "event"]
    statuses = [m for m in messages if m.kind == "status"]
    for (name, _, as_json, as_msgpack), event, status in zip(FALLBACKS, events, statuses):
        expected = as_json if codec == "json" else as_msgpack
        assert event.codec == codec
        assert event.payload == {"event": "verbose", "runner_ident": "values", "case": name, "value": expected,
                                 "plain": {"stays": ["as", "it", "was"]}}, name
        assert status.payload == {"status": "running", "runner_ident": "values", "value": expected}, name


def test_handlers_leave_a_real_event_dict_unchanged(broker, fresh_plugin):
    event = {"event": "runner_on_ok", "runner_ident": "r", "counter": 3, "stdout": "ok: [web1]",
             "event_data": {"host": "web1", "res": {"changed": False, "msg": "hello", "list": [1, 2, {"x": None}]}}}
    before = copy.deepcopy(event)
    for codec in protocol.CODECS:
        config = runner_config(url=broker.frontend_endpoints[0], codec=codec)
        plugin.event_handler(config, event)
        plugin.status_handler(config, event)
    assert event == before


# ---------------------------------------------------------------------------------------
# Endpoints


def test_tcp_endpoint_delivers(fresh_plugin):
    with Broker(["tcp://127.0.0.1:0"], ["tcp://127.0.0.1:0"], startup_grace=0) as tcp_broker:
        tcp_broker.wait_forwarding(5)
        frontend = tcp_broker.frontend_endpoints[0]
        assert frontend.startswith("tcp://127.0.0.1:") and not frontend.endswith(":0")
        with Subscriber(tcp_broker.backend_endpoints) as sub:
            wait_subscribed(frontend, sub)
            plugin.status_handler(runner_config(url=frontend), {"status": "starting", "runner_ident": "tcp"})
            flush(fresh_plugin)
            messages = receive(sub, 1)
    assert [(m.topic, m.seq) for m in messages] == [(b"status/tcp/starting", 1)]


def test_ipc_endpoint_delivers(broker, fresh_plugin):
    assert broker.frontend_endpoints[0].startswith("ipc://")
    with Subscriber(broker.backend_endpoints) as sub:
        wait_subscribed(broker.frontend_endpoints[0], sub)
        plugin.status_handler(runner_config(url=broker.frontend_endpoints[0]),
                              {"status": "starting", "runner_ident": "ipc"})
        flush(fresh_plugin)
        messages = receive(sub, 1)
    assert [(m.topic, m.seq) for m in messages] == [(b"status/ipc/starting", 1)]


def test_several_comma_separated_endpoints_each_get_every_message(tmp_path, fresh_plugin):
    brokers = [Broker([f"ipc://{tmp_path}/f{i}"], [f"ipc://{tmp_path}/b{i}"], startup_grace=0).start()
               for i in range(2)]
    subs = [Subscriber(b.backend_endpoints) for b in brokers]
    try:
        for broker, sub in zip(brokers, subs):
            wait_subscribed(broker.frontend_endpoints[0], sub)
        config = runner_config(url=" , ".join(b.frontend_endpoints[0] for b in brokers))  # spaces are allowed
        # The plugin holds messages until a first subscription; the second broker's may come a moment
        # later, so warm up until both subscribers hear the publisher, then check every message.
        warmed, deadline = [False, False], time.monotonic() + 10
        while not all(warmed) and time.monotonic() < deadline:
            plugin.status_handler(config, {"status": "starting", "runner_ident": "warmup"})
            for i, sub in enumerate(subs):
                warmed[i] = warmed[i] or sub.recv(timeout=0.05) is not None
        assert all(warmed), "a broker never received the warm-up messages"
        assert len(fresh_plugin._publishers) == 1  # one socket connected to both endpoints
        for n in range(100):
            plugin.event_handler(config, {"event": "verbose", "runner_ident": "multi", "n": n})
        flush(fresh_plugin)
        received = [[], []]
        for sub, messages in zip(subs, received):
            deadline = time.monotonic() + 5
            while len(messages) < 100 and time.monotonic() < deadline:
                msg = sub.recv(timeout=0.2)
                if msg is not None and msg.ident == "multi":
                    messages.append(msg)
    finally:
        for s in subs:
            s.close()
        for b in brokers:
            b.stop()
    for messages in received:
        assert [m.payload["n"] for m in messages] == list(range(100))
        seqs = [m.seq for m in messages]
        assert seqs == list(range(seqs[0], seqs[0] + 100))
    assert received[0][0].seq == received[1][0].seq  # the very same messages on both paths


def test_bind_mode_lets_a_plain_sub_connect_to_the_publisher(tmp_path, fresh_plugin):
    endpoint = f"ipc://{tmp_path}/runner.sock"
    config = runner_config(bind=endpoint)
    context = zmq.Context()
    try:
        # the first message creates the bound socket and waits in the plugin until the SUB subscribes
        plugin.status_handler(config, {"status": "starting", "runner_ident": "bound"})
        sub = raw_sub(endpoint, context)
        plugin.event_handler(config, {"event": "playbook_on_start", "runner_ident": "bound"})
        flush(fresh_plugin)
        frames = [sub.recv_multipart() for _ in range(2) if sub.poll(5000)]
        sub.close()
    finally:
        context.term()
    assert [(m.topic, m.seq) for m in map(protocol.decode, frames)] == [
        (b"status/bound/starting", 1), (b"event/bound/playbook_on_start", 2)]


def test_a_message_buffered_before_the_first_subscription_goes_out_without_another_send(broker):
    """The background flush: nothing waits for the next event (a long task, a long-lived process)."""
    from zmq_emitter.runner.config import Config
    from zmq_emitter.runner.plugin import Publisher
    from zmq_emitter.consumers.subscriber import Subscriber

    with Subscriber(broker.backend_endpoints) as sub:
        wait_subscribed(broker.frontend_endpoints[0], sub)
        publisher = Publisher(Config(url=tuple(broker.frontend_endpoints)))
        try:
            # Sent at once after the socket is made: the broker's subscription cannot be there yet.
            publisher.send(b"status/lonely/running", publisher.header_prefix("json"), b'{"status":"running"}')
            msg = sub.recv(timeout=10)
        finally:
            publisher.close()
    assert msg is not None and msg.ident == "lonely" and msg.name == "running"


def test_an_acknowledgement_arriving_with_a_new_brokers_subscription_stops_the_resend_it_covers(tmp_path):
    """A broker restarted on its history directory acknowledges what it has; when that comes in the same read as
    its subscription, the messages already queued to be sent again are dropped, not sent twice."""
    from zmq_emitter.runner.config import Config
    endpoint = f"ipc://{tmp_path}/f"
    context = zmq.Context()
    publisher = plugin.Publisher(Config(url=(endpoint,), linger=0))
    header = publisher.header_prefix("json")
    try:
        first = context.socket(zmq.XSUB)  # the first broker: it gets 1..5 and acknowledges only 2
        first.bind(endpoint)
        presence = protocol.Presence("broker", "first-token", 2**24)
        first.send(b"\x01" + protocol.presence_topic(presence))
        first.send(b"\x01")
        publisher.send(b"event/r/runner_on_ok", header, b"{}")
        assert json.loads(first.recv_multipart()[1])["seq"] == 1  # connected both ways
        first.send(protocol.ack_frame(protocol.Ack("broker", "first-token", {publisher.id: 1})))  # this broker acknowledges: keep what is sent
        deadline = time.monotonic() + 10
        while not publisher._acknowledging and time.monotonic() < deadline:
            publisher.flush(0.05)
        for _ in range(4):
            publisher.send(b"event/r/runner_on_ok", header, b"{}")
        assert [json.loads(first.recv_multipart()[1])["seq"] for _ in range(4)] == [2, 3, 4, 5]
        first.send(protocol.ack_frame(protocol.Ack("broker", "first-token", {publisher.id: 2})))
        assert publisher.flush(0.5) is False  # 3..5 wait for their acknowledgement
        first.close(0)  # the broker dies
        wait_until(lambda: publisher.flush(0) is not None and not publisher._outbox.subscribed, 10, message="the publisher sees its unsubscription")

        second = context.socket(zmq.XSUB)
        handshake = second.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        second.bind(endpoint)
        assert handshake.poll(10_000)  # the publisher has reconnected
        second.getsockopt(zmq.EVENTS)  # the socket takes in the new connection: what it sends now reaches it
        second.disable_monitor()
        handshake.close(0)
        with publisher._lock:  # both frames reach the publisher before it next looks
            second.send(b"\x01" + protocol.presence_topic(protocol.Presence("broker", "second-token", 2**24)))
            second.send(b"\x01")
            second.send(protocol.ack_frame(protocol.Ack("broker", "second-token", {publisher.id: 5})))
            time.sleep(0.5)  # no way to see frames in flight without reading them: a moment for all three
        publisher.send(b"event/r/runner_on_ok", header, b"{}")  # seq 6
        assert json.loads(second.recv_multipart()[1])["seq"] == 6  # not 3, 4, 5 again
        second.close(0)
    finally:
        publisher.close()
        context.destroy(linger=0)


class OwnedLock:
    """A lock that knows which thread holds it (stands in for the Publisher's own ``threading.Lock``)."""

    def __init__(self):
        self._lock, self.owner = threading.Lock(), None

    def __enter__(self):
        self._lock.acquire()
        self.owner = threading.get_ident()
        return self

    def __exit__(self, *exc):
        self.owner = None
        self._lock.release()


class GuardedSocket:
    """The Publisher's real socket, noting every call made by a thread that does not hold the lock."""

    def __init__(self, sock, lock: OwnedLock, misuse: list):
        self._sock, self._lock, self._misuse = sock, lock, misuse

    def __getattr__(self, name):
        attr = getattr(self._sock, name)
        if not callable(attr):
            return attr

        def guarded(*args, **kwargs):
            if self._lock.owner != threading.get_ident():
                self._misuse.append((name, threading.current_thread().name))
            return attr(*args, **kwargs)
        return guarded


def test_the_publishers_socket_is_only_ever_used_by_the_thread_holding_its_lock(tmp_path, monkeypatch):
    """A ZeroMQ socket must never be used by two threads at once: the exit wait, the flush thread and the handlers'
    sends all take the lock first.  (The exit wait once polled the socket without it: with a broker's connection
    being re-established at exit, two threads processed the socket's commands together and libzmq crashed the
    ansible-runner process with SIGSEGV.)  A subscribed peer makes the handlers' sends reach the socket itself,
    through the Cython-level send the hot path calls (checked by wrapping it), not only the buffer."""
    from zmq_emitter.runner.config import Config

    context = zmq.Context()
    peer = context.socket(zmq.XSUB)  # a subscriber bound where the publisher connects
    handshake = peer.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
    peer.bind(f"ipc://{tmp_path}/peer")
    publisher = plugin.Publisher(Config(url=(f"ipc://{tmp_path}/peer",), linger=300))
    assert handshake.poll(10_000)
    peer.send(b"\x01")  # subscribe to everything
    misuse: list = []
    publisher._lock = OwnedLock()
    publisher._socket = GuardedSocket(publisher._socket, publisher._lock, misuse)
    raw_send, sent = plugin._send, []

    def guarded_send(sock, data, flags):
        if publisher._lock.owner != threading.get_ident():
            misuse.append(("send", threading.current_thread().name))
        sent.append(data)
        return raw_send(sock._sock, data, flags)
    monkeypatch.setattr(plugin, "_send", guarded_send)
    header = publisher.header_prefix("json")
    deadline = time.monotonic() + 10
    while not sent and time.monotonic() < deadline:  # until the peer's subscription has reached the publisher
        publisher.send(b"event/r/runner_on_ok", header, b"{}")
        time.sleep(0.01)
    assert sent, "the peer's subscription never reached the publisher"
    senders = [threading.Thread(target=lambda: [publisher.send(b"event/r/runner_on_ok", header, b"{}")
                                                 for _ in range(200)]) for _ in range(3)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    assert len(sent) >= 3 * 200 * 3  # every handler's message went through the socket: three frames each
    publisher.flush(0.2)  # the exit wait's loop, while the flush thread works on what is kept
    publisher.close()
    context.destroy(linger=0)
    assert misuse == []


def test_after_a_refused_send_the_hot_path_leaves_the_socket_alone_and_keeps_messages_in_order(tmp_path,
                                                                                            monkeypatch):
    """A full queue (XPUB_NODROP) refuses a send with an exception: for _RETRY_INTERVAL after one, the handlers'
    messages go to the buffer without touching the socket (libzmq takes sends again only once its reader drained
    half the queue, and every refused try costs an exception), and are sent later, in order."""
    from zmq_emitter.runner.config import Config

    monkeypatch.setattr(plugin, "_RETRY_INTERVAL", 3600.0)  # the back-off, made long enough to observe
    context = zmq.Context()
    peer = context.socket(zmq.XSUB)  # subscribes, then does not read: the publisher's queue fills
    peer.setsockopt(zmq.RCVHWM, 10)
    handshake = peer.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
    peer.bind(f"ipc://{tmp_path}/peer")
    publisher = plugin.Publisher(Config(url=(f"ipc://{tmp_path}/peer",), sndhwm=10, linger=0))
    assert handshake.poll(10_000)
    peer.send(b"\x01")
    raw_send, main_thread_sends = plugin._send, []

    def counting_send(sock, data, flags):
        if threading.current_thread() is threading.main_thread():
            main_thread_sends.append(data)
        return raw_send(sock, data, flags)
    monkeypatch.setattr(plugin, "_send", counting_send)
    header, payload = publisher.header_prefix("json"), b'"' + b"x" * 10_000 + b'"'
    deadline = time.monotonic() + 10
    while not publisher._outbox.subscribed and time.monotonic() < deadline:  # the peer's subscription, read
        publisher.send(b"event/r/runner_on_ok", header, b"{}")                # by the hot path every 10 ms
        time.sleep(0.01)
    for _ in range(20_000):  # until the peer's queue, the kernel's and the publisher's are full
        publisher.send(b"event/r/runner_on_ok", header, payload)
        if publisher._retry_at:
            break
    assert publisher._retry_at, "the socket never refused a send"
    refused_at, waiting = len(main_thread_sends), publisher._outbox.waiting
    for _ in range(100):
        publisher.send(b"event/r/runner_on_ok", header, payload)
    assert len(main_thread_sends) == refused_at  # the hot path did not touch the socket again...
    assert publisher._outbox.waiting == waiting + 100  # ...and kept every message
    kept = [entry.seq for entry in publisher._outbox.own.unsent]
    assert kept == sorted(kept) and kept[-1] == publisher._outbox.seq  # in order, the newest last
    publisher.close()
    context.destroy(linger=0)


# ---------------------------------------------------------------------------------------
# Memory


def test_acknowledgements_freeing_8_mib_of_kept_messages_make_the_flush_thread_hand_memory_back(
        broker, fresh_plugin, monkeypatch):
    """Kept messages freed as acknowledgements come, while new ones are made, leave glibc's heap in pieces it does
    not give back (a million calls at full speed grew the process to ~700 MiB for a buffer of at most 64 MiB):
    the flush thread calls malloc_trim each time 8 MiB of kept payloads were let go, outside the lock."""
    trims: list = []
    real_trim = plugin._malloc_trim

    def trim(pad: int) -> int:
        trims.append(threading.current_thread().name)
        return real_trim(pad)

    monkeypatch.setattr(plugin, "_malloc_trim", trim)
    config = runner_config(url=broker.frontend_endpoints[0])
    event = {"event": "runner_on_ok", "runner_ident": "r", "stdout": "x" * 2**20}  # ~1 MiB each
    plugin.event_handler(config, event)
    publisher = plugin._routes[id(config)].publisher
    wait_until(lambda: publisher._acknowledging, message="the broker's presence reached the publisher")
    for _ in range(5):
        plugin.event_handler(config, event)
    assert publisher.flush(10), "the broker acknowledged everything"
    assert trims == []  # 6 MiB let go: not yet
    for _ in range(5):
        plugin.event_handler(config, event)
    assert publisher.flush(10)
    wait_until(lambda: trims, message="memory handed back")
    assert trims == ["zmq-emitter-flush"]
