"""``zmq-emitter tail``: watch runs from a terminal, or feed them to a shell pipeline.

    zmq-emitter tail                                  # every run, one readable line per message
    zmq-emitter tail --ident RUN --until-done         # one run; exit status tells how it ended
    zmq-emitter tail --format json | jq .event        # one JSON object per line
    zmq-emitter tail --format stdout                  # the playbook's own output, live
    zmq-emitter tail --replay --ident RUN             # the run from the broker's history, then live

Built on ``zmq_emitter.consumers.subscriber``; this module only filters and formats.  The
pretty format shows what publishers sent as text, never as terminal input: control characters
(newlines, escape sequences) are written as escapes, and columns are counted in terminal cells,
so CJK text and emoji keep them aligned.
"""
from __future__ import annotations

import dataclasses
import datetime
import re
import sys
import time
import unicodedata
from typing import Callable, Iterable, TextIO

import typer
import orjson

from .. import protocol
from ..protocol import Message
from .core import host_of, matches
from .subscriber import Gap, Subscriber, subscriptions

FORMATS = ("pretty", "json", "stdout")

# --until-done: how each final status of a run maps to tail's exit status (2 is the
# command line's own "usage error").
FINAL_STATUS_EXIT = {"successful": 0, "failed": 1, "timeout": 3, "canceled": 4, "error": 5}
# --timeout ran out before --until-done's final status or --count's messages (as GNU timeout(1)).
TIMEOUT_EXIT = 124

_EVENT_COLOURS = {
    "runner_on_failed": "red", "runner_item_on_failed": "red", "runner_on_unreachable": "magenta",
    "runner_on_async_failed": "red", "runner_on_ok": "green", "runner_item_on_ok": "green",
    "runner_on_skipped": "cyan", "runner_item_on_skipped": "cyan", "playbook_on_stats": "blue",
}
_STATUS_COLOURS = {"successful": "green", "failed": "red", "error": "red", "timeout": "red", "canceled": "yellow"}
_STANDS_OUT = {"runner_on_failed", "runner_item_on_failed", "runner_on_unreachable", "runner_on_async_failed"}


@dataclasses.dataclass
class Filters:
    kinds: tuple[str, ...] = protocol.KINDS
    ident: str | None = None
    events: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()

    def subscriptions(self) -> list[bytes]:
        return subscriptions(self.kinds, self.ident, self.events)

    def match(self, msg: Message) -> bool:
        return matches(msg, self.kinds, () if self.ident is None else (self.ident,), self.events, self.hosts)


def _when(msg: Message) -> str:
    created = msg.payload.get("created") if isinstance(msg.payload, dict) else None
    try:
        moment = datetime.datetime.fromisoformat(str(created)).astimezone()
    except (ValueError, OverflowError, OSError):  # not a time, or one the local calendar cannot show
        moment = datetime.datetime.now()
    return moment.strftime("%H:%M:%S.%f")[:-3]


# Characters that would act on the terminal rather than show: C0/C1 controls (newline, escape, ...),
# line and paragraph separators, bidirectional overrides and isolates.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: str) -> str:
    """``text`` with every character that would act on a terminal written as an escape.

    >>> printable("ok\\x1b[2J\\r\\nnext")
    'ok\\\\x1b[2J\\\\r\\\\nnext'
    """
    if not _UNPRINTABLE.search(text):
        return text
    return _UNPRINTABLE.sub(lambda m: _NAMED.get(m.group(), f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                                                  else f"\\u{ord(m.group()):04x}"), text)


def cells(text: str) -> int:
    """The terminal cells ``text`` takes: wide (CJK, most emoji) 2, combining and format characters 0."""
    if text.isascii():
        return len(text)
    return sum(0 if unicodedata.combining(c) or unicodedata.category(c) in ("Mn", "Me", "Cf")
               else 2 if unicodedata.east_asian_width(c) in ("W", "F") else 1 for c in text)


def fit(text: str, width: int, cut: bool = False) -> str:
    """``text`` padded with spaces to ``width`` cells (and, with ``cut``, cut to at most that)."""
    if cut and cells(text) > width:
        kept, used = [], 0
        for c in text:
            used += cells(c)
            if used > width:
                break
            kept.append(c)
        text = "".join(kept)
    return text + " " * max(0, width - cells(text))


RUNS_HEADER = f"{'IDENT':<38}  {'STATUS':<11}  {'MESSAGES':>8}  {'RETAINED':>8}  LAST SEEN"


def format_run(run: object) -> str:
    """One line of ``zmq-emitter runs`` for one run of a history's ``runs`` answer.

    The answer comes off the network: every field is shown as text a terminal cannot act on,
    and a field of the wrong type shows as ``?`` instead of raising.
    """
    run = run if isinstance(run, dict) else {}
    seen = run.get("last_seen")
    try:
        seen = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seen))
    except (TypeError, ValueError, OverflowError, OSError):
        seen = "?"
    counts = [value if isinstance(value, int) and not isinstance(value, bool) else "?"
              for value in (run.get("messages"), run.get("retained"))]
    ident = fit(printable(str(run.get("ident", "?"))), 38)
    status = fit(printable(str(run.get("status") or "-")), 11)
    return f"{ident}  {status}  {counts[0]:>8}  {counts[1]:>8}  {seen}"


def format_pretty(msg: Message, colour: bool) -> str:
    """``time  ident  host  event-or-status  task`` (one line; failures stand out)."""
    payload = msg.payload if isinstance(msg.payload, dict) else {}
    if msg.kind == "status":
        name = f"status: {msg.name}"
        style = {"fg": _STATUS_COLOURS.get(msg.name), "bold": True}
        host, task = "", ""
    else:
        event_data = payload.get("event_data") if isinstance(payload.get("event_data"), dict) else {}
        name = msg.name
        host = host_of(payload) or ""
        task = str(event_data.get("task") or event_data.get("play") or event_data.get("playbook") or "")
        style = {"fg": _EVENT_COLOURS.get(msg.name), "bold": msg.name in _STANDS_OUT}
        if msg.name in _STANDS_OUT:
            result = event_data.get("res") if isinstance(event_data.get("res"), dict) else {}
            if result.get("msg"):
                task = f"{task}: {result['msg']}"
    text = "  ".join((_when(msg), fit(printable(msg.ident), 8, cut=True), fit(printable(host), 16, cut=True),
                      fit(printable(name), 28), printable(task))).rstrip()
    return typer.style(text, **style) if colour else text


def format_json(msg: Message) -> str:
    """The payload as published, as one line of JSON (msgpack payloads converted)."""
    if msg.codec == "json" and b"\n" not in msg.raw_payload and b"\r" not in msg.raw_payload:
        return msg.raw_payload.decode("utf-8", "backslashreplace")
    return protocol.encode_json(msg.payload).decode()


def format_stdout(msg: Message) -> str | None:
    """What Ansible printed for the event, or None if it printed nothing."""
    if msg.kind != "event" or not isinstance(msg.payload, dict):
        return None
    stdout = msg.payload.get("stdout")
    if not stdout:
        return None
    return stdout if isinstance(stdout, str) else str(stdout)  # a hostile publisher may send anything


def run(endpoints: Iterable[str], filters: Filters, *, fmt: str = "pretty", count: int | None = None,
        until_done: bool = False, colour: bool | None = None, out: TextIO = sys.stdout,
        err: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
        curve_server_key: str | None = None, curve_secret_key_file: str | None = None,
        history: str | Iterable[str] | None = None, replay: bool = False, timeout: float | None = None) -> int:
    """Print messages until ``count`` or, with ``until_done``, the run's final status; return the exit status.

    ``timeout``: give up after that many seconds (``TIMEOUT_EXIT`` if ``count`` or ``until_done``
    was waiting for something, else 0).  Without ``filters.ident``, ``until_done`` follows the
    first run it sees a message of.  ``history``: the endpoints of one or more histories (a
    redundant pair of brokers: a request one does not answer goes to the next).
    """
    if replay and until_done and filters.ident is None:
        raise ValueError("--replay --until-done needs --ident: which run's final status to wait for")
    colour = out.isatty() if colour is None else colour
    deadline = None if timeout is None else time.monotonic() + timeout
    shown = 0
    watched = filters.ident

    def on_gap(gap: Gap) -> None:
        err(f"zmq-emitter tail: missed {gap.count} message(s) of publisher {gap.publisher}: seq {gap.first}..{gap.last}")

    def on_invalid(frames: list[bytes], exc: protocol.ProtocolError) -> None:
        if sub.counts.invalid == 1:
            err(f"zmq-emitter tail: skipping a message that does not decode ({exc}); further ones are counted")

    topics = filters.subscriptions()
    if until_done and "status" not in filters.kinds:  # the final status is needed even if not shown
        topics += subscriptions(["status"], filters.ident)
    sub = Subscriber(list(endpoints), topics, on_gap=on_gap, on_invalid=on_invalid,
                     on_error=lambda text: err(f"zmq-emitter tail: {text}"),
                     curve_server_key=curve_server_key, curve_secret_key_file=curve_secret_key_file,
                     history=history)
    try:
        if replay:  # no wait for the subscription: the library joins history and live messages whenever it is in place
            queued = sub.replay(filters.ident)
            if queued is None:
                err("zmq-emitter tail: nothing replayed; going on live only")
            elif queued == 0:
                err(f"zmq-emitter tail: {sub.histories.name} has no message of run {printable(filters.ident)!r} "
                    "(yet); waiting for it live" if filters.ident is not None
                    else f"zmq-emitter tail: {sub.histories.name} holds no run yet; going on live")
        while True:
            msg = sub.recv(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if msg is None:
                if deadline is not None and time.monotonic() >= deadline:
                    return TIMEOUT_EXIT if until_done or count is not None else 0
                continue
            if until_done and watched is None and msg.kind in ("status", "event") and (
                    filters.match(msg) or msg.kind == "status"):  # a run's message, not a publisher's report
                watched = msg.ident
            if filters.match(msg):
                if fmt == "json":
                    line = format_json(msg)
                elif fmt == "stdout":
                    line = format_stdout(msg)
                else:
                    line = format_pretty(msg, colour)
                if line is not None:
                    out.write(line + "\n")
                    out.flush()
                shown += 1
            if until_done and msg.kind == "status" and msg.ident == watched and msg.name in FINAL_STATUS_EXIT:
                return FINAL_STATUS_EXIT[msg.name]
            if count is not None and shown >= count:
                return 0
    finally:
        if sub.counts.invalid > 1:
            err(f"zmq-emitter tail: skipped {sub.counts.invalid} messages that did not decode")
        sub.close()
