"""The web view's run model (sans-I/O): what the page shows of each run, built from the bus's messages.

    runs = Runs(max_runs=200, max_events=50_000)
    runs.add(msg)                     # a decoded protocol.Message (status or event), in the order received
    runs.summaries()                  # the runs list: status, start, duration, hosts by outcome
    run = runs.get("RUN")
    run.after({"9f86d081884c7d65": 12})   # the event records after a page's cursor (per publisher seq)

No sockets and no clock of its own (times are passed in): the server (``server.py``) feeds it and
streams it; the tests can drive it without processes.  Everything in it comes off the network: each
field is checked for its type and kept as data, never interpreted (the page inserts it as text).

Bounded: at most ``max_runs`` runs (the least recently active finished ones go first) and, per run,
at most ``max_events`` event records and ``max_bytes`` of their JSON (the oldest go first, counted in
``Run.dropped`` and shown on the page).

A page's cursor is the position of each of the run's publishers (``pub`` -> last ``seq`` it has):
publisher ids and seqs are the protocol's own, so they mean the same after a restart of the broker
or of this server, and ``after`` hands out exactly what follows them, whatever came between.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import itertools
import re
from typing import Any, Iterable, Iterator

import orjson

from ... import protocol
from ..core import Gap, host_of

OUTCOMES = ("ok", "changed", "failed", "unreachable", "skipped")
FINAL_STATUSES = ("successful", "failed", "timeout", "canceled", "error")
# The events that count in Ansible's per-host stats (a loop's items do not: its task's result does).
_COUNTED = {"runner_on_ok": "ok", "runner_on_failed": "failed", "runner_on_unreachable": "unreachable",
            "runner_on_skipped": "skipped"}
# playbook_on_stats' keys -> ours (its "ok" includes "changed", as ours does).
_STATS = {"ok": "ok", "changed": "changed", "failures": "failed", "dark": "unreachable", "skipped": "skipped"}
_HIGHLIGHTED = {"runner_on_failed", "runner_item_on_failed", "runner_on_unreachable", "runner_on_async_failed"}
_MAX_FAILURES = 200  # failures listed per run (the host table counts them all)
_MAX_HOSTS = 10_000  # hosts counted per run (a publisher could name any number)
# Publishers per run: a run is one ansible-runner process, one publisher (a few with a resend after a restart). Each
# one is a part of every cursor this run's stream sends and a page sends back; messages of any more are left out
# (counted in Run.left_out, shown on the page), so that forged publisher ids cannot grow them without bound.
MAX_PUBLISHERS = 64
_MAX_TEXT = 4000  # a message or task name is cut to this many characters for the page
_CURSOR_PUB = re.compile(r"[0-9A-Za-z_-]{1,64}")
_CURSOR_PART = re.compile(r"([0-9A-Za-z_-]{1,64})\.(\d{1,19})")


def _text(value: Any, limit: int = _MAX_TEXT) -> str:
    """A value from an event, as text for the page (cut to ``limit`` characters)."""
    if value is None:
        return ""
    # Anything else as JSON, by the protocol's own encoder: a msgpack payload may hold what orjson alone refuses
    # (integer or bytes keys, integers beyond 64 bits).
    text = value if isinstance(value, str) else protocol.encode_json(value).decode()
    return text[:limit]


def host_outcome(counts: dict[str, int]) -> str:
    """A host's outcome for the summary bar, as AWX shows it: the worst thing that happened to it.

    >>> host_outcome({"ok": 4, "changed": 1, "failed": 0, "unreachable": 0, "skipped": 1})
    'changed'
    """
    for outcome in ("failed", "unreachable", "changed", "ok", "skipped"):
        if counts.get(outcome):
            return outcome
    return "ok"


def pub_key(publisher: str) -> str:
    """A publisher's name in cursors, event keys and URLs: its id when plain (letters, digits, - and _, as a runner's
    hex ids are), else a digest of it, so that no publisher id (any text, off the network) can break an SSE line
    or a URL.

    >>> pub_key("9f86d081884c7d65"), pub_key("a.b")
    ('9f86d081884c7d65', 'x4eb68d4d2828008e')
    """
    if _CURSOR_PUB.fullmatch(publisher):
        return publisher
    return "x" + hashlib.blake2b(publisher.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def format_cursor(positions: dict[str, int]) -> str:
    """A cursor as text (an SSE event id): ``pub.seq,pub.seq``.

    >>> format_cursor({"9f86d081884c7d65": 12})
    '9f86d081884c7d65.12'
    """
    return ",".join(f"{pub}.{seq}" for pub, seq in positions.items())


def parse_cursor(text: str | None) -> dict[str, int]:
    """The positions of a cursor a page sent back (Last-Event-ID); what does not parse is left out.

    >>> parse_cursor("9f86d081884c7d65.12,junk")
    {'9f86d081884c7d65': 12}
    """
    positions: dict[str, int] = {}
    for part in (text or "").split(",")[:1000]:
        match = _CURSOR_PART.fullmatch(part.strip())
        if match:
            positions[match[1]] = int(match[2])
    return positions


@dataclasses.dataclass(slots=True)
class Record:
    """One event as the page gets it: ``view`` (its line(s) of output and what to show with them, JSON)
    and ``raw`` (the whole payload as JSON, shown when the line is clicked)."""

    pub: str  # pub_key() of its publisher
    seq: int
    view: bytes
    raw: bytes


class Run:
    """One run: its status, times, hosts, failures and a bounded window of its events."""

    def __init__(self, ident: str, now: float, max_events: int, max_bytes: int):
        self.ident = ident
        self.status: str | None = None
        self.playbook = ""
        self.first_seen = self.last_seen = now
        self.started: str | None = None  # the first event's "created" (ISO 8601), if any
        self.ended: str | None = None  # the last event's "created" once the run has its final status
        self.ended_at: float | None = None  # when the final status arrived here (a run with no event)
        self.last_created: str | None = None
        self.hosts: dict[str, dict[str, int]] = {}
        self.stats_final = False  # host counts from playbook_on_stats: Ansible's own
        self.failures: list[dict] = []
        self.gaps: list[dict] = []
        self.events: collections.deque[Record] = collections.deque()
        self.by_key: dict[tuple[str, int], Record] = {}
        self.event_count = 0
        self.dropped = 0
        self.bytes = 0
        self.max_events, self.max_bytes = max_events, max_bytes
        self.positions: dict[str, int] = {}
        self.publishers: set[str] = set()  # every publisher of its messages, statuses too (MAX_PUBLISHERS at most)
        self.left_out = 0  # messages of publishers beyond MAX_PUBLISHERS
        self.version = 0  # grows with every change: streams send what changed since the version they sent

    @property
    def finished(self) -> bool:
        return self.status in FINAL_STATUSES

    def status_message(self, name: str, now: float) -> None:
        self.status = name
        if name in FINAL_STATUSES:
            self.ended, self.ended_at = self.last_created, now

    def event_message(self, msg: protocol.Message) -> None:
        payload = msg.payload if isinstance(msg.payload, dict) else {}
        data = payload.get("event_data") if isinstance(payload.get("event_data"), dict) else {}
        created = payload.get("created") if isinstance(payload.get("created"), str) else None
        if created:
            self.started = self.started or created
            self.last_created = created
        if not self.playbook and isinstance(data.get("playbook"), str):
            self.playbook = data["playbook"][:_MAX_TEXT]
        host = host_of(payload)
        host = host[:_MAX_TEXT] if isinstance(host, str) else ""
        self._count(msg.name, host, data)
        result = data.get("res") if isinstance(data.get("res"), dict) else {}
        highlighted = msg.name in _HIGHLIGHTED and not data.get("ignore_errors")
        message = _text(result.get("msg") or result.get("stderr") or result.get("reason")) if highlighted else ""
        counter = payload.get("counter")
        pub = pub_key(msg.publisher)
        view = {"k": f"{pub}.{msg.seq}", "c": counter if isinstance(counter, int) else None,
                "e": msg.name[:200], "h": host, "t": _text(data.get("task")), "s": _text(payload.get("stdout"), 1 << 20),
                "f": highlighted, "m": message}
        if highlighted and len(self.failures) < _MAX_FAILURES:
            self.failures.append({"k": view["k"], "host": host, "task": view["t"], "event": view["e"], "msg": message})
        raw = msg.raw_payload if msg.codec == "json" else protocol.encode_json(protocol.to_plain(msg.payload))
        self._keep(Record(pub, msg.seq, orjson.dumps(view), bytes(raw)))

    def _count(self, name: str, host: str, data: dict) -> None:
        if name == "playbook_on_stats":  # Ansible's own totals replace what was counted live
            hosts: dict[str, dict[str, int]] = {}
            for key, outcome in _STATS.items():
                per_host = data.get(key) if isinstance(data.get(key), dict) else {}
                for who, count in per_host.items():
                    if isinstance(count, int) and (len(hosts) < _MAX_HOSTS or str(who)[:_MAX_TEXT] in hosts):
                        hosts.setdefault(str(who)[:_MAX_TEXT], dict.fromkeys(OUTCOMES, 0))[outcome] = count
            processed = data.get("processed")
            for who in list(processed)[:_MAX_HOSTS] if isinstance(processed, dict) else ():
                if len(hosts) < _MAX_HOSTS:
                    hosts.setdefault(str(who)[:_MAX_TEXT], dict.fromkeys(OUTCOMES, 0))
            self.hosts, self.stats_final = hosts, True
            return
        if not host or self.stats_final or (len(self.hosts) >= _MAX_HOSTS and host not in self.hosts):
            return
        counts = self.hosts.setdefault(host, dict.fromkeys(OUTCOMES, 0))
        outcome = _COUNTED.get(name)
        if outcome == "failed" and data.get("ignore_errors"):
            outcome = "ok"  # as Ansible counts an ignored failure
        if outcome is not None:
            counts[outcome] += 1
            if outcome == "ok" and isinstance(data.get("res"), dict) and data["res"].get("changed") is True:
                counts["changed"] += 1

    def _keep(self, record: Record) -> None:
        self.events.append(record)
        self.by_key[(record.pub, record.seq)] = record
        self.positions[record.pub] = record.seq
        self.event_count += 1
        self.bytes += len(record.view) + len(record.raw)
        while self.events and (len(self.events) > self.max_events or self.bytes > self.max_bytes):
            old = self.events.popleft()
            del self.by_key[(old.pub, old.seq)]
            self.bytes -= len(old.view) + len(old.raw)
            self.dropped += 1

    def after(self, positions: dict[str, int], start: int = 0) -> Iterator[tuple[int, Record]]:
        """(index, record) of the records held from index ``start`` on that come after ``positions``."""
        offset = max(0, start - self.dropped)  # (islice: a deque's items by index would cost O(n) each)
        for index, record in enumerate(itertools.islice(self.events, offset, None), offset + self.dropped):
            if record.seq > positions.get(record.pub, 0):
                yield index, record

    @property
    def end(self) -> int:
        """The index after the last record held (records keep their index when older ones are dropped)."""
        return self.dropped + len(self.events)

    def summary(self) -> dict:
        """The run's line in the runs list (and the head of its page)."""
        by_outcome = dict.fromkeys(OUTCOMES, 0)
        for counts in self.hosts.values():
            by_outcome[host_outcome(counts)] += 1
        return {"ident": self.ident, "status": self.status or "unknown", "playbook": self.playbook,
                "started": self.started, "ended": self.ended, "first_seen": self.first_seen,
                "last_seen": self.last_seen, "ended_at": self.ended_at, "hosts": by_outcome,
                "events": self.event_count, "dropped": self.dropped, "gaps": sum(g["count"] for g in self.gaps),
                "left_out": self.left_out}

    def detail(self) -> dict:
        """The run page's head: the summary, the host table, failures and gaps."""
        summary = self.summary()
        summary["host_table"] = [{"host": host, **counts, "outcome": host_outcome(counts)}
                                 for host, counts in sorted(self.hosts.items())]
        summary["failures"] = self.failures
        summary["gap_list"] = self.gaps[-50:]
        summary["stats_final"] = self.stats_final
        return summary


class Runs:
    """Every run seen, bounded; fed with messages in the order the subscriber hands them out."""

    def __init__(self, max_runs: int = 200, max_events: int = 50_000, max_bytes: int = 256 << 20):
        self.max_runs, self.max_events, self.max_bytes = max_runs, max_events, max_bytes
        self.runs: dict[str, Run] = {}
        self.publishers: dict[str, set[str]] = {}  # publisher -> the runs it published (where its gaps belong)
        self.gaps: list[dict] = []  # gaps of publishers of no run held (the runs page shows them)
        self.version = 0

    def get(self, ident: str) -> Run | None:
        return self.runs.get(ident)

    def add(self, msg: protocol.Message, now: float) -> Run | None:
        """Take one message into the model; the run it changed (None for other kinds)."""
        if msg.kind not in ("status", "event"):
            return None
        run = self.runs.get(msg.ident)
        if run is None:
            run = self.runs[msg.ident] = Run(msg.ident, now, self.max_events, self.max_bytes)
            self._bound()
        run.last_seen = now
        if msg.publisher not in run.publishers and len(run.publishers) >= MAX_PUBLISHERS:
            run.left_out += 1
        else:
            self.publishers.setdefault(msg.publisher, set()).add(msg.ident)
            run.publishers.add(msg.publisher)
            if msg.kind == "status":
                run.status_message(msg.name, now)
            else:
                run.event_message(msg)
        run.version += 1
        self.version += 1
        return run

    def seen(self, listing: Iterable[dict]) -> None:
        """The history's ``runs`` answer: when the broker first and last saw each run (for replayed runs)."""
        for entry in listing:
            run = self.runs.get(entry.get("ident")) if isinstance(entry, dict) else None
            first, last = (entry.get("first_seen"), entry.get("last_seen")) if run else (None, None)
            if isinstance(first, (int, float)) and isinstance(last, (int, float)):
                run.first_seen = min(run.first_seen, first)
                if run.finished and run.ended_at is not None:
                    run.ended_at = min(run.ended_at, last)
                run.version += 1
        self.version += 1

    def gap(self, gap: Gap) -> None:
        """Messages gone for good: shown on the pages of the runs of that publisher (else on the runs page)."""
        entry = {"publisher": gap.publisher, "first": gap.first, "last": gap.last, "count": gap.count}
        runs = [self.runs[i] for i in self.publishers.get(gap.publisher, ()) if i in self.runs]
        for run in runs:
            run.gaps.append(entry)
            del run.gaps[:-1000]
            run.version += 1
        if not runs:
            self.gaps.append(entry)
            del self.gaps[:-1000]
        self.version += 1

    def summaries(self) -> list[dict]:
        return [run.summary() for run in self.runs.values()]

    def _bound(self) -> None:
        while len(self.runs) > self.max_runs:  # the least recently active finished run first, else the oldest
            victim = min(self.runs.values(), key=lambda r: (not r.finished, r.last_seen))
            del self.runs[victim.ident]
            for pub in victim.publishers:  # a runner process is a publisher: forget those of runs gone
                idents = self.publishers.get(pub)
                if idents is not None:
                    idents.discard(victim.ident)
                    if not idents:
                        del self.publishers[pub]
