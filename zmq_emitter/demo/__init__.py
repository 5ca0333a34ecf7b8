"""``zmq-emitter demo``: the project's main job, on an embedded default.

It starts a broker (in this process, on ipc endpoints in a temporary folder), starts
``zmq-emitter tail --until-done`` as its own process, runs the bundled playbook
(three hosts on the local connection, a loop, a failure) through the real
``ansible-runner run`` with this plugin enabled, and stops everything it started::

    zmq-emitter demo                     # web2 fails, the run ends "failed"
    zmq-emitter demo --fail-host none    # a clean run
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..broker import Broker

PROJECT = Path(__file__).parent / "project"


class DemoError(RuntimeError):
    pass


def _executable(name: str) -> str:
    beside_python = Path(sys.executable).parent / name
    found = str(beside_python) if beside_python.exists() else shutil.which(name)
    if not found:
        raise DemoError(f"the demo needs {name!r}; install the test extras: pip install 'ansible-runner-zmq[test]'")
    return found


def run(fail_host: str = "web2", codec: str = "json", out=sys.stderr) -> int:
    runner = _executable("ansible-runner")
    _executable("ansible-playbook")
    workdir = Path(tempfile.mkdtemp(prefix="zmq-emitter-demo-"))
    private_data_dir = workdir / "runner"
    shutil.copytree(PROJECT, private_data_dir)
    broker = Broker([f"ipc://{workdir}/frontend"], [f"ipc://{workdir}/backend"], startup_grace=0).start()
    env = dict(os.environ, RUNNER_ZMQ_URL=broker.frontend_endpoints[0], RUNNER_ZMQ_CODEC=codec,
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    print(f"demo: broker up (frontend {broker.frontend_endpoints[0]}, backend {broker.backend_endpoints[0]})",
          file=out, flush=True)
    tail = subprocess.Popen([sys.executable, "-m", "zmq_emitter.cli", "tail", "--connect",
                             broker.backend_endpoints[0], "--until-done"])
    try:
        deadline = time.monotonic() + 10
        while broker.stats().subscribers < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)  # let tail's subscription travel to the broker before the run starts
        print(f"demo: running the bundled playbook demo.yml through ansible-runner (fail_host={fail_host})",
              file=out, flush=True)
        result = subprocess.run([runner, "run", str(private_data_dir), "-p", "demo.yml", "--ident", "demo",
                                 "--cmdline", f"-e fail_host={fail_host}"],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            tail_status = tail.wait(timeout=15)
        except subprocess.TimeoutExpired:
            raise DemoError("tail did not see the run's final status within 15 s") from None
        events = len(list((private_data_dir / "artifacts" / "demo" / "job_events").glob("*.json")))
        print(f"demo: ansible-runner exited {result.returncode}; {events} events in its artifacts; "
              f"tail exited {tail_status} (0 successful, 1 failed)", file=out, flush=True)
        if result.returncode not in (0, 2) and result.stderr:
            print(result.stderr, file=out)
        return 0 if tail_status in (0, 1) else 1
    finally:
        if tail.poll() is None:
            tail.terminate()
            tail.wait()
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        print("demo: stopped the broker and tail", file=out, flush=True)
