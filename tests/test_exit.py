"""A publisher's end: its exit wait, its closing report, and what happens to messages handed to it after."""
from __future__ import annotations

import json
import threading
import time
from types import SimpleNamespace

import zmq

from zmq_emitter import protocol
from zmq_emitter.consumers.subscriber import Subscriber
from zmq_emitter.runner import plugin
from zmq_emitter.runner.config import Config
from zmq_emitter.runner.plugin import Publisher

from conftest import wait_recorded
from test_acks import RawBroker, publish


def test_the_closing_report_of_a_clean_run_says_nothing_was_buffered(broker):
    publisher = Publisher(Config(url=tuple(broker.frontend_endpoints), spool=None))
    publish(publisher, 5)
    publisher.close()
    history = broker.history_endpoints[0]
    wait_recorded(history, publisher.id, 6)
    with Subscriber([], history=history) as asker:
        _, messages = asker.request("fetch", pub=publisher.id, first=6, last=6)
    report = json.loads(messages[0][2])
    assert report["buffered"] == 0, report
    assert messages[0][0] == protocol.topic("publisher", publisher.id, "closed")
    assert report == {"publisher": publisher.id, "published": 5, "dropped": 0, "unconfirmed": 0, "truncated": 0,
                      "buffered": 0}


def test_at_exit_a_publisher_waits_for_its_acknowledging_broker_to_come_back_within_reconnect_wait(tmp_path, caplog):
    context = zmq.Context()
    endpoint = f"ipc://{tmp_path}/f"
    publisher = Publisher(Config(url=(endpoint,), linger=100, reconnect_wait=30_000, spool=None))
    try:
        broker = RawBroker(context, endpoint, token="first")
        broker.announce()
        broker.subscribe()
        publish(publisher, 3)
        assert broker.seqs(3) == [1, 2, 3]
        broker.ack({publisher.id: 3})
        assert publisher.flush(5)
        broker.close()  # the broker goes away (restarting)
        publish(publisher, 2)  # 4, 5 wait for it
        closing = threading.Thread(target=publisher.close)
        closing.start()
        broker = RawBroker(context, endpoint, token="second")  # back, well after the 100 ms linger
        broker.announce()
        broker.subscribe()
        assert broker.seqs(2) == [4, 5]
        broker.ack({publisher.id: 5})
        assert broker.seqs(1) == [6]  # the closing report
        broker.ack({publisher.id: 6})
        closing.join(30)
        assert not closing.is_alive()
    finally:
        publisher.close()
        context.destroy(0)
    assert "never acknowledged" not in caplog.text and "lost" not in caplog.text


def test_messages_handed_to_a_closed_publisher_are_dropped_and_said_once_and_a_later_run_gets_a_new_publisher(
        broker, fresh_plugin, caplog):
    url = broker.frontend_endpoints[0]
    first_config = SimpleNamespace(settings={"runner_zmq_url": url, "runner_zmq_spool": "none"})
    plugin.status_handler(first_config, {"status": "starting", "runner_ident": "one"})
    closed = plugin._routes[id(first_config)].publisher
    closed.close()
    second_config = SimpleNamespace(settings={"runner_zmq_url": url, "runner_zmq_spool": "none"})
    with Subscriber(broker.backend_endpoints) as sub:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            plugin.status_handler(second_config, {"status": "running", "runner_ident": "two"})
            msg = sub.recv(timeout=0.2)
            if msg is not None and msg.ident == "two":
                break
        else:
            raise AssertionError("the later run's message never arrived")
    for _ in range(100):  # e.g. a late event of a run whose process is exiting
        plugin.event_handler(first_config, {"event": "runner_on_ok", "runner_ident": "one"})
    assert caplog.text.count("is closed") == 1
    assert closed._outbox.count == 0 and closed._outbox.after_close == 100  # nothing piles up
    assert msg.publisher != closed.id


def test_a_socket_error_other_than_a_full_queue_is_said_once_and_the_message_kept(tmp_path, caplog):
    publisher = Publisher(Config(url=(f"ipc://{tmp_path}/f",), linger=0, spool=None))
    try:
        publisher._outbox.subscribed = True  # as if a peer were there: the next send goes to the socket
        publisher._socket.close(0)           # a broken socket: ENOTSOCK from now on
        publish(publisher, 3)
        assert publisher._outbox.waiting == 3
    finally:
        publisher._closed = True  # the socket is gone: nothing to flush or close
        publisher._context.term()
    assert caplog.text.count("socket error") == 1


def test_an_event_or_ident_that_is_not_hashable_is_published_and_never_raises(broker, fresh_plugin):
    config = SimpleNamespace(settings={"runner_zmq_url": broker.frontend_endpoints[0], "runner_zmq_spool": "none"})
    with Subscriber(broker.backend_endpoints) as sub:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            plugin.event_handler(config, {"event": ["odd"], "runner_ident": {"odd": 1}})
            msg = sub.recv(timeout=0.2)
            if msg is not None:
                break
        else:
            raise AssertionError("nothing arrived")
    assert msg.topic == b"event/{'odd': 1}/['odd']"
