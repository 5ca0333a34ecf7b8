"""The history on disk: checksummed records, a corrupted byte costs one record, a torn end is cut, the
previous format is still read, and one broker a directory."""
from __future__ import annotations

import logging
import os
import struct
import subprocess

import pytest

from conftest import BIN, BrokerProcess

from zmq_emitter import protocol
from zmq_emitter.broker import Broker, BrokerError
from zmq_emitter.broker.history import History
from zmq_emitter.broker.journal import FILE_MAGIC, Journal, JournalLocked


def frames(seq, ident="a", pub="p1", size=40):
    return [protocol.topic("event", ident, "runner_on_ok"), protocol.header_prefix("json", pub) + b"%d}" % seq,
            b'"%s"' % (b"%d" % seq * size)[:size]]


def write_history(directory, seqs):
    history = History()
    history.persist_to(directory)
    for seq in seqs:
        history.add(protocol.envelope(frames(seq)), frames(seq))
    history.sync()
    history.close()  # the end of the broker's process: its lock goes too


def reload(directory):
    history = History()
    loaded = history.persist_to(directory)
    journal = history.journal
    history.close()
    return history, loaded, journal


def record_offsets(data):
    """Where each record of a segment starts (the test knows the frames' sizes)."""
    offsets, offset = [], len(FILE_MAGIC)
    while offset < len(data):
        offsets.append(offset)
        lengths = struct.unpack_from("<III", data, offset + 24)
        offset += 36 + sum(lengths)
    return offsets


def served(history):
    return [(m.seq, m.payload) for m in map(protocol.decode, history.fetch("p1", 1, 10)[0])]


@pytest.mark.parametrize("where", ["payload", "length", "magic"])
def test_a_corrupted_byte_in_the_middle_of_a_segment_costs_that_record_only(tmp_path, caplog, where):
    write_history(tmp_path, range(1, 11))
    (segment,) = tmp_path.glob("segment-*.log")
    data = bytearray(segment.read_bytes())
    fifth = record_offsets(data)[4]
    data[fifth + {"payload": 36 + 60, "length": 33, "magic": 1}[where]] ^= 0x5A
    segment.write_bytes(bytes(data))

    with caplog.at_level(logging.WARNING, logger="zmq_emitter.broker"):
        history, loaded, journal = reload(tmp_path)
    assert loaded == 9 and journal.corrupt == 1 and journal.torn == 0
    assert served(history) == [(seq, frames(seq)[2].decode().strip('"')) for seq in range(1, 11) if seq != 5]
    assert history.publishers["p1"].holes == [[5, 5]]  # not acknowledged; asked for again, or counted missed
    (warning,) = [r for r in caplog.records if "corrupt" in r.getMessage()]
    assert str(segment) in warning.getMessage() and f"offset {fifth}" in warning.getMessage()
    assert segment.stat().st_size == len(data)  # the intact records after it stay on disk


def test_a_record_torn_at_the_end_of_a_segment_is_cut_off_and_new_records_follow_in_a_new_segment(tmp_path):
    write_history(tmp_path, range(1, 6))
    (segment,) = tmp_path.glob("segment-*.log")
    segment.write_bytes(segment.read_bytes()[:-7])
    history, loaded, journal = reload(tmp_path)
    assert loaded == 4 and journal.torn == 1 and journal.corrupt == 0
    assert segment.stat().st_size == record_offsets(segment.read_bytes())[-1] + 36 + sum(len(f) for f in frames(4))
    write_history(tmp_path, [5, 6])
    assert [seq for seq, _ in served(reload(tmp_path)[0])] == [1, 2, 3, 4, 5, 6]


def test_a_corrupted_last_record_with_nothing_intact_after_it_is_counted_as_corrupt(tmp_path):
    write_history(tmp_path, range(1, 4))
    (segment,) = tmp_path.glob("segment-*.log")
    data = bytearray(segment.read_bytes())
    data[-3] ^= 0xFF
    segment.write_bytes(bytes(data))
    history, loaded, journal = reload(tmp_path)
    assert loaded == 2 and journal.corrupt == 1 and journal.torn == 0


def test_segments_of_the_format_before_checksums_are_still_read(tmp_path):
    legacy = struct.Struct("<dQIII")  # received, run's first seq, three frame lengths; no magic, no CRC
    with open(tmp_path / "segment-000000000001.log", "wb") as f:
        for seq in (1, 2, 3):
            parts = frames(seq)
            f.write(legacy.pack(1700000000.0 + seq, 1, *map(len, parts)) + b"".join(parts))
        f.write(legacy.pack(1700000004.0, 1, 10, 10, 10) + b"cut")  # a kill in the middle of a record
    write_history(tmp_path, [4, 5])  # loads the old segment, writes the new records in the new format
    history, loaded, journal = reload(tmp_path)
    assert loaded == 5 and [seq for seq, _ in served(history)] == [1, 2, 3, 4, 5]
    assert (tmp_path / "segment-000000000002.log").read_bytes().startswith(FILE_MAGIC)


def test_a_second_journal_on_a_directory_in_use_is_refused_until_the_first_is_closed(tmp_path):
    first = Journal(tmp_path, 2**20)
    with pytest.raises(JournalLocked, match="another broker"):
        Journal(tmp_path, 2**20)
    first.close()
    Journal(tmp_path, 2**20).close()


def test_a_second_broker_on_the_same_history_dir_exits_with_one_line_naming_the_option(tmp_path):
    first = BrokerProcess(f"ipc://{tmp_path}/f1", f"ipc://{tmp_path}/b1", "--startup-grace", "0",
                          "--history-dir", str(tmp_path / "journal"))
    try:
        second = subprocess.run([str(BIN / "zmq-emitter"), "broker", "--frontend", f"ipc://{tmp_path}/f2",
                                 "--backend", f"ipc://{tmp_path}/b2", "--history", f"ipc://{tmp_path}/h2",
                                 "--history-dir", str(tmp_path / "journal")],
                                capture_output=True, text=True, timeout=30)
    finally:
        first.stop()
    assert second.returncode == 1
    (line,) = second.stderr.splitlines()
    assert "--history-dir" in line and "another broker" in line and f"pid {first.proc.pid}" in line, line
    assert not (tmp_path / "f2").exists() and not (tmp_path / "h2").exists()  # nothing bound was left behind


def test_a_broker_that_fails_to_start_leaves_its_history_dir_and_its_context_free(tmp_path):
    taken = Broker([f"ipc://{tmp_path}/f"], [f"ipc://{tmp_path}/b"], [f"ipc://{tmp_path}/h"], startup_grace=0)
    taken.start()
    try:
        broken = Broker([f"ipc://{tmp_path}/f2"], ["tcp://127.0.0.1:99999"], [f"ipc://{tmp_path}/h2"],
                        startup_grace=0, history_dir=str(tmp_path / "journal"))
        with pytest.raises(BrokerError, match="port must be"):
            broken.start()
        assert broken._context.closed
        assert not (tmp_path / "f2").exists()
        journal = str(tmp_path / "journal")
        assert not [fd for fd in os.listdir("/proc/self/fd") if os.path.realpath(f"/proc/self/fd/{fd}").startswith(journal)]
        # Nothing of the failed start holds the directory: a broker can use it now.
        Broker([f"ipc://{tmp_path}/f3"], [f"ipc://{tmp_path}/b3"], [f"ipc://{tmp_path}/h3"], startup_grace=0,
               history_dir=str(tmp_path / "journal")).start().stop()
    finally:
        taken.stop()


def test_ipc_socket_files_are_removed_after_a_clean_stop(tmp_path):
    broker = Broker([f"ipc://{tmp_path}/f"], [f"ipc://{tmp_path}/b"], [f"ipc://{tmp_path}/h"], startup_grace=0)
    broker.start()
    assert {p.name for p in tmp_path.iterdir()} == {"f", "b", "h"}
    broker.stop()
    assert list(tmp_path.iterdir()) == []
