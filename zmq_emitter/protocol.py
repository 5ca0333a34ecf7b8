"""The wire protocol, version 1: the one module both publishers and subscribers import.

Every message is three ZeroMQ frames::

    topic    b"event/<runner ident>/<event name>"   or   b"status/<runner ident>/<status>"
    header   b'{"v":1,"codec":"json","pub":"9f86d081884c7d65","seq":42}'
    payload  the dict ansible-runner handed to the plugin, encoded with the header's codec

Subscribing to ``event`` or ``status`` gets every message of that kind; subscribing
to ``event/<ident>/`` gets one run's events.  ``seq`` increases by one per message of
a publisher (``pub``), so a subscriber can tell a gap from a quiet run.  The full
specification, for clients in other languages, is ``docs/protocol.md``.

Publishing::

    >>> from zmq_emitter import protocol
    >>> frames = [protocol.topic("event", "run-1", "runner_on_ok"),
    ...           protocol.header_prefix("json", "9f86d081884c7d65") + b"1}",
    ...           protocol.ENCODERS["json"]({"event": "runner_on_ok", "runner_ident": "run-1"})]

Consuming::

    >>> msg = protocol.decode(frames)
    >>> msg.kind, msg.ident, msg.name, msg.seq, msg.payload["event"]
    ('event', 'run-1', 'runner_on_ok', 1, 'runner_on_ok')
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, NamedTuple

import msgpack
import orjson

VERSION = 1
KINDS = ("status", "event", "publisher")  # "publisher": a publisher's closing report
# The statuses that end a run (ansible-runner's): a run's last message.
FINAL_STATUSES = frozenset({"successful", "failed", "timeout", "canceled", "error"})
CODECS = ("json", "msgpack")
SEPARATOR = "/"

# ----------------------------------------------------------------------------------------
# Topic and header


def escape_ident(ident: str) -> str:
    """The ident as it stands in a topic: ``%`` as ``%25`` and ``/`` as ``%2F``, nothing else changed.

    A topic is split at its first two ``/``; escaping keeps any ident ansible-runner accepts
    (``--ident 'a/b c'``) in one piece.  Idents without ``%`` or ``/`` (UUIDs, the default)
    are unchanged, so version 1 topics stay as they were.

    >>> escape_ident("a/b c%")
    'a%2Fb c%25'
    """
    if "%" in ident or "/" in ident:
        return ident.replace("%", "%25").replace("/", "%2F")
    return ident


def unescape_ident(text: str) -> str:
    """The ident a topic carries (the inverse of ``escape_ident``; other ``%`` sequences stay as they are)."""
    if "%" not in text:
        return text
    return _ESCAPED.sub(lambda m: "%" if m.group(0) == "%25" else "/", text)


_ESCAPED = re.compile("%25|%2[Ff]")


def topic(kind: str, ident: str, name: str) -> bytes:
    """The topic frame: ``<kind>/<ident>/<name>``, UTF-8, the ident escaped (``escape_ident``)."""
    return f"{kind}{SEPARATOR}{escape_ident(ident)}{SEPARATOR}{name}".encode()


def run_prefix(kind: str, ident: str) -> bytes:
    """The subscription prefix that matches one run's messages of one kind, and no other run's."""
    return f"{kind}{SEPARATOR}{escape_ident(ident)}{SEPARATOR}".encode()


def header_prefix(codec: str, publisher: str) -> bytes:
    """Everything of the header frame but the sequence number and the closing brace.

    The publisher computes it once; per message it only appends ``b"%d}" % seq``.
    """
    return orjson.dumps({"v": VERSION, "codec": codec, "pub": publisher, "seq": 0})[: -len(b"0}")]


# ----------------------------------------------------------------------------------------
# Payload codecs
#
# ansible-runner's own events are always plain JSON data.  Plugins can still be handed
# anything, and an encoding error must never fail a run, so values a codec cannot carry
# take a documented fallback (docs/protocol.md, "Values the codecs cannot carry"):
#   bytes -> text (UTF-8, invalid bytes as \xNN) in JSON; msgpack carries bytes natively
#   set, frozenset, tuple -> array
#   date, time, datetime -> ISO 8601 text;  anything else -> str(value)
#   non-string keys -> str(key);  integers beyond 64 bits -> decimal text
#   a container that contains itself -> the text "<recursion>" in its place
#   containers nested deeper than MAX_DEPTH -> the text "<too deep>" in their place
#   text with lone surrogates (not UTF-8) -> those characters as the text \udcNN


def fallback(value: Any) -> Any:
    """The ``default=`` hook of both encoders: a JSON-representable stand-in for ``value``."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, (set, frozenset)):
        return list(value)
    isoformat = getattr(value, "isoformat", None)
    if callable(isoformat):
        return isoformat()
    return str(value)


_INT_RANGE = range(-(2**63), 2**64)
MAX_DEPTH = 200  # orjson refuses more than 255 levels; Python's own recursion limit is near 1000


def to_plain(value: Any, _active: frozenset = frozenset()) -> Any:
    """A copy of ``value`` made only of str, int, float, bool, None, list and str-keyed dict.

    The slow path, taken only when the fast encoder refused a value.
    """
    if value is None or isinstance(value, (bool, float)):
        return value
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, int):
        return value if value in _INT_RANGE else str(value)
    if isinstance(value, (dict, list, tuple, set, frozenset)):
        if id(value) in _active:
            return "<recursion>"
        if len(_active) >= MAX_DEPTH:  # _active holds one container per level above this one
            return "<too deep>"
        active = _active | {id(value)}
        if isinstance(value, dict):
            return {_text(k if isinstance(k, str) else str(k)): to_plain(v, active) for k, v in value.items()}
        return [to_plain(v, active) for v in value]
    return to_plain(fallback(value), _active)


def _text(text: str) -> str:
    """``text``, or, if it holds lone surrogates (UTF-8 cannot carry them), with those as \\udcNN."""
    try:
        text.encode()
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()


def encode_json(data: Any) -> bytes:
    try:
        return orjson.dumps(data, default=fallback)
    except TypeError:  # orjson's JSONEncodeError: non-str keys, huge ints, recursion, ...
        return orjson.dumps(to_plain(data))


def encode_msgpack(data: Any) -> bytes:
    try:
        # msgpack alone would pack non-string keys as they are (a tuple key as an array, which
        # decoders refuse as a map key), so orjson's refusal decides the slow path for both codecs.
        orjson.dumps(data, default=fallback)
        return msgpack.packb(data, default=fallback, use_bin_type=True)
    except (TypeError, ValueError, OverflowError):
        return msgpack.packb(to_plain(data), use_bin_type=True)


def decode_json(raw: bytes) -> Any:
    return orjson.loads(raw)


def decode_msgpack(raw: bytes) -> Any:
    return msgpack.unpackb(raw, raw=False, strict_map_key=False)


ENCODERS: dict[str, Callable[[Any], bytes]] = {"json": encode_json, "msgpack": encode_msgpack}
DECODERS: dict[str, Callable[[bytes], Any]] = {"json": decode_json, "msgpack": decode_msgpack}


# ----------------------------------------------------------------------------------------
# Decoding, for subscribers


class ProtocolError(ValueError):
    """A message that does not follow this protocol; the text says what is wrong with it."""


@dataclasses.dataclass(frozen=True)
class Message:
    """One decoded message.

    ``payload`` is the dict the plugin was handed; ``raw_payload`` the payload frame as
    received (the exact published bytes, e.g. for printing JSON unchanged).  ``from_history``:
    a subscriber had it from a broker's history (a replay, a gap recovered), not live.
    """

    kind: str
    ident: str
    name: str
    publisher: str
    seq: int
    codec: str
    payload: Any
    raw_payload: bytes
    topic: bytes
    from_history: bool = False


def _head(frames: list[bytes]) -> tuple[str, str, str, str, str, int]:
    """(kind, ident, name, codec, publisher, seq) from the topic and header frames, checked."""
    if len(frames) != 3:
        raise ProtocolError(f"expected 3 frames (topic, header, payload), got {len(frames)}")
    topic_frame, header_frame = bytes(frames[0]), bytes(frames[1])
    try:
        kind, ident, name = topic_frame.decode().split(SEPARATOR, 2)
        ident = unescape_ident(ident)
    except (UnicodeDecodeError, ValueError):
        raise ProtocolError(f"topic is not <kind>/<ident>/<name>: {topic_frame[:80]!r}") from None
    if kind not in KINDS:
        raise ProtocolError(f"unknown topic kind {kind!r}; expected one of {', '.join(KINDS)}")
    try:
        header = orjson.loads(header_frame)
    except orjson.JSONDecodeError:
        raise ProtocolError(f"header is not JSON: {header_frame[:80]!r}") from None
    if not isinstance(header, dict):
        raise ProtocolError("header is not a JSON object")
    if header.get("v") != VERSION:
        raise ProtocolError(f"unsupported protocol version {header.get('v')!r}; this side speaks {VERSION}")
    codec, publisher, seq = header.get("codec"), header.get("pub"), header.get("seq")
    if codec not in DECODERS:
        raise ProtocolError(f"unknown codec {codec!r}; expected one of {', '.join(CODECS)}")
    if not isinstance(publisher, str) or not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise ProtocolError("header needs a string 'pub' and a positive integer 'seq'")
    return kind, ident, name, codec, publisher, seq


def decode(frames: list[bytes]) -> Message:
    """Decode the frames of one message; raise ProtocolError if they are not a valid message."""
    kind, ident, name, codec, publisher, seq = _head(frames)
    payload_frame = bytes(frames[2])
    try:
        payload = DECODERS[codec](payload_frame)
    except Exception as exc:  # each codec raises its own family of errors on bad bytes
        raise ProtocolError(f"payload is not valid {codec}: {exc}") from None
    return Message(kind, ident, name, publisher, seq, codec, payload, payload_frame, bytes(frames[0]))


# ----------------------------------------------------------------------------------------
# Envelope: topic and header without decoding the payload (for the broker's history)


class Envelope(NamedTuple):
    kind: str
    ident: str
    name: str
    publisher: str
    seq: int


def envelope(frames: list[bytes]) -> Envelope:
    """Topic and header of a message, checked as ``decode`` checks them; the payload is left alone."""
    kind, ident, name, _codec, publisher, seq = _head(frames)
    return Envelope(kind, ident, name, publisher, seq)


_MAX_SEQ_DIGITS = 18  # below 2**63: what orjson reads as an int too
_tuple_new = tuple.__new__


class EnvelopeReader:
    """``envelope`` for a stream of messages, remembering what repeats: the broker's history reads one per message.

    A topic (``event/<ident>/<name>``) repeats for every event of that name in a run, and a
    header is its publisher's ``header_prefix`` followed by ``<seq>}``; both are checked once
    by ``envelope`` and then known by their bytes.  Anything else (another key order, extra
    keys, a new topic) takes the full check, so the result and the errors are ``envelope``'s.

    >>> read = EnvelopeReader()
    >>> read([b"status/run-1/running", header_prefix("json", "p1") + b"7}", b"{}"])
    Envelope(kind='status', ident='run-1', name='running', publisher='p1', seq=7)
    """

    def __init__(self, remembered: int = 4096):
        self._remembered = remembered
        self._topics: dict[bytes, tuple[str, str, str]] = {}
        self._prefixes: dict[bytes, str] = {}  # a publisher's header_prefix -> its id

    def __call__(self, frames: list[bytes]) -> Envelope:
        if len(frames) != 3:
            return self._learn(frames)
        header = frames[1]
        cut = header.rfind(b'"seq":') + 6
        digits = header[cut:-1]
        parts = self._topics.get(frames[0])
        publisher = self._prefixes.get(header[:cut])
        if (parts is None or publisher is None or header[-1:] != b"}" or not digits.isdigit()
                or digits[:1] == b"0" or len(digits) > _MAX_SEQ_DIGITS):
            return self._learn(frames)
        return _tuple_new(Envelope, (*parts, publisher, int(digits)))  # (NamedTuple's own __new__ is Python)

    def _learn(self, frames: list[bytes]) -> Envelope:
        kind, ident, name, codec, publisher, seq = _head(frames)  # raises ProtocolError on anything invalid
        if len(self._topics) >= self._remembered:
            self._topics.clear()
        if len(self._prefixes) >= self._remembered:
            self._prefixes.clear()
        self._topics[bytes(frames[0])] = (kind, ident, name)
        prefix = header_prefix(codec, publisher)
        if bytes(frames[1]).startswith(prefix):  # the canonical header: later ones differ only in their seq
            self._prefixes[prefix] = publisher
        return Envelope(kind, ident, name, publisher, seq)


# ----------------------------------------------------------------------------------------
# Upstream, broker -> runners: presence and acknowledgements (docs/protocol.md, "Upstream")
#
# A broker with a history announces itself to the runners with a subscription that matches
# no message (topics never start with a zero byte)::
#
#     \x01 \x00zmq-emitter/broker {"broker": NAME, "token": TOKEN, "max_message_size": N}
#
# NAME is stable across the broker's restarts (a runner keeps for a broker that is away what
# it has not acknowledged, and sends it again when that broker is back); TOKEN is random per
# broker process and travels only upstream (subscribers never see upstream frames), so a
# subscriber cannot acknowledge in a broker's name.  When the broker's connection goes away,
# the runner's XPUB sees the same bytes as an unsubscription (\x00 ...).
#
# Acknowledgements are one-frame messages ``ACK `` + JSON::
#
#     {"broker": NAME, "token": TOKEN, "acks": {"<pub>": seq, ...}, "resend": {"<pub>": seq, ...}}
#
# ``acks``: the broker's history holds every message of that publisher up to ``seq`` (the
# highest contiguous one recorded).  ``resend``: its history misses a message after ``seq``
# (a copy dropped under overload): the publisher sends again what it still has after ``seq``.

PRESENCE_PREFIX = b"\x00zmq-emitter/broker "
ACK_PREFIX = b"ACK "


@dataclasses.dataclass(frozen=True)
class Presence:
    """A broker announcing itself upstream (see above)."""

    broker: str
    token: str
    max_message_size: int


def presence_topic(presence: Presence) -> bytes:
    """The subscription topic (without the leading \\x01) a broker sends upstream to announce itself."""
    return PRESENCE_PREFIX + orjson.dumps(dataclasses.asdict(presence))


def parse_presence(subscription_topic: bytes) -> Presence | None:
    """The presence a subscription topic announces, or None (an ordinary subscription, or malformed)."""
    if not subscription_topic.startswith(PRESENCE_PREFIX):
        return None
    try:
        fields = orjson.loads(subscription_topic[len(PRESENCE_PREFIX):])
        presence = Presence(fields["broker"], fields["token"], fields["max_message_size"])
    except (orjson.JSONDecodeError, TypeError, KeyError):
        return None
    if not (isinstance(presence.broker, str) and isinstance(presence.token, str)
            and _is_count(presence.max_message_size)):
        return None
    return presence


@dataclasses.dataclass(frozen=True)
class Ack:
    """One acknowledgement frame (see above)."""

    broker: str
    token: str
    acks: dict[str, int]
    resend: dict[str, int] = dataclasses.field(default_factory=dict)


def ack_frame(ack: Ack) -> bytes:
    return ACK_PREFIX + orjson.dumps(dataclasses.asdict(ack))


def parse_ack(frame: bytes) -> Ack | None:
    """The acknowledgement in an upstream frame; None for anything else or anything malformed."""
    if not frame.startswith(ACK_PREFIX):
        return None
    try:
        fields = orjson.loads(frame[len(ACK_PREFIX):])
        ack = Ack(fields["broker"], fields["token"], fields["acks"], fields.get("resend") or {})
    except (orjson.JSONDecodeError, TypeError, KeyError, AttributeError):
        return None
    if not (isinstance(ack.broker, str) and isinstance(ack.token, str) and isinstance(ack.acks, dict)
            and isinstance(ack.resend, dict)):
        return None
    if not all(_is_count(v) for v in ack.acks.values()) or not all(_is_count(v) for v in ack.resend.values()):
        return None
    return ack


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# ----------------------------------------------------------------------------------------
# Events too large for the broker (docs/protocol.md, "Events too large to send")
#
# A payload larger than the broker accepts (``runner_zmq_max_message_size``, or a smaller
# ``max_message_size`` a broker announced) is never sent: the publisher sends, on the same
# topic with the same seq, the event with its large values cut, and this key added.

TRUNCATED = "zmq_emitter_truncated"  # {"bytes": original payload size, "limit": the limit it exceeded}


# ----------------------------------------------------------------------------------------
# The broker's history service (REQ/REP): requests and replies are JSON; a reply that
# carries messages appends each message's three frames after the JSON frame.
#
#   {"op": "runs"}                                  -> {"ok": true, "runs": [...]}
#   {"op": "replay", "ident": ID, "from_seq": N}    -> {"ok": true, "count": n, "missing": [[a, b], ...]} + frames
#   {"op": "fetch", "pub": P, "first": A, "last": B} -> same shape, publisher P's messages A..B
#                                                      (at most MAX_FETCH sequence numbers from A on)

MAX_FETCH = 100_000


def request(op: str, **fields: Any) -> bytes:
    return orjson.dumps({"op": op, **fields})


def reply(info: dict, messages: list = ()) -> list[bytes]:
    frames = [orjson.dumps({"ok": True, **info})]
    for message_frames in messages:
        frames.extend(message_frames)
    return frames


def error_reply(text: str) -> list[bytes]:
    return [orjson.dumps({"ok": False, "error": text})]


def parse_reply(frames: list[bytes]) -> tuple[dict, list[list[bytes]]]:
    """(info, [message frames, ...]) of a history reply; ProtocolError if it is malformed or an error."""
    try:
        info = orjson.loads(frames[0])
    except (IndexError, orjson.JSONDecodeError):
        raise ProtocolError("history reply is not JSON") from None
    if not isinstance(info, dict) or not info.get("ok"):
        raise ProtocolError(f"history request refused: {info.get('error') if isinstance(info, dict) else info!r}")
    body = frames[1:]
    if len(body) % 3:
        raise ProtocolError("history reply frames are not whole messages")
    return info, [body[i:i + 3] for i in range(0, len(body), 3)]
