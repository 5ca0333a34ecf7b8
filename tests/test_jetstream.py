"""The broker's history on NATS JetStream (``--jetstream``), against a real 3-node nats-server cluster.

The cluster runs on free loopback ports with a store directory per node under the test's tmp
directory; nodes are SIGKILLed and started again on the same ports and directories.  Runs are
real ``ansible-runner run`` processes through a real broker process.  Without ``nats-server``
(``python3 dev.py test`` installs it when it may) or ``nats-py`` the tests skip, saying why.
"""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest


from conftest import (BIN, BrokerProcess, FINAL_STATUSES, RawPublisher, job_events, run_cli, runner_env,
                      wait_run_recorded, wait_until)
from test_disk_full import small_disk  # noqa: F401 (a fixture: a 2 MiB tmpfs)
from test_metrics import scrape
from zmq_emitter import protocol
from zmq_emitter.broker.jetstream import frames_of
from zmq_emitter.consumers.subscriber import Subscriber

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.nats_cluster import NATS_SERVER, NatsCluster  # noqa: E402 (shared with benchmarks/stores.py)

nats = pytest.importorskip("nats", reason="nats-py not installed: pip install '.[jetstream]' (dev.py does)")
import nats.js.errors  # noqa: E402 (after the skip: nats-py may be missing)
pytestmark = pytest.mark.skipif(NATS_SERVER is None, reason="nats-server not installed (apt-get install "
                                                            "nats-server; `python3 dev.py test` does it as root)")
STREAM = "ZMQ_EMITTER"


def stored_messages(urls: str) -> list[tuple[str, list[bytes]]]:
    """Every message of the stream, in stream order: (Nats-Msg-Id, protocol frames)."""
    async def read() -> list:
        nc = await nats.connect(urls.split(","), connect_timeout=2)
        try:
            jsm = nc.jsm()
            state = (await jsm.stream_info(STREAM)).state
            out = []
            for seq in range(state.first_seq, state.last_seq + 1):
                msg = await jsm.get_msg(STREAM, seq)
                out.append((msg.headers["Nats-Msg-Id"], frames_of(msg.headers, msg.data)))
            return out
        finally:
            await nc.close()
    return asyncio.run(read())


@pytest.fixture
def cluster(tmp_path):
    nodes = NatsCluster(tmp_path / "nats")
    try:
        nodes.wait_ready()
        yield nodes
    finally:
        nodes.stop()


@pytest.fixture
def broker(tmp_path, cluster):
    """``zmq-emitter broker --jetstream`` on the cluster, stream of 3 replicas, in its own process."""
    proc = BrokerProcess(f"ipc://{tmp_path}/frontend", f"ipc://{tmp_path}/backend", "--startup-grace", "0",
                         "--jetstream", cluster.urls, "--jetstream-replicas", "3")
    yield proc
    proc.stop()


def assert_stored_once_in_order(urls: str, idents: list[str], *, in_stream_order: bool = True) -> dict:
    """Every message of the runs ``idents`` is in the stream exactly once by <pub>:<seq>, each publisher's
    seqs 1..N with none missing (and in stream order per publisher if ``in_stream_order``); per publisher
    its seqs."""
    stored = stored_messages(urls)
    ids = [msg_id for msg_id, _ in stored]
    assert len(ids) == len(set(ids)), f"stored twice: {sorted({i for i in ids if ids.count(i) > 1})}"
    seqs: dict[str, list[int]] = {}
    for msg_id, frames in stored:
        env = protocol.envelope(frames)
        assert msg_id == f"{env.publisher}:{env.seq}"
        if env.ident in idents or env.kind == "publisher":
            seqs.setdefault(env.publisher, []).append(env.seq)
    for pub, numbers in seqs.items():
        assert sorted(numbers) == list(range(1, max(numbers) + 1)), f"publisher {pub}: not every seq stored once"
        if in_stream_order:
            assert numbers == sorted(numbers), f"publisher {pub}: stored out of order"
    for ident in idents:
        statuses = [protocol.envelope(f).name for _, f in stored
                    if protocol.envelope(f).ident == ident and protocol.envelope(f).kind == "status"]
        assert FINAL_STATUSES & set(statuses), f"run {ident}: no final status stored ({statuses})"
    return seqs


def assert_run_stored(result, project: Path, urls: str, ident: str) -> None:
    """The run ended as the demo does (web2 fails), nothing spooled (all acknowledged), all of it stored once."""
    assert result.returncode == 2, result.stderr
    assert "spool" not in result.stderr, result.stderr
    assert_stored_once_in_order(urls, [ident], in_stream_order=False)
    assert events_of(urls, ident) == len(job_events(project, ident))


def events_of(urls: str, ident: str) -> int:
    return sum(1 for _, f in stored_messages(urls) if protocol.envelope(f).ident == ident
               and protocol.envelope(f).kind == "event")


def test_every_message_of_real_runs_is_stored_once_in_order(project, cluster, broker):
    env = runner_env(RUNNER_ZMQ_URL=broker.frontend)
    for ident in ("js-run-1", "js-run-2"):
        result = run_cli(project, ident, env)
        assert result.returncode == 2, result.stderr  # web2 fails
        assert "spool" not in result.stderr, result.stderr  # every message acknowledged: nothing kept
    assert_stored_once_in_order(cluster.urls, ["js-run-1", "js-run-2"])
    for ident in ("js-run-1", "js-run-2"):
        assert events_of(cluster.urls, ident) == len(job_events(project, ident))


def stream_leader(urls: str) -> int:
    """The index of the node leading the stream, once the broker has made the stream."""
    async def leader() -> str | None:
        nc = await nats.connect(urls.split(","), connect_timeout=2)
        try:
            return (await nc.jsm().stream_info(STREAM)).cluster.leader
        except nats.js.errors.NotFoundError:
            return None
        finally:
            await nc.close()
    found = []
    wait_until(lambda: found.append(asyncio.run(leader())) or found[-1], 30, 0.1, "the stream made, with a leader")
    return int(found[-1].removeprefix("node"))


def run_in_background(project: Path, ident: str, env: dict, broker: BrokerProcess) -> Future:
    """``run_cli`` in a thread; returns once the broker's history has seen the run start."""
    future = ThreadPoolExecutor(1).submit(run_cli, project, ident, env)
    with Subscriber([], history=broker.history) as asker:
        wait_until(lambda: any(run["ident"] == ident for run in asker.runs()), 60, 0.05, f"run {ident} started")
    return future


def test_a_nats_node_killed_mid_run_loses_nothing_and_stores_nothing_twice(project, cluster, broker):
    env = runner_env(RUNNER_ZMQ_URL=broker.frontend, RUNNER_ZMQ_LINGER="60000")
    run = run_in_background(project, "js-node-kill", env, broker)  # the stream exists by now
    leader = stream_leader(cluster.urls)
    cluster.kill(leader)  # the stream's leader: JetStream elects another, publishes in between are retried
    result = run.result(120)
    assert_run_stored(result, project, cluster.urls, "js-node-kill")


def test_the_broker_killed_and_restarted_mid_run_loses_nothing_and_stores_nothing_twice(project, cluster, broker):
    env = runner_env(RUNNER_ZMQ_URL=broker.frontend, RUNNER_ZMQ_LINGER="60000")
    run = run_in_background(project, "js-broker-kill", env, broker)
    broker.kill()
    broker.start()  # an empty memory: the runner sends again what was not acknowledged, JetStream keeps one copy
    result = run.result(120)
    assert_run_stored(result, project, cluster.urls, "js-broker-kill")


def test_nats_down_for_seconds_stops_acknowledgements_then_catches_up_with_nothing_lost_or_twice(project, cluster,
                                                                                               broker):
    env = runner_env(RUNNER_ZMQ_URL=broker.frontend, RUNNER_ZMQ_LINGER="60000")
    run = run_in_background(project, "js-nats-down", env, broker)
    wait_until(lambda: "storing in stream" in broker.stderr(), 30, 0.1, "the broker stores in JetStream")
    cluster.stop()
    wait_until(lambda: "NATS unreachable" in broker.stderr(), 30, 0.1, "the broker says NATS is unreachable")
    wait_run_recorded(broker.history, "js-nats-down", 60)  # forwarding and the memory history go on
    time.sleep(3)  # NATS stays down for a while after the run ended: the runner still waits, unacknowledged
    assert not run.done(), "the runner stopped waiting: acknowledged what JetStream had not stored"
    for i in range(3):
        cluster.start(i)
    result = run.result(120)  # acknowledgements resumed: the runner's linger ends before its 60 s
    wait_until(lambda: broker.stderr().count("storing in stream") == 2, 10, 0.1, "one log line: NATS back")
    assert broker.stderr().count("NATS unreachable") == 1, broker.stderr()  # one line per change of state
    assert_run_stored(result, project, cluster.urls, "js-nats-down")


def test_tail_replay_after_a_broker_restart_with_empty_memory_is_served_from_jetstream(project, cluster, broker):
    ident = "js.replay *>"  # dots and wildcards in the ident: one subject token all the same
    result = run_cli(project, ident, runner_env(RUNNER_ZMQ_URL=broker.frontend))
    assert result.returncode == 2, result.stderr
    broker.kill()
    broker.start()
    wait_until(lambda: broker.stderr().count("storing in stream") == 2, 30, 0.1, "restarted broker on NATS")
    tail = subprocess.run([str(BIN / "zmq-emitter"), "tail", "--connect", broker.backend, "--history",
                           broker.history, "--replay", "--ident", ident, "--until-done", "--format", "json",
                           "--timeout", "30"], capture_output=True, text=True, timeout=60)
    assert tail.returncode == 1, tail.stderr + broker.stderr()  # --until-done: the run failed (web2)
    lines = [json.loads(line) for line in tail.stdout.splitlines()]
    assert [line["status"] for line in lines if "event" not in line] == ["starting", "running", "failed"]
    assert [line for line in lines if "event" in line] == job_events(project, ident)


def test_the_store_metrics_follow_nats_going_down_and_coming_back(tmp_path, cluster):
    """jetstream_up 1 -> 0 -> 1; the backlog grows by what came while NATS was down, then drains into the stream."""
    from test_metrics import metrics_broker, wait_metrics

    broker, url = metrics_broker(tmp_path, "--jetstream", cluster.urls)
    label = f'{{stream="{STREAM}"}}'
    try:
        with RawPublisher(broker.frontend) as pub:
            first = pub.frames("js-metrics", "first", {"n": 1})
            wait_until(lambda: pub.send_frames(first) or
                       scrape(url).get("zmq_emitter_broker_history_messages_recorded_total") == 1, 30, 0.1,
                       "the first message recorded")
            wait_metrics(url, {f"jetstream_up{label}": 1, f"jetstream_backlog_messages{label}": 0,
                               f"jetstream_messages_stored_total{label}": 1})
            cluster.stop()
            wait_metrics(url, {f"jetstream_up{label}": 0})
            for n in range(20):
                pub.send("js-metrics", "while-down", {"n": n})
            wait_metrics(url, {f"jetstream_backlog_messages{label}": 20, f"jetstream_messages_stored_total{label}": 1})
            for i in range(3):
                cluster.start(i)
            wait_metrics(url, {f"jetstream_up{label}": 1, f"jetstream_backlog_messages{label}": 0,
                               f"jetstream_messages_stored_total{label}": 21, f"jetstream_messages_lost_total{label}": 0},
                         timeout=60)
    finally:
        broker.stop()


# -- a hostile pass: careless operators, hostile publishers, servers that hang --------------------------------


def store_metric(url: str, name: str) -> float | None:
    return scrape(url).get(f'zmq_emitter_broker_jetstream_{name}{{stream="{STREAM}"}}')


def send_recorded(url: str, pub: RawPublisher, frames: list[bytes], recorded: int) -> None:
    """Send ``frames`` (again, until the connection is up) until the history has recorded ``recorded`` messages."""
    wait_until(lambda: pub.send_frames(frames) or
               scrape(url).get("zmq_emitter_broker_history_messages_recorded_total") == recorded, 30, 0.1,
               f"{recorded} messages recorded")


def test_a_message_over_nats_max_payload_is_counted_and_passed_over_so_later_ones_are_stored_and_acknowledged(
        tmp_path, cluster):
    from test_metrics import metrics_broker

    broker, url = metrics_broker(tmp_path, "--jetstream", cluster.urls, "--max-message-size", str(4 * 2**20))
    try:
        with RawPublisher(broker.frontend) as pub:
            send_recorded(url, pub, pub.frames("js-big", "small", {"n": 1}), 1)
            pub.send("js-big", "huge", {"stdout": "x" * (2 * 2**20)})  # over NATS's 1 MiB max_payload
            pub.send("js-big", "small", {"n": 3})
            wait_until(lambda: store_metric(url, "messages_too_large_total") == 1
                       and store_metric(url, "backlog_messages") == 0, 30, 0.1, "seq 2 passed over, 3 stored")
        assert [msg_id for msg_id, _ in stored_messages(cluster.urls)] == [f"{pub.pub_id}:1", f"{pub.pub_id}:3"]
        assert f"publisher {pub.pub_id} seq 2:" in broker.stderr() and "max_payload" in broker.stderr()
    finally:
        broker.stop()


def test_with_jetstream_the_broker_announces_a_max_message_size_that_fits_nats_so_runners_cut_larger_events(
        tmp_path, cluster):
    import zmq

    broker = BrokerProcess(f"ipc://{tmp_path}/f", f"ipc://{tmp_path}/b", "--startup-grace", "0",
                           "--jetstream", cluster.urls)
    context = zmq.Context()
    runner = context.socket(zmq.XPUB)  # a runner's socket: the broker's presence arrives as a subscription
    try:
        runner.connect(broker.frontend)
        presence = None
        while presence is None:  # the broker's data subscription may come first
            assert runner.poll(10_000), "no presence from the broker"
            presence = protocol.parse_presence(runner.recv()[1:])
        assert presence.max_message_size == 2**20 - 64 * 1024
    finally:
        runner.close(0)
        context.term()
        broker.stop()


IDENTS = ["js.dots.in.it", "js *>", "js with spaces", "js-ünïcødé-✓", "js-" + "long" * 1500, "é" * 2000]


def test_idents_with_dots_wildcards_spaces_unicode_or_thousands_of_characters_are_stored_listed_and_replayed(
        tmp_path, cluster):
    from test_metrics import metrics_broker

    broker, url = metrics_broker(tmp_path, "--jetstream", cluster.urls)
    try:
        with RawPublisher(broker.frontend) as pub:
            frames = [pub.frames(ident, name, {"ident": ident}, kind=kind)
                      for ident in IDENTS for kind, name in (("status", "starting"), ("event", "x.y *"),
                                                             ("status", "successful"))]
            send_recorded(url, pub, frames[0], 1)
            for f in frames[1:]:
                pub.send_frames(f)
            wait_until(lambda: store_metric(url, "messages_stored_total") == len(frames), 30, 0.2, "all stored")
        assert [msg_id for msg_id, _ in stored_messages(cluster.urls)] == \
            [f"{pub.pub_id}:{seq}" for seq in range(1, len(frames) + 1)]
        broker.kill()
        broker.start()  # an empty memory: runs and replays come from the stream
        wait_until(lambda: broker.stderr().count("storing in stream") == 2, 30, 0.1, "restarted broker on NATS")
        with Subscriber([], history=broker.history, history_timeout=30) as asker:
            runs = {run["ident"]: run for run in asker.runs()}
            for ident in IDENTS:
                assert runs[ident]["status"] == "successful", ident[:40]
                info, messages = asker.request("replay", ident=ident)
                assert [protocol.envelope(m).ident for m in messages] == [ident] * 3, ident[:40]
    finally:
        broker.stop()


def test_a_stream_of_that_name_with_other_subjects_is_left_as_it_is_and_the_log_says_what_to_fix(tmp_path, cluster):
    async def make_foreign_stream() -> None:
        from nats.js import api
        nc = await nats.connect(cluster.urls.split(","))
        try:
            await nc.jsm().add_stream(api.StreamConfig(name=STREAM, subjects=["orders.>"]))
        finally:
            await nc.close()

    asyncio.run(make_foreign_stream())
    assert asyncio.run(nats_stream_subjects(cluster.urls)) == ["orders.>"]
    broker = BrokerProcess(f"ipc://{tmp_path}/f", f"ipc://{tmp_path}/b", "--startup-grace", "0",
                           "--jetstream", cluster.urls)
    try:
        wait_until(lambda: "exists with subjects" in broker.stderr(), 30, 0.1, "the broker says the stream is taken")
        assert "--jetstream-stream" in broker.stderr() and "--jetstream-prefix" in broker.stderr()
        assert "storing in stream" not in broker.stderr()
    finally:
        broker.stop()
    assert asyncio.run(nats_stream_subjects(cluster.urls)) == ["orders.>"]  # not taken over


async def nats_stream_subjects(urls: str) -> list[str]:
    nc = await nats.connect(urls.split(","))
    try:
        return (await nc.jsm().stream_info(STREAM)).config.subjects
    finally:
        await nc.close()


def test_wrong_nats_credentials_are_said_in_one_line_naming_the_settings_and_a_right_token_file_works(tmp_path):
    with NatsCluster(tmp_path / "auth", size=1, extra=("--auth", "s3cret")) as node:
        node.wait_ready(token="s3cret")
        wrong, right = tmp_path / "wrong", tmp_path / "right"
        wrong.write_text("guess\n")
        right.write_text("s3cret\n")
        broker = BrokerProcess(f"ipc://{tmp_path}/f", f"ipc://{tmp_path}/b", "--startup-grace", "0",
                               "--jetstream", node.urls, "--jetstream-token-file", str(wrong))
        try:
            wait_until(lambda: "refused the credentials" in broker.stderr(), 30, 0.1, "the refusal said")
            assert "--jetstream-token-file" in broker.stderr() and "guess" not in broker.stderr()
            time.sleep(2)  # it goes on trying: still one line
            assert broker.stderr().count("refused the credentials") == 1, broker.stderr()
        finally:
            broker.stop()
        broker = BrokerProcess(f"ipc://{tmp_path}/f2", f"ipc://{tmp_path}/b2", "--startup-grace", "0",
                               "--jetstream", node.urls, "--jetstream-token-file", str(right))
        try:
            wait_until(lambda: "storing in stream" in broker.stderr(), 30, 0.1, "stored with the right token")
        finally:
            broker.stop()


@pytest.mark.parametrize("problem", ["a directory", "empty", "not utf-8"])
def test_an_unusable_credentials_file_is_refused_at_start_naming_the_option(tmp_path, problem):
    path = {"a directory": tmp_path, "empty": tmp_path / "empty", "not utf-8": tmp_path / "bin"}[problem]
    if problem == "empty":
        path.write_text("")
    elif problem == "not utf-8":
        path.write_bytes(b"\xff\xfe\x00")
    result = subprocess.run([str(BIN / "zmq-emitter"), "broker", "--frontend", f"ipc://{tmp_path}/f", "--backend",
                             f"ipc://{tmp_path}/b", "--jetstream", "nats://127.0.0.1:4222",
                             "--jetstream-token-file", str(path)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "--jetstream-token-file" in result.stderr and str(path) in result.stderr


def test_a_nats_server_that_hangs_is_left_for_another_and_acknowledgements_go_on(tmp_path, cluster):
    from test_metrics import metrics_broker

    broker, url = metrics_broker(tmp_path, "--jetstream", cluster.urls, "--jetstream-replicas", "3")
    try:
        with RawPublisher(broker.frontend) as pub:
            send_recorded(url, pub, pub.frames("js-hang", "first", {}), 1)
            wait_until(lambda: store_metric(url, "messages_stored_total") == 1, 30, 0.1, "the first stored")
            port = int(broker.stderr().split("storing in stream ZMQ_EMITTER at 127.0.0.1:")[1].split(";")[0])
            hung = cluster.ports.index(port)
            cluster.pause(hung)  # SIGSTOP: its TCP connections stay open, it answers nothing
            try:
                for n in range(10):
                    pub.send("js-hang", "while-hung", {"n": n})
                wait_until(lambda: store_metric(url, "messages_stored_total") == 11
                           and store_metric(url, "backlog_messages") == 0, 60, 0.2,
                           "stored through the other nodes")
            finally:
                cluster.pause(hung, False)
    finally:
        broker.stop()


def test_nats_unreachable_when_the_broker_starts_is_said_once_and_storing_begins_when_it_comes(tmp_path):
    from test_metrics import metrics_broker

    node = NatsCluster(tmp_path / "late", size=1)
    node.stop()  # down before the broker starts
    broker, url = metrics_broker(tmp_path, "--jetstream", node.urls)
    try:
        with RawPublisher(broker.frontend) as pub:
            send_recorded(url, pub, pub.frames("js-late", "first", {}), 1)  # forwarding and the history go on
            wait_until(lambda: "NATS unreachable" in broker.stderr(), 30, 0.1, "NATS unreachable said")
            wait_until(lambda: store_metric(url, "backlog_messages") == 1, 10, 0.1, "waiting for the store")
            node.start(0)
            wait_until(lambda: store_metric(url, "messages_stored_total") == 1, 60, 0.2, "stored once NATS came")
        assert broker.stderr().count("NATS unreachable") == 1, broker.stderr()
    finally:
        broker.stop()
        node.stop()


@pytest.mark.parametrize("prefix", ["", "a..b", "a.*", "a b", "x" * 101])
def test_a_bad_jetstream_prefix_is_refused_at_start_naming_the_option(tmp_path, prefix):
    result = subprocess.run([str(BIN / "zmq-emitter"), "broker", "--frontend", f"ipc://{tmp_path}/f", "--backend",
                             f"ipc://{tmp_path}/b", "--jetstream", "nats://127.0.0.1:4222",
                             "--jetstream-prefix", prefix], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "--jetstream-prefix" in result.stderr and "subject tokens" in result.stderr


def test_a_real_run_with_an_event_over_nats_max_payload_is_stored_whole_with_that_event_cut_by_the_runner(
        project, cluster, broker):
    from test_oversize import BIG_PLAYBOOK

    (project / "project" / "big.yml").write_text(BIG_PLAYBOOK)
    run = subprocess.run([str(BIN / "ansible-runner"), "run", str(project), "-p", "big.yml", "--ident", "js-big-run",
                          "--cmdline", "-e size=2000000"], env=runner_env(RUNNER_ZMQ_URL=broker.frontend,
                                                                          RUNNER_ZMQ_LINGER="20000"),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "spool" not in run.stderr and "sent cut" in run.stderr, run.stderr  # all acknowledged: stored
    assert_stored_once_in_order(cluster.urls, ["js-big-run"], in_stream_order=False)
    events = [protocol.decode(f).payload for _, f in stored_messages(cluster.urls)
              if protocol.envelope(f).ident == "js-big-run" and protocol.envelope(f).kind == "event"]
    assert [e["uuid"] for e in events] == [e["uuid"] for e in job_events(project, "js-big-run")]
    assert [e[protocol.TRUNCATED]["limit"] for e in events if protocol.TRUNCATED in e] == [2**20 - 64 * 1024]


def test_replicas_the_cluster_cannot_give_are_said_as_a_settings_problem_naming_the_option(tmp_path):
    with NatsCluster(tmp_path / "single", size=1) as node:
        node.wait_ready()
        broker = BrokerProcess(f"ipc://{tmp_path}/f", f"ipc://{tmp_path}/b", "--startup-grace", "0",
                               "--jetstream", node.urls, "--jetstream-replicas", "3")
        try:
            wait_until(lambda: "refused its settings" in broker.stderr(), 30, 0.1, "the refusal said")
            assert "--jetstream-replicas" in broker.stderr() and "NATS unreachable" not in broker.stderr()
        finally:
            broker.stop()


def test_with_a_full_history_disk_too_nothing_is_acknowledged_until_written_there_as_well_as_stored(
        tmp_path, cluster, small_disk):
    """--history-dir and --jetstream: acknowledged means written to the journal and stored in JetStream."""
    import zmq
    from test_acks_broker import AckingPublisher
    from test_disk_full import fill, pump_until

    broker = BrokerProcess(f"ipc://{tmp_path}/f", f"ipc://{tmp_path}/b", "--startup-grace", "0",
                           "--history-dir", str(small_disk / "history"), "--jetstream", cluster.urls)
    context = zmq.Context()
    publisher = AckingPublisher(context, broker.frontend)
    try:
        publisher.publish(20)
        pump_until(publisher, lambda: not publisher.kept)  # written, stored and acknowledged
        filler = fill(small_disk)
        publisher.publish(300)
        pump_until(publisher, lambda: "cannot write to" in broker.stderr() and not publisher.queue)
        pump_until(publisher, lambda: len(stored_messages(cluster.urls)) == 320)  # JetStream has them all...
        time.sleep(1)
        publisher.pump()
        assert max(publisher.acks) < 320  # ...yet the disk refuses: the runner keeps what is not written
        filler.unlink()
        pump_until(publisher, lambda: not publisher.kept, 60)
        assert max(publisher.acks) == 320
    finally:
        publisher.sock.close(0)
        context.term()
        broker.stop()
