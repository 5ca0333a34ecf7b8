"""The broker's bounded history of recent runs: the snapshot side of the ZeroMQ guide's Clone pattern.

The broker's capture thread feeds it every message it forwards; late joiners and
subscribers that missed messages ask it (REQ/REP, see ``protocol.request``) for:

- ``runs``: the runs it knows, each with its last status;
- ``replay``: one run's messages from a sequence number on;
- ``fetch``: a publisher's messages in a sequence range (gap recovery).

Bounds: at most ``max_runs`` runs (the least recently active run is forgotten first)
and ``max_bytes`` bytes of messages (the oldest messages are forgotten first).  What
was forgotten is reported as missing, never silently left out.

Durability (optional, ``persist_to(directory)``): a ``Journal`` of append-only segment
files, reloaded when the broker starts again, even after SIGKILL.

    >>> h = History(max_runs=10, max_bytes=2**20)
    >>> frames = [b"status/run-1/running", protocol.header_prefix("json", "p1") + b"1}", b"{}"]
    >>> h.add(protocol.envelope(frames), frames)
    >>> [run["status"] for run in h.runs()]
    ['running']
"""
from __future__ import annotations

import collections
import dataclasses
import os
import struct
import time
from pathlib import Path
from typing import Iterator

from .. import protocol
from ..protocol import Envelope, ProtocolError


@dataclasses.dataclass
class RunInfo:
    ident: str
    status: str | None = None
    messages: int = 0                 # messages of this run received, in all
    first_seen: float = dataclasses.field(default_factory=time.time)
    last_seen: float = dataclasses.field(default_factory=time.time)
    first_seq: dict = dataclasses.field(default_factory=dict)   # publisher -> first seq of this run
    keys: collections.deque = dataclasses.field(default_factory=collections.deque)  # (pub, seq) retained

    def summary(self) -> dict:
        return {"ident": self.ident, "status": self.status, "messages": self.messages,
                "retained": len(self.keys), "publishers": sorted(self.first_seq),
                "first_seen": self.first_seen, "last_seen": self.last_seen}


@dataclasses.dataclass
class PublisherInfo:
    received: int = 0      # distinct messages received
    duplicates: int = 0    # messages received again (a publisher re-sending after a broker restart)
    missed: int = 0        # sequence numbers that never reached the broker
    last_seq: int = 0
    closed: dict | None = None  # the publisher's own closing report, if it sent one

    def summary(self, publisher: str) -> dict:
        return {"publisher": publisher, **dataclasses.asdict(self)}


class History:
    def __init__(self, max_runs: int = 100, max_bytes: int = 64 * 2**20):
        self.max_runs = max_runs
        self.max_bytes = max_bytes
        self.bytes = 0
        self._messages: collections.OrderedDict = collections.OrderedDict()  # (pub, seq) -> (ident, frames, size)
        self._runs: collections.OrderedDict[str, RunInfo] = collections.OrderedDict()
        self.publishers: dict[str, PublisherInfo] = {}
        self.journal: Journal | None = None

    def persist_to(self, directory: str | os.PathLike) -> int:
        """Load what a journal in ``directory`` holds, then record every new message there too.

        Returns the number of messages loaded.  Raises OSError if the directory cannot be used.
        """
        journal = Journal(directory, self.max_bytes)
        loaded = 0
        for received, run_first_seq, frames in journal.load():
            try:
                env = protocol.envelope(frames)
            except ProtocolError:
                continue
            loaded += self.add(env, frames, received, run_first_seq)
        journal.start_segment()
        self.journal = journal  # from now on: loaded records are not written again
        return loaded

    def sync(self) -> None:
        """Hand what was recorded to the OS: call before acknowledging it."""
        if self.journal is not None:
            self.journal.flush()

    def close(self) -> None:
        if self.journal is not None:
            self.journal.close()

    def add(self, env: Envelope, frames: list[bytes], received: float | None = None, run_first_seq: int = 0) -> bool:
        """Record one message; False if it was a duplicate.

        ``received``: when (default now); ``run_first_seq``: the first seq of this run from this
        publisher, when known from before (a journal's record), even if that message is gone.
        """
        received = time.time() if received is None else received
        pub = self.publishers.get(env.publisher)
        if pub is None:
            pub = self.publishers[env.publisher] = PublisherInfo()
        if env.seq <= pub.last_seq:
            pub.duplicates += 1
            return False
        if pub.last_seq and env.seq > pub.last_seq + 1:
            pub.missed += env.seq - pub.last_seq - 1
        pub.last_seq = env.seq
        pub.received += 1
        key = (env.publisher, env.seq)
        if env.kind == "publisher":  # a closing report: kept for fetch, not part of any run
            pub.closed = _payload(frames)
            ident, first_seq = None, env.seq
        else:
            ident = env.ident
            run = self._runs.get(ident)
            if run is None:
                run = self._runs[ident] = RunInfo(ident, first_seen=received)
                while len(self._runs) > self.max_runs:
                    self._forget_run(next(iter(self._runs)))
            else:
                self._runs.move_to_end(ident)
            run.messages += 1
            run.last_seen = received
            first_seq = run.first_seq.setdefault(env.publisher, run_first_seq or env.seq)
            if env.kind == "status":
                run.status = env.name
            run.keys.append(key)

        size = sum(len(f) for f in frames)
        self._messages[key] = (ident, frames, size)
        self.bytes += size
        if self.journal is not None:
            self.journal.append(received, first_seq, frames)
        while self.bytes > self.max_bytes and self._messages:
            _, (old_ident, _, old_size) = self._messages.popitem(last=False)
            if old_ident is not None:
                self._runs[old_ident].keys.popleft()  # a run's keys are in arrival order too
            self.bytes -= old_size
        return True

    def _forget_run(self, ident: str) -> None:
        run = self._runs.pop(ident)
        for key in run.keys:
            self.bytes -= self._messages.pop(key)[2]

    # -- queries ------------------------------------------------------------------------

    def runs(self) -> list[dict]:
        return [run.summary() for run in self._runs.values()]

    def replay(self, ident: str, from_seq: int = 1) -> tuple[list[list[bytes]], list[list]]:
        """One run's retained messages with seq >= from_seq, and per publisher what is no longer retained."""
        run = self._runs.get(ident)
        if run is None:
            return [], []
        messages = [self._messages[key][1] for key in run.keys if key[1] >= from_seq]
        missing = []
        first_retained: dict[str, int] = {}
        for pub, seq in run.keys:
            first_retained.setdefault(pub, seq)
        for pub, first in run.first_seq.items():
            start = max(first, from_seq)
            end = first_retained.get(pub, self.publishers[pub].last_seq + 1) - 1
            if end >= start:
                missing.append([pub, start, end])
        return messages, missing

    def fetch(self, publisher: str, first: int, last: int) -> tuple[list[list[bytes]], list[list]]:
        """A publisher's retained messages first..last, and the ranges not retained."""
        last = min(last, first + protocol.MAX_FETCH - 1)
        messages, missing = [], []
        for seq in range(first, last + 1):
            entry = self._messages.get((publisher, seq))
            if entry is not None:
                messages.append(entry[1])
            elif missing and missing[-1][2] == seq - 1:
                missing[-1][2] = seq
            else:
                missing.append([publisher, seq, seq])
        return messages, missing

    def acks(self) -> dict[str, int]:
        return {pub: info.last_seq for pub, info in self.publishers.items()}

    def answer(self, request: bytes) -> list[bytes]:
        """Serve one history request (see ``protocol.request``); never raises on bad input."""
        try:
            req = protocol.decode_json(request)
            op = req["op"]
            if op == "runs":
                return protocol.reply({"runs": self.runs(),
                                       "publishers": [p.summary(k) for k, p in self.publishers.items()]})
            if op == "replay":
                messages, missing = self.replay(str(req["ident"]), int(req.get("from_seq", 1)))
            elif op == "fetch":
                messages, missing = self.fetch(str(req["pub"]), int(req["first"]), int(req["last"]))
            else:
                return protocol.error_reply(f"unknown op {op!r}; accepted: runs, replay, fetch")
        except (ValueError, KeyError, TypeError) as exc:
            return protocol.error_reply(f"bad request: {exc!r}")
        return protocol.reply({"count": len(messages), "missing": missing}, messages)


def _payload(frames: list[bytes]) -> dict | None:
    try:
        return protocol.decode(frames).payload
    except protocol.ProtocolError:
        return None


# When received, the first seq of the message's run from its publisher (what was forgotten
# is still reported as missing after a reload), then the lengths of the three frames.
_RECORD = struct.Struct("<dQIII")


class Journal:
    """The history on disk: append-only segment files ``segment-<n>.log`` in one directory.

    A record is the receive time, the run's first seq and the three frames, length-prefixed.  ``flush`` hands
    buffered records to the OS; the broker flushes before each acknowledgement, so every
    message a publisher saw acknowledged survives the broker process, SIGKILL included
    (not a power loss: there is no fsync).  A segment is closed at ``segment_bytes``; the
    oldest closed segments are deleted while they hold more than ``max_bytes``.  A record
    cut short by a kill is cut off when the journal is loaded.
    """

    def __init__(self, directory: str | os.PathLike, max_bytes: int, segment_bytes: int | None = None):
        self.directory = Path(directory)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes or max(2**20, max_bytes // 8)
        self._closed: collections.deque[tuple[Path, int]] = collections.deque()  # (path, bytes), oldest first
        self._file = None      # the segment being written, with its path and size
        self._path: Path | None = None
        self._size = 0

    def _segments(self) -> list[Path]:
        return sorted(self.directory.glob("segment-*.log"))

    def load(self) -> Iterator[tuple[float, int, list[bytes]]]:
        """Every whole record, oldest first."""
        for path in self._segments():
            with open(path, "r+b") as f:
                data = f.read()
                offset = 0
                while offset + _RECORD.size <= len(data):
                    received, run_first_seq, *lengths = _RECORD.unpack_from(data, offset)
                    start, end = offset + _RECORD.size, offset + _RECORD.size + sum(lengths)
                    if end > len(data):
                        break
                    first, second = start + lengths[0], start + lengths[0] + lengths[1]
                    yield received, run_first_seq, [data[start:first], data[first:second], data[second:end]]
                    offset = end
                if offset < len(data):
                    f.truncate(offset)  # the end of a record the broker was killed while writing
            self._closed.append((path, offset))

    def start_segment(self) -> None:
        segments = self._segments()
        number = int(segments[-1].stem.split("-")[1]) + 1 if segments else 1
        path = self.directory / f"segment-{number:012d}.log"
        self._file = os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")
        self._path, self._size = path, 0
        self._prune()

    def append(self, received: float, run_first_seq: int, frames: list[bytes]) -> None:
        write = self._file.write
        write(_RECORD.pack(received, run_first_seq, len(frames[0]), len(frames[1]), len(frames[2])))
        for frame in frames:
            write(frame)
        self._size += _RECORD.size + len(frames[0]) + len(frames[1]) + len(frames[2])
        if self._size >= self.segment_bytes:
            self._file.close()
            self._closed.append((self._path, self._size))
            self.start_segment()

    def _prune(self) -> None:
        held = sum(size for _, size in self._closed)
        while self._closed and held > self.max_bytes:
            path, size = self._closed.popleft()
            path.unlink(missing_ok=True)
            held -= size

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
