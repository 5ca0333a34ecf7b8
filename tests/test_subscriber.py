"""The subscriber library and the subscriber examples, on real brokers and real ansible-runner runs.

- three ``ansible-runner run`` processes at once (json and msgpack) through a broker process
  to 20 subscribers, each of which gets every message of every run;
- a subscription to one run's ident gets that run only;
- gaps and duplicates are reported with publisher and sequence numbers;
- a rogue publisher's garbage is skipped and counted, never raised;
- the examples in subscriber_examples/ (plain pyzmq; Node.js if its toolchain is here).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import zmq
from consumer_helpers import garbage, hostile_to_examples
from conftest import BIN, FINAL_STATUSES, RawPublisher, job_events, runner_env

from zmq_emitter import protocol
from zmq_emitter.demo import PROJECT
from zmq_emitter.consumers.subscriber import AsyncSubscriber, Gap, Subscriber, Tracker, subscriptions

EXAMPLES = Path(__file__).resolve().parent.parent / "subscriber_examples"
RUNS = {"multi-a": ("json", "web2"), "multi-b": ("msgpack", "none"), "multi-c": ("json", "db1")}


def start_run(tmp_path: Path, ident: str, endpoint: str, codec: str, fail_host: str) -> tuple[Path, subprocess.Popen]:
    """A real ``ansible-runner run`` of the demo playbook, in its own copy of the project."""
    project = tmp_path / ident
    shutil.copytree(PROJECT, project)
    proc = subprocess.Popen([str(BIN / "ansible-runner"), "run", str(project), "-p", "demo.yml", "--ident", ident,
                             "--cmdline", f"-e fail_host={fail_host}"],
                            env=runner_env(RUNNER_ZMQ_URL=endpoint, RUNNER_ZMQ_CODEC=codec),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return project, proc


def collect_until_final(recv, idents: set[str], timeout: float = 240.0) -> list[protocol.Message]:
    """Messages from ``recv(timeout)`` until each run in ``idents`` has sent its final status."""
    messages, open_runs, deadline = [], set(idents), time.monotonic() + timeout
    while open_runs and time.monotonic() < deadline:
        msg = recv(0.5)
        if msg is None:
            continue
        messages.append(msg)
        if msg.kind == "status" and msg.name in FINAL_STATUSES:
            open_runs.discard(msg.ident)
    return messages


def check_run(messages: list[protocol.Message], project: Path, ident: str, codec: str, final: str) -> None:
    mine = [m for m in messages if m.ident == ident]
    assert [m.name for m in mine if m.kind == "status"] == ["starting", "running", final]
    assert [m.payload for m in mine if m.kind == "event"] == job_events(project, ident)
    assert {m.codec for m in mine} == {codec}


def test_three_runs_at_once_reach_twenty_subscribers_each_whole(tmp_path, broker_process):
    """The must-show: 3 runner processes (two codecs) -> broker process -> 20 subscribers + 1 per-run one."""
    backend = broker_process.backend
    context = zmq.Context()
    results: dict[int, list] = {}
    subs_ready = threading.Barrier(22)

    probes_drained = threading.Barrier(22)
    probing = RawPublisher(broker_process.frontend)

    def ready(sub) -> None:
        """Until this subscriber's subscription is at the broker (the main thread sends probes meanwhile);
        then, once every subscriber is there and the probes have stopped, drain those still queued."""
        deadline = time.monotonic() + 60
        while (msg := sub.recv(timeout=0.5)) is None or msg.ident != "probe":
            assert time.monotonic() < deadline, "no probe arrived"
        subs_ready.wait()
        while (msg := sub.recv(timeout=0.3)) is not None:
            assert msg.ident == "probe"
        probes_drained.wait()

    def blocking_subscriber(n: int) -> None:
        with Subscriber(backend, context=context) as sub:
            ready(sub)
            results[n] = (collect_until_final(sub.recv, set(RUNS)), sub.gaps, sub.counts)

    def async_subscriber(n: int) -> None:  # one of the twenty is the asyncio flavour
        async def main():
            async with AsyncSubscriber(backend) as sub:
                deadline = time.monotonic() + 60
                while (msg := await sub.recv(timeout=0.5)) is None or msg.ident != "probe":
                    assert time.monotonic() < deadline, "no probe arrived"
                subs_ready.wait()
                while (msg := await sub.recv(timeout=0.3)) is not None:
                    assert msg.ident == "probe"
                probes_drained.wait()
                messages, open_runs, deadline = [], set(RUNS), time.monotonic() + 240
                while open_runs and time.monotonic() < deadline:
                    msg = await sub.recv(timeout=0.5)
                    if msg is not None:
                        messages.append(msg)
                        if msg.kind == "status" and msg.name in FINAL_STATUSES:
                            open_runs.discard(msg.ident)
                results[n] = (messages, sub.gaps, sub.counts)
        asyncio.run(main())

    def one_run_subscriber() -> None:
        with Subscriber(backend, subscriptions(ident="multi-b") + subscriptions(ident="probe"), context=context) as sub:
            ready(sub)
            results["one"] = (collect_until_final(sub.recv, {"multi-b"}), sub.gaps, sub.counts)
            # Anything of the other runs would be here by now: they ended before multi-b's stragglers.
            while (msg := sub.recv(timeout=0.3)) is not None:
                results["one"][0].append(msg)

    threads = [threading.Thread(target=blocking_subscriber, args=(n,)) for n in range(1, 20)]
    threads += [threading.Thread(target=async_subscriber, args=(0,)), threading.Thread(target=one_run_subscriber)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 90
    while subs_ready.n_waiting < len(threads) and time.monotonic() < deadline:  # until each has had a probe
        probing.send("probe", "probe", {"probe": True})
        time.sleep(0.02)  # the probes' pace
    subs_ready.wait(timeout=10)
    probing.close()
    probes_drained.wait(timeout=30)
    try:
        runs = {ident: start_run(tmp_path, ident, broker_process.frontend, codec, fail_host)
                for ident, (codec, fail_host) in RUNS.items()}
        for ident, (_, proc) in runs.items():
            assert proc.wait(timeout=120) in (0, 2), proc.stderr.read()
        deadline = time.monotonic() + 260  # generous: a busy machine can make these runs slow
        for thread in threads:
            thread.join(timeout=max(1, deadline - time.monotonic()))
    finally:
        context.destroy(linger=0)
    assert set(results) == set(range(20)) | {"one"}, f"subscribers still waiting: {set(range(20)) - set(results)}"
    for n in range(20):
        messages, gaps, counts = results[n]
        for ident, (codec, fail_host) in RUNS.items():
            check_run(messages, runs[ident][0], ident, codec, "successful" if fail_host == "none" else "failed")
        assert gaps == [] and counts.invalid == 0 and counts.duplicates == 0
    one_messages, _, _ = results["one"]
    assert {m.ident for m in one_messages} == {"multi-b"}
    check_run(one_messages, runs["multi-b"][0], "multi-b", "msgpack", "successful")


def raw_message(publisher: RawPublisher, pub: str, seq: int, name: str = "runner_on_ok") -> list[bytes]:
    """Frames of message ``seq`` of publisher ``pub`` on run raw-run, whatever ``publisher`` sent before."""
    return publisher.frames("raw-run", name, {"seq": seq}, pub=pub, seq=seq)


def test_gaps_and_duplicates_are_reported_with_publisher_and_seqs(broker):
    context = zmq.Context()
    reported = []
    try:
        sub = Subscriber(broker.backend_endpoints, context=context, on_gap=reported.append)
        rogue = RawPublisher(broker.frontend_endpoints[0], context=context)
        rogue.until_received(sub)
        for pub, seq in [("aaaaaaaaaaaaaaaa", 1), ("aaaaaaaaaaaaaaaa", 2), ("bbbbbbbbbbbbbbbb", 10),
                         ("aaaaaaaaaaaaaaaa", 5), ("aaaaaaaaaaaaaaaa", 5), ("aaaaaaaaaaaaaaaa", 4),
                         ("bbbbbbbbbbbbbbbb", 12), ("aaaaaaaaaaaaaaaa", 6)]:
            rogue.send_frames(raw_message(rogue, pub, seq))
        got = [sub.recv(timeout=5) for _ in range(6)]
        assert [(m.publisher, m.seq) for m in got] == [
            ("aaaaaaaaaaaaaaaa", 1), ("aaaaaaaaaaaaaaaa", 2), ("bbbbbbbbbbbbbbbb", 10),
            ("aaaaaaaaaaaaaaaa", 5), ("bbbbbbbbbbbbbbbb", 12), ("aaaaaaaaaaaaaaaa", 6)]
        expected = [Gap("aaaaaaaaaaaaaaaa", 3, 4), Gap("bbbbbbbbbbbbbbbb", 11, 11)]
        assert sub.gaps == expected and reported == expected
        assert sub.counts.missed == 3 and sub.counts.duplicates == 2
        sub.close()
    finally:
        context.destroy(linger=0)


def test_a_subscriber_remembers_at_most_max_publishers_under_a_flood_of_forged_ids(broker_process):
    """Through a broker process: 300 made-up publisher ids keep the subscriber's state at its bound, the
    forgotten ones are counted and said once, and a real publisher sending meanwhile keeps its gap detection."""
    context = zmq.Context()
    said = []
    try:
        sub = Subscriber(broker_process.backend, context=context, max_publishers=10, on_error=said.append)
        rogue = RawPublisher(broker_process.frontend, context=context)
        rogue.until_received(sub)  # (its probes are a publisher too)
        real = "aaaaaaaaaaaaaaaa"
        seq = 0
        for number in range(300):
            rogue.send_frames(raw_message(rogue, "f%015x" % number, 1))
            if number % 5 == 4:
                seq += 1
                rogue.send_frames(raw_message(rogue, real, seq))
        rogue.send_frames(raw_message(rogue, real, seq))  # a repeat
        rogue.send_frames(raw_message(rogue, real, seq + 3))  # after a gap
        got = []
        while not got or got[-1].publisher != real or got[-1].seq != seq + 3:
            msg = sub.recv(timeout=10)
            assert msg is not None, f"the real publisher's last message never came; {len(got)} came"
            got.append(msg)
        assert len(got) == 300 + seq + 1 and sub.counts.duplicates == 1
        assert len(sub.tracker.last_seq) == 10 and sub.counts.forgotten == 300 + 2 - 10
        assert sub.gaps == [Gap(real, seq + 1, seq + 2)]
        assert len(said) == 1 and "more than 10 publishers seen" in said[0]
        sub.close()
    finally:
        context.destroy(linger=0)


def test_rogue_publisher_garbage_is_skipped_and_counted_by_both_subscribers(tmp_path):
    from zmq_emitter.broker import Broker

    max_size = 4096
    broker = Broker([f"ipc://{tmp_path}/f"], [f"ipc://{tmp_path}/b"], [f"ipc://{tmp_path}/h"],
                    startup_grace=0, max_message_size=max_size).start()
    context = zmq.Context()
    invalid_seen = []
    try:
        assert broker.wait_forwarding(5)
        sub = Subscriber(broker.backend_endpoints, context=context, on_invalid=lambda f, e: invalid_seen.append(e))
        rogue = RawPublisher(broker.frontend_endpoints[0], context=context)
        rogue.until_received(sub)
        bad = garbage()
        for frames in bad:
            rogue.send_frames(frames)
        rogue.send_frames(raw_message(rogue, "dddddddddddddddd", 1, "after-garbage"))
        msg = sub.recv(timeout=5)
        assert msg is not None and msg.name == "after-garbage"
        assert sub.counts.invalid == len(bad) == len(invalid_seen)
        assert all(isinstance(e, protocol.ProtocolError) for e in invalid_seen)

        # An oversized message gets the rogue disconnected by the broker; it never reaches anyone.
        rogue.send_frames([protocol.topic("event", "raw-run", "huge"), b"x", b"y" * (2 * max_size)])
        honest = RawPublisher(broker.frontend_endpoints[0], context=context)
        honest.until_received(sub)
        honest.send_frames(raw_message(honest, "eeeeeeeeeeeeeeee", 1, "still-served"))
        msg = sub.recv(timeout=5)
        assert msg is not None and msg.name == "still-served"
        assert sub.counts.invalid == len(bad)  # the oversized one was not forwarded, so not counted

        # The asyncio flavour skips the same input the same way.
        async def async_side():
            async with AsyncSubscriber(broker.backend_endpoints) as asub:
                for seq in range(1, 1000):  # probes until the subscription is at the broker
                    honest.send_frames(raw_message(honest, "0000000000000001", seq, "probe"))
                    if await asub.recv(timeout=0.05) is not None:
                        break
                else:
                    raise AssertionError("no probe arrived")
                while await asub.recv(timeout=0.2) is not None:
                    pass
                for frames in bad:
                    honest.send_frames(frames)
                honest.send_frames(raw_message(honest, "ffffffffffffffff", 1, "async-after"))
                got = await asub.recv(timeout=5)
                return got, asub.counts.invalid
        got, invalid = asyncio.run(async_side())
        assert got is not None and got.name == "async-after" and invalid == len(bad)
        sub.close()
    finally:
        context.destroy(linger=0)
        broker.stop()


class Example:
    """A subscriber example running with ``--until-done`` against a broker, its stdout lines decoded as they come;
    started once its subscription has reached the broker (probes until it prints one)."""

    def __init__(self, argv: list[str], broker_process, prober: RawPublisher | None = None):
        self.proc = subprocess.Popen(argv + [broker_process.backend, "--until-done"], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: list[dict] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(map(json.loads, self.proc.stdout)),
                                       daemon=True)
        self.reader.start()
        with contextlib.ExitStack() as stack:
            prober = prober or stack.enter_context(RawPublisher(broker_process.frontend))
            deadline = time.monotonic() + 30
            while not any(line["topic"] == "event/probe/probe" for line in list(self.lines)):
                assert self.proc.poll() is None, self.proc.stderr.read()
                assert time.monotonic() < deadline, "the example printed no probe within 30 s"
                prober.send("probe", "probe", {"probe": True})
                time.sleep(0.02)  # the probes' pace

    def finish(self) -> str:
        """Wait for its exit (status 0 asserted); its stderr."""
        try:
            self.proc.wait(timeout=30)
            self.reader.join(10)
            err = self.proc.stderr.read()
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        assert self.proc.returncode == 0, err
        return err


def _example_run(tmp_path, broker_process, argv: list[str], ident: str, codec: str = "json"):
    """Run a subscriber example against one real run; its stdout lines decoded, the project, its stderr."""
    example = Example(argv, broker_process)
    project, run = start_run(tmp_path, ident, broker_process.frontend, codec, "web2")
    assert run.wait(timeout=120) == 2, run.stderr.read()
    return example.lines, project, example.finish()


def _check_example_output(lines, project, ident):
    mine = [line for line in lines if line["topic"].split("/")[1] == ident]
    assert [line["topic"] for line in mine if line["topic"].startswith("status/")] == [
        f"status/{ident}/starting", f"status/{ident}/running", f"status/{ident}/failed"]
    assert [line["payload"] for line in mine if line["topic"].startswith("event/")] == job_events(project, ident)
    seqs = [line["seq"] for line in mine]
    assert seqs == sorted(seqs)


def test_plain_pyzmq_example_receives_a_real_run(tmp_path, broker_process):
    source = (EXAMPLES / "python" / "subscribe.py").read_text()
    assert "zmq_emitter" not in source.split('"""', 2)[2]  # only pyzmq and json, as any client would
    lines, project, _ = _example_run(tmp_path, broker_process, [sys.executable, str(EXAMPLES / "python" / "subscribe.py")],
                                     "py-example")
    _check_example_output(lines, project, "py-example")


NODE = shutil.which("node")
NODE_ZEROMQ = EXAMPLES / "node" / "node_modules" / "zeromq"


@pytest.mark.skipif(not (NODE and NODE_ZEROMQ.is_dir()),
                    reason="needs node and npm (`python3 dev.py test` runs `npm ci` in subscriber_examples/node)")
def test_node_example_receives_a_real_run(tmp_path, broker_process):
    lines, project, _ = _example_run(tmp_path, broker_process, [NODE, str(EXAMPLES / "node" / "subscribe.mjs")],
                                     "node-example")
    _check_example_output(lines, project, "node-example")


C_LIBS = ("libzmq", "libcjson", "msgpack")


@pytest.fixture(scope="module")
def c_example(tmp_path_factory) -> str:
    """subscriber_examples/c built with the system's compiler and Debian's libzmq3-dev, libcjson-dev,
    libmsgpack-dev (`python3 dev.py test` installs them when it runs as root)."""
    compiler, pkg_config = shutil.which("cc"), shutil.which("pkg-config")
    flags = subprocess.run([pkg_config, "--cflags", "--libs", *C_LIBS], capture_output=True, text=True) \
        if compiler and pkg_config else None
    if flags is None or flags.returncode != 0:
        pytest.skip("needs cc, pkg-config and libzmq3-dev libcjson-dev libmsgpack-dev (`python3 dev.py test` installs "
                    f"them as root): {flags.stderr.strip() if flags else 'no cc or pkg-config'}")
    binary = tmp_path_factory.mktemp("c-example") / "subscribe"
    build = subprocess.run([compiler, "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(binary),
                            str(EXAMPLES / "c" / "subscribe.c"), *flags.stdout.split()], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    return str(binary)


@pytest.mark.parametrize("codec", ["json", "msgpack"])
def test_c_example_receives_a_real_run_in_either_codec(tmp_path, broker_process, c_example, codec):
    lines, project, _ = _example_run(tmp_path, broker_process, [c_example], f"c-example-{codec}", codec)
    _check_example_output(lines, project, f"c-example-{codec}")


EXAMPLE_ARGV = {"python": lambda: [sys.executable, str(EXAMPLES / "python" / "subscribe.py")],
                "node": lambda: [NODE, str(EXAMPLES / "node" / "subscribe.mjs")]}


@pytest.mark.parametrize("example", ["python", "node", "c"])
def test_every_example_skips_hostile_bytes_and_goes_on(request, broker_process, example):
    """No bytes on the wire crash an example: each hostile message is skipped (said on stderr), and the valid
    messages after them (one with ``event_data: null``, then a final status) are printed."""
    if example == "node" and not (NODE and NODE_ZEROMQ.is_dir()):
        pytest.skip("needs node and npm (`python3 dev.py test` runs `npm ci` in subscriber_examples/node)")
    argv = [request.getfixturevalue("c_example")] if example == "c" else EXAMPLE_ARGV[example]()
    with RawPublisher(broker_process.frontend) as rogue:
        running = Example(argv, broker_process, prober=rogue)  # (its probes put the rogue's path in place)
        for frames in hostile_to_examples():
            rogue.send_frames(frames)
        rogue.send("hostile", "runner_on_ok", {"event": "runner_on_ok", "event_data": None})
        rogue.send("hostile", "failed", {"status": "failed", "runner_ident": "hostile"}, kind="status")
        err = running.finish()
    printed = [line["topic"] for line in running.lines if line["topic"] != "event/probe/probe"]
    assert printed == ["event/hostile/runner_on_ok", "status/hostile/failed"], err
    assert err.count("skipped") >= len(hostile_to_examples()) - 2, err  # (two are duplicates of a seq, not skips)


def test_positions_count_only_what_was_handed_out_not_what_waits_in_the_queue():
    tracker = Tracker(recovers=True)
    header = protocol.header_prefix("json", "aaaaaaaaaaaaaaaa")
    message = lambda seq: [b"event/r/runner_on_ok", header + b"%d}" % seq, b"{}"]  # noqa: E731
    assert tracker.accept(message(1)).seq == 1
    gap = tracker.accept(message(5))  # 2..4 to recover first
    assert gap == Gap("aaaaaaaaaaaaaaaa", 2, 4)
    tracker.fill(gap, [message(2), message(3)])  # the history no longer had 4
    assert [m.seq for m in tracker.ready] == [2, 3, 5] and tracker.gaps == [Gap("aaaaaaaaaaaaaaaa", 4, 4)]
    assert tracker.positions() == {"aaaaaaaaaaaaaaaa": 1}
    tracker.ready.popleft()
    assert tracker.positions() == {"aaaaaaaaaaaaaaaa": 2}
    tracker.ready.clear()
    assert tracker.positions() == {"aaaaaaaaaaaaaaaa": 5}
