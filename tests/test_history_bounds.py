"""The history's memory and its ``runs`` reply stay bounded however many publishers come and go."""
from __future__ import annotations

from zmq_emitter import protocol
from zmq_emitter.broker.history import History


def frames(pub, seq, ident, kind="status", name="successful", size=10):
    return [protocol.topic(kind, ident, name), protocol.header_prefix("json", pub) + b"%d}" % seq,
            b'"%s"' % (b"x" * size)]


def publish_run(history, pub, ident):
    """One short-lived process: a run's two statuses, then its closing report."""
    for message in (frames(pub, 1, ident, name="running"), frames(pub, 2, ident),
                    frames(pub, 3, pub, kind="publisher", name="closed")):
        history.add(protocol.envelope(message), message)


def test_ten_thousand_short_lived_publishers_leave_a_bounded_runs_reply():
    history = History(max_runs=2, max_bytes=10_000)
    for i in range(10_000):
        publish_run(history, f"{i:016x}", f"run-{i}")
    reply = history.answer(protocol.request("runs"))[0]
    assert len(reply) < 20_000, len(reply)
    assert len(history.publishers) < 200
    info = protocol.decode_json(reply)
    assert [run["ident"] for run in info["runs"]] == ["run-9998", "run-9999"]
    # The publishers of the retained runs are all still there, with their counts and closing reports.
    listed = {p["publisher"]: p for p in info["publishers"]}
    for i in (9998, 9999):
        assert listed[f"{i:016x}"]["last_seq"] == 3 and listed[f"{i:016x}"]["closed"] is not None


def test_a_publisher_whose_run_is_forgotten_is_kept_while_the_history_still_asks_it_for_a_hole():
    history = History(max_runs=1, max_bytes=10_000)
    for message in (frames("p1", 1, "a", name="running"), frames("p1", 3, "a")):  # seq 2 missed
        history.add(protocol.envelope(message), message)
    publish_run(history, "p2", "b")  # pushes run a out
    assert "p1" in history.publishers and history.publishers["p1"].holes == [[2, 2]]
    assert history.give_up("p1") == (2, 2)
    assert "p1" not in history.publishers


def test_replay_still_reports_what_a_retained_run_lost_after_its_publisher_sent_other_runs():
    history = History(max_runs=2, max_bytes=400)
    for seq in range(1, 11):
        message = frames("p1", seq, "a", kind="event", name="runner_on_ok", size=60)
        history.add(protocol.envelope(message), message)
    messages, missing, _ = history.replay("a")
    first_kept = protocol.envelope(messages[0]).seq
    assert missing == [["p1", 1, first_kept - 1]] and first_kept > 1
