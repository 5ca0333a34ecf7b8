"""A redundant pair of brokers on a network of hosts (Linux network namespaces, ``netns.py``).

Five hosts on one switch: ``runner1`` and ``runner2`` each run a real ``ansible-runner run`` (the
demo project's ``long.yml``) publishing to both brokers (``runner_zmq_url`` with two endpoints);
``broker1`` and ``broker2`` each run ``zmq-emitter broker`` (history in memory); ``sub`` runs the
consumers, connected to both brokers: a library ``Subscriber`` (``tests/streams.py collect``) and
``zmq-emitter tail --connect A --connect B``.  A host is cut off by pulling its cable at the
switch: its connections are neither closed nor reset, as when a machine or its link dies.

Inside these hosts the brokers use the default ports (5557/5558/5559): each host has its own
network stack, so no other test's ports are involved.  Select these tests with ``-m network``;
they skip, with the reason, where namespaces cannot be made (not root, no iproute2).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import BIN, BrokerProcess, job_events, runner_env, wait_until
from consumer_helpers import finish, output, tail
from zmq_emitter.demo import PROJECT

pytestmark = pytest.mark.network

STREAMS = str(Path(__file__).parent / "streams.py")
FRONTEND, BACKEND, HISTORY = 5557, 5558, 5559
IDENTS = ("run-one", "run-two")


class Deployment:
    """Two runner hosts and a subscriber host around some brokers (``RedundantPair``, or the federation of
    ``test_network_federation.py``): the runs and the consumers, whatever the brokers.

    A subclass sets ``backends`` and ``histories`` (the endpoints the subscriber host uses),
    ``subscribed_hosts`` (the hosts of those backends) and ``brokers``, and says with ``urls``
    where each runner host publishes.
    """

    backends: list[str]
    histories: list[str]
    subscribed_hosts: list
    brokers: list[BrokerProcess]

    def __init__(self, network, tmp_path: Path):
        self.network, self.tmp_path = network, tmp_path
        self.runners = [network.host("runner1"), network.host("runner2")]
        self.sub = network.host("sub")

    def urls(self, runner) -> str:
        """``runner_zmq_url`` of runner host ``runner``."""
        raise NotImplementedError

    def collect(self, how: str = "live", histories: list[str] | None = None) -> subprocess.Popen:
        """A library Subscriber on the subscriber host, connected to ``backends`` (``streams.py collect``)."""
        out = tempfile.TemporaryFile("w+")
        proc = self.sub.start([sys.executable, STREAMS, "collect", ",".join(self.backends),
                               ",".join(histories or self.histories), ",".join(IDENTS), how, "90"],
                              stdout=out, stderr=subprocess.STDOUT, text=True)
        proc.out = out
        return proc

    def tail(self, ident: str, *args: str) -> subprocess.Popen:
        """``zmq-emitter tail --connect A [--connect B] --ident IDENT --until-done --format json`` on the subscriber host."""
        connects = [arg for backend in self.backends for arg in ("--connect", backend)]
        return tail(*connects, "--ident", ident, "--until-done", "--format", "json", "--timeout", "90", *args,
                    host=self.sub)

    def wait_subscribers(self, count: int) -> None:
        """Until ``count`` subscriber connections are up at each backend the subscribers use (a SUB subscribes as
        soon as its connection is up, long before a run started afterwards publishes)."""
        for host in self.subscribed_hosts:
            wait_until(lambda: host.connections(BACKEND) >= count, 30, 0.1, f"{count} subscribers at {host}")

    def start_runs(self, steps: int = 40) -> list[tuple[subprocess.Popen, Path]]:
        """Both runner hosts start their run; each host has its own project copy and spool (as separate machines)."""
        runs = []
        for host, ident in zip(self.runners, IDENTS):
            project = self.tmp_path / f"project-{host.name}"
            shutil.copytree(PROJECT, project)
            env = runner_env(RUNNER_ZMQ_URL=self.urls(host), XDG_STATE_HOME=str(self.tmp_path / f"state-{host.name}"))
            err = tempfile.TemporaryFile("w+")
            proc = host.start([str(BIN / "ansible-runner"), "run", str(project), "-p", "long.yml", "--ident", ident,
                               "--cmdline", f"-e steps={steps}"], env=env, stdout=subprocess.DEVNULL, stderr=err,
                              text=True)
            proc.err = err
            runs.append((proc, project))
        return runs

    @staticmethod
    def finish_runs(runs) -> list[str]:
        """Wait for the runs to end; their stderr."""
        errs = []
        for proc, _ in runs:
            assert proc.wait(120) == 0, f"ansible-runner run failed: {read(proc.err)}"
            errs.append(read(proc.err))
        return errs

    def stop(self) -> None:
        for broker in self.brokers:
            broker.stop()


class RedundantPair(Deployment):
    """Two brokers; each runner host publishes to both, the subscriber host connects to both."""

    def __init__(self, network, tmp_path: Path):
        super().__init__(network, tmp_path)
        self.broker_hosts = self.subscribed_hosts = [network.host("broker1"), network.host("broker2")]
        self.brokers = [BrokerProcess(f"tcp://{h.address}:{FRONTEND}", f"tcp://{h.address}:{BACKEND}",
                                      "--startup-grace", "0", history=f"tcp://{h.address}:{HISTORY}", host=h)
                        for h in self.broker_hosts]
        self.backends = [b.backend for b in self.brokers]
        self.histories = [b.history for b in self.brokers]

    def urls(self, runner) -> str:
        return ",".join(b.frontend for b in self.brokers)


@pytest.fixture
def pair(network, tmp_path):
    net = RedundantPair(network, tmp_path)
    yield net
    net.stop()


def read(f) -> str:
    f.seek(0)
    return f.read()


def collected(proc: subprocess.Popen, timeout: float = 120) -> tuple[list[dict], dict]:
    """The messages a ``collect`` process printed, and its closing summary, once it has exited."""
    proc.wait(timeout)
    lines = [json.loads(line) for line in read(proc.out).splitlines() if line.startswith("{")]
    done = lines[-1]
    assert done.get("done"), read(proc.out)
    return [line for line in lines if "seq" in line], done


def messages_so_far(proc: subprocess.Popen) -> list[dict]:
    return [json.loads(line) for line in read(proc.out).splitlines() if line.startswith('{"pub"')]


def expected_events(runs) -> dict[str, list[int]]:
    """Per run, the counters of the events ansible-runner wrote to its artifacts, in order."""
    return {ident: [event["counter"] for event in job_events(project, ident)]
            for (proc, project), ident in zip(runs, IDENTS)}


def assert_every_event_once_in_order(messages: list[dict], runs, final: str = "successful") -> None:
    """Each run: every event of its artifacts once, in order, and its final status last (library output)."""
    expected = expected_events(runs)
    assert len({(m["pub"], m["seq"]) for m in messages}) == len(messages), "a message delivered twice"
    for ident in IDENTS:
        of_run = [m for m in messages if m["ident"] == ident]
        assert [m["counter"] for m in of_run if m["kind"] == "event"] == expected[ident], ident
        assert of_run[-1]["kind"] == "status" and of_run[-1]["name"] == final, of_run[-1]
        seqs = [m["seq"] for m in of_run]
        assert seqs == sorted(seqs), f"{ident}: out of order"


def assert_tail_printed_every_event_once(proc: subprocess.Popen, ident: str, runs) -> None:
    code, out, err = finish(proc, 120)
    assert code == 0, (code, err)
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["counter"] for line in lines if "counter" in line] == expected_events(runs)[ident], err
    assert lines[-1].get("status") == "successful"


def test_every_event_of_every_run_reaches_the_subscriber_once_in_order_with_its_final_status(pair):
    sub = pair.collect()
    tails = [pair.tail(ident) for ident in IDENTS]
    pair.wait_subscribers(3)
    runs = pair.start_runs()
    errs = pair.finish_runs(runs)
    messages, done = collected(sub)
    assert done["waiting"] == [] and done["gaps"] == [], done
    assert_every_event_once_in_order(messages, runs)
    assert done["counts"]["duplicates"] > 0  # each message came from both brokers: the second copy dropped
    for proc, ident in zip(tails, IDENTS):
        assert_tail_printed_every_event_once(proc, ident, runs)
    assert not any("spooled" in err or "lost" in err for err in errs), errs  # both brokers acknowledged it all


def test_a_broker_host_cut_off_for_good_mid_run_loses_the_subscribers_nothing(pair):
    sub = pair.collect()
    tails = [pair.tail(ident) for ident in IDENTS]
    pair.wait_subscribers(3)
    runs = pair.start_runs(steps=60)
    wait_until(lambda: all(sum(1 for m in messages_so_far(sub) if m["ident"] == ident) >= 5 for ident in IDENTS),
               60, 0.05, "both runs under way at the subscriber")
    pair.network.cut(pair.broker_hosts[0])  # for good: the first of each pair of endpoints
    pair.finish_runs(runs)
    messages, done = collected(sub)
    assert done["waiting"] == [] and done["gaps"] == [], done
    assert_every_event_once_in_order(messages, runs)
    for proc, ident in zip(tails, IDENTS):
        assert_tail_printed_every_event_once(proc, ident, runs)


def test_with_the_first_history_host_cut_off_replay_and_gap_recovery_come_from_the_second(pair):
    live = pair.collect()
    pair.wait_subscribers(1)
    runs = pair.start_runs()
    errs = pair.finish_runs(runs)
    assert not any("spooled" in err for err in errs), errs  # both histories acknowledged every message
    messages, _ = collected(live)
    pair.network.cut(pair.broker_hosts[0])

    replayed, done = collected(pair.collect("replay"))  # history=[broker1, broker2]: broker1 does not answer
    assert done["waiting"] == [] and done["gaps"] == [], done
    assert_every_event_once_in_order(replayed, runs)
    assert any(pair.histories[0] in e and "did not answer" in e and pair.histories[1] in e for e in done["errors"])

    publishers = {m["pub"] for m in messages}
    resumed, done = collected(pair.collect(json.dumps({pub: 3 for pub in publishers})))  # a gap from seq 4 on
    assert done["waiting"] == [] and done["gaps"] == [], done
    wanted = sorted((m["pub"], m["seq"]) for m in messages if m["seq"] > 3)
    assert sorted((m["pub"], m["seq"]) for m in resumed) == wanted  # each once (closing reports not printed)
    assert done["counts"]["recovered"] >= len(wanted)  # fetched from the history, not live

    listing = pair.sub.run([str(BIN / "zmq-emitter"), "runs", "--history", pair.histories[0],
                            "--history", pair.histories[1], "--timeout", "10"])
    assert listing.returncode == 0, listing.stderr
    for ident in IDENTS:
        assert any(line.startswith(ident) and "successful" in line for line in listing.stdout.splitlines())

    connects = [arg for backend in pair.backends for arg in ("--connect", backend)]
    replay_tail = tail(*connects, "--history", pair.histories[0], "--history", pair.histories[1], "--replay",
                       "--ident", IDENTS[0], "--until-done", "--format", "json", "--timeout", "60", host=pair.sub)
    assert_tail_printed_every_event_once(replay_tail, IDENTS[0], runs)


def test_a_broker_host_cut_off_for_good_does_not_hold_back_the_other_broker_past_its_queue(pair):
    """Without heartbeats the cut-off broker's connection stays open: its queue fills (runner_zmq_sndhwm,
    1000) and, with XPUB_NODROP, holds every later message back from the other broker too."""
    sub = pair.collect(histories=["none"])  # live only: what broker2 forwards, nothing fetched
    pair.wait_subscribers(1)
    urls = ",".join(b.frontend for b in pair.brokers)
    pair.runners[1].start([sys.executable, STREAMS, "publish", urls, IDENTS[1], "10", "0"],
                          env=runner_env(XDG_STATE_HOME=str(pair.tmp_path / "state2")), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    # The small run's end at the subscriber proves its subscription is in place at broker2 (not only its TCP
    # connection): the flood is then seen from its first message.
    wait_until(lambda: any(m["ident"] == IDENTS[1] and m["name"] == "successful" for m in messages_so_far(sub)),
               60, 0.05, "the subscriber's subscription in place at broker2")
    pair.runners[0].start([sys.executable, STREAMS, "publish", urls, IDENTS[0], "4000", "2000"],
                          env=runner_env(XDG_STATE_HOME=str(pair.tmp_path / "state")), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    wait_until(lambda: len(messages_so_far(sub)) >= 200, 60, 0.05, "the flood under way at the subscriber")
    pair.network.cut(pair.broker_hosts[0])
    messages, done = collected(sub)  # (the publisher then waits for broker1 at exit; the teardown ends it)
    assert done["waiting"] == [] and done["gaps"] == [], done
    flood = [m for m in messages if m["ident"] == IDENTS[0]]
    assert [m["counter"] for m in flood if m["kind"] == "event"] == list(range(1, 4001))
    assert flood[-1]["name"] == "successful"


def test_a_broker_host_cut_off_for_a_while_mid_run_gets_what_it_missed_when_it_is_back(pair):
    """Cut for longer than the runners' heartbeat timeout (3 x runner_zmq_heartbeat = 6 s): the runners drop
    the connection and, once it is back, send again what that broker had not acknowledged."""
    live = pair.collect()
    pair.wait_subscribers(1)
    runs = pair.start_runs(steps=300)
    wait_until(lambda: all(sum(1 for m in messages_so_far(live) if m["ident"] == ident) >= 5 for ident in IDENTS),
               60, 0.05, "both runs under way at the subscriber")
    pair.network.cut(pair.broker_hosts[1])
    time.sleep(8)  # the outage itself (the scenario), not a wait for a condition
    pair.network.restore(pair.broker_hosts[1])
    # (a run that ended during the cut would spool what broker2 had not acknowledged: another scenario)
    assert all(proc.poll() is None for proc, _ in runs), "a run ended during the cut: make the runs longer"
    errs = pair.finish_runs(runs)
    assert not any("spooled" in err for err in errs), errs  # broker2 acknowledged everything before exit
    collected(live)
    only_second = [pair.histories[1]]
    replayed, done = collected(pair.collect("replay", histories=only_second))  # broker2's own history, alone
    assert done["waiting"] == [] and done["gaps"] == [], done
    assert_every_event_once_in_order(replayed, runs)
