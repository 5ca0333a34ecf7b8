"""Threads named in the operating system too (``zmq_emitter/_threads.py``): the name ``top -H`` shows, and
naming never keeps a thread from running."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from zmq_emitter import _threads

ROOT = Path(__file__).resolve().parent.parent
needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="no /proc/self/task (not Linux)")


def os_name_seen(name: str) -> bytes:
    seen = []
    thread = _threads.thread(lambda: seen.append(
        Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_bytes()), name)
    thread.start()
    thread.join()
    return seen[0]


@needs_proc
def test_a_thread_is_called_its_short_name_in_the_os():
    assert _threads.os_name("zmq-emitter-history") == "zmq-history"
    assert os_name_seen("zmq-emitter-history") == b"zmq-history\n"


@needs_proc
def test_a_non_ascii_name_under_an_ascii_locale_still_runs_the_thread():
    """The OS gets the name's UTF-8 bytes whatever the locale's encoding: under ``LC_ALL=C`` a text-mode
    write raised UnicodeEncodeError (not an OSError) and the thread died before its work began."""
    script = ("import threading; from zmq_emitter import _threads; from pathlib import Path; seen = []; "
              "t = _threads.thread(lambda: seen.append(Path("
              "f'/proc/self/task/{threading.get_native_id()}/comm').read_bytes()), 'zmq-\\u00e9t\\u00e9'); "
              "t.start(); t.join(); print(seen)")
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=30)
    assert result.stdout.strip() == repr(["zmq-été\n".encode()]), result.stderr
