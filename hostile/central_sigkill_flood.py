"""An edge floods its central while the central is SIGKILLed and restarted 6 times (history on disk).
Afterwards the central's history must hold every message of the run exactly once; the edge must say lost=0."""
import subprocess, json, threading
from common import *

d = tmpdir()
central = BrokerProcess(f"ipc://{d}/cf", f"ipc://{d}/cb", "--startup-grace", "0", "--history-dir", f"{d}/ch",
                        history=f"ipc://{d}/ch.sock")
edge = BrokerProcess(f"ipc://{d}/ef", f"ipc://{d}/eb", "--startup-grace", "0", "--upstream", central.frontend,
                     "--metrics", "127.0.0.1:0", "--history-dir", f"{d}/eh")
N = 30000
done = threading.Event()
def flood():
    with RawPublisher(edge.frontend) as runner:
        time.sleep(1)
        for i in range(N):
            runner.send("flood", "step", {"i": i, "pad": "y" * 200})
            if i % 500 == 0: time.sleep(0.02)
        runner.send("flood", "successful", {"status": "successful"}, kind="status")
        time.sleep(2)
    done.set()
t = threading.Thread(target=flood); t.start()
kills = 0
while not done.is_set() and kills < 6:
    time.sleep(1.2)
    central.kill(); kills += 1
    time.sleep(0.5)
    central.start()
t.join()
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    m = scrape(metrics_url(edge))
    if m["zmq_emitter_broker_upstream_backlog_messages"] == 0: break
    time.sleep(1)
time.sleep(3); m = scrape(metrics_url(edge))
print("kills:", kills, "edge:", {k.split("upstream_")[1]: v for k, v in m.items() if "upstream_" in k})
p = subprocess.run(["../.venv/bin/zmq-emitter", "tail", "--connect", central.backend, "--history", central.history,
                    "--replay", "--ident", "flood", "--until-done", "--format", "json", "--timeout", "60"],
                   capture_output=True, text=True, timeout=90)
got = [json.loads(l).get("i") for l in p.stdout.splitlines() if l.startswith("{")]
steps = [g for g in got if g is not None]
print(f"central replay: rc={p.returncode} steps={len(steps)} distinct={len(set(steps))} missing={N - len(set(steps))}"
      f" stderr={p.stderr[:400]!r}")
print("edge log:", "".join(edge.log[1:])[-1500:])
edge.stop(); central.stop()
