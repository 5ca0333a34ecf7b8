"""No bytes on the wire may crash a subscriber or a format: hypothesis against every tail format,
against the subscriber core fed hostile history replies, and against the connection watcher.

(``test_fuzz.py`` fuzzes decoding and the broker; this file the consumers' side beyond decoding.)
"""
from __future__ import annotations

import datetime
import json
import re

import msgpack
import orjson
import zmq
from hypothesis import HealthCheck, given, settings, strategies as st

from consumer_helpers import message

from zmq_emitter import protocol
from zmq_emitter.consumers import tail
from zmq_emitter.consumers.core import Dialogue, Tracker
from zmq_emitter.link import Link

FUZZ = settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)

# ---------------------------------------------------------------------------------------
# Hostile payloads, where tail looks

nasty_text = st.one_of(
    st.text(max_size=30),
    st.lists(st.sampled_from(["\x1b[2J", "\x1b]0;title\x07", "\r", "\n", "\t", "\x00", "\x9b31m", "\u202e", "\u2028",
                              "\u2066", "ウェブ", "🚀", "e\u0301", "\ufe0f", "\u200d", "plain", " "]),
             max_size=8).map("".join))

offsets = st.timedeltas(min_value=-datetime.timedelta(hours=23, minutes=59),
                        max_value=datetime.timedelta(hours=23, minutes=59)).map(datetime.timezone)
times = st.one_of(
    st.datetimes(min_value=datetime.datetime(1, 1, 1), max_value=datetime.datetime(9999, 12, 31, 23, 59, 59),
                 timezones=st.none() | offsets).map(lambda d: d.isoformat()),
    st.sampled_from(["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00", "0001-01-01", "9999-12-31T23:59:59",
                     "2024-02-30T00:00:00", "+275760-09-13T00:00:00Z", "", "now", "1e308"]),
    nasty_text, st.integers(-2**70, 2**70), st.floats(), st.none())

plain_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats(allow_nan=False) | nasty_text,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(nasty_text, children, max_size=3),
    max_leaves=10)

# msgpack carries more than JSON: bytes, extension types, timestamps, NaN, non-text keys
msgpack_values = st.recursive(
    plain_values | st.binary(max_size=20) | st.floats()
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8))
    | st.builds(msgpack.Timestamp, st.integers(-2**33, 2**33), st.integers(0, 999_999_999)),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(nasty_text | st.integers(-2**63, 2**64 - 1) | st.binary(max_size=4), children, max_size=3),
    max_leaves=10)


def event_like(values):
    return st.fixed_dictionaries({}, optional={
        "event": values, "stdout": values | nasty_text, "created": times | values, "runner_ident": values,
        "event_data": values | st.fixed_dictionaries({}, optional={
            "host": nasty_text | values, "remote_addr": nasty_text | values, "task": nasty_text | values,
            "play": values, "playbook": values,
            "res": values | st.fixed_dictionaries({}, optional={"msg": nasty_text | values})}),
    }) | values


payloads = st.one_of(
    st.tuples(st.just("json"), event_like(plain_values).map(protocol.encode_json)),
    st.tuples(st.just("msgpack"), event_like(msgpack_values).map(lambda v: msgpack.packb(v, use_bin_type=True))))

TERMINAL_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
STYLE = re.compile(r"^(\x1b\[[0-9;]*m)+|\x1b\[0m$")


@FUZZ
@given(st.sampled_from(protocol.KINDS), nasty_text, nasty_text, payloads)
def test_every_tail_format_makes_one_line_of_text_of_any_decodable_message(kind, ident, name, codec_payload):
    codec, payload = codec_payload
    try:
        msg = protocol.decode([protocol.topic(kind, ident, name), protocol.header_prefix(codec, "p") + b"1}", payload])
    except protocol.ProtocolError:
        return  # (e.g. a msgpack map keyed by an array) skipped by every subscriber, as test_fuzz.py shows
    for colour in (False, True):
        line = tail.format_pretty(msg, colour)
        assert not TERMINAL_CONTROL.search(STYLE.sub("", line) if colour else line), repr(line)
    line = tail.format_json(msg)
    assert "\n" not in line and "\r" not in line
    orjson.loads(line)  # one JSON value
    line = tail.format_stdout(msg)
    assert line is None or isinstance(line, str)


# ---------------------------------------------------------------------------------------
# Hostile history replies, to every plan of the subscriber core

PUBS = ["aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb"]
seqs = st.integers(1, 400) | st.integers(-3, 2**70)
frames_of_messages = st.lists(st.one_of(
    st.builds(lambda p, s, k, i: message(p, s, k, i), st.sampled_from(PUBS), st.integers(1, 400),
              st.sampled_from(["status", "event", "publisher"]), st.sampled_from(["run", "other", "a/b"])),
    st.lists(st.binary(max_size=12), min_size=3, max_size=3)), max_size=12)
anything = plain_values | st.lists(plain_values, max_size=3)


def weighted(*choices):
    """One of the strategies, each as often as its weight says: ``weighted((a, 7), (b, 1))``."""
    return st.sampled_from([strategy for strategy, weight in choices for _ in range(weight)]).flatmap(lambda s: s)


def sometimes(good):
    """Mostly ``good`` (so that the fuzz reaches deep into the plans), now and then anything at all."""
    return weighted((good, 7), (anything, 1))


# One reply shape serves every op: what a history would answer, each field now and then hostile.
info = st.fixed_dictionaries({
    "ok": sometimes(st.just(True)),
    "runs": sometimes(st.lists(st.fixed_dictionaries({
        "ident": sometimes(st.sampled_from(["run", "other", "a/b"])),
        "publishers": sometimes(st.lists(st.sampled_from(PUBS), min_size=1, max_size=2))}), min_size=1, max_size=3)),
    "publishers": sometimes(st.tuples(*[st.fixed_dictionaries({
        "publisher": sometimes(st.just(pub)), "last_seq": sometimes(st.integers(0, 400) | seqs)}) for pub in PUBS]
    ).map(list)),
    "missing": sometimes(st.lists(sometimes(st.tuples(st.sampled_from(PUBS), seqs, seqs).map(list)), max_size=3)),
    "pending": sometimes(st.lists(sometimes(st.tuples(st.sampled_from(PUBS), seqs, seqs).map(list)), max_size=3)),
}, optional={"error": anything})
whole = st.builds(lambda i, m: [json.dumps(i, default=str).encode()] + [f for msg in m for f in msg], info, frames_of_messages)
replies = weighted(
    (whole, 12),                                                          # what a history would answer, mostly
    (st.none(), 1),                                                       # no answer in time
    (st.lists(st.binary(max_size=30), max_size=4), 1),                    # not a reply
    (st.builds(lambda i, m: [json.dumps(i, default=str).encode()] + [f for msg in m for f in msg][:-1], info,
               frames_of_messages), 1),                                   # frames that are not whole messages
)


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(st.data())
def test_the_subscriber_core_survives_any_history_reply_and_any_live_frames(data):
    clock = Clock()
    topics = data.draw(st.sampled_from([[""], ["status/run/", "event/run/"], ["event/"]]))
    tracker = Tracker(topics, recovers=True, on_gap=lambda gap: None, on_invalid=lambda *_: None,
                      on_error=lambda text: None, clock=clock)

    def drive(plan) -> None:
        dialogue = Dialogue(plan, timeout=1.0, clock=clock)
        for _ in range(30):  # a hostile history may keep a plan asking for ever: give up on it, never raise
            if dialogue.done:
                return
            sent = dialogue.outgoing()
            assert sent is None or len(sent) == 3
            if sent is None and dialogue.wait_ms() > 0:  # a pause (waiting for what the history still asks for)
                clock.now += 5.0
                assert not dialogue.expire()
                continue
            reply = data.draw(replies)
            if reply is None:
                clock.now += 2.0
                assert dialogue.expire()
            else:
                identity = data.draw(st.sampled_from([sent[0] if sent else b""] * 7 + [b"stale"]))
                dialogue.incoming([identity, b""] + reply)
                if identity != (sent[0] if sent else b""):
                    clock.now += 2.0
                    dialogue.expire()

    for step in data.draw(st.lists(st.sampled_from(["replay", "replay-all", "catch-up", "reconnected", "live",
                                                    "due"]), min_size=1, max_size=6)):
        if step == "live":
            for frames in data.draw(frames_of_messages):
                result = tracker.receive(frames)
                if result is not None and not isinstance(result, protocol.Message):
                    drive(result)
        elif step == "due":
            clock.now += 10.0
            plan = tracker.due()
            if plan is not None:
                drive(plan)
        else:
            drive({"replay": lambda: tracker.replay("run"), "replay-all": lambda: tracker.replay(None),
                   "catch-up": tracker.catch_up, "reconnected": tracker.reconnected}[step]())
    assert all(isinstance(msg, protocol.Message) for msg in tracker.ready)
    assert all(gap.first <= gap.last for gap in tracker.gaps)
    tracker.positions()


@FUZZ
@given(st.lists(st.tuples(st.sampled_from([zmq.EVENT_HANDSHAKE_SUCCEEDED, zmq.EVENT_HANDSHAKE_FAILED_AUTH,
                                           zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
                                           zmq.EVENT_DISCONNECTED]) | st.integers(0, 2**20),
                          st.sampled_from(["ipc:///a", "tcp://b:1"]) | st.text(max_size=10),
                          st.integers(-2**31, 2**31), st.floats(0, 100)), max_size=20),
       st.sampled_from([["ipc:///a"], ["ipc:///a", "tcp://b:1"], []]))
def test_the_connection_watcher_survives_any_monitor_event_and_says_each_trouble_once(events, endpoints):
    clock, told = Clock(), []
    link = Link(endpoints, told.append, clock)
    for event, endpoint, value, later in events:
        clock.now += later
        link.event(event, endpoint, value)
        for again in link.due():
            assert again in endpoints
    successes = sum(1 for event, *_ in events if event == zmq.EVENT_HANDSHAKE_SUCCEEDED)
    assert len(told) <= len(endpoints) * (1 + successes)  # once per trouble, never once per retry
