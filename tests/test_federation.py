"""Federation: runners -> edge broker -> central broker, real broker processes (docs/operations.md,
"Deployment shapes: edges and a central broker"; docs/reliability.md, "Across an edge and a central broker")."""
from __future__ import annotations

import shutil
import subprocess
import time

import pytest
import zmq

from conftest import (BIN, FINAL_STATUSES, BrokerProcess, RawPublisher, collect_run, job_events, receive, run_cli,
                      runner_env, wait_until)

from zmq_emitter import protocol, security
from zmq_emitter.broker.upstream import UpstreamLink
from zmq_emitter.consumers.subscriber import Subscriber


def edge_and_central(tmp_path, *, edge: tuple = (), central: tuple = (),
                     central_grace: float = 0) -> tuple[BrokerProcess, BrokerProcess]:
    """A central broker and an edge broker forwarding to it, each on ipc endpoints of its own directory."""
    for name in ("central", "edge"):
        (tmp_path / name).mkdir(exist_ok=True)
    central_broker = BrokerProcess(f"ipc://{tmp_path}/central/f", f"ipc://{tmp_path}/central/b",
                                   "--startup-grace", str(central_grace), *central)
    edge_broker = BrokerProcess(f"ipc://{tmp_path}/edge/f", f"ipc://{tmp_path}/edge/b", "--startup-grace", "0",
                                "--upstream", central_broker.frontend, *edge)
    return edge_broker, central_broker


def plain_sub(context: zmq.Context, endpoint: str) -> zmq.Socket:
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(endpoint)
    return sub


def collect_plain(sub: zmq.Socket, ident: str, timeout: float = 60.0) -> list[protocol.Message]:
    """Every message of run ``ident`` a plain SUB gets, up to and including its final status."""
    messages, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not sub.poll(200):
            continue
        msg = protocol.decode(sub.recv_multipart())
        if msg.ident == ident:
            messages.append(msg)
            if msg.kind == "status" and msg.name in FINAL_STATUSES:
                return messages
    raise AssertionError(f"run {ident}: no final status within {timeout}s; got {[m.name for m in messages]}")


def test_a_real_run_into_an_edge_reaches_a_plain_sub_on_the_central_broker_once_in_order(project, tmp_path):
    edge, central = edge_and_central(tmp_path)
    context = zmq.Context()
    sub = plain_sub(context, central.backend)
    try:
        with RawPublisher(edge.frontend) as prober:  # the whole path: edge, upstream link, central, this SUB
            prober.until_received(sub)
        result = run_cli(project, "federated", runner_env(RUNNER_ZMQ_URL=edge.frontend))
        assert result.returncode == 2, result.stderr  # the demo playbook fails on web2
        messages = collect_plain(sub, "federated")
    finally:
        sub.close(0)
        context.term()
        edge.stop()
        central.stop()
    assert [m.name for m in messages if m.kind == "status"] == ["starting", "running", "failed"]
    assert [m.payload for m in messages if m.kind == "event"] == job_events(project, "federated")
    # The runner's own pub and seq, end to end: one publisher, seq 1, 2, 3, ... once each.
    assert {m.publisher for m in messages} == {messages[0].publisher}
    assert [m.seq for m in messages] == list(range(1, len(messages) + 1))
    assert "lost" not in result.stderr


def test_a_central_broker_sigkilled_mid_run_gets_everything_from_the_edge_when_it_is_back(project, tmp_path):
    """The edge goes on serving its own subscribers while the central is down, then catches the central up
    from its history: the central's subscriber gets every message, with no gap it was not told of."""
    # The central's start-up grace lets its subscribers reconnect before the edge's backlog comes.
    edge, central = edge_and_central(tmp_path, central=("--history-dir", str(tmp_path / "central-journal")),
                                     central_grace=1)
    run = None
    try:
        with Subscriber([central.backend], history=central.history) as far, Subscriber([edge.backend]) as near:
            with RawPublisher(edge.frontend) as prober:
                prober.until_received(far, near)
            run = subprocess.Popen([str(BIN / "ansible-runner"), "run", str(project), "-p", "long.yml", "--ident",
                                    "cut", "--cmdline", "-e steps=40 -e pause=0.05"],
                                   env=runner_env(RUNNER_ZMQ_URL=edge.frontend), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
            before = [far.recv(timeout=30) for _ in range(20)]  # the run is under way at the central
            central.kill()
            local = collect_run(near, "cut", timeout=60)  # the edge's subscribers are served meanwhile
            assert run.wait(60) == 0
            central.start()
            rest = collect_run(far, "cut", timeout=60)
            stats = far.request("runs")[0]["publishers"]
    finally:
        if run is not None and run.poll() is None:
            run.kill()
        edge.stop()
        central.stop()
    assert all(m is not None for m in before)
    far_messages = [m for m in before if m.ident == "cut"] + rest
    seqs = [m.seq for m in far_messages]
    assert seqs == list(range(1, len(seqs) + 1))  # the library hands each out once, in order
    assert [m.payload for m in far_messages if m.kind == "event"] == job_events(project, "cut")
    assert [m.seq for m in local] == seqs
    assert far.gaps == [] or all(not gap.missing for gap in far.gaps)
    publisher = far_messages[0].publisher
    assert [p["missed"] for p in stats if p["publisher"] == publisher] == [0]
    assert "lost" not in run.stderr.read()


@pytest.mark.skipif(not zmq.has("curve"), reason="this libzmq has no CURVE")
def test_an_edge_with_an_unknown_key_is_refused_by_the_central_and_gets_through_once_its_key_is_listed(tmp_path):
    keys, listed = tmp_path / "keys", tmp_path / "central-publishers"
    listed.mkdir()
    central_public, central_secret = security.generate_keys(keys, "central")
    edge_public, edge_secret = security.generate_keys(keys, "edge")
    other_public, _ = security.generate_keys(keys, "other")
    shutil.copy(other_public, listed / "other.key")  # the central knows some publisher, not this edge
    edge, central = edge_and_central(
        tmp_path, central=("--curve-secret-key-file", str(central_secret), "--publisher-keys", str(listed)),
        edge=("--curve-secret-key-file", str(edge_secret), "--upstream-server-key", str(central_public)))
    to_edge = security.ClientCurve(security.load_public_key(edge_public))  # the edge's runners: any key
    try:
        with Subscriber([central.backend], curve_server_key=str(central_public)) as far, \
                Subscriber([edge.backend], curve_server_key=str(edge_public)) as near, \
                RawPublisher(edge.frontend, curve=to_edge) as runner:
            runner.until_received(near)
            for step in range(3):
                runner.send("keyed", "step", {"step": step})
            assert [m.seq for m in receive(near, 3, "keyed")] == [1, 2, 3]
            wait_until(lambda: "refused a CURVE client on the publishers side" in central.stderr(), 30, 0.1,
                       "the central logged the refusal")
            wait_until(lambda: "refused this edge broker" in edge.stderr(), 30, 0.1, "the edge said it was refused")
            assert far.recv(timeout=1.0) is None  # nothing got past the refused key
            shutil.copy(edge_public, listed / "edge.key")  # the operator lists the edge's key
            # The edge connects again (back-off: 30 s at most) and sends what its history holds.
            assert [m.seq for m in receive(far, 3, "keyed", timeout=60)] == [1, 2, 3]
    finally:
        edge.stop()
        central.stop()


@pytest.mark.parametrize("args, says", [
    (("--upstream", "central:5557"), "--upstream 'central:5557': the endpoint must start with tcp:// or ipc://"),
    (("--upstream", "tcp://central"), "--upstream 'tcp://central': a tcp:// endpoint is tcp://HOST:PORT"),
    (("--upstream", "tcp://127.0.0.1:1", "--history", "none"), "--upstream needs the history"),
    (("--upstream-server-key", "x" * 40), "--upstream-server-key needs --upstream"),
    (("--upstream", "tcp://127.0.0.1:1", "--upstream-server-key", "no-such-file"), "--upstream-server-key: "),
])
def test_a_bad_upstream_setting_is_refused_with_the_option_named_and_no_traceback(tmp_path, args, says):
    history = () if "--history" in args else ("--history", f"ipc://{tmp_path}/h")
    result = subprocess.run([str(BIN / "zmq-emitter"), "broker", "--frontend", f"ipc://{tmp_path}/f",
                             "--backend", f"ipc://{tmp_path}/b", *history, *args],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode in (1, 2)
    assert says in result.stderr
    assert "Traceback" not in result.stderr


def test_what_the_edge_history_forgot_before_the_central_had_it_is_logged_with_its_range_never_silent(tmp_path):
    """The bound of the hop: the edge's history.  The central, away, comes back after the edge forgot the start."""
    (tmp_path / "central").mkdir()
    central_frontend = f"ipc://{tmp_path}/central/f"
    edge = BrokerProcess(f"ipc://{tmp_path}/ef", f"ipc://{tmp_path}/eb", "--startup-grace", "0",
                         "--history-bytes", "5000", "--upstream", central_frontend)
    central = None
    try:
        with Subscriber([edge.backend]) as near, RawPublisher(edge.frontend) as runner:
            runner.until_received(near)
            for step in range(1, 51):
                runner.send("bounded", "step", {"step": step, "pad": "x" * 200})
            assert [m.seq for m in receive(near, 50, "bounded")] == list(range(1, 51))
        central = BrokerProcess(central_frontend, f"ipc://{tmp_path}/central/b", "--startup-grace", "1")
        with Subscriber([central.backend]) as far:
            got = [m.seq for m in receive(far, 50, "bounded", timeout=5)]
        wait_until(lambda: "forgotten by this broker's history" in edge.stderr(), 10, 0.1, "the loss was logged")
    finally:
        edge.stop()
        if central is not None:
            central.stop()
    assert got and got[-1] == 50 and got == list(range(got[0], 51))  # what the edge still had, in order
    lost = [line for line in edge.log if "forgotten by this broker's history" in line and "feedfacecafebeef" in line]
    assert len(lost) == 1 and f"publisher feedfacecafebeef seq 1..{got[0] - 1} " in lost[0]


def presence(name: str, token: str) -> bytes:
    return b"\x01" + protocol.presence_topic(protocol.Presence(name, token, 2**24))


def sent_all(link: UpstreamLink) -> None:
    for pub, first, last in link.due():
        for seq in range(first, last + 1):
            link.was_sent(pub, seq)


def test_a_subscription_a_central_passes_up_from_its_subscribers_sends_nothing_again():
    """A central passes up its subscribers' subscriptions (a new topic: each `tail --ident`) as well as its own:
    as long as the central takes the messages, none of them calls for what it has not acknowledged yet."""
    link = UpstreamLink()
    link.upstream(presence("central", "t1"))
    link.upstream(b"\x01")
    link.holds("p1", first=1, upto=300)
    sent_all(link)
    link.upstream(b"\x01")  # its subscribers' subscription, passed up after its own
    link.upstream(b"\x01" + protocol.run_prefix("event", "run-a"))  # a `tail --ident run-a`
    assert link.due() == []
    assert (link.sent, link.resent) == (300, 0)


def test_a_central_that_comes_back_or_a_second_central_gets_what_it_has_not_acknowledged():
    link = UpstreamLink()
    link.upstream(presence("central", "t1"))
    link.upstream(b"\x01")
    link.holds("p1", first=1, upto=10)
    sent_all(link)
    link.upstream(protocol.ack_frame(protocol.Ack("central", "t1", {"p1": 4})))
    link.upstream(b"\x00" + protocol.presence_topic(protocol.Presence("central", "t1", 2**24)))
    link.upstream(b"\x00")  # its connection went (killed): its subscriptions with it
    link.upstream(presence("central", "t2"))  # restarted
    assert link.due() == []  # not before its data subscription (after its start-up grace)
    link.upstream(b"\x01")
    assert link.due() == [("p1", 5, 10)]
    sent_all(link)
    link.upstream(protocol.ack_frame(protocol.Ack("central", "t2", {"p1": 10})))
    link.upstream(presence("other", "t3"))  # a second central, while the first takes the messages
    link.upstream(b"\x01")
    assert link.due() == [("p1", 1, 10)]
