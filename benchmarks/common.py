"""Shared helpers of the benchmarks: the event corpus, helper processes, statistics, the machine.

Every figure runs its contenders side by side in one process tree, alternating, and
reports medians with their spread::

    from benchmarks import common
    corpus = common.load_corpus()                 # real job_events, cached in benchmarks/.cache/
    with common.Tmp() as tmp, common.broker_process(tmp) as broker:
        with common.Worker("recv", "sub", "connect", broker.backend) as sub:
            ...
            sub.call("wait", n, 10.0)             # -> {"counts": [n], "first_ns": ..., "last_ns": ...}
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import zmq

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CACHE = HERE / ".cache"
PROJECT = HERE / "project"          # the benchmark playbook project
PLAYBOOK = "bench.yml"
SMALL_PROJECT = HERE / "project-small"  # the small-event corpus's playbook project
SMALL_PLAYBOOK = "small.yml"
SMALL_CORPUS = HERE / "corpus-small.json"  # committed: its events, median ~1 KB
CORPORA = ("large", "small")
BIN = Path(sys.executable).parent
WORKERS = HERE / "workers.py"


# ----------------------------------------------------------------------------------------
# Statistics


def summary(values: Iterable[float]) -> dict:
    """Median with its spread (min, max) and the raw values."""
    values = list(values)
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values),
            "values": values}


def alternate(variants: list, reps: int) -> Iterator[tuple[int, Any]]:
    """(rep, variant) pairs: every variant once per repetition, the order reversed every other one.

    Reversing cancels the drift of a machine that slowly gets busier or quieter.
    """
    for rep in range(reps):
        for variant in (variants if rep % 2 == 0 else list(reversed(variants))):
            yield rep, variant


def median_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(median, low, high): a distribution-free confidence interval for the median of ``values``.

    From the order statistics (the sign test's interval): [x(k), x(n+1-k)] covers the true median with
    probability 1 - 2 P(Binomial(n, 1/2) < k); k is the largest with that at least ``confidence``.
    With too few values for that confidence, the interval is the whole range.
    """
    from math import comb

    xs, n = sorted(values), len(values)
    k, below = 1, 0.0
    for j in range(1, n // 2 + 1):
        below += comb(n, j - 1) / 2 ** n  # P(X <= j-1)
        if 1 - 2 * below < confidence:
            break
        k = j
    return statistics.median(xs), xs[k - 1], xs[n - k]


def percentile(sorted_values: list, q: float) -> float:
    """The nearest-rank percentile of an already sorted list."""
    index = min(len(sorted_values) - 1, max(0, int(round(q / 100 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[index]


# ----------------------------------------------------------------------------------------
# The corpus: real ansible-runner events


def runner_env(**extra: str) -> dict:
    """Environment for ansible-runner: this venv on PATH, no emitter settings leaking in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNNER_ZMQ_", "RUNNER_HTTP_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def run_playbook(workdir: Path, ident: str, env: dict, scale: int = 1, project: Path = PROJECT,
                 playbook: str = PLAYBOOK) -> subprocess.CompletedProcess:
    """``ansible-runner run`` of a fresh copy of a benchmark playbook project in ``workdir``."""
    copy = workdir / f"project-{ident}"
    shutil.copytree(project, copy)
    return subprocess.run([str(BIN / "ansible-runner"), "run", str(copy), "-p", playbook, "--ident", ident,
                           "--cmdline", f"-e scale={scale}"], env=env, capture_output=True, text=True,
                          timeout=300)


def job_events(workdir: Path, ident: str) -> list[dict]:
    """The events ansible-runner wrote for run ``ident``, in counter order."""
    files = (workdir / f"project-{ident}" / "artifacts" / ident / "job_events").glob("*.json")
    ordered = sorted(files, key=lambda f: int(f.name.split("-", 1)[0]))
    return [json.loads(f.read_bytes()) for f in ordered]


def _project_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted(PROJECT.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(PROJECT)).encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def corpus_file(name: str = "large") -> Path:
    """A corpus (JSON list of job_events) by name (``CORPORA``), made by one real run of its playbook if missing.

    ``large``: benchmarks/project's bench.yml, cached in benchmarks/.cache/ (keyed by the project's contents);
    ``small``: benchmarks/project-small's small.yml, committed as benchmarks/corpus-small.json.
    """
    if name == "small":
        cache, project, playbook = SMALL_CORPUS, SMALL_PROJECT, SMALL_PLAYBOOK
    elif name == "large":
        cache, project, playbook = CACHE / f"corpus-{_project_digest()}.json", PROJECT, PLAYBOOK
    else:
        raise ValueError(f"unknown corpus {name!r}; accepted: {', '.join(CORPORA)}")
    if cache.exists():
        return cache
    with tempfile.TemporaryDirectory(prefix="zmq-bench-corpus-") as tmp:
        result = run_playbook(Path(tmp), "corpus", runner_env(), project=project, playbook=playbook)
        if result.returncode != 0:
            raise RuntimeError(f"the corpus run failed ({result.returncode}): {result.stdout[-2000:]}"
                               f"{result.stderr[-2000:]}")
        events = job_events(Path(tmp), "corpus")
    cache.parent.mkdir(exist_ok=True)
    partial = cache.with_suffix(".tmp")
    partial.write_text(json.dumps(events, indent=None if name == "large" else 0))
    partial.rename(cache)
    return cache


def load_corpus(name: str = "large") -> list[dict]:
    """The job_events of one real run of a benchmark playbook (``corpus_file``), in order."""
    return json.loads(corpus_file(name).read_bytes())


def corpus_stats(corpus: list[dict]) -> dict:
    sizes = sorted(len(json.dumps(event)) for event in corpus)
    return {"events": len(sizes), "bytes_min": sizes[0], "bytes_median": percentile(sizes, 50),
            "bytes_p90": percentile(sizes, 90), "bytes_max": sizes[-1], "bytes_total": sum(sizes)}


def cycle(corpus: list, n: int) -> list:
    """``n`` events: the corpus repeated, in order."""
    return [corpus[i % len(corpus)] for i in range(n)]


class RunnerConfig:
    """What the plugins read of ansible-runner's RunnerConfig: its ``settings`` (env/settings)."""

    def __init__(self, **settings: Any):
        self.settings = settings


# ----------------------------------------------------------------------------------------
# Helper processes


class Tmp(tempfile.TemporaryDirectory):
    """A temporary folder for ipc:// endpoints (short path: ipc paths are limited to ~100 bytes)."""

    def __init__(self):
        super().__init__(prefix="zb-", dir="/tmp")

    def __enter__(self) -> Path:
        return Path(super().__enter__())


def stop_process(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM, then SIGKILL if ``proc`` has not ended within ``grace`` seconds; returns once it has ended.
    (The benchmarks' processes and the test suite's process helpers all stop this way.)"""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Worker:
    """A helper process running ``benchmarks/workers.py ROLE ARGS``, driven by lines on stdin/stdout.

    The worker prints one JSON line when ready, and one JSON line in answer to each command.
    """

    def __init__(self, role: str, *args: Any, wait: bool = True):
        self.role = role
        self.proc = subprocess.Popen([sys.executable, str(WORKERS), role, *map(str, args)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.ready = self._read() if wait else None

    def wait_ready(self) -> "Worker":
        """With ``wait=False``: read the ready line now (start many workers, then wait for all)."""
        if self.ready is None:
            self.ready = self._read()
        return self

    def _read(self) -> Any:
        line = self.proc.stdout.readline()  # workers always answer: the timeouts live in their commands
        if not line:
            raise RuntimeError(f"worker {self.role} exited with {self.proc.wait()} without answering")
        return json.loads(line)

    def send(self, *command: Any) -> None:
        self.proc.stdin.write(" ".join(map(str, command)) + "\n")
        self.proc.stdin.flush()

    def call(self, *command: Any) -> Any:
        self.send(*command)
        return self._read()

    def stop(self) -> None:
        stop_process(self.proc, 5)

    def __enter__(self) -> "Worker":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def call_all(workers: list, *command: Any) -> list:
    """The same command to every worker at once, then their answers: they work in parallel."""
    for worker in workers:
        worker.send(*command)
    return [worker._read() for worker in workers]


class BrokerProcess:
    """``zmq-emitter broker`` as its own process on ipc endpoints, forwarding at once (no start-up grace);
    ``extra``: further options (``--upstream ...``).

    Its history service is on (the default) unless ``history=False``, on ipc too; with
    ``on_disk`` the history is also written to ``tmp/<name>-journal`` (``--history-dir``).
    """

    def __init__(self, tmp: Path, name: str = "broker", history: bool = True, on_disk: bool = False,
                 extra: tuple[str, ...] = ()):
        self.frontend, self.backend = f"ipc://{tmp}/{name}-in", f"ipc://{tmp}/{name}-out"
        history_endpoint = f"ipc://{tmp}/{name}-history" if history else "none"
        journal = ["--history-dir", str(tmp / f"{name}-journal")] if on_disk else []
        self.proc = subprocess.Popen([str(BIN / "zmq-emitter"), "broker", "--frontend", self.frontend,
                                      "--backend", self.backend, "--history", history_endpoint,
                                      "--startup-grace", "0", *journal, *extra],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        line = self.proc.stderr.readline()
        if "zmq-emitter broker:" not in line:
            raise RuntimeError(f"broker did not start: {line}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> "BrokerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# The bare proxy gets the broker's high-water marks, so the two differ only in what the
# broker adds (its manager thread, statistics, the steerable proxy), not in queue sizes.
BROKER_HWM = 100_000


class ProxyProcess(Worker):
    """A bare ``zmq.proxy(XSUB, XPUB)`` in its own process: the floor the broker is compared to."""

    def __init__(self, tmp: Path, name: str = "proxy"):
        self.frontend, self.backend = f"ipc://{tmp}/{name}-in", f"ipc://{tmp}/{name}-out"
        super().__init__("proxy", self.frontend, self.backend, BROKER_HWM)


def connect_through(send_one, subs: list, timeout: float = 10.0) -> None:
    """Send single messages until every socket of every ``subs`` worker receives one, then drain.

    A PUB drops what it sends before a subscription has arrived (the slow joiner), so
    nothing is timed before the whole path is connected end to end.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        send_one()
        if all(min(got["counts"]) >= 1 for got in call_all(subs, "wait", 1, 0.2)):
            call_all(subs, "wait", 10**12, 0.2)  # drain whatever else was in flight
            return
    raise RuntimeError(f"no message reached every subscriber within {timeout}s")


def table(headers: list[str], rows: list[list]) -> str:
    """A plain-text table, columns padded to their widest cell."""
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def spread(s: dict, fmt: str = "{:,.0f}") -> str:
    """``median (min-max)`` of a summary()."""
    return f"{fmt.format(s['median'])} ({fmt.format(s['min'])}-{fmt.format(s['max'])})"


# ----------------------------------------------------------------------------------------
# The machine


def machine() -> dict:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg()
    return {"cores": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "pyzmq": zmq.pyzmq_version(), "libzmq": zmq.zmq_version(), "platform": platform.platform(),
            "loadavg_at_start": [round(x, 2) for x in load]}


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of each thread of process ``pid``, summed by thread name (``/proc/PID/task/*/comm``:
    the project names its threads, e.g. ``zmq-history``; libzmq's are ``ZMQbg/IO/0``...), and ``"all"``."""
    tick, seconds = os.sysconf("SC_CLK_TCK"), {"all": 0.0}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        used = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        seconds[name] = seconds.get(name, 0.0) + used
        seconds["all"] += used
    return seconds


def cpu_used(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Per thread name, the CPU seconds ``thread_cpu`` counted between two readings."""
    return {name: used - before.get(name, 0.0) for name, used in after.items()}


def rss_kib() -> int:
    """Resident set size of this process (VmRSS of /proc/self/status), in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")
