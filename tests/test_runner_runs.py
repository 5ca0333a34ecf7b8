"""Real ansible-runner runs of the bundled playbook, in this process and as ``ansible-runner run`` processes.

Every check compares what a subscriber received with what ansible-runner itself wrote to
``artifacts/<ident>/job_events``: the same events, in the same order, and every status.
"""
from __future__ import annotations

import collections
import re
import shutil
import subprocess
import sys
import textwrap
import time

import ansible_runner
import zmq
from conftest import FINAL_STATUSES, collect_run, job_events, run_cli, runner_env, wait_subscribed

import zmq_emitter
from zmq_emitter import protocol
from zmq_emitter.demo import PROJECT
from zmq_emitter.consumers.subscriber import Subscriber


def assert_complete_run(messages: list, project, ident: str, final: str) -> None:
    """Every status from starting to ``final`` and every event as in the artifacts, in order, one publisher."""
    statuses = [m.name for m in messages if m.kind == "status"]
    events = [m.payload for m in messages if m.kind == "event"]
    assert statuses == ["starting", "running", final], ident
    assert events == job_events(project, ident), ident
    assert len(events) > 30, ident
    assert [m.seq for m in messages] == list(range(1, len(messages) + 1)), ident  # a fresh publisher each run
    assert len({m.publisher for m in messages}) == 1, ident


def test_plugin_is_found_through_its_entry_point():
    assert ansible_runner.plugins["zmq"] is zmq_emitter
    assert callable(ansible_runner.plugins["zmq"].status_handler)
    assert callable(ansible_runner.plugins["zmq"].event_handler)


def test_in_process_run_with_settings_argument_delivers_every_event_and_status_in_order(
        project, broker, inprocess_env, fresh_plugin):
    with Subscriber(broker.backend_endpoints) as sub:
        wait_subscribed(broker.frontend_endpoints[0], sub)
        result = ansible_runner.run(private_data_dir=str(project), playbook="demo.yml", ident="in-process",
                                    settings={"runner_zmq_url": broker.frontend_endpoints[0]}, quiet=True)
        messages = collect_run(sub, "in-process")
    assert (result.status, result.rc) == ("failed", 2)  # the demo playbook fails on web2
    assert_complete_run(messages, project, "in-process", "failed")
    assert sub.gaps == [] and sub.counts.invalid == 0


def test_run_async_two_runs_at_once_each_deliver_every_event(tmp_path, broker, inprocess_env, fresh_plugin):
    projects = [shutil.copytree(PROJECT, tmp_path / f"async{i}") for i in range(2)]
    with Subscriber(broker.backend_endpoints) as sub:
        wait_subscribed(broker.frontend_endpoints[0], sub)
        started = [ansible_runner.run_async(private_data_dir=str(p), playbook="demo.yml", ident=f"async{i}",
                                            settings={"runner_zmq_url": broker.frontend_endpoints[0]},
                                            extravars={"fail_host": "none" if i else "web2"}, quiet=True)
                   for i, p in enumerate(projects)]
        for thread, _ in started:
            thread.join(120)
        received, deadline = [], time.monotonic() + 30
        while sum(m.kind == "status" and m.name in FINAL_STATUSES for m in received) < 2 \
                and time.monotonic() < deadline:
            msg = sub.recv(timeout=0.5)
            if msg is not None:
                received.append(msg)
    assert [runner.status for _, runner in started] == ["failed", "successful"]
    for i, (project, final) in enumerate(zip(projects, ["failed", "successful"])):
        mine = [m for m in received if m.ident == f"async{i}"]
        assert [m.name for m in mine if m.kind == "status"] == ["starting", "running", final]
        assert [m.payload for m in mine if m.kind == "event"] == job_events(project, f"async{i}")
    # both runs went through the process's one publisher: one sequence, no gap, no duplicate
    assert len({m.publisher for m in received}) == 1
    assert [m.seq for m in received] == list(range(received[0].seq, received[0].seq + len(received)))
    assert sub.gaps == [] and sub.counts.duplicates == 0


def test_twenty_fresh_ansible_runner_run_processes_each_deliver_starting_to_final_and_every_event(
        project, broker_process):
    """Each process is fresh: its first message (slow joiner) and its last (exit flush) must arrive."""
    env = runner_env(RUNNER_ZMQ_URL=broker_process.frontend)
    with Subscriber(broker_process.backend) as sub:
        wait_subscribed(broker_process.frontend, sub)
        for n in range(20):
            ident = f"fresh-{n}"
            result = run_cli(project, ident, env)
            assert result.returncode == 2, f"{ident}: {result.stderr}"
            assert "lost" not in result.stderr, f"{ident}: {result.stderr}"
            assert_complete_run(collect_run(sub, ident), project, ident, "failed")
    assert sub.gaps == [] and sub.counts.invalid == 0


def test_msgpack_codec_end_to_end(project, broker):
    with Subscriber(broker.backend_endpoints) as sub:
        wait_subscribed(broker.frontend_endpoints[0], sub)
        result = run_cli(project, "packed", runner_env(RUNNER_ZMQ_URL=broker.frontend_endpoints[0],
                                                        RUNNER_ZMQ_CODEC="msgpack"))
        assert result.returncode == 2, result.stderr
        messages = collect_run(sub, "packed")
    assert {m.codec for m in messages} == {"msgpack"}
    assert all(m.raw_payload[:1] != b"{" for m in messages)  # a msgpack map, not JSON text
    assert_complete_run(messages, project, "packed", "failed")


def test_bind_mode_plain_sub_connects_straight_to_an_ansible_runner_run_process(project, tmp_path):
    endpoint = f"ipc://{tmp_path}/runner.sock"
    context = zmq.Context()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RECONNECT_IVL, 20)  # libzmq retries the connect until the runner has bound the path
    sub.connect(endpoint)  # before the process exists
    proc = subprocess.Popen([str(sys.executable.rsplit("/", 1)[0] + "/ansible-runner"), "run", str(project),
                             "-p", "demo.yml", "--ident", "bound", "--cmdline", "-e fail_host=web2"],
                            env=runner_env(RUNNER_ZMQ_BIND=endpoint), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        messages, deadline = [], time.monotonic() + 60
        while time.monotonic() < deadline:
            if sub.poll(500):
                msg = protocol.decode(sub.recv_multipart())
                messages.append(msg)
                if msg.kind == "status" and msg.name in FINAL_STATUSES:
                    break
        stderr = proc.communicate(timeout=60)[1]
    finally:
        sub.close()
        context.term()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2, stderr
    assert_complete_run(messages, project, "bound", "failed")


LOSS_LINE = re.compile(r"zmq_emitter: publisher [0-9a-f]{16} lost (\d+) of (\d+) messages: (\d+) pushed out of "
                       r"the full buffer .*, (\d+) still undelivered at exit")


def test_no_broker_running_changes_nothing_about_the_run_and_with_the_spool_off_the_exit_line_counts_the_undelivered(
        project, tmp_path):
    """With the spool on (the default), the same run is kept for the next process: tests/test_spool.py."""
    plain = shutil.copytree(PROJECT, tmp_path / "plain")
    plugin_env = runner_env(RUNNER_ZMQ_URL=f"ipc://{tmp_path}/nobody-listens", RUNNER_ZMQ_LINGER="200",
                            RUNNER_ZMQ_SPOOL="none")
    # Wall times of the same run without and with the plugin, alternated, best of two each (the machine is noisy)
    seconds: dict[str, list[float]] = {"without": [], "with": []}
    results = {}
    for ident in ("run", "again"):
        for label, root, env in (("without", plain, runner_env()), ("with", project, plugin_env)):
            started = time.monotonic()
            results[label, ident] = run_cli(root, ident, env)
            seconds[label].append(time.monotonic() - started)
    without, with_plugin = results["without", "run"], results["with", "run"]
    # The exit wait is bounded by runner_zmq_linger (200 ms here): the run is not held up.
    assert min(seconds["with"]) <= 1.5 * min(seconds["without"]), seconds
    assert with_plugin.returncode == without.returncode == 2
    artifacts = [sorted(p.name for p in (root / "artifacts" / "run").iterdir()) for root in (project, plain)]
    assert artifacts[0] == artifacts[1]
    assert (project / "artifacts/run/status").read_text() == (plain / "artifacts/run/status").read_text() == "failed"
    assert (project / "artifacts/run/rc").read_text() == (plain / "artifacts/run/rc").read_text() == "2"
    events = job_events(project, "run")
    names = [collections.Counter(e["event"] for e in job_events(root, "run")) for root in (project, plain)]
    assert names[0] == names[1]  # the same events (host order may differ between two runs)
    # the exit line: every message of the run (3 statuses and every event) undelivered, none pushed out
    assert LOSS_LINE.search(without.stderr) is None
    match = LOSS_LINE.search(with_plugin.stderr)
    assert match, with_plugin.stderr
    lost, total, pushed_out, undelivered = map(int, match.groups())
    assert lost == total == undelivered == len(events) + 3 and pushed_out == 0


# A fresh process that publishes at once and then keeps running, or exits at once.
FRESH_PROCESS = textwrap.dedent("""
    import sys, time
    from types import SimpleNamespace
    from zmq_emitter.runner import plugin
    config = SimpleNamespace(settings={"runner_zmq_url": sys.argv[1]})
    plugin.status_handler(config, {"status": "starting", "runner_ident": sys.argv[2]})
    if sys.argv[3] == "stay":
        time.sleep(1)
        plugin.status_handler(config, {"status": "running", "runner_ident": sys.argv[2]})
        time.sleep(1)
""")


def fresh_process(broker, ident: str, mode: str) -> list:
    with Subscriber(broker.backend_endpoints) as sub:
        wait_subscribed(broker.frontend_endpoints[0], sub)
        result = subprocess.run([sys.executable, "-c", FRESH_PROCESS, broker.frontend_endpoints[0], ident, mode],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        messages, deadline = [], time.monotonic() + 5
        while time.monotonic() < deadline:
            msg = sub.recv(timeout=0.2)
            if msg is not None and msg.ident == ident:
                messages.append(msg)
            elif msg is None and messages:
                break
    return messages


def test_first_message_of_a_fresh_process_arrives_despite_the_slow_joiner(broker):
    # sent before any subscription can have reached the new socket; a plain PUB would drop it
    messages = fresh_process(broker, "joiner", "stay")
    assert [(m.name, m.seq) for m in messages] == [("starting", 1), ("running", 2)]


def test_last_message_of_a_process_that_exits_right_after_arrives(broker):
    messages = fresh_process(broker, "exiting", "exit")
    assert [(m.name, m.seq) for m in messages] == [("starting", 1)]
