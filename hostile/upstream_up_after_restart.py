"""upstream_up after the central is SIGKILLed and restarted: the link is back (acks flow), is the gauge 1?
Argument: seconds the central stays away (default 1.5; 0.5 for quick cycles)."""
import sys
from common import *
from zmq_emitter.consumers.subscriber import Subscriber
d = tmpdir()
central = BrokerProcess(f"ipc://{d}/cf", f"ipc://{d}/cb", "--startup-grace", "0")
edge = BrokerProcess(f"ipc://{d}/ef", f"ipc://{d}/eb", "--startup-grace", "0", "--upstream", central.frontend,
                     "--metrics", "127.0.0.1:0")
up = lambda: scrape(metrics_url(edge))["zmq_emitter_broker_upstream_up"]
time.sleep(2); print("first start: up =", up())
for k in range(3):
    central.kill(); time.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 1.5); print(f"kill {k}: up =", up())
    central.start()
    with Subscriber([central.backend]) as far, RawPublisher(edge.frontend) as runner:
        runner.until_received(far)   # the path edge -> central works again
    time.sleep(1); print(f"restart {k}: path works, up =", up())
print("edge log:", "".join(edge.log[2:])[-600:])
edge.stop(); central.stop()
