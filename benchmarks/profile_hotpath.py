"""Where the hot path's time goes: cProfile of event_handler over the corpus, through a broker process.

The broker (history on, as by default, so the plugin also handles acknowledgements) and a
subscriber run in their own processes, as in figure 1.  Prints the functions by their own
time (tottime).  Also run by ``benchmarks/run.py`` (full mode), into the JSON.

    .venv/bin/python benchmarks/profile_hotpath.py [N]
"""
from __future__ import annotations

import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zmq_emitter.runner import plugin  # noqa: E402

from benchmarks import common  # noqa: E402
from benchmarks.hotpath import publisher_of  # noqa: E402


def run(corpus: list[dict], n: int, history: bool = True, top: int = 15) -> dict:
    events = common.cycle(corpus, n)
    with common.Tmp() as tmp, common.BrokerProcess(tmp, history=history) as broker, \
            common.Worker("recv", "sub", "connect", broker.backend) as sub:
        config = common.RunnerConfig(runner_zmq_url=broker.frontend)
        common.connect_through(lambda: plugin.event_handler(config, corpus[0]), [sub])
        handler = plugin.event_handler
        profiler = cProfile.Profile()
        t0 = time.perf_counter()
        profiler.enable()
        for event in events:
            handler(config, event)
        profiler.disable()
        seconds = time.perf_counter() - t0
        publisher_of(config).flush(30)
        received = sub.call("wait", n, 30)["counts"][0]
    stats = pstats.Stats(profiler)
    total = stats.total_tt
    rows = []
    for (filename, line, name), (_, calls, tottime, cumtime, _) in sorted(
            stats.stats.items(), key=lambda item: -item[1][2])[:top]:
        where = f"{Path(filename).name}:{line}({name})" if line else name
        rows.append({"function": where, "calls": calls, "tottime_s": tottime, "share": tottime / total,
                     "us_per_event": tottime / n * 1e6, "cumtime_s": cumtime})
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(top)
    return {"events": n, "history": history, "seconds_profiled": seconds, "received": received,
            "total_tottime_s": total, "us_per_event": total / n * 1e6, "top": rows, "text": text.getvalue()}


def format_rows(result: dict) -> str:
    headers = ["function (own time)", "calls", "share", "us/event"]
    rows = [[r["function"], r["calls"], f"{r['share']:.1%}", f"{r['us_per_event']:.2f}"] for r in result["top"]]
    return (f"Profile of {result['events']} event_handler calls (broker history "
            f"{'on' if result['history'] else 'off'}; {result['us_per_event']:.1f} us/event under cProfile; "
            f"{result['received']}/{result['events']} received)\n" + common.table(headers, rows))


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    corpus = common.load_corpus()
    for with_history in (True, False):
        print(format_rows(run(corpus, count, history=with_history)))
        print()
