"""runner_zmq_heartbeat of 0, negative, huge, text, a non-ASCII digit, via env in a real ansible-runner run
against a real broker: the run must succeed (or the plugin refuse with a clear message), no traceback."""
import shutil, sys
from common import *
sys.path.insert(0, "../tests")
from conftest import run_cli, runner_env, PROJECT, collect_run
from zmq_emitter.consumers.subscriber import Subscriber
from pathlib import Path

d = Path(tmpdir())
b = BrokerProcess(f"ipc://{d}/f", f"ipc://{d}/b", "--startup-grace", "0")
try:
    for value in ["0", "-1", "2000000", "2000001", "99999999999999999999", "abc", "1e3", " 5 ", "٩", "1.5", ""]:
        proj = d / f"p{abs(hash(value))}"
        shutil.copytree(PROJECT, proj)
        with Subscriber([b.backend]) as sub:
            time.sleep(0.5)
            r = run_cli(proj, "hb", runner_env(RUNNER_ZMQ_URL=b.frontend, RUNNER_ZMQ_HEARTBEAT=value))
            try:
                got = collect_run(sub, "hb", timeout=15)
                final = [m.name for m in got if m.kind == "status"][-1:]
            except Exception as exc:
                final = f"no final status ({exc.__class__.__name__})"
        err = [l for l in (r.stderr + r.stdout).splitlines() if "zmq" in l.lower() or "Traceback" in l or "heartbeat" in l.lower()]
        print(f"heartbeat={value!r}: rc={r.returncode} final={final} msgs={err[:3]}")
finally:
    b.stop()
