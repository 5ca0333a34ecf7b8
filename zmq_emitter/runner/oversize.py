"""Events larger than a broker accepts: the same event with its large values cut, or a minimal notice.

A broker disconnects a publisher that sends a frame over its ``--max-message-size``; a
publisher that kept such a message to send again would never get past it.  So the
publisher never sends it: it sends, with the same topic and ``seq``, what ``shrink``
makes of it (docs/protocol.md, "Events too large to send").

    >>> from zmq_emitter import protocol
    >>> event = {"event": "runner_on_ok", "stdout": "x" * 200_000, "event_data": {"res": {"msg": "x" * 200_000}}}
    >>> small = shrink(protocol.encode_json(event), "json", 65536)
    >>> cut = protocol.decode_json(small)
    >>> len(small) <= 65536, cut["zmq_emitter_truncated"]["limit"], len(cut["stdout"])
    (True, 65536, 1025)
"""
from __future__ import annotations

from typing import Any

from .. import protocol

CUT = "…"                 # ends every text that was cut
REPLACED = "<cut: too large>"  # stands for a value that was too large even with its texts cut
NOTICE_KEYS = ("event", "uuid", "counter", "runner_ident", "created", "status", "publisher")
MIN_KEEP = 256            # characters kept of a cut text, at least


def shrink(payload: bytes, codec: str, limit: int) -> bytes | None:
    """A payload of at most ``limit`` bytes standing for ``payload``, or None if even the notice is larger.

    Three tries, each only if the one before is still too large: (1) every text (and bytes
    value) longer than ``limit // 64`` characters, at least 256, cut to that many, followed
    by ``…``; (2) then each value of ``event_data`` and of the event itself whose encoding
    is over ``limit // 16`` replaced by the text ``<cut: too large>``; (3) a minimal notice:
    only ``event``, ``uuid``, ``counter``, ``runner_ident``, ``created``, ``status``.  Each
    carries ``protocol.TRUNCATED``: ``{"bytes": len(payload), "limit": limit}``.
    """
    encode = protocol.ENCODERS[codec]
    marker = {"bytes": len(payload), "limit": limit}
    try:
        data = protocol.DECODERS[codec](payload)
    except Exception:  # a payload the plugin itself encoded decodes; anything else gets the notice
        data = None
    if not isinstance(data, dict):
        data = {}
    keep = max(MIN_KEEP, limit // 64)
    cut = _cut_texts(data, keep)
    cut[protocol.TRUNCATED] = marker
    encoded = encode(cut)
    if len(encoded) <= limit:
        return encoded
    for container in (cut.get("event_data"), cut):
        if isinstance(container, dict):
            for key, value in container.items():
                if key != protocol.TRUNCATED and len(encode(value)) > limit // 16:
                    container[key] = REPLACED
    encoded = encode(cut)
    if len(encoded) <= limit:
        return encoded
    notice = {key: _cut_texts(data[key], MIN_KEEP) for key in NOTICE_KEYS if key in data}
    notice[protocol.TRUNCATED] = marker
    encoded = encode(notice)
    return encoded if len(encoded) <= limit else None


def _cut_texts(value: Any, keep: int) -> Any:
    """A copy of ``value`` with every text and bytes value longer than ``keep`` cut to ``keep`` and ``…``."""
    if isinstance(value, str):
        return value[:keep] + CUT if len(value) > keep else value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value[:keep]) + CUT.encode() if len(value) > keep else value
    if isinstance(value, dict):
        return {key: _cut_texts(item, keep) for key, item in value.items()}
    if isinstance(value, list):
        return [_cut_texts(item, keep) for item in value]
    return value
