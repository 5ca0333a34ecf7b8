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
(the same machine's CLOCK_MONOTONIC as the sender's; the pipe and this thread's wake-up are counted in the
delay, not measured apart).

The sender calls ``event_handler`` at a fixed modest rate (a rule engine's load, not a flood: figure 4 is the
bus at rate) with events that all match the rule, taking ``time.monotonic_ns()`` just before each call, and
pairs each with the action that printed its counter: matched (sent) against fired, none lost, none twice.
The events are the corpus's real task results (1.3 to 80 KB of JSON), reported all together and split at
4 KB: ansible-rulebook hands every event to its rule engine (Drools, in the JVM through jpy), whose cost grows
with the event's size.  The second contender, alternating with the first, is the same events to the source
alone in this process (its ``main`` onto an asyncio queue of one, as ansible-rulebook gives it): the bus's and
the source's share of the delay; the rest is ansible-rulebook's.  The rulebook gets an unmeasured pass over
the events first (the JVM compiles the engine's paths as they run: the first seconds after start are slower).

Target: p99 at most 250 ms at 20 events/s.  The promise to rulebook authors is an action "seconds after it
happens"; the actions that matter (``run_playbook``, a job template) then take a second or more to start
Ansible, so a quarter of a second is not what anyone waits on, while a source that polled, batched or
stalled behind a slow event (hundreds of ms) would break it.  Nothing lost, nothing fired twice.

    from benchmarks import eda, common
    result = eda.run(common.load_corpus(), reps=3, n=300, rate=20)
"""
from __future__ import annotations

import asyncio
import collections
import json
import subprocess
import threading
import time
from array import array
from pathlib import Path

from zmq_emitter.consumers import eda
from zmq_emitter.consumers.eda import source
from zmq_emitter.runner import plugin

from . import common
from .hotpath import publisher_of
from .latency import paced_calls

IDENT, SOURCE_IDENT, EVENT, MARK = "eda-bench", "eda-bench-source", "runner_on_failed", "EDA-FIRED"
PATHS = {"rulebook": "runner -> broker -> ansible-rulebook, debug action",
         "source": "runner -> broker -> the source's queue (in-process, no rulebook)"}
# Event sizes (bytes of JSON, half-open ranges): a failed task's event is a few KB; loop results run to 80 KB.
SIZES = {"all": (0, 1 << 62), "small": (0, 4096), "large": (4096, 1 << 62)}
SIZE_LABELS = {"all": "all", "small": "< 4 KB", "large": ">= 4 KB"}
TARGET_P99_MS = 250.0

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
        common.stop_process(self.proc, 15)
        self._reader.join(10)

    def __enter__(self) -> "Rulebook":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _matching(corpus: list[dict], first: int, n: int, ident: str = IDENT) -> list[dict]:
    """``n`` real events of the corpus (the task results, the events a rule is usually on; 1.3 to 80 KB)
    renamed to the rule's event in run ``ident``, numbered ``first``... by their ``counter``."""
    results = [e for e in corpus if e.get("event") == "runner_on_ok"] or corpus
    return [dict(results[i % len(results)], event=EVENT, runner_ident=ident, counter=first + i) for i in range(n)]


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


def _send(config, events: list, rate: float) -> tuple[array, float]:
    """``event_handler`` on each event at ``rate``; the monotonic_ns before each call, and the rate achieved."""
    sent, t_start, _ = paced_calls(config, events, rate)
    achieved = (len(events) - 1) / ((sent[-1] - t_start) / 1e9) if len(events) > 1 else rate
    publisher_of(config).flush(30)
    return sent, achieved


def _delays(events: list, sent: array, fired: dict) -> dict:
    """Per size class: the delays in ms of the events that fired (sorted), and how many were matched."""
    classes: dict = {name: {"matched": 0, "ms": []} for name in SIZES}
    for event, t in zip(events, sent):
        size = len(json.dumps(event))
        for name, (low, high) in SIZES.items():
            if low <= size < high:
                classes[name]["matched"] += 1
                if event["counter"] in fired:
                    classes[name]["ms"].append((fired[event["counter"]] - t) / 1e6)
    for c in classes.values():
        c["ms"].sort()
    return classes


def _rulebook_rep(config, rulebook: Rulebook, events: list, rate: float) -> dict:
    sent, achieved = _send(config, events, rate)
    rulebook.wait_fired([e["counter"] for e in events], 30)
    return {"achieved_rate": achieved, "classes": _delays(events, sent, rulebook.fired)}


def _source_rep(config, backend: str, corpus: list[dict], events: list, rate: float) -> dict:
    """The same events to the source alone, in this process, onto an asyncio queue of one (as
    ansible-rulebook gives it): the bus's and the source's share of the delay."""
    fired: dict[int, int] = {}

    async def consume(queue: asyncio.Queue) -> None:
        while True:
            event = await queue.get()
            fired.setdefault(event["counter"], time.monotonic_ns())

    async def measure() -> tuple[array, float]:
        queue: asyncio.Queue = asyncio.Queue(1)
        task = asyncio.ensure_future(source.main(queue, {"endpoints": backend, "runs": [SOURCE_IDENT],
                                                         "events": [EVENT]}))
        consumer = asyncio.ensure_future(consume(queue))
        counter = -1  # the slow joiner: until one arrives, then one more (everything before it is through)
        while len([c for c in fired if c < 0]) < 2 and counter > -1000:
            plugin.event_handler(config, _matching(corpus, counter, 1, SOURCE_IDENT)[0])
            counter -= 1
            await asyncio.sleep(0.1)
        loop = asyncio.get_running_loop()  # the sender blocks in sleep: it runs in a thread, the source here
        result = await loop.run_in_executor(None, _send, config, events, rate)
        deadline = time.monotonic() + 30
        while not all(e["counter"] in fired for e in events) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        task.cancel()
        consumer.cancel()
        await asyncio.gather(task, consumer, return_exceptions=True)
        return result

    sent, achieved = asyncio.run(measure())
    return {"achieved_rate": achieved, "classes": _delays(events, sent, fired)}


def run(corpus: list[dict], reps: int, n: int, rate: float = 20) -> dict:
    title = (f"9. Delay event_handler -> a rule's action starting in ansible-rulebook, via a broker ({n:,} matching "
             f"events at {rate:g}/s x {reps} reps, milliseconds, medians of the per-rep figure (min-max))")
    headers = ["path", "events", "achieved /s", "p50 ms", "p99 ms", "max ms", "matched / fired"]
    problem = eda.rulebook_problem(common.BIN / "ansible-rulebook")
    if problem is not None:
        return {"title": title, "headers": headers, "rows": [], "targets": [], "data": {},
                "skipped": f"figure 9 skipped: {problem}"}
    samples: dict = {path: [] for path in PATHS}
    with common.Tmp() as tmp, common.BrokerProcess(tmp) as broker, Rulebook(tmp, broker.backend) as rulebook:
        config = common.RunnerConfig(runner_zmq_url=broker.frontend)
        t0 = time.monotonic()
        _connect(config, rulebook, corpus)
        ready_s = time.monotonic() - t0
        # The JVM compiles the rule engine's paths as they run: the first seconds are slower.  A rulebook runs
        # for days; what is measured is after one unmeasured pass over every event twice.
        warm = _matching(corpus, -10_000, 2 * len([e for e in corpus if e.get("event") == "runner_on_ok"]))
        _rulebook_rep(config, rulebook, warm, rate)
        for rep, path in common.alternate(list(PATHS), reps):
            events = _matching(corpus, (rep + 1) * n, n, IDENT if path == "rulebook" else SOURCE_IDENT)
            samples[path].append(_rulebook_rep(config, rulebook, events, rate) if path == "rulebook"
                                 else _source_rep(config, broker.backend, corpus, events, rate))
        twice = rulebook.twice
    data: dict = {"rate": rate, "ready_s": ready_s, "twice": twice, "target_p99_ms": TARGET_P99_MS}
    rows = []
    fmt = "{:,.1f}"
    for path, label in PATHS.items():
        achieved = common.summary(r["achieved_rate"] for r in samples[path])
        data[path] = {"achieved_rate": achieved}
        for name, (low, high) in SIZES.items():
            runs = [r["classes"][name] for r in samples[path]]
            if not any(c["matched"] for c in runs):
                continue
            d = {q: common.summary(common.percentile(c["ms"], p) if c["ms"] else float("nan") for c in runs)
                 for q, p in (("p50_ms", 50), ("p99_ms", 99))}
            d["max_ms"] = common.summary(c["ms"][-1] if c["ms"] else float("nan") for c in runs)
            d["matched"] = sum(c["matched"] for c in runs)
            d["fired"] = sum(len(c["ms"]) for c in runs)
            d["lost"] = d["matched"] - d["fired"]
            d["delays_ms"] = sorted(round(x, 3) for c in runs for x in c["ms"])  # for the chart
            data[path][name] = d
            rows.append([label if name == "all" else "", SIZE_LABELS[name], common.spread(achieved, fmt)
                         if name == "all" else "", common.spread(d["p50_ms"], fmt), common.spread(d["p99_ms"], fmt),
                         common.spread(d["max_ms"], fmt), f"{d['matched']} / {d['fired']}, {d['lost']} lost"])
    rulebook_all = data["rulebook"]["all"]
    rows.append(["target", "all", "", "", f"<= {TARGET_P99_MS:g}", "", "0 lost, 0 fired twice"])
    p99 = rulebook_all["p99_ms"]["median"]
    lost = rulebook_all["lost"] + data["source"]["all"]["lost"]
    targets = [{"target": f"p99 delay to the rule's action starting <= {TARGET_P99_MS:g} ms at {rate:g} events/s",
                "value": f"{p99:,.1f} ms", "met": p99 <= TARGET_P99_MS},
               {"target": "every matching event fires its action, once", "value": f"{lost} lost, {twice} twice",
                "met": lost == 0 and twice == 0}]
    return {"title": title + f"; the rulebook was ready {ready_s:.1f}s after its start", "headers": headers,
            "rows": rows, "data": data, "targets": targets}
