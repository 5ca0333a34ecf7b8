"""The subscriber library at its edges: replays of runs one process published at once, the seam
between a history snapshot and live messages, a history that refuses or is slow, timeouts, cancelled
asyncio requests.  Real brokers, real sockets, real ansible-runner runs."""
from __future__ import annotations

import asyncio
import shutil
import threading
import time

import pytest
import zmq

from conftest import collect_run, job_events, wait_recorded
from consumer_helpers import BoundPublisher, LateHop, message, publisher_into, two_runs_of_one_process, wait_closed

from zmq_emitter import protocol, security
from zmq_emitter.broker import Broker
from zmq_emitter.demo import PROJECT
from zmq_emitter.consumers.subscriber import AsyncSubscriber, Gap, Subscriber, subscriptions


def drain(sub: Subscriber, quiet: float = 1.0) -> list[protocol.Message]:
    messages = []
    while (msg := sub.recv(timeout=quiet)) is not None:
        messages.append(msg)
    return messages


def test_replay_of_every_run_delivers_two_runs_of_one_process_whole_in_order_and_without_a_gap(tmp_path, broker):
    projects = (tmp_path / "a", tmp_path / "b")
    for project in projects:
        shutil.copytree(PROJECT, project)
    two_runs_of_one_process(projects, broker.frontend_endpoints[0])
    publisher = wait_closed(broker.history_endpoints[0], {"async-a", "async-b"})
    with Subscriber(broker.backend_endpoints, history=broker.history_endpoints[0]) as sub:
        queued = sub.replay()
        messages = drain(sub)
    for ident, project in zip(("async-a", "async-b"), projects):
        mine = [m for m in messages if m.ident == ident]
        assert [m.name for m in mine if m.kind == "status"] == ["starting", "running", "failed"]
        assert [m.payload for m in mine if m.kind == "event"] == job_events(project, ident)
    # The two runs interleave one publisher's sequence: every number but the closing report's, once, in order.
    assert [m.seq for m in messages] == list(range(1, publisher["last_seq"]))
    assert queued == len(messages) and sub.gaps == [] and sub.counts.missed == 0


def test_an_error_reply_from_the_history_loses_neither_the_message_that_showed_the_gap_nor_the_report(tmp_path,
                                                                                                      caplog):
    context = zmq.Context()
    refusing = context.socket(zmq.REP)  # a history service that refuses every request (another version, say)
    refusing.bind(f"ipc://{tmp_path}/history")
    stop = threading.Event()

    def refuse():
        while not stop.is_set():
            if refusing.poll(50):
                refusing.recv_multipart()
                refusing.send_multipart(protocol.error_reply("fetch refused for the test"))

    server = threading.Thread(target=refuse)
    server.start()
    try:
        publisher = BoundPublisher(context, f"ipc://{tmp_path}/runner")
        with Subscriber(publisher.endpoint, history=f"ipc://{tmp_path}/history", context=context) as sub:
            publisher.wait_subscribed(b"")
            for seq in (1, 5):
                publisher.send(message("aaaaaaaaaaaaaaaa", seq))
            got = [sub.recv(timeout=10), sub.recv(timeout=10)]
            assert [m.seq for m in got] == [1, 5]
            assert sub.gaps == [Gap("aaaaaaaaaaaaaaaa", 2, 4)] and sub.counts.missed == 3
            refusals = [r.getMessage() for r in caplog.records if "fetch refused for the test" in r.getMessage()]
            assert len(refusals) == 1  # said once (by default a log warning; on_error= to hear it yourself)
    finally:
        stop.set()
        server.join()
        context.destroy(linger=0)


def test_a_cancelled_asyncio_request_leaves_the_next_request_working(tmp_path):
    history = f"ipc://{tmp_path}/history"  # nobody there yet: the first request cannot be answered

    async def main():
        async with AsyncSubscriber([], history=history, history_timeout=30) as sub:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(sub.request("runs"), 0.2)
            broker = Broker([f"ipc://{tmp_path}/f"], [f"ipc://{tmp_path}/b"], [history], startup_grace=0).start()
            try:
                answer = await asyncio.wait_for(sub.request("runs"), 30)
                replayed = await asyncio.wait_for(sub.replay("nothing-yet"), 30)
            finally:
                broker.stop()
            return answer, replayed

    answer, replayed = asyncio.run(main())
    assert answer is not None and answer[0]["runs"] == [] and replayed == 0


def test_a_history_request_lost_with_a_broker_that_died_is_sent_again_to_the_one_that_replaced_it(tmp_path):
    """A broker killed between receiving a request and replying takes the request with it; the library sends
    it again (the DEALER reconnects to the restarted broker) instead of waiting out its timeout and reporting a
    whole gap as lost."""
    history = f"ipc://{tmp_path}/history"
    context = zmq.Context()
    dying = context.socket(zmq.ROUTER)  # stands for the history socket of a broker about to be SIGKILLed
    dying.bind(history)
    answers = []
    with Subscriber([], history=history, history_timeout=60, context=context) as sub:
        asking = threading.Thread(target=lambda: answers.append(sub.request("runs")))
        asking.start()
        assert dying.poll(30_000), "the request never reached the first broker"
        dying.recv_multipart()
        dying.close(linger=0)  # gone without a reply
        replacement = context.socket(zmq.ROUTER)
        replacement.bind(history)
        assert replacement.poll(40_000), "the request was not sent again to the broker that replaced the first"
        routing, request_id, empty, request = replacement.recv_multipart()
        assert protocol.decode_json(request)["op"] == "runs"
        replacement.send_multipart([routing, request_id, empty, *protocol.reply({"runs": []})])
        asking.join(60)
        replacement.close(linger=0)
    context.term()
    assert answers == [({"ok": True, "runs": []}, [])]


def test_recv_timeout_bounds_the_whole_call_under_a_stream_of_repeats_and_garbage(tmp_path):
    context = zmq.Context()
    publisher = BoundPublisher(context, f"ipc://{tmp_path}/runner")
    stop, guard_expired = threading.Event(), threading.Event()

    def repeat():
        deadline = time.monotonic() + 60
        while not stop.is_set():
            if time.monotonic() > deadline:
                guard_expired.set()
                return
            publisher.send(message("aaaaaaaaaaaaaaaa", 1))  # seen already: a repeat
            publisher.send([b"event/garbage"])              # not a message
            time.sleep(0.001)

    try:
        with Subscriber(publisher.endpoint, context=context, on_invalid=lambda *_: None) as sub:
            publisher.wait_subscribed(b"")
            publisher.send(message("aaaaaaaaaaaaaaaa", 1))
            assert sub.recv(timeout=10).seq == 1
            sender = threading.Thread(target=repeat)
            sender.start()
            try:
                assert sub.recv(timeout=0.5) is None
                assert not guard_expired.is_set(), "recv returned only once the repeats stopped"
            finally:
                stop.set()
                sender.join()
            assert sub.counts.duplicates > 0 and sub.counts.invalid > 0
    finally:
        context.destroy(linger=0)


def publish(sock: zmq.Socket, pub: str, seqs: range, ident: str = "seam", final: int | None = None) -> None:
    """Events of run ``ident`` (the last one, ``final``, its final status), at a playbook's pace."""
    for seq in seqs:
        if seq == final:
            sock.send_multipart(message(pub, seq, "status", ident, "successful",
                                        {"status": "successful", "runner_ident": ident}))
        else:
            sock.send_multipart(message(pub, seq, "event", ident, "runner_on_ok"))
        if seq % 20 == 0:
            time.sleep(0.005)


def test_a_replay_filtered_by_ident_gets_what_passed_before_its_subscription_reached_the_broker(tmp_path, broker):
    """The seam, by design: the live subscription reaches the broker only through a hop started late,
    long after the snapshot; gap recovery cannot help (a subscription to one run tracks no gaps)."""
    context = zmq.Context()
    pub, history = "5eam5eam5eam5eam", broker.history_endpoints[0]
    hop = LateHop(context, broker.backend_endpoints[0], f"ipc://{tmp_path}/hop")
    try:
        sock = publisher_into(context, broker.frontend_endpoints[0])
        publish(sock, pub, range(1, 101))
        wait_recorded(history, pub, 100)
        with Subscriber(hop.endpoint, subscriptions(ident="seam"), history=history, context=context) as sub:
            assert not sub.tracker.track_gaps
            assert sub.replay("seam") == 100
            publish(sock, pub, range(101, 151))  # while the subscription is not in place
            wait_recorded(history, pub, 150)
            hop.start()
            later = threading.Thread(target=publish, args=(sock, pub, range(151, 302)), kwargs={"final": 301})
            later.start()
            messages = collect_run(sub, "seam")
            later.join()
        assert [m.seq for m in messages] == list(range(1, 302))  # every message once, in order
        assert sub.counts.recovered == 0 and sub.gaps == []
    finally:
        hop.stop()
        context.destroy(linger=0)


@pytest.mark.parametrize("topics", [["event/seam/", "status/seam/"], [""]], ids=["one-run", "everything"])
def test_a_replay_gets_the_end_of_a_run_that_ended_before_the_subscription_was_in_place(tmp_path, broker, topics):
    """No live message ever comes: the history is asked again, so the run's end still arrives."""
    context = zmq.Context()
    pub, history = "e11de11de11de11d", broker.history_endpoints[0]
    try:
        sock = publisher_into(context, broker.frontend_endpoints[0])
        publish(sock, pub, range(1, 51))
        wait_recorded(history, pub, 50)
        hop = f"ipc://{tmp_path}/never-started"  # the live path never comes up
        with Subscriber(hop, topics, history=history, context=context) as sub:
            assert sub.replay("seam") == 50
            publish(sock, pub, range(51, 81), final=80)
            wait_recorded(history, pub, 80)
            messages = collect_run(sub, "seam")
        assert [m.seq for m in messages] == list(range(1, 81)) and sub.gaps == []
    finally:
        context.destroy(linger=0)


def test_an_asyncio_subscriber_refused_by_a_curve_broker_says_so_once_and_gets_in_once_its_key_is_added(tmp_path):
    keys, allowed = tmp_path / "keys", tmp_path / "subscribers"
    for name in ("broker", "watcher"):
        security.generate_keys(keys, name)
    allowed.mkdir()
    broker = Broker([f"ipc://{tmp_path}/f"], [f"ipc://{tmp_path}/b"], [], startup_grace=0,
                    curve=security.ServerCurve.load(keys / "broker.key_secret", None, allowed)).start()
    context = zmq.Context()
    told = []

    async def main():
        async with AsyncSubscriber(broker.backend_endpoints, curve_server_key=str(keys / "broker.key"),
                                   curve_secret_key_file=str(keys / "watcher.key_secret"), on_error=told.append) as sub:
            deadline = time.monotonic() + 30
            while not told and time.monotonic() < deadline:
                assert await sub.recv(timeout=0.1) is None
            shutil.copy(keys / "watcher.key", allowed / "watcher.key")  # the operator adds the key
            sock = publisher_into(context, broker.frontend_endpoints[0],
                                  security.ClientCurve.load(str(keys / "broker.key"), None))
            for seq in range(1, 6000):  # until the subscriber is let in
                sock.send_multipart(message("c0ffeec0ffeec0ff", seq))
                if (msg := await sub.recv(timeout=0.01)) is not None:
                    return msg
        return None

    try:
        msg = asyncio.run(main())
    finally:
        context.destroy(linger=0)
        broker.stop()
    assert msg is not None and msg.publisher == "c0ffeec0ffeec0ff"
    assert len(told) == 1 and "refused this subscriber (CURVE key not allowed" in told[0]
