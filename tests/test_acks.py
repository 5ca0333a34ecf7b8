"""Acknowledgements per broker, and acknowledgements that must not count (docs/reliability.md, docs/protocol.md "Upstream").

A raw XSUB plays a broker where the test needs to say exactly what a broker says; real
``zmq-emitter broker`` processes, SIGKILLed and restarted, where the behaviour is about them.
"""
from __future__ import annotations

import json
import time

import zmq

from zmq_emitter import protocol
from zmq_emitter.broker.broker import default_name
from zmq_emitter.consumers.subscriber import Subscriber
from zmq_emitter.runner.config import Config
from zmq_emitter.runner.plugin import Publisher

from conftest import BrokerProcess, wait_recorded

SIZE = 2**24


class RawBroker:
    """A bare XSUB bound where a publisher connects: it says upstream exactly what the test tells it."""

    def __init__(self, context: zmq.Context, endpoint: str, name: str = "broker", token: str = "token"):
        self.name, self.token = name, token
        self.sock = context.socket(zmq.XSUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        monitor = self.sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        self.sock.bind(endpoint)
        assert monitor.poll(10_000), "the publisher did not connect"
        self.sock.getsockopt(zmq.EVENTS)  # the socket takes in the connection: what it sends now reaches it
        self.sock.disable_monitor()
        monitor.close(0)

    def announce(self, token: str | None = None, name: str | None = None, size: int = SIZE) -> None:
        self.sock.send(b"\x01" + protocol.presence_topic(protocol.Presence(name or self.name, token or self.token, size)))

    def subscribe(self, prefix: bytes = b"") -> None:
        self.sock.send(b"\x01" + prefix)

    def ack(self, acks: dict, resend: dict | None = None, token: str | None = None, name: str | None = None) -> None:
        self.sock.send(protocol.ack_frame(protocol.Ack(name or self.name, token or self.token, acks, resend or {})))

    def seqs(self, count: int, timeout: float = 10) -> list[int]:
        """The next ``count`` distinct seqs, in the order they first came.

        Repeats are allowed (a new connection gets again what some broker has not acknowledged,
        and every broker receives it: exact copies) and left out here.
        """
        got, deadline = [], time.monotonic() + timeout
        while len(got) < count and self.sock.poll(max(0, int((deadline - time.monotonic()) * 1000))):
            seq = json.loads(self.sock.recv_multipart()[1])["seq"]
            if seq not in got:
                got.append(seq)
        return got

    def quiet(self, timeout: float = 0.5) -> bool:
        """Nothing arrives within ``timeout``."""
        return not self.sock.poll(int(timeout * 1000))

    def close(self) -> None:
        self.sock.close(0)


def publish(publisher: Publisher, count: int) -> None:
    header = publisher.header_prefix("json")
    for _ in range(count):
        publisher.send(b"event/acks/runner_on_ok", header, b"{}")


def until_flowing(frontend: str, sub: zmq.Socket) -> None:
    """A probe publisher's messages reach ``sub`` through the broker: the path is up (slow joiners both sides)."""
    probe = Publisher(Config(url=(frontend,), linger=0))
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            publish(probe, 1)
            if sub.poll(100):
                while sub.poll(200):  # drain the probes still in flight
                    sub.recv_multipart()
                return
        raise AssertionError("no probe got through the broker")
    finally:
        probe.close()


def wait_subscribed(publisher: Publisher, prefixes: set[bytes]) -> None:
    """Until the publisher has read these data subscriptions (a new connection's resend is then behind us)."""
    deadline = time.monotonic() + 10
    while publisher._outbox._subscriptions != prefixes:
        assert time.monotonic() < deadline, publisher._outbox._subscriptions
        publisher.flush(0.01)


def settles_after(publisher: Publisher, timeout: float = 0.5) -> bool:
    """The publisher has nothing left to send or to have acknowledged, within ``timeout``."""
    return publisher.flush(timeout)


def two_brokers(context: zmq.Context, tmp_path, publisher: Publisher) -> tuple["RawBroker", "RawBroker"]:
    """Brokers ``a`` (subscribed to everything) and ``b`` (to events), both announced, at ``tmp_path``/a and /b."""
    a = RawBroker(context, f"ipc://{tmp_path}/a", "a", "token-a")
    b = RawBroker(context, f"ipc://{tmp_path}/b", "b", "token-b")
    for broker, prefix in ((a, b""), (b, b"event")):
        broker.announce()
        broker.subscribe(prefix)
    wait_subscribed(publisher, {b"", b"event"})
    return a, b


def test_a_sent_message_is_released_only_when_every_known_broker_acknowledged_it(tmp_path):
    context = zmq.Context()
    publisher = Publisher(Config(url=(f"ipc://{tmp_path}/a", f"ipc://{tmp_path}/b"), linger=0))
    try:
        a, b = two_brokers(context, tmp_path, publisher)
        publish(publisher, 5)
        assert a.seqs(5) == b.seqs(5) == [1, 2, 3, 4, 5]
        a.ack({publisher.id: 5})
        b.ack({publisher.id: 3})
        assert not settles_after(publisher)  # 4 and 5 wait for b
        b.ack({publisher.id: 5})
        assert settles_after(publisher, 5)
    finally:
        publisher.close()
        context.destroy(0)


def test_a_presence_claiming_a_present_brokers_name_with_another_token_makes_no_acknowledgement_count(
        tmp_path, caplog):
    """A subscriber can send presence-shaped subscriptions, which a broker passes upstream: it cannot take over
    a broker's name, and while two claims stand, neither token's acknowledgements release anything."""
    context = zmq.Context()
    publisher = Publisher(Config(url=(f"ipc://{tmp_path}/f",), linger=0))
    try:
        broker = RawBroker(context, f"ipc://{tmp_path}/f")
        broker.announce()
        broker.subscribe()
        publish(publisher, 3)
        assert broker.seqs(3) == [1, 2, 3]
        broker.announce(token="forged")  # as it would arrive, passed upstream from a subscriber
        broker.ack({publisher.id: 3}, token="forged")
        broker.ack({publisher.id: 3})  # the real token too: which one is real cannot be told now
        assert not settles_after(publisher)
        broker.subscribe()  # a new connection: what no broker acknowledged goes again
        assert broker.seqs(3) == [1, 2, 3]
    finally:
        publisher.close()
        context.destroy(0)
    assert "two presences claim broker 'broker'" in caplog.text


def test_an_acknowledgement_beyond_what_was_sent_is_ignored_and_logged_once(tmp_path, caplog):
    context = zmq.Context()
    publisher = Publisher(Config(url=(f"ipc://{tmp_path}/f",), linger=0))
    try:
        broker = RawBroker(context, f"ipc://{tmp_path}/f")
        broker.announce()  # present, not subscribed yet (its start-up grace): nothing is sent
        publish(publisher, 3)
        for _ in range(3):
            broker.ack({publisher.id: 10**12})
        assert not settles_after(publisher)
        broker.subscribe()
        assert broker.seqs(3) == [1, 2, 3]  # nothing was dropped
        broker.ack({publisher.id: 3})
        assert settles_after(publisher, 5)
    finally:
        publisher.close()
        context.destroy(0)
    assert caplog.text.count("beyond what was sent") == 1


def test_resend_in_an_acknowledgement_sends_again_what_is_kept_after_that_seq(tmp_path):
    context = zmq.Context()
    publisher = Publisher(Config(url=(f"ipc://{tmp_path}/f",), linger=0))
    try:
        broker = RawBroker(context, f"ipc://{tmp_path}/f")
        broker.announce()
        broker.subscribe()
        publish(publisher, 6)
        assert broker.seqs(6) == [1, 2, 3, 4, 5, 6]
        broker.ack({publisher.id: 2}, resend={publisher.id: 2})  # its history missed a copy after 2
        assert broker.seqs(4) == [3, 4, 5, 6]
        publish(publisher, 1)
        assert broker.seqs(1) == [7]
        broker.ack({publisher.id: 7})
        assert settles_after(publisher, 5)
    finally:
        publisher.close()
        context.destroy(0)


def test_a_broker_that_comes_back_gets_everything_after_its_last_acknowledgement_before_anything_newer(tmp_path):
    """The other broker stays connected throughout and gets the same messages again: exact repeats."""
    context = zmq.Context()
    publisher = Publisher(Config(url=(f"ipc://{tmp_path}/a", f"ipc://{tmp_path}/b"), linger=0))
    try:
        a, b = two_brokers(context, tmp_path, publisher)
        publish(publisher, 4)
        assert a.seqs(4) == b.seqs(4) == [1, 2, 3, 4]
        a.ack({publisher.id: 4})
        b.ack({publisher.id: 2})
        deadline = time.monotonic() + 10
        while publisher._outbox.brokers["b"].acked.get(publisher.id) != 2:  # read before b goes
            assert time.monotonic() < deadline
            publisher.flush(0.01)
        b.close()
        wait_subscribed(publisher, {b""})
        publish(publisher, 3)  # 5..7 reach a only
        assert a.seqs(3) == [5, 6, 7]
        a.ack({publisher.id: 7})
        b = RawBroker(context, f"ipc://{tmp_path}/b", "b", "token-b-restarted")
        b.announce()
        b.subscribe(b"event")
        wait_subscribed(publisher, {b"", b"event"})
        assert b.seqs(5) == [3, 4, 5, 6, 7]
        publish(publisher, 1)
        assert b.seqs(1) == [8]
        assert a.seqs(6) == [3, 4, 5, 6, 7, 8]
    finally:
        publisher.close()
        context.destroy(0)


def test_two_real_brokers_the_restarted_ones_history_gets_the_window_it_missed(tmp_path):
    a = BrokerProcess(f"ipc://{tmp_path}/a-f", f"ipc://{tmp_path}/a-b", "--startup-grace", "0",
                      history=f"ipc://{tmp_path}/a-h")
    b = BrokerProcess(f"ipc://{tmp_path}/b-f", f"ipc://{tmp_path}/b-b", "--startup-grace", "0",
                      history=f"ipc://{tmp_path}/b-h")
    publisher = Publisher(Config(url=(a.frontend, b.frontend), linger=0))
    try:
        publish(publisher, 10)
        assert publisher.flush(10)
        b.kill()
        publish(publisher, 10)  # 11..20 reach a only
        wait_recorded(a.history, publisher.id, 20)
        b.start()
        publish(publisher, 1)
        wait_recorded(b.history, publisher.id, 21)
        with Subscriber([], history=b.history) as asker:
            info, messages = asker.request("fetch", pub=publisher.id, first=11, last=21)
        assert [json.loads(m[1])["seq"] for m in messages] == list(range(11, 22)) and info["missing"] == []
        assert publisher.flush(10)
    finally:
        publisher.close()
        a.stop()
        b.stop()


def test_a_rogue_subscriber_sending_acknowledgements_and_presences_makes_nothing_lost_across_a_broker_sigkill(
        tmp_path):
    """An XSUB on a real broker's backend sends what a broker sends upstream: presences (the broker's own name
    with a token of its own, and a new name) and acknowledgements of everything.  A plain SUB that stays
    connected still gets every message across a broker SIGKILL and restart."""
    broker = BrokerProcess(f"ipc://{tmp_path}/f", f"ipc://{tmp_path}/b", "--startup-grace", "0.5")
    context = zmq.Context()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(broker.backend)
    until_flowing(broker.frontend, sub)
    rogue = context.socket(zmq.XSUB)
    rogue.connect(broker.backend)
    publisher = Publisher(Config(url=(broker.frontend,), linger=0))
    name = default_name([broker.frontend])
    total, received = 120, {}

    def forge() -> None:
        # Tokens that sort first: a broker's socket replays subscriptions to a new runner in byte order.
        for fake in (protocol.Presence(name, "!", SIZE), protocol.Presence("rogue", "!", SIZE)):
            rogue.send(b"\x01" + protocol.presence_topic(fake))
        for broker_name in (name, "rogue"):
            rogue.send(protocol.ack_frame(protocol.Ack(broker_name, "!", {publisher.id: 10**9})))
            rogue.send(protocol.ack_frame(protocol.Ack(broker_name, "!", {publisher.id: publisher._outbox.seq})))

    def drain(timeout: float = 0.05) -> None:
        while sub.poll(int(timeout * 1000)):
            frames = sub.recv_multipart()
            header = json.loads(frames[1])
            if header["pub"] == publisher.id:
                received.setdefault(header["seq"], frames)

    try:
        header = publisher.header_prefix("json")
        for i in range(total):
            publisher.send(b"event/rogue/runner_on_ok", header, b'{"i": %d}' % i)
            forge()
            drain(0.02)
            if i == 60:
                broker.kill()
                time.sleep(0.3)
                broker.start()
        deadline = time.monotonic() + 30
        while len(received) < total and time.monotonic() < deadline:
            publisher.flush(0.1)
            drain(0.1)
        assert sorted(received) == list(range(1, total + 1))
        assert publisher.dropped == publisher.unconfirmed == 0
    finally:
        publisher.close()
        broker.stop()
        context.destroy(0)
