"""docs/protocol.md's example client is code that runs: extracted from the Markdown, run against a real broker,
it prints the valid messages and skips hostile bytes without failing (the document's own "skip, never fail")."""
from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from consumer_helpers import hostile_to_examples
from conftest import RawPublisher

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"


def example_code() -> str:
    """The first Python block after the "Example session" heading."""
    session = DOC.read_text().split("## Example session", 1)[1]
    return re.search(r"```python\n(.*?)```", session, re.S).group(1)


def test_the_documents_example_client_prints_valid_messages_and_skips_hostile_bytes(broker_process):
    code = example_code()
    assert 'sub.connect("tcp://127.0.0.1:5558")' in code
    code = code.replace("tcp://127.0.0.1:5558", broker_process.backend)
    client = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(line.rstrip() for line in client.stdout), daemon=True)
    reader.start()
    try:
        with RawPublisher(broker_process.frontend) as publisher:
            deadline = time.monotonic() + 30
            while "status probe running" not in lines:  # its subscription has reached the broker
                assert client.poll() is None, client.stderr.read()
                assert time.monotonic() < deadline, "the example client printed no probe within 30 s"
                publisher.send("probe", "running", {"status": "running"}, kind="status")
                time.sleep(0.02)  # the probes' pace
            for frames in hostile_to_examples():
                publisher.send_frames(frames)
            publisher.send("demo", "running", {"status": "running"}, kind="status", codec="msgpack")  # codec: skip
            publisher.send("a/b", "running", {"status": "running", "runner_ident": "a/b"}, kind="status")
            publisher.send("demo", "runner_on_failed", {"event": "runner_on_failed", "event_data": None})
            publisher.send("demo", "runner_on_failed", {"event": "runner_on_failed", "event_data": {"host": "web2"}})
            publisher.send("demo", "failed", {"status": "failed", "runner_ident": "demo"}, kind="status")
            client.wait(timeout=30)
        reader.join(10)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    assert client.returncode == 0, client.stderr.read()
    assert [line for line in lines if line != "status probe running"] == [
        "status a/b running", "event demo runner_on_failed", "event demo runner_on_failed web2", "status demo failed"]


def test_the_documents_history_reply_example_has_exactly_the_fields_a_real_history_answers():
    import json

    from zmq_emitter import protocol
    from zmq_emitter.broker.history import History

    blocks = [json.loads(block) for block in re.findall(r"```json\n(.*?)```", DOC.read_text(), re.S)]
    documented = next(block for block in blocks if "runs" in block)
    history = History()
    for seq, (kind, name, payload) in enumerate([("status", "running", {"status": "running"}),
                                                 ("publisher", "closed", {"publisher": "p", "published": 1})], 1):
        frames = [protocol.topic(kind, "demo" if kind == "status" else "p", name),
                  protocol.header_prefix("json", "p") + b"%d}" % seq, protocol.ENCODERS["json"](payload)]
        history.add(protocol.envelope(frames), frames)
    answered = protocol.parse_reply(history.answer(protocol.request("runs")))[0]
    assert set(documented) == set(answered)
    assert set(documented["runs"][0]) == set(answered["runs"][0])
    assert set(documented["publishers"][0]) == set(answered["publishers"][0])
