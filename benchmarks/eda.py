"""Figure 9: the delay from ``event_handler`` to a rulebook's action starting, through a broker process and the
real ``ansible-rulebook`` running the bus's event source (zmq_emitter/consumers/eda, docs/eda.md).

The rulebook takes the source by file (``-S``) on the broker's backend, filtered by ZeroMQ to one run and one
event name, and has one rule on that event name whose action is ``debug``, printing the event's counter.
``debug`` is the action that does least before its first visible effect: ansible-rulebook's action loop calls
it as the rule fires and its first act is to print (no process, no thread, no network), so the line's
appearance is the action starting.  ``run_playbook``/``run_module`` would add ansible-runner's start-up (a
second or more) to every figure, measuring Ansible rather than the bus and the rule engine; ``print_event``
is ``debug`` with the whole event pretty-printed.  ansible-rulebook runs with PYTHONUNBUFFERED=1, so the line
reaches the pipe as it is printed; a thread here takes ``time.monotonic_ns()`` as each line arrives
(the same machine's CLOCK_MONOTONIC as the sender's: the pipe and the thread's wake-up, tens of microseconds,
are counted in the delay).

The sender calls ``event_handler`` at a fixed modest rate (a rule engine's load, not a flood: figure 4 is the
bus at rate) with events that all match the rule, taking ``time.monotonic_ns()`` just before each call, and
pairs each with the action that printed its counter: matched (sent) against fired, none lost, none twice.

    from benchmarks import eda, common
    result = eda.run(common.load_corpus(), reps=3, n=200, rate=20)
"""
from __future__ import annotations

import collections
import subprocess
import threading
import time
from array import array
from pathlib import Path

from zmq_emitter.consumers import eda
from zmq_emitter.runner import plugin

from . import common
from .hotpath import publisher_of

IDENT, EVENT, MARK = "eda-bench", "runner_on_failed", "EDA-FIRED"
TARGET_P99_MS = 50.0

RULEBOOK = """
- name: bench
  hosts: all
  sources:
    - runner_events:
        endpoints: {backend}
        runs: [{ident}]
        events: [{event}]
  rules:
    - name: fired
      condition: event.event == "{event}"
      action:
        debug:
          msg: "{mark} {{{{ event.counter }}}}"
"""


class Rulebook:
    """``ansible-rulebook`` as a real process; ``fired`` maps each counter its action printed to the
    ``time.monotonic_ns()`` of the line's arrival (``twice``: counters printed again)."""

    def __init__(self, tmp: Path, backend: str):
        (tmp / "rulebook.yml").write_text(RULEBOOK.format(backend=backend, ident=IDENT, event=EVENT, mark=MARK))
        (tmp / "hosts").write_text("localhost ansible_connection=local\n")
        self.proc = subprocess.Popen([str(common.BIN / "ansible-rulebook"), "-r", "rulebook.yml", "-i", "hosts",
                                      "-S", str(eda.SOURCES)], cwd=tmp, env=common.runner_env(PYTHONUNBUFFERED="1"),
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.fired: dict[int, int] = {}
        self.twice = 0
        self.tail: collections.deque = collections.deque(maxlen=40)  # for the error message if it ends
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        prefix = MARK.encode() + b" "
        for line in self.proc.stdout:
            now = time.monotonic_ns()
            if line.startswith(prefix):
                counter = int(line[len(prefix):])
                if counter in self.fired:
                    self.twice += 1
                else:
                    self.fired[counter] = now
            else:
                self.tail.append(line.decode(errors="replace"))

    def wait_fired(self, counters, timeout: float) -> bool:
        """Until every one of ``counters`` has fired (True), the deadline passes or the rulebook ends."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(c in self.fired for c in counters):
                return True
            if self.proc.poll() is not None:
                raise RuntimeError(f"ansible-rulebook ended ({self.proc.returncode}):\n{''.join(self.tail)}")
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(10)

    def __enter__(self) -> "Rulebook":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _matching(corpus: list[dict], first: int, n: int) -> list[dict]:
    """``n`` real events of the corpus (the task results, the events a rule is usually on) renamed to the
    rule's event in run ``IDENT``, numbered ``first``... by their ``counter``."""
    results = [e for e in corpus if e.get("event") == "runner_on_ok"] or corpus
    return [dict(results[i % len(results)], event=EVENT, runner_ident=IDENT, counter=first + i) for i in range(n)]


def _connect(config, rulebook: Rulebook, corpus: list[dict], timeout: float = 120.0) -> None:
    """Matching events with negative counters until one fires (the JVM, the rules and the source's
    subscription are in place), then one more, waited for: all before it have been through."""
    deadline, counter = time.monotonic() + timeout, -1
    while time.monotonic() < deadline:
        plugin.event_handler(config, _matching(corpus, counter, 1)[0])
        if rulebook.wait_fired([counter], 0.5):
            last = counter - 1
            plugin.event_handler(config, _matching(corpus, last, 1)[0])
            if rulebook.wait_fired([last], 30):
                return
        counter -= 2
    raise RuntimeError(f"no rule fired within {timeout}s:\n{''.join(rulebook.tail)}")


def _one(config, rulebook: Rulebook, events: list, rate: float) -> dict:
    handler, period, sent = plugin.event_handler, 1e9 / rate, array("q")
    t_start = time.monotonic_ns()
    for i, event in enumerate(events):
        ahead = t_start + i * period - time.monotonic_ns()
        if ahead > 200_000:
            time.sleep(ahead / 1e9)
        sent.append(time.monotonic_ns())
        handler(config, event)
    t_end = time.monotonic_ns()
    publisher_of(config).flush(30)
    counters = [e["counter"] for e in events]
    rulebook.wait_fired(counters, 30)
    fired = [(rulebook.fired[c] - s) / 1e6 for c, s in zip(counters, sent) if c in rulebook.fired]  # ms
    latencies = sorted(fired) or [float("nan")]
    return {"achieved_rate": len(events) / ((t_end - t_start) / 1e9), "matched": len(events), "fired": len(fired),
            "p50_ms": common.percentile(latencies, 50), "p99_ms": common.percentile(latencies, 99),
            "max_ms": latencies[-1]}


def run(corpus: list[dict], reps: int, n: int, rate: float = 20) -> dict:
    title = (f"9. Delay event_handler -> rule's action starting in ansible-rulebook via broker ({n:,} matching "
             f"events at {rate:g}/s x {reps} reps, milliseconds, medians of the per-rep figure (min-max))")
    headers = ["path", "achieved /s", "p50 ms", "p99 ms", "max ms", "matched / fired"]
    problem = eda.rulebook_problem(common.BIN / "ansible-rulebook")
    if problem is not None:
        return {"title": title, "headers": headers, "rows": [], "targets": [], "data": {},
                "skipped": f"figure 9 skipped: {problem}"}
    samples = []
    with common.Tmp() as tmp, common.BrokerProcess(tmp) as broker, Rulebook(tmp, broker.backend) as rulebook:
        config = common.RunnerConfig(runner_zmq_url=broker.frontend)
        t0 = time.monotonic()
        _connect(config, rulebook, corpus)
        ready_s = time.monotonic() - t0
        for rep in range(reps):
            samples.append(_one(config, rulebook, _matching(corpus, rep * n, n), rate))
        twice = rulebook.twice
    d = {key: common.summary(r[key] for r in samples) for key in ("p50_ms", "p99_ms", "max_ms", "achieved_rate")}
    d.update(matched=sum(r["matched"] for r in samples), fired=sum(r["fired"] for r in samples), twice=twice,
             rate=rate, ready_s=ready_s)
    d["lost"] = d["matched"] - d["fired"]
    fmt = "{:,.1f}"
    rows = [["runner -> broker -> ansible-rulebook (debug action)", common.spread(d["achieved_rate"], fmt),
             common.spread(d["p50_ms"], fmt), common.spread(d["p99_ms"], fmt), common.spread(d["max_ms"], fmt),
             f"{d['matched']} / {d['fired']}, {d['lost']} lost, {twice} twice"],
            ["target", "", "", f"<= {TARGET_P99_MS:g}", "", "0 lost, 0 twice"]]
    p99 = d["p99_ms"]["median"]
    targets = [{"target": f"p99 delay to the action starting <= {TARGET_P99_MS:g} ms at {rate:g} events/s",
                "value": f"{p99:,.1f} ms", "met": p99 <= TARGET_P99_MS},
               {"target": "every matching event fires its action once", "value": f"{d['lost']} lost, {twice} twice",
                "met": d["lost"] == 0 and twice == 0}]
    return {"title": title + f"; the rulebook was ready {ready_s:.1f}s after its start", "headers": headers,
            "rows": rows, "data": d, "targets": targets}
