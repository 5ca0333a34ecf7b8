"""Figure 11: the web view (``zmq-emitter web``) in a real headless browser under a 10,000-event run.

A broker process and a ``zmq-emitter web`` process on it; Debian's chromium (headless, driven by Selenium
through chromium-driver, tests/web_helpers.py) shows the run's page, opened before the run starts.  The
benchmark process calls ``event_handler`` on the corpus's real events (ANSI-coloured stdout, 0.4 to 80 KB
of JSON each), renamed to one run and numbered by ``counter``, at a fixed rate (``latency.paced_calls``) or
as fast as it goes, and watches the page's own count of the events it has (each once: the page drops
repeats and counts them).  Per rate, a fresh page:

- events/s at the page: events / (the page having the last one - the first call); "lag": how long after the
  last call the page had everything (a page that keeps up has a lag of a few batches, 0.1 s each);
- frames: the intervals between the page's animation frames during the run (``requestAnimationFrame``):
  a page that froze would show a long one;
- memory after the run: the JS heap after a garbage collection (Chrome DevTools Protocol:
  ``HeapProfiler.collectGarbage``, then ``Performance.getMetrics`` JSHeapUsedSize) and the DOM's nodes (the
  output is windowed: the nodes do not grow with the events).

    from benchmarks import web, common
    result = web.run(common.load_corpus(), n=10_000, rates=(1_000, 5_000, None))
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from zmq_emitter.runner import plugin

from . import common
from .hotpath import publisher_of
from .latency import paced_calls

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from web_helpers import Browser, WebProcess, browser_unavailable  # noqa: E402  (one browser helper, shared)

TITLE = "11. The web view: a run's page in headless chromium"
TARGET_RATE, TARGET_LAG_S, TARGET_HEAP_MIB, TARGET_NODES = 1_000, 2.0, 150, 5_000

FRAMES = """
window.__frames = [];
let last = performance.now();
const tick = (t) => { window.__frames.push(t - last); last = t; if (!window.__stopFrames) requestAnimationFrame(tick); };
requestAnimationFrame(tick);
"""


def _events(corpus: list[dict], ident: str, n: int) -> list[dict]:
    return [dict(corpus[i % len(corpus)], runner_ident=ident, counter=i + 1) for i in range(n)]


def _one(browser: Browser, web: WebProcess, config, corpus: list[dict], ident: str, n: int,
         rate: float | None) -> dict:
    browser.open(f"{web.url}#/run/{ident}")
    browser.wait("return document.getElementById('link-state').textContent === 'live'", 30, "the page's stream")
    browser.js(FRAMES)
    events = _events(corpus, ident, n)
    if rate is None:
        t_start = time.monotonic_ns()
        for event in events:
            plugin.event_handler(config, event)
        t_end = time.monotonic_ns()
    else:
        _, t_start, t_end = paced_calls(config, events, rate)
    publisher_of(config).flush(30)
    deadline = time.monotonic() + 120
    held = "const r = window.zmqEmitterWeb.run(); return window.zmqEmitterWeb.events().length + (r ? r.dropped : 0)"
    while browser.js(held) < n:  # every event shown, or some no longer held by the server (--max-run-mib)
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    t_page = time.monotonic_ns()
    shown = browser.js("return window.zmqEmitterWeb.events().length")
    dropped = browser.js("const r = window.zmqEmitterWeb.run(); return r ? r.dropped : 0")
    browser.js("window.__stopFrames = true")
    frames = sorted(browser.js("return window.__frames"))
    browser.driver.execute_cdp_cmd("HeapProfiler.collectGarbage", {})
    browser.driver.execute_cdp_cmd("Performance.enable", {})
    metrics = {m["name"]: m["value"] for m in browser.driver.execute_cdp_cmd("Performance.getMetrics", {})["metrics"]}
    return {"rate_asked": rate, "sent": n, "shown": shown, "repeats": browser.js("return window.zmqEmitterWeb.repeats()"), "dropped_by_server": dropped,
            "send_per_s": n / ((t_end - t_start) / 1e9), "page_per_s": shown / ((t_page - t_start) / 1e9),
            "lag_s": (t_page - t_end) / 1e9, "frame_p99_ms": common.percentile(frames, 99) if frames else None,
            "frame_max_ms": frames[-1] if frames else None, "heap_mib": metrics["JSHeapUsedSize"] / 2**20,
            "dom_nodes": browser.js("return document.getElementsByTagName('*').length"),
            "output_rows": browser.js("return document.querySelectorAll('#output .row').length")}


def run(corpus: list[dict], n: int, rates: tuple) -> dict:
    reason = browser_unavailable()
    if reason:
        return {"skipped": f"{TITLE}: skipped: {reason}"}
    data = {}
    with common.Tmp() as tmp, common.BrokerProcess(tmp) as broker:
        web = WebProcess(broker.backend, f"ipc://{tmp}/broker-history")
        browser = Browser(tmp / "chromium-profile")
        try:
            config = common.RunnerConfig(runner_zmq_url=broker.frontend)
            warm = _events(corpus, "web-bench-warm", 1)[0]
            deadline = time.monotonic() + 30  # the slow joiner: until the server has a run from this publisher
            browser.open(web.url)
            while not browser.js("return window.zmqEmitterWeb.runs().some((r) => r.ident === 'web-bench-warm')"):
                if time.monotonic() > deadline:
                    raise RuntimeError("the web server never showed the warm-up run")
                plugin.event_handler(config, warm)
                time.sleep(0.1)
            for i, rate in enumerate(rates):
                data[str(rate or "max")] = _one(browser, web, config, corpus, f"web-bench-{i}", n, rate)
        finally:
            browser.close()
            web.stop()
    rows = [[f"{d['rate_asked']:,}/s" if d["rate_asked"] else "as fast as sent", f"{d['send_per_s']:,.0f}",
             f"{d['page_per_s']:,.0f}", f"{d['lag_s']:.2f}", f"{d['frame_p99_ms']:.0f} / {d['frame_max_ms']:.0f}",
             f"{d['heap_mib']:.1f}", f"{d['dom_nodes']:,} ({d['output_rows']} rows)",
             f"{d['sent'] - d['shown']} / {d['repeats']}"] for d in data.values()]
    kept_up = [d for d in data.values() if d["shown"] == d["sent"] and d["lag_s"] <= TARGET_LAG_S]
    best = max((d["page_per_s"] for d in kept_up), default=0.0)
    at_target = data.get(str(TARGET_RATE))
    heap = max(d["heap_mib"] for d in data.values())
    nodes = max(d["dom_nodes"] for d in data.values())
    targets = [
        {"target": f"the page keeps up with {TARGET_RATE:,} events/s (all shown, lag <= {TARGET_LAG_S:g} s)",
         "value": "not measured" if at_target is None else f"lag {at_target['lag_s']:.2f} s, "
                  f"{at_target['sent'] - at_target['shown']} missing; best kept-up rate {best:,.0f} events/s",
         "met": at_target is not None and at_target in kept_up},
        {"target": f"after a {n:,}-event run: JS heap <= {TARGET_HEAP_MIB} MiB, DOM nodes <= {TARGET_NODES:,}",
         "value": f"{heap:.1f} MiB, {nodes:,} nodes", "met": heap <= TARGET_HEAP_MIB and nodes <= TARGET_NODES},
    ]
    return {"title": f"{TITLE} ({n:,} corpus events per rate, one fresh page each; events/s, seconds, "
                     f"milliseconds, MiB)",
            "headers": ["rate asked", "sent /s", "page /s", "lag s", "frame p99 / max ms", "JS heap MiB after GC",
                        "DOM nodes", "missing / repeats"],
            "rows": rows, "data": data, "targets": targets}
