"""The broker's history on NATS JetStream (``--jetstream``), against a real 3-node nats-server cluster.

The cluster runs on free loopback ports with a store directory per node under the test's tmp
directory; nodes are SIGKILLed and started again on the same ports and directories.  Runs are
real ``ansible-runner run`` processes through a real broker process.  Without ``nats-server``
(``python3 dev.py test`` installs it when it may) or ``nats-py`` the tests skip, saying why.
"""
from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import BrokerProcess, FINAL_STATUSES, job_events, run_cli, runner_env, wait_run_recorded, wait_until
from zmq_emitter import protocol
from zmq_emitter.broker.jetstream import frames_of
from zmq_emitter.consumers.subscriber import Subscriber

NATS_SERVER = shutil.which("nats-server")
nats = pytest.importorskip("nats", reason="nats-py not installed: pip install '.[jetstream]' (dev.py does)")
pytestmark = pytest.mark.skipif(NATS_SERVER is None, reason="nats-server not installed (apt-get install "
                                                            "nats-server; `python3 dev.py test` does it as root)")
STREAM = "ZMQ_EMITTER"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NatsCluster:
    """Three nats-server processes with JetStream, clustered on loopback; ``kill``/``start`` one or all."""

    def __init__(self, root: Path, size: int = 3):
        self.root = root
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
        log = open(self.root / f"node{i}.log", "a")
        self.procs[i] = subprocess.Popen(
            [NATS_SERVER, "-a", "127.0.0.1", "-p", str(self.ports[i]), "-n", f"node{i}", "-js", "-sd", str(store),
             "--cluster_name", "zmq-emitter-test", "--cluster", f"nats://127.0.0.1:{self.cluster_ports[i]}",
             "--routes", routes], stdout=log, stderr=log)
        log.close()

    def kill(self, i: int) -> None:
        proc = self.procs[i]
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        self.procs[i] = None

    def stop(self) -> None:
        for i in range(len(self.procs)):
            self.kill(i)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until JetStream answers (a meta leader is elected)."""
        async def ready() -> bool:
            try:
                nc = await nats.connect(self.urls.split(","), connect_timeout=1, allow_reconnect=False)
            except Exception:
                return False
            try:
                await nc.jetstream().account_info()
                return True
            except Exception:
                return False
            finally:
                await nc.close()
        wait_until(lambda: asyncio.run(ready()), timeout, 0.2, "JetStream cluster ready")


def stored_messages(urls: str) -> list[tuple[str, list[bytes]]]:
    """Every message of the stream, in stream order: (Nats-Msg-Id, protocol frames)."""
    async def read() -> list:
        nc = await nats.connect(urls.split(","), connect_timeout=2)
        try:
            jsm = nc.jsm()
            state = (await jsm.stream_info(STREAM)).state
            out = []
            for seq in range(state.first_seq, state.last_seq + 1):
                msg = await jsm.get_msg(STREAM, seq)
                out.append((msg.headers["Nats-Msg-Id"], frames_of(msg.headers, msg.data)))
            return out
        finally:
            await nc.close()
    return asyncio.run(read())


@pytest.fixture
def cluster(tmp_path):
    nodes = NatsCluster(tmp_path / "nats")
    try:
        nodes.wait_ready()
        yield nodes
    finally:
        nodes.stop()


def jetstream_broker(tmp_path: Path, cluster: NatsCluster, *extra: str) -> BrokerProcess:
    return BrokerProcess(f"ipc://{tmp_path}/frontend", f"ipc://{tmp_path}/backend", "--startup-grace", "0",
                         "--jetstream", cluster.urls, "--jetstream-replicas", "3", *extra)


def assert_stored_once_in_order(urls: str, idents: list[str], *, in_stream_order: bool = True) -> dict:
    """Every message of the runs ``idents`` is in the stream exactly once by <pub>:<seq>, each publisher's
    seqs 1..N with none missing (and in stream order per publisher if ``in_stream_order``); per publisher
    its seqs."""
    stored = stored_messages(urls)
    ids = [msg_id for msg_id, _ in stored]
    assert len(ids) == len(set(ids)), f"stored twice: {sorted({i for i in ids if ids.count(i) > 1})}"
    seqs: dict[str, list[int]] = {}
    for msg_id, frames in stored:
        env = protocol.envelope(frames)
        assert msg_id == f"{env.publisher}:{env.seq}"
        if env.ident in idents or env.kind == "publisher":
            seqs.setdefault(env.publisher, []).append(env.seq)
    for pub, numbers in seqs.items():
        assert sorted(numbers) == list(range(1, max(numbers) + 1)), f"publisher {pub}: not every seq stored once"
        if in_stream_order:
            assert numbers == sorted(numbers), f"publisher {pub}: stored out of order"
    for ident in idents:
        statuses = [protocol.envelope(f).name for _, f in stored
                    if protocol.envelope(f).ident == ident and protocol.envelope(f).kind == "status"]
        assert FINAL_STATUSES & set(statuses), f"run {ident}: no final status stored ({statuses})"
    return seqs


def events_of(urls: str, ident: str) -> int:
    return sum(1 for _, f in stored_messages(urls) if protocol.envelope(f).ident == ident
               and protocol.envelope(f).kind == "event")


def test_every_message_of_real_runs_is_stored_once_in_order(tmp_path, project, cluster):
    broker = jetstream_broker(tmp_path, cluster)
    try:
        env = runner_env(RUNNER_ZMQ_URL=broker.frontend)
        for ident in ("js-run-1", "js-run-2"):
            result = run_cli(project, ident, env)
            assert result.returncode == 2, result.stderr  # web2 fails
            assert "spool" not in result.stderr, result.stderr  # every message acknowledged: nothing kept
        assert_stored_once_in_order(cluster.urls, ["js-run-1", "js-run-2"])
        for ident in ("js-run-1", "js-run-2"):
            assert events_of(cluster.urls, ident) == len(job_events(project, ident))
    finally:
        broker.stop()
