"""The broker's history on disk (``--history-dir``): append-only segment files, one directory per broker.

    >>> import tempfile
    >>> journal = Journal(tempfile.mkdtemp(), max_bytes=2**20)
    >>> list(journal.load())                      # what an earlier broker left: nothing here
    []
    >>> journal.append(1700000000.0, 1, [b"status/run-1/running", b'{"v":1,"codec":"json","pub":"p","seq":1}', b"{}"])
    >>> journal.flush()                           # on disk (the OS's page cache): now it may be acknowledged
    >>> journal.close()

Layout: ``segment-<n>.log`` files, oldest first, and ``lock`` (``fcntl.flock``: one broker a
directory).  A segment starts with ``FILE_MAGIC``; then records, each::

    magic (4 bytes) | crc32 (4) | received (float64) | run's first seq (uint64) | 3 frame lengths (uint32 each) | frames

little-endian; the CRC covers everything after itself.  On load, a record whose magic, CRC or
lengths do not hold is skipped by looking for the next magic whose record checks out (counted
and logged): one corrupted byte costs one record, never the rest of the segment.  A record
cut short at the very end of a segment (the broker killed while writing) is cut off.
Segments written before checksums existed (no ``FILE_MAGIC``) are still read, without that
protection: a record cut short ends them, as it always did.

Writing: ``append`` only queues; ``flush`` writes what is queued and raises OSError if it
cannot (a full disk).  Then nothing half-written stays in the segment (it is truncated back
to the last whole record), what was queued stays queued, and the next ``flush`` tries again:
the broker keeps serving from memory meanwhile and acknowledges nothing new until it is
written.  While the disk refuses, at most ``max_bytes`` of records wait; older ones are given
up (counted in ``given_up``), as the journal's own bound would have deleted them.  No fsync:
what was flushed survives the process (SIGKILL included), not a power loss.
"""
from __future__ import annotations

import collections
import errno
import fcntl
import itertools
import logging
import os
import struct
import zlib
from pathlib import Path
from typing import Iterator

log = logging.getLogger("zmq_emitter.broker")

FILE_MAGIC = b"ZMQEJ\x02\r\n"          # the first 8 bytes of a segment in this format
RECORD_MAGIC = b"\xe7ZJr"
_HEAD = struct.Struct("<4sIdQIII")     # magic, crc32, received, run's first seq, frame lengths
_CHECKED = struct.Struct("<dQIII")     # the part of the head the CRC covers (then the frames)
_LEGACY = struct.Struct("<dQIII")      # a record of the format before checksums: no magic, no CRC
_MAX_FRAME = 2**31                     # a length beyond this is corruption, not a frame


class JournalLocked(OSError):
    """Another process holds the directory's lock."""


class Journal:
    """Segment files in ``directory`` (see the module docstring); the directory is locked while open."""

    def __init__(self, directory: str | os.PathLike, max_bytes: int, segment_bytes: int | None = None):
        self.directory = Path(directory)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes or max(2**20, max_bytes // 8)
        self._lock_fd = _lock(self.directory)
        self._closed: collections.deque[tuple[Path, int]] = collections.deque()  # (path, bytes), oldest first
        self._fd: int | None = None   # the segment being written
        self._path: Path | None = None
        self._size = 0                # bytes of whole records (and the file magic) in it
        self._queue: collections.deque[bytes] = collections.deque()  # records not written yet
        self._queued_bytes = 0
        self.given_up = 0             # records dropped from the queue while the disk refused them
        self.corrupt = 0              # records skipped on load (bad magic, CRC or lengths)
        self.torn = 0                 # records cut short at the end of a segment, cut off on load

    # -- load -------------------------------------------------------------------------------

    def load(self) -> Iterator[tuple[float, int, list[bytes]]]:
        """Every whole, intact record, oldest first: (received, run's first seq, frames)."""
        for path in sorted(self.directory.glob("segment-*.log")):
            with open(path, "r+b") as f:
                data = f.read()
                if data.startswith(FILE_MAGIC) or FILE_MAGIC.startswith(data) or data[8:12] == RECORD_MAGIC:
                    records, end = _read_segment(data, path, self)
                else:
                    records, end = _read_legacy_segment(data)
                    if end < len(data):
                        self.torn += 1
                yield from records
                if end < len(data):
                    f.truncate(end)  # the end of a record the broker was killed while writing
            self._closed.append((path, end))

    # -- write ------------------------------------------------------------------------------

    def append(self, received: float, run_first_seq: int, frames: list[bytes]) -> None:
        """Queue one record; ``flush`` writes it."""
        checked = _CHECKED.pack(received, run_first_seq, len(frames[0]), len(frames[1]), len(frames[2]))
        crc = zlib.crc32(frames[2], zlib.crc32(frames[1], zlib.crc32(frames[0], zlib.crc32(checked))))
        record = b"".join((RECORD_MAGIC, crc.to_bytes(4, "little"), checked, *frames))
        self._queue.append(record)
        self._queued_bytes += len(record)
        while self._queued_bytes > self.max_bytes and len(self._queue) > 1:  # only while the disk refuses
            self._queued_bytes -= len(self._queue.popleft())
            self.given_up += 1

    @property
    def queued(self) -> int:
        """Records appended but not written yet."""
        return len(self._queue)

    def flush(self) -> None:
        """Write every queued record to the OS; OSError if the disk refuses (nothing half-written stays)."""
        queue = self._queue
        while queue:
            if self._fd is None:
                self._start_segment()
            room, count, size = self.segment_bytes - self._size, 0, 0
            for record in queue:
                if count and size + len(record) > room:
                    break
                count, size = count + 1, size + len(record)
            self._write(b"".join(itertools.islice(queue, count)))
            for _ in range(count):  # they leave the queue only once written
                queue.popleft()
            self._queued_bytes -= size
            if self._size >= self.segment_bytes:
                self._end_segment()

    def _start_segment(self) -> None:
        existing = sorted(self.directory.glob("segment-*.log"))
        number = int(existing[-1].stem.split("-")[1]) + 1 if existing else 1
        path = self.directory / f"segment-{number:012d}.log"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._path, self._size = path, 0
        self._prune()
        try:
            self._write(FILE_MAGIC)
        except OSError:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            path.unlink(missing_ok=True)  # a segment without its magic would be read as the old format
            raise

    def _write(self, data: bytes) -> None:
        view, written = memoryview(data), 0
        try:
            while written < len(data):
                written += os.pwrite(self._fd, view[written:], self._size + written)
        except OSError:
            if written:
                try:
                    os.ftruncate(self._fd, self._size)  # never leave part of a record behind
                except OSError:
                    # The part stays at the very end of this segment (cut off on load): go on in a new one.
                    self._end_segment()
            raise
        self._size += len(data)

    def _end_segment(self) -> None:
        os.close(self._fd)
        self._closed.append((self._path, self._size))
        self._fd = None

    def _prune(self) -> None:
        held = sum(size for _, size in self._closed)
        while self._closed and held > self.max_bytes:
            path, size = self._closed.popleft()
            path.unlink(missing_ok=True)
            held -= size

    def close(self) -> None:
        """Close the segment and release the directory (what is still queued is not written)."""
        if self._fd is not None:
            self._end_segment()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None


def _lock(directory: Path) -> int:
    """Hold ``directory/lock`` (flock, exclusive) for this process; JournalLocked if another holds it."""
    fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise JournalLocked(exc.errno, f"another broker (pid {holder or '?'}) is using it") from None
        raise
    try:  # who holds it, for the message a second broker gets; not essential (a full disk)
        os.ftruncate(fd, 0)
        os.pwrite(fd, b"%d\n" % os.getpid(), 0)
    except OSError:
        pass
    return fd


_INTACT, _CUT_SHORT, _BAD = "intact", "cut short", "bad"


def _record_at(data: bytes, offset: int) -> tuple[str, int, tuple[float, int, list[bytes]] | None]:
    """(state, end, record) of what is at ``offset``: an intact record; one whose head is sound but which
    runs past the end of ``data`` (cut short); or anything else (bad)."""
    if offset + _HEAD.size > len(data):
        if data.startswith(RECORD_MAGIC[:len(data) - offset], offset):
            return _CUT_SHORT, len(data), None
        return _BAD, 0, None
    magic, crc, received, run_first_seq, *lengths = _HEAD.unpack_from(data, offset)
    if magic != RECORD_MAGIC or any(length >= _MAX_FRAME for length in lengths):
        return _BAD, 0, None
    start = offset + _HEAD.size
    end = start + sum(lengths)
    if end > len(data):
        return _CUT_SHORT, len(data), None
    if zlib.crc32(data[offset + 8:end]) != crc:
        return _BAD, 0, None
    first, second = start + lengths[0], start + lengths[0] + lengths[1]
    return _INTACT, end, (received, run_first_seq, [data[start:first], data[first:second], data[second:end]])


def _read_segment(data: bytes, path: Path, journal: Journal) -> tuple[list, int]:
    """The intact records of a segment in this format, and where its last intact record ends."""
    records, offset = [], len(FILE_MAGIC)
    while offset < len(data):
        state, end, record = _record_at(data, offset)
        if state == _INTACT:
            records.append(record)
            offset = end
            continue
        following = _next_record(data, offset + 1)
        if following is None and state == _CUT_SHORT:  # the broker was stopped while writing it
            journal.torn += 1
            log.info("history: %s: cut off %d bytes at its end (a record the broker was stopped while writing)",
                     path, len(data) - offset)
            return records, offset
        journal.corrupt += 1
        log.warning("history: %s: skipped %d corrupt bytes at offset %d (they fail their checksum)%s", path,
                    (following or len(data)) - offset, offset,
                    "; the records after them are kept" if following is not None else "")
        if following is None:
            return records, offset
        offset = following
    return records, len(data)


def _next_record(data: bytes, start: int) -> int | None:
    """The offset of the next intact record from ``start`` on, if any."""
    offset = data.find(RECORD_MAGIC, start)
    while offset != -1:
        if _record_at(data, offset)[0] == _INTACT:
            return offset
        offset = data.find(RECORD_MAGIC, offset + 1)
    return None


def _read_legacy_segment(data: bytes) -> tuple[list, int]:
    """A segment written before checksums: records up to the first that does not fit."""
    records, offset = [], 0
    while offset + _LEGACY.size <= len(data):
        received, run_first_seq, *lengths = _LEGACY.unpack_from(data, offset)
        start, end = offset + _LEGACY.size, offset + _LEGACY.size + sum(lengths)
        if end > len(data):
            break
        first, second = start + lengths[0], start + lengths[0] + lengths[1]
        records.append((received, run_first_seq, [data[start:first], data[first:second], data[second:end]]))
        offset = end
    return records, offset
