"""Threads named in the operating system too, so that ``top -H``, ``ps -L`` and ``/proc/PID/task/*/comm`` show
which part of a broker or a runner takes the CPU (``zmq-history``, ``zmq-proxy``, ``zmq-flush``...), beside
libzmq's own ``ZMQbg/IO/0``.  The benchmarks read the same names (benchmarks/RESULTS.md, figure 1's CPU by part).

    >>> t = thread(lambda: None, "zmq-emitter-flush"); t.start(); t.join(); t.name
    'zmq-emitter-flush'
"""
from __future__ import annotations

import threading
from typing import Callable


def os_name(name: str) -> str:
    """The name the OS gets: at most 15 bytes (Linux's limit), ``zmq-emitter-history`` -> ``zmq-history``."""
    return name.replace("zmq-emitter-", "zmq-", 1).encode()[:15].decode(errors="ignore")


def thread(target: Callable[[], object], name: str) -> threading.Thread:
    """A daemon thread called ``name`` in Python and ``os_name(name)`` in the OS (where it can be set)."""
    def run() -> None:
        try:  # Linux; elsewhere the thread keeps the process's name
            with open(f"/proc/self/task/{threading.get_native_id()}/comm", "wb") as comm:
                comm.write(os_name(name).encode())  # (bytes: whatever the locale's encoding)
        except OSError:
            pass
        target()
    return threading.Thread(target=run, name=name, daemon=True)
