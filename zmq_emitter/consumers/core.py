"""The sans-I/O core of the subscriber library: everything a subscriber decides, no sockets.

``Subscriber`` and ``AsyncSubscriber`` (``subscriber.py``) are thin shells around it: they move
frames between sockets and this core and wait; every decision is made here, once.

- ``Tracker``: frames in, messages out.  Decoding, repeats (same ``pub`` and ``seq``), gaps in a
  publisher's ``seq`` (for the ``max_publishers`` most recently seen publishers), the queue of
  messages ready to hand out, the seam between a history snapshot and live messages.
- Plans: the dialogues with the broker's history service (``Tracker.replay``, ``catch_up``,
  ``recover``, ``due``) are generators that yield a ``Request`` and are sent its reply's frames
  (None: no answer in time).  A shell drives one with ``Dialogue``: it sends what
  ``Dialogue.outgoing`` gives, hands back what arrives, and says when the time is up.
- (``zmq_emitter/link.py`` watches the connections: refused handshakes, unreachable endpoints.)

A plan driven by hand, as the shells (and the tests) do::

    >>> tracker = Tracker(recovers=True)
    >>> plan = tracker.replay("run-1")
    >>> next(plan)                                  # what to ask the history first
    Request(op='runs', fields={})
    >>> try:
    ...     plan.send(protocol.reply({"runs": [], "publishers": []}))   # its reply: no runs
    ... except StopIteration as done:
    ...     print("queued", done.value)
    queued 0

The history dialogue follows the ZeroMQ guide's Clone pattern (subscribe, then ask for the
snapshot, drop what the snapshot already had), with one addition: the subscriber cannot know
when its subscription reached the broker, so the seam is closed by the history itself.  Until a
live message has come, the history is asked again now and then; when the first live message
comes, the history is asked once more before it is handed out: every message forwarded before
that one is in the history's answer, every message after it arrives live.
"""
from __future__ import annotations

import bisect
import collections
import dataclasses
import itertools
import logging
import time
from typing import Any, Callable, Generator, Iterable, Iterator

from .. import protocol
from ..protocol import Message, ProtocolError

log = logging.getLogger("zmq_emitter.subscriber")


@dataclasses.dataclass(frozen=True)
class Gap:
    """Messages ``first``..``last`` (inclusive) of ``publisher`` never arrived."""

    publisher: str
    first: int
    last: int

    @property
    def count(self) -> int:
        return self.last - self.first + 1


@dataclasses.dataclass
class Counts:
    received: int = 0     # valid messages handed to the caller
    invalid: int = 0      # messages that did not decode, skipped
    duplicates: int = 0   # messages seen before (same publisher and seq), skipped
    missed: int = 0       # messages in gaps, gone for good
    recovered: int = 0    # messages of gaps fetched from the broker's history
    forgotten: int = 0    # publishers forgotten beyond Tracker.max_publishers (see there)


@dataclasses.dataclass(frozen=True)
class Request:
    """One request to the broker's history service (``protocol.request``)."""

    op: str
    fields: dict = dataclasses.field(default_factory=dict)

    def frame(self) -> bytes:
        return protocol.request(self.op, **self.fields)


@dataclasses.dataclass(frozen=True)
class Pause:
    """Yielded by a plan instead of a request: wait ``seconds``, then go on (the plan is sent None)."""

    seconds: float


# A plan: yields Requests (or Pauses), is sent each reply's frames (None: no answer in time), returns its result.
Plan = Generator["Request | Pause", "list[bytes] | None", Any]

# Messages the history has not received yet but is asking their publisher for (``pending`` in its replies):
# asked for again after PENDING_POLL_FIRST seconds, then twice as long each time, for PENDING_WAIT seconds in
# all (more than the broker's own give-up time for a publisher that answers: see broker/acks.py); what is still
# pending then is reported lost.
PENDING_POLL_FIRST = 0.25
PENDING_POLL_MAX = 4.0
PENDING_WAIT = 15.0

# A request unanswered this long (seconds) is sent again, then after twice as long each time (see Dialogue).
RESEND_FIRST = 2.0

# After a replay, how soon the history is asked again while no live message has come, doubling up to the cap.
SEAM_POLL_FIRST = 0.5
SEAM_POLL_MAX = 8.0

# The publishers a Tracker remembers (each one's last seq): the most recently seen ones.  A real subscriber
# sees one publisher per ansible-runner process, and a publisher is forgotten only after this many others
# were seen since its last message; the bound is against ids that never end (anyone who may publish can make
# up ids).  About 2 MB of memory at most.  A replay of a history holding more publishers than this (made-up ids,
# or --history-runs far above 10,000) forgets the first ones it queued; while its seam is open the tracker also
# keeps what the replay handed out (``_replayed``), so the seam's later looks do not hand them out again.
MAX_PUBLISHERS = 10_000
# A publisher id is any string its publisher chooses (the plugin's are 16 hex digits): the ids remembered hold
# at most this many characters each on average, so that long made-up ids cannot stretch the bound.
ID_CHARS = 64
# The gaps a Tracker lists (``gaps``): the most recent ones.  ``counts.missed`` counts every lost message; the list
# is for showing them, and a publisher jumping its seq on every message would otherwise add one gap per message.
MAX_GAPS = 1_000


@dataclasses.dataclass
class _Seam:
    """Between a history snapshot and the first live message (see the module docstring)."""

    scope: str | None            # a run's ident; None: every run ("known": the publishers already seen)
    next_poll: float
    interval: float = SEAM_POLL_FIRST


FINAL_STATUSES = protocol.FINAL_STATUSES  # a run's last message
KNOWN = "\x00known"  # _Seam.scope after a reconnect: the publishers this tracker has seen, not runs


class Tracker:
    """Sans-I/O core: frames in, Message (or None for skipped input) out; the history dialogues as plans.

    Gap detection follows each publisher's ``seq``; it is only meaningful when the
    subscription covers all of a publisher's messages, so it is on only then
    (``track_gaps``).  The first message of a publisher starts its sequence: joining
    mid-stream is not a gap.

    It remembers the ``max_publishers`` most recently seen publishers (``MAX_PUBLISHERS``; their
    ids ``ID_CHARS`` characters each on average at most); beyond them it forgets the least
    recently seen one (a publisher whose closing report came first; never one with a gap being
    fetched), counts it in ``counts.forgotten`` and says so once (``on_error``).  A forgotten
    publisher's next message starts its sequence again, as if it were new: no gap is seen
    across that point, and a repeat of one of its earlier messages (a copy through the other
    broker of a redundant pair, a replay) is handed out again.

    With ``recovers`` (a history service to ask), ``receive`` returns a plan instead of a
    message when something must be fetched first (a gap, the seam after a replay); once the
    plan has run, the messages are in ``ready``, in order.

    >>> t = Tracker()
    >>> header = protocol.header_prefix("json", "p")
    >>> [t.receive([b"status/r/running", header + b"%d}" % seq, b"{}"]).seq for seq in (1, 2)]
    [1, 2]
    >>> t.receive([b"status/r/running", header + b"2}", b"{}"]) is None   # a repeat
    True
    """

    def __init__(self, topics: Iterable[bytes | str] = (b"",), *, recovers: bool = False,
                 on_gap: Callable[[Gap], None] | None = None,
                 on_invalid: Callable[[list[bytes], ProtocolError], None] | None = None,
                 on_error: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, history_name: str = "the history service",
                 max_publishers: int = MAX_PUBLISHERS):
        if isinstance(max_publishers, bool) or not isinstance(max_publishers, int) or max_publishers < 1:
            raise ValueError(f"max_publishers: a whole number of at least 1, not {max_publishers!r}")
        self.max_publishers = max_publishers
        self._id_chars = 0  # the characters of the publisher ids in last_seq (at most max_publishers * ID_CHARS)
        self.prefixes = tuple(t.encode() if isinstance(t, str) else t for t in topics)
        self.track_gaps = _covers_everything(self.prefixes)
        self.recovers = recovers
        self.ready: collections.deque[Message] = collections.deque()  # to hand out before reading the socket
        self.on_gap = on_gap or _warn_gap
        self.on_invalid = on_invalid or _warn_invalid_once(self)
        self.on_error = on_error or _warn
        self.clock = clock
        self.history_name = history_name  # in what on_error is told
        self.counts = Counts()
        self.gaps: list[Gap] = []
        self.last_seq: collections.OrderedDict[str, int] = collections.OrderedDict()  # least recently seen first
        self._revealed_by: Message | None = None  # the message after the gap being recovered
        self._filling: dict[str, int] = {}  # publisher -> first seq of a gap being fetched (counted in last_seq)
        # publisher -> the highest seq a replay handed out from the history, while its seam is open: a publisher the
        # bound made this tracker forget (a history holding more than max_publishers publishers) is not handed out
        # again by the seam's next look.  As large as the history's answer; emptied when the seam closes.
        self._replayed: dict[str, int] = {}
        self._seam: _Seam | None = None
        self._history_trouble: str | None = None  # reported once until the history answers again

    # -- live frames --------------------------------------------------------------------

    def receive(self, frames: list[bytes]) -> Message | Plan | None:
        """A live message: the Message to hand out, None (skipped), or a plan to run first
        (after which the messages are in ``ready``)."""
        if self._seam is not None:  # the first live message: the subscription is in place
            return self._close_seam(frames)
        result = self.accept(frames)
        if isinstance(result, Gap):
            return self.recover(result)
        return result

    def accept(self, frames: list[bytes], *, detect_gaps: bool = True) -> Message | Gap | None:
        """The decoded message; None for input that is skipped (undecodable, or seen before);
        a ``Gap`` to recover first (only with ``recovers``): ``recover`` it, or pass its
        messages to ``fill``."""
        try:
            msg = protocol.decode(frames)
        except ProtocolError as exc:
            self.counts.invalid += 1
            self.on_invalid(frames, exc)
            return None
        last_seq = self.last_seq
        last = last_seq.get(msg.publisher)
        if last is not None and msg.seq <= last:  # a publisher's seq only grows: this is a repeat
            self.counts.duplicates += 1
            return None
        if last is None or msg.kind == "publisher":
            self._note(msg.publisher, msg.seq, closed=msg.kind == "publisher")
        else:  # (the hot path: _note's work inline; a known publisher does not add to the publishers)
            last_seq[msg.publisher] = msg.seq
            last_seq.move_to_end(msg.publisher)
        self.counts.received += 1
        if detect_gaps and self.track_gaps and last is not None and msg.seq > last + 1:
            gap = Gap(msg.publisher, last + 1, msg.seq - 1)
            if self.recovers:
                self._revealed_by = msg
                self._filling[msg.publisher] = gap.first
                return gap
            self.lost(gap)
        return msg

    def fill(self, gap: Gap, fetched: list[list[bytes]] | None) -> int:
        """Queue the messages of ``gap`` that the history returned, in order, and report the rest as lost.

        Messages outside this subscription's topics are not queued (and not lost: they were not
        asked for).  The message that revealed the gap, if any, is queued after them.
        """
        found: dict[int, Message] = {}
        for frames in fetched or []:
            try:
                msg = protocol.decode(frames)
            except ProtocolError:
                continue
            if msg.publisher == gap.publisher and gap.first <= msg.seq <= gap.last:
                found[msg.seq] = msg
        first = gap.first
        for seq in sorted(found) + [gap.last + 1]:
            if seq > first:
                self.lost(Gap(gap.publisher, first, seq - 1))
            first = seq + 1
        wanted = [dataclasses.replace(found[seq], from_history=True) for seq in sorted(found)
                  if found[seq].topic.startswith(self.prefixes)]
        self._filling.pop(gap.publisher, None)  # from here on, ready accounts for what is not handed out
        self.counts.recovered += len(wanted)
        self.counts.received += len(wanted)
        self.ready.extend(wanted)
        if self._revealed_by is not None:
            self.ready.append(self._revealed_by)
            self._revealed_by = None
        return len(wanted)

    def positions(self) -> dict[str, int]:
        """Per publisher, the last seq handed out or reported lost, with nothing before it left out:
        ``last_seq`` less what is still queued in ``ready`` or being fetched from the history."""
        positions = dict(self.last_seq)
        for publisher, first in self._filling.items():
            positions[publisher] = min(positions.get(publisher, first - 1), first - 1)
        for msg in self.ready:
            positions[msg.publisher] = min(positions.get(msg.publisher, msg.seq - 1), msg.seq - 1)
        return positions

    def lost(self, gap: Gap) -> None:
        """Record and report messages that are gone for good (they count as passed: never reported twice)."""
        self.gaps.append(gap)
        if len(self.gaps) > MAX_GAPS:  # the oldest half goes: the list stays a list, the count stays exact
            del self.gaps[:MAX_GAPS // 2]
        self.counts.missed += gap.count
        if gap.publisher in self.last_seq:  # (its place among the publishers stays its last message's)
            self.last_seq[gap.publisher] = max(self.last_seq[gap.publisher], gap.last)
        else:
            self._note(gap.publisher, gap.last)
        self.on_gap(gap)

    def restore(self, positions: dict[str, int]) -> None:
        """Take ``positions`` (saved from ``positions()``, least recently seen first) as seen."""
        for publisher, seq in positions.items():
            self._note(publisher, seq)

    def _note(self, publisher: str, seq: int, closed: bool = False) -> None:
        """``seq`` is the last seen of ``publisher``, now the most recently seen publisher; or, ``closed``
        (its closing report: nothing more is to come), the first to forget.  Not forgotten at once:
        a repeat of its messages (through the other broker of a redundant pair) is still recognised."""
        last_seq = self.last_seq
        if publisher not in last_seq:
            self._id_chars += len(publisher)
        last_seq[publisher] = seq
        if closed:
            last_seq.move_to_end(publisher, False)
        else:
            last_seq.move_to_end(publisher)
        if self._too_many():
            self._forget(publisher)

    def _too_many(self) -> bool:
        return len(self.last_seq) > self.max_publishers or self._id_chars > self.max_publishers * ID_CHARS

    def _forget(self, but: str) -> None:
        """Forget the least recently seen publishers beyond ``max_publishers`` (or their ids' characters
        beyond ``ID_CHARS`` each), except ``but`` and those with a gap being fetched (they stay beyond the
        bound until it is filled)."""
        while self._too_many():
            for publisher in self.last_seq:
                if publisher != but and publisher not in self._filling:
                    break
            else:
                return
            del self.last_seq[publisher]
            self._id_chars -= len(publisher)
            self.counts.forgotten += 1
            if self.counts.forgotten == 1:
                self.on_error(f"more than {self.max_publishers} publishers seen (fewer if their ids are long): "
                              "forgetting the least recently seen ones (counted); a forgotten publisher's next "
                              "message starts its sequence again (no gap or repeat is seen across that point)")

    # -- plans: the dialogues with the history service ------------------------------------

    def recover(self, gap: Gap) -> Plan:
        """Fetch ``gap`` from the history and queue it (then the message that revealed it);
        what the history does not return is reported lost.  Returns the number queued."""
        fetched: list[list[bytes]] = []
        pending = yield from self._fetch([gap], fetched)
        yield from self._settle(pending, fetched)
        return self.fill(gap, fetched)  # what was not fetched is reported as lost

    def _fetch(self, gaps: list[Gap], fetched: list[list[bytes]]) -> Plan:
        """Fetch ``gaps`` into ``fetched``; returns the ranges the history says are pending, or None
        if it stopped answering (what was not fetched then is left out)."""
        pending: list[Gap] = []
        for gap in gaps:
            for first in range(gap.first, gap.last + 1, protocol.MAX_FETCH):
                last = min(gap.last, first + protocol.MAX_FETCH - 1)
                reply = yield Request("fetch", {"pub": gap.publisher, "first": first, "last": last})
                answer = self._answer(reply)
                if answer is None:
                    return None
                fetched.extend(answer[1])
                pending.extend(_within(_ranges_of(answer[0], "pending"), gap.publisher, first, last))
        return pending

    def _settle(self, pending: list[Gap] | None, fetched: list[list[bytes]]) -> Plan:
        """Wait for ``pending`` ranges (the publisher is sending them again) and fetch them into
        ``fetched`` as they come, for ``PENDING_WAIT`` seconds at most; the ranges still pending."""
        wait, waited = PENDING_POLL_FIRST, 0.0
        while pending and waited < PENDING_WAIT:
            yield Pause(wait)
            waited, wait = waited + wait, min(wait * 2, PENDING_POLL_MAX)
            still = yield from self._fetch(list(_merge_ranges(pending, {})), fetched)
            if still is None:
                break  # the history stopped answering: what is not fetched stays missing
            pending = still
        return pending or []

    def replay(self, ident: str | None) -> Plan:
        """Queue the history of run ``ident`` (None: of every run) before live messages.

        The runs' messages are merged per publisher in ``seq`` order (one process's runs
        interleave one publisher's sequence), each message once; what the history no longer
        holds is reported lost.  Returns the number queued (0: the history has nothing of
        it), or None if the history did not answer.  Live messages then join without a gap
        or repeat (the seam, see the module docstring).
        """
        self._replayed = {}
        queued = yield from self._sync(ident)
        if queued is not None and self.recovers and not self._ended(ident):
            self._open_seam(ident)
        else:
            self._replayed = {}
        return queued

    def catch_up(self) -> Plan:
        """Queue everything the history received from known publishers after the last message
        seen of each.  Returns the number queued, None if the history did not answer."""
        reply = yield Request("runs")
        answer = self._answer(reply)
        if answer is None:
            return None
        queued = 0
        for gap in self.behind(_publishers_of(answer[0])):
            queued += yield from self.recover(gap)
        return queued

    def reconnected(self) -> Plan:
        """After new connections: ``catch_up``, and the seam (the new subscription is not in place yet)."""
        queued = yield from self.catch_up()
        if queued is not None and (self._seam is None or self._seam.scope == KNOWN):
            self._open_seam(KNOWN)  # (a replay's seam still open is kept: it covers its runs from their start)
        return queued

    def behind(self, publishers: Iterable[dict]) -> list[Gap]:
        """The gaps between what this tracker saw and what a broker's history received
        (the ``publishers`` of its ``runs`` answer), for publishers this tracker knows.
        They count as seen from now on: ``fill`` each with what the history returns."""
        gaps = []
        for pub in publishers:
            last = self.last_seq.get(pub["publisher"])
            if last is not None and pub["last_seq"] > last:
                gaps.append(Gap(pub["publisher"], last + 1, pub["last_seq"]))
                self._note(pub["publisher"], pub["last_seq"])
                self._filling.setdefault(pub["publisher"], last + 1)
        return gaps

    def due(self) -> Plan | None:
        """A plan to run now, or None: while no live message has come after a replay, the
        history is asked again now and then (the run may have ended before the subscription
        was in place)."""
        seam = self._seam
        if seam is None or self.clock() < seam.next_poll:
            return None
        seam.interval = min(seam.interval * 2, SEAM_POLL_MAX)
        seam.next_poll = self.clock() + seam.interval
        return self._seam_poll(seam.scope)

    def _seam_poll(self, scope: str | None) -> Plan:
        queued = yield from self._seam_catch_up(scope)
        if self._seam is not None and self._ended(scope):
            self._seam, self._replayed = None, {}  # the run is over: nothing of it can come live any more
        return queued

    def _ended(self, ident: str | None) -> bool:
        """Whether run ``ident``'s final status is among the messages queued (and so nothing of it is to come)."""
        return ident is not None and ident != KNOWN and any(
            msg.kind == "status" and msg.name in FINAL_STATUSES and msg.ident == ident for msg in self.ready)

    def next_due(self) -> float | None:
        """When ``due`` will have a plan (``clock`` time), or None."""
        return None if self._seam is None else self._seam.next_poll

    def _open_seam(self, scope: str | None) -> None:
        self._seam = _Seam(scope, self.clock() + SEAM_POLL_FIRST)

    def _close_seam(self, frames: list[bytes]) -> Plan:
        scope, self._seam = self._seam.scope, None
        caught_up = yield from self._seam_catch_up(scope)
        self._replayed = {}
        if caught_up is None and not self.track_gaps:
            # (a subscription to everything sees such a loss as a gap in seq, and recovers or reports it)
            self.on_error("could not ask the history for what was published while this subscription was "
                          "being set up: messages of that moment may be missing")
        result = self.accept(frames)  # after the history's answer: a repeat of it is dropped
        if isinstance(result, Gap):
            yield from self.recover(result)
        elif result is not None:
            self.ready.append(result)

    def _seam_catch_up(self, scope: str | None) -> Plan:
        if scope == KNOWN:
            return (yield from self.catch_up())
        return (yield from self._sync(scope))

    def _sync(self, ident: str | None) -> Plan:
        """Queue what the history holds of run ``ident`` (or of every run) beyond what was seen."""
        reply = yield Request("runs")
        answer = self._answer(reply)
        if answer is None:
            return None
        history_last = {p["publisher"]: p["last_seq"] for p in _publishers_of(answer[0])}
        before = self._handed_out()  # handed out or reported already: never reported again
        messages: list[list[bytes]] = []
        missing: list[Gap] = []
        pending: list[Gap] = []
        for run in _runs_of(answer[0]):
            if ident is not None and run["ident"] != ident:
                continue
            seen = [before.get(pub, 0) for pub in run["publishers"]]
            if seen and all(history_last.get(pub, 0) <= last for pub, last in zip(run["publishers"], seen)):
                continue  # nothing new
            reply = yield Request("replay", {"ident": run["ident"], "from_seq": min(seen, default=0) + 1})
            answer = self._answer(reply)
            if answer is not None:
                messages.extend(answer[1])
                missing.extend(_ranges_of(answer[0], "missing"))
                for pub in run["publishers"]:  # (a history's word is not trusted beyond what it claims to hold)
                    pending.extend(_within(_ranges_of(answer[0], "pending"), pub, 1, history_last.get(pub, 0)))
        yield from self._settle(pending, messages)
        missing.extend(pending)  # what of it did not come (given up, or still pending after the wait): lost
        missing = [Gap(g.publisher, max(g.first, before.get(g.publisher, 0) + 1), g.last) for g in missing
                   if g.last > before.get(g.publisher, 0)]
        return self._queue_merged(messages, missing, replayed=before)

    def _handed_out(self) -> dict[str, int]:
        """Per publisher, the last seq handed out or reported: ``last_seq``, and what the open replay handed out."""
        handed = dict(self._replayed)
        for pub, seq in self.last_seq.items():
            if seq > handed.get(pub, 0):
                handed[pub] = seq
        return handed

    def _queue_merged(self, batches: list[list[bytes]], missing: list[Gap],
                      replayed: dict[str, int] | None = None) -> int:
        """Queue history messages per publisher in seq order (publishers in order of first
        appearance), each once; then report what ``missing`` says is gone and was not queued."""
        decoded: dict[str, dict[int, list[bytes]]] = {}
        returned: dict[str, dict[int, None]] = {}  # every seq the history returned, wanted or not: not lost
        for frames in batches:
            try:
                env = protocol.envelope(frames)
            except ProtocolError:
                self.accept(frames)  # counted and reported as invalid
                continue
            returned.setdefault(env.publisher, {})[env.seq] = None
            if bytes(frames[0]).startswith(self.prefixes):  # a run's events, say, to a subscription to its statuses
                decoded.setdefault(env.publisher, {})[env.seq] = frames
        queued = 0
        for pub, by_seq in decoded.items():
            for seq in sorted(by_seq):
                if replayed is not None and seq <= replayed.get(pub, 0):  # handed out by this replay already
                    self.counts.duplicates += 1
                    continue
                msg = self.accept(by_seq[seq], detect_gaps=False)
                if msg is not None:
                    self.ready.append(dataclasses.replace(msg, from_history=True))
                    queued += 1
                    if replayed is not None:
                        self._replayed[pub] = seq
        for gap in _merge_ranges(missing, returned):
            self.lost(gap)
        return queued

    def _answer(self, reply: list[bytes] | None) -> tuple[dict, list[list[bytes]]] | None:
        """The parsed reply, or None (no answer, or an error reply: reported once until a good one)."""
        if reply is None:
            trouble = f"{self.history_name} did not answer in time"
        else:
            try:
                answer = protocol.parse_reply(reply)
            except ProtocolError as exc:
                trouble = f"{self.history_name}: {exc}"
            else:
                if self._history_trouble is not None:
                    log.info("the history service answers again")
                self._history_trouble = None
                return answer
        if trouble != self._history_trouble:
            self._history_trouble = trouble
            self.on_error(trouble)
        return None


def host_of(payload: object) -> str | None:
    """The host an ansible-runner event is about (``event_data.host``), or None (a status, a play's start).

    >>> host_of({"event": "runner_on_failed", "event_data": {"host": "web2"}})
    'web2'
    """
    if isinstance(payload, dict):
        event_data = payload.get("event_data")
        if isinstance(event_data, dict):
            host = event_data.get("host") or event_data.get("remote_addr")
            return None if host is None else str(host)
    return None


def matches(msg: Message, kinds: Iterable[str], idents: Iterable[str] = (), events: Iterable[str] = (),
            hosts: Iterable[str] = ()) -> bool:
    """Whether ``msg`` passes a consumer's filters: its kind among ``kinds``, its run among ``idents``,
    and, for an event, its name among ``events`` and its host among ``hosts`` (an empty filter passes all).

    What a subscription cannot filter (event names across runs, hosts) is filtered here, once for
    ``zmq-emitter tail`` and the Event-Driven Ansible source alike.
    """
    if msg.kind not in kinds or (idents and msg.ident not in idents):
        return False
    if msg.kind == "event":
        if events and msg.name not in events:
            return False
        if hosts and host_of(msg.payload) not in hosts:
            return False
    return True


# -- checking history replies (a history service is a peer like any other: never trust its shapes) --

def _runs_of(info: dict) -> list[dict]:
    runs = info.get("runs")
    return [run for run in runs if isinstance(run, dict) and isinstance(run.get("ident"), str)
            and isinstance(run.get("publishers"), list) and all(isinstance(p, str) for p in run["publishers"])
            ] if isinstance(runs, list) else []


def _publishers_of(info: dict) -> list[dict]:
    publishers = info.get("publishers")
    return [pub for pub in publishers if isinstance(pub, dict) and isinstance(pub.get("publisher"), str)
            and _is_seq(pub.get("last_seq"), zero=True)] if isinstance(publishers, list) else []


def _ranges_of(info: dict, field: str) -> list[Gap]:
    """The ranges ``[[pub, first, last], ...]`` of a reply's ``missing`` or ``pending``."""
    ranges = info.get(field)
    return [Gap(*item) for item in ranges if isinstance(item, list) and len(item) == 3
            and isinstance(item[0], str) and _is_seq(item[1]) and _is_seq(item[2]) and item[1] <= item[2]
            ] if isinstance(ranges, list) else []


def _within(ranges: list[Gap], publisher: str, first: int, last: int) -> list[Gap]:
    """The parts of ``ranges`` of ``publisher`` inside first..last."""
    return [Gap(publisher, max(g.first, first), min(g.last, last)) for g in ranges
            if g.publisher == publisher and g.last >= first and g.first <= last]


def _is_seq(value: Any, zero: bool = False) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= (0 if zero else 1)


def _merge_ranges(missing: list[Gap], present: dict[str, dict[int, Any]]) -> Iterator[Gap]:
    """The union of ``missing`` per publisher, less the seqs ``present`` has, as gaps in order."""
    by_publisher: dict[str, list[list[int]]] = {}
    for gap in sorted(missing, key=lambda g: (g.publisher, g.first)):
        ranges = by_publisher.setdefault(gap.publisher, [])
        if ranges and gap.first <= ranges[-1][1] + 1:
            ranges[-1][1] = max(ranges[-1][1], gap.last)
        else:
            ranges.append([gap.first, gap.last])
    for publisher, ranges in by_publisher.items():
        have = sorted(present.get(publisher, ()))
        for first, last in ranges:
            i = bisect.bisect_left(have, first)
            while i < len(have) and have[i] <= last:
                if have[i] > first:
                    yield Gap(publisher, first, have[i] - 1)
                first = have[i] + 1
                i += 1
            if first <= last:
                yield Gap(publisher, first, last)


def _covers_everything(prefixes: tuple[bytes, ...]) -> bool:
    subscribed = set(prefixes)
    return b"" in subscribed or {b"status", b"event"} <= subscribed or {b"status/", b"event/"} <= subscribed


def _warn_gap(gap: Gap) -> None:
    log.warning("missed %d message(s) of publisher %s: seq %d..%d", gap.count, gap.publisher, gap.first, gap.last)


def _warn(text: str) -> None:
    log.warning("%s", text)


def _warn_invalid_once(tracker: Tracker) -> Callable[[list[bytes], ProtocolError], None]:
    def warn(frames: list[bytes], exc: ProtocolError) -> None:
        if tracker.counts.invalid == 1:
            log.warning("skipping messages that are not zmq-emitter messages (first: %s); they are counted", exc)
    return warn


# -- driving a plan over a DEALER socket ------------------------------------------------


class Histories:
    """The history endpoints a subscriber may ask (a redundant pair: two brokers' histories), and
    which to ask first: the one that answered last.

    Shared by the ``Dialogue`` objects of one subscriber, so that once a history has stopped
    answering, the next requests go to the other one at once instead of waiting for it first.
    ``on_switch(text)`` is told once when a history is given up for another (until it answers again).

        >>> histories = Histories(["tcp://a:5559", "tcp://b:5559"])
        >>> histories.preferred, histories.name
        (0, 'the history services at tcp://a:5559, tcp://b:5559')
    """

    def __init__(self, endpoints: Iterable[str], on_switch: Callable[[str], None] | None = None):
        self.endpoints = list(endpoints)
        if not self.endpoints:
            raise ValueError("history: at least one endpoint")
        self.preferred = 0
        self.on_switch = on_switch or _warn
        self._told: set[int] = set()  # endpoints said to be given up, until they answer again

    @property
    def name(self) -> str:
        """How a person is told of them (in ``on_error``)."""
        many = len(self.endpoints) > 1
        return f"the history service{'s' if many else ''} at {', '.join(self.endpoints)}"

    def answered(self, index: int) -> None:
        self.preferred = index
        self._told.discard(index)

    def given_up(self, index: int, then: int, why: str) -> None:
        if index not in self._told:
            self._told.add(index)
            self.on_switch(f"the history service at {self.endpoints[index]} {why}: asking {self.endpoints[then]}")


class Dialogue:
    """One plan in progress with the history service, over DEALER sockets (one per history endpoint).

    Each request goes out as ``[id, b"", request]``; the history's REP socket sends the reply
    back behind the same envelope, so a reply to a request that was given up (a timeout, an
    asyncio task cancelled mid-request) is recognised and dropped, and the socket stays usable.

    A request without a reply is sent again, ``RESEND_FIRST`` seconds after it went out, then
    after twice as long each time, until its ``timeout``: a broker killed or restarted while a
    request was on its way loses it, and the DEALER's reconnection to the new broker carries the
    next copy.  Requests only read, so a copy answered twice is harmless (the second reply is
    dropped as stale).

    With several history endpoints (``Histories``: a redundant pair of brokers), each copy goes
    to the next endpoint, and a refused or malformed reply sends the request to the next one at
    once (until every endpoint has refused it: then the plan gets that reply); the reply of any
    copy will do.  A request starts at the endpoint that answered last.  So a history that does
    not answer costs the first request after it fell silent ``RESEND_FIRST`` seconds, and the
    following ones nothing.

        dialogue = Dialogue(plan, timeout=5.0)
        while not dialogue.done:
            if (frames := dialogue.outgoing()): dealers[dialogue.endpoint].send_multipart(frames)
            if (i := poll(dealers, dialogue.wait_ms())) is not None: dialogue.incoming(dealers[i].recv_multipart(), i)
            else: dialogue.expire()            # gave up on this request: open new DEALERs
        dialogue.result
    """

    _ids = itertools.count(1)  # one counter per process: an id is never used twice on any socket

    def __init__(self, plan: Plan, timeout: float, clock: Callable[[], float] = time.monotonic,
                 histories: Histories | None = None):
        self.plan, self.timeout, self.clock = plan, timeout, clock
        self.histories = histories or Histories([""])
        self.done, self.result = False, None
        self._request: Request | None = None
        self._id = b""
        self._sent = False
        self.endpoint = 0  # the index in ``histories.endpoints`` that ``outgoing``'s frames go to
        self._refused: dict[int, list[bytes]] = {}  # endpoint -> its refusal of the current request
        self._now = False  # send a copy at once (the last one was refused)
        self.deadline = 0.0
        self._resend_at = self._resend_wait = 0.0
        self._advance(None, first=True)

    def outgoing(self) -> list[bytes] | None:
        """The frames to send now to ``endpoint`` (a new request, or a copy of one unanswered for a
        while or refused), or None."""
        if self.done or isinstance(self._request, Pause):
            return None
        now = self.clock()
        if not self._sent:
            self._sent = True
            self._id = b"%d" % next(self._ids)
            self.endpoint = self.histories.preferred
            self.deadline = now + self.timeout
            self._resend_wait = RESEND_FIRST
        elif self._now:
            self._now = False
        elif now < self._resend_at or now >= self.deadline:
            return None
        else:
            self._resend_wait *= 2
            self._next_endpoint("did not answer")
        self._resend_at = now + self._resend_wait
        return [self._id, b"", self._request.frame()]

    def wait_ms(self, until: float | None = None) -> int:
        """How long to wait for the reply (ms) before calling ``outgoing`` again, at most until
        ``until`` (clock time)."""
        if self._now:
            return 0
        end = min(self.deadline, self._resend_at) if until is None else min(self.deadline, self._resend_at, until)
        return max(0, int((end - self.clock()) * 1000))

    def incoming(self, frames: list[bytes], endpoint: int = 0) -> None:
        """Frames the DEALER of ``endpoint`` received: the reply to this request, or a stale one (dropped)."""
        if (self.done or not self._sent or isinstance(self._request, Pause) or len(frames) < 2
                or frames[0] != self._id or frames[1] != b""):
            return
        reply = frames[2:]
        if len(self.histories.endpoints) > 1 and _refused(reply):
            self._refused[endpoint] = reply
            if len(self._refused) < len(self.histories.endpoints):  # another may have it: ask it at once
                self.endpoint = endpoint
                self._next_endpoint("refused the request")
                self._now = True
                return
        else:
            self.histories.answered(endpoint)
        self._advance(reply)

    def expire(self) -> bool:
        """At the end of a pause, go on (False); if the current request has waited its ``timeout``,
        give it up (the plan gets None) and return True: the shell opens a new DEALER."""
        if self.done or not self._sent or self.clock() < self.deadline:
            return False
        paused = isinstance(self._request, Pause)
        self._advance(None)
        return not paused

    def _next_endpoint(self, why: str) -> None:
        """Send the next copy to the next endpoint that has not refused this request (said once)."""
        count = len(self.histories.endpoints)
        if count == 1:
            return
        following = next((i % count for i in range(self.endpoint + 1, self.endpoint + count)
                          if i % count not in self._refused), self.endpoint)
        self.histories.given_up(self.endpoint, following, why)
        self.endpoint = following

    def _advance(self, reply: list[bytes] | None, first: bool = False) -> None:
        self._refused.clear()
        self._now = False
        try:
            self._request = next(self.plan) if first else self.plan.send(reply)
        except StopIteration as stop:
            self.done, self.result, self._request = True, stop.value, None
            return
        self._sent = False
        if isinstance(self._request, Pause):  # nothing to send: wait until its end, as for a reply
            self._sent, self._id = True, b""
            self.deadline = self._resend_at = self.clock() + self._request.seconds


def _refused(reply: list[bytes]) -> bool:
    """Whether a history reply is a refusal or malformed (another history may answer it)."""
    try:
        protocol.parse_reply(reply)
    except ProtocolError:
        return True
    return False
