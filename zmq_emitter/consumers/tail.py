"""``zmq-emitter tail``: watch runs from a terminal, or feed them to a shell pipeline.

    zmq-emitter tail                                  # every run, one readable line per message
    zmq-emitter tail --ident RUN --until-done         # one run; exit status tells how it ended
    zmq-emitter tail --format json | jq .event        # one JSON object per line
    zmq-emitter tail --format stdout                  # the playbook's own output, live

Built on ``zmq_emitter.consumers.subscriber``; this module only filters and formats.
"""
from __future__ import annotations

import dataclasses
import datetime
import sys
import time
from typing import Callable, Iterable, TextIO

import typer
import orjson

from .. import protocol
from ..protocol import Message
from .subscriber import Gap, Subscriber, subscriptions

FORMATS = ("pretty", "json", "stdout")

# --until-done: how each final status of a run maps to tail's exit status (2 is the
# command line's own "usage error").
FINAL_STATUS_EXIT = {"successful": 0, "failed": 1, "timeout": 3, "canceled": 4, "error": 5}

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
        if msg.kind not in self.kinds or (self.ident is not None and msg.ident != self.ident):
            return False
        if msg.kind == "event":
            if self.events and msg.name not in self.events:
                return False
            if self.hosts and host_of(msg.payload) not in self.hosts:
                return False
        return True


def host_of(payload: object) -> str | None:
    if isinstance(payload, dict):
        event_data = payload.get("event_data")
        if isinstance(event_data, dict):
            host = event_data.get("host") or event_data.get("remote_addr")
            return None if host is None else str(host)
    return None


def _when(msg: Message) -> str:
    created = msg.payload.get("created") if isinstance(msg.payload, dict) else None
    try:
        moment = datetime.datetime.fromisoformat(str(created)).astimezone()
    except ValueError:
        moment = datetime.datetime.now()
    return moment.strftime("%H:%M:%S.%f")[:-3]


def format_pretty(msg: Message, colour: bool) -> str:
    """``time  ident  host  event-or-status  task`` (one line; failures stand out)."""
    payload = msg.payload if isinstance(msg.payload, dict) else {}
    ident = msg.ident[:8]
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
    text = f"{_when(msg)}  {ident:<8}  {host:<16.16}  {name:<28}  {task}".rstrip()
    return typer.style(text, **style) if colour else text


def format_json(msg: Message) -> str:
    """The payload as published, as one line of JSON (msgpack payloads converted)."""
    if msg.codec == "json" and b"\n" not in msg.raw_payload:
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
        history: str | None = None, replay: bool = False) -> int:
    """Print messages until ``count`` or, with ``until_done``, the run's final status; return the exit status."""
    colour = out.isatty() if colour is None else colour
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
                     curve_server_key=curve_server_key, curve_secret_key_file=curve_secret_key_file,
                     history=history)
    try:
        if replay:
            time.sleep(0.2)  # the live subscription travels to the broker before the snapshot is asked for
            if sub.replay(filters.ident) == 0 and sub.request("runs") is None:
                err(f"zmq-emitter tail: the history service at {history} did not answer; going on live only")
        for msg in sub:
            if until_done and watched is None and (filters.match(msg) or msg.kind == "status"):
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
    return 0
