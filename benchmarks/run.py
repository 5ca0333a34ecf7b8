"""Run the benchmarks: print a table per figure and write the same figures as JSON.

    python3 dev.py bench                     # the full run (~13 min), -> benchmarks/results/latest.json
    python3 dev.py bench --quick             # a small run (~1 min) proving the benchmarks work
    .venv/bin/python benchmarks/run.py --only hotpath,peers --reps 3 --out /tmp/x.json

Figures (module, what):
  hotpath   1. event_handler end to end through a broker process vs the floor (encode + 2 raw sends)
  peers     2. the HTTP emitter and a connection-per-event ZeroMQ emitter on the same events
  fanout    3. the broker vs a bare zmq.proxy; fan-out to 1, 10, 100 subscribers at a fixed rate
  latency   4. event_handler call -> subscriber receipt, p50/p99/max, at fixed rates
  playbook  5. wall time of a real ansible-runner run: emitter off, zmq on, http on
  memory    6. resident size after a million event_handler calls
  hops      8. runner -> edge -> central -> subscriber against one broker: throughput, latency per hop
  eda       9. event_handler call -> a rule's action starting in a real ansible-rulebook (skipped without Java 17+)
  stores   10. the history in memory, the journal, JetStream R1 and R3: acknowledged/s, ack latency (skipped without
               nats-server)
  web      11. the web view in headless chromium: events/s a run's page keeps up with, its memory after a
               10,000-event run (skipped without chromium, chromium-driver and selenium)
  profile   where the hot path's time goes (cProfile), broker history on and off

Every figure runs its contenders in the same run, alternating, several repetitions, and
reports medians with (min-max).  The event corpus is the job_events of one real run of
benchmarks/project (cached in benchmarks/.cache/).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import (charts, common, eda, fanout, hops, hotpath, latency, memory, peers, playbook,  # noqa: E402
                        profile_hotpath, stores, web)

FIGURES = ("hotpath", "peers", "fanout", "latency", "playbook", "memory", "hops", "eda", "stores", "web", "profile")

# (full, quick) sizes of each figure.
SIZES = {
    "reps": (5, 2),
    "hotpath_n": (20_000, 1_000),
    "hotpath_burst": (150_000, 2_000),  # the burst the history must keep up with (issue: the hot path at the floor)
    "peers_fast": (20_000, 1_000),
    "peers_slow": (300, 30),
    "fanout_n": (50_000, 2_000),
    "fanout_rate": (500, 200),
    "fanout_seconds": (4.0, 0.5),
    "fanout_reps": (2, 1),
    "latency_rates": ((1_000, 10_000), (1_000,)),
    "latency_seconds": (2.0, 0.5),
    "playbook_reps": (12, 2),  # pairs: enough for a 95% interval of the median difference
    "playbook_scale": (1, 1),
    "memory_calls": (1_000_000, 10_000),
    "profile_n": (20_000, 1_000),
    "hops_n": (50_000, 2_000),
    "hops_rates": ((1_000, 10_000), (1_000,)),
    "eda_n": (300, 10),  # matching events per rep, at eda_rate: 15 s a rep (full), 0.5 s (quick)
    "eda_rate": (20, 20),
    "stores_n": (20_000, 300),
    "stores_rates": ((1_000,), (1_000,)),
    "stores_seconds": (3.0, 0.3),
    "web_n": (10_000, 1_000),
    "web_rates": ((1_000, 5_000, None), (1_000,)),  # None: as fast as event_handler goes
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes: proves the benchmarks work, ~1 minute")
    parser.add_argument("--only", default=",".join(FIGURES), help=f"comma-separated figures of {', '.join(FIGURES)}")
    parser.add_argument("--reps", type=int, help="repetitions per contender (default 5, quick 2)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "latest.json",
                        help="where to write the JSON (default benchmarks/results/latest.json)")
    args = parser.parse_args(argv)
    args.only = [f.strip() for f in args.only.split(",") if f.strip()]
    unknown = [f for f in args.only if f not in FIGURES]
    if unknown:
        parser.error(f"--only: unknown figure(s) {', '.join(unknown)}; accepted: {', '.join(FIGURES)}")
    if args.reps is not None and args.reps < 1:
        parser.error("--reps must be 1 or more")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    size = {key: value[1 if args.quick else 0] for key, value in SIZES.items()}
    reps = args.reps or size["reps"]
    os.environ.pop("RUNNER_HTTP_URL", None)
    # The figures stop their brokers before this process exits: the plugin would spool its closing reports into
    # the user's state directory for some later process to send.  The spool acts only at exit; it is not measured.
    os.environ.setdefault("RUNNER_ZMQ_SPOOL", "none")
    started = time.monotonic()
    corpus = common.load_corpus()
    corpus_path = str(common.corpus_file())
    report = {"command": " ".join(["benchmarks/run.py", *(sys.argv[1:] if argv is None else argv)]),
              "quick": args.quick, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": common.machine(),
              "corpus": common.corpus_stats(corpus),
              "corpus_small": common.corpus_stats(common.load_corpus("small")), "figures": {}}
    print(f"machine: {report['machine']}\ncorpus: {report['corpus']}\nsmall-event corpus: {report['corpus_small']}\n",
          flush=True)

    runners = {
        "hotpath": lambda: hotpath.run(corpus, reps, size["hotpath_n"], small=common.load_corpus("small"),
                                        burst=size["hotpath_burst"]),
        "peers": lambda: peers.run(corpus, reps, size["peers_fast"], size["peers_slow"]),
        "fanout": lambda: fanout.run(corpus_path, args.reps or size["fanout_reps"], size["fanout_n"],
                                     size["fanout_rate"], size["fanout_seconds"]),
        "latency": lambda: latency.run(corpus, reps, size["latency_rates"], size["latency_seconds"]),
        "playbook": lambda: playbook.run(args.reps or size["playbook_reps"], size["playbook_scale"]),
        "memory": lambda: memory.run(corpus_path, size["memory_calls"]),
        "hops": lambda: hops.run(corpus, reps, size["hops_n"], size["hops_rates"], size["latency_seconds"]),
        "eda": lambda: eda.run(corpus, reps, size["eda_n"], size["eda_rate"]),
        "stores": lambda: stores.run(corpus, reps, size["stores_n"], size["stores_rates"], size["stores_seconds"]),
        "web": lambda: web.run(corpus, size["web_n"], size["web_rates"]),
    }
    for name in args.only:
        t0 = time.monotonic()
        if name == "profile":
            result = {"history_on": profile_hotpath.run(corpus, size["profile_n"], history=True),
                      "history_off": profile_hotpath.run(corpus, size["profile_n"], history=False)}
            for key in ("history_on", "history_off"):
                print(profile_hotpath.format_rows(result[key]) + "\n", flush=True)
                del result[key]["text"]
        else:
            result = runners[name]()
            if "skipped" in result:  # what the figure needs is not on this machine: say so, go on
                print(f"{result['skipped']}\n", flush=True)
            else:
                print(f"{result['title']}\n{common.table(result['headers'], result['rows'])}", flush=True)
                for extra in result.get("tables", []):  # a figure's further tables (figure 1's CPU by part)
                    print(f"\n{extra['title']}\n{common.table(extra['headers'], extra['rows'])}", flush=True)
                for target in result["targets"]:
                    print(f"  target: {target['target']}: {target['value']} -> "
                          f"{'met' if target['met'] else 'NOT met'}")
                print(flush=True)
        result["seconds"] = time.monotonic() - t0
        report["figures"][name] = result

    report["seconds"] = time.monotonic() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_name(args.out.name + ".tmp")
    partial.write_text(json.dumps(report, indent=1) + "\n")
    partial.rename(args.out)
    charts_written = charts.draw(report, args.out.parent)
    print(f"done in {report['seconds']:.0f}s; figures written to {args.out}; charts: "
          f"{', '.join(str(p) for p in charts_written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
