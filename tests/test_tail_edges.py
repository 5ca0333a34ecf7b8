"""``zmq-emitter tail`` at its edges, through its real command: hostile text and times, idents with
``/``, --until-done without --ident, --replay of unknown runs and of one process's interleaved runs,
a dead endpoint, --timeout, a CURVE broker that refuses the key first and admits it later."""
from __future__ import annotations

import json
import shutil
import subprocess
import time

import zmq

from conftest import BIN, BrokerProcess, job_events, run_cli, runner_env, wait_recorded
from consumer_helpers import (BoundPublisher, finish, message, publisher_into, tail, two_runs_of_one_process,
                              wait_closed, wait_output)

from zmq_emitter import protocol, security
from zmq_emitter.demo import PROJECT
from zmq_emitter.consumers.tail import TIMEOUT_EXIT, cells, format_pretty

PUB = "7a117a117a117a11"


def status(seq: int, ident: str, name: str, pub: str = PUB) -> list[bytes]:
    return message(pub, seq, "status", ident, name, {"status": name, "runner_ident": ident})


def test_pretty_prints_an_event_whose_created_time_is_beyond_the_calendar(broker):
    context = zmq.Context()
    try:
        sock = publisher_into(context, broker.frontend_endpoints[0])
        sock.send_multipart(status(1, "far", "running"))
        sock.send_multipart(message(PUB, 2, "event", "far", "runner_on_ok", {
            "event": "runner_on_ok", "created": "9999-12-31T23:59:59-14:00",
            "event_data": {"host": "web1", "task": "the last day"}}))
        sock.send_multipart(status(3, "far", "successful"))
        wait_recorded(broker.history_endpoints[0], PUB, 3)
    finally:
        context.destroy(linger=0)
    code, out, _ = finish(tail("--connect", broker.backend_endpoints[0], "--history", broker.history_endpoints[0],
                               "--replay", "--ident", "far", "--until-done"))
    lines = out.splitlines()
    assert code == 0 and len(lines) == 3
    assert "runner_on_ok" in lines[1] and "web1" in lines[1] and "the last day" in lines[1]


def test_until_done_without_ident_follows_a_run_and_not_a_publishers_closing_report(tmp_path):
    context = zmq.Context()
    runner = BoundPublisher(context, f"ipc://{tmp_path}/runner")
    proc = tail("--connect", runner.endpoint, "--until-done", "--format", "json")
    try:
        runner.wait_subscribed(b"status/", b"event/", b"publisher/")
        other = "c105edc105edc105"  # another process ends first: its closing report carries its id, not a run's
        runner.send(message(other, 7, "publisher", other, "closed",
                            {"publisher": other, "published": 6, "dropped": 0, "unconfirmed": 0, "buffered": 0}))
        for seq, name in enumerate(["starting", "running", "successful"], 1):
            runner.send(status(seq, "the-run", name))
        code, out, _ = finish(proc, timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        context.destroy(linger=0)
    assert code == 0
    assert [json.loads(line).get("status") for line in out.splitlines()] == [None, "starting", "running", "successful"]


def test_tail_follows_a_run_whose_ident_has_a_slash_and_a_space(project, broker_process):
    ident = "a/b c"
    proc = tail("--connect", broker_process.backend, "--history", broker_process.history, "--replay",
                "--ident", ident, "--until-done", "--format", "json")
    try:
        result = run_cli(project, ident, runner_env(RUNNER_ZMQ_URL=broker_process.frontend))
        assert result.returncode == 2, result.stderr  # the demo fails on web2
        code, out, _ = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 1  # --until-done: the run failed
    assert [line["status"] for line in lines if "event" not in line] == ["starting", "running", "failed"]
    assert [line for line in lines if "event" in line] == job_events(project, ident)
    assert {line["runner_ident"] for line in lines} == {ident}


def test_replay_of_a_run_the_history_does_not_know_says_so_and_goes_on_live(broker):
    proc = tail("--connect", broker.backend_endpoints[0], "--history", broker.history_endpoints[0], "--replay",
                "--ident", "later", "--until-done", "--timeout", "120")
    context = zmq.Context()
    try:
        wait_output(proc, "no message of run 'later'")
        sock = publisher_into(context, broker.frontend_endpoints[0])
        for seq, name in enumerate(["starting", "running", "successful"], 1):
            sock.send_multipart(status(seq, "later", name))
        code, out, err = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
        context.destroy(linger=0)
    assert code == 0 and [line.split()[-1] for line in out.splitlines()] == ["starting", "running", "successful"]
    assert len(err.splitlines()) == 1 and "waiting for it live" in err


def test_replay_until_done_without_ident_is_refused_with_a_line_naming_ident():
    result = subprocess.run([str(BIN / "zmq-emitter"), "tail", "--replay", "--until-done"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "--ident" in result.stderr


def test_tail_against_a_dead_endpoint_says_once_that_it_waits_and_gives_up_at_its_timeout(tmp_path):
    endpoint = f"ipc://{tmp_path}/nobody-here"
    code, out, err = finish(tail("--connect", endpoint, "--until-done", "--timeout", "4"))
    assert code == TIMEOUT_EXIT == 124 and out == ""
    assert len(err.splitlines()) == 1 and f"no connection to {endpoint} yet" in err


def test_replay_prints_every_message_of_two_runs_one_process_made_at_once(tmp_path, broker):
    projects = (tmp_path / "a", tmp_path / "b")
    for project in projects:
        shutil.copytree(PROJECT, project)
    two_runs_of_one_process(projects, broker.frontend_endpoints[0])
    wait_closed(broker.history_endpoints[0], {"async-a", "async-b"})
    events = {ident: job_events(project, ident) for ident, project in zip(("async-a", "async-b"), projects)}
    total = sum(len(e) for e in events.values()) + 2 * 3  # and three statuses each
    code, out, err = finish(tail("--connect", broker.backend_endpoints[0], "--history", broker.history_endpoints[0],
                                 "--replay", "--format", "json", "--count", str(total), "--timeout", "60"))
    assert code == 0 and err == ""
    lines = [json.loads(line) for line in out.splitlines()]
    for ident in events:
        assert [line for line in lines if line["runner_ident"] == ident and "event" in line] == events[ident]
        assert [line["status"] for line in lines if line["runner_ident"] == ident and "event" not in line] == [
            "starting", "running", "failed"]


def test_a_subscriber_refused_by_a_curve_broker_says_so_once_and_gets_in_once_its_key_is_added(tmp_path):
    keys, allowed = tmp_path / "keys", tmp_path / "subscribers"
    for name in ("broker", "watcher"):
        subprocess.run([str(BIN / "zmq-emitter"), "keygen", name, "--dir", str(keys)], check=True,
                       capture_output=True)
    allowed.mkdir()
    broker = BrokerProcess(f"ipc://{tmp_path}/frontend", f"ipc://{tmp_path}/backend", "--startup-grace", "0",
                           "--curve-secret-key-file", str(keys / "broker.key_secret"), "--subscriber-keys", str(allowed))
    proc = tail("--connect", broker.backend, "--curve-server-key", str(keys / "broker.key"),
                "--curve-secret-key-file", str(keys / "watcher.key_secret"), "--format", "json", "--count", "1")
    context = zmq.Context()
    try:
        wait_output(proc, "refused")
        shutil.copy(keys / "watcher.key", allowed / "watcher.key")  # the operator adds the key
        sock = publisher_into(context, broker.frontend, security.ClientCurve.load(str(keys / "broker.key"), None))
        seq = 0
        while proc.poll() is None and seq < 6000:  # until the tail is let in and prints one
            seq += 1
            sock.send_multipart(status(seq, "admitted", "running"))
            time.sleep(0.01)  # a runner's pace
        code, out, err = finish(proc, timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        context.destroy(linger=0)
        broker.stop()
    assert code == 0 and json.loads(out)["runner_ident"] == "admitted"
    assert len(err.splitlines()) == 1 and "refused this subscriber (CURVE key not allowed" in err


def hostile_event(**event_data) -> protocol.Message:
    return protocol.decode(message(PUB, 1, "event", event_data.pop("ident", "run-1"),
                                   event_data.pop("name", "runner_on_failed"), {"event_data": event_data}))


def test_pretty_writes_what_publishers_send_as_text_never_as_terminal_control():
    msg = hostile_event(ident="evil\x1b]0;owned\x07", host="web\r1", task="line1\nline2\x1b[2J\x1b[31m\u202egnp.exe",
                        res={"msg": "bell\x07 and \x9b31m C1"})
    for colour in (False, True):
        line = format_pretty(msg, colour)
        if colour:  # only the colour typer.style wraps the whole line in
            assert line.startswith("\x1b[31m\x1b[1m") and line.endswith("\x1b[0m")
            line = line[len("\x1b[31m\x1b[1m"):-len("\x1b[0m")]
        assert not any(ord(c) < 32 or 0x7f <= ord(c) < 0xa0 or c == "\u202e" for c in line), repr(line)
        assert "line1\\nline2\\x1b[2J\\x1b[31m\\u202egnp.exe: bell\\x07 and \\x9b31m C1" in line
        assert "web\\r1" in line


def test_pretty_keeps_its_columns_aligned_with_wide_characters():
    rows = [hostile_event(host="web1", task="plain"), hostile_event(host="ウェブサーバー一号機", task="CJK host, cut"),
            hostile_event(host="🚀rocket", task="emoji"), hostile_event(ident="実行-1", host="db", task="CJK ident"),
            hostile_event(host="e\u0301cole", task="a combining accent")]
    lines = [format_pretty(msg, colour=False) for msg in rows]
    starts = {cells(line[:line.index("runner_on_failed")]) for line in lines}
    tasks = {cells(line[:line.rindex("  ") + 2]) for line in lines}
    assert len(starts) == 1 and len(tasks) == 1, lines


def test_runs_lines_show_hostile_idents_and_fields_as_text_a_terminal_cannot_act_on():
    from zmq_emitter.consumers.tail import RUNS_HEADER, format_run

    line = format_run({"ident": "\x1b]0;TITLE\x07" + "\n" * 10_000, "status": "ok\r", "messages": 3,
                       "retained": 2, "last_seen": 0})
    assert "\n" not in line and "\x1b" not in line and "\x07" not in line and "\r" not in line
    assert line.startswith("\\x1b]0;TITLE\\x07\\n")
    for hostile in (None, [], "run", {"ident": 5, "messages": "many", "retained": True, "last_seen": 1e300},
                    {"last_seen": float("nan")}):
        assert "?" in format_run(hostile)  # a wrong type shows as ?, never an exception
    assert RUNS_HEADER.startswith("IDENT")
