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
from typing import Any, Callable

import msgpack
import orjson

VERSION = 1
KINDS = ("status", "event")
CODECS = ("json", "msgpack")
SEPARATOR = "/"

# ----------------------------------------------------------------------------------------
# Topic and header


def topic(kind: str, ident: str, name: str) -> bytes:
    """The topic frame: ``<kind>/<ident>/<name>``, UTF-8."""
    return f"{kind}{SEPARATOR}{ident}{SEPARATOR}{name}".encode()


def run_prefix(kind: str, ident: str) -> bytes:
    """The subscription prefix that matches one run's messages of one kind, and no other run's."""
    return f"{kind}{SEPARATOR}{ident}{SEPARATOR}".encode()


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


def to_plain(value: Any, _active: frozenset = frozenset()) -> Any:
    """A copy of ``value`` made only of str, int, float, bool, None, list and str-keyed dict.

    The slow path, taken only when the fast encoder refused a value.
    """
    if value is None or isinstance(value, (str, bool, float)):
        return value
    if isinstance(value, int):
        return value if value in _INT_RANGE else str(value)
    if isinstance(value, (dict, list, tuple, set, frozenset)):
        if id(value) in _active:
            return "<recursion>"
        active = _active | {id(value)}
        if isinstance(value, dict):
            return {k if isinstance(k, str) else str(k): to_plain(v, active) for k, v in value.items()}
        return [to_plain(v, active) for v in value]
    return to_plain(fallback(value), _active)


def encode_json(data: Any) -> bytes:
    try:
        return orjson.dumps(data, default=fallback)
    except TypeError:  # orjson's JSONEncodeError: non-str keys, huge ints, recursion, ...
        return orjson.dumps(to_plain(data))


def encode_msgpack(data: Any) -> bytes:
    try:
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
    received (the exact published bytes, e.g. for printing JSON unchanged).
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


def decode(frames: list[bytes]) -> Message:
    """Decode the frames of one message; raise ProtocolError if they are not a valid message."""
    if len(frames) != 3:
        raise ProtocolError(f"expected 3 frames (topic, header, payload), got {len(frames)}")
    topic_frame, header_frame, payload_frame = (bytes(f) for f in frames)
    try:
        kind, ident, name = topic_frame.decode().split(SEPARATOR, 2)
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
    try:
        payload = DECODERS[codec](payload_frame)
    except Exception as exc:  # each codec raises its own family of errors on bad bytes
        raise ProtocolError(f"payload is not valid {codec}: {exc}") from None
    return Message(kind, ident, name, publisher, seq, codec, payload, payload_frame, topic_frame)
