"""Figure 5: wall time of a real ``ansible-runner run`` of the benchmark playbook.

Three modes, alternating, each run a fresh copy of the project:

- off:  no emitter configured (both plugins are installed, and called, but inactive)
- zmq:  RUNNER_ZMQ_URL set, a ``zmq-emitter broker`` process and a subscriber process live
- http: RUNNER_HTTP_URL set, a local HTTP server process live

For the two emitters the receiver must have got every event and status of the run.

The comparison is paired: every repetition runs the three modes back to back (the order reversed
every other repetition), and the figure is the median of the per-repetition differences
``zmq / off - 1`` with its 95% confidence interval (order statistics, no assumption about the
noise).  Whatever load the shared machine has in one repetition weighs on both sides of its pair.
The target holds when the interval's upper end is at most +5%: a plugin that slowed runs by
more would fail it, and a machine too noisy to tell shows as a wide interval (the resolution).

    from benchmarks import playbook
    result = playbook.run(reps=3, scale=1)
"""
from __future__ import annotations

import time
from pathlib import Path

from . import common

MODES = ("off", "zmq", "http")


def run(reps: int, scale: int = 1) -> dict:
    samples: dict = {mode: {"seconds": [], "lost": [], "expected": [], "notes": []} for mode in MODES}
    with common.Tmp() as tmp, common.BrokerProcess(tmp) as broker, \
            common.Worker("recv", "sub", "connect", broker.backend, 1, "event/,status/") as sub, \
            common.Worker("http") as http_server:
        time.sleep(0.3)  # the subscriber's subscription reaches the broker (slow joiner)
        receivers = {"zmq": sub, "http": http_server}
        envs = {"off": common.runner_env(), "zmq": common.runner_env(RUNNER_ZMQ_URL=broker.frontend),
                "http": common.runner_env(RUNNER_HTTP_URL=http_server.ready["url"])}
        for rep, mode in common.alternate(list(MODES), reps):
            ident = f"{mode}-{rep}"
            t0 = time.monotonic()
            result = common.run_playbook(Path(tmp), ident, envs[mode], scale)
            samples[mode]["seconds"].append(time.monotonic() - t0)
            if result.returncode != 0:
                raise RuntimeError(f"playbook run {ident} failed ({result.returncode}): {result.stderr[-2000:]}")
            if mode in receivers:
                expected = len(common.job_events(Path(tmp), ident)) + 3  # + starting, running, successful
                got = receivers[mode].call("wait", expected, 10)["counts"][0]
                samples[mode]["lost"].append(expected - got)
                samples[mode]["expected"].append(expected)
                if got != expected:  # keep what the run said, to tell why
                    samples[mode]["notes"].append(f"{ident}: got {got} of {expected}; stderr: "
                                                  f"{result.stderr[-1000:]!r}; stdout: {result.stdout[-1000:]!r}")
    data = {mode: {"seconds": common.summary(s["seconds"]), "lost": sum(s["lost"]), "lost_per_run": s["lost"],
                   "expected": sum(s["expected"]), "notes": s["notes"]} for mode, s in samples.items()}
    off = data["off"]["seconds"]
    rows = []
    pairs = [z / o - 1 for z, o in zip(samples["zmq"]["seconds"], samples["off"]["seconds"])]
    for mode, d in data.items():
        d["vs_off"] = d["seconds"]["median"] / off["median"]
        rows.append([mode, common.spread(d["seconds"], "{:.2f}"), f"{d['vs_off']:.3f}",
                     f"{d['lost']}/{d['expected']}" if mode in ("zmq", "http") else "-"])
    median, low, high = common.median_interval(pairs)
    data["paired_zmq_vs_off"] = {"differences": pairs, "median": median, "ci95": [low, high],
                                 "resolution": (high - low) / 2}
    data["noise"] = (off["max"] - off["min"]) / off["median"]  # the spread of the "off" runs themselves
    targets = [{"target": "plugin on vs off on a real run: 95% CI of the median paired difference <= +5%",
                "value": f"{median:+.1%} (95% CI {low:+.1%} to {high:+.1%}, {len(pairs)} pairs; "
                         f"resolution +-{(high - low) / 2:.1%}), lost {data['zmq']['lost']}",
                "met": high <= 0.05 and data["zmq"]["lost"] == 0}]
    return {"title": f"5. Real ansible-runner run of benchmarks/project (scale={scale}, x {reps} reps, seconds)",
            "headers": ["emitter", "wall s median (min-max)", "vs off", "received lost/expected"],
            "rows": rows, "data": data, "targets": targets}
