"""The Event-Driven Ansible source's ``main(queue, args)`` on its own: an asyncio queue as
ansible-rulebook gives it (room for one event), a real broker, real sockets.  Argument mistakes,
hostile bytes, gaps, back-pressure; the collection's documented arguments are the ones it reads.
(With the real ansible-rulebook and real runs: test_eda_rulebook.py.)"""
from __future__ import annotations

import asyncio
import json
import runpy

import msgpack
import pytest
import yaml

from conftest import RawPublisher

from zmq_emitter import protocol
from zmq_emitter.consumers import eda
from zmq_emitter.consumers.eda.source import Options, main

PROBE = "eda-probe"


async def started(broker, args: dict, maxsize: int = 1) -> tuple[asyncio.Task, asyncio.Queue, RawPublisher]:
    """``main`` running on a queue of ``maxsize`` events, its subscription in place (a probe reached the
    queue: a status, which event and host filters let through), and a publisher into the broker; the
    queue is empty again."""
    queue: asyncio.Queue = asyncio.Queue(maxsize)
    task = asyncio.create_task(main(queue, {"endpoints": broker.backend_endpoints, **args}))
    publisher = RawPublisher(broker.frontend_endpoints[0])
    for probe in range(1, 600):
        publisher.send(PROBE, "probe", {"probe": probe}, pub=publisher.probe_pub, seq=probe, kind="status")
        try:
            event = await asyncio.wait_for(queue.get(), 0.05)
        except asyncio.TimeoutError:
            assert not task.done(), task.exception()
            continue
        if event.get("meta", {}).get("ident") == PROBE:
            break
    else:
        raise AssertionError("no probe reached the source's queue")
    while True:  # probes still on their way
        try:
            await asyncio.wait_for(queue.get(), 0.3)
        except asyncio.TimeoutError:
            return task, queue, publisher


async def stop(task: asyncio.Task, publisher: RawPublisher) -> None:
    publisher.close()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def take(queue: asyncio.Queue, count: int, timeout: float = 10.0) -> list[dict]:
    return [await asyncio.wait_for(queue.get(), timeout) for _ in range(count)]


@pytest.mark.parametrize("args, names", [
    ({"endpoint": "tcp://127.0.0.1:1"}, ["unknown argument(s) 'endpoint'", "accepted: endpoints"]),
    ({"endpoints": "http://broker:5558"}, ["'endpoints'", "'http://broker:5558'", "tcp://HOST:PORT"]),
    ({"endpoints": []}, ["'endpoints'", "at least one"]),
    ({"endpoints": [5558]}, ["'endpoints'", "list of strings"]),
    ({"endpoints": {"tcp": "broker:5558"}}, ["'endpoints'", "list of strings"]),
    ({"endpoints": "tcp://broker:99999"}, ["'endpoints'", "between 1 and 65535"]),
    ({"endpoints": "inproc://backend"}, ["'endpoints'", "tcp:// or ipc://"]),
    ({"endpoints": "tcp://broker:5558\x00"}, ["'endpoints'", "control character"]),
    ({"runs": 7}, ["'runs'", "list of strings"]),
    ({"history_timeout": float("nan")}, ["'history_timeout'", "more than 0"]),
    ({"kinds": ["status", "events"]}, ["'kinds'", "some of status, event"]),
    ({"replay": True}, ["'replay'", "needs 'history'"]),
    ({"replay": "sometimes", "history": "tcp://127.0.0.1:1"}, ["'replay'", "true or false"]),
    ({"history": "broker:5559"}, ["'history'", "'broker:5559'"]),
    ({"history_timeout": 0}, ["'history_timeout'", "more than 0"]),
    ({"curve_secret_key_file": "/etc/eda.key_secret"}, ["'curve_secret_key_file'", "curve_server_key"]),
    ({"curve_server_key": "/nonexistent/broker.key"}, ["'curve_server_key'", "/nonexistent/broker.key", ".key file"]),
    ({"curve_server_key": "x" * 39}, ["'curve_server_key'", "40 z85 characters"]),
    ({"curve_server_key": "Kq/9xKGfIFM&ER%+{*5R-p)IfJt%[Ydl0-mXwgbi", "curve_secret_key_file": "/nonexistent/eda.key_secret"},
     ["'curve_secret_key_file'", "/nonexistent/eda.key_secret", ".key_secret file"]),
])
def test_an_argument_it_cannot_use_ends_main_at_once_with_a_message_naming_it(args, names):
    with pytest.raises(ValueError) as raised:
        asyncio.run(asyncio.wait_for(main(asyncio.Queue(1), args), 10))
    assert str(raised.value).startswith("zmq_emitter.eda.runner_events: ")
    for name in names:
        assert name in str(raised.value)


def test_what_ansible_rulebook_adds_to_the_arguments_is_no_mistake():
    assert Options.parse({"eda_feedback_queue": asyncio.Queue()}) == Options()


def test_the_collections_documented_arguments_are_the_ones_the_source_reads():
    module = runpy.run_path(str(eda.SOURCES / "runner_events.py"))
    documented = yaml.safe_load(module["DOCUMENTATION"])["options"]
    assert list(documented) == list(Options.__dataclass_fields__)
    assert module["main"] is main
    for example in yaml.safe_load(module["EXAMPLES"]):  # (leaving out key files and variables: not here)
        Options.parse({k: v for k, v in example["zmq_emitter.eda.runner_events"].items()
                       if not k.startswith("curve_") and "{{" not in str(v)})


def test_events_carry_the_runner_payload_and_a_meta_with_the_host_for_host_limits(broker):
    async def scenario():
        task, queue, publisher = await started(broker, {})
        publisher.send("run-1", "runner_on_failed", {"event": "runner_on_failed", "runner_ident": "run-1",
                                                     "event_data": {"host": "web2", "task": "Fail"}})
        publisher.send("run-1", "failed", {"status": "failed", "runner_ident": "run-1"}, kind="status")
        events = await take(queue, 2)
        await stop(task, publisher)
        return events

    failed, status = asyncio.run(scenario())
    assert failed["event"] == "runner_on_failed" and failed["event_data"]["host"] == "web2"
    assert failed["meta"]["hosts"] == "web2"
    assert {k: failed["meta"][k] for k in ("kind", "ident", "name", "topic", "seq", "replayed")} == {
        "kind": "event", "ident": "run-1", "name": "runner_on_failed", "topic": "event/run-1/runner_on_failed",
        "seq": 1, "replayed": False}
    assert status["status"] == "failed" and status["runner_ident"] == "run-1" and "hosts" not in status["meta"]
    assert status["meta"]["publisher"] == failed["meta"]["publisher"] and status["meta"]["seq"] == 2


def test_hostile_bytes_never_end_the_source_and_what_decodes_reaches_rules_as_plain_data(broker):
    async def scenario():
        task, queue, publisher = await started(broker, {})
        header = protocol.header_prefix("msgpack", "hostile0hostile0")
        for frames in ([b"event/run/x"], [b"event/run/x", b"not json", b"{}"], [b"\xff\xfe/run/x", b"{}", b"{}"],
                       [b"event/run/x", protocol.header_prefix("json", "hostile0hostile0") + b"1}", b"{not json"],
                       [b"event/run/x", header + b"2}", b"\xc1"],
                       [b"event/run/x", b'{"v":1,"codec":"json","pub":"p","seq":-1}', b"{}"]):
            publisher.send_frames(frames)
        # msgpack that decodes to what no rule can use: bytes, non-string keys, an extension type.
        publisher.send_frames([b"event/run/odd", header + b"3}", msgpack.packb(
            {"event": "odd", 7: b"\xff\x00", "ext": msgpack.ExtType(5, b"x"), "event_data": {"host": b"web1"}},
            use_bin_type=True)])
        publisher.send_frames([b"event/run/list", header + b"4}", msgpack.packb([1, 2])])
        publisher.send("run", "runner_on_ok", {"event": "runner_on_ok"})
        events = await take(queue, 3)
        assert not task.done()
        await stop(task, publisher)
        return events

    odd, listed, ok = asyncio.run(scenario())
    json.dumps([odd, listed, ok])  # what ansible-rulebook does with each event
    assert odd["event"] == "odd" and odd["7"] == "\\xff\x00" and odd["meta"]["hosts"] == "web1"
    assert listed["payload"] == [1, 2] and listed["meta"]["name"] == "list"
    assert ok["event"] == "runner_on_ok"


def test_a_gap_gone_for_good_becomes_an_event_before_the_message_that_showed_it(broker):
    async def scenario():
        task, queue, publisher = await started(broker, {})
        publisher.send("run", "runner_on_ok", {"n": 1}, seq=1)
        publisher.send("run", "runner_on_ok", {"n": 5}, seq=5)
        events = await take(queue, 3)
        await stop(task, publisher)
        return events

    first, gap, fifth = asyncio.run(scenario())
    assert (first["n"], fifth["n"]) == (1, 5)
    assert gap["gap"] == {"publisher": "feedfacecafebeef", "first": 2, "last": 4, "count": 3}
    assert gap["meta"]["kind"] == "gap"


def test_a_rule_engine_that_takes_nothing_for_a_while_loses_nothing_the_source_accepted(broker):
    async def scenario():
        task, queue, publisher = await started(broker, {"events": "runner_on_ok"})
        for n in range(1, 3001):
            publisher.send("slow", "runner_on_ok", {"n": n})
            if n % 500 == 0:
                await asyncio.sleep(0.01)  # the source runs, fills the one place, then waits on put
        await asyncio.sleep(1.0)  # the rules are busy: nothing taken
        events = await take(queue, 3000)
        await stop(task, publisher)
        return events

    events = asyncio.run(scenario())
    assert [e["n"] for e in events] == list(range(1, 3001))
    assert all(not e["meta"].get("kind") == "gap" for e in events)


def test_filters_keep_only_the_wanted_runs_events_and_hosts_and_leave_statuses_alone(broker):
    async def scenario():
        task, queue, publisher = await started(broker, {"events": ["runner_on_failed"], "hosts": "web2"})
        for host in ("web1", "web2"):
            for name in ("runner_on_ok", "runner_on_failed"):
                publisher.send("run", name, {"event": name, "event_data": {"host": host}})
        publisher.send("run", "failed", {"status": "failed"}, kind="status")
        events = await take(queue, 2)
        await stop(task, publisher)
        return events

    failed, status = asyncio.run(scenario())
    assert (failed["event"], failed["meta"]["hosts"]) == ("runner_on_failed", "web2")
    assert status["status"] == "failed"
