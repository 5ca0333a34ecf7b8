"""A subscriber of the central sends presence-shaped subscriptions of a made-up broker ("ghost"), and a data
subscription, through an XSUB on the central's backend; the central passes them up to the edge.
Does the edge then resend its whole history (amplification), report a backlog/loss that is not real?"""
import zmq, json
from common import *
from zmq_emitter import protocol
from zmq_emitter.consumers.subscriber import Subscriber

d = tmpdir()
central = BrokerProcess(f"ipc://{d}/cf", f"ipc://{d}/cb", "--startup-grace", "0", "--metrics", "127.0.0.1:0")
edge = BrokerProcess(f"ipc://{d}/ef", f"ipc://{d}/eb", "--startup-grace", "0", "--upstream", central.frontend,
                     "--metrics", "127.0.0.1:0", "--history-bytes", "200000")
def show(label):
    time.sleep(2)
    e, c = scrape(metrics_url(edge)), scrape(metrics_url(central))
    print(f"{label}: edge sent={e['zmq_emitter_broker_upstream_messages_sent_total']} "
          f"resent={e['zmq_emitter_broker_upstream_messages_resent_total']} "
          f"backlog={e['zmq_emitter_broker_upstream_backlog_messages']} lost={e['zmq_emitter_broker_upstream_messages_lost_total']}"
          f" | central received={c['zmq_emitter_broker_messages_received_total']} dups={c['zmq_emitter_broker_history_duplicates_total']}")
try:
    with Subscriber([central.backend]) as far, RawPublisher(edge.frontend) as runner:
        runner.until_received(far)
        for i in range(500):
            runner.send("r", "step", {"i": i, "pad": "x" * 100})
        receive(far, 500, "r", timeout=10)
        show("before rogue")
        ctx = zmq.Context()
        rogue = ctx.socket(zmq.XSUB); rogue.connect(central.backend)
        for k in range(5):
            ghost = protocol.presence_topic(protocol.Presence(f"ghost{k}", "tok", 2**24))
            rogue.send(b"\x01" + ghost)
            time.sleep(0.3)
            rogue.send(b"\x00")  # drop and re-add the data subscription: a "central" that came
            rogue.send(b"\x01")
            time.sleep(0.5)
        show("after 5 ghost presences")
        rogue.close(linger=0)   # the rogue goes away: its presences are unsubscribed
        time.sleep(1)
        for i in range(3000):    # more traffic, so the edge's small history forgets the old messages
            runner.send("r2", "step", {"i": i, "pad": "x" * 100})
        time.sleep(3)
        show("rogue gone, 3000 more messages, edge history forgetting")
    print("edge log:", "".join(edge.log[2:])[:1500])
finally:
    edge.stop(); central.stop()
