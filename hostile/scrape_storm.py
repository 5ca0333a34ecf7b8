"""4 threads scrape /metrics (and /, /nope, /metrics?name[]=x, a HEAD, garbage bytes) as fast as they can while
50000 messages are forwarded: does forwarding lose or slow, does anything crash, do the counters match?"""
import threading, socket, urllib.request
from common import *
from zmq_emitter.consumers.subscriber import Subscriber
d = tmpdir()
b = BrokerProcess(f"ipc://{d}/f", f"ipc://{d}/b", "--startup-grace", "0", "--metrics", "127.0.0.1:0")
url = metrics_url(b); base = url.rsplit("/", 1)[0]
def run(n, storm):
    stop, counts = threading.Event(), {"ok": 0, "err": set()}
    def scraper():
        paths = ["/metrics", "/", "/nope", "/metrics?name[]=zmq_emitter_broker_messages_sent_total"]
        while not stop.is_set():
            for p in paths:
                try: urllib.request.urlopen(base + p, timeout=5).read(); counts["ok"] += 1
                except Exception as e: counts["err"].add(f"{p}: {e}"[:80])
            with socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1]))) as s:
                s.sendall(b"\x00\xff GARBAGE\r\n\r\n"); s.recv(100)
    threads = [threading.Thread(target=scraper) for _ in range(4 if storm else 0)]
    with Subscriber([b.backend]) as sub, RawPublisher(b.frontend) as pub:
        pub.until_received(sub)
        for t in threads: t.start()
        t0 = time.monotonic()
        for i in range(n): pub.send(f"storm{storm}", "step", {"i": i})
        got = receive(sub, n, f"storm{storm}", timeout=60)
        dt = time.monotonic() - t0
    stop.set(); [t.join() for t in threads]
    print(f"storm={storm}: {len(got)}/{n} received in {dt:.1f}s, scrapes ok={counts['ok']} errors={sorted(counts['err'])[:4]}")
run(50000, False); run(50000, True)
m = scrape(url)
print("alive:", b.proc.poll() is None, "received_total:", m["zmq_emitter_broker_messages_received_total"],
      "history_recorded:", m.get("zmq_emitter_broker_history_messages_recorded_total"))
print("log:", "".join(b.log[1:])[-500:])
b.stop()
