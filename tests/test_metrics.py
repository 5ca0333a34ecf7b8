"""`zmq-emitter broker --metrics`: Prometheus metrics scraped over real HTTP from a real broker process, parsed
with prometheus_client's own parser, against what real runs and publishers sent."""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml
import zmq
from prometheus_client.parser import text_string_to_metric_families

from conftest import BIN, BrokerProcess, RawPublisher, job_events, run_cli, runner_env, wait_until
from test_security import Keys

from zmq_emitter import protocol, security
from zmq_emitter.broker import Broker
from zmq_emitter.consumers.subscriber import Subscriber

ALERTS = Path(__file__).resolve().parent.parent / "docs" / "prometheus" / "alerts.yml"
PROMTOOL = shutil.which("promtool", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")  # dev.py puts it in BIN
P = "zmq_emitter_broker_"


def metrics_broker(tmp_path, *args: str) -> tuple[BrokerProcess, str]:
    """A broker process on ipc endpoints with --metrics on a port the OS chooses; it and its metrics URL."""
    broker = BrokerProcess(f"ipc://{tmp_path}/f", f"ipc://{tmp_path}/b", "--startup-grace", "0",
                           "--metrics", "127.0.0.1:0", *args)
    found = re.search(r"metrics at (http://\S+)", broker.start_line)
    assert found, f"no metrics URL in the start line: {broker.start_line}"
    return broker, found[1]


def scrape(url: str) -> dict[str, float]:
    """Every sample of the page, parsed by prometheus_client: ``name{label="value",...}`` -> value."""
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        return scrape_text(response.read().decode())


def scrape_text(text: str) -> dict[str, float]:
    """The samples of a metrics page's text (``scrape``)."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def wait_metrics(url: str, expected: dict[str, float], timeout: float = 30.0) -> dict[str, float]:
    """Scrape until every sample in ``expected`` has its value (the broker reads its counters every 0.1-0.5 s)."""
    last: dict[str, float] = {}

    def matches() -> bool:
        nonlocal last
        last = scrape(url)
        return all(last.get(P + name) == value for name, value in expected.items())

    try:
        wait_until(matches, timeout, 0.1, "metrics")
    except AssertionError:
        raise AssertionError(f"expected {expected}, scraped {({n: last.get(P + n) for n in expected})}") from None
    return last


def subscriber(endpoint: str) -> tuple[zmq.Context, zmq.Socket]:
    context = zmq.Context()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(endpoint)
    return context, sub


def test_a_real_runs_messages_and_bytes_are_counted_as_the_runner_published_them(tmp_path, project):
    broker, url = metrics_broker(tmp_path)
    context, sub = subscriber(broker.backend)
    try:
        # The subscription follows its connection at once, seconds before ansible-runner publishes anything.
        wait_metrics(url, {"subscribers_connected": 1})
        result = run_cli(project, "counted", runner_env(RUNNER_ZMQ_URL=broker.frontend))
        assert result.returncode != 0, result.stderr  # the demo fails on host web2: a failed run
        received = []
        while not received or not received[-1][0].startswith(b"publisher/"):  # up to the closing report
            assert sub.poll(30_000), f"the run's messages stopped after {len(received)}"
            received.append(sub.recv_multipart())
        kinds = [frames[0].split(b"/")[0] for frames in received]
        report = protocol.decode(received[-1]).payload
        # What the runner says it published, what ansible-runner wrote, and what the subscriber got, agree:
        assert report["published"] == kinds.count(b"status") + kinds.count(b"event") == len(received) - 1
        assert kinds.count(b"event") == len(job_events(project, "counted"))
        sent, size = len(received), sum(len(frame) for frames in received for frame in frames)
        wait_metrics(url, {
            "messages_received_total": sent, "messages_sent_total": sent,
            "bytes_received_total": size, "bytes_sent_total": size,
            "history_messages_recorded_total": sent, "history_runs": 1, "history_messages": sent,
            'runs_finished_total{status="failed"}': 1, 'runs_finished_total{status="successful"}': 0,
            "publishers_connected": 0, "publisher_disconnects_total": 1, "subscribers_connected": 1,
            "history_dropped_messages_total": 0, "history_missed_messages_total": 0,
        })
        samples = scrape(url)
        assert samples[P + "acknowledgements_sent_total"] >= 1  # the runner's flush at exit waited for them
        assert samples[P + "history_bytes"] == size
        broker.stop()  # SIGTERM: the metrics server stops with the broker
        assert broker.proc.returncode == 0 and "Traceback" not in broker.stderr(), broker.stderr()
    finally:
        context.destroy(linger=0)
        broker.stop()


def test_runs_are_counted_once_by_their_final_status(tmp_path):
    broker, url = metrics_broker(tmp_path)
    context, sub = subscriber(broker.backend)
    try:
        with RawPublisher(broker.frontend) as pub:
            pub.until_received(sub)
            for ident, statuses in {"a": ["starting", "running", "successful"], "b": ["running", "failed"],
                                    "c": ["failed"], "d": ["canceled"], "e": ["starting", "running"]}.items():
                for status in statuses:
                    pub.send(ident, status, {"status": status}, kind="status")
            pub.send("c", "failed", {"status": "failed"}, kind="status", seq=pub.seq)  # sent again: once
            wait_metrics(url, {
                'runs_finished_total{status="successful"}': 1, 'runs_finished_total{status="failed"}': 2,
                'runs_finished_total{status="canceled"}': 1, 'runs_finished_total{status="error"}': 0,
                'runs_finished_total{status="timeout"}': 0, "history_duplicates_total": 1,
                "history_runs": 6,  # a..e and the probes' run
            })
    finally:
        context.destroy(linger=0)
        broker.stop()


def test_a_message_over_max_message_size_disconnects_its_publisher_and_is_counted(tmp_path):
    broker, url = metrics_broker(tmp_path, "--max-message-size", "4096")
    context, sub = subscriber(broker.backend)
    try:
        with RawPublisher(broker.frontend) as pub:
            pub.until_received(sub)
            wait_metrics(url, {"publishers_connected": 1, "publisher_disconnects_total": 0})
            before = scrape(url)[P + "messages_received_total"]
            pub.send("big", "too_large", {"blob": "x" * 10_000})
            wait_metrics(url, {"publisher_disconnects_total": 1})
            pub.until_received(sub)  # libzmq reconnects it; what it sends then flows again
            wait_metrics(url, {"publishers_connected": 1, "publisher_disconnects_total": 1})

            def all_recorded(samples: dict[str, float]) -> bool:  # the probes after it, never the large one
                return samples[P + "history_messages"] == samples[P + "messages_received_total"] > before

            wait_until(lambda: all_recorded(scrape(url)), 30, 0.1, "every message received recorded")
            assert not any(b"too_large" in frames[0] for frames in drain(sub))
    finally:
        context.destroy(linger=0)
        broker.stop()


def test_an_edge_brokers_upstream_metrics_count_what_went_up_to_a_real_central_broker(tmp_path):
    central = BrokerProcess(f"ipc://{tmp_path}/cf", f"ipc://{tmp_path}/cb", "--startup-grace", "0",
                            history=f"ipc://{tmp_path}/ch")
    edge, url = metrics_broker(tmp_path, "--upstream", central.frontend)
    try:
        with RawPublisher(edge.frontend) as publisher, Subscriber(central.backend) as sub:
            publisher.until_received(sub)  # runner -> edge -> central -> subscriber: the whole path is up
            for seq in range(1, 51):
                publisher.send("edge-run", "runner_on_ok", {"n": seq}, seq=seq)
            label = f'{{upstream="{central.frontend}"}}'
            samples = {}

            def all_went_up() -> bool:  # everything the edge recorded (the 50, and the probes that reached it)
                nonlocal samples
                samples = scrape(url)
                return (samples[P + f"upstream_up{label}"] == 1 and samples[P + f"upstream_backlog_messages{label}"] == 0
                        and samples[P + f"upstream_messages_sent_total{label}"]
                        == samples[P + "history_messages_recorded_total"] >= 50)

            wait_until(all_went_up, 30, 0.1, "every message the edge recorded sent up")
    finally:
        edge.stop()
        central.stop()
    assert samples[P + f"upstream_messages_lost_total{label}"] == 0


def drain(sub: zmq.Socket) -> list[list[bytes]]:
    messages = []
    while sub.poll(200):
        messages.append(sub.recv_multipart())
    return messages


@pytest.mark.skipif(not security.has_curve(), reason="libzmq built without CURVE")
def test_refused_curve_handshakes_are_counted_by_side_and_reason_and_are_not_disconnects(tmp_path):
    keys = Keys(tmp_path / "keys")
    broker, url = metrics_broker(tmp_path, "--curve-secret-key-file", str(keys.secret("broker")),
                                 "--publisher-keys", str(keys.publishers), "--subscriber-keys", str(keys.subscribers))
    context = zmq.Context()
    try:
        rogue = context.socket(zmq.PUB)  # a key not in --publisher-keys
        security.curve_client(rogue, keys.pair("broker").public, keys.pair("rogue"))
        rogue.connect(broker.frontend)
        plain = context.socket(zmq.SUB)  # no CURVE at all, to a CURVE backend
        plain.connect(broker.backend)
        wait_until(lambda: (scrape(url)[P + 'handshakes_refused_total{reason="auth",side="publishers"}'] >= 1
                            and scrape(url)[P + 'handshakes_refused_total{reason="protocol",side="subscribers"}'] >= 1),
                   30, 0.1, "refused handshakes counted")
        # (both clients retry: one may be between accepted and refused at any moment; once they stop, none is left)
        rogue.close(linger=0)
        plain.close(linger=0)
        wait_until(lambda: scrape(url)[P + "publishers_connected"] == scrape(url)[P + "subscribers_connected"] == 0,
                   30, 0.1, "no refused client counted as connected")
        assert scrape(url)[P + "publisher_disconnects_total"] == 0
    finally:
        context.destroy(linger=0)
        broker.stop()


@pytest.mark.parametrize("value", ["nonsense", "127.0.0.1", "127.0.0.1:65536", ":9100", "localhost:port",
                                   "127.0.0.1:\u0669", "127.0.0.1:\uff19\uff11\uff10\uff10"])  # non-ASCII digits
def test_a_bad_metrics_address_is_refused_naming_the_option(tmp_path, value):
    result = broker_command(tmp_path, "--metrics", value)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"zmq-emitter: --metrics {value!r}: give HOST:PORT") and "Traceback" not in result.stderr


def test_a_metrics_port_in_use_is_refused_naming_the_option_and_leaves_nothing_bound(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        result = broker_command(tmp_path, "--metrics", f"127.0.0.1:{port}")
    finally:
        taken.close()
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith(f"zmq-emitter: --metrics 127.0.0.1:{port}: cannot listen there: Address already "
                                    "in use") and "Traceback" not in result.stderr
    assert not list(tmp_path.glob("[fbh]"))  # the broker's ipc files removed: it stopped cleanly


def broker_command(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "zmq-emitter"), "broker", "--frontend", f"ipc://{tmp_path}/f",
                           "--backend", f"ipc://{tmp_path}/b", "--history", f"ipc://{tmp_path}/h", *args],
                          capture_output=True, text=True, timeout=30)


# ---------------------------------------------------------------------------------------
# The alert rules of docs/prometheus/alerts.yml


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not found (`python3 dev.py test` takes it from Debian's "
                                                  "prometheus package; apt could not give it here)")
def test_the_alert_rules_pass_promtool_check_rules():
    result = subprocess.run([PROMTOOL, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_alert_rules_are_prometheus_rule_groups_on_the_brokers_metric_names(tmp_path):
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert groups and all(set(group) <= {"name", "interval", "rules"} and group["rules"] for group in groups)
    assert all({"alert", "expr"} <= set(rule) and set(rule) <= {"alert", "expr", "for", "labels", "annotations"}
               for rule in rules)
    assert {"ZmqEmitterBrokerSilent", "ZmqEmitterHistoryMissingCopies", "ZmqEmitterUpstreamDown"} <= \
        {rule["alert"] for rule in rules}
    # Each metric an expression names is one the broker serves (or reserves, for upstream links).
    served = set(scrape_once(tmp_path)) | {P + "upstream_up", P + "upstream_backlog_messages",
                                           P + "upstream_messages_sent_total",  # (an edge broker's: test above)
                                           P + "jetstream_up", P + "jetstream_messages_lost_total"}  # test_jetstream
    named = {name for rule in rules for name in re.findall(r"\b" + P + r"\w+", rule["expr"])}
    assert named and named <= {re.sub(r"\{.*", "", name) for name in served}, named - served


def scrape_once(tmp_path) -> dict[str, float]:
    broker, url = metrics_broker(tmp_path)
    try:
        return scrape(url)
    finally:
        broker.stop()
