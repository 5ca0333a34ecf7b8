"""The broker acknowledges only what its history recorded, asks publishers to send holes again, and
fills them: the history's coverage (``History.acked``), the request policy (``acks.py``), and a real
broker whose capture socket drops copies under a flood."""
from __future__ import annotations

import collections
import time

import zmq

from zmq_emitter import protocol, security
from zmq_emitter.broker import Broker
from zmq_emitter.broker.acks import Acknowledgements
from zmq_emitter.broker.history import History
from zmq_emitter.consumers.subscriber import Subscriber


def frames(seq, ident="a", pub="p1", kind="event", name="runner_on_ok", size=10):
    return [protocol.topic(kind, ident, name), protocol.header_prefix("json", pub) + b"%d}" % seq, b"x" * size]


def record(history, *seqs, **kw):
    return [history.add(protocol.envelope(f), f) for f in (frames(seq, **kw) for seq in seqs)]


def seqs_of(messages):
    return [protocol.envelope(m).seq for m in messages]


# ---------------------------------------------------------------------------------------
# The history's coverage


def test_acked_is_the_highest_contiguous_seq_from_the_first_one_seen_not_the_last():
    history = History()
    record(history, 7, 8, 10, 11, 14)
    pub = history.publishers["p1"]
    assert (pub.first_seq, pub.acked, pub.last_seq) == (7, 8, 14)
    assert pub.holes == [[9, 9], [12, 13]] and pub.pending == 3
    assert history.acks() == {"p1": 8}


def test_a_message_sent_again_fills_its_hole_and_a_repeat_is_a_duplicate():
    history = History()
    record(history, 1, 2, 5, 6)
    assert record(history, 4, 3, 4, 6, 1) == [True, True, False, False, False]
    pub = history.publishers["p1"]
    assert pub.holes == [] and pub.acked == 6 and pub.duplicates == 3 and pub.received == 6
    assert "p1" not in history.holey


def test_replay_and_fetch_answer_in_seq_order_after_holes_were_filled_out_of_order():
    history = History()
    record(history, 1, 4, 7, 2, 6, 3, 5)
    assert seqs_of(history.replay("a")[0]) == [1, 2, 3, 4, 5, 6, 7]
    messages, missing = history.fetch("p1", 1, 7)
    assert seqs_of(messages) == [1, 2, 3, 4, 5, 6, 7] and missing == [] and history.pending("p1", 1, 7) == []


def test_fetch_tells_a_hole_still_asked_for_apart_from_what_is_gone_for_good():
    history = History()
    record(history, 1, 2, 5)
    assert history.fetch("p1", 1, 6)[1] == []  # 3..4: asked for again, not gone; 6: not published yet
    assert history.pending("p1", 1, 6) == [["p1", 3, 4]]
    history.give_up("p1")
    assert history.fetch("p1", 1, 6)[1] == [["p1", 3, 4]]  # given up: gone for good


def test_what_the_byte_bound_forgets_stays_one_range_when_late_messages_filled_holes():
    history = History(max_bytes=10 * 70)  # room for 10 messages of 70 bytes or so
    record(history, 1, 2, 4, 5, 6, 7, 8, 9, 10, size=40)
    record(history, 3, size=40)  # filled late: the newest arrival, the lowest seq
    record(history, *range(11, 16), size=40)
    messages, missing, _ = history.replay("a")
    kept = seqs_of(messages)
    assert kept == list(range(kept[0], 16))
    assert missing == [["p1", 1, kept[0] - 1]]


def test_a_history_reloaded_from_its_journal_acknowledges_only_up_to_its_first_hole(tmp_path):
    history = History()
    history.persist_to(tmp_path)
    record(history, 1, 2, 3, 6, 7, 5)
    history.sync()
    history.close()
    again = History()
    again.persist_to(tmp_path)
    assert again.acks() == {"p1": 3} and again.publishers["p1"].holes == [[4, 4]]
    assert seqs_of(again.replay("a")[0]) == [1, 2, 3, 5, 6, 7]


# ---------------------------------------------------------------------------------------
# The request policy (sans-I/O)


def hear(history, acks, *seqs):
    for seq in seqs:
        record(history, seq)
        acks.heard("p1")


def test_a_hole_is_asked_for_once_then_again_only_after_a_while():
    history = History()
    acks = Acknowledgements(history, "b", "t")
    hear(history, acks, 1, 2, 4)
    first = acks.due(now=0.0)
    assert first.acks == {"p1": 2} and first.resend == {"p1": 2}
    hear(history, acks, 5)
    assert acks.due(now=0.5).resend == {}          # the same hole: not asked again so soon
    assert acks.due(now=0.6) is None                # nothing new heard, nothing to ask
    assert acks.due(now=1.1).resend == {"p1": 2}    # still there after a while: asked again
    hear(history, acks, 3)
    filled = acks.due(now=1.2)
    assert filled.acks == {"p1": 5} and filled.resend == {}


def test_acknowledgements_come_at_most_every_interval_unless_a_full_batch_came():
    history = History()
    acks = Acknowledgements(history, "b", "t")
    assert acks.next_due() is None                          # nothing heard: nothing waits
    hear(history, acks, 1)
    assert acks.due(now=0.0).acks == {"p1": 1}
    hear(history, acks, 2)
    assert acks.due(now=0.001) is None                      # too soon: held back...
    assert acks.next_due() == 0.0 + acks.interval           # ...until then
    assert acks.due(now=acks.interval).acks == {"p1": 2}    # ...and not lost
    assert acks.next_due() is None
    hear(history, acks, 3)
    assert acks.due(now=acks.interval + 0.001, full=True).acks == {"p1": 3}  # a full batch: at once


def test_a_request_to_send_again_is_not_held_back_by_the_interval():
    history = History()
    acks = Acknowledgements(history, "b", "t")
    hear(history, acks, 1)
    acks.due(now=0.0)
    hear(history, acks, 3)                                   # 2 is missing
    assert acks.due(now=0.001).resend == {"p1": 1}


def test_a_hole_the_publisher_cannot_fill_is_given_up_counted_as_missed_and_acknowledged_past():
    history = History()
    acks = Acknowledgements(history, "b", "t")
    hear(history, acks, 1, 2, 5)
    now, seq = 0.0, 5
    for _ in range(acks.give_up_after):
        ack = acks.due(now)
        assert ack.resend == {"p1": 2} and all(v <= 2 for v in ack.acks.values())
        seq += 1
        hear(history, acks, seq)  # the publisher answers with what it still has: never 3 or 4
        now += acks.retry_after
    ack = acks.due(now)
    assert ack.acks == {"p1": seq} and ack.resend == {}
    pub = history.publishers["p1"]
    assert pub.missed == 2 and pub.holes == []
    assert history.fetch("p1", 1, seq)[1] == [["p1", 3, 4]]  # reported missing, never silently left out


def test_every_hole_the_requests_covered_is_given_up_together_not_one_at_a_time(caplog):
    """A request asks for everything kept after the first hole: holes the answers did not fill are gone too."""
    history = History()
    acks = Acknowledgements(history, "b", "t")
    hear(history, acks, 1, 2, 5, 6, 9, 12)          # holes 3-4, 7-8, 10-11 (the capture dropped them)
    now, seq = 0.0, 12
    for _ in range(acks.give_up_after):
        ack = acks.due(now)
        assert ack.resend == {"p1": 2}
        seq += 1
        hear(history, acks, seq)                     # it answers, but has none of them any more
        now += acks.retry_after
    hear(history, acks, seq + 2)                     # a hole after the requests began (seq + 1): not covered
    with caplog.at_level("WARNING", logger="zmq_emitter.broker"):
        ack = acks.due(now)
    pub = history.publishers["p1"]
    assert pub.missed == 6 and pub.holes == [[seq + 1, seq + 1]]
    assert ack.acks == {"p1": seq} and ack.resend == {"p1": seq}  # past all three at once; the new one asked for
    assert "3..4, 7..8, 10..11" in caplog.text and "6 messages counted as missed" in caplog.text


def test_a_hole_is_not_given_up_while_the_publisher_does_not_answer_until_the_long_bound():
    history = History()
    acks = Acknowledgements(history, "b", "t")
    hear(history, acks, 1, 2, 5)
    for i in range(3 * acks.give_up_after):
        ack = acks.due(now=i * acks.retry_after)
        assert ack is None or ack.resend == {"p1": 2}
    assert history.publishers["p1"].holes == [[3, 4]]
    assert acks.due(now=acks.abandon_after).acks == {"p1": 5}


# ---------------------------------------------------------------------------------------
# A real broker whose capture socket drops copies


class AckingPublisher:
    """A runner's socket as the protocol asks: keeps each message until a present broker acknowledges
    it, and on ``resend`` sends again, oldest first, what it still keeps after the given seq."""

    def __init__(self, context: zmq.Context, endpoint: str, pub_id: str = "f100df100df100d0",
                 curve: security.ClientCurve | None = None):
        self.id = pub_id
        self.sock = context.socket(zmq.XPUB)
        self.sock.setsockopt(zmq.XPUB_NODROP, 1)
        self.sock.setsockopt(zmq.XPUB_VERBOSE, 1)
        self.sock.setsockopt(zmq.SNDHWM, 1000)
        self.sock.setsockopt(zmq.LINGER, 0)
        if curve is not None:
            curve.apply(self.sock)
        self.sock.connect(endpoint)
        self.header = protocol.header_prefix("json", pub_id)
        self.kept: collections.OrderedDict[int, list[bytes]] = collections.OrderedDict()
        self.queue: collections.deque[int] = collections.deque()  # seqs to send, in order
        self.brokers: dict[str, str] = {}
        self.subscribed = False
        self.acks: list[int] = []
        self.resends = 0
        self.sent = 0

    def publish(self, count: int) -> None:
        for seq in range(self.sent + 1, self.sent + count + 1):
            self.kept[seq] = [b"event/flood/runner_on_ok", self.header + b"%d}" % seq, b'{"n":%d}' % seq]
            self.queue.append(seq)
        self.sent += count

    def pump(self) -> None:
        """Read what came upstream, then send what is queued while the socket takes it."""
        while self.sock.poll(0):
            frame = self.sock.recv()
            if frame[:1] == b"\x01":
                presence = protocol.parse_presence(frame[1:])
                if presence is not None:
                    self.brokers[presence.broker] = presence.token
                else:
                    self.subscribed = True
                continue
            ack = protocol.parse_ack(frame)
            if ack is None or self.brokers.get(ack.broker) != ack.token:
                continue
            if self.id in ack.acks:
                acked = ack.acks[self.id]
                assert acked <= self.sent, f"acknowledged {acked} of {self.sent} sent"
                self.acks.append(acked)
                while self.kept and next(iter(self.kept)) <= acked:
                    self.kept.popitem(last=False)
            if self.id in ack.resend:
                self.resends += 1
                after = ack.resend[self.id]
                again = [seq for seq in self.kept if seq > after]
                queued = set(self.queue)
                self.queue.extendleft(reversed([seq for seq in again if seq not in queued]))
        while self.subscribed and self.queue:
            seq = self.queue[0]
            if seq in self.kept:
                try:
                    self.sock.send_multipart(self.kept[seq], zmq.NOBLOCK)
                except zmq.Again:
                    return
            self.queue.popleft()


def test_under_a_flood_that_overflows_the_capture_socket_acks_cover_only_what_was_recorded_and_holes_are_filled(
        tmp_path):
    count = 5_000
    with Broker([f"ipc://{tmp_path}/f"], [f"ipc://{tmp_path}/b"], [f"ipc://{tmp_path}/h"], startup_grace=0,
                capture_hwm=10) as broker:
        context = zmq.Context()
        publisher = AckingPublisher(context, broker.frontend_endpoints[0])
        try:
            publisher.publish(count)
            deadline = time.monotonic() + 120
            progress, progress_at = 0, time.monotonic()
            while (publisher.kept or publisher.queue) and time.monotonic() < deadline:
                publisher.pump()
                publisher.sock.poll(10)
                if len(publisher.acks) != progress:
                    progress, progress_at = len(publisher.acks), time.monotonic()
                elif not publisher.queue and time.monotonic() - progress_at > 1:
                    # Copies dropped at the very end of a stream leave no hole until a later message of
                    # the publisher shows it: the stream goes on (the plugin's closing report, at the latest).
                    publisher.publish(1)
                    progress_at = time.monotonic()
            assert not publisher.kept, (f"{len(publisher.kept)} never acknowledged; "
                                        f"acks {publisher.acks[-5:]}, {publisher.resends} resend requests")
            count = publisher.sent
        finally:
            publisher.sock.close(0)
            context.term()
        with Subscriber([], history=broker.history_endpoints[0]) as asker:
            info, messages = asker.request("fetch", pub=publisher.id, first=1, last=count)
            (summary,) = [p for p in asker.request("runs")[0]["publishers"] if p["publisher"] == publisher.id]
    # Everything the broker acknowledged, the publisher forgot: had an ack covered a message the
    # history never recorded, that message would be missing here.
    assert info["missing"] == [] and info["pending"] == []
    assert seqs_of(messages) == list(range(1, count + 1))
    assert publisher.resends > 0 and summary["missed"] == 0 and summary["acked"] == count
    assert publisher.acks == sorted(publisher.acks)
