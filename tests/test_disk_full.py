"""A full disk under --history-dir: the broker keeps serving from memory, says so once, acknowledges
nothing that is not on disk, retries, and comes back by itself with everything written; nothing
half-written stays in a segment.  On a real 2 MiB tmpfs (we mount it; skipped where mount is refused)."""
from __future__ import annotations

import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import zmq

from conftest import BIN
from test_acks_broker import AckingPublisher

from zmq_emitter import protocol
from zmq_emitter.broker.history import History
from zmq_emitter.broker.journal import Journal
from zmq_emitter.consumers.subscriber import Subscriber


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs mounted for the test."""
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mountpoint)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.strip()}")
    yield mountpoint
    subprocess.run(["umount", "-l", str(mountpoint)], check=True)


def fill(disk: Path) -> Path:
    """Write a file until the disk refuses more."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    return filler


def frames(seq, size=1000):
    return [b"event/full/runner_on_ok", protocol.header_prefix("json", "p1") + b"%d}" % seq, b'"%s"' % (b"x" * size)]


def test_a_journal_on_a_full_disk_leaves_no_part_of_a_record_and_writes_everything_once_there_is_room(
        tmp_path, small_disk):
    journal = Journal(small_disk / "history", max_bytes=2**20)
    for seq in range(1, 11):
        journal.append(float(seq), 1, frames(seq))
    journal.flush()
    filler = fill(small_disk)
    for seq in range(11, 200):
        journal.append(float(seq), 1, frames(seq))
    with pytest.raises(OSError) as refused:
        journal.flush()
    assert refused.value.errno == 28  # ENOSPC
    assert journal.queued > 0
    on_disk = Journal(shutil.copytree(small_disk / "history", tmp_path / "as-it-is-now"), max_bytes=2**20)
    written = list(on_disk.load())
    assert on_disk.corrupt == 0 and on_disk.torn == 0  # whole records only
    assert [r[0] for r in written] == [float(seq) for seq in range(1, len(written) + 1)]
    on_disk.close()

    filler.unlink()
    journal.flush()
    journal.close()
    again = History(max_bytes=2**20)
    assert again.persist_to(small_disk / "history") == 199
    assert again.journal.corrupt == 0 and again.journal.torn == 0
    again.close()


class BrokerOnDisk:
    """``zmq-emitter broker --history-dir`` as a process, its stderr collected line by line."""

    def __init__(self, tmp_path: Path, directory: Path):
        self.frontend, self.history = f"ipc://{tmp_path}/f", f"ipc://{tmp_path}/h"
        self.proc = subprocess.Popen([str(BIN / "zmq-emitter"), "broker", "--frontend", self.frontend,
                                      "--backend", f"ipc://{tmp_path}/b", "--history", self.history,
                                      "--startup-grace", "0", "--history-dir", str(directory)],
                                     stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.wait_for("runners publish to")

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float = 30.0, then: callable = None) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [line for line in self.lines if text in line]
            if found:
                return found[0]
            if then is not None:
                then()
            time.sleep(0.02)
        raise AssertionError(f"the broker never said {text!r}; it said {self.lines}")

    def said(self, text: str) -> list[str]:
        return [line for line in self.lines if text in line]

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


def pump_until(publisher: AckingPublisher, condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        publisher.pump()
        publisher.sock.poll(10)


def seqs_on_disk(directory: Path) -> list[int]:
    """The seqs of the intact records in the journal's segment files, read as a restarted broker would."""
    from types import SimpleNamespace

    from zmq_emitter.broker import journal as journal_module

    seqs = []
    for path in sorted(directory.glob("segment-*.log")):
        data = path.read_bytes()
        records, _ = journal_module._read_segment(data, path, SimpleNamespace(torn=0, corrupt=0))
        seqs += [protocol.envelope(frames).seq for _, _, frames in records]
    return seqs


def test_a_broker_whose_history_disk_fills_up_keeps_serving_says_so_and_comes_back_with_what_came_meanwhile(
        tmp_path, small_disk):
    directory = small_disk / "history"
    broker = BrokerOnDisk(tmp_path, directory)
    context = zmq.Context()
    publisher = AckingPublisher(context, broker.frontend)
    asker = Subscriber([], history=broker.history, history_timeout=10)
    try:
        publisher.publish(20)
        pump_until(publisher, lambda: not publisher.kept)  # recorded, written and acknowledged
        filler = fill(small_disk)

        publisher.publish(300)  # about 300 kB: more than the last page of the segment holds
        broker.wait_for("cannot write to", then=publisher.pump)
        pump_until(publisher, lambda: not publisher.queue)
        time.sleep(2.5)  # two retries of the disk (a retry may still fit a record or two in the last page)
        publisher.pump()
        acked_while_full = max(publisher.acks)
        # acknowledgements stopped short of the end, and never beyond what the journal's files hold: runners keep the rest
        assert acked_while_full < 320
        assert set(range(1, acked_while_full + 1)) <= set(seqs_on_disk(directory))
        info, replayed = asker.request("replay", ident="flood", from_seq=1)  # served from memory meanwhile
        assert [protocol.decode(m).seq for m in replayed] == list(range(1, 321))

        filler.unlink()
        broker.wait_for("again", then=publisher.pump)
        pump_until(publisher, lambda: not publisher.kept)  # everything acknowledged once written
        assert max(publisher.acks) == 320
        assert len(broker.said("cannot write to")) == 1 and len(broker.said("again")) == 1  # once per change
        (line,) = broker.said("cannot write to")
        assert "--history-dir" in line and "No space left on device" in line
    finally:
        asker.close()
        publisher.sock.close(0)
        context.term()
        broker.kill()

    restarted = BrokerOnDisk(tmp_path, directory)
    try:
        assert "(320 messages loaded)" in restarted.said("runners publish to")[0]
        assert not restarted.said("corrupt") and not restarted.said("cut off")
        with Subscriber([], history=restarted.history, history_timeout=10) as asker:
            info, replayed = asker.request("replay", ident="flood", from_seq=1)
        assert [protocol.decode(m).seq for m in replayed] == list(range(1, 321)) and info["missing"] == []
    finally:
        restarted.kill()
