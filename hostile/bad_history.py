"""`tail --history A --history B --replay` where A answers garbage, answers slowly (a delaying proxy to B),
or never; and `--history B --history B`.  Every run message must be printed exactly once, no traceback, no hang."""
import subprocess, threading, zmq, json
from common import *

d = tmpdir()
b = BrokerProcess(f"ipc://{d}/f", f"ipc://{d}/b", "--startup-grace", "0")
with RawPublisher(b.frontend) as runner:
    time.sleep(1)
    for i in range(300):
        runner.send("replayed", "step", {"i": i})
    runner.send("replayed", "successful", {"status": "successful"}, kind="status")
    time.sleep(2)

def fake(endpoint, mode, stop):
    ctx = zmq.Context.instance()
    r = ctx.socket(zmq.ROUTER); r.bind(endpoint)
    up = ctx.socket(zmq.DEALER); up.connect(b.history)
    pending = []
    while not stop.is_set():
        if r.poll(50):
            frames = r.recv_multipart()
            env, req = frames[:-1], frames[-1]
            if mode == "garbage": r.send_multipart(env + [b"\xff\xfe{not json"])
            elif mode == "wrong-json": r.send_multipart(env + [json.dumps({"runs": "x", "messages": [[1, 2]]}).encode()])
            elif mode == "many-frames": r.send_multipart(env + [b"a", b"b", b"c"])
            elif mode == "empty": r.send_multipart(env + [b""])
            elif mode == "slow": pending.append((time.monotonic() + 3, frames))
        for due, frames in list(pending):
            if time.monotonic() >= due:
                pending.remove((due, frames)); up.send_multipart(frames)
        while up.poll(0):
            r.send_multipart(up.recv_multipart())
    r.close(0); up.close(0)

Z = "../.venv/bin/zmq-emitter"
for mode in ["garbage", "wrong-json", "many-frames", "empty", "slow", "silent", "same-twice"]:
    stop = threading.Event()
    a = f"ipc://{d}/fake-{mode}"
    t = None
    if mode not in ("silent", "same-twice"):
        t = threading.Thread(target=fake, args=(a, mode, stop), daemon=True); t.start()
    hist = ["--history", b.history, "--history", b.history] if mode == "same-twice" else ["--history", a, "--history", b.history]
    t0 = time.monotonic()
    p = subprocess.run(["nice", Z, "tail", "--connect", b.backend, *hist, "--replay", "--ident", "replayed",
                        "--until-done", "--format", "json", "--timeout", "40"], capture_output=True, text=True, timeout=60)
    lines = [json.loads(l) for l in p.stdout.splitlines() if l.startswith("{")]
    seqs = [l.get("seq") for l in lines]
    print(f"A={mode}: rc={p.returncode} {time.monotonic()-t0:.1f}s printed={len(lines)} distinct={len(set(seqs))} "
          f"stderr={p.stderr.strip()[:300]!r}")
    stop.set()
    if t: t.join()
b.stop()
