"""The broker's history: bounded, honest about what it forgot, served over REQ/REP, acknowledged upstream."""
import zmq

from conftest import collect_run, job_events, run_cli, runner_env, wait_subscribed

from zmq_emitter import protocol
from zmq_emitter.broker.history import History
from zmq_emitter.consumers.subscriber import Subscriber


def frames(ident, seq, kind="event", name="runner_on_ok", pub="p1", size=10):
    return [protocol.topic(kind, ident, name), protocol.header_prefix("json", pub) + b"%d}" % seq, b"x" * size]


def record(history, *messages):
    for message in messages:
        history.add(protocol.envelope(message), message)


def test_history_forgets_the_least_recently_active_run_beyond_its_run_bound():
    history = History(max_runs=2, max_bytes=2**20)
    record(history, frames("a", 1), frames("b", 2), frames("a", 3), frames("c", 4))
    assert [run["ident"] for run in history.runs()] == ["a", "c"]


def test_history_reports_what_its_byte_bound_pushed_out_as_missing():
    history = History(max_runs=10, max_bytes=200)
    record(history, *(frames("a", seq, size=50) for seq in range(1, 11)))
    messages, missing, _ = history.replay("a")
    kept = [protocol.envelope(m).seq for m in messages]
    assert kept == list(range(kept[0], 11)) and kept[0] > 1
    assert missing == [["p1", 1, kept[0] - 1]]
    fetched, fetch_missing = history.fetch("p1", 1, 10)
    assert len(fetched) == len(kept) and fetch_missing == [["p1", 1, kept[0] - 1]]


def test_history_keeps_a_resent_message_once_and_counts_the_duplicate():
    history = History()
    record(history, frames("a", 1), frames("a", 2), frames("a", 2))
    assert len(history.replay("a")[0]) == 2
    assert history.publishers["p1"].duplicates == 1


def test_history_answers_a_malformed_request_with_an_error_not_an_exception():
    history = History()
    for request in (b"not json", b"[]", b'{"op": "explode"}', b'{"op": "fetch", "pub": "p"}'):
        info = protocol.decode_json(history.answer(request)[0])
        assert info["ok"] is False and info["error"]


def test_fetch_lists_as_missing_only_what_was_published_and_says_where_a_cut_request_goes_on():
    history = History()
    record(history, frames("a", 1), frames("a", 3))
    fetch = lambda first, last: protocol.parse_reply(history.answer(protocol.request(  # noqa: E731
        "fetch", pub="p1", first=first, last=last)))[0]
    beyond = fetch(1, 10)  # 2 is a hole (pending); 4..10 not published yet: neither is missing
    assert beyond["count"] == 2 and beyond["missing"] == [] and beyond["pending"] == [["p1", 2, 2]]
    assert beyond["last_seq"] == 3 and "next" not in beyond
    history.give_up("p1")
    assert fetch(1, 10)["missing"] == [["p1", 2, 2]]
    cut = fetch(1, protocol.MAX_FETCH + 50)
    assert cut["next"] == protocol.MAX_FETCH + 1  # the reply covers MAX_FETCH numbers: ask again from there
    for first, last in ((0, 5), (-3, 2), (5, 4)):
        refused = protocol.decode_json(history.answer(protocol.request("fetch", pub="p1", first=first, last=last))[0])
        assert refused["ok"] is False and "1 <= first <= last" in refused["error"]


def test_broker_serves_a_real_runs_history_and_acknowledges_the_publisher(project, broker):
    with Subscriber(broker.backend_endpoints) as sub:
        wait_subscribed(broker.frontend_endpoints[0], sub)
        result = run_cli(project, "hist", runner_env(RUNNER_ZMQ_URL=broker.frontend_endpoints[0]))
        live = collect_run(sub, "hist")
    # No "sent but never acknowledged" line: the broker acknowledged everything before exit.
    assert "never acknowledged" not in result.stderr, result.stderr
    context = zmq.Context.instance()
    req = context.socket(zmq.REQ)
    req.connect(broker.history_endpoints[0])
    try:
        req.send(protocol.request("runs"))
        info, _ = protocol.parse_reply(req.recv_multipart())
        run = next(r for r in info["runs"] if r["ident"] == "hist")
        assert run["status"] == "failed" and run["messages"] == len(live)
        closed = [p["closed"] for p in info["publishers"] if p["closed"]]
        assert closed and closed[0]["published"] == len(live) and closed[0]["dropped"] == 0

        req.send(protocol.request("replay", ident="hist", from_seq=1))
        info, replayed = protocol.parse_reply(req.recv_multipart())
    finally:
        req.close(linger=0)
    assert info["missing"] == []
    decoded = [protocol.decode(m) for m in replayed]
    assert [(m.publisher, m.seq) for m in decoded] == [(m.publisher, m.seq) for m in live]
    assert [m.payload for m in decoded if m.kind == "event"] == job_events(project, "hist")


def test_zmq_emitter_runs_lists_the_runs_the_broker_knows_with_their_last_status(project, broker):
    import subprocess
    from conftest import BIN

    run_cli(project, "listed", runner_env(RUNNER_ZMQ_URL=broker.frontend_endpoints[0]), fail_host="none")
    listing = subprocess.run([str(BIN / "zmq-emitter"), "runs", "--history", broker.history_endpoints[0]],
                             capture_output=True, text=True, timeout=30)
    assert listing.returncode == 0, listing.stderr
    row = next(line for line in listing.stdout.splitlines() if line.startswith("listed "))
    assert row.split()[1] == "successful"


def test_zmq_emitter_runs_says_when_no_history_service_answers(tmp_path):
    import subprocess
    from conftest import BIN

    result = subprocess.run([str(BIN / "zmq-emitter"), "runs", "--history", f"ipc://{tmp_path}/nobody",
                             "--timeout", "0.5"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert result.stderr.strip().startswith("zmq-emitter: runs: no answer from the history service")
    assert "Traceback" not in result.stderr


def test_a_history_on_disk_comes_back_whole_in_a_new_history(tmp_path):
    first = History(max_runs=10, max_bytes=2**20)
    first.persist_to(tmp_path / "journal")
    record(first, *(frames("a", seq) for seq in range(1, 6)), frames("b", 6, kind="status", name="failed"),
           frames("", 7, kind="publisher", name="closed"))
    first.sync()  # what the broker does before acknowledging; then the end of its process (as after a SIGKILL)
    first.close()  # releases the directory's lock, as the end of the process does

    again = History(max_runs=10, max_bytes=2**20)
    assert again.persist_to(tmp_path / "journal") == 7
    assert [(run["ident"], run["status"]) for run in again.runs()] == [("a", None), ("b", "failed")]
    assert again.replay("a") == first.replay("a")
    assert again.fetch("p1", 1, 7) == first.fetch("p1", 1, 7) and again.fetch("p1", 1, 7)[1] == []
    assert again.acks() == {"p1": 7}
    record(again, frames("a", 7))  # a publisher sending again what was recorded before the restart
    assert again.publishers["p1"].duplicates == 1


def test_a_record_cut_short_by_a_kill_is_dropped_and_the_journal_goes_on_after_it(tmp_path):
    first = History()
    first.persist_to(tmp_path)
    record(first, frames("a", 1), frames("a", 2))
    first.sync()
    first.close()  # the process ends: the directory's lock goes with it
    (segment,) = tmp_path.glob("segment-*.log")
    segment.write_bytes(segment.read_bytes()[:-3])  # the broker died in the middle of writing seq 2

    again = History()
    assert again.persist_to(tmp_path) == 1
    record(again, frames("a", 2), frames("a", 3))
    again.sync()
    again.close()
    third = History()
    assert third.persist_to(tmp_path) == 3
    assert [protocol.envelope(m).seq for m in third.replay("a")[0]] == [1, 2, 3]


def test_the_journal_on_disk_stays_within_its_byte_bound(tmp_path):
    history = History(max_bytes=2**20)
    history.persist_to(tmp_path)
    record(history, *(frames("a", seq, size=10_000) for seq in range(1, 1001)))  # 10 MB through a 1 MiB history
    history.sync()
    on_disk = sum(f.stat().st_size for f in tmp_path.glob("segment-*.log"))
    assert on_disk <= 2**20 + history.journal.segment_bytes + 10_100
    assert {oct(f.stat().st_mode & 0o777) for f in tmp_path.glob("segment-*.log")} == {"0o600"}
    history.close()
    again = History(max_bytes=2**20)
    again.persist_to(tmp_path)
    messages, missing, _ = again.replay("a")
    assert missing == [["p1", 1, protocol.envelope(messages[0]).seq - 1]]  # what the bound dropped is reported
    assert protocol.envelope(messages[-1]).seq == 1000
