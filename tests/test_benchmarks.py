"""The benchmarks still work: `benchmarks/run.py --quick` runs every figure on real processes.

No timing is asserted (the machine is shared); what is asserted is the structure of the
JSON the full run writes, and that nothing was lost wherever the benchmarks count.
"""
import json
import subprocess
import sys
from pathlib import Path

import zmq

from benchmarks import hotpath

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ["hotpath", "peers", "fanout", "latency", "playbook", "memory", "hops", "eda", "stores", "web", "profile"]


def test_quick_benchmarks_run_every_figure_and_lose_nothing(tmp_path):
    out = tmp_path / "quick.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert list(report["figures"]) == FIGURES
    assert report["machine"]["cores"] >= 1 and report["machine"]["libzmq"]
    assert report["corpus"]["events"] > 50 and report["corpus"]["bytes_max"] > 10_000  # real, some big events

    figures = report["figures"]
    for name in FIGURES[:-1]:  # every figure but the profile prints a table and its targets
        if "skipped" in figures[name]:  # eda without Java 17+, stores without nats-server, web without a browser
            assert name in ("eda", "stores", "web") and figures[name]["skipped"] in result.stdout, name
            continue
        assert figures[name]["rows"] and figures[name]["targets"], name
        assert figures[name]["title"] in result.stdout

    hot = figures["hotpath"]["data"]
    for contender in ("plugin_json", "plugin_msgpack", "floor_json", "floor_msgpack"):
        assert hot[contender]["lost"] == 0 and hot[contender]["sent"] > 0, contender
        assert hot[contender]["e2e_per_s"]["n"] == 2 and hot[contender]["e2e_per_s"]["median"] > 0
    assert hot["plugin_json"]["ratio_to_floor"] > 0

    for contender, d in figures["peers"]["data"].items():
        assert d["lost"] == 0 and d["per_s"]["median"] > 0, contender
    assert set(figures["peers"]["data"]) == {"plugin", "floor", "http", "per_event_zmq"}

    fan = figures["fanout"]["data"]
    for kind in ("broker", "broker_nohistory", "proxy"):
        assert fan[f"throughput_{kind}"]["lost"] == 0
    for kind in ("broker", "proxy"):
        for count in (1, 10, 100):
            assert fan[f"fanout_{count}_{kind}"]["lost"] == 0
            assert fan[f"fanout_{count}_{kind}"]["expected"] > 0

    bursts = figures["hotpath"]["data"]["bursts"]  # table 1c: a burst on each corpus, nothing lost, all acknowledged
    assert set(bursts) == {"large events", "small events"}
    assert all(b["dropped"] == 0 and b["settled"] for b in bursts.values()), bursts
    assert all(set(part) == set(hotpath.PARTS) for part in  # table 1b: the CPU of every part of the path
               (d["cpu_parts_us_per_event"] for key, d in figures["hotpath"]["data"].items() if key != "bursts"))
    for path in ("broker --history none", "floor"):  # figure 4's baselines, received whole and in order
        for rate, d in figures["latency"]["baselines"][path].items():
            assert d["lost"] == 0 and d["in_order"], (path, rate)

    for rate, d in figures["latency"]["data"].items():
        assert d["lost"] == 0 and d["in_order"], rate
        assert 0 < d["p50_us"]["median"] <= d["p99_us"]["median"] <= d["max_us"]["median"]

    if "skipped" not in figures["web"]:  # every event on the page, once
        for rate, d in figures["web"]["data"].items():
            assert d["shown"] == d["sent"] and d["repeats"] == 0 and d["dom_nodes"] > 0, rate

    runs = figures["playbook"]["data"]
    assert set(runs) >= {"off", "zmq", "http"}
    for mode in ("zmq", "http"):
        assert runs[mode]["lost"] == 0 and runs[mode]["expected"] > 50, mode

    hop = figures["hops"]["data"]
    for path in ("one", "two"):  # through one broker, and through an edge and a central broker
        assert hop[path]["lost"] == 0 and hop[path]["throughput"]["median"] > 0, path
        assert 0 < hop[path]["1000"]["p50_us"]["median"] <= hop[path]["1000"]["p99_us"]["median"], path

    eda = figures["eda"]["data"]
    if "skipped" not in figures["eda"]:  # every matching event fired the rule's action once, in the real rulebook
        assert eda["twice"] == 0
        for path in ("rulebook", "source"):
            d = eda[path]["all"]
            assert d["lost"] == 0 and d["matched"] == d["fired"] > 0, path
            assert 0 < d["p50_ms"]["median"] <= d["p99_ms"]["median"] <= d["max_ms"]["median"], path

    if "skipped" not in figures["stores"]:  # memory, journal, JetStream R1 and R3 acknowledged every message
        for store in ("memory", "journal", "jetstream_r1", "jetstream_r3"):
            d = figures["stores"]["data"][store]
            assert d["unacknowledged"] == 0 and d["throughput"]["median"] > 0, store
            assert 0 < d["1000"]["p50_us"]["median"] <= d["1000"]["p99_us"]["median"], store

    for key in ("history_on", "history_off"):
        mem = figures["memory"]["data"][key]
        assert mem["sent"] == mem["received"] and mem["plugin_dropped"] == 0, key
        assert set(mem["rss_kib"]) == {"start", "warm", "half", "end", "flushed", "trimmed"}

    paired = runs["paired_zmq_vs_off"]
    assert len(paired["differences"]) == 2 and paired["ci95"][0] <= paired["median"] <= paired["ci95"][1]

    drawn = ["hotpath", "hotpath_cpu", "fanout", "latency", "playbook", "memory"] + [
        name for name in ("eda", "stores") if "skipped" not in figures[name]]
    for name in drawn:  # the charts of RESULTS.md, drawn from the JSON
        assert (tmp_path / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name

    profile = figures["profile"]["history_off"]
    assert profile["received"] == profile["events"] and profile["top"]
    assert any("dumps" in row["function"] for row in profile["top"])  # the encoder shows up where it should


def test_the_benchmark_receivers_count_a_repeated_message_as_a_duplicate_not_as_a_delivery(tmp_path):
    """A resend (same pub and seq) must never stand in for a message that was lost."""
    sys.path.insert(0, str(ROOT))
    from benchmarks import common
    from zmq_emitter import protocol

    endpoint = f"ipc://{tmp_path}/out"
    context = zmq.Context()
    pub = context.socket(zmq.PUB)
    pub.bind(endpoint)
    header = protocol.header_prefix("json", "p" * 16)
    try:
        with common.Worker("recv", "sub", "connect", endpoint) as sub:
            common.connect_through(lambda: pub.send_multipart([b"event/r/x", header + b"1}", b"{}"]), [sub])
            for seq in (2, 3, 2, 3, 4):  # 2 and 3 twice: 3 distinct new messages, 2 repeats
                pub.send_multipart([b"event/r/x", header + b"%d}" % seq, b"{}"])
            pub.send_multipart([b"event/r/x", protocol.header_prefix("json", "q" * 16) + b"1}", b"{}"])
            got = sub.call("wait", 3, 10, "p" * 16)
        assert got["counts"] == [3] and got["duplicates"] == [2] and got["other"] == [1]
    finally:
        pub.close(0)
        context.term()


def test_the_median_interval_covers_the_median_with_the_order_statistics_of_the_sign_test():
    sys.path.insert(0, str(ROOT))
    from benchmarks import common

    assert common.median_interval([0.01 * i for i in range(12)]) == (0.055, 0.02, 0.09)  # x(3), x(10) of 12
    assert common.median_interval([3.0, 1.0]) == (2.0, 1.0, 3.0)  # too few for 95%: the whole range
