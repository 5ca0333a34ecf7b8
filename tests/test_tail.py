"""``zmq-emitter tail`` through its real command, on real ansible-runner runs and a real broker process.

Formats (pretty, json, stdout), filters (--ident, --topic, --event, --host, --count),
--until-done exit statuses, both codecs from several publishers at once, garbage on the
wire, Ctrl-C.
"""
from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess

import pytest
import zmq
from conftest import BIN, job_events, run_cli, runner_env, wait_connected, wait_until, wait_upstream

from zmq_emitter import protocol
from zmq_emitter.demo import PROJECT as DEMO
from zmq_emitter.consumers.tail import FINAL_STATUS_EXIT

from consumer_helpers import finish, output, tail  # noqa: E402  (one place for the tail process helpers)

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def test_formats_and_filters_on_a_real_failed_run(project, broker_process):
    ident, connect = "tail-fail", ["--connect", broker_process.backend]
    tails = {
        "json": tail(*connect, "--ident", ident, "--format", "json", "--until-done"),
        "stdout": tail(*connect, "--ident", ident, "--format", "stdout", "--until-done"),
        "pretty": tail(*connect, "--ident", ident, "--until-done"),  # a pipe: no colour
        "failed-colour": tail(*connect, "--ident", ident, "--event", "runner_on_failed", "--count", "1", "--color"),
        "status": tail(*connect, "--ident", ident, "--topic", "status", "--format", "json", "--count", "3"),
        "web1": tail(*connect, "--ident", ident, "--host", "web1", "--format", "json", "--until-done"),
        "other-run": tail(*connect, "--ident", "some-other-run", "--format", "json", "--count", "1"),
    }
    wait_connected(broker_process.backend, len(tails))
    try:
        result = run_cli(project, ident, runner_env(RUNNER_ZMQ_URL=broker_process.frontend))
        assert result.returncode == 2, result.stderr
        done = {name: finish(proc) for name, proc in tails.items() if name != "other-run"}
        other_still_waiting = tails["other-run"].poll() is None
    finally:
        for proc in tails.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    events = job_events(project, ident)

    code, out, _ = done["json"]
    assert code == FINAL_STATUS_EXIT["failed"] == 1
    lines = [json.loads(line) for line in out.splitlines()]  # exactly one JSON object per line
    assert all(isinstance(line, dict) for line in lines)
    assert [line for line in lines if "event" in line] == events
    assert [line["status"] for line in lines if "event" not in line] == ["starting", "running", "failed"]

    code, out, _ = done["stdout"]
    assert code == 1
    expected = "".join(e["stdout"] + "\n" for e in events if e.get("stdout"))
    assert out == expected.replace("\r\n", "\n")  # (the pipe is read in text mode: \r\n -> \n)
    assert "fatal: [web2]" in out and "PLAY RECAP" in out

    code, out, _ = done["pretty"]
    assert code == 1 and not ANSI.search(out)
    lines = out.splitlines()
    assert len(lines) == len(events) + 3
    failed = [line for line in lines if "runner_on_failed" in line]
    assert len(failed) == 1 and "web2" in failed[0] and "demo failure on web2" in failed[0]
    assert "status: failed" in lines[-1]

    code, out, _ = done["failed-colour"]
    assert code == 0
    assert len(out.splitlines()) == 1 and "runner_on_failed" in out and "web2" in out
    assert ANSI.search(out) and "\x1b[31m" in out  # failures stand out: red (and bold)

    code, out, _ = done["status"]
    assert code == 0
    assert [json.loads(line)["status"] for line in out.splitlines()] == ["starting", "running", "failed"]

    code, out, _ = done["web1"]
    assert code == 1
    shown = [json.loads(line) for line in out.splitlines() if '"event"' in line]
    assert shown == [e for e in events if e.get("event_data", {}).get("host") == "web1"] and len(shown) > 3

    # Filtered at the source: nothing of this run reached the tail of another ident.
    assert other_still_waiting and output(tails["other-run"]) == ("", "")


def test_until_done_status_both_codecs_several_publishers_and_quiet_ctrl_c(tmp_path, broker_process):
    connect = ["--connect", broker_process.backend]
    good = tail(*connect, "--ident", "ok-run", "--until-done")
    bad = tail(*connect, "--ident", "bad-run", "--until-done", "--format", "json")
    everything = tail(*connect, "--format", "json")
    wait_upstream(broker_process.frontend, "status/ok-run/", "event/ok-run/", "status/bad-run/", "event/bad-run/",
                  "status/", "event/", "publisher/")
    projects, runs = {}, {}
    try:
        for ident, codec, fail_host in [("ok-run", "msgpack", "none"), ("bad-run", "json", "web1")]:
            projects[ident] = tmp_path / ident
            shutil.copytree(DEMO, projects[ident])
            runs[ident] = subprocess.Popen(
                [str(BIN / "ansible-runner"), "run", str(projects[ident]), "-p", "demo.yml", "--ident", ident,
                 "--cmdline", f"-e fail_host={fail_host}"], env=runner_env(RUNNER_ZMQ_URL=broker_process.frontend,
                                                                          RUNNER_ZMQ_CODEC=codec),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert [runs[i].wait(timeout=120) for i in ("ok-run", "bad-run")] == [0, 2]
        assert finish(good)[0] == FINAL_STATUS_EXIT["successful"] == 0
        code, out, _ = finish(bad)
        assert code == FINAL_STATUS_EXIT["failed"] == 1
        finals = {"ok-run": '"status":"successful"', "bad-run": '"status":"failed"'}
        wait_until(lambda: all(any(f'"runner_ident":"{ident}"' in line and status in line and '"event"' not in line
                                   for line in output(everything)[0].splitlines()) for ident, status in finals.items()),
                   30, message="both runs' final statuses in the third tail's output")
        everything.send_signal(signal.SIGINT)  # Ctrl-C
        code, out, err = finish(everything)
    finally:
        for proc in (good, bad, everything, *runs.values()):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert code == 130 and err == ""  # quiet: no traceback, no message
    lines = [json.loads(line) for line in out.splitlines()]
    for ident in ("ok-run", "bad-run"):  # msgpack payloads come out as the same JSON
        assert [line for line in lines if line.get("runner_ident") == ident and "event" in line] == \
            job_events(projects[ident], ident)


def test_undecodable_input_is_skipped_counted_and_warned_once(broker):
    proc = tail("--connect", broker.backend_endpoints[0], "--format", "json", "--count", "2")
    context = zmq.Context()
    try:
        # An XPUB, as a runner's: it sees the broker's subscriptions, its own and those it passes on from its
        # subscribers (the tail's "event/" is the only one): the path rogue -> broker -> tail is up.
        rogue = context.socket(zmq.XPUB)
        rogue.setsockopt(zmq.XPUB_VERBOSE, 1)
        rogue.connect(broker.frontend_endpoints[0])
        upstream = set()
        while b"\x01event/" not in upstream or b"\x01" not in upstream:
            assert rogue.poll(20_000), f"subscriptions seen upstream: {upstream}"
            upstream.add(rogue.recv())
        topic = protocol.topic("event", "garbage-run", "runner_on_ok")
        header = protocol.header_prefix("json", "abababababababab")
        bad = [
            [topic], [topic, header + b"1}"], [topic, header + b"1}", b"{}", b"{}"],    # wrong frame counts
            [topic, header + b"1}", b"{broken"],                                       # invalid JSON
            [topic, protocol.header_prefix("msgpack", "abababababababab") + b"1}", b"\xc1"],  # invalid msgpack
            [topic, b"\x00\xff", b"{}"], [topic, b'{"v":9}', b"{}"],                   # bad headers
            [b"event/\xff\xfe/x", header + b"1}", b"{}"],                              # not UTF-8
        ]
        for frames in bad:
            rogue.send_multipart(frames)
        for seq in (1, 2):
            rogue.send_multipart([topic, header + b"%d}" % seq, protocol.encode_json({"event": "ok", "n": seq})])
        code, out, err = finish(proc)
        rogue.close(linger=0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        context.destroy(linger=0)
    assert code == 0
    assert [json.loads(line)["n"] for line in out.splitlines()] == [1, 2]
    err_lines = err.splitlines()
    assert len(err_lines) == 2, err
    assert "skipping a message that does not decode" in err_lines[0]
    assert f"skipped {len(bad)} messages that did not decode" in err_lines[1]


@pytest.mark.parametrize("args, says", [
    (["--format", "xml"], "--format 'xml'"),
    (["--topic", "events"], "--topic 'events'"),
    (["--connect", "udp://x:1"], "--connect 'udp://x:1'"),
])
def test_bad_options_give_one_line_and_status_2(args, says):
    result = subprocess.run([str(BIN / "zmq-emitter"), "tail", *args], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and says in result.stderr
