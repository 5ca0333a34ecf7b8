"""Edge brokers and a central broker on a network of hosts (Linux network namespaces, ``netns.py``).

Six hosts on one switch: ``runner1`` and ``runner2`` each run a real ``ansible-runner run`` (the
demo project's ``long.yml``) publishing to the edge broker of their site, ``edge1`` and ``edge2``
(``zmq-emitter broker --upstream tcp://CENTRAL:5557``, history in memory); ``central`` runs the
central broker (history on disk, ``--history-dir``, so that a SIGKILL costs it nothing it had);
``sub`` runs a library ``Subscriber`` (``tests/streams.py collect``) on the central broker only,
with gap recovery from the central's history.  The runs, the consumer and the checks are those of
the redundant pair (``test_network.py``'s ``Deployment``); only the brokers differ.

The central's start-up grace is 1 s: restarted, it takes the edges' backlog only once its
subscribers have had time to reconnect (with no grace, the backlog would reach an XPUB with
nobody subscribed yet).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from conftest import BrokerProcess, wait_until
from test_metrics import P, scrape_text
from test_network import (BACKEND, FRONTEND, HISTORY, IDENTS, Deployment, assert_every_event_once_in_order,
                          collected, messages_so_far)

pytestmark = pytest.mark.network
METRICS = 9100  # the central broker's --metrics port, scraped from the subscriber host


class Federation(Deployment):
    """Each runner host publishes to its own edge broker; both edges forward to one central broker,
    whose backend and history the subscriber host uses."""

    def __init__(self, network, tmp_path: Path):
        super().__init__(network, tmp_path)
        self.central_host = network.host("central")
        self.edge_hosts = [network.host("edge1"), network.host("edge2")]
        address = self.central_host.address
        self.central = BrokerProcess(f"tcp://{address}:{FRONTEND}", f"tcp://{address}:{BACKEND}",
                                     "--startup-grace", "1", "--history-dir", str(tmp_path / "central-history"),
                                     "--metrics", f"{address}:{METRICS}",
                                     history=f"tcp://{address}:{HISTORY}", host=self.central_host)
        self.edges = [BrokerProcess(f"tcp://{h.address}:{FRONTEND}", f"tcp://{h.address}:{BACKEND}",
                                    "--startup-grace", "0", "--upstream", self.central.frontend,
                                    history=f"tcp://{h.address}:{HISTORY}", host=h)
                      for h in self.edge_hosts]
        self.brokers = [*self.edges, self.central]
        self.subscribed_hosts = [self.central_host]
        self.backends, self.histories = [self.central.backend], [self.central.history]

    def urls(self, runner) -> str:
        return self.edges[self.runners.index(runner)].frontend

    def wait_ready(self) -> None:
        """Until the subscriber is connected to the central, and both edges too (the upstream links up)."""
        self.wait_subscribers(1)
        wait_until(lambda: self.central_host.connections(FRONTEND) >= 2, 30, 0.1, "both edges at the central")

    def under_way(self, sub) -> None:
        """Until both runs are under way at the central's subscriber."""
        wait_until(lambda: all(sum(1 for m in messages_so_far(sub) if m["ident"] == ident) >= 5 for ident in IDENTS),
                   60, 0.05, "both runs under way at the central's subscriber")

    def assert_central_subscriber_got_everything_once(self, sub, runs) -> list[dict]:
        """The runs end well, with nothing spooled or lost (their edge acknowledged it all), and the central's
        subscriber ``sub`` got every event of each once, in order, with its final status, and no gap it could
        not fill; its messages."""
        errs = self.finish_runs(runs)
        assert not any("spooled" in err or "lost" in err for err in errs), errs
        messages, done = collected(sub)
        assert done["waiting"] == [] and done["gaps"] == [], done
        assert_every_event_once_in_order(messages, runs)
        return messages

    def assert_central_history_has_every_event_once(self, runs) -> None:
        """The central's own history (what it recorded, journal included) replays every run whole."""
        replayed, done = collected(self.collect("replay"))
        assert done["waiting"] == [] and done["gaps"] == [], done
        assert_every_event_once_in_order(replayed, runs)


@pytest.fixture
def federation(network, tmp_path):
    net = Federation(network, tmp_path)
    yield net
    net.stop()


def test_every_event_of_every_site_reaches_the_central_subscriber_once_in_order_with_its_final_status(federation):
    sub = federation.collect()
    federation.wait_ready()
    runs = federation.start_runs()
    messages = federation.assert_central_subscriber_got_everything_once(sub, runs)
    assert len({m["pub"] for m in messages}) == 2  # one publisher per runner host, each through its own edge
    # The central's metrics, scraped over the test network from the subscriber host: every message of both runs
    # (and the runners' closing reports) recorded once, both runs finished, nothing missed.
    url = f"http://{federation.central_host.address}:{METRICS}/metrics"
    expected = {"history_messages_recorded_total": len(messages) + 2, "history_missed_messages_total": 0,
                'runs_finished_total{status="successful"}': 2}
    samples = {}

    def counted() -> bool:
        nonlocal samples
        page = federation.sub.run([sys.executable, "-c", f"import urllib.request; print(urllib.request.urlopen("
                                   f"{url!r}, timeout=10).read().decode())"], timeout=30)
        assert page.returncode == 0, page.stderr
        samples = scrape_text(page.stdout)
        return all(samples.get(P + name) == value for name, value in expected.items())

    wait_until(counted, 30, 0.5, "the central's metrics counting both runs")
    assert samples[P + "messages_received_total"] >= len(messages) + 2, samples


def test_an_edge_host_cut_off_for_a_while_mid_run_loses_the_central_subscriber_nothing(federation):
    """Cut for longer than the runner's heartbeat timeout (3 x runner_zmq_heartbeat = 6 s): the runner drops
    its connection to the edge and, once the edge is back, sends again what the edge had not acknowledged;
    the edge passes it up to the central, where the subscriber gets it after the other site's messages."""
    sub = federation.collect()
    federation.wait_ready()
    runs = federation.start_runs(steps=300)
    federation.under_way(sub)
    federation.network.cut(federation.edge_hosts[0])
    time.sleep(8)  # the outage itself (the scenario), not a wait for a condition
    federation.network.restore(federation.edge_hosts[0])
    # (a run that ended during the cut would spool what its edge had not acknowledged: another scenario)
    assert all(proc.poll() is None for proc, _ in runs), "a run ended during the cut: make the runs longer"
    federation.assert_central_subscriber_got_everything_once(sub, runs)
    federation.assert_central_history_has_every_event_once(runs)


def test_a_central_broker_sigkilled_and_restarted_mid_run_loses_its_subscriber_nothing(federation):
    """Meanwhile the edges keep what the central had not acknowledged; the central comes back with its
    journal (``--history-dir``) and the edges send it everything after what it acknowledged."""
    sub = federation.collect()
    federation.wait_ready()
    runs = federation.start_runs(steps=100)
    federation.under_way(sub)
    federation.central.kill()
    time.sleep(3)  # the outage itself (the scenario), not a wait for a condition
    federation.central.start()
    federation.assert_central_subscriber_got_everything_once(sub, runs)
    federation.assert_central_history_has_every_event_once(runs)
