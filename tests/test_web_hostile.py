"""``zmq-emitter web`` against what a hostile publisher, a hostile client or a careless operator sends it: crafted
messages through a real broker (``RawPublisher``), a real server process, plain HTTP (the page's own requests)."""
from __future__ import annotations

import json
import secrets
import socket
import subprocess
import time
import urllib.parse

import msgpack
import pytest

from conftest import BIN, BrokerProcess, RawPublisher, runner_env, wait_until
from test_web import _get
from web_helpers import WebProcess

pytest.importorskip("starlette", reason="the web extra is not installed (pip install '.[web]')")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A broker, a web server on it and a raw publisher to it: (broker, web, publisher)."""
    tmp = tmp_path_factory.mktemp("hostile")
    broker = BrokerProcess(f"ipc://{tmp}/frontend", f"ipc://{tmp}/backend", "--startup-grace", "0")
    web = WebProcess(broker.backend, broker.history)
    publisher = RawPublisher(broker.frontend)
    yield broker, web, publisher
    publisher.close()
    web.stop()
    broker.stop()


def _path(ident: str, *rest: str) -> str:
    """The page's own URL of a run (app.js: encodeURIComponent)."""
    return "api/runs/" + "/".join([urllib.parse.quote(ident, safe=""), *rest])


def shown(web: WebProcess, ident: str, events: int) -> dict:
    """The run's detail once the server holds ``events`` of its events."""
    detail = {}

    def holds() -> bool:
        nonlocal detail
        status, _, body = _get(web.url + _path(ident))
        detail = json.loads(body) if status == 200 else {}
        return detail.get("events", 0) >= events
    wait_until(holds, 30, message=f"run {ident!r} with {events} events on the server")
    return detail


def first(publisher: RawPublisher, web: WebProcess, ident: str, payload: dict, **options) -> None:
    """Send a run's first message (seq 1 of publisher ``pub``) until the server has it (the path up may take a
    moment)."""
    deadline = time.monotonic() + 30
    while ident not in [run["ident"] for run in json.loads(_get(web.url + "api/runs")[2])]:
        assert time.monotonic() < deadline, f"{ident}'s first message never reached the server"
        publisher.send(ident, "runner_on_ok", payload, seq=1, **options)  # repeats are dropped
        time.sleep(0.1)


def stream(web: WebProcess, path: str, until: bytes, timeout: float = 30.0) -> list[tuple[dict, bytes]]:
    """The server-sent events of ``path`` until a message's data holds ``until``: [(fields, data)]."""
    host, port = web.listen.rsplit(":", 1)
    received, messages = b"", []
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(f"GET /{path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())  # 1.0: not chunked
        deadline = time.monotonic() + timeout
        while until not in received or not received.endswith(b"\n\n"):  # (to the end of that message)
            assert time.monotonic() < deadline, f"{path}: no {until!r} within {timeout}s: {received[-500:]!r}"
            chunk = sock.recv(1 << 20)
            assert chunk, f"{path}: closed before {until!r}: {received[-500:]!r}"
            received += chunk
    body = received.split(b"\r\n\r\n", 1)[1]
    for block in body.split(b"\n\n"):
        fields, data = {}, b""
        for line in block.split(b"\n"):
            name, sep, value = line.partition(b": ")
            if name == b"data":
                data = value
            elif sep and name in (b"id", b"event"):
                fields[name.decode()] = value.decode()
        if data:
            messages.append((fields, data))
    return messages


def test_a_payload_orjson_refuses_is_shown_and_the_server_goes_on(hostile):
    # msgpack carries integer keys, which orjson alone refuses: one such message stopped the server, and since it
    # stays in the history, a restarted server stopped again at its replay.
    broker, web, publisher = hostile
    pub = secrets.token_hex(8)
    first(publisher, web, "int-keys", {"stdout": "before", "counter": 1}, pub=pub)
    frames = publisher.frames("int-keys", "runner_on_failed", {}, codec="msgpack", pub=pub, seq=2)
    frames[2] = msgpack.packb({"counter": 2, "stdout": "failed", "event_data": {
        "host": "web1", "task": {1: "task"}, "res": {"msg": {2: "why"}}}})
    publisher.send_frames(frames)
    publisher.send("int-keys", "runner_on_ok", {"stdout": "after", "counter": 3}, pub=pub, seq=3)
    detail = shown(web, "int-keys", 3)
    assert web.proc.poll() is None, "".join(web.log)
    assert [(f["task"], f["msg"]) for f in detail["failures"]] == [('{"1":"task"}', '{"2":"why"}')]
    web.kill()  # a new server replays it from the history
    web.start()
    assert shown(web, "int-keys", 3)["events"] == 3 and web.proc.poll() is None


def test_a_publisher_id_cannot_break_a_stream_message_or_an_event_link(hostile):
    broker, web, publisher = hostile
    forged = 'p\nevent: run\ndata: {"ident": "forged"}\n\nid: 1'
    first(publisher, web, "odd-pubs", {"stdout": "newline", "counter": 1}, pub=forged)
    publisher.send("odd-pubs", "runner_on_ok", {"stdout": "dotted", "counter": 2}, pub="a.b", seq=1)
    publisher.send("odd-pubs", "runner_on_ok", {"stdout": "plain", "counter": 3}, pub="c0ffee", seq=1)
    shown(web, "odd-pubs", 3)
    messages = stream(web, _path("odd-pubs", "stream"), b'"ident":"odd-pubs"')
    assert all(fields.get("event") in ("events", "run") for fields, _ in messages), messages
    assert not any(b"forged" in data for fields, data in messages if fields.get("event") == "run")
    events = [event for fields, data in messages if fields["event"] == "events" for event in json.loads(data)]
    assert [e["s"] for e in events] == ["newline", "dotted", "plain"]
    cursor = [fields["id"] for fields, _ in messages if "id" in fields][-1]
    from zmq_emitter.consumers.web.model import parse_cursor
    assert len(parse_cursor(cursor)) == 3  # the page's position names each of the three publishers
    for event in events:  # what the page fetches when a line is clicked (app.js: k split at its '.')
        pub, seq = event["k"].split(".")
        status, _, body = _get(web.url + _path("odd-pubs", "events", pub, seq))
        assert status == 200 and json.loads(body)["stdout"] == event["s"]


@pytest.mark.parametrize("ident", ["team/a b%", "x/stream"])
def test_a_run_whose_ident_holds_a_slash_or_a_percent_has_its_page(hostile, ident):
    broker, web, publisher = hostile
    first(publisher, web, ident, {"stdout": "hello", "counter": 1}, pub=secrets.token_hex(8))
    messages = stream(web, _path(ident, "stream"), b'"events":1')
    assert [json.loads(data)["ident"] for fields, data in messages if fields["event"] == "run"][-1] == ident
    key = json.loads(messages[0][1])[0]["k"]
    assert _get(web.url + _path(ident, "events", *key.split(".")))[0] == 200


def test_a_stream_message_holds_about_256_kib_however_big_the_events(hostile):
    # A page that does not read holds its stream at one message: it was every event held (up to 2000), here
    # 2000 events of up to 1 MiB of output each; 50 such pages took the server from 0.2 to 2.3 GB.
    broker, web, publisher = hostile
    big = "y" * (200 << 10)
    pub = secrets.token_hex(8)
    first(publisher, web, "big-events", {"stdout": "0 " + big, "counter": 1}, pub=pub)
    for seq in range(2, 11):
        publisher.send("big-events", "runner_on_ok", {"stdout": f"{seq} " + big, "counter": seq}, pub=pub, seq=seq)
    shown(web, "big-events", 10)
    messages = stream(web, _path("big-events", "stream"), b'"events":10')
    batches = [json.loads(data) for fields, data in messages if fields["event"] == "events"]
    assert [e["c"] for batch in batches for e in batch] == list(range(1, 11))  # all, once, in order
    assert max(len(batch) for batch in batches) == 2  # 2 x 200 KiB: the 256 KiB reached, the rest in the next


def test_beyond_max_connections_a_request_gets_503_at_once_and_the_server_goes_on(tmp_path):
    # Unbounded, 1100 open streams (under the usual ulimit -n 1024) left it unable to accept any connection.
    web = WebProcess(f"ipc://{tmp_path}/backend", None, "--max-connections", "8")
    host, port = web.listen.rsplit(":", 1)
    pages = []
    try:
        for _ in range(10):  # pages that hold a stream and never read it
            page = socket.create_connection((host, int(port)))
            page.sendall(b"GET /api/runs/stream HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            pages.append(page)
        wait_until(lambda: _get(web.url + "api/runs")[0] == 503, 30, message="a 503 beyond 8 connections")
        for page in pages:
            page.close()
        wait_until(lambda: _get(web.url + "api/runs")[0] == 200, 30, message="the server answering again")
        assert web.proc.poll() is None
    finally:
        for page in pages:
            page.close()
        web.stop()


@pytest.mark.parametrize("package", ["uvicorn", "starlette"])
def test_web_without_its_extra_names_the_missing_package_and_the_fix(package):
    script = (f"import sys; sys.modules[{package!r}] = None; sys.argv = ['zmq-emitter', 'web', '--history', 'none']; "
              "from zmq_emitter.cli import main; main()")
    result = subprocess.run([str(BIN / "python"), "-c", script], capture_output=True, text=True, timeout=30,
                            env=runner_env())
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert f"web: {package} is not installed: pip install 'ansible-runner-zmq[web]'" in result.stderr
