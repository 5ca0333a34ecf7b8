"""The broker's metrics for Prometheus: ``/metrics`` in the text format, over HTTP.

From the command line::

    zmq-emitter broker --metrics 127.0.0.1:9100     # then: curl http://127.0.0.1:9100/metrics

From Python, next to a broker of one's own::

    >>> from zmq_emitter.broker import Broker
    >>> from zmq_emitter.broker.metrics import serve
    >>> with Broker(["tcp://127.0.0.1:0"], ["tcp://127.0.0.1:0"], startup_grace=0) as broker:
    ...     server = serve(broker, "127.0.0.1", 0)   # port 0: any free port, see server.url
    ...     server.close()

Written with the official ``prometheus_client``: a custom collector (``BrokerCollector``) reads,
when Prometheus scrapes, the counters the broker keeps anyway (``Broker.stats()``: libzmq's proxy
STATISTICS, the socket monitors' connection events, the history thread's snapshot of its
counters) — nothing is updated per message on the forwarding path, and the HTTP thread never
touches the history itself.  It is served from a registry of its own (no process or platform
metrics of the Python client mixed in) by prometheus_client's HTTP server, in a daemon thread.

Upstream links (federation, ``--upstream``): an edge broker's ``upstream_stats()`` (``broker/upstream.py``:
a snapshot, never blocking on a socket) gives the ``zmq_emitter_broker_upstream_*`` metrics, labelled
with the ``--upstream`` endpoints; a broker without an upstream has none of them.

The history's store in NATS JetStream (``--jetstream``): ``store_stats()`` (``broker/jetstream.py``: a snapshot
the history thread takes with its counters) gives the ``zmq_emitter_broker_jetstream_*`` metrics, labelled with
the stream's name; a broker without ``--jetstream`` has none of them.

Every metric is listed, with its meaning, in docs/operations.md ("Metrics").
"""
from __future__ import annotations

import dataclasses
import re
from typing import Iterator

import zmq
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from .. import __version__, protocol
from .broker import HISTORY, PUBLISHERS, SUBSCRIBERS, Broker
from .jetstream import StoreStats
from .upstream import UpstreamStats

PREFIX = "zmq_emitter_broker"
# The port in ASCII digits: \d and int() would take any script's digits ("\u0669" is 9).
_ADDRESS = re.compile(r"^(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]]+)):(?P<port>[0-9]+)$")


class MetricsError(ValueError):
    """The metrics cannot be served as asked; the message names ``--metrics``, the value and what to fix."""


def parse_address(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[IPv6]:PORT`` too) as the host and port to listen on; MetricsError naming the option.

    >>> parse_address("127.0.0.1:9100"), parse_address("[::1]:0")
    (('127.0.0.1', 9100), ('::1', 0))
    """
    match = _ADDRESS.match(value.strip())
    port = int(match["port"]) if match else -1
    if not 0 <= port <= 65535:
        raise MetricsError(f"--metrics {value!r}: give HOST:PORT to listen on, e.g. 127.0.0.1:9100, 0.0.0.0:9100 "
                           "(all interfaces) or [::1]:9100; the port 0..65535 (0: any free port)")
    return match["v6"] or match["host"], port


class MetricsServer:
    """prometheus_client's HTTP server for one broker's registry, in a daemon thread; ``close()`` stops it."""

    def __init__(self, broker: Broker, host: str, port: int):
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(BrokerCollector(broker))
        try:
            self._server, self._thread = start_http_server(port, host, registry=self.registry)
        except OSError as exc:  # the port in use, an address not on this machine, a name that does not resolve
            raise MetricsError(f"--metrics {host}:{port}: cannot listen there: {exc.strerror or exc}") from None
        self.host, self.port = host, self._server.server_address[1]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def serve(broker: Broker, host: str, port: int) -> MetricsServer:
    """Serve ``broker``'s metrics on http://HOST:PORT/metrics until ``close()``; MetricsError if it cannot listen."""
    return MetricsServer(broker, host, port)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    """``PREFIX_name_total`` (prometheus_client adds ``_total`` to a counter's samples)."""
    return CounterMetricFamily(f"{PREFIX}_{name}", documentation, value=value)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", documentation, value=value)


def _labelled(kind, name: str, documentation: str, label: str, label_value: str, value: float) -> Metric:
    """``PREFIX_name{label="label_value"}``: one series of a link (upstream, store) named by ``label``."""
    metric = kind(f"{PREFIX}_{name}", documentation, labels=[label])
    metric.add_metric([label_value], value)
    return metric


class BrokerCollector(Collector):
    """Reads one broker's counters at scrape time (see the module docstring)."""

    def __init__(self, broker: Broker):
        self.broker = broker

    def collect(self) -> Iterator[Metric]:
        broker, stats = self.broker, self.broker.stats()
        info = InfoMetricFamily(PREFIX, "This broker: its name (as runners know it), versions.")
        info.add_metric([], {"name": broker.name, "version": __version__, "libzmq": zmq.zmq_version()})
        yield info
        yield _gauge("start_time_seconds", "When this broker started (Unix time).", broker.started_at or 0)
        yield _gauge("forwarding", "1 once the start-up grace is over and the proxy forwards.",
                     broker.wait_forwarding(0))

        yield _counter("messages_received", "Messages received from publishers (runners) by the frontend.",
                       stats.messages_in)
        yield _counter("bytes_received", "Bytes of them (all frames).", stats.bytes_in)
        yield _counter("messages_sent", "Messages handed to the backend, each once however many subscribers "
                       "take a copy.", stats.messages_out)
        yield _counter("bytes_sent", "Bytes of them (all frames).", stats.bytes_out)
        yield _gauge("publishers_connected", "Connections to the frontend open now (runner processes, edge brokers).",
                     stats.publishers)
        yield _gauge("subscribers_connected", "Connections to the backend open now (subscribers).", stats.subscribers)
        yield _counter("publisher_disconnects", "Frontend connections ended after their handshake: publishers that "
                       "closed or went away, and those libzmq disconnected for a message over --max-message-size "
                       "(libzmq does not say which).", stats.publisher_disconnects)
        refused = CounterMetricFamily(f"{PREFIX}_handshakes_refused", "Connections refused at the handshake, by "
                                      "side and reason: auth (a CURVE key not allowed), protocol (no CURVE to a CURVE "
                                      "broker, a wrong server key), closed (closed in the handshake: a port check, "
                                      "not a ZeroMQ peer).",
                                      labels=["side", "reason"])
        for side in (PUBLISHERS, SUBSCRIBERS, HISTORY):
            for reason in ("auth", "protocol", "closed"):
                refused.add_metric([side, reason], stats.handshakes_refused.get((side, reason), 0))
        yield refused
        yield _gauge("max_message_size_bytes", "--max-message-size: larger messages disconnect their publisher.",
                     broker.max_message_size)

        if stats.history is not None:
            yield from self._history(stats)
        upstream = broker.upstream_stats()
        if upstream is not None:
            yield from self._upstream(upstream)
        store = broker.store_stats()
        if store is not None:
            yield from self._store(store)

    def _history(self, stats) -> Iterator[Metric]:
        history = stats.history
        yield _gauge("history_runs", "Runs the history retains now.", history.runs)
        yield _gauge("history_messages", "Messages the history retains now.", history.messages)
        yield _gauge("history_bytes", "Bytes of them (all frames).", history.bytes)
        yield _gauge("history_publishers", "Publishers the history remembers now.", history.publishers)
        yield _counter("history_messages_recorded", "Messages the history recorded (distinct; loaded from "
                       "--history-dir at start too).", history.received)
        yield _counter("history_duplicates", "Messages received again (a publisher sending what this broker may "
                       "not have had) and not recorded twice.", history.duplicates)
        yield _counter("history_forgotten_runs", "Runs forgotten to stay within --history-runs.",
                       history.forgotten_runs)
        yield _counter("history_forgotten_messages", "Messages forgotten, to stay within --history-bytes or with "
                       "their run.", history.forgotten_messages)
        yield _counter("history_forgotten_bytes", "Bytes of them.", history.forgotten_bytes)
        yield _counter("history_dropped_messages", "Copies the history missed: sequence numbers found missing when "
                       "a later one came (the capture socket dropped them under load, or the publisher lost "
                       "them); asked for again.", history.dropped)
        yield _gauge("history_pending_messages", "Of those, still asked for again now.", history.pending)
        yield _counter("history_missed_messages", "Of those, given up as lost (the publisher could not send them "
                       "again); subscribers are told they are missing.", history.missed)
        yield _gauge("history_writable", "0 while the disk under --history-dir refuses writes (nothing new is "
                     "acknowledged meanwhile); 1 otherwise.", self.broker.history_writable)
        yield _counter("acknowledgements_sent", "Acknowledgement frames sent to the publishers.", stats.acks_sent)
        yield _counter("resend_requests", "Requests to a publisher to send a hole again.", stats.resend_requests)
        finished = CounterMetricFamily(f"{PREFIX}_runs_finished", "Runs the history saw end, by final status.",
                                       labels=["status"])
        for status in sorted(protocol.FINAL_STATUSES):
            finished.add_metric([status], history.final_statuses.get(status, 0))
        yield finished

    @staticmethod
    def _store(store: StoreStats) -> Iterator[Metric]:
        gauge, counter = GaugeMetricFamily, CounterMetricFamily
        for kind, name, text, value in (
                (gauge, "up", "1 while connected to NATS with the stream in place (what is stored is acknowledged); "
                 "0 while not (nothing new is acknowledged).", 1 if store.connected else 0),
                (gauge, "backlog_messages", "Messages the memory history holds that JetStream has not stored yet "
                 "(not acknowledged to their runners yet).", store.backlog),
                (gauge, "inflight_messages", "Of those, handed to the NATS client and not answered yet.",
                 store.inflight),
                (counter, "messages_published", "Publishes to JetStream (a message sent again after a failure counts "
                 "again).", store.handed_over),
                (counter, "messages_stored", "Publishes JetStream acknowledged storing (or answered that it had them "
                 "already).", store.stored),
                (counter, "publish_failures", "Publishes that failed (timed out, NATS unreachable, refused); sent "
                 "again.", store.failed),
                (counter, "messages_lost", "Messages the memory history forgot before JetStream stored them (each "
                 "range also logged).", store.lost),
                (counter, "messages_too_large", "Messages over NATS's max_payload: never stored in JetStream, passed "
                 "over so that acknowledgements go on (logged).", store.too_large)):
            yield _labelled(kind, f"jetstream_{name}", text, "stream", store.stream, value)

    @staticmethod
    def _upstream(link: UpstreamStats) -> Iterator[Metric]:
        def family(kind, name: str, text: str, value: float) -> Metric:
            return _labelled(kind, name, text, "upstream", ",".join(link.endpoints), value)

        yield family(GaugeMetricFamily, "upstream_up", "1 while a connection to a central broker is up.",
                     1 if link.connected else 0)
        yield family(GaugeMetricFamily, "upstream_backlog_messages", "Messages the history holds that a known "
                     "central broker has not acknowledged.", link.backlog)
        yield family(CounterMetricFamily, "upstream_messages_sent", "Messages sent up for the first time.", link.sent)
        yield family(CounterMetricFamily, "upstream_messages_resent", "Messages sent up again (a central broker came "
                     "back, or asked for a hole).", link.resent)
        yield family(CounterMetricFamily, "upstream_messages_lost", "Messages forgotten by this broker's history "
                     "before a central broker acknowledged them (logged with their range).", link.lost)

