"""The subscriber library's sans-I/O core (``zmq_emitter/consumers/core.py``), against the broker's real
``History`` answering in-process: the history dialogues, the seam, what is reported lost, the
publishers remembered (a bound against made-up ids), the connection watcher.  No sockets: every
moment of a race can be set up exactly."""
from __future__ import annotations

import pytest
import zmq

from consumer_helpers import message

from zmq_emitter import protocol
from zmq_emitter.broker.history import History
from zmq_emitter.consumers.core import (ID_CHARS, MAX_GAPS, PENDING_WAIT, RESEND_FIRST, SEAM_POLL_FIRST, SEAM_POLL_MAX,
                                       Dialogue, Gap, Pause, Request, Tracker)
from zmq_emitter.link import Link

P = "9999999999999999"


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def record(history: History, *messages: list[bytes]) -> None:
    for frames in messages:
        history.add(protocol.envelope(frames), frames)


def run_message(seq: int, ident: str, final: bool = False) -> list[bytes]:
    if final:
        return message(P, seq, "status", ident, "successful", {"status": "successful", "runner_ident": ident})
    return message(P, seq, "event", ident, "runner_on_ok")


def drive(plan, history: History, asked: list | None = None, on_pause=lambda pause: None):
    """Run ``plan`` against ``history`` (its real answers; ``on_pause`` at each pause); the plan's result."""
    try:
        request = next(plan)
        while True:
            if asked is not None:
                asked.append(request)
            if isinstance(request, Pause):
                on_pause(request)
                request = plan.send(None)
            else:
                request = plan.send(history.answer(request.frame()))
    except StopIteration as done:
        return done.value


def handed_out(tracker: Tracker) -> list[tuple[str, int]]:
    out = [(m.ident, m.seq) for m in tracker.ready]
    tracker.ready.clear()
    return out


def test_a_replay_of_every_run_merges_the_interleaved_runs_of_one_publisher_in_seq_order():
    history = History()
    record(history, *(run_message(seq, "a" if seq % 2 else "b", final=seq > 4) for seq in range(1, 7)))
    tracker = Tracker(recovers=True)
    assert drive(tracker.replay(None), history) == 6
    assert handed_out(tracker) == [("a", 1), ("b", 2), ("a", 3), ("b", 4), ("a", 5), ("b", 6)]
    assert tracker.gaps == []


def test_a_replay_reports_what_the_history_forgot_once_and_nothing_it_still_holds():
    size = sum(len(f) for f in run_message(10, "a"))
    history = History(max_bytes=6 * size)  # keeps seqs 5..10 of 10 (the runs interleave: a odd, b even)
    record(history, *(run_message(seq, "a" if seq % 2 else "b") for seq in range(1, 11)))
    lost = []
    tracker = Tracker(recovers=True, on_gap=lost.append, clock=Clock())
    drive(tracker.replay(None), history)  # run a misses 1..4, run b 2..5; but 5 is run a's, and here
    assert [seq for _, seq in handed_out(tracker)] == [5, 6, 7, 8, 9, 10]
    assert lost == tracker.gaps == [Gap(P, 1, 4)]
    tracker.clock.now += SEAM_POLL_FIRST
    drive(tracker.due(), history)  # asked again (the seam): nothing new, nothing reported twice
    assert lost == [Gap(P, 1, 4)]


def test_the_first_live_message_after_a_replay_has_the_history_asked_again_before_it_is_handed_out():
    history = History()
    record(history, *(run_message(seq, "x") for seq in (1, 2, 3)))
    tracker = Tracker(["event/x/", "status/x/"], recovers=True)  # one run: no gap shows in seq
    assert drive(tracker.replay("x"), history) == 3
    record(history, *(run_message(seq, "x") for seq in (4, 5, 6)))  # before the subscription was in place
    record(history, run_message(7, "x"))
    asked = []
    plan = tracker.receive(run_message(7, "x"))  # the first live message
    drive(plan, history, asked)
    assert [r.op for r in asked] == ["runs", "replay"] and asked[1].fields == {"ident": "x", "from_seq": 4}
    assert [seq for _, seq in handed_out(tracker)] == [1, 2, 3, 4, 5, 6, 7]  # the live 7 came in the answer too
    assert tracker.counts.duplicates == 1
    assert tracker.receive(run_message(6, "x")) is None and tracker.counts.duplicates == 2
    assert tracker.receive(run_message(8, "x")).seq == 8  # the seam is closed: live messages go straight through
    assert tracker.next_due() is None


def test_until_a_live_message_comes_the_history_is_asked_again_with_a_back_off_until_the_run_has_ended():
    history, clock = History(), Clock()
    record(history, *(run_message(seq, "x") for seq in (1, 2, 3)))
    tracker = Tracker(["event/x/", "status/x/"], recovers=True, clock=clock)
    drive(tracker.replay("x"), history)
    asked_at = []
    for _ in range(7):
        clock.now = tracker.next_due()
        asked_at.append(clock.now)
        drive(tracker.due(), history)
    waits = [later - earlier for earlier, later in zip(asked_at, asked_at[1:])]
    assert waits == [1.0, 2.0, 4.0, SEAM_POLL_MAX, SEAM_POLL_MAX, SEAM_POLL_MAX]
    record(history, run_message(4, "x"), run_message(5, "x", final=True))  # the run ends; nothing comes live
    clock.now = tracker.next_due()
    drive(tracker.due(), history)
    assert [seq for _, seq in handed_out(tracker)] == [1, 2, 3, 4, 5]
    assert tracker.next_due() is None  # its final status is in: nothing more of it can come


def test_a_replay_queues_only_what_the_subscription_covers():
    history = History()
    record(history, run_message(1, "x"), run_message(2, "x", final=True))
    tracker = Tracker(["status/x/"], recovers=True)
    assert drive(tracker.replay("x"), history) == 1
    assert [m.name for m in tracker.ready] == ["successful"] and tracker.gaps == []


def test_a_history_error_reply_counts_as_no_answer_said_once_and_the_revealing_message_is_kept():
    told, lost = [], []
    tracker = Tracker(recovers=True, on_error=told.append, on_gap=lost.append)
    assert tracker.accept(run_message(1, "x")).seq == 1
    for revealing in (5, 9):
        gap = tracker.accept(run_message(revealing, "x"))
        plan = tracker.recover(gap)
        assert next(plan) == Request("fetch", {"pub": P, "first": gap.first, "last": gap.last})
        try:
            plan.send(protocol.error_reply("not today"))
        except StopIteration:
            pass
    assert [seq for _, seq in handed_out(tracker)] == [5, 9]
    assert lost == [Gap(P, 2, 4), Gap(P, 6, 8)]
    assert len(told) == 1 and "not today" in told[0]  # said once, until the history answers well again


def with_a_hole(history: History) -> None:
    """Run "r" of P: seqs 1, 2, 5, 6 recorded; 3 and 4 a hole the broker asks P to send again (pending)."""
    record(history, *(run_message(seq, "r") for seq in (1, 2, 5, 6)))
    assert history.pending(P, 1, 6) == [[P, 3, 4]]


def test_a_replay_waits_for_a_hole_the_publisher_is_sending_again_and_delivers_it_in_order():
    history = History()
    with_a_hole(history)
    tracker = Tracker(recovers=True)
    pauses = []

    def publisher_resends(pause):
        pauses.append(pause.seconds)
        if len(pauses) == 2:  # it comes while the tracker waits
            record(history, run_message(3, "r"), run_message(4, "r"))

    assert drive(tracker.replay("r"), history, on_pause=publisher_resends) == 6
    assert handed_out(tracker) == [("r", seq) for seq in range(1, 7)] and tracker.gaps == []
    assert len(pauses) == 2


def test_a_replay_reports_a_hole_given_up_as_lost_whether_given_up_before_or_while_it_waits():
    for give_up_before in (True, False):
        history = History()
        with_a_hole(history)
        if give_up_before:
            history.give_up(P)
        tracker, lost = Tracker(recovers=True), []
        tracker.on_gap = lost.append
        drive(tracker.replay("r"), history, on_pause=lambda pause: history.give_up(P))
        assert handed_out(tracker) == [("r", 1), ("r", 2), ("r", 5), ("r", 6)]
        assert lost == [Gap(P, 3, 4)], give_up_before


def test_a_hole_still_pending_after_the_wait_is_reported_lost_and_a_gap_fetch_waits_for_it_likewise():
    history = History()
    with_a_hole(history)
    tracker, lost, waited = Tracker(recovers=True), [], []
    tracker.on_gap = lost.append
    drive(tracker.replay("r"), history, on_pause=lambda pause: waited.append(pause.seconds))
    assert lost == [Gap(P, 3, 4)] and sum(waited[:-1]) < PENDING_WAIT <= sum(waited)
    # live: 1, 2 then 5 shows the gap 3..4, pending at the history, sent again while the tracker waits
    history, tracker = History(), Tracker(recovers=True)
    with_a_hole(history)
    assert tracker.receive(run_message(1, "r")).seq == 1 and tracker.receive(run_message(2, "r")).seq == 2
    plan = tracker.receive(run_message(5, "r"))
    drive(plan, history, on_pause=lambda pause: record(history, run_message(3, "r"), run_message(4, "r")))
    assert handed_out(tracker) == [("r", 3), ("r", 4), ("r", 5)] and tracker.gaps == []


def test_a_dialogue_pauses_without_sending_and_drops_a_stale_reply_meanwhile():
    clock = Clock()

    def plan():
        yield Pause(1.0)
        return (yield Request("runs"))

    dialogue = Dialogue(plan(), timeout=5.0, clock=clock)
    assert dialogue.outgoing() is None and dialogue.wait_ms() == 1000
    dialogue.incoming([b"", b"", b"stray"])
    assert not dialogue.done
    clock.now += 1.0
    assert dialogue.expire() is False  # the pause is over: no new socket needed
    identity, _, _ = dialogue.outgoing()
    dialogue.incoming([identity, b"", b"answer"])
    assert dialogue.done and dialogue.result == [b"answer"]


def test_positions_leave_out_a_gap_still_being_fetched_and_the_message_that_revealed_it():
    """A consumer saving ``positions`` while a gap is being fetched (a plan under way) must not skip it on resume."""
    history = History()
    record(history, *(run_message(seq, "r") for seq in range(1, 8)))
    tracker = Tracker(recovers=True)
    assert tracker.receive(run_message(1, "r")).seq == 1
    plan = tracker.receive(run_message(5, "r"))  # 2..4 missed: fetched before 5 is handed out
    assert tracker.positions() == {P: 1}
    drive(plan, history)
    assert tracker.positions() == {P: 1}  # queued, not handed out yet
    assert handed_out(tracker) == [("r", 2), ("r", 3), ("r", 4), ("r", 5)]
    assert tracker.positions() == {P: 5}
    plan = tracker.catch_up()  # 6..7 are in the history: counted as seen while they are fetched
    next(plan)
    assert plan.send(history.answer(protocol.request("runs"))).fields["first"] == 6
    assert tracker.positions() == {P: 5}


def test_a_dialogue_drops_a_stale_reply_and_gives_up_a_request_after_its_timeout():
    clock = Clock()

    def plan():
        first = yield Request("runs")
        second = yield Request("runs")
        return first, second

    dialogue = Dialogue(plan(), timeout=5.0, clock=clock)
    identity, empty, _ = dialogue.outgoing()
    assert empty == b"" and dialogue.outgoing() is None  # each request is sent once
    clock.now += 5.0
    assert dialogue.expire()  # no answer in time: the plan gets None
    dialogue.incoming([identity, b"", b"late"])  # the answer to the request given up: dropped
    again, _, _ = dialogue.outgoing()
    dialogue.incoming([again, b"", b"answer"])
    assert dialogue.done and dialogue.result == (None, [b"answer"])


def test_a_dialogue_sends_an_unanswered_request_again_backing_off_until_its_timeout_and_takes_any_copys_reply():
    clock = Clock()

    def plan():
        return (yield Request("runs"))

    dialogue = Dialogue(plan(), timeout=10.0, clock=clock)
    start = clock.now
    sent, times = [dialogue.outgoing()], [0.0]
    for _ in range(40):  # its 10 s, in steps of 0.25 s
        clock.now += 0.25
        if (frames := dialogue.outgoing()) is not None:
            sent.append(frames)
            times.append(clock.now - start)
    assert times == [0.0, RESEND_FIRST, 3 * RESEND_FIRST]  # then after 4 * RESEND_FIRST more: past its timeout
    assert len({tuple(frames) for frames in sent}) == 1  # the same request, the same id
    assert dialogue.expire()  # still no answer at its timeout: given up
    dialogue = Dialogue(plan(), timeout=10.0, clock=clock)
    first = dialogue.outgoing()
    clock.now += RESEND_FIRST
    assert dialogue.outgoing() == first
    dialogue.incoming([first[0], b"", b"answer"])  # the reply to either copy will do
    assert dialogue.done and dialogue.result == [b"answer"]


def test_a_refused_endpoint_is_said_once_and_tried_again_with_a_back_off_until_it_lets_the_subscriber_in():
    clock, told = Clock(), []
    link = Link(["tcp://broker:5558"], told.append, clock)
    retries = []
    for _ in range(8):
        link.event(zmq.EVENT_HANDSHAKE_FAILED_AUTH, "tcp://broker:5558", 400)
        clock.now = link.next_due()
        assert link.due() == ["tcp://broker:5558"]
        retries.append(clock.now)
    waits = [later - earlier for earlier, later in zip(retries, retries[1:])]
    assert waits == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert len(told) == 1 and "refused this subscriber" in told[0]
    link.event(zmq.EVENT_HANDSHAKE_SUCCEEDED, "tcp://broker:5558", 0)
    assert link.next_due() is None
    link.event(zmq.EVENT_HANDSHAKE_FAILED_AUTH, "tcp://broker:5558", 400)  # refused again later: said again
    assert len(told) == 2 and link.next_due() == clock.now + 1.0


def test_an_endpoint_not_reached_is_said_once_after_a_moment_and_a_lost_one_likewise():
    clock, told = Clock(), []
    link = Link(["ipc:///run/b"], told.append, clock)
    clock.now = link.next_due()
    assert link.due() == [] and len(told) == 1 and "no connection to ipc:///run/b yet" in told[0]
    clock.now += 100
    assert link.due() == [] and len(told) == 1 and link.next_due() is None
    link.event(zmq.EVENT_HANDSHAKE_SUCCEEDED, "ipc:///run/b", 0)
    link.event(zmq.EVENT_DISCONNECTED, "ipc:///run/b", 0)
    clock.now = link.next_due()
    link.due()
    assert len(told) == 2 and "lost the connection to ipc:///run/b" in told[1]


def forged(number: int) -> list[bytes]:
    """The first message of made-up publisher number ``number``."""
    return message("%016x" % number, 1, "event", "forged")


def test_forged_publisher_ids_beyond_the_bound_are_forgotten_least_recent_first_and_counted_and_said_once():
    """Anyone who may publish can make up publisher ids: a subscriber remembers only the most recently seen."""
    said = []
    tracker = Tracker(max_publishers=100, on_error=said.append)
    assert tracker.accept(run_message(1, "r")).seq == 1
    seq = 1
    for number in range(10_000):
        assert tracker.accept(forged(number)) is not None
        if number % 50 == 49:  # the real publisher goes on sending while the flood goes on
            seq += 1
            assert tracker.accept(run_message(seq, "r")).seq == seq
    assert len(tracker.last_seq) == 100 and tracker.counts.forgotten == 10_001 - 100
    assert P in tracker.last_seq and len(said) == 1 and "forgetting the least recently seen" in said[0]
    assert tracker.accept(run_message(seq, "r")) is None  # the real publisher's repeats are still dropped
    assert tracker.accept(run_message(seq + 3, "r")).seq == seq + 3  # and its gaps still seen
    assert tracker.gaps == [Gap(P, seq + 1, seq + 2)]
    assert tracker.accept(forged(0)) is not None  # a forgotten publisher's repeat starts it again (documented)


def test_a_publisher_jumping_its_seq_on_every_message_keeps_the_gap_list_bounded_and_the_count_exact():
    tracker = Tracker(on_gap=lambda gap: None)
    for i in range(3 * MAX_GAPS):
        tracker.accept(message("jumper", 2 * i + 1, "event", "x"))  # 1, 3, 5...: one lost message before each
    assert tracker.counts.missed == 3 * MAX_GAPS - 1
    assert len(tracker.gaps) <= MAX_GAPS and tracker.gaps[-1] == Gap("jumper", 6 * MAX_GAPS - 2, 6 * MAX_GAPS - 2)


def test_long_made_up_publisher_ids_cannot_stretch_the_bound():
    """A publisher id is any string (up to the broker's largest frame): the ids remembered are bounded in
    characters too, ``ID_CHARS`` each on average."""
    tracker = Tracker(max_publishers=10, on_error=lambda text: None)
    assert tracker.accept(run_message(1, "r")).seq == 1
    for number in range(20):
        assert tracker.accept(message("%0200x" % number, 1, "event", "forged")) is not None
        assert tracker.accept(run_message(number + 2, "r")) is not None
        assert sum(map(len, tracker.last_seq)) <= 10 * ID_CHARS and P in tracker.last_seq
    assert len(tracker.last_seq) == 4 and tracker.counts.forgotten == 20 - 3
    assert tracker.accept(message("%06400x" % 0, 1, "event", "forged")) is not None  # one id as long as them all
    assert list(tracker.last_seq) == ["%06400x" % 0]
    assert tracker.accept(run_message(30, "r")) is not None and list(tracker.last_seq) == [P]


def test_a_closed_publisher_is_the_first_forgotten_and_its_repeats_are_dropped_until_then():
    """After its closing report nothing more comes from a publisher, but a copy through the other broker of a
    redundant pair may: it is kept, first in line to be forgotten."""
    tracker = Tracker(max_publishers=3, on_error=lambda text: None)
    a, b, c = ("%016x" % n for n in (10, 11, 12))
    for pub in (a, b, c):
        assert tracker.accept(message(pub, 1)) is not None
    closing = message(b, 2, "publisher", b, "closed", {"status": "closed"})
    assert tracker.accept(closing).name == "closed"
    assert tracker.accept(closing) is None  # the copy through the other broker
    assert tracker.accept(forged(1)) is not None  # one more publisher than the bound: the closed one goes, not a
    assert list(tracker.last_seq) == [a, c, "%016x" % 1] and tracker.counts.forgotten == 1


def test_a_publisher_with_a_gap_being_fetched_is_not_forgotten():
    """A ``Tracker`` driven by hand may take other publishers' messages while a gap is fetched: the
    publisher of the gap stays remembered, so the message that revealed it is not handed out twice."""
    tracker = Tracker(recovers=True, max_publishers=2, on_error=lambda text: None)
    assert tracker.accept(run_message(1, "r")).seq == 1
    gap = tracker.accept(run_message(5, "r"))
    assert gap == Gap(P, 2, 4)
    for number in range(5):
        assert tracker.accept(forged(number)) is not None
    assert list(tracker.last_seq) == [P, "%016x" % 4] and tracker.positions()[P] == 1
    tracker.fill(gap, [run_message(seq, "r") for seq in (2, 3, 4)])
    assert handed_out(tracker) == [("r", 2), ("r", 3), ("r", 4), ("r", 5)]
    assert tracker.accept(run_message(5, "r")) is None  # a repeat of the message that revealed the gap
    assert tracker.accept(run_message(6, "r")).seq == 6 and tracker.gaps == []


def test_a_replay_of_more_publishers_than_the_bound_is_not_handed_out_again_by_the_seams_next_look():
    """Made-up ids stored in a history (more publishers than max_publishers) would otherwise make every look of
    the seam hand the forgotten publishers' messages out again, until a live message comes."""
    history = History()
    for number in range(5):
        pub = "%016x" % number
        record(history, message(pub, 1, "event", f"run{number}"), message(pub, 2, "event", f"run{number}"))
    clock = Clock()
    tracker = Tracker(recovers=True, max_publishers=3, clock=clock, on_error=lambda text: None)
    assert drive(tracker.replay(None), history) == 10 and len(handed_out(tracker)) == 10
    for _ in range(3):  # the seam looks again, and again: nothing more to hand out
        clock.now = tracker.next_due()
        assert drive(tracker.due(), history) == 0 and handed_out(tracker) == []
    assert tracker.counts.forgotten == 2


def test_restored_positions_are_bounded_too_and_a_bound_below_one_is_refused():
    tracker = Tracker(max_publishers=2, on_error=lambda text: None)
    tracker.restore({"a": 1, "b": 2, "c": 3})  # (positions() lists the least recently seen first)
    assert tracker.positions() == {"b": 2, "c": 3}
    for bad in (0, -1, 1.5, True, "10"):
        with pytest.raises(ValueError, match="max_publishers: a whole number of at least 1"):
            Tracker(max_publishers=bad)
