"""Several history endpoints (the brokers of a redundant pair), on one machine: a history that does not
answer or refuses is passed over for the next, in the library, ``tail`` and ``zmq-emitter runs``.

The logic is once, in ``core.Dialogue`` and ``core.Histories``; the first tests drive it by hand,
the others through the shells against a real broker process, with a first history endpoint that
nobody serves (``silent``) or that refuses every request.  tests/test_network.py shows the same with
broker hosts cut off a network.
"""
from __future__ import annotations

import asyncio
import subprocess
import threading

import pytest
import zmq

from conftest import BIN, BrokerProcess, RawPublisher, wait_recorded
from consumer_helpers import finish, tail
from zmq_emitter import protocol
from zmq_emitter.consumers import AsyncSubscriber, Subscriber
from zmq_emitter.consumers.core import RESEND_FIRST, Dialogue, Histories, Request

PUB = "aaaaaaaaaaaaaaaa"


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def two_requests():
    first = yield Request("runs")
    second = yield Request("runs")
    return first, second


def test_a_request_unanswered_goes_to_the_next_history_and_later_requests_start_there():
    clock, told = Clock(), []
    histories = Histories(["ipc:///a", "ipc:///b"], told.append)
    dialogue = Dialogue(two_requests(), timeout=10.0, clock=clock, histories=histories)
    first = dialogue.outgoing()
    assert dialogue.endpoint == 0
    clock.now += RESEND_FIRST
    assert dialogue.outgoing() == first and dialogue.endpoint == 1  # the same request, to the other history
    assert told == ["the history service at ipc:///a did not answer: asking ipc:///b"]
    dialogue.incoming([first[0], b"", protocol.reply({"runs": []})[0]], 1)
    second = dialogue.outgoing()
    assert dialogue.endpoint == 1 and second[0] != first[0]  # the next request starts with the one that answered
    answer = protocol.reply({"runs": [], "from": "a"})
    dialogue.incoming([second[0], b"", *answer], 0)  # any endpoint's reply to this request will do
    assert dialogue.done and dialogue.result[1] == answer
    assert len(told) == 1


def test_a_refused_request_goes_to_the_next_history_at_once_and_only_every_refusal_reaches_the_plan():
    clock = Clock()
    histories = Histories(["ipc:///a", "ipc:///b"], lambda text: None)
    dialogue = Dialogue(two_requests(), timeout=10.0, clock=clock, histories=histories)
    first = dialogue.outgoing()
    refusal = protocol.error_reply("not here")
    dialogue.incoming([first[0], b"", *refusal], 0)
    assert dialogue.wait_ms() == 0 and dialogue.outgoing() == first and dialogue.endpoint == 1
    dialogue.incoming([first[0], b"", *protocol.reply({"runs": []})], 1)
    second = dialogue.outgoing()
    assert dialogue.endpoint == 1
    dialogue.incoming([second[0], b"", *refusal], 1)
    assert dialogue.outgoing() == second and dialogue.endpoint == 0
    dialogue.incoming([second[0], b"", *refusal], 0)  # both refused: the plan is told
    assert dialogue.done and dialogue.result[1] == list(refusal)


@pytest.fixture
def recorded(tmp_path):
    """A broker process whose history holds run ``run`` (seq 1..5, the last its final status)."""
    broker = BrokerProcess(f"ipc://{tmp_path}/frontend", f"ipc://{tmp_path}/backend", "--startup-grace", "0")
    with RawPublisher(broker.frontend, PUB) as publisher, Subscriber(broker.backend) as sub:
        publisher.until_received(sub)
        for seq in range(1, 5):
            publisher.send("run", "runner_on_ok", {"n": seq})
        publisher.send("run", "successful", {"status": "successful"}, kind="status")
        wait_recorded(broker.history, PUB, 5)
    yield broker
    broker.stop()


@pytest.fixture
def refusing(tmp_path):
    """A history endpoint that refuses every request."""
    context = zmq.Context()
    sock = context.socket(zmq.REP)
    endpoint = f"ipc://{tmp_path}/refusing"
    sock.bind(endpoint)
    stop = threading.Event()

    def refuse():
        while not stop.is_set():
            if sock.poll(50):
                sock.recv_multipart()
                sock.send_multipart(protocol.error_reply("refused for the test"))

    server = threading.Thread(target=refuse)
    server.start()
    yield endpoint
    stop.set()
    server.join()
    context.destroy(linger=0)


def test_a_subscriber_recovers_a_gap_and_replays_from_the_second_history_when_the_first_does_not_answer(
        recorded, tmp_path):
    told = []
    silent = f"ipc://{tmp_path}/silent"  # nobody serves it
    with Subscriber([], history=[silent, recorded.history], on_error=told.append) as sub:
        assert sub.resume({PUB: 1}) == 4  # seq 2..5 fetched from the second
        assert [sub.recv(timeout=5).seq for _ in range(4)] == [2, 3, 4, 5] and sub.gaps == []
        assert told == [f"the history service at {silent} did not answer: asking {recorded.history}"]
    with Subscriber([], history=[silent, recorded.history], on_error=told.append) as sub:
        assert sub.replay("run") == 5
        assert [sub.recv(timeout=5).seq for _ in range(5)] == [1, 2, 3, 4, 5]


def test_an_async_subscriber_replays_from_the_second_history_when_the_first_refuses(recorded, refusing):
    told = []

    async def main():
        async with AsyncSubscriber([], history=[refusing, recorded.history], on_error=told.append) as sub:
            assert await sub.replay("run") == 5
            return [(await sub.recv(timeout=5)).seq for _ in range(5)]

    assert asyncio.run(main()) == [1, 2, 3, 4, 5]
    assert told == [f"the history service at {refusing} refused the request: asking {recorded.history}"]


def test_zmq_emitter_runs_and_tail_replay_ask_the_next_history(recorded, tmp_path):
    silent = f"ipc://{tmp_path}/silent"
    listing = subprocess.run([str(BIN / "zmq-emitter"), "runs", "--history", silent, "--history", recorded.history],
                             capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    assert any(line.startswith("run ") and "successful" in line for line in listing.stdout.splitlines())
    code, out, err = finish(tail("--connect", recorded.backend, "--history", silent, "--history", recorded.history,
                                 "--replay", "--ident", "run", "--until-done", "--format", "json"))
    assert code == 0 and len(out.splitlines()) == 5, (out, err)
    assert f"{silent} did not answer: asking {recorded.history}" in err
