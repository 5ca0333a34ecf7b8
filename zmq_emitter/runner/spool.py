"""The runner-side spool: what a process could not get acknowledged by its exit, kept for the next one.

At exit a publisher writes what no broker acknowledged (or, with a broker that does not
acknowledge, what was not delivered) to ``<spool>/<destination>/``, one file per publisher;
the next process that publishes to the same destination (``runner_zmq_url``) claims the
waiting files and sends their messages first, exactly as they were (same ``pub``, ``seq``,
frames), so that de-duplication and gap detection still hold.  ``zmq-emitter spool`` lists
and sends them on demand.  docs/reliability.md has the guarantees, docs/protocol.md how the
messages look on the wire.

    >>> import tempfile
    >>> from zmq_emitter.runner.outbox import Entry
    >>> spool = Spool(tempfile.mkdtemp(), ("tcp://127.0.0.1:5557",), max_messages=1000, max_bytes=2**20)
    >>> spool.store("9f86d081884c7d65", [Entry(7, b"status/r/running", b'{"seq":7}', b"{}")], last=7)
    (True, [])
    >>> [(c.pub, [e.seq for e in c.entries]) for c in spool.claim()]   # the next process
    [('9f86d081884c7d65', [7])]

On disk (files 0600, and the directories the spool creates 0700: events may hold secrets; a
directory that exists already keeps its mode, so a careless ``runner_zmq_spool=/tmp`` changes
nothing of /tmp): each file is written to a
temporary name, fsynced and renamed, so a reader never sees half a file.  A process claims a
waiting file by renaming it with its pid and host; a claim whose process is gone (same host)
is taken back the same way, so each file is sent by one process only.  A file is a magic
line, then records ``length (4 bytes) | crc32 (4 bytes) | body``: a JSON header first, then
one record per message (``seq`` 8 bytes, then topic, header, payload, each but the last
preceded by its length).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import re
import secrets
import socket
import struct
import time
import zlib
from pathlib import Path
from typing import Iterable, Iterator

from .outbox import Entry

MAGIC = b"zmq-emitter spool 1\n"
_RECORD = struct.Struct(">II")       # body length, crc32 of the body
_MESSAGE = struct.Struct(">QI")      # seq, topic length; then the header length (>I)
_LENGTH = struct.Struct(">I")
_WAITING = re.compile(r"^(?P<pub>[0-9A-Za-z]+)\.(?P<token>[0-9a-f]+)\.spool$")
_DROPPING = re.compile(r"^(?P<pub>[0-9A-Za-z]+)\.(?P<token>[0-9a-f]+)\.spool\.dropping-(?P<pid>\d+)@(?P<host>[^/]+)$")
_CLAIMED = re.compile(r"^(?P<pub>[0-9A-Za-z]+)\.(?P<token>[0-9a-f]+)\.claimed-(?P<pid>\d+)@(?P<host>[^/]+)$")
_TEMPORARY = re.compile(r"^\.tmp-(?P<pid>\d+)@(?P<host>[^/]+?)-[0-9a-f]+$")
HOST = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname()) or "host"


def destination_name(endpoints: Iterable[str]) -> str:
    """The directory name of a destination: readable, and unique by a hash of the endpoints."""
    ordered = sorted(endpoints)
    readable = re.sub(r"[^A-Za-z0-9.-]+", "_", ",".join(ordered)).strip("_")[:60]
    digest = hashlib.sha256(json.dumps(ordered).encode()).hexdigest()[:12]
    return f"{readable}-{digest}"


@dataclasses.dataclass
class SpoolFile:
    """One file of the spool, as ``zmq-emitter spool`` lists it."""

    path: Path
    pub: str
    destination: list[str]
    created: float
    messages: int
    bytes: int
    first: int
    last: int
    claimed_by: str | None = None  # "pid@host" of the process that claimed it


@dataclasses.dataclass
class Claim:
    """The spooled messages of one publisher, taken over by this process."""

    pub: str
    entries: list[Entry]
    last: int                   # the highest seq that publisher stamped
    paths: list[Path]
    unreadable: int = 0         # messages a damaged file no longer gave


class Spool:
    """One destination's spool directory (``<root>/<destination_name(endpoints)>``)."""

    def __init__(self, root: str | os.PathLike, endpoints: Iterable[str], *, max_messages: int, max_bytes: int):
        self.endpoints = sorted(endpoints)
        self.directory = Path(root) / destination_name(self.endpoints)
        self.max_messages, self.max_bytes = max_messages, max_bytes
        self.notes: list[str] = []  # what the last claim() found wrong, for the caller to say

    # -- the next process: claim ----------------------------------------------------------

    def claim(self) -> list[Claim]:
        """Take every waiting file (and every claim a gone process left), grouped by publisher, oldest first."""
        self.notes = []
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        mine = f".claimed-{os.getpid()}@{HOST}"
        random.shuffle(names)  # processes claiming at once then take different files, not trail one another
        taken: list[Path] = []
        for name in names:
            waiting, temporary = _WAITING.match(name), _TEMPORARY.match(name)
            # A claim, or a file being cut to the bounds, left by a process that is gone: taken back.
            left = _CLAIMED.match(name) or _DROPPING.match(name)
            if waiting:
                target = self.directory / f"{waiting['pub']}.{waiting['token']}{mine}"
            elif left and left["host"] == HOST and not _alive(int(left["pid"])):
                target = self.directory / f"{left['pub']}.{left['token']}{mine}"
            else:
                if temporary and temporary["host"] == HOST and not _alive(int(temporary["pid"])):
                    _unlink(self.directory / name)  # half written by a process that died
                continue
            try:
                os.rename(self.directory / name, target)  # atomic: one process wins each file
            except FileNotFoundError:
                continue
            taken.append(target)
        claims: dict[str, Claim] = {}
        for path, header, entries, unreadable in sorted((self._read_claimed(p) for p in taken),
                                                        key=lambda item: item[1].get("created", 0)):
            pub = header.get("pub") or path.name.split(".", 1)[0]
            claim = claims.setdefault(pub, Claim(pub, [], 0, []))
            claim.paths.append(path)
            claim.entries.extend(entries)
            claim.last = max(claim.last, int(header.get("last") or 0), *(e.seq for e in entries[-1:]))
            claim.unreadable += unreadable
        for claim in claims.values():  # a file written again beside one never removed (a crash between): once each
            claim.entries = sorted({e.seq: e for e in reversed(claim.entries)}.values(), key=lambda e: e.seq)
        return list(claims.values())

    def _read_claimed(self, path: Path) -> tuple[Path, dict, list[Entry], int]:
        try:
            header, entries, complete = read(path)
        except OSError as exc:
            self.notes.append(f"zmq_emitter: cannot read spool file {path}: {exc}")
            return path, {}, [], 0
        unreadable = max(0, int(header.get("messages") or 0) - len(entries))
        if not complete:
            self.notes.append(f"zmq_emitter: spool file {path} is damaged: {len(entries)} messages read, "
                              f"{unreadable} unreadable and lost (publisher {header.get('pub', '?')})")
        return path, header, entries, unreadable

    def release(self, claims: Iterable[Claim]) -> None:
        """Remove the claimed files (after what is still not acknowledged of them was stored again)."""
        for claim in claims:
            for path in claim.paths:
                _unlink(path)

    def give_back(self, claims: Iterable[Claim]) -> None:
        """Put claimed files back as waiting, unchanged: what could not be stored again is not lost with them.

        Messages of them that were delivered meanwhile go again with the next process: exact repeats,
        which histories and subscribers drop."""
        for claim in claims:
            for path in claim.paths:
                match = _CLAIMED.match(path.name)
                if match:
                    try:
                        os.rename(path, path.with_name(f"{match['pub']}.{match['token']}.spool"))
                    except FileNotFoundError:
                        pass

    # -- at exit: store ------------------------------------------------------------------------

    def store(self, pub: str, entries: list[Entry], *, last: int) -> tuple[bool, list[str]]:
        """Write ``entries`` (in seq order) as ``pub``'s file, within the bounds.

        Returns (written, what to say on stderr).  Beyond the bounds the oldest go: first whole files
        waiting from before (the oldest first), then the oldest of ``entries``.  Never raises: an
        error is one of the lines, and ``written`` is False.
        """
        notes: list[str] = []
        if not entries:
            return True, notes
        try:
            for directory in (self.directory.parent, self.directory):
                if not directory.is_dir():  # created owner-only; an existing directory keeps its mode
                    directory.parent.mkdir(parents=True, exist_ok=True)
                    directory.mkdir(mode=0o700, exist_ok=True)
            entries = self._fit(pub, entries, notes)
            self._write(pub, entries, last)
        except OSError as exc:
            notes.append(f"zmq_emitter: could not spool {len(entries)} messages of publisher {pub} "
                         f"(seq {entries[0].seq}..{entries[-1].seq}) to {self.directory}: {exc}")
            return False, notes
        return True, notes

    def _fit(self, pub: str, entries: list[Entry], notes: list[str]) -> list[Entry]:
        sizes = [_size(entry) for entry in entries]
        drop = 0
        total = sum(sizes)
        while len(entries) - drop > self.max_messages or total > self.max_bytes:
            total -= sizes[drop]
            drop += 1
        if drop:
            notes.append(f"zmq_emitter: spool full (runner_zmq_spool_messages/_bytes): dropped the oldest {drop} "
                         f"messages of publisher {pub} (seq {entries[0].seq}..{entries[drop - 1].seq})")
            entries = entries[drop:]
        over = [len(entries) - self.max_messages, total - self.max_bytes]
        for old in self.waiting():
            over[0] += old.messages
            over[1] += old.bytes
        for old in sorted(self.waiting(), key=lambda f: f.created):  # the oldest make room for the newest
            if over[0] <= 0 and over[1] <= 0:
                break
            target = old.path.with_name(old.path.name + f".dropping-{os.getpid()}@{HOST}")
            try:
                os.rename(old.path, target)  # taken first: another process may be claiming it right now
            except FileNotFoundError:
                continue
            header, kept, _ = read(target)
            gone = 0
            while kept and (over[0] > 0 or over[1] > 0):
                over[0] -= 1
                over[1] -= _size(kept[0])
                gone += 1
                kept = kept[1:]
            if kept:
                self._write(old.pub, kept, int(header.get("last") or kept[-1].seq), created=old.created)
            _unlink(target)
            notes.append(f"zmq_emitter: spool full (runner_zmq_spool_messages/_bytes): dropped the oldest {gone} "
                         f"messages of publisher {old.pub} (seq {old.first}..{old.first + gone - 1}), waiting since "
                         f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(old.created))}")
        return entries

    def _write(self, pub: str, entries: list[Entry], last: int, created: float | None = None) -> None:
        header = {"version": 1, "pub": pub, "destination": self.endpoints, "created": created or time.time(),
                  "messages": len(entries), "bytes": sum(_size(e) for e in entries),
                  "first": entries[0].seq, "last": max(last, entries[-1].seq)}
        temporary = self.directory / f".tmp-{os.getpid()}@{HOST}-{secrets.token_hex(4)}"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(MAGIC)
                out.write(_record(json.dumps(header).encode()))
                for entry in entries:
                    out.write(_record(_MESSAGE.pack(entry.seq, len(entry.topic)) + entry.topic
                                      + _LENGTH.pack(len(entry.header)) + entry.header + entry.payload))
                out.flush()
                os.fsync(out.fileno())
            os.rename(temporary, self.directory / f"{pub}.{secrets.token_hex(8)}.spool")
        except BaseException:
            _unlink(temporary)
            raise
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a crash
        finally:
            os.close(dir_fd)

    # -- listing ------------------------------------------------------------------------------

    def waiting(self) -> list[SpoolFile]:
        """The files waiting in this destination (not claimed)."""
        return [f for f in _files(self.directory) if f.claimed_by is None]


def listing(root: str | os.PathLike) -> list[SpoolFile]:
    """Every spool file under ``root``, waiting or claimed, by destination then age."""
    root = Path(root)
    try:
        directories = sorted(p for p in root.iterdir() if p.is_dir())
    except FileNotFoundError:
        return []
    return [f for directory in directories for f in sorted(_files(directory), key=lambda f: f.created)]


def _files(directory: Path) -> Iterator[SpoolFile]:
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return
    for name in names:
        waiting, claimed = _WAITING.match(name), _CLAIMED.match(name)
        if not (waiting or claimed):
            continue
        try:
            header = read(directory / name, header_only=True)[0]
        except OSError:
            continue  # claimed and removed meanwhile
        yield SpoolFile(directory / name, header.get("pub", name.split(".", 1)[0]), header.get("destination", []),
                        header.get("created", 0.0), header.get("messages", 0), header.get("bytes", 0),
                        header.get("first", 0), header.get("last", 0),
                        f"{claimed['pid']}@{claimed['host']}" if claimed else None)


def read(path: Path, header_only: bool = False) -> tuple[dict, list[Entry], bool]:
    """(header, entries, complete) of a spool file; complete is False if a record was damaged or cut."""
    with open(path, "rb") as source:
        data = source.read(len(MAGIC) + _RECORD.size + 4096) if header_only else source.read()
    if not data.startswith(MAGIC):
        return {}, [], False
    records = _records(data, len(MAGIC))
    first = next(records, None)
    try:
        header = json.loads(first) if first is not None else None
    except ValueError:
        header = None
    if not isinstance(header, dict):
        return {}, [], False
    if header_only:
        return header, [], True
    entries = []
    for body in records:
        if body is None:
            return header, entries, False
        try:
            seq, topic_length = _MESSAGE.unpack_from(body)
            at = _MESSAGE.size
            topic = body[at:at + topic_length]
            at += topic_length
            (header_length,) = _LENGTH.unpack_from(body, at)
            at += _LENGTH.size
            entries.append(Entry(seq, topic, body[at:at + header_length], body[at + header_length:]))
        except struct.error:
            return header, entries, False
    return header, entries, True


def _records(data: bytes, at: int) -> Iterator[bytes | None]:
    """Each record's body; None (and the end) at a record that is cut short or fails its checksum."""
    while at < len(data):
        if at + _RECORD.size > len(data):
            yield None
            return
        length, checksum = _RECORD.unpack_from(data, at)
        body = data[at + _RECORD.size:at + _RECORD.size + length]
        if len(body) != length or zlib.crc32(body) != checksum:
            yield None
            return
        yield body
        at += _RECORD.size + length


def _record(body: bytes) -> bytes:
    return _RECORD.pack(len(body), zlib.crc32(body)) + body


def _size(entry: Entry) -> int:
    return len(entry.topic) + len(entry.header) + len(entry.payload)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
