"""The Event-Driven Ansible source: the bus's runs as events for ``ansible-rulebook`` rules.

    # a rulebook (docs/eda.md has complete ones)
    sources:
      - zmq_emitter.eda.runner_events:
          endpoints: tcp://broker.example.com:5558
          history: tcp://broker.example.com:5559
    rules:
      - name: a task failed
        condition: event.event == "runner_on_failed"
        action:
          run_playbook:
            name: remediate.yml          # limited to event.meta.hosts, the failed host

The collection's source file (``collection/extensions/eda/plugins/event_source/runner_events.py``)
only re-exports ``main``: ansible-rulebook loads it with ``runpy.run_path``, so the logic lives here,
importable and tested.  Built on ``AsyncSubscriber``: repeats dropped, gaps fetched from the
broker's history (or, gone from it, put on the queue as an event of their own), replay of runs
that began before the rulebook, CURVE, several endpoints.  Nothing on the wire ends the source
(a message that does not decode is counted and skipped); an argument it cannot use ends it at once
with a ``ValueError`` naming the argument, the value and what is accepted (ansible-rulebook then
exits non-zero).

Back-pressure: the rulebook's queue holds one event and ``main`` awaits ``queue.put``, so a slow
rule holds the source back, never makes it drop what it has read.  Meanwhile messages wait in
libzmq (``rcvhwm``, 100,000 here, then the broker's own queue for this subscriber); a rulebook
behind for longer than that makes the broker drop messages for it (the ZeroMQ guide's Suicidal
Snail is the broker's choice: it never slows the runs), which the source sees as a gap in a
publisher's ``seq`` and fetches from the history, or reports as a gap event.
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import uuid
from typing import Any

from ... import protocol, security
from ..._text import check_endpoint, split_commas
from ..core import Gap, host_of, matches
from ..subscriber import DEFAULT_ENDPOINT, AsyncSubscriber, subscriptions

__all__ = ["Options", "main", "to_event", "gap_event"]

SOURCE = "zmq_emitter.eda.runner_events"  # the name rulebooks give it; in every error message
KINDS = ("status", "event")
# How often the loop wakes without a message: a gap reported by a history poll is queued then.
WAKE_SECONDS = 1.0
EMPTY_KEY = "(empty)"  # what an empty key in a payload becomes (_for_rules)
# meta.uuid: the same message has the same uuid in every rulebook (a publisher id is random per process).
_UUIDS = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/ansible/ansible-runner#zmq-emitter")

log = logging.getLogger("zmq_emitter.eda")


def _problem(argument: str, value: Any, accepted: str) -> ValueError:
    return ValueError(f"{SOURCE}: argument {argument!r}: {value!r} cannot be used; {accepted}")


def _texts(argument: str, value: Any, default: tuple[str, ...] = ()) -> tuple[str, ...]:
    if value is None:
        return default
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(item, str) for item in items):
        raise _problem(argument, value, "expected a string, a comma-separated string or a list of strings")
    return split_commas(items)


def _flag(argument: str, value: Any, default: bool) -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "yes", "false", "no"):
        return value.strip().lower() in ("true", "yes")
    raise _problem(argument, value, "expected true or false")


def _endpoint(argument: str, value: str) -> str:
    """``value`` if it is a tcp:// or ipc:// endpoint to connect to (the runner's settings check it alike)."""
    problem = check_endpoint(value, bind=False)
    if problem:
        raise _problem(argument, value, f"{problem}; expected tcp://HOST:PORT or ipc://PATH")
    return value


@dataclasses.dataclass(frozen=True)
class Options:
    """The source's arguments, read and checked once (``Options.parse(args)``); docs/eda.md lists them.

    >>> Options.parse({"endpoints": "ipc:///tmp/backend", "events": ["runner_on_failed"]}).events
    ('runner_on_failed',)
    """

    endpoints: tuple[str, ...] = (DEFAULT_ENDPOINT,)
    kinds: tuple[str, ...] = KINDS
    runs: tuple[str, ...] = ()
    events: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    history: str | None = None
    history_timeout: float = 5.0
    replay: bool = False
    gap_events: bool = True
    curve_server_key: str | None = None
    curve_secret_key_file: str | None = None

    @classmethod
    def parse(cls, args: dict[str, Any]) -> "Options":
        if not isinstance(args, dict):
            raise ValueError(f"{SOURCE}: its arguments must be a mapping, got {args!r}")
        accepted = [field.name for field in dataclasses.fields(cls)]
        unknown = sorted(str(key) for key in args if key not in accepted and not str(key).startswith("eda_"))
        if unknown:  # (eda_*: what ansible-rulebook itself adds, such as eda_feedback_queue)
            raise ValueError(f"{SOURCE}: unknown argument(s) {', '.join(map(repr, unknown))}; "
                             f"accepted: {', '.join(accepted)}")
        endpoints = tuple(_endpoint("endpoints", e) for e in _texts("endpoints", args.get("endpoints"),
                                                                   cls.endpoints))
        if not endpoints:
            raise _problem("endpoints", args.get("endpoints"), "name at least one broker backend or runner endpoint")
        kinds = _texts("kinds", args.get("kinds"), KINDS)
        if not kinds or not set(kinds) <= set(KINDS):
            raise _problem("kinds", args.get("kinds"), f"expected some of {', '.join(KINDS)}")
        history = args.get("history")
        if history is not None and not isinstance(history, str):
            raise _problem("history", history, "expected the broker's history endpoint, e.g. tcp://BROKER:5559")
        history = _endpoint("history", history) if history else None
        timeout = cls.history_timeout if args.get("history_timeout") is None else args["history_timeout"]
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 3600:
            raise _problem("history_timeout", timeout, "expected seconds, more than 0 and at most 3600")
        replay = _flag("replay", args.get("replay"), False)
        if replay and history is None:
            raise _problem("replay", args.get("replay"), "replay needs 'history': the broker's history endpoint")
        curve = {}
        for name in ("curve_server_key", "curve_secret_key_file"):
            value = args.get(name)
            if value is not None and not isinstance(value, str):
                raise _problem(name, value, "expected a key file's path (or, for the server key, 40 z85 characters)")
            curve[name] = value or None
        if curve["curve_secret_key_file"] and not curve["curve_server_key"]:
            raise _problem("curve_secret_key_file", curve["curve_secret_key_file"],
                           "a key pair is used only with 'curve_server_key', the broker's public key")
        # A key that cannot be loaded is a mistake of the rulebook's: say so now, naming the argument.
        for name, load, accepted in (
                ("curve_server_key", security.load_public_key, "expected the broker's .key file or 40 z85 characters"),
                ("curve_secret_key_file", security.load_key_pair, "expected a .key_secret file (zmq-emitter keygen)")):
            try:
                if curve[name]:
                    load(curve[name])
            except security.SecurityError as exc:
                raise _problem(name, curve[name], f"{exc}; {accepted}") from None
        return cls(endpoints=endpoints, kinds=kinds, runs=_texts("runs", args.get("runs")),
                   events=_texts("events", args.get("events")), hosts=_texts("hosts", args.get("hosts")),
                   history=history, history_timeout=float(timeout), replay=replay,
                   gap_events=_flag("gap_events", args.get("gap_events"), True), **curve)

    def subscriptions(self) -> list[bytes]:
        """What to subscribe to, so that publishers and the broker filter what ZeroMQ can.

        Without ``runs``, every status and event: a publisher's whole ``seq`` is seen, so gaps are
        noticed (topics start with the run's ident, so event names cannot be filtered there).
        With ``runs``, only those runs' topics (and event names): gaps within them go unnoticed.
        """
        if not self.runs:
            return subscriptions(KINDS if "event" in self.kinds else ("status",))
        return [prefix for ident in self.runs for prefix in subscriptions(self.kinds, ident, self.events)]

    def match(self, msg: protocol.Message) -> bool:
        """Whether ``msg`` goes on the queue (``hosts`` and ``events`` apply to events only)."""
        return matches(msg, self.kinds, self.runs, self.events, self.hosts)


def _for_rules(value: Any, depth: int = 0) -> Any:
    """``value`` with what stalls ansible-rulebook for good (no error, no further rule fires) taken out:
    an empty key anywhere (its rules engine takes the event, then takes no other) becomes ``EMPTY_KEY``,
    and containers nested deeper than ``protocol.MAX_DEPTH`` become ``"<too deep>"`` (900 levels
    stall it before the rules see the event).  Found by test_eda_rulebook.py; docs/eda.md.

    >>> _for_rules({"res": {"": 1, "env": [{"": 2}]}})
    {'res': {'(empty)': 1, 'env': [{'(empty)': 2}]}}
    """
    if isinstance(value, (dict, list)) and depth >= protocol.MAX_DEPTH:
        return "<too deep>"
    if isinstance(value, dict):
        return {key or EMPTY_KEY: _for_rules(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list):
        return [_for_rules(item, depth + 1) for item in value]
    return value


def to_event(msg: protocol.Message) -> dict:
    """The event a rule sees: the ansible-runner payload as published, plus ``meta``.

    >>> frames = [protocol.topic("event", "run-1", "runner_on_failed"),
    ...           protocol.header_prefix("json", "9f86d081884c7d65") + b"7}",
    ...           b'{"event": "runner_on_failed", "event_data": {"host": "web2"}}']
    >>> event = to_event(protocol.decode(frames))
    >>> event["event"], event["meta"]["hosts"], event["meta"]["seq"], event["meta"]["replayed"]
    ('runner_on_failed', 'web2', 7, False)
    """
    # JSON decodes to plain data already; msgpack may carry bytes or non-string keys, which rules cannot use.
    payload = _for_rules(msg.payload if msg.codec == "json" else protocol.to_plain(msg.payload))
    event = dict(payload) if isinstance(payload, dict) else {"payload": payload}
    meta = {"kind": msg.kind, "ident": msg.ident, "name": msg.name, "topic": msg.topic.decode("utf-8", "replace"),
            "publisher": msg.publisher, "seq": msg.seq, "replayed": msg.from_history,
            "uuid": str(uuid.uuid5(_UUIDS, f"{msg.publisher}:{msg.seq}"))}
    host = host_of(payload) if msg.kind == "event" else None
    if host:
        meta["hosts"] = host  # ansible-rulebook limits run_playbook and job templates to meta.hosts
    event["meta"] = meta
    return event


def gap_event(gap: Gap) -> dict:
    """The event for messages gone for good (neither live nor in the history): a rule can match it.

    >>> gap_event(Gap("9f86d081884c7d65", 3, 5))["gap"]["count"]
    3
    """
    return {"gap": {"publisher": gap.publisher, "first": gap.first, "last": gap.last, "count": gap.count},
            "meta": {"kind": "gap", "publisher": gap.publisher,
                     "uuid": str(uuid.uuid5(_UUIDS, f"{gap.publisher}:{gap.first}-{gap.last}"))}}


async def main(queue: asyncio.Queue, args: dict[str, Any]) -> None:
    """ansible-rulebook's entry point: put the bus's messages on ``queue``, as events, until cancelled.

        queue = asyncio.Queue(1)
        await main(queue, {"endpoints": "tcp://127.0.0.1:5558", "events": "runner_on_failed"})
    """
    options = Options.parse(args)
    lost: collections.deque[Gap] = collections.deque()

    def on_gap(gap: Gap) -> None:
        log.warning("%s: missed %d message(s) of publisher %s: seq %d..%d", SOURCE, gap.count, gap.publisher,
                    gap.first, gap.last)
        lost.append(gap)

    sub = AsyncSubscriber(list(options.endpoints), options.subscriptions(), on_gap=on_gap,
                          on_error=lambda text: log.warning("%s: %s", SOURCE, text),
                          curve_server_key=options.curve_server_key,
                          curve_secret_key_file=options.curve_secret_key_file,
                          history=options.history, history_timeout=options.history_timeout)
    log.info("%s: subscribed to %s%s", SOURCE, ", ".join(options.endpoints),
             f" (history {options.history})" if options.history else "")
    try:
        if options.replay:
            # One run: its history; several or none: every run the history holds (match() keeps the wanted ones).
            queued = await sub.replay(options.runs[0] if len(options.runs) == 1 else None)
            if queued is None:
                log.warning("%s: nothing replayed (the history did not answer); going on live", SOURCE)
        while True:
            msg = await sub.recv(timeout=WAKE_SECONDS)
            while lost:  # before the message that revealed them: in the order things happened
                gap = lost.popleft()
                if options.gap_events:
                    await queue.put(gap_event(gap))
            if msg is not None and options.match(msg):
                await queue.put(to_event(msg))
    finally:
        if sub.counts.invalid:
            log.warning("%s: skipped %d message(s) that did not decode", SOURCE, sub.counts.invalid)
        sub.close()
