"""A NATS JetStream cluster of ``nats-server`` processes on loopback ports, for the tests and the benchmarks.

Used by tests/test_jetstream.py and benchmarks/stores.py (figure 10); it imports neither zmq_emitter
nor pytest.  Each node has its own store directory under ``root``; nodes are SIGKILLed (or stopped
with SIGSTOP) and started again on the same ports and directories.

    from benchmarks.nats_cluster import NATS_SERVER, NatsCluster
    cluster = NatsCluster(Path("/tmp/nats"))     # three nodes, started
    cluster.wait_ready()                          # until JetStream answers (a meta leader elected)
    print(cluster.urls)                           # nats://127.0.0.1:P1,nats://127.0.0.1:P2,...
    cluster.stop()
"""
from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

NATS_SERVER = shutil.which("nats-server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NatsCluster:
    """``size`` nats-server processes with JetStream, clustered on loopback; ``kill``/``start`` one or all.

    ``extra``: further nats-server options for every node (e.g. ``("--auth", "TOKEN")``).
    """

    def __init__(self, root: Path, size: int = 3, extra: tuple[str, ...] = ()):
        if NATS_SERVER is None:
            raise RuntimeError("nats-server not installed (apt-get install nats-server)")
        self.root = root
        self.extra = tuple(extra)
        self.ports = [free_port() for _ in range(size)]
        self.cluster_ports = [free_port() for _ in range(size)]
        self.procs: list[subprocess.Popen | None] = [None] * size
        for i in range(size):
            self.start(i)

    @property
    def urls(self) -> str:
        return ",".join(f"nats://127.0.0.1:{port}" for port in self.ports)

    def start(self, i: int) -> None:
        routes = ",".join(f"nats://127.0.0.1:{p}" for j, p in enumerate(self.cluster_ports) if j != i)
        store = self.root / f"node{i}"
        store.mkdir(parents=True, exist_ok=True)
        cluster = ["--cluster_name", "zmq-emitter-test", "--cluster", f"nats://127.0.0.1:{self.cluster_ports[i]}",
                   "--routes", routes] if len(self.ports) > 1 else []
        with open(self.root / f"node{i}.log", "a") as log:
            self.procs[i] = subprocess.Popen(
                [NATS_SERVER, "-a", "127.0.0.1", "-p", str(self.ports[i]), "-n", f"node{i}", "-js", "-sd", str(store),
                 *cluster, *self.extra], stdout=log, stderr=log)

    def kill(self, i: int) -> None:
        proc = self.procs[i]
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGCONT)  # a stopped node dies too
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        self.procs[i] = None

    def pause(self, i: int, paused: bool = True) -> None:
        """SIGSTOP (or SIGCONT) node ``i``: a server that hangs rather than dies."""
        proc = self.procs[i]
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGSTOP if paused else signal.SIGCONT)

    def stop(self) -> None:
        for i in range(len(self.procs)):
            self.kill(i)

    def wait_ready(self, timeout: float = 30.0, **connect_options) -> None:
        """Until JetStream answers (a meta leader is elected); RuntimeError after ``timeout`` seconds."""
        import nats  # nats-py: the optional extra [jetstream]

        async def quiet(exc: Exception) -> None:  # nodes still starting: expected, not worth a traceback
            pass

        async def ready() -> bool:
            try:
                nc = await nats.connect(self.urls.split(","), connect_timeout=1, allow_reconnect=False,
                                        error_cb=quiet, **connect_options)
            except Exception:
                return False
            try:
                await nc.jetstream().account_info()
                return True
            except Exception:
                return False
            finally:
                await nc.close()

        deadline = time.monotonic() + timeout
        while not asyncio.run(ready()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"JetStream cluster at {self.urls} not ready within {timeout}s (logs in {self.root})")
            time.sleep(0.2)

    def __enter__(self) -> "NatsCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
