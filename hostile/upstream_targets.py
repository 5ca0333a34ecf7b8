"""An edge whose --upstream is itself, its own backend, a central's backend (subscribers' side), a dead host:
the edge must keep serving its local subscribers, stay up, say something sensible, and its metrics be right."""
from common import *
from zmq_emitter.consumers.subscriber import Subscriber

def attack(label, make_upstream, n=200):
    d = tmpdir()
    other = None
    if "central backend" in label:
        other = BrokerProcess(f"ipc://{d}/cf", f"ipc://{d}/cb", "--startup-grace", "0")
    up = make_upstream(d, other)
    edge = BrokerProcess(f"ipc://{d}/f", f"ipc://{d}/b", "--startup-grace", "0", "--upstream", up,
                         "--metrics", "127.0.0.1:0")
    try:
        with Subscriber([edge.backend]) as near, RawPublisher(edge.frontend) as runner:
            runner.until_received(near)
            for i in range(n):
                runner.send("r", "step", {"i": i})
            got = receive(near, n + 10, "r", timeout=5)
            time.sleep(2.5)
            m = scrape(metrics_url(edge))
            seqs = [x.seq for x in got]
        alive = edge.proc.poll() is None
        print(f"--- {label}: upstream={up} alive={alive} local got {len(seqs)} (dups {len(seqs)-len(set(seqs))})")
        print("   metrics:", {k.replace('zmq_emitter_broker_', ''): v for k, v in m.items()
                               if 'upstream' in k or k.endswith('messages_received_total') or 'duplicates' in k})
        print("   stderr:", "".join(edge.log[1:])[:800].replace("\n", "\n           "))
    finally:
        edge.stop()
        if other: other.stop()

attack("itself (own frontend)", lambda d, o: f"ipc://{d}/f")
attack("own backend", lambda d, o: f"ipc://{d}/b")
attack("a central backend", lambda d, o: o.backend)
attack("dead tcp port", lambda d, o: "tcp://127.0.0.1:1")
attack("unroutable host", lambda d, o: "tcp://10.255.255.1:5999")
attack("unresolvable host", lambda d, o: "tcp://no-such-host.invalid:5999")
