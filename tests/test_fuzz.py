"""Hostile input: fuzzing the decoding path, the subscriber side and a real broker process.

A publisher that sends garbage, huge messages or floods must not crash the broker, grow
its memory without bound or stop other publishers' messages; subscribers and tail
survive any bytes.  What is capped where: docs/security.md, "Hostile input".
"""
from __future__ import annotations

import socket
import struct
import subprocess
import time

import msgpack
import orjson
import pytest
import zmq
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import BIN, BrokerProcess, rss_mib

from zmq_emitter import protocol, security
from zmq_emitter.consumers import tail
from zmq_emitter.consumers.subscriber import Subscriber, Tracker

FUZZ = settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)

# ---------------------------------------------------------------------------------------
# Strategies

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12)

# Payloads shaped like ansible-runner's, with hostile values where tail looks
event_like = st.fixed_dictionaries({}, optional={
    "event": json_values, "stdout": json_values, "created": json_values | st.datetimes().map(str),
    "event_data": json_values | st.fixed_dictionaries({}, optional={
        "host": json_values, "remote_addr": json_values, "task": json_values, "play": json_values,
        "res": json_values | st.fixed_dictionaries({}, optional={"msg": json_values})}),
}) | json_values

topics = st.one_of(st.binary(max_size=40),
                   st.tuples(st.sampled_from(["status", "event", "other", ""]), st.text(max_size=10),
                             st.text(max_size=10)).map(lambda t: "/".join(t).encode("utf-8", "surrogatepass")))


@st.composite
def headers(draw):
    codec = draw(st.sampled_from(["json", "msgpack", "xml", None]))
    fields = {"v": draw(st.sampled_from([1, 1, 2, "1", None])), "codec": codec,
              "pub": draw(st.text(max_size=8) | st.integers()), "seq": draw(st.integers(-3, 2**65) | st.text())}
    return codec, draw(st.sampled_from([protocol.encode_json(fields), protocol.encode_msgpack(fields)])
                       | st.binary(max_size=40))


@st.composite
def messages(draw):
    """Frames of one message: mostly nearly valid, so the fuzz reaches past the first checks."""
    codec, header = draw(headers())
    payload_value = draw(event_like)
    if codec in protocol.ENCODERS and draw(st.booleans()):
        payload = protocol.ENCODERS[codec](payload_value)
    else:
        payload = draw(st.binary(max_size=64) | st.sampled_from([b"\xc1", b"{", b"\x92\x01", b"\xdd\xff\xff\xff\xff"]))
    frames = [draw(topics), header, payload]
    extra = draw(st.integers(-3, 2))
    return frames[:3 + extra] if extra < 0 else frames + [b"x"] * extra


# ---------------------------------------------------------------------------------------
# The decoding path, in-process


@FUZZ
@given(messages())
def test_decode_raises_only_protocol_error_and_the_tracker_never_raises(frames):
    try:
        msg = protocol.decode(frames)
    except protocol.ProtocolError:
        msg = None
    if msg is not None:
        assert msg.kind in protocol.KINDS and msg.codec in protocol.CODECS and msg.seq >= 1
    assert (Tracker(on_invalid=lambda *_: None).accept(frames) is None) is (msg is None)


_READER = protocol.EnvelopeReader()  # one for the whole run: later examples meet what earlier ones taught it


@FUZZ
@given(st.lists(messages(), min_size=1, max_size=4))
def test_the_brokers_envelope_reader_agrees_with_envelope_on_any_frames(batch):
    # The history reads envelopes through remembered topics and header prefixes; a header that
    # only looks like a known prefix followed by a seq must still get envelope()'s verdict.
    for frames in batch + [[frames[0], frames[1][:-1] + b"0}", b""] for frames in batch if len(frames) > 1]:
        try:
            expected = protocol.envelope(frames)
        except protocol.ProtocolError:
            expected = None
        try:
            got = _READER(frames)
        except protocol.ProtocolError:
            got = None
        assert got == expected


def codec_payloads(codec: str):
    """Arbitrary bytes, and the codec's own encoding of arbitrary values (so that both outcomes are common)."""
    return st.binary(max_size=200) | json_values.map(protocol.ENCODERS[codec])


@FUZZ
@given(st.data())
def test_both_codecs_reject_arbitrary_payload_bytes_with_protocol_error_only(data):
    """decode accepts exactly the payloads its codec's library decodes, and gives exactly what that decoded;
    every other payload is a ProtocolError that names the codec."""
    codec = data.draw(st.sampled_from(protocol.CODECS))
    payload = data.draw(codec_payloads(codec))
    frames = [b"event/r/x", protocol.header_prefix(codec, "p") + b"1}", payload]
    try:
        expected = orjson.loads(payload) if codec == "json" else msgpack.unpackb(payload, raw=False,
                                                                                 strict_map_key=False)
    except Exception:  # the library's own errors: orjson.JSONDecodeError, msgpack's several
        with pytest.raises(protocol.ProtocolError, match=f"payload is not valid {codec}"):
            protocol.decode(frames)
        return
    msg = protocol.decode(frames)
    assert (msg.codec, msg.raw_payload, msg.payload) == (codec, payload, expected)


@FUZZ
@given(st.sampled_from(protocol.CODECS), st.sampled_from(protocol.KINDS), event_like)
def test_tail_formats_any_decodable_message_without_raising(codec, kind, payload):
    msg = protocol.decode([protocol.topic(kind, "run", "runner_on_failed"), protocol.header_prefix(codec, "p") + b"1}",
                           protocol.ENCODERS[codec](payload)])
    for line in (tail.format_pretty(msg, colour=True), tail.format_pretty(msg, colour=False), tail.format_json(msg),
                 tail.format_stdout(msg)):
        assert line is None or isinstance(line, str)


# ---------------------------------------------------------------------------------------
# A real broker process under hostile publishers


MAX_MESSAGE_SIZE = 64 * 1024


@pytest.fixture
def hostile_broker(tmp_path):
    """`zmq-emitter broker` with a small message size cap; tcp frontend (raw sockets reach it)."""
    broker = BrokerProcess("tcp://127.0.0.1:0", f"ipc://{tmp_path}/backend", "--startup-grace", "0",
                           "--max-message-size", str(MAX_MESSAGE_SIZE), history=f"ipc://{tmp_path}/history")
    assert broker.frontend.startswith("tcp://127.0.0.1:") and not broker.frontend.endswith(":0")
    yield broker
    broker.stop()


def connected_publisher(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    """An XPUB like the plugin's, returned once the broker's subscription has arrived."""
    sock = ctx.socket(zmq.XPUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    assert sock.poll(10_000), "broker never subscribed"
    sock.recv()
    return sock


def good_messages_flow(ctx: zmq.Context, broker, count: int = 200) -> list[int]:
    """Publish ``count`` valid messages from a fresh publisher; which of them (0..count-1) a subscriber got."""
    with Subscriber(broker.backend, ["status/good-run/"], context=ctx) as sub:
        pub = connected_publisher(ctx, broker.frontend)
        prefix = protocol.header_prefix("json", "good")
        seq, got, deadline = 0, [], time.monotonic() + 30
        try:
            while not got and time.monotonic() < deadline:  # until the subscription is through
                seq += 1
                pub.send_multipart([b"status/good-run/probe", prefix + b"%d}" % seq, b"{}"])
                msg = sub.recv(timeout=0.1)
                got += [msg.seq] if msg else []
            first = seq + 1
            for seq in range(first, first + count):
                pub.send_multipart([b"status/good-run/running", prefix + b"%d}" % seq, b'{"ok":1}'])
            while len(got) < count + 1 and time.monotonic() < deadline:
                msg = sub.recv(timeout=0.2)
                got += [msg.seq] if msg else []
        finally:
            pub.close(linger=0)
        assert sub.gaps == []
        return [s - first for s in got if s >= first]  # 0, 1, ... count - 1 if all arrived


def test_broker_survives_thousands_of_random_multipart_messages_and_keeps_serving(hostile_broker, tmp_path):
    ctx = zmq.Context()
    watcher = Subscriber(hostile_broker.backend, [""], context=ctx, on_invalid=lambda *_: None)  # takes it all
    tail_proc = subprocess.Popen([str(BIN / "zmq-emitter"), "tail", "--connect", hostile_broker.backend,
                                  "--format", "pretty", "--no-color"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert good_messages_flow(ctx, hostile_broker, 10)  # everyone is connected
        baseline = rss_mib(hostile_broker.pid)
        fuzzer = connected_publisher(ctx, hostile_broker.frontend)
        fuzzer.setsockopt(zmq.SNDHWM, 0)
        sent = []

        @FUZZ
        @given(messages() | st.lists(st.binary(max_size=300), min_size=1, max_size=30),
               st.integers(0, 50))
        def send(frames, oversize):
            frames = frames or [b""]  # a message has at least one frame
            if oversize == 0:  # now and then one over the broker's cap: it disconnects the sender
                frames = frames + [b"\0" * (MAX_MESSAGE_SIZE + 1)]
            fuzzer.send_multipart(frames)
            sent.append(len(frames))
            while watcher.socket.poll(0):  # the subscriber library decodes whatever arrives
                watcher.tracker.accept(watcher.socket.recv_multipart())

        send()
        fuzzer.close(linger=0)
        assert len(sent) >= 2000
        assert hostile_broker.proc.poll() is None, "broker died: " + "".join(hostile_broker.log[-20:])
        assert good_messages_flow(ctx, hostile_broker, 200) == list(range(200))
        assert rss_mib(hostile_broker.pid) < baseline + 100, (baseline, rss_mib(hostile_broker.pid))
        assert watcher.counts.invalid > 0  # garbage did reach subscribers, and they survived it
        assert tail_proc.poll() is None, tail_proc.stderr.read()
    finally:
        watcher.close()
        tail_proc.terminate()
        out, err = tail_proc.communicate(timeout=10)
        ctx.destroy(linger=0)  # also closes what an assertion left open
    assert "good-run" in out and "Traceback" not in err


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(st.binary(min_size=1, max_size=2000) | st.binary(max_size=300).map(
    lambda b: b"\xff" + b"\0" * 8 + b"\x7f\x03\x00NULL" + b"\0" * 48 + b))  # a valid greeting, then garbage
def _raw_garbage(port, data):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the broker hung up: the right answer to garbage


def test_broker_survives_raw_tcp_garbage_and_a_flood_and_keeps_serving(hostile_broker):
    ctx = zmq.Context()
    try:
        assert good_messages_flow(ctx, hostile_broker, 10)
        baseline = rss_mib(hostile_broker.pid)
        _raw_garbage(int(hostile_broker.frontend.rsplit(":", 1)[1]))
        flooder = connected_publisher(ctx, hostile_broker.frontend)
        flooder.setsockopt(zmq.SNDHWM, 0)
        for i in range(100_000):  # as fast as it can, while a good publisher publishes
            flooder.send_multipart([b"status/flood/x", b"junk", b"x" * (i % 500)])
        assert good_messages_flow(ctx, hostile_broker, 500) == list(range(500))
        flooder.close(linger=0)
        assert hostile_broker.proc.poll() is None
        assert rss_mib(hostile_broker.pid) < baseline + 150, (baseline, rss_mib(hostile_broker.pid))
    finally:
        ctx.destroy(linger=0)  # also closes what an assertion left open


def test_a_curve_broker_cuts_an_unauthenticated_peer_before_it_can_buffer_anything(tmp_path):
    """The attack libzmq cannot cap (an endless multipart message) never starts without a listed key."""
    keys = tmp_path / "keys"
    security.generate_keys(keys, "broker")
    (tmp_path / "publishers").mkdir()
    broker = BrokerProcess("tcp://127.0.0.1:0", f"ipc://{tmp_path}/b", "--startup-grace", "0",
                           "--curve-secret-key-file", str(keys / "broker.key_secret"),
                           "--publisher-keys", str(tmp_path / "publishers"), history="none")
    try:
        port = int(broker.frontend.rsplit(":", 1)[1])
        baseline = rss_mib(broker.pid)
        greeting = b"\xff" + b"\0" * 8 + b"\x7f\x03\x00" + b"NULL".ljust(20, b"\0") + b"\0" * 32
        ready = b"\x05READY\x0bSocket-Type" + struct.pack(">I", 3) + b"PUB"
        unfinished_frame = b"\x01\xff" + b"x" * 255  # MORE set: the message never ends
        sent, cut = 0, False
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            try:
                sock.sendall(greeting + b"\x04" + bytes([len(ready)]) + ready)
                for _ in range(200):  # up to 50 MiB
                    sock.sendall(unfinished_frame * 1000)
                    sent += 257_000
            except OSError:  # reset or broken pipe: the broker closed the connection
                cut = True
        assert cut, f"the broker took {sent} bytes from a peer with the wrong mechanism"
        assert broker.proc.poll() is None
        assert rss_mib(broker.pid) < baseline + 20
    finally:
        broker.stop()
