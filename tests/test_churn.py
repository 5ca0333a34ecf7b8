"""Subscribers that come and go at random, and the soak: every message, in order, once, or an exact report."""
from __future__ import annotations

import collections
import json
import random
import select
import subprocess
import time
import sys
from pathlib import Path

import pytest

from conftest import PROBE, BrokerProcess, RawPublisher, rss_mib

STREAMS = Path(__file__).resolve().parent / "streams.py"


def helper(*args) -> subprocess.Popen:
    """A ``tests/streams.py`` process (see its docstring for the roles)."""
    return subprocess.Popen([sys.executable, str(STREAMS), *map(str, args)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def start_churners(broker: BrokerProcess, processes: int, subscribers: int, publishers: int, seed: int,
                   steady: int = 0) -> list[subprocess.Popen]:
    churners = [helper("churn", broker.backend, broker.history, subscribers, publishers, seed + i, steady)
                for i in range(processes)]
    # Probes until each churner says each of its subscribers got one: every subscription has reached the
    # broker before the first message.
    pending, deadline = list(churners), time.monotonic() + 60
    with RawPublisher(broker.frontend) as prober:
        while pending:
            assert time.monotonic() < deadline, "churners not ready"
            prober.send(PROBE, "probe", {"probe": True})
            readable, _, _ = select.select([churner.stdout for churner in pending], [], [], 0.02)
            for churner in [churner for churner in pending if churner.stdout in readable]:
                line = churner.stdout.readline()
                assert line and json.loads(line)["ready"], churner.stderr.read()
                pending.remove(churner)
    return churners


def finish(churners: list[subprocess.Popen], finals: dict[str, int]) -> list[dict]:
    """Tell the churners the publishers' last seqs; their summaries, one per subscriber."""
    summaries = []
    for churner in churners:
        out, err = churner.communicate(f"finish {json.dumps(finals)}\n", timeout=300)
        assert churner.returncode == 0, err
        summaries.extend(json.loads(line) for line in out.splitlines())
    return summaries


def account(summary: dict, finals: dict[str, int]) -> int:
    """Assert that the subscriber delivered each publisher's messages in order and once each, and that what it
    delivered plus what it reported lost is every seq from 1 to the publisher's last, exactly; the loss count."""
    lost = collections.defaultdict(list)
    for publisher, first, last in summary["lost"]:
        lost[publisher].append([first, last])
    assert set(summary["delivered"]) | set(lost) == set(finals), "messages from publishers nobody started"
    for publisher, last_seq in finals.items():
        delivered = summary["delivered"].get(publisher, [])
        assert all(later[0] > earlier[1] for earlier, later in zip(delivered, delivered[1:])), \
            f"{publisher}: out of order or repeated: {delivered[:20]}"
        expected_first = 1
        for first, last in sorted(delivered + lost[publisher]):
            assert first == expected_first, f"{publisher}: seq {expected_first} neither delivered nor reported " \
                                            f"lost (or twice); delivered {delivered[:20]}, lost {lost[publisher]}"
            expected_first = last + 1
        assert expected_first == last_seq + 1, f"{publisher}: ends at {expected_first - 1}, not {last_seq}"
    return sum(last - first + 1 for ranges in lost.values() for first, last in ranges)


def publish(broker: BrokerProcess, count: int, rate: int, publishers: int, name: str) -> list[subprocess.Popen]:
    return [helper("publish", broker.frontend, f"{name}-{i}", count, rate) for i in range(publishers)]


def wait_publishers(publishers: list[subprocess.Popen]) -> dict[str, int]:
    """The publishers' last seqs; each exited cleanly and its plugin reported no loss."""
    finals = {}
    for proc in publishers:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0 and "lost" not in err and "never acknowledged" not in err, err
        report = json.loads(out)
        finals[report["publisher"]] = report["last_seq"]
    return finals


@pytest.mark.parametrize("history_bytes, history_keeps_enough", [(64 * 2**20, True), (150_000, False)],
                         ids=["history-keeps-everything", "history-too-small"])
def test_fifty_subscribers_churning_at_random_each_end_with_every_message_or_an_exact_report(
        tmp_path, history_bytes, history_keeps_enough):
    broker = BrokerProcess(f"ipc://{tmp_path}/f", f"ipc://{tmp_path}/b", "--startup-grace", "0",
                           "--history-bytes", str(history_bytes))
    seed = random.randrange(2**32)
    try:
        churners = start_churners(broker, processes=2, subscribers=25, publishers=3, seed=seed)
        finals = wait_publishers(publish(broker, count=8000, rate=1000, publishers=3, name="churn"))
        summaries = finish(churners, finals)
    finally:
        broker.stop()
    assert len(summaries) == 50
    losses = [account(summary, finals) for summary in summaries]  # each: in order, once, or reported exactly
    # A subscriber churns once it has seen every publisher; on a loaded machine a few may get there only after
    # the publishers are done, so most, not all, must have churned for the accounting above to mean something.
    churned = sum(1 for summary in summaries if summary["offline"])
    assert churned >= 40, f"seed {seed}: only {churned} of 50 subscribers churned"
    assert sum(summary["counts"]["recovered"] for summary in summaries) > 0
    if history_keeps_enough:
        assert losses == [0] * 50, f"seed {seed}"
    else:  # offline longer than the history holds: what it no longer had is reported, exactly
        assert sum(losses) > 0, f"seed {seed}"


def flat(samples: list[float], slack_mib: float = 16.0) -> bool:
    """No growth after warm-up: the last third of the samples peaks no higher than the middle third, give or
    take ``slack_mib`` (allocator noise).  A leak of a few bytes per message grows by far more over the run."""
    third = len(samples) // 3
    return max(samples[2 * third:]) <= max(samples[third:2 * third]) + slack_mib


def churn_through_a_broker_sigkill(tmp_path, total: int) -> tuple[list[int], list[list[float]], list[list[float]]]:
    """``total`` messages from 4 publisher processes at 10,000 msg/s in all; 4 subscribers in 2 processes, 2 of
    them churning; the broker, with its history on disk, SIGKILLed at 40% and restarted a second later.  Each
    subscriber's losses (``account``), and the RSS samples (MiB, one a second) of each broker incarnation and of
    each publisher."""
    rate, n_publishers = 2_500, 4
    count = total // n_publishers - 3  # each publisher also sends two statuses and its closing report
    broker = BrokerProcess(f"ipc://{tmp_path}/f", f"ipc://{tmp_path}/b", "--startup-grace", "1",
                           "--history-bytes", str(32 * 2**20), "--history-dir", str(tmp_path / "journal"))
    seed = random.randrange(2**32)
    broker_rss: list[list[float]] = [[]]  # one list per broker incarnation
    publisher_rss: dict[int, list[float]] = collections.defaultdict(list)
    try:
        churners = start_churners(broker, processes=2, subscribers=2, publishers=n_publishers, seed=seed, steady=1)
        publishers = publish(broker, count=count, rate=rate, publishers=n_publishers, name="soak")
        started = time.monotonic()
        kill_at = started + 0.4 * count / rate
        restarted_at = None
        while any(proc.poll() is None for proc in publishers):
            time.sleep(1)  # the sampling pace
            if restarted_at is None and time.monotonic() >= kill_at:
                broker.kill()
                time.sleep(1)  # the broker stays away a second
                broker.start()
                restarted_at = time.monotonic()
                broker_rss.append([])
                continue
            if (value := rss_mib(broker.pid)) is not None:
                broker_rss[-1].append(value)
            for proc in publishers:
                if proc.poll() is None and (value := rss_mib(proc.pid)) is not None:
                    publisher_rss[proc.pid].append(value)
        finals = wait_publishers(publishers)
        summaries = finish(churners, finals)
    finally:
        broker.stop()
    elapsed = time.monotonic() - started
    assert restarted_at is not None and sum(finals.values()) == total
    losses = [account(summary, finals) for summary in summaries]
    print(f"churn with a broker SIGKILL: {total} messages in {elapsed:.0f}s; seed {seed}; losses {losses}; "
          f"recovered {[s['counts']['recovered'] for s in summaries]}; "
          f"duplicates dropped {[s['counts']['duplicates'] for s in summaries]}; "
          f"broker RSS MiB {[(round(min(r)), round(max(r))) for r in broker_rss if r]}; "
          f"publisher RSS MiB {[(round(min(r)), round(max(r))) for r in publisher_rss.values()]}")
    return losses, broker_rss, list(publisher_rss.values())


def test_churning_subscribers_get_every_message_through_a_broker_sigkill_and_restart(tmp_path):
    """Nothing is lost: the publishers send again what the killed broker had not acknowledged, and what it had
    acknowledged was on disk, so every gap a subscriber sees is recovered from the restarted broker."""
    losses, _, _ = churn_through_a_broker_sigkill(tmp_path, 100_000)
    assert losses == [0] * 4


@pytest.mark.soak
def test_soak_a_million_messages_with_churn_and_a_broker_sigkill_nothing_lost_memory_flat(tmp_path):
    """The same for 1,000,000 messages (python3 dev.py test --soak), and no process's memory grows."""
    losses, broker_rss, publisher_rss = churn_through_a_broker_sigkill(tmp_path, 1_000_000)
    assert losses == [0] * 4
    for samples in [*broker_rss, *publisher_rss]:
        assert len(samples) >= 9 and flat(samples), samples
